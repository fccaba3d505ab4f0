//! CPU kernels where candle 0.11.1 is slow (issue 7), as candle custom ops: convolution forward
//! and backward through im2col/col2im and one GEMM per image, and batch normalisation (with an
//! optional fused ReLU) in single passes forward and backward. Other devices and dtypes fall back
//! to candle's own ops in [`crate::layers`].
//!
//! Every kernel is tested against a straightforward reference (direct loops in f64, candle-nn's
//! BatchNorm) on random shapes, and its gradients by finite differences.

mod conv;
mod gemm;
mod norm;

pub use conv::{Conv2dParams, conv2d};
pub use norm::{batch_norm_eval, batch_norm_train};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout};

/// The f32 elements a contiguous layout covers.
fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: f32 tensors only, got {:?}", storage.dtype())
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: needs contiguous inputs"),
    }
}

/// Whether work of `items` independent images is spread over threads image by image (each
/// kernel serial) rather than run one image at a time with parallel kernels.
fn per_image_parallel(items: usize) -> bool {
    items >= rayon::current_num_threads()
}

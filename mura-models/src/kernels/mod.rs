//! CPU kernels where candle 0.11.1 is slow (issue 7), as candle custom ops: convolution forward
//! and backward through im2col/col2im and one GEMM per image, and batch normalisation (with an
//! optional fused ReLU) in single passes forward and backward. Other devices and dtypes fall back
//! to candle's own ops in [`crate::layers`].
//!
//! Every kernel is tested against a straightforward reference (direct loops in f64, candle-nn's
//! BatchNorm) on random shapes, and its gradients by finite differences.

mod conv;
mod eltwise;
mod gemm;
mod norm;
mod simd;

pub use conv::{Conv2dParams, conv2d, conv2d_relu};
pub use eltwise::add_relu;
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

/// The images of an N×C×H×W f32 tensor each stored as C·H·W consecutive elements, image `i`
/// at `start + i·stride`: a contiguous tensor, or a channel range of a wider one (what
/// `narrow(1, 0, c)` of a contiguous tensor gives), read in place.
struct Images<'a> {
    data: &'a [f32],
    start: usize,
    stride: usize,
}

impl<'a> Images<'a> {
    /// Whether `layout` stores its images that way.
    fn fits(layout: &Layout) -> bool {
        match (layout.dims(), layout.stride()) {
            (&[_, _, h, w], &[_, s1, s2, s3]) => {
                layout.is_contiguous() || (s3 == 1 && s2 == w && s1 == h * w)
            }
            _ => false,
        }
    }

    fn of(storage: &'a CpuStorage, layout: &Layout, op: &str) -> candle_core::Result<Self> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{op}: f32 tensors only, got {:?}", storage.dtype())
        };
        let (&[n, c, h, w], &[s0, ..]) = (layout.dims(), layout.stride()) else {
            candle_core::bail!("{op}: expects an N×C×H×W tensor, got {:?}", layout.dims())
        };
        if !Self::fits(layout) {
            candle_core::bail!("{op}: needs each image stored contiguously")
        }
        let image = c * h * w;
        let start = layout.start_offset();
        let stride = if layout.is_contiguous() { image } else { s0 };
        let end = if n == 0 {
            start
        } else {
            start + (n - 1) * stride + image
        };
        if end > data.len() {
            candle_core::bail!("{op}: the layout reaches element {end} of {}", data.len())
        }
        Ok(Self {
            data,
            start,
            stride,
        })
    }

    /// Plane `ch` (of `hw` elements) of image `i`.
    fn plane(&self, i: usize, ch: usize, hw: usize) -> &'a [f32] {
        let at = self.start + i * self.stride + ch * hw;
        &self.data[at..at + hw]
    }
}

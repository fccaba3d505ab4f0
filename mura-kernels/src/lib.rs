#![doc = include_str!("../README.md")]

mod adam;
#[cfg(feature = "mimalloc")]
pub mod allocator;
mod conv;
mod dense;
mod eltwise;
mod gemm;
mod generic;
mod norm;
mod pool;
mod route;
mod simd;
mod winograd;

#[cfg(test)]
mod testing;

pub use adam::{AdamMoments, AdamStep, Decay, adam_applies, adam_in_place};
pub use conv::{Conv2dParams, conv2d, conv2d_relu};
pub use dense::DenseFeatures;
pub use eltwise::add_relu;
pub use norm::{
    StatsReduce, SyncBatchNorm, SyncedNorm, batch_norm_eval, batch_norm_train,
    batch_norm_train_sync, sync_batch_norm, with_sync_batch_norm,
};
pub use pool::{Pool2d, PoolKind};
pub use route::{KERNELS_ENV, Kernels, generic_forced, with_generic};

use conv::valid;
use simd::vectorised;

use std::cell::RefCell;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout};

thread_local! {
    /// Each thread's scratch for column matrices and GEMM blocks, kept from op to op: a fresh
    /// buffer per op would be zero-filled on every use.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer. Its contents are whatever an earlier op left:
/// callers write what they read. A nested call on the same thread (rayon runs another task
/// while `f` waits on a parallel kernel) gets a buffer of its own.
fn with_scratch<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => f(&mut buffer),
        Err(_) => f(&mut Vec::new()),
    })
}

/// The first `len` elements of `buffer`, grown (zero-filled) only when it is shorter: never
/// shrunk, so the next, larger request does not fill again what a smaller one cut off.
fn room(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn room_grows_but_never_shrinks_the_buffer() {
        let mut buffer = Vec::new();
        room(&mut buffer, 8).fill(7.0);
        assert_eq!(room(&mut buffer, 3).len(), 3);
        assert_eq!(buffer.len(), 8, "a smaller request must not cut the buffer");
        // What an earlier, larger use left stays (callers overwrite what they read).
        assert_eq!(room(&mut buffer, 8), &[7.0; 8]);
        let grown = room(&mut buffer, 10);
        assert_eq!(&grown[8..], &[0.0, 0.0]);
    }

    #[test]
    fn a_nested_scratch_request_gets_its_own_buffer() {
        with_scratch(|outer| {
            room(outer, 4).fill(1.0);
            with_scratch(|inner| {
                room(inner, 4).fill(2.0);
            });
            assert_eq!(&outer[..4], &[1.0; 4]);
        });
        // The thread's buffer is kept for the next op.
        with_scratch(|again| assert!(again.len() >= 4));
    }
}

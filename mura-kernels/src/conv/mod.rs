//! 2-D convolution on CPU: im2col + one GEMM per image forward; backward the weight gradient as
//! Σ dY·colsᵀ (no output wider than needed, unlike candle's strided-conv trick) and the input
//! gradient as col2im(Wᵀ·dY), skipped when the input needs no gradient (the image itself).
//! Stride-1 convolutions skip the column matrix where that pays: the forward by shifted products
//! (each kernel tap's product reads the padded image from the tap's offset), and, with few
//! output channels from many inputs (DenseNet's growth convolution), both gradients the same way.
//!
//! 3×3 stride-1 forwards with enough channels and output tiles run by Winograd F(4×4, 3×3)
//! instead ([`super::winograd`], routed by [`Geom::winograd`]), and so do their input gradients
//! (themselves such convolutions, [`Geom::grad_input_winograd`]) and, on maps of 64×64 and
//! more, their weight gradients (the forward's adjoint, [`Geom::weight_grad_winograd`]).
//!
//! A 1×1 convolution with stride 1 and no padding (DenseNet's bottlenecks, ResNet's projections)
//! skips im2col: the image already is its column matrix. Work is spread over the images of the
//! batch when there are at least as many as threads (each GEMM serial), otherwise over each
//! GEMM. Sums run in a fixed order, so results do not depend on the thread count.
//!
//! The files: `route.rs` (the sizes of one convolution and which route each pass takes),
//! `im2col.rs` (column matrices and their adjoint), `shifted.rs` (the stride-1 passes by
//! shifted products), `weight_grad.rs` (the weight gradient), `op.rs` (the candle ops: forward,
//! input gradient, bias gradient).

mod im2col;
mod op;
mod route;
mod shifted;
mod weight_grad;

use candle_core::Tensor;
use rayon::prelude::*;

use crate::route::fast;
use crate::{generic, per_image_parallel, with_scratch};
use op::Conv2dOp;

/// Stride, zero padding and dilation of a convolution, each (height, width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
        }
    }
}

/// The output length of one axis, `None` when the kernel span does not fit the padded input.
fn out_len(size: usize, pad: usize, k: usize, stride: usize, dilation: usize) -> Option<usize> {
    let span = dilation * (k - 1) + 1;
    (size + 2 * pad >= span).then(|| (size + 2 * pad - span) / stride + 1)
}

/// The output positions `o` of one axis whose input `o·stride + offset` lies in `0..size`.
pub(crate) fn valid(offset: isize, stride: usize, size: usize, out: usize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if offset >= 0 {
        0
    } else {
        (-offset + s - 1) / s
    };
    let hi = (size as isize - offset + s - 1).div_euclid(s);
    let (lo, hi) = (lo.clamp(0, out as isize), hi.clamp(0, out as isize));
    (lo as usize, hi.max(lo) as usize)
}

/// The convolution of N×C×H×W `x` with an O×C×kh×kw `weight`, plus an optional per-channel
/// `bias`, differentiable in all three: this crate's kernels for f32 on the CPU (bias added in
/// the same pass), the generic path elsewhere ([`crate::Kernels`]).
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: Conv2dParams,
) -> candle_core::Result<Tensor> {
    routed(x, weight, bias, params, false)
}

/// [`conv2d`] followed by ReLU in the same pass over the output (its backward masks the gradient
/// where the output is zero).
pub fn conv2d_relu(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: Conv2dParams,
) -> candle_core::Result<Tensor> {
    routed(x, weight, bias, params, true)
}

fn routed(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: Conv2dParams,
    relu: bool,
) -> candle_core::Result<Tensor> {
    if fast(x) && fast(weight) {
        cpu_conv2d(x, weight, bias, params, relu)
    } else {
        generic::conv2d(x, weight, bias, params, relu)
    }
}

/// The CPU kernels' convolution (f32 tensors in CPU memory only), whatever the routing says.
pub(crate) fn cpu_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: Conv2dParams,
    relu: bool,
) -> candle_core::Result<Tensor> {
    let op = Conv2dOp { params, relu };
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        None => x.apply_op2(&weight, op),
        Some(b) => x.apply_op3(&weight, &b.contiguous()?, op),
    }
}

/// The rows of `src` (each `len` long) into the columns `at..at + len` of the rows of `dst`,
/// `stride` apart, in parallel over the rows.
fn place_columns(src: &[f32], len: usize, dst: &mut [f32], (stride, at): (usize, usize)) {
    if len == 0 {
        return;
    }
    dst.par_chunks_mut(stride)
        .zip(src.par_chunks(len))
        .for_each(|(d, s)| d[at..at + len].copy_from_slice(s));
}

/// Runs `f(image index, output slot, scratch, parallel kernels)` over the images of a batch:
/// spread over threads image by image when there are enough images, else one at a time. The
/// scratch is the running thread's (see [`with_scratch`]).
fn for_each_image<T: Send>(
    out: &mut [T],
    per_image: usize,
    n: usize,
    f: impl Fn(usize, &mut [T], &mut Vec<f32>, bool) -> candle_core::Result<()> + Sync,
) -> candle_core::Result<()> {
    if per_image == 0 {
        return Ok(());
    }
    if per_image_parallel(n) {
        out.par_chunks_mut(per_image)
            .enumerate()
            .try_for_each(|(i, slot)| with_scratch(|scratch| f(i, slot, scratch, false)))
    } else {
        with_scratch(|scratch| {
            for (i, slot) in out.chunks_mut(per_image).enumerate() {
                f(i, slot, scratch, true)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
fn params(s: (usize, usize), p: (usize, usize), d: (usize, usize)) -> Conv2dParams {
    Conv2dParams {
        stride: s,
        padding: p,
        dilation: d,
    }
}

#[cfg(test)]
mod tests;

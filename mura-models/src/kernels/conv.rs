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

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use std::mem::MaybeUninit;

use super::gemm::{
    COLUMN_BLOCK, Out, Stored, block_len, fresh, init_from, init_from_rows, sgemm,
    sgemm_columns_strided, sgemm_fresh, sgemm_fresh_blocked, sgemm_strided, sgemm_transposed_out,
    transpose, zeroed,
};
use super::winograd::Winograd;
use super::{f32_slice, per_image_parallel, room, with_scratch};

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

/// The output channels up to which the backward passes of a stride-1 convolution run by
/// shifted products (see [`Geom::grad_input_shifted`]).
const FEW_OUTPUTS: usize = 32;

/// The fewest input and output channels a convolution runs by Winograd with
/// ([`Geom::winograd`]).
const WINOGRAD_CHANNELS: usize = 32;

/// The fewest 4×4 output tiles per image a convolution runs by Winograd with (a 28×28 map has
/// 49).
const WINOGRAD_TILES: usize = 49;

/// The fewest 4×4 output tiles per image the weight gradient runs by Winograd with (a 64×64
/// map has 256).
const WINOGRAD_WEIGHT_GRAD_TILES: usize = 256;

/// The most floats the batch's column matrix of [`Geom::weight_grad_batched`] may take (64 MB).
const BATCHED_COLUMNS: usize = 16 << 20;

/// The sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    p: Conv2dParams,
}

impl Geom {
    fn new(x: &[usize], weight: &[usize], p: Conv2dParams) -> candle_core::Result<Self> {
        let (&[n, c, h, w], &[o, ci, kh, kw]) = (x, weight) else {
            candle_core::bail!("conv2d: input {x:?} and weight {weight:?} must both be 4-D")
        };
        if ci != c {
            candle_core::bail!("conv2d: input has {c} channels, the weight {weight:?} expects {ci}")
        }
        let (sh, sw) = p.stride;
        let (dh, dw) = p.dilation;
        if sh == 0 || sw == 0 || dh == 0 || dw == 0 || kh == 0 || kw == 0 {
            candle_core::bail!("conv2d: kernel, stride and dilation must be positive ({p:?})")
        }
        let ho = out_len(h, p.padding.0, kh, sh, dh);
        let wo = out_len(w, p.padding.1, kw, sw, dw);
        let (Some(ho), Some(wo)) = (ho, wo) else {
            candle_core::bail!(
                "conv2d: input {h}×{w} with padding {:?} is smaller than the kernel {kh}×{kw} at dilation {:?}",
                p.padding,
                p.dilation
            )
        };
        Ok(Self {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            ho,
            wo,
            p,
        })
    }

    /// Rows of the column matrix (C·kh·kw).
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output positions per image.
    fn l(&self) -> usize {
        self.ho * self.wo
    }

    fn image(&self) -> usize {
        self.c * self.h * self.w
    }

    /// The image is its own column matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.p.stride == (1, 1) && self.p.padding == (0, 0)
    }

    /// Whether the forward runs by shifted products ([`Geom::forward_shifted`]): stride 1, no
    /// dilation, a kernel larger than 1×1, and at most a quarter more output columns computed
    /// than kept (a 3×3 kernel on a 7×7 image computes 9 columns per row for 7). Empty
    /// channel counts take im2col, which handles them.
    fn shifted(&self) -> bool {
        let (_, wp) = self.padded();
        self.c > 0
            && self.o > 0
            && self.p.stride == (1, 1)
            && self.p.dilation == (1, 1)
            && !self.pointwise()
            && 4 * wp <= 5 * self.wo
    }

    /// The input gradient of a stride-1 convolution is itself a stride-1 convolution: of the
    /// output gradient (O×ho×wo) padded by (kh-1-ph, kw-1-pw), with the kernel flipped and its
    /// channels swapped ([`Geom::flipped`]), giving C×h×w. Its geometry; `None` for a stride or
    /// a dilation, or padding as wide as the kernel.
    fn grad_input_conv(&self) -> Option<Geom> {
        let (ph, pw) = self.p.padding;
        if self.p.stride != (1, 1) || self.p.dilation != (1, 1) || ph >= self.kh || pw >= self.kw {
            return None;
        }
        Some(Geom {
            c: self.o,
            h: self.ho,
            w: self.wo,
            o: self.c,
            ho: self.h,
            wo: self.w,
            p: Conv2dParams {
                padding: (self.kh - 1 - ph, self.kw - 1 - pw),
                ..self.p
            },
            ..*self
        })
    }

    /// [`Geom::grad_input_conv`] where it runs by shifted products ([`Geom::shifted`]) and
    /// pays, sparing the K×L column matrix Wᵀ·dY and its col2im; `None` where col2im stays:
    /// no such convolution, too many columns wasted, or more than [`FEW_OUTPUTS`] output
    /// channels or fewer input channels. The column matrix costs its memory traffic, C·kh·kw·L,
    /// against a product of depth O: with O = 32 it dominates (DenseNet's 128 → 32 growth
    /// convolution: backward 22.0 → 18.4 ms at 56×56, 2.2 → 1.5 at 14×14, batch 8, with the
    /// weight gradient below), with O = 64 the two ways measured the same and with O ≥ 128 the
    /// taps' products lost up to 16% (512 → 1024 at 8×8).
    fn grad_input_shifted(&self) -> Option<Geom> {
        if self.o > FEW_OUTPUTS || self.c < FEW_OUTPUTS {
            return None;
        }
        self.grad_input_conv().filter(Geom::shifted)
    }

    /// The Winograd tiling of [`Geom::grad_input_conv`] where that runs by Winograd
    /// ([`Geom::winograd`]).
    fn grad_input_winograd(&self) -> Option<Winograd> {
        self.grad_input_conv()?.winograd()
    }

    /// The weight (O×C×kh×kw) flipped in both kernel axes and with its channels swapped
    /// (C×O×kh×kw): the weight of [`Geom::grad_input_conv`]'s convolution.
    fn flipped(&self, w: &[f32]) -> Vec<f32> {
        let taps = self.kh * self.kw;
        let mut out = vec![0f32; self.o * self.c * taps];
        for (j, kernel) in out.chunks_mut(taps).enumerate() {
            let (ci, o) = (j / self.o, j % self.o);
            let src = &w[(o * self.c + ci) * taps..(o * self.c + ci + 1) * taps];
            kernel
                .iter_mut()
                .zip(src.iter().rev())
                .for_each(|(d, s)| *d = *s);
        }
        out
    }

    /// The Winograd tiling ([`Winograd`]) where the forward runs by it: a 3×3 kernel at stride
    /// 1 without dilation, at least [`WINOGRAD_CHANNELS`] channels in and out, and at least
    /// [`WINOGRAD_TILES`] tiles per image. Measured at batch 16 against the other routes
    /// (`docs/benchmarks.md`): 1.3–1.7× faster on 28×28 maps and larger with 64 or more
    /// channels each way (80 → 192 at 73×73: 89.9 → 55.8 ms), 1.07–1.3× with 32 on one side;
    /// slower on 16 → 16 (4%) and on 16×16 maps and smaller (256 → 256 at 14×14: 15.0 → 23.0
    /// ms), where 16 tiles or fewer make each of the 36 products too small.
    fn winograd(&self) -> Option<Winograd> {
        if (self.kh, self.kw) != (3, 3)
            || self.p.stride != (1, 1)
            || self.p.dilation != (1, 1)
            || self.c < WINOGRAD_CHANNELS
            || self.o < WINOGRAD_CHANNELS
        {
            return None;
        }
        Winograd::new(self.c, self.o, (self.h, self.w), self.p.padding)
            .filter(|t| t.tiles() >= WINOGRAD_TILES)
    }

    /// The Winograd tiling where the weight gradient runs by it ([`Winograd::weight_grad`]):
    /// where the forward does, with at least [`WINOGRAD_WEIGHT_GRAD_TILES`] tiles per image.
    fn weight_grad_winograd(&self) -> Option<Winograd> {
        self.winograd()
            .filter(|t| t.tiles() >= WINOGRAD_WEIGHT_GRAD_TILES)
    }

    /// The padded image's height and width.
    fn padded(&self) -> (usize, usize) {
        (self.h + 2 * self.p.padding.0, self.w + 2 * self.p.padding.1)
    }

    /// The weight (O×C×kh×kw) as one O×C matrix per kernel tap, tap-major.
    fn tap_weights(&self, w: &[f32]) -> Vec<f32> {
        let (taps, oc) = (self.kh * self.kw, self.o * self.c);
        let mut out = vec![0f32; taps * oc];
        for (t, m) in out.chunks_mut(oc.max(1)).enumerate() {
            for (j, v) in m.iter_mut().enumerate() {
                *v = w[j * taps + t];
            }
        }
        out
    }

    /// Image `x` (C×H×W) into `out` as C planes of hp×wp with its zero border, then kw zeros
    /// (the last tap of the last plane reads that far past it, into columns that are dropped).
    fn pad_into(&self, x: &[f32], out: &mut [f32]) {
        let (hp, wp) = self.padded();
        let (ph, pw) = self.p.padding;
        let (planes, slack) = out.split_at_mut(self.c * hp * wp);
        slack.fill(0.0);
        for (dst, src) in planes.chunks_mut(hp * wp).zip(x.chunks(self.h * self.w)) {
            dst[..ph * wp].fill(0.0);
            dst[(ph + self.h) * wp..].fill(0.0);
            let rows = dst[ph * wp..(ph + self.h) * wp].chunks_mut(wp);
            for (d, s) in rows.zip(src.chunks(self.w)) {
                d[..pw].fill(0.0);
                d[pw..pw + self.w].copy_from_slice(s);
                d[pw + self.w..].fill(0.0);
            }
        }
    }

    /// The buffers of the shifted products, from `scratch`: image `x` padded ([`Geom::pad_into`]:
    /// C·hp·wp + kw elements) and the O × ho·wp matrix at the padded width that follows it.
    fn padded_and_wide<'s>(
        &self,
        x: &[f32],
        scratch: &'s mut Vec<f32>,
    ) -> (&'s [f32], &'s mut [f32]) {
        let (hp, wp) = self.padded();
        let padded_len = self.c * hp * wp + self.kw;
        let buffer = room(scratch, padded_len + self.o * self.ho * wp);
        let (padded, wide) = buffer.split_at_mut(padded_len);
        self.pad_into(x, padded);
        (padded, wide)
    }

    /// Where kernel tap `t` (row-major over kh×kw) reads the padded image: dy·wp + dx.
    fn tap_offset(&self, t: usize) -> usize {
        (t / self.kw) * self.padded().1 + t % self.kw
    }

    /// The stride-1 convolution of one image without a column matrix: Y = Σ_t W_t · shift_t(P)
    /// over the kernel taps t, where P is the padded image (C × hp·wp) and shift_t(P) is P
    /// read from the tap's offset dy·wp + dx on: each tap's operand is the padded image itself,
    /// rows hp·wp apart. The products run at the padded width (output rows of wp columns, the
    /// last kw - 1 of each dropped), in blocks of [`COLUMN_BLOCK`] columns, each tap adding into
    /// the block. im2col wrote and the GEMM re-read kh·kw copies of the image (26% of a
    /// DenseNet-169 inference profile); this copies it once.
    fn forward_shifted<'y>(
        &self,
        x: &[f32],
        taps: &[f32],
        y: &'y mut [MaybeUninit<f32>],
        scratch: &mut Vec<f32>,
        parallel: bool,
    ) -> candle_core::Result<&'y mut [f32]> {
        let (padded, wide) = self.padded_and_wide(x, scratch);
        let (hp, wp) = self.padded();
        let (plane, wide_len) = (hp * wp, self.ho * wp);
        let oc = self.o * self.c;
        let mut j0 = 0;
        while j0 < wide_len {
            let nb = block_len(COLUMN_BLOCK, wide_len - j0);
            for t in 0..self.kh * self.kw {
                let offset = self.tap_offset(t);
                sgemm_strided(
                    (self.o, nb, self.c),
                    &taps[t * oc..(t + 1) * oc],
                    (&padded[offset + j0..], plane),
                    (&mut wide[j0..], wide_len),
                    t > 0,
                    parallel,
                )?;
            }
            j0 += nb;
        }
        // Output row (o, y) is the first wo columns of wide row o·ho + y.
        let y = &mut y[..self.o * self.l()];
        Ok(init_from_rows(y, (wide, wp), self.wo))
    }

    /// For column-matrix row `r`: its input channel, and the (row, column) offsets of its kernel
    /// tap relative to output position 0.
    fn tap(&self, r: usize) -> (usize, isize, isize) {
        let (ci, ky, kx) = (
            r / (self.kh * self.kw),
            (r / self.kw) % self.kh,
            r % self.kw,
        );
        let oy = (ky * self.p.dilation.0) as isize - self.p.padding.0 as isize;
        let ox = (kx * self.p.dilation.1) as isize - self.p.padding.1 as isize;
        (ci, oy, ox)
    }

    /// Columns `l0..l0 + lc` of the column matrix (K×L) of one image (C×H×W), as a row-major
    /// K×lc `cols`.
    fn im2col(&self, x: &[f32], (l0, lc): (usize, usize), cols: &mut [f32], parallel: bool) {
        let (sy, sx) = self.p.stride;
        let fill = |(r, row): (usize, &mut [f32])| {
            let (ci, off_y, off_x) = self.tap(r);
            let plane = &x[ci * self.h * self.w..(ci + 1) * self.h * self.w];
            let (x0, x1) = valid(off_x, sx, self.w, self.wo);
            // The positions l0.. cover the tail of one output row, whole rows, the head of one.
            let (mut rest, mut pos) = (row, l0);
            while !rest.is_empty() {
                let (oy, xa) = (pos / self.wo, pos % self.wo);
                let xb = (xa + rest.len()).min(self.wo);
                let (out, tail) = rest.split_at_mut(xb - xa);
                (rest, pos) = (tail, pos + (xb - xa));
                let iy = (oy * sy) as isize + off_y;
                if iy < 0 || iy >= self.h as isize {
                    out.fill(0.0);
                    continue;
                }
                let src = &plane[iy as usize * self.w..(iy as usize + 1) * self.w];
                let (va, vb) = (x0.clamp(xa, xb), x1.clamp(xa, xb));
                if va == vb {
                    // No input column under this tap in the segment (a segment shorter than the
                    // padding: the first input column would lie before the row).
                    out.fill(0.0);
                    continue;
                }
                out[..va - xa].fill(0.0);
                out[vb - xa..].fill(0.0);
                let out = &mut out[va - xa..vb - xa];
                let start = ((va * sx) as isize + off_x) as usize;
                if sx == 1 {
                    out.copy_from_slice(&src[start..start + out.len()]);
                } else {
                    for (o, v) in out.iter_mut().zip(src[start..].iter().step_by(sx)) {
                        *o = *v;
                    }
                }
            }
        };
        if parallel {
            cols.par_chunks_mut(lc).enumerate().for_each(fill);
        } else {
            cols.chunks_mut(lc).enumerate().for_each(fill);
        }
    }

    /// The column matrix (K×L) of one image: the image itself when pointwise, else its im2col
    /// written into `cols`.
    fn columns<'a>(&self, x: &'a [f32], cols: &'a mut Vec<f32>, parallel: bool) -> &'a [f32] {
        if self.pointwise() {
            return x;
        }
        let cols = room(cols, self.k() * self.l());
        self.im2col(x, (0, self.l()), cols, parallel);
        cols
    }

    /// Whether the weight gradient runs as one product over the whole batch
    /// ([`Geom::weight_grad_batched`]): where an image's K×O part outweighs its operands by
    /// half again (K·O > 1.5·L·(K + O): deep layers on small maps, as ResNet-50's 7×7 stage
    /// and the custom CNN's last two blocks) and the batch's column matrix stays within
    /// [`BATCHED_COLUMNS`] floats. Measured at batch 8 against the per-image products:
    /// 1.8–2.3× on ResNet-50's 7×7 layers (K·O is 8–9 times L·(K + O)), 1.2–1.35× on the
    /// custom CNN's 256 → 512 at 16×16 (1.6 times), 0.83–1.05× on ResNet-50's 14×14 layers
    /// (1.04–1.17 times).
    fn weight_grad_batched_pays(&self) -> bool {
        let (k, l, o) = (self.k(), self.l(), self.o);
        self.n > 1 && 2 * k * o > 3 * l * (k + o) && k * l * self.n <= BATCHED_COLUMNS
    }

    /// The weight gradient of the whole batch, dWᵀ (K×O) = cols·dYᵀ over the N·L columns of
    /// all the images side by side (image i's in columns i·L..(i+1)·L of both operands),
    /// written into `dwt`. Per image, each product wrote a K×O part that the sum then read
    /// back, N parts per step (ResNet-50's 23.5 M weights: 188 M floats at batch 8), with a
    /// depth of L alone (49 on a 7×7 map); gathering the operands costs (K + O)·N·L.
    fn weight_grad_batched(
        &self,
        (x, dy): (&[f32], &[f32]),
        dwt: &mut [MaybeUninit<f32>],
    ) -> candle_core::Result<()> {
        let (k, l, o, nl) = (self.k(), self.l(), self.o, self.n * self.l());
        with_scratch(|scratch| {
            let (cols, dys) = room(scratch, (k + o) * nl).split_at_mut(k * nl);
            let mut image_cols = Vec::new();
            for i in 0..self.n {
                let (xi, dyi) = self.image_and_grad((x, dy), i);
                place_columns(
                    self.columns(xi, &mut image_cols, true),
                    l,
                    cols,
                    (nl, i * l),
                );
                place_columns(dyi, l, dys, (nl, i * l));
            }
            let (sa, sb) = (Stored::AsIs, Stored::Transposed);
            sgemm_transposed_out((o, k, nl), dys, sa, cols, sb, Out::Fresh(dwt), true)?;
            Ok(())
        })
    }

    /// Image `i`'s output gradient (O×L) and column matrix (K×L): the operands of its weight
    /// gradient dY·colsᵀ.
    fn weight_grad_operands<'a>(
        &self,
        (x, dy): (&'a [f32], &'a [f32]),
        i: usize,
        cols: &'a mut Vec<f32>,
        parallel: bool,
    ) -> (&'a [f32], &'a [f32]) {
        let (xi, dyi) = self.image_and_grad((x, dy), i);
        (dyi, self.columns(xi, cols, parallel))
    }

    /// Image `i` (C×H×W) of the batch `x` and its output gradient (O×L) in `dy`.
    fn image_and_grad<'a>(
        &self,
        (x, dy): (&'a [f32], &'a [f32]),
        i: usize,
    ) -> (&'a [f32], &'a [f32]) {
        let (image, ol) = (self.image(), self.o * self.l());
        (&x[i * image..(i + 1) * image], &dy[i * ol..(i + 1) * ol])
    }

    /// Whether the weight gradient runs by shifted products ([`Geom::weight_grad_shifted`]):
    /// where the forward does, with at most [`FEW_OUTPUTS`] output channels and at least four
    /// times as many input channels. There im2col's column matrix outweighs the product
    /// (DenseNet's 128 → 32); with 32 → 32 (Inception-v3's stem) the taps' O×C products,
    /// deep and narrow, measured 4% slower, and 10–20% with more outputs or fewer inputs.
    fn weight_grad_shifted_pays(&self) -> bool {
        self.shifted() && self.o <= FEW_OUTPUTS && self.c >= 4 * self.o
    }

    /// Image `i`'s weight gradient by shifted products, written (or added, `accumulate`) into
    /// `dwt`, dWᵀ (K×O): for each tap t, dW_t (O×C) = dY·shift_t(P)ᵀ, the output gradient
    /// widened to the padded width (zeros in the columns the forward drops) against the padded
    /// image read from the tap's offset, as in [`Geom::forward_shifted`]. im2col wrote kh·kw
    /// copies of the image; this copies it once.
    fn weight_grad_shifted(
        &self,
        (x, dy): (&[f32], &[f32]),
        i: usize,
        dwt: &mut [f32],
        accumulate: bool,
        scratch: &mut Vec<f32>,
        parallel: bool,
    ) -> candle_core::Result<()> {
        let (x, dy) = self.image_and_grad((x, dy), i);
        let (padded, wide) = self.padded_and_wide(x, scratch);
        let (hp, wp) = self.padded();
        let (plane, depth) = (hp * wp, self.ho * wp);
        for (dst, src) in wide.chunks_mut(wp).zip(dy.chunks(self.wo)) {
            dst[..self.wo].copy_from_slice(src);
            dst[self.wo..].fill(0.0);
        }
        let (taps, o) = (self.kh * self.kw, self.o);
        for t in 0..taps {
            let offset = self.tap_offset(t);
            sgemm_columns_strided(
                (o, self.c, depth),
                wide,
                (&padded[offset..], plane),
                (&mut dwt[t * o..], taps * o),
                accumulate,
                parallel,
            )?;
        }
        Ok(())
    }

    /// Adds a column matrix (K×L) back into an image gradient (C×H×W), writing every element.
    fn col2im(&self, cols: &[f32], dx: &mut [MaybeUninit<f32>], parallel: bool) {
        let (l, taps) = (self.l(), self.kh * self.kw);
        let plane_len = self.h * self.w;
        let add = |(ci, plane): (usize, &mut [MaybeUninit<f32>])| {
            let plane = zeroed(plane);
            for r in ci * taps..(ci + 1) * taps {
                let (_, off_y, off_x) = self.tap(r);
                let (x0, x1) = valid(off_x, self.p.stride.1, self.w, self.wo);
                let row = &cols[r * l..(r + 1) * l];
                for (oy, g) in row.chunks(self.wo).enumerate() {
                    let iy = (oy * self.p.stride.0) as isize + off_y;
                    if iy < 0 || iy >= self.h as isize || x0 == x1 {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * self.w..(iy as usize + 1) * self.w];
                    let start = ((x0 * self.p.stride.1) as isize + off_x) as usize;
                    if self.p.stride.1 == 1 {
                        // Contiguous on both sides: a loop the compiler vectorises (`step_by`
                        // does not, and this was 8% of a DenseNet-121 training step).
                        let dst = &mut dst[start..start + (x1 - x0)];
                        for (d, v) in dst.iter_mut().zip(&g[x0..x1]) {
                            *d += *v;
                        }
                    } else {
                        let targets = dst[start..].iter_mut().step_by(self.p.stride.1);
                        for (d, v) in targets.zip(&g[x0..x1]) {
                            *d += *v;
                        }
                    }
                }
            }
        };
        if parallel {
            dx.par_chunks_mut(plane_len).enumerate().for_each(add);
        } else {
            dx.chunks_mut(plane_len).enumerate().for_each(add);
        }
    }

    fn check_grad(&self, grad: &[usize]) -> candle_core::Result<()> {
        if grad != [self.n, self.o, self.ho, self.wo] {
            candle_core::bail!(
                "conv2d backward: gradient {grad:?} does not match the output {:?}",
                [self.n, self.o, self.ho, self.wo]
            )
        }
        Ok(())
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

/// The convolution of N×C×H×W `x` with an O×C×kh×kw `weight`, plus an optional per-channel
/// `bias` added in the same pass, as a custom op with its backward. f32 on CPU only;
/// [`crate::layers::Conv`] falls back to candle elsewhere.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: Conv2dParams,
) -> candle_core::Result<Tensor> {
    apply(
        x,
        weight,
        bias,
        Conv2dOp {
            params,
            relu: false,
        },
    )
}

/// [`conv2d`] followed by ReLU in the same pass over the output (its backward masks the gradient
/// where the output is zero).
pub fn conv2d_relu(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: Conv2dParams,
) -> candle_core::Result<Tensor> {
    apply(x, weight, bias, Conv2dOp { params, relu: true })
}

fn apply(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    op: Conv2dOp,
) -> candle_core::Result<Tensor> {
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        None => x.apply_op2(&weight, op),
        Some(b) => x.apply_op3(&weight, &b.contiguous()?, op),
    }
}

/// The convolution, then the ReLU when `relu`.
struct Conv2dOp {
    params: Conv2dParams,
    relu: bool,
}

impl Conv2dOp {
    fn forward(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.dims(), l2.dims(), self.params)?;
        let x = f32_slice(s1, l1, "conv2d")?;
        let w = f32_slice(s2, l2, "conv2d")?;
        let bias = bias
            .map(|(s, l)| f32_slice(s, l, "conv2d bias"))
            .transpose()?;
        if let Some(b) = bias
            && b.len() != g.o
        {
            candle_core::bail!("conv2d: {} output channels but {} biases", g.o, b.len())
        }
        let (k, l) = (g.k(), g.l());
        let winograd = g.winograd().map(|t| (t, t.weights(w)));
        let taps = (winograd.is_none() && g.shifted()).then(|| g.tap_weights(w));
        let image = |i: usize, yi: &mut [MaybeUninit<f32>], cols: &mut Vec<f32>, par: bool| {
            let xi = &x[i * g.image()..(i + 1) * g.image()];
            if let Some((t, u)) = &winograd {
                // Bias and ReLU are applied in its output transform.
                return t.forward(xi, u, bias, self.relu, yi, cols, par);
            }
            let yi = if g.pointwise() {
                sgemm_fresh((g.o, l, k), w, Stored::AsIs, xi, Stored::AsIs, yi, par)?
            } else if let Some(taps) = &taps {
                g.forward_shifted(xi, taps, yi, cols, par)?
            } else {
                let im2col = |l0, lc, block: &mut [f32]| g.im2col(xi, (l0, lc), block, par);
                sgemm_fresh_blocked((g.o, l, k), w, COLUMN_BLOCK, cols, im2col, yi, par)?
            };
            if bias.is_some() || self.relu {
                let zero = [0f32];
                let shifts = bias.unwrap_or(&zero).iter().cycle();
                for (row, &b) in yi.chunks_mut(l).zip(shifts) {
                    if self.relu {
                        row.iter_mut().for_each(|v| *v = (*v + b).max(0.0));
                    } else {
                        row.iter_mut().for_each(|v| *v += b);
                    }
                }
            }
            Ok(())
        };
        // SAFETY: the images' slots partition the output and `sgemm_fresh` (or the Winograd
        // forward) writes every element of each (o × l) slot before `image` returns `Ok`.
        #[allow(unsafe_code)]
        let y = unsafe { fresh(g.n * g.o * l, |y| for_each_image(y, g.o * l, g.n, image))? };
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.o, g.ho, g.wo))))
    }

    /// The gradient reaching the convolution itself: `grad` where the ReLU passed its input,
    /// zero where it cut it (the output is zero there), contiguous.
    fn pre_act(&self, out: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
        if self.relu {
            grad.mul(&out.gt(0f32)?.to_dtype(grad.dtype())?)
        } else {
            grad.contiguous()
        }
    }

    /// The gradients of the input (when it needs one) and of the weight.
    fn grads(
        &self,
        x: &Tensor,
        weight: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() {
            let (_, _, h, w) = x.dims4()?;
            Some(weight.apply_op2_no_bwd(grad, &ConvGradInput(self.params, (h, w)))?)
        } else {
            None
        };
        let dw = if weight.track_op() {
            let (_, _, kh, kw) = weight.dims4()?;
            Some(x.apply_op2_no_bwd(grad, &ConvGradWeight(self.params, (kh, kw)))?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "mura-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        self.grads(x, weight, &self.pre_act(res, grad)?)
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "mura-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = self.pre_act(res, grad)?;
        let (dx, dw) = self.grads(x, weight, &grad)?;
        let db = bias
            .track_op()
            .then(|| grad.apply_op1_no_bwd(&ChannelSums))
            .transpose()?;
        Ok((dx, dw, db))
    }
}

/// N×C×H×W → the C per-channel sums (the bias gradient), in f64 and a fixed order.
struct ChannelSums;

impl CustomOp1 for ChannelSums {
    fn name(&self) -> &'static str {
        "mura-channel-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let &[n, c, h, w] = l.dims() else {
            candle_core::bail!(
                "channel sums: expects an N×C×H×W tensor, got {:?}",
                l.dims()
            )
        };
        let v = f32_slice(s, l, "channel sums")?;
        let hw = h * w;
        let sums: Vec<f32> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let mut acc = 0f64;
                for b in 0..n {
                    let plane = &v[(b * c + ch) * hw..(b * c + ch + 1) * hw];
                    acc += plane
                        .chunks(256)
                        .map(|k| f64::from(k.iter().sum::<f32>()))
                        .sum::<f64>();
                }
                acc as f32
            })
            .collect();
        Ok((CpuStorage::F32(sums), Shape::from(c)))
    }
}

/// (weight, output gradient) → input gradient, for an input of the given height and width.
struct ConvGradInput(Conv2dParams, (usize, usize));

impl CustomOp2 for ConvGradInput {
    fn name(&self) -> &'static str {
        "mura-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (&[o, c, _, _], &[n, ..]) = (l1.dims(), l2.dims()) else {
            candle_core::bail!(
                "conv2d backward: weight {:?}, gradient {:?}",
                l1.dims(),
                l2.dims()
            )
        };
        let (h, w) = self.1;
        let g = Geom::new(&[n, c, h, w], l1.dims(), self.0)?;
        g.check_grad(l2.dims())?;
        let weight = f32_slice(s1, l1, "conv2d backward")?;
        let dy = f32_slice(s2, l2, "conv2d backward")?;
        let (k, l) = (g.k(), g.l());
        // Winograd, then shifted products, with the flipped kernel (see `grad_input_conv`).
        let winograd = g.grad_input_winograd();
        let shifted = g.grad_input_shifted().filter(|_| winograd.is_none());
        let flipped = (winograd.is_some() || shifted.is_some()).then(|| g.flipped(weight));
        let winograd = winograd
            .zip(flipped.as_deref())
            .map(|(t, f)| (t, t.weights(f)));
        let taps = shifted
            .zip(flipped.as_deref())
            .map(|(t, f)| t.tap_weights(f));
        let image = |i: usize, dxi: &mut [MaybeUninit<f32>], cols: &mut Vec<f32>, par: bool| {
            let dyi = &dy[i * o * l..(i + 1) * o * l];
            let wt = Stored::Transposed;
            if let Some((t, u)) = &winograd {
                t.forward(dyi, u, None, false, dxi, cols, par)?;
            } else if let (Some(t), Some(taps)) = (&shifted, &taps) {
                t.forward_shifted(dyi, taps, dxi, cols, par)?;
            } else if g.pointwise() {
                sgemm_fresh((k, l, o), weight, wt, dyi, Stored::AsIs, dxi, par)?;
            } else {
                let cols = room(cols, k * l);
                sgemm((k, l, o), weight, wt, dyi, Stored::AsIs, cols, false, par)?;
                g.col2im(cols, dxi, par);
            }
            Ok(())
        };
        // SAFETY: the images' slots partition dx; the Winograd forward and `forward_shifted`
        // initialise the first C·ho'·wo' = C·H·W elements of a slot, `sgemm_fresh` all k·l = C·H·W (pointwise: the
        // image is its column matrix), `col2im` zeroes each of its C planes before adding.
        #[allow(unsafe_code)]
        let dx = unsafe {
            fresh(g.n * g.image(), |dx| {
                for_each_image(dx, g.image(), g.n, image)
            })?
        };
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.c, g.h, g.w))))
    }
}

/// (input, output gradient) → weight gradient, for a kernel of the given height and width.
struct ConvGradWeight(Conv2dParams, (usize, usize));

impl CustomOp2 for ConvGradWeight {
    fn name(&self) -> &'static str {
        "mura-conv2d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (&[_, c, _, _], &[_, o, _, _]) = (l1.dims(), l2.dims()) else {
            candle_core::bail!(
                "conv2d backward: input {:?}, gradient {:?}",
                l1.dims(),
                l2.dims()
            )
        };
        let (kh, kw) = self.1;
        let g = Geom::new(l1.dims(), &[o, c, kh, kw], self.0)?;
        g.check_grad(l2.dims())?;
        let x = f32_slice(s1, l1, "conv2d backward")?;
        let dy = f32_slice(s2, l2, "conv2d backward")?;
        let (k, l, ok) = (g.k(), g.l(), g.o * g.k());
        let winograd = g.weight_grad_winograd();
        let shifted = winograd.is_none() && g.weight_grad_shifted_pays();
        // dWᵀ (K×O) = Σ_i cols_i (K×L) · dY_iᵀ (L×O), summed over the images in index order:
        // the GEMM writes the transposed output fastest (see `sgemm_transposed_out`).
        let dims = (o, k, l);
        let (sa, sb) = (Stored::AsIs, Stored::Transposed);
        let dwt = if g.n == 0 {
            vec![0f32; ok]
        } else if g.weight_grad_batched_pays() {
            // SAFETY: the product writes all k·o elements.
            #[allow(unsafe_code)]
            unsafe {
                fresh(ok, |d| g.weight_grad_batched((x, dy), d))?
            }
        } else if per_image_parallel(g.n) && g.n > 1 {
            let part = |i: usize, part: &mut [MaybeUninit<f32>], cols: &mut Vec<f32>, _| {
                if let Some(t) = &winograd {
                    let (xi, dyi) = g.image_and_grad((x, dy), i);
                    return t.weight_grad(xi, dyi, zeroed(part), cols, false);
                }
                if shifted {
                    return g.weight_grad_shifted((x, dy), i, zeroed(part), false, cols, false);
                }
                let (a, b) = g.weight_grad_operands((x, dy), i, cols, false);
                sgemm_transposed_out(dims, a, sa, b, sb, Out::Fresh(part), false).map(|_| ())
            };
            // SAFETY: the images' slots partition `parts`, and a fresh product writes all of its
            // slot's k·o elements (the shifted one writes a zeroed slot).
            #[allow(unsafe_code)]
            let parts = unsafe { fresh(g.n * ok, |p| for_each_image(p, ok, g.n, part))? };
            // Summed image by image in index order, vectorised across the elements.
            let sum = |(j, chunk): (usize, &mut [MaybeUninit<f32>])| {
                let (at, len) = (j * 4096, chunk.len());
                let chunk = init_from(chunk, &parts[at..at + len]);
                for i in 1..g.n {
                    let part = &parts[i * ok + at..i * ok + at + len];
                    chunk.iter_mut().zip(part).for_each(|(d, v)| *d += *v);
                }
            };
            // SAFETY: the chunks partition the output and `init_from` writes each in full.
            #[allow(unsafe_code)]
            unsafe {
                fresh(ok, |d| {
                    d.par_chunks_mut(4096).enumerate().for_each(sum);
                    Ok::<(), candle_core::Error>(())
                })?
            }
        } else {
            // Each image's product apart, then added to the sum in index order: the sums of the
            // branch above, so the result does not depend on the thread count. (Added by the
            // GEMM itself, each image would join the sum block by block of its depth, L: other
            // bits once L passes the GEMM's depth block, as at 28×28.)
            let all = |d: &mut [MaybeUninit<f32>]| {
                with_scratch(|cols| {
                    let d = zeroed(d);
                    let mut part = vec![0f32; if g.n > 1 { ok } else { 0 }];
                    for i in 0..g.n {
                        let dst = if i == 0 { &mut *d } else { &mut part[..] };
                        if let Some(t) = &winograd {
                            let (xi, dyi) = g.image_and_grad((x, dy), i);
                            t.weight_grad(xi, dyi, dst, cols, true)?;
                        } else if shifted {
                            g.weight_grad_shifted((x, dy), i, dst, false, cols, true)?;
                        } else {
                            if i > 0 {
                                // The product adds into its output: the last image's part goes.
                                dst.fill(0.0);
                            }
                            let (a, b) = g.weight_grad_operands((x, dy), i, cols, true);
                            sgemm_transposed_out(dims, a, sa, b, sb, Out::Add(dst), true)?;
                        }
                        if i > 0 {
                            d.iter_mut().zip(&part).for_each(|(s, v)| *s += *v);
                        }
                    }
                    Ok::<(), candle_core::Error>(())
                })
            };
            // SAFETY: `all` zeroes the whole output before it adds into it.
            #[allow(unsafe_code)]
            unsafe {
                fresh(ok, all)?
            }
        };
        let mut dw = vec![0f32; ok];
        transpose(&dwt, k, o, &mut dw);
        Ok((CpuStorage::F32(dw), Shape::from((g.o, g.c, kh, kw))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, DType, Device, Var};

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| crate::layers::unit(crate::layers::splitmix64(seed ^ (i << 20))) * 2.0 - 1.0)
            .collect()
    }

    /// Direct convolution in f64: (y, dx, dw) for a given output gradient.
    #[allow(clippy::type_complexity)]
    fn reference(
        x: &[f32],
        wt: &[f32],
        dy: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        (o, kh, kw): (usize, usize, usize),
        p: Conv2dParams,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let ho = out_len(h, p.padding.0, kh, p.stride.0, p.dilation.0).unwrap();
        let wo = out_len(w, p.padding.1, kw, p.stride.1, p.dilation.1).unwrap();
        let mut y = vec![0f64; n * o * ho * wo];
        let mut dx = vec![0f64; n * c * h * w];
        let mut dw = vec![0f64; o * c * kh * kw];
        for b in 0..n {
            for oc in 0..o {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let yi = ((b * o + oc) * ho + oy) * wo + ox;
                        for ci in 0..c {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * p.stride.0 + ky * p.dilation.0) as isize
                                        - p.padding.0 as isize;
                                    let ix = (ox * p.stride.1 + kx * p.dilation.1) as isize
                                        - p.padding.1 as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xi = ((b * c + ci) * h + iy as usize) * w + ix as usize;
                                    let wi = ((oc * c + ci) * kh + ky) * kw + kx;
                                    y[yi] += f64::from(x[xi]) * f64::from(wt[wi]);
                                    dx[xi] += f64::from(dy[yi]) * f64::from(wt[wi]);
                                    dw[wi] += f64::from(dy[yi]) * f64::from(x[xi]);
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dx, dw)
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-5 * scale,
                "{what}[{i}]: {g} vs {w} (scale {scale})"
            );
        }
    }

    fn params(s: (usize, usize), p: (usize, usize), d: (usize, usize)) -> Conv2dParams {
        Conv2dParams {
            stride: s,
            padding: p,
            dilation: d,
        }
    }

    /// Forward, input and weight gradients against the direct loops, over the shapes the zoo uses
    /// and awkward ones: strides leaving different remainders per axis, asymmetric padding,
    /// dilation, 1×7 kernels, pointwise, by shifted products and by im2col, batches below and
    /// above the thread count.
    #[test]
    fn forward_and_both_gradients_match_direct_loops() {
        let dev = Device::Cpu;
        let cases = [
            ((2, 3, 9, 7), (4, 3, 3), params((1, 1), (1, 1), (1, 1))),
            ((3, 2, 10, 11), (5, 3, 3), params((2, 2), (1, 1), (1, 1))),
            ((1, 3, 15, 12), (2, 7, 7), params((2, 2), (3, 3), (1, 1))),
            ((2, 4, 8, 9), (3, 1, 1), params((1, 1), (0, 0), (1, 1))),
            ((4, 4, 8, 9), (3, 1, 1), params((2, 2), (0, 0), (1, 1))),
            ((2, 3, 6, 13), (2, 1, 7), params((1, 1), (0, 3), (1, 1))),
            ((2, 3, 13, 6), (2, 7, 1), params((1, 1), (3, 0), (1, 1))),
            ((2, 2, 12, 12), (3, 3, 3), params((1, 1), (2, 2), (2, 2))),
            ((3, 2, 11, 8), (2, 3, 2), params((3, 2), (1, 0), (1, 2))),
            ((1, 1, 5, 5), (1, 5, 5), params((1, 1), (0, 0), (1, 1))),
            ((2, 2, 3, 3), (2, 3, 3), params((2, 2), (4, 4), (1, 1))),
            // More output positions than one GEMM column block (256): blocks end mid-row.
            ((1, 2, 23, 19), (3, 3, 3), params((1, 1), (1, 1), (1, 1))),
            ((2, 2, 40, 37), (2, 3, 3), params((2, 2), (1, 1), (1, 1))),
            ((1, 1, 30, 41), (2, 3, 5), params((1, 2), (2, 1), (2, 1))),
            // Inception-v3's 1×7 and 7×1 at 17×17 (one block of 289 columns), and at 20×17,
            // where a block ends one column into a row: a segment narrower than the padding.
            ((1, 2, 17, 17), (2, 1, 7), params((1, 1), (0, 3), (1, 1))),
            ((1, 2, 17, 17), (2, 7, 1), params((1, 1), (3, 0), (1, 1))),
            ((1, 2, 20, 17), (2, 1, 7), params((1, 1), (0, 3), (1, 1))),
            ((1, 2, 20, 17), (2, 7, 1), params((1, 1), (3, 0), (1, 1))),
            // By shifted products (see `shifted_products_are_chosen_where_they_pay`): a 3×2
            // kernel padded on one axis over two blocks, a 5×5 padded by 2.
            ((2, 3, 20, 18), (3, 3, 2), params((1, 1), (1, 0), (1, 1))),
            ((2, 2, 12, 16), (3, 5, 5), params((1, 1), (2, 2), (1, 1))),
            // Few outputs from many inputs: both gradients by shifted products too, the input
            // gradient over two column blocks in the first.
            ((2, 32, 20, 18), (3, 3, 2), params((1, 1), (1, 0), (1, 1))),
            ((2, 32, 12, 16), (3, 5, 5), params((1, 1), (2, 2), (1, 1))),
            ((1, 40, 9, 11), (8, 3, 3), params((1, 1), (1, 1), (1, 1))),
            // Shifted forward, but padding as wide as the kernel: the input gradient by col2im.
            ((1, 2, 6, 7), (2, 3, 3), params((1, 1), (3, 3), (1, 1))),
            ((2, 2, 9, 12), (3, 3, 1), params((1, 1), (1, 1), (1, 1))),
            // By Winograd F(4×4, 3×3) (see `winograd_is_chosen_where_it_pays`): one image (its
            // steps spread over the threads), two with one axis unpadded and sizes that leave
            // partial tiles.
            // Both also take Winograd for the input gradient (32 → 32 at 28×28; 34 → 33 at
            // 30×29 padded by (2, 1)); the weight gradient by Winograd from 256 tiles up: one
            // image, and two (one per thread) of 16×16 tiles, the last row partial.
            ((1, 32, 28, 28), (32, 3, 3), params((1, 1), (1, 1), (1, 1))),
            ((2, 33, 30, 29), (34, 3, 3), params((1, 1), (0, 1), (1, 1))),
            ((1, 32, 64, 64), (32, 3, 3), params((1, 1), (1, 1), (1, 1))),
            ((2, 32, 63, 64), (33, 3, 3), params((1, 1), (1, 1), (1, 1))),
            // The weight gradient as one product over the batch (see
            // `weight_grad_batched_is_chosen_for_deep_layers_on_small_maps`): 3×3, pointwise
            // and a strided 1×1.
            ((3, 16, 4, 3), (24, 3, 3), params((1, 1), (1, 1), (1, 1))),
            ((3, 40, 3, 3), (48, 1, 1), params((1, 1), (0, 0), (1, 1))),
            ((2, 32, 7, 7), (128, 1, 1), params((2, 2), (0, 0), (1, 1))),
        ];
        for (t, ((n, c, h, w), (o, kh, kw), p)) in cases.into_iter().enumerate() {
            let xv = rand_vec(n * c * h * w, 10 + t as u64);
            let wv = rand_vec(o * c * kh * kw, 100 + t as u64);
            let x = Var::from_vec(xv.clone(), (n, c, h, w), &dev).unwrap();
            let wt = Var::from_vec(wv.clone(), (o, c, kh, kw), &dev).unwrap();
            let y = conv2d(&x, &wt, None, p).unwrap();
            let (_, _, ho, wo) = y.dims4().unwrap();
            let dyv = rand_vec(n * o * ho * wo, 1000 + t as u64);
            let dy = Tensor::from_vec(dyv.clone(), (n, o, ho, wo), &dev).unwrap();
            let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            let (ry, rdx, rdw) = reference(&xv, &wv, &dyv, (n, c, h, w), (o, kh, kw), p);
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            close(&flat(&y), &ry, &format!("case {t} y"));
            close(&flat(grads.get(&x).unwrap()), &rdx, &format!("case {t} dx"));
            close(
                &flat(grads.get(&wt).unwrap()),
                &rdw,
                &format!("case {t} dw"),
            );
        }
    }

    #[test]
    fn shifted_products_are_chosen_where_they_pay() {
        let geom = |x: [usize; 4], w: [usize; 4], p| Geom::new(&x, &w, p).unwrap();
        let (same, one) = (params((1, 1), (1, 1), (1, 1)), (1, 1));
        // Cases of `forward_and_both_gradients_match_direct_loops` that take this path.
        for (x, w, p) in [
            ([1, 2, 23, 19], [3, 2, 3, 3], same),
            ([1, 2, 17, 17], [2, 2, 7, 1], params(one, (3, 0), one)),
            ([1, 2, 20, 17], [2, 2, 7, 1], params(one, (3, 0), one)),
            ([2, 3, 20, 18], [3, 3, 3, 2], params(one, (1, 0), one)),
            ([2, 2, 12, 16], [3, 2, 5, 5], params(one, (2, 2), one)),
            // DenseNet's growth convolution at 14×14, Inception-v3's stem.
            ([8, 128, 14, 14], [32, 128, 3, 3], same),
            ([8, 32, 149, 149], [32, 32, 3, 3], params(one, (0, 0), one)),
        ] {
            assert!(geom(x, w, p).shifted(), "{x:?} {w:?} should be shifted");
        }
        for (x, w, p) in [
            // More than a quarter of the columns wasted (7 of 9, 17 of 23), a stride, a
            // dilation, a pointwise kernel.
            ([8, 128, 7, 7], [32, 128, 3, 3], same),
            ([1, 2, 17, 17], [2, 2, 1, 7], params(one, (0, 3), one)),
            ([1, 2, 16, 16], [2, 2, 3, 3], params((2, 2), (1, 1), one)),
            ([1, 2, 16, 16], [2, 2, 3, 3], params(one, (2, 2), (2, 2))),
            ([1, 2, 16, 16], [2, 2, 1, 1], params(one, (0, 0), one)),
            ([1, 0, 16, 16], [2, 0, 3, 3], same),
            ([1, 2, 16, 16], [0, 2, 3, 3], same),
        ] {
            assert!(!geom(x, w, p).shifted(), "{x:?} {w:?} should use im2col");
        }
        // The input gradient as the convolution of the output gradient by the flipped kernel:
        // DenseNet's growth convolution at 14×14, Inception-v3's unpadded stem (padded by 2 in
        // the gradient), a 3×2 kernel padded on one axis (by 1 on both in the gradient).
        let stem = ([8, 32, 149, 149], [32, 32, 3, 3], params(one, (0, 0), one));
        let narrow = ([2, 32, 20, 18], [3, 32, 3, 2], params(one, (1, 0), one));
        for (x, w, p, pad) in [
            ([8, 128, 14, 14], [32, 128, 3, 3], same, (1, 1)),
            (stem.0, stem.1, stem.2, (2, 2)),
            (narrow.0, narrow.1, narrow.2, (1, 1)),
        ] {
            let g = geom(x, w, p);
            let t = g.grad_input_shifted().expect("a shifted input gradient");
            assert_eq!((t.c, t.h, t.w), (g.o, g.ho, g.wo), "{x:?} {w:?}");
            assert_eq!(
                (t.o, t.ho, t.wo, t.p.padding),
                (g.c, g.h, g.w, pad),
                "{x:?} {w:?}"
            );
        }
        for (x, w, p) in [
            // Padding as wide as the kernel, a stride, 7 of 9 columns kept, a pointwise kernel.
            ([1, 2, 6, 7], [2, 2, 3, 3], params(one, (3, 3), one)),
            ([2, 2, 9, 12], [3, 2, 3, 1], same),
            ([1, 2, 16, 16], [2, 2, 3, 3], params((2, 2), (1, 1), one)),
            ([8, 128, 7, 7], [32, 128, 3, 3], same),
            ([1, 2, 16, 16], [2, 2, 1, 1], params(one, (0, 0), one)),
            // More than 32 outputs (ResNet-50's 3×3 at 56×56), fewer than 32 inputs.
            ([8, 64, 56, 56], [64, 64, 3, 3], same),
            ([8, 16, 64, 64], [32, 16, 3, 3], same),
        ] {
            assert!(geom(x, w, p).grad_input_shifted().is_none(), "{x:?} {w:?}");
        }
        // The weight gradient: few outputs from four times as many inputs.
        for (x, w, p, pays) in [
            ([8, 128, 56, 56], [32, 128, 3, 3], same, true),
            (narrow.0, narrow.1, narrow.2, true),
            (stem.0, stem.1, stem.2, false),
            ([8, 64, 56, 56], [64, 64, 3, 3], same, false),
            ([8, 128, 7, 7], [32, 128, 3, 3], same, false),
            (
                [8, 128, 56, 56],
                [32, 128, 3, 3],
                params((2, 2), (1, 1), one),
                false,
            ),
        ] {
            assert_eq!(
                geom(x, w, p).weight_grad_shifted_pays(),
                pays,
                "{x:?} {w:?}"
            );
        }
        // The flipped weights as the gradient convolution's taps: tap t's C×O matrix holds
        // w[o][c][kh-1-ky][kw-1-kx].
        let g = geom([1, 2, 8, 8], [3, 2, 2, 3], same);
        let w: Vec<f32> = (0..3 * 2 * 6).map(|v| v as f32).collect();
        let t = g
            .grad_input_conv()
            .expect("a stride-1 gradient convolution");
        let flipped = t.tap_weights(&g.flipped(&w));
        for (t, (ci, o)) in
            (0..6).flat_map(|t| (0..2).flat_map(move |c| (0..3).map(move |o| (t, (c, o)))))
        {
            let (ky, kx) = (1 - t / 3, 2 - t % 3);
            assert_eq!(
                flipped[t * 6 + ci * 3 + o],
                w[((o * 2 + ci) * 2 + ky) * 3 + kx]
            );
        }
        // Which run as empty products, not panics.
        let dev = Device::Cpu;
        for (c, o) in [(0, 2), (2, 0)] {
            let x = Tensor::zeros((1, c, 16, 16), DType::F32, &dev).unwrap();
            let w = Tensor::zeros((o, c, 3, 3), DType::F32, &dev).unwrap();
            let y = conv2d(&x, &w, None, same).unwrap();
            assert_eq!(y.dims(), &[1, o, 16, 16]);
            assert!(
                y.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .all(|&v| v == 0.0)
            );
        }
    }

    /// The forward runs by Winograd for 3×3 stride-1 convolutions with at least 32 channels
    /// each way and 49 tiles (a 28×28 output), by the other routes elsewhere; the input
    /// gradient where its own convolution would, the weight gradient from 256 tiles.
    #[test]
    fn winograd_is_chosen_where_it_pays() {
        let geom = |x: [usize; 4], w: [usize; 4], p| Geom::new(&x, &w, p).unwrap();
        let (same, one) = (params((1, 1), (1, 1), (1, 1)), (1, 1));
        let valid = params(one, (0, 0), one);
        for (x, w, p) in [
            // ResNet-50's first two stages, DenseNet's growth convolution at 56×56,
            // Inception-v3's stem and 35×35 blocks, the custom CNN's 64 → 128 at 64×64.
            ([16, 64, 56, 56], [64, 64, 3, 3], same),
            ([16, 128, 28, 28], [128, 128, 3, 3], same),
            ([16, 128, 56, 56], [32, 128, 3, 3], same),
            ([16, 32, 149, 149], [32, 32, 3, 3], valid),
            ([16, 80, 73, 73], [192, 80, 3, 3], valid),
            ([16, 64, 35, 35], [96, 64, 3, 3], same),
            ([16, 64, 64, 64], [128, 64, 3, 3], same),
        ] {
            assert!(geom(x, w, p).winograd().is_some(), "{x:?} {w:?}");
        }
        for (x, w, p) in [
            // 14×14 (16 tiles), 16 channels, the RGB input, a stride, a dilation, 5×5, 3×1.
            ([16, 256, 14, 14], [256, 256, 3, 3], same),
            ([16, 16, 128, 128], [16, 16, 3, 3], same),
            ([16, 3, 256, 256], [32, 3, 3, 3], same),
            (
                [16, 64, 56, 56],
                [64, 64, 3, 3],
                params((2, 2), (1, 1), one),
            ),
            (
                [16, 64, 56, 56],
                [64, 64, 3, 3],
                params(one, (2, 2), (2, 2)),
            ),
            ([16, 64, 56, 56], [64, 64, 5, 5], params(one, (2, 2), one)),
            ([16, 64, 56, 56], [64, 64, 3, 1], params(one, (1, 0), one)),
        ] {
            assert!(geom(x, w, p).winograd().is_none(), "{x:?} {w:?}");
        }
        // The input gradient where its own convolution (O → C at the input's size) does:
        // ResNet-50's, the custom CNN's 64 → 128 at 64×64 (128 → 64 in the gradient),
        // DenseNet's 128 → 32 at 56×56 (32 → 128), Inception-v3's unpadded stem (padded by 2
        // in the gradient); not at 14×14, nor where the stride or the padding (3, as wide as
        // the kernel) leaves no stride-1 convolution.
        for (x, w, p, routed) in [
            ([8, 64, 56, 56], [64, 64, 3, 3], same, true),
            ([8, 64, 64, 64], [128, 64, 3, 3], same, true),
            ([8, 128, 56, 56], [32, 128, 3, 3], same, true),
            ([8, 32, 149, 149], [32, 32, 3, 3], valid, true),
            ([8, 256, 14, 14], [256, 256, 3, 3], same, false),
            (
                [8, 64, 56, 56],
                [64, 64, 3, 3],
                params((2, 2), (1, 1), one),
                false,
            ),
            (
                [8, 64, 56, 56],
                [64, 64, 3, 3],
                params(one, (3, 3), one),
                false,
            ),
        ] {
            let g = geom(x, w, p);
            assert_eq!(g.grad_input_winograd().is_some(), routed, "{x:?} {w:?}");
        }
        // The weight gradient from 256 tiles (a 64×64 output) up: the custom CNN's 32 → 64 at
        // 128×128 and 64 → 128 at 64×64, Inception-v3's stem; not ResNet-50's 56×56 (196
        // tiles), nor where the forward takes another route.
        for (x, w, p, routed) in [
            ([8, 32, 128, 128], [64, 32, 3, 3], same, true),
            ([8, 64, 64, 64], [128, 64, 3, 3], same, true),
            ([8, 32, 149, 149], [32, 32, 3, 3], valid, true),
            ([8, 80, 73, 73], [192, 80, 3, 3], valid, true),
            ([8, 128, 32, 32], [256, 128, 3, 3], same, false),
            ([8, 64, 56, 56], [64, 64, 3, 3], same, false),
            ([8, 16, 128, 128], [16, 16, 3, 3], same, false),
        ] {
            let g = geom(x, w, p);
            assert_eq!(g.weight_grad_winograd().is_some(), routed, "{x:?} {w:?}");
        }
    }

    /// The weight gradient runs as one product over the batch where an image's K×O part
    /// outweighs its operands by half again: ResNet-50's 7×7 stage and the custom CNN's last
    /// two blocks at batch 8, not ResNet-50's 14×14 or 28×28 stages, a single image or a
    /// batch whose column matrix would pass 16 M floats.
    #[test]
    fn weight_grad_batched_is_chosen_for_deep_layers_on_small_maps() {
        let geom = |x: [usize; 4], w: [usize; 4], p| Geom::new(&x, &w, p).unwrap();
        let (same, one) = (params((1, 1), (1, 1), (1, 1)), (1, 1));
        let point = params(one, (0, 0), one);
        for (x, w, p, batched) in [
            ([8, 2048, 7, 7], [512, 2048, 1, 1], point, true),
            ([8, 512, 7, 7], [512, 512, 3, 3], same, true),
            ([8, 1024, 14, 14], [256, 1024, 1, 1], point, false),
            ([8, 256, 14, 14], [256, 256, 3, 3], same, false),
            ([8, 512, 8, 8], [1024, 512, 3, 3], same, true),
            ([8, 256, 16, 16], [512, 256, 3, 3], same, true),
            ([8, 512, 28, 28], [128, 512, 1, 1], point, false),
            ([8, 128, 28, 28], [128, 128, 3, 3], same, false),
            ([1, 512, 7, 7], [512, 512, 3, 3], same, false),
            ([512, 512, 7, 7], [512, 512, 3, 3], same, false),
        ] {
            assert_eq!(
                geom(x, w, p).weight_grad_batched_pays(),
                batched,
                "{x:?} {w:?}"
            );
        }
    }

    /// The input gradient by central finite differences of a scalar loss (f32, step 1e-2).
    #[test]
    fn input_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let p = params((2, 1), (1, 2), (1, 1));
        let xv = rand_vec(2 * 2 * 6 * 5, 7);
        let wv = rand_vec(3 * 2 * 3 * 3, 8);
        let wt = Tensor::from_vec(wv, (3, 2, 3, 3), &dev).unwrap();
        let loss = |xv: &[f32]| -> f32 {
            let x = Tensor::from_vec(xv.to_vec(), (2, 2, 6, 5), &dev).unwrap();
            let y = conv2d(&x, &wt, None, p).unwrap();
            y.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let x = Var::from_vec(xv.clone(), (2, 2, 6, 5), &dev).unwrap();
        let y = conv2d(&x, &wt, None, p).unwrap();
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let dx: Vec<f32> = grads
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            grads.get(&wt).is_none(),
            "a constant weight gets no gradient"
        );
        for i in (0..xv.len()).step_by(7) {
            let (mut up, mut down) = (xv.clone(), xv.clone());
            up[i] += 1e-2;
            down[i] -= 1e-2;
            let fd = (loss(&up) - loss(&down)) / 2e-2;
            assert!(
                (fd - dx[i]).abs() <= 2e-2 * dx[i].abs().max(1.0),
                "{i}: {fd} vs {}",
                dx[i]
            );
        }
    }

    /// The bias is added per output channel and gets the channel sums of the output gradient;
    /// the other gradients are those of the convolution without it.
    #[test]
    fn bias_is_added_per_channel_and_gets_the_channel_sums() {
        let dev = Device::Cpu;
        let p = params((2, 1), (1, 0), (1, 1));
        let x = Var::from_vec(rand_vec(3 * 2 * 7 * 6, 1), (3, 2, 7, 6), &dev).unwrap();
        let wt = Var::from_vec(rand_vec(4 * 2 * 3 * 3, 2), (4, 2, 3, 3), &dev).unwrap();
        let b = Var::from_vec(vec![0.5f32, -1.0, 2.0, 0.0], 4, &dev).unwrap();
        let y0 = conv2d(&x, &wt, None, p).unwrap();
        let y1 = conv2d(&x, &wt, Some(&b), p).unwrap();
        let dy = Tensor::from_vec(rand_vec(y0.elem_count(), 3), y0.shape(), &dev).unwrap();
        let g0 = (&y0 * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let g1 = (&y1 * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = y0.broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap()).unwrap();
        assert_eq!(v(&y1), v(&want));
        assert_eq!(v(g0.get(&x).unwrap()), v(g1.get(&x).unwrap()));
        assert_eq!(v(g0.get(&wt).unwrap()), v(g1.get(&wt).unwrap()));
        let sums: Vec<f64> = (0..4)
            .map(|c| {
                v(&dy.narrow(1, c, 1).unwrap())
                    .iter()
                    .map(|e| f64::from(*e))
                    .sum()
            })
            .collect();
        close(&v(g1.get(&b).unwrap()), &sums, "bias gradient");
        let bad = Tensor::zeros(3, DType::F32, &dev).unwrap();
        let err = conv2d(&x, &wt, Some(&bad), p).unwrap_err().to_string();
        assert!(err.contains("4 output channels but 3 biases"), "{err}");
    }

    /// The fused ReLU gives relu(conv + bias) and the gradients of candle's own ReLU after the
    /// convolution, for the input, the weight and the bias (about half the outputs are cut).
    #[test]
    fn fused_relu_matches_relu_after_the_convolution() {
        let dev = Device::Cpu;
        let p = params((1, 2), (1, 1), (1, 1));
        let x = Var::from_vec(rand_vec(2 * 3 * 7 * 6, 11), (2, 3, 7, 6), &dev).unwrap();
        let wt = Var::from_vec(rand_vec(5 * 3 * 3 * 3, 12), (5, 3, 3, 3), &dev).unwrap();
        let b = Var::from_vec(rand_vec(5, 13), 5, &dev).unwrap();
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for bias in [None, Some(b.as_tensor())] {
            let want = conv2d(&x, &wt, bias, p).unwrap().relu().unwrap();
            let got = conv2d_relu(&x, &wt, bias, p).unwrap();
            assert_eq!(v(&got), v(&want));
            let cut = v(&got).iter().filter(|e| **e == 0.0).count();
            assert!(
                cut > got.elem_count() / 4 && cut < got.elem_count() * 3 / 4,
                "{cut}"
            );
            let dy = Tensor::from_vec(rand_vec(got.elem_count(), 14), got.shape(), &dev).unwrap();
            let gw = (&want * &dy)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gg = (&got * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            for t in [x.as_tensor(), wt.as_tensor(), b.as_tensor()] {
                match (gw.get(t), gg.get(t)) {
                    (Some(a), Some(c)) => close(
                        &v(c),
                        &v(a).iter().map(|e| f64::from(*e)).collect::<Vec<_>>(),
                        "fused ReLU gradient",
                    ),
                    (None, None) => assert!(bias.is_none(), "only an absent bias has no gradient"),
                    _ => panic!("the gradients disagree on what gets one"),
                }
            }
        }
    }

    #[test]
    fn an_input_that_needs_no_gradient_gets_none() {
        let dev = Device::Cpu;
        let x = Tensor::ones((2, 3, 8, 8), DType::F32, &dev).unwrap();
        let wt = Var::ones((4, 3, 3, 3), DType::F32, &dev).unwrap();
        let y = conv2d(&x, &wt, None, Conv2dParams::default()).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        // Each weight sees 2 images × 6×6 positions of ones.
        let dw: Vec<f32> = grads
            .get(&wt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(dw.iter().all(|v| *v == 72.0), "{dw:?}");
    }

    /// The same gradients, to the bit, on 1 and on 3 threads (images spread over threads or not).
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // Strided by im2col; stride 1 by shifted products in the forward and both gradients;
        // 32 → 32 at 28×28 by Winograd in the forward and the input gradient, at 64×64 in the
        // weight gradient too; at 4×4 the weight gradient as one product over the batch. Four
        // images: spread over the threads with up to 4, one at a time with 8.
        let cases = [
            ((2, 2), 12, 5),
            ((1, 1), 12, 5),
            ((1, 1), 28, 32),
            ((1, 1), 64, 32),
            ((1, 1), 4, 32),
        ];
        for (stride, size, o) in cases {
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let dev = Device::Cpu;
                    let x = rand_vec(4 * 32 * size * size, 1);
                    let x = Var::from_vec(x, (4, 32, size, size), &dev).unwrap();
                    let wt =
                        Var::from_vec(rand_vec(o * 32 * 3 * 3, 2), (o, 32, 3, 3), &dev).unwrap();
                    let y = conv2d(&x, &wt, None, params(stride, (1, 1), (1, 1))).unwrap();
                    let loss = y
                        .sqr()
                        .unwrap()
                        .sum_keepdim(D::Minus1)
                        .unwrap()
                        .sum_all()
                        .unwrap();
                    let g = loss.backward().unwrap();
                    let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    (v(&y), v(g.get(&x).unwrap()), v(g.get(&wt).unwrap()))
                })
            };
            for (a, b) in [(1, 3), (2, 8)] {
                let ((ya, dxa, dwa), (yb, dxb, dwb)) = (run(a), run(b));
                let what = format!("{stride:?} {size}×{size} → {o}, {a} and {b} threads");
                assert!(ya == yb, "outputs differ: {what}");
                assert!(dxa == dxb, "input gradients differ: {what}");
                assert!(dwa == dwb, "weight gradients differ: {what}");
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors_not_panics() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev).unwrap();
        let small = conv2d(
            &x,
            &Tensor::zeros((2, 3, 5, 5), DType::F32, &dev).unwrap(),
            None,
            Conv2dParams::default(),
        );
        assert!(
            small
                .unwrap_err()
                .to_string()
                .contains("smaller than the kernel")
        );
        let chans = conv2d(
            &x,
            &Tensor::zeros((2, 4, 3, 3), DType::F32, &dev).unwrap(),
            None,
            Conv2dParams::default(),
        );
        assert!(chans.unwrap_err().to_string().contains("3 channels"));
        let zero = params((0, 1), (0, 0), (1, 1));
        let stride = conv2d(
            &x,
            &Tensor::zeros((2, 3, 3, 3), DType::F32, &dev).unwrap(),
            None,
            zero,
        );
        assert!(stride.unwrap_err().to_string().contains("positive"));
        let f64x = x.to_dtype(DType::F64).unwrap();
        let w64 = Tensor::zeros((2, 3, 3, 3), DType::F64, &dev).unwrap();
        assert!(
            conv2d(&f64x, &w64, None, Conv2dParams::default())
                .unwrap_err()
                .to_string()
                .contains("f32")
        );
    }

    #[test]
    fn valid_ranges_cover_exactly_the_inside_positions() {
        for stride in 1..4 {
            for offset in -5isize..5 {
                for size in 1..8 {
                    let out = 6;
                    let (lo, hi) = valid(offset, stride, size, out);
                    for o in 0..out {
                        let i = (o * stride) as isize + offset;
                        let inside = i >= 0 && i < size as isize;
                        assert_eq!(
                            inside,
                            (lo..hi).contains(&o),
                            "{stride} {offset} {size} {o}"
                        );
                    }
                }
            }
        }
    }
}

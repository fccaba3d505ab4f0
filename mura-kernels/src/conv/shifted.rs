//! Stride-1 passes without a column matrix: each kernel tap's product reads the padded image
//! from the tap's offset, so the image is copied once instead of kh·kw times.

use std::mem::MaybeUninit;

use super::route::Geom;
use crate::gemm::{COLUMN_BLOCK, block_len, init_from_rows, sgemm_columns_strided, sgemm_strided};
use crate::room;

impl Geom {
    /// The padded image's height and width.
    pub(super) fn padded(&self) -> (usize, usize) {
        (self.h + 2 * self.p.padding.0, self.w + 2 * self.p.padding.1)
    }

    /// The weight (O×C×kh×kw) as one O×C matrix per kernel tap, tap-major.
    pub(super) fn tap_weights(&self, w: &[f32]) -> Vec<f32> {
        let (taps, oc) = (self.kh * self.kw, self.o * self.c);
        let mut out = vec![0f32; taps * oc];
        for (t, m) in out.chunks_mut(oc.max(1)).enumerate() {
            for (j, v) in m.iter_mut().enumerate() {
                *v = w[j * taps + t];
            }
        }
        out
    }

    /// The weight (O×C×kh×kw) flipped in both kernel axes and with its channels swapped
    /// (C×O×kh×kw): the weight of [`Geom::grad_input_conv`]'s convolution.
    pub(super) fn flipped(&self, w: &[f32]) -> Vec<f32> {
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

    /// Image `x` (C×H×W) into `out` as C planes of hp×wp with its zero border, then kw zeros
    /// (the last tap of the last plane reads that far past it, into columns that are dropped).
    pub(super) fn pad_into(&self, x: &[f32], out: &mut [f32]) {
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
    pub(super) fn padded_and_wide<'s>(
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
    pub(super) fn tap_offset(&self, t: usize) -> usize {
        (t / self.kw) * self.padded().1 + t % self.kw
    }

    /// The stride-1 convolution of one image without a column matrix: Y = Σ_t W_t · shift_t(P)
    /// over the kernel taps t, where P is the padded image (C × hp·wp) and shift_t(P) is P
    /// read from the tap's offset dy·wp + dx on: each tap's operand is the padded image itself,
    /// rows hp·wp apart. The products run at the padded width (output rows of wp columns, the
    /// last kw - 1 of each dropped), in blocks of [`COLUMN_BLOCK`] columns, each tap adding into
    /// the block. im2col writes, and the GEMM re-reads, kh·kw copies of the image; this copies it
    /// once.
    pub(super) fn forward_shifted<'y>(
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

    /// Image `i`'s weight gradient by shifted products, written (or added, `accumulate`) into
    /// `dwt`, dWᵀ (K×O): for each tap t, dW_t (O×C) = dY·shift_t(P)ᵀ, the output gradient
    /// widened to the padded width (zeros in the columns the forward drops) against the padded
    /// image read from the tap's offset, as in [`Geom::forward_shifted`]. im2col writes kh·kw
    /// copies of the image; this copies it once.
    pub(super) fn weight_grad_shifted(
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::params;

    /// The flipped weights as the gradient convolution's taps: tap t's C×O matrix holds
    /// w[o][c][kh-1-ky][kw-1-kx].
    #[test]
    fn the_flipped_kernel_holds_each_tap_reversed() {
        let same = params((1, 1), (1, 1), (1, 1));
        let g = Geom::new(&[1, 2, 8, 8], &[3, 2, 2, 3], same).unwrap();
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
    }
}

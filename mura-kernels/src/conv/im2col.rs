//! The column matrix of an image (each kernel tap's view of it, one row per input channel and
//! tap) and its adjoint, col2im, which adds a column matrix back into an image gradient.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::route::Geom;
use super::valid;
use crate::gemm::zeroed;
use crate::room;

impl Geom {
    /// For column-matrix row `r`: its input channel, and the (row, column) offsets of its kernel
    /// tap relative to output position 0.
    pub(super) fn tap(&self, r: usize) -> (usize, isize, isize) {
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
    pub(super) fn im2col(
        &self,
        x: &[f32],
        (l0, lc): (usize, usize),
        cols: &mut [f32],
        parallel: bool,
    ) {
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
    pub(super) fn columns<'a>(
        &self,
        x: &'a [f32],
        cols: &'a mut Vec<f32>,
        parallel: bool,
    ) -> &'a [f32] {
        if self.pointwise() {
            return x;
        }
        let cols = room(cols, self.k() * self.l());
        self.im2col(x, (0, self.l()), cols, parallel);
        cols
    }

    /// Adds a column matrix (K×L) back into an image gradient (C×H×W), writing every element.
    pub(super) fn col2im(&self, cols: &[f32], dx: &mut [MaybeUninit<f32>], parallel: bool) {
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
                        // does not).
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
}

//! The pooling backward: window by window for any float type (sums in f64), and for f32 tap
//! by tap over contiguous output columns, with the maxima and bits of the window scan.

use std::ops::Range;

use candle_core::{Shape, WithDType};
use rayon::prelude::*;

use super::forward::window_max;
use super::{Pool2d, PoolKind, deinterleave};
use crate::{valid, vectorised};

/// No maximum yet (a window with no element in the image).
const NONE: u32 = u32::MAX;

/// One kernel column of a pooling window, as the f32 backward visits it: its offset from an
/// output column's `ox·stride`, its (phase, shift) in the row split into `stride` phases, and
/// the output columns `x0..x1` whose tap lies in the image.
struct Tap {
    offset: isize,
    phase: usize,
    shift: isize,
    x0: usize,
    x1: usize,
}

/// What the f32 backward of one plane needs: the windows' rows and columns, the taps of a
/// row, the average's divisors, the plane's size and the row's phases.
struct PlaneBackward<'a> {
    rows: &'a [Range<usize>],
    taps: &'a [Tap],
    divisors: &'a [f32],
    h: usize,
    w: usize,
    ow: usize,
    stride: usize,
    phase_len: usize,
}

impl Pool2d {
    /// The f32 backward: each output's gradient to the first maximum of its window, or shared
    /// over it, accumulated in f32 (the generic [`Pool2d::bwd_typed`] accumulates in f64).
    ///
    /// Output row by output row, tap by tap as the forward: for kernel column `kx`, every output
    /// column whose tap lies in the image reads `row[ox·stride + kx − pad]`, from one phase of
    /// the row when the stride is above 1, so the inner loops run over contiguous output
    /// columns without branches (the window-by-window scan mispredicts a branch per element).
    /// Window elements are visited in scan order, so a maximum is picked as [`window_max`] picks
    /// it, and its gradients are added in output order: the same bits as the scan. Average shares
    /// reach an element in another order where windows overlap along a row (f32 rounding).
    pub(super) fn bwd_f32(
        &self,
        grad: &[f32],
        x: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
    ) -> candle_core::Result<(Vec<f32>, Shape)> {
        let (oh, ow) = self.output_size(h, w)?;
        if h * w >= NONE as usize {
            // Plane indices are u32 below.
            return self.bwd_typed(grad, x, (n, c, h, w));
        }
        let mut out = vec![0f32; n * c * h * w];
        let shape = Shape::from((n, c, h, w));
        if oh * ow == 0 || h * w == 0 {
            return Ok((out, shape));
        }
        let (rows, cols) = self.windows(h, w, oh, ow);
        let (taps, divisors) = (self.taps(w, ow), self.divisors(&rows, &cols));
        let plane = PlaneBackward {
            rows: &rows,
            taps: &taps,
            divisors: &divisors,
            h,
            w,
            ow,
            stride: self.stride.1,
            phase_len: w.div_ceil(self.stride.1),
        };
        let scratch = || (Vec::new(), Vec::new(), Vec::new());
        out.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .zip(grad.par_chunks(oh * ow))
            .for_each_init(scratch, |(best, at, phases), ((dx, src), g)| {
                vectorised(
                    #[inline(always)]
                    || match self.kind {
                        PoolKind::Max => plane.max(dx, (src, g), (best, at, phases)),
                        PoolKind::Avg { .. } => plane.avg(dx, g, best),
                    },
                )
            });
        Ok((out, shape))
    }

    /// Each kernel column's offset from output column ox's `ox·stride`, its place as (phase,
    /// shift) in the row split into `stride` phases, and the output columns it reaches.
    fn taps(&self, w: usize, ow: usize) -> Vec<Tap> {
        let sx = self.stride.1;
        (0..self.kernel.1)
            .filter_map(|kx| {
                let offset = kx as isize - self.padding.1 as isize;
                let (x0, x1) = valid(offset, sx, w, ow);
                let s = sx as isize;
                (x0 < x1).then(|| Tap {
                    offset,
                    phase: offset.rem_euclid(s) as usize,
                    shift: offset.div_euclid(s),
                    x0,
                    x1,
                })
            })
            .collect()
    }

    /// The divisor of each output position of an average (none for a maximum).
    fn divisors(&self, rows: &[Range<usize>], cols: &[Range<usize>]) -> Vec<f32> {
        match self.kind {
            PoolKind::Max => Vec::new(),
            PoolKind::Avg { count_include_pad } => {
                let area = (self.kernel.0 * self.kernel.1) as f32;
                rows.iter()
                    .flat_map(|r| {
                        cols.iter().map(move |cw| match count_include_pad {
                            true => area,
                            false => (r.len() * cw.len()) as f32,
                        })
                    })
                    .collect()
            }
        }
    }

    pub(super) fn bwd_typed<T: WithDType>(
        &self,
        grad: &[T],
        x: &[T],
        (n, c, h, w): (usize, usize, usize, usize),
    ) -> candle_core::Result<(Vec<T>, Shape)> {
        let (oh, ow) = self.output_size(h, w)?;
        let mut out = vec![T::zero(); n * c * h * w];
        out.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .zip(grad.par_chunks(oh * ow))
            .for_each(|((dx, src), g)| {
                let mut acc = vec![0f64; h * w];
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (rows, cols, divisor) = self.window(oy, ox, h, w);
                        let gv = g[oy * ow + ox].to_f64();
                        match self.kind {
                            PoolKind::Max => {
                                if let Some(i) = window_max(src, w, rows, cols) {
                                    acc[i] += gv;
                                }
                            }
                            PoolKind::Avg { .. } => {
                                let share = gv / divisor;
                                for y in rows {
                                    for a in &mut acc[y * w + cols.start..y * w + cols.end] {
                                        *a += share;
                                    }
                                }
                            }
                        }
                    }
                }
                for (d, a) in dx.iter_mut().zip(acc) {
                    *d = T::from_f64(a);
                }
            });
        Ok((out, Shape::from((n, c, h, w))))
    }
}

impl PlaneBackward<'_> {
    /// The max-pool gradient of one plane: each output row's running maxima over its window
    /// rows, tap by tap, then each output's gradient added at its maximum.
    #[inline(always)]
    fn max(
        &self,
        dx: &mut [f32],
        (src, g): (&[f32], &[f32]),
        (best, at, phases): (&mut Vec<f32>, &mut Vec<u32>, &mut Vec<f32>),
    ) {
        let (h, w, ow, sx, phase_len) = (self.h, self.w, self.ow, self.stride, self.phase_len);
        best.resize(ow, 0f32);
        at.resize(ow, 0u32);
        // Every row split into phases once (rows are shared by windows).
        let split_len = sx * phase_len;
        let plane: &[f32] = if sx == 1 {
            src
        } else {
            phases.resize(h * split_len, 0f32);
            for (row, split) in src.chunks(w).zip(phases.chunks_mut(split_len)) {
                deinterleave(row, sx, phase_len, split);
            }
            phases
        };
        for (rw, g) in self.rows.iter().zip(g.chunks(ow)) {
            best.fill(f32::NEG_INFINITY);
            at.fill(NONE);
            for y in rw.clone() {
                let split = &plane[y * split_len..(y + 1) * split_len];
                let base = (y * w) as u32;
                for t in self.taps {
                    window_max_tap(t, split, phase_len, base, sx as u32, best, at);
                }
            }
            for (&i, &gv) in at.iter().zip(g) {
                if i != NONE {
                    dx[i as usize] += gv;
                }
            }
        }
    }

    /// The average-pool gradient of one plane: each output's share added to every element of
    /// its window, tap by tap along the rows.
    #[inline(always)]
    fn avg(&self, dx: &mut [f32], g: &[f32], share: &mut Vec<f32>) {
        let (w, ow, sx) = (self.w, self.ow, self.stride);
        share.resize(ow, 0f32);
        for ((rw, g), d) in self
            .rows
            .iter()
            .zip(g.chunks(ow))
            .zip(self.divisors.chunks(ow))
        {
            for ((s, &gv), &d) in share.iter_mut().zip(g).zip(d) {
                *s = gv / d;
            }
            for y in rw.clone() {
                let row = &mut dx[y * w..(y + 1) * w];
                for t in self.taps {
                    for (ox, &s) in (t.x0..t.x1).zip(&share[t.x0..t.x1]) {
                        // In the row: `valid` keeps ox·sx + offset inside.
                        row[((ox * sx) as isize + t.offset) as usize] += s;
                    }
                }
            }
        }
    }
}

/// One tap of every output column's running maximum: output column ox takes the element at
/// `ox + shift` of the tap's phase (plane index `base + ox·stride + offset`) where it is larger
/// than the maximum so far, or a NaN over a number, or the window's first element: the rule of
/// [`window_max`], without a branch.
#[inline(always)]
fn window_max_tap(
    t: &Tap,
    split: &[f32],
    phase_len: usize,
    base: u32,
    stride: u32,
    best: &mut [f32],
    at: &mut [u32],
) {
    // In bounds: `valid` keeps ox·stride + offset inside the row.
    let start = t.phase * phase_len + (t.x0 as isize + t.shift) as usize;
    let taken = &split[start..start + (t.x1 - t.x0)];
    // In the plane, which has fewer than u32::MAX elements (see `bwd_f32`).
    let mut index = (base as isize + (t.x0 * stride as usize) as isize + t.offset) as u32;
    for ((b, a), &v) in best[t.x0..t.x1]
        .iter_mut()
        .zip(&mut at[t.x0..t.x1])
        .zip(taken)
    {
        #[allow(clippy::eq_op)]
        let take = *a == NONE || v > *b || (v != v && *b == *b);
        *b = if take { v } else { *b };
        *a = if take { index } else { *a };
        index = index.wrapping_add(stride);
    }
}

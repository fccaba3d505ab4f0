//! The pooling forward: window by window for any float type, and for f32 separably (rows,
//! then columns), each pass over contiguous slices.

use candle_core::{Shape, WithDType};
use rayon::prelude::*;

use super::{Pool2d, PoolKind, deinterleave};
use crate::{valid, vectorised};

impl Pool2d {
    pub(super) fn fwd_typed<T: WithDType>(
        &self,
        x: &[T],
        (n, c, h, w): (usize, usize, usize, usize),
    ) -> candle_core::Result<(Vec<T>, Shape)> {
        let (oh, ow) = self.output_size(h, w)?;
        let mut out = vec![T::zero(); n * c * oh * ow];
        out.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, src)| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (rows, cols, divisor) = self.window(oy, ox, h, w);
                        dst[oy * ow + ox] = match self.kind {
                            PoolKind::Max => window_max(src, w, rows, cols)
                                .map_or(T::from_f64(f64::NEG_INFINITY), |i| src[i]),
                            PoolKind::Avg { .. } => {
                                let mut sum = 0.0;
                                for y in rows {
                                    for v in &src[y * w + cols.start..y * w + cols.end] {
                                        sum += v.to_f64();
                                    }
                                }
                                T::from_f64(sum / divisor)
                            }
                        };
                    }
                }
            });
        Ok((out, Shape::from((n, c, oh, ow))))
    }

    /// The f32 forward, separable: each input row reduced over the column windows, then those
    /// row results reduced over the row windows, elementwise across the output row. Same values
    /// as [`Pool2d::fwd_typed`] up to f32 rounding of the sums (it sums in f64); maxima are
    /// exact, NaN included.
    pub(super) fn fwd_f32(
        &self,
        x: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
    ) -> candle_core::Result<(Vec<f32>, Shape)> {
        let (oh, ow) = self.output_size(h, w)?;
        let shape = Shape::from((n, c, oh, ow));
        if oh * ow == 0 || h * w == 0 {
            return Ok((vec![0f32; n * c * oh * ow], shape));
        }
        let out = match self.kind {
            PoolKind::Max => self.separable::<true>(x, (n, c, h, w), (oh, ow)),
            PoolKind::Avg { .. } => self.separable::<false>(x, (n, c, h, w), (oh, ow)),
        };
        Ok((out, shape))
    }

    /// [`Pool2d::fwd_f32`] for max (`MAX`) or average pooling into an N×C×oh×ow output. The
    /// row pass runs tap by tap: for kernel column `dx`, every output column whose tap lies
    /// in the image takes `row[ox·stride + dx − pad]`: a shifted slice of the row when the
    /// stride is 1, of one of its phases (the row de-interleaved once) when it is larger, so
    /// every pass is contiguous and vectorises, where a window-by-window fold does not. Taps are
    /// visited in the window's order, so sums and ties come out as in a left-to-right fold.
    fn separable<const MAX: bool>(
        &self,
        x: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        (oh, ow): (usize, usize),
    ) -> Vec<f32> {
        let (rows, cols) = self.windows(h, w, oh, ow);
        let include_pad = self.kind
            == PoolKind::Avg {
                count_include_pad: true,
            };
        let area = (self.kernel.0 * self.kernel.1) as f32;
        let sx = self.stride.1;
        // Each kernel column's input offset from output column 0, as (phase, shift) of the row
        // split into `sx` interleaved phases (phase p holds columns p, p + sx, ...), and the
        // output columns it reaches: output column ox takes element ox + shift of its phase.
        let taps: Vec<(usize, isize, usize, usize)> = (0..self.kernel.1)
            .map(|dx| {
                let offset = dx as isize - self.padding.1 as isize;
                let (x0, x1) = valid(offset, sx, w, ow);
                let s = sx as isize;
                (offset.rem_euclid(s) as usize, offset.div_euclid(s), x0, x1)
            })
            .filter(|t| t.2 < t.3)
            .collect();
        let phase_len = w.div_ceil(sx);
        // Each output's divisor (average pooling), laid out as the output plane.
        let divisors: Vec<f32> = match MAX {
            true => Vec::new(),
            false => rows
                .iter()
                .flat_map(|r| {
                    cols.iter().map(move |cw| match include_pad {
                        true => area,
                        false => (r.len() * cw.len()) as f32,
                    })
                })
                .collect(),
        };
        // A NaN beats every number, as in `window_max`.
        let reduce = |a: f32, b: f32| match MAX {
            true if b > a || b.is_nan() => b,
            true => a,
            false => a + b,
        };
        let init = if MAX { f32::NEG_INFINITY } else { 0.0 };
        let mut out = vec![0f32; n * c * oh * ow];
        let scratch = || (Vec::new(), Vec::new());
        out.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each_init(scratch, |(across, phases), (dst, src)| {
                // Inlined into `vectorised`'s AVX2 function (see `crate::simd`).
                vectorised(
                    #[inline(always)]
                    || {
                        across.resize(h * ow, 0f32);
                        phases.resize(sx * phase_len, 0f32);
                        for (a, row) in across.chunks_mut(ow).zip(src.chunks(w)) {
                            let split: &[f32] = if sx == 1 {
                                row
                            } else {
                                deinterleave(row, sx, phase_len, phases);
                                phases
                            };
                            a.fill(init);
                            for &(phase, shift, x0, x1) in &taps {
                                // In bounds: `valid` keeps x·sx + offset inside the row.
                                let start = phase * phase_len + (x0 as isize + shift) as usize;
                                let taken = &split[start..start + (x1 - x0)];
                                for (v, &e) in a[x0..x1].iter_mut().zip(taken) {
                                    *v = reduce(*v, e);
                                }
                            }
                        }
                        for (d, window) in dst.chunks_mut(ow).zip(&rows) {
                            d.fill(init);
                            for a in across[window.start * ow..window.end * ow].chunks(ow) {
                                for (o, &v) in d.iter_mut().zip(a) {
                                    *o = reduce(*o, v);
                                }
                            }
                        }
                        if !MAX {
                            dst.iter_mut().zip(&divisors).for_each(|(o, d)| *o /= d);
                        }
                    },
                )
            });
        out
    }
}

/// Index (in the plane) of the first maximum of a window in scan order, as PyTorch picks it; a NaN
/// beats every number. `None` for an empty window.
pub(super) fn window_max<T: WithDType>(
    src: &[T],
    w: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> Option<usize> {
    let mut best = T::zero();
    let mut at = None;
    for y in rows {
        for (x, &v) in src[y * w..][cols.clone()].iter().enumerate() {
            // `v != v` is NaN for the float types (the only ones pooled).
            #[allow(clippy::eq_op)]
            let (v_nan, best_nan) = (v != v, best != best);
            if at.is_none() || v > best || (v_nan && !best_nan) {
                best = v;
                at = Some(y * w + cols.start + x);
            }
        }
    }
    at
}

//! The 3×3 stride-1 convolution by Winograd's minimal filtering F(4×4, 3×3) (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016): each 4×4 block of outputs comes
//! from a 6×6 tile of input as Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A, 36 multiplications per channel
//! pair where the direct convolution spends 144. Over a batch of tiles the 36 element-wise
//! products are 36 GEMMs, (O×C)·(C×tiles), one per tile position ξ, between the transformed
//! weights U_ξ and the transformed input V_ξ; the output transform then gives back the 4×4
//! blocks. The GEMMs do a quarter of the direct convolution's multiply-adds (36 per 16 outputs
//! against 144); the transforms are additions and multiplications by small constants, run
//! eight lanes wide. The input gradient of such a convolution is another one (of the output
//! gradient, by the flipped kernel: `conv/route.rs` routes it here); the weight gradient is the
//! forward's adjoint ([`Winograd::weight_grad`]): dU_ξ = Σ V_ξ·(A·dY·Aᵀ)_ξᵀ over the tiles, then
//! dW = Gᵀ·dU·G.
//!
//! Precision: the transforms scale by up to 25 in and out (the points 0, ±1, ±2), so an f32
//! result differs from the direct sum by more than the direct GEMM's own rounding: from 1e-6 of
//! the output's largest magnitude with a few channels to 8e-6 with 256, growing about as the
//! square root of the channel count (the tests below, against an f64 reference).
//!
//! Work runs strip by strip (rows of tiles, about [`STRIP_TILES`] tiles), so the transformed
//! input and the products stay in cache between the three steps.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::gemm::{init_from, sgemm_rows_by_columns, sgemm_strided};
use super::room;
use super::simd::vectorised;

/// The side of an output block.
const M: usize = 4;
/// The side of an input tile: the output block plus the kernel's reach.
const ALPHA: usize = M + 2;
/// Positions in a transformed tile: one GEMM each.
const XI: usize = ALPHA * ALPHA;
/// Tiles per strip (rounded up to whole rows of tiles). On ResNet-50's and Inception-v3's shapes
/// strips of 128 and 256 tiles cost about the same and smaller ones more, their 36 products
/// being smaller; the size was chosen from those measurements (`cargo bench -p mura-kernels`,
/// docs/benchmarks.md).
const STRIP_TILES: usize = 128;

/// The weight transform: U = G·g·Gᵀ for a 3×3 kernel g.
const G: [[f64; 3]; ALPHA] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// One 3×3 stride-1 convolution's sizes, tiled in 4×4 output blocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Winograd {
    c: usize,
    o: usize,
    h: usize,
    w: usize,
    ph: usize,
    pw: usize,
    ho: usize,
    wo: usize,
    /// Rows and columns of tiles.
    th: usize,
    tw: usize,
}

impl Winograd {
    /// The tiling of a 3×3 stride-1 convolution of C×H×W images into O channels, zero-padded
    /// by (ph, pw); `None` when the padded image is smaller than the kernel or a size is zero.
    pub(crate) fn new(
        c: usize,
        o: usize,
        (h, w): (usize, usize),
        (ph, pw): (usize, usize),
    ) -> Option<Self> {
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        if c == 0 || o == 0 || hp < 3 || wp < 3 {
            return None;
        }
        let (ho, wo) = (hp - 2, wp - 2);
        Some(Self {
            c,
            o,
            h,
            w,
            ph,
            pw,
            ho,
            wo,
            th: ho.div_ceil(M),
            tw: wo.div_ceil(M),
        })
    }

    /// Tiles per image.
    pub(crate) fn tiles(&self) -> usize {
        self.th * self.tw
    }

    /// The weight (O×C×3×3) transformed, U_ξ = (G g Gᵀ)[ξ] as one O×C matrix per position
    /// ξ = 6·column + row, position-major. Computed in f64.
    pub(crate) fn weights(&self, w: &[f32]) -> Vec<f32> {
        let oc = self.o * self.c;
        let mut u = vec![0f32; XI * oc];
        for (pair, g) in w.chunks_exact(9).take(oc).enumerate() {
            // G·g (6×3), then (G·g)·Gᵀ (6×6).
            let mut gg = [[0f64; 3]; ALPHA];
            for (row, gi) in gg.iter_mut().zip(&G) {
                for (k, v) in row.iter_mut().enumerate() {
                    *v = (0..3).map(|t| gi[t] * f64::from(g[t * 3 + k])).sum();
                }
            }
            for (i, row) in gg.iter().enumerate() {
                for (j, gj) in G.iter().enumerate() {
                    let v: f64 = (0..3).map(|k| row[k] * gj[k]).sum();
                    u[(j * ALPHA + i) * oc + pair] = v as f32;
                }
            }
        }
        u
    }

    /// The convolution of one image `x` (C×H×W) with transformed weights `u` ([`Self::weights`]),
    /// plus `bias` per output channel and then the ReLU when `relu`, written into all O×Ho×Wo
    /// elements of `y`. `parallel` spreads each step over the rayon pool.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        x: &[f32],
        u: &[f32],
        bias: Option<&[f32]>,
        relu: bool,
        y: &mut [MaybeUninit<f32>],
        scratch: &mut Vec<f32>,
        parallel: bool,
    ) -> candle_core::Result<()> {
        let (c, o, tw) = (self.c, self.o, self.tw);
        let plane = self.ho * self.wo;
        if x.len() < c * self.h * self.w
            || u.len() < XI * o * c
            || y.len() < o * plane
            || bias.is_some_and(|b| b.len() < o)
        {
            candle_core::bail!(
                "winograd: {self:?} got an image of {}, weights of {}, an output of {} elements",
                x.len(),
                u.len(),
                y.len()
            )
        }
        let strip_rows = STRIP_TILES.div_ceil(tw).clamp(1, self.th);
        let max_ts = strip_rows * tw;
        let (v, m) = room(scratch, XI * (c + o) * max_ts).split_at_mut(XI * c * max_ts);
        let mut work = Vec::new();
        let y = &mut y[..o * plane];
        for ty0 in (0..self.th).step_by(strip_rows) {
            let rows = strip_rows.min(self.th - ty0);
            let ts = rows * tw;
            let (v, m) = (&mut v[..XI * c * ts], &mut m[..XI * o * ts]);
            self.transform_input(x, (ty0, rows), v, &mut work, parallel);
            // The 36 products: M[ξ][o][tile] = U_ξ · V_ξ, V_ξ's rows 36 runs apart.
            let v = &*v;
            let product = |(xi, mx): (usize, &mut [f32])| {
                sgemm_strided(
                    (o, ts, c),
                    &u[xi * o * c..(xi + 1) * o * c],
                    (&v[xi * ts..], XI * ts),
                    (mx, ts),
                    false,
                    false,
                )
            };
            if parallel {
                m.par_chunks_mut(o * ts).enumerate().try_for_each(product)?;
            } else {
                m.chunks_mut(o * ts).enumerate().try_for_each(product)?;
            }
            let m = &*m;
            // Output transform, channel by channel, into rows 4·ty0.. of each output plane.
            let output = |work: &mut Vec<f32>, (oi, yo): (usize, &mut [MaybeUninit<f32>])| {
                let b = bias.map_or(0.0, |b| b[oi]);
                let mo = &m[oi * ts..];
                vectorised(
                    #[inline(always)]
                    || self.output_strip(mo, o * ts, (ty0, rows), (b, relu), yo, work),
                );
            };
            for_each_chunk(y, plane, parallel, &mut work, output);
        }
        Ok(())
    }

    /// The weight gradient of one image, from its input `x` (C×H×W) and the gradient `dy`
    /// (O×Ho×Wo) reaching the convolution's output: dWᵀ (C·9 × O, row c·9 + 3·ky + kx, the
    /// layout of the column matrix's rows) written over the first 9·C·O elements of `dwt`.
    /// The adjoint of the forward, strip by strip: the input transformed as there (V), the
    /// output gradient through the adjoint of its output transform, dM = A·dY·Aᵀ per 4×4
    /// block, and per position ξ the product dU_ξ (C×O) += V_ξ·dM_ξᵀ over the strip's tiles;
    /// at the end dW = Gᵀ·dU·G (6×6 → 3×3) per channel pair, summed in f64. `parallel` spreads
    /// each step over the rayon pool without changing a bit of the result.
    pub(crate) fn weight_grad(
        &self,
        x: &[f32],
        dy: &[f32],
        dwt: &mut [f32],
        scratch: &mut Vec<f32>,
        parallel: bool,
    ) -> candle_core::Result<()> {
        let (c, o, tw) = (self.c, self.o, self.tw);
        let plane = self.ho * self.wo;
        if x.len() < c * self.h * self.w || dy.len() < o * plane || dwt.len() < 9 * c * o {
            candle_core::bail!(
                "winograd weight gradient: {self:?} got an image of {}, an output gradient of {}, a weight gradient of {} elements",
                x.len(),
                dy.len(),
                dwt.len()
            )
        }
        let strip_rows = STRIP_TILES.div_ceil(tw).clamp(1, self.th);
        let max_ts = strip_rows * tw;
        let buffer = room(scratch, XI * c * o + XI * (c + o) * max_ts);
        let (du, rest) = buffer.split_at_mut(XI * c * o);
        let (v, dm) = rest.split_at_mut(XI * c * max_ts);
        let mut work = Vec::new();
        for (strip, ty0) in (0..self.th).step_by(strip_rows).enumerate() {
            let rows = strip_rows.min(self.th - ty0);
            let ts = rows * tw;
            let (v, dm) = (&mut v[..XI * c * ts], &mut dm[..XI * o * ts]);
            self.transform_input(x, (ty0, rows), v, &mut work, parallel);
            // The output gradient's adjoint transform, channel by channel: dM[o][ξ][tile].
            let grad = |work: &mut Vec<f32>, (oi, dmo): (usize, &mut [f32])| {
                let src = &dy[oi * plane..(oi + 1) * plane];
                vectorised(
                    #[inline(always)]
                    || self.grad_strip(src, (ty0, rows), dmo, work),
                );
            };
            for_each_chunk(dm, XI * ts, parallel, &mut work, grad);
            // dU_ξ (C×O) (+)= V_ξ · dM_ξᵀ, both operands one run per channel, 36 apart.
            let (v, dm) = (&*v, &*dm);
            let product = |(xi, d): (usize, &mut [f32])| {
                sgemm_rows_by_columns(
                    (c, o, ts),
                    (&v[xi * ts..], XI * ts),
                    (&dm[xi * ts..], XI * ts),
                    (d, o),
                    strip > 0,
                    false,
                )
            };
            if parallel {
                du.par_chunks_mut(c * o).enumerate().try_for_each(product)?;
            } else {
                du.chunks_mut(c * o).enumerate().try_for_each(product)?;
            }
        }
        // dW[ky][kx] = Σ_ij G[i][ky]·G[j][kx]·dU[i][j], dU[i][j] at ξ = 6j + i.
        let mut coef = [[0f64; XI]; 9];
        for (tap, row) in coef.iter_mut().enumerate() {
            let (ky, kx) = (tap / 3, tap % 3);
            for (xi, v) in row.iter_mut().enumerate() {
                *v = G[xi % ALPHA][ky] * G[xi / ALPHA][kx];
            }
        }
        let du = &*du;
        let back = |acc: &mut Vec<f64>, (ci, rows): (usize, &mut [f32])| {
            acc.resize(o, 0.0);
            for (row, cf) in rows.chunks_mut(o).zip(&coef) {
                acc.fill(0.0);
                for (xi, &k) in cf.iter().enumerate().filter(|(_, k)| **k != 0.0) {
                    let src = &du[(xi * c + ci) * o..(xi * c + ci + 1) * o];
                    acc.iter_mut()
                        .zip(src)
                        .for_each(|(a, v)| *a += k * f64::from(*v));
                }
                row.iter_mut()
                    .zip(acc.iter())
                    .for_each(|(d, a)| *d = *a as f32);
            }
        };
        for_each_chunk(
            &mut dwt[..9 * c * o],
            9 * o,
            parallel,
            &mut Vec::new(),
            back,
        );
        Ok(())
    }

    /// Tile rows `ty0..ty0 + rows` of image `x` transformed into `v` (V[c][ξ][tile]: C runs of
    /// 36·rows·tw), channel by channel ([`Self::input_strip`]).
    fn transform_input(
        &self,
        x: &[f32],
        (ty0, rows): (usize, usize),
        v: &mut [f32],
        work: &mut Vec<f32>,
        parallel: bool,
    ) {
        let ts = rows * self.tw;
        let input = |work: &mut Vec<f32>, (ci, vc): (usize, &mut [f32])| {
            let src = &x[ci * self.h * self.w..(ci + 1) * self.h * self.w];
            vectorised(
                #[inline(always)]
                || self.input_strip(src, (ty0, rows), vc, work),
            );
        };
        for_each_chunk(v, XI * ts, parallel, work, input);
    }

    /// Tile rows `ty0..ty0 + rows` of one output gradient plane `src` (Ho×Wo) through the
    /// adjoint of the output transform into `dmo` (36 runs of rows·tw tiles, ξ-major): A
    /// across each row's 4-column blocks (zeros past the plane's edge: the outputs the forward
    /// computed there and dropped), then A down each tile's four rows, over all the strip's
    /// tiles at once.
    #[inline(always)]
    fn grad_strip(
        &self,
        src: &[f32],
        (ty0, rows): (usize, usize),
        dmo: &mut [f32],
        work: &mut Vec<f32>,
    ) {
        let tw = self.tw;
        let ts = rows * tw;
        let work = room(work, 2 * M * tw + M * ALPHA * ts);
        let (row, rest) = work.split_at_mut(M * tw);
        let (phases, across) = rest.split_at_mut(M * tw);
        // across[a][j][lt·tw + tx]: the across-adjoint j of row a of tile row lt.
        for lt in 0..rows {
            for a in 0..M {
                let at = (a * ALPHA) * ts + lt * tw;
                let oy = M * (ty0 + lt) + a;
                if oy >= self.ho {
                    for j in 0..ALPHA {
                        across[at + j * ts..at + j * ts + tw].fill(0.0);
                    }
                    continue;
                }
                row[..self.wo].copy_from_slice(&src[oy * self.wo..(oy + 1) * self.wo]);
                row[self.wo..].fill(0.0);
                deinterleave(row, phases, tw);
                let y = rows_of(phases, tw, tw);
                grad_1d(y, rows_mut(&mut across[at..], ts, tw));
            }
        }
        for j in 0..ALPHA {
            let y = rows_of(&across[j * ts..], ALPHA * ts, ts);
            grad_1d(y, rows_mut(&mut dmo[j * ALPHA * ts..], ts, ts));
        }
    }

    /// Tile rows `ty0..ty0 + rows` of one input plane `src` (H×W) transformed into `vc`
    /// (V for this channel: 36 runs of rows·tw tiles, ξ-major). Each padded input row is
    /// transformed across (Bᵀ on its six-column windows, four columns apart) into `across`,
    /// laid out so that row k of every tile in the strip is one run: a row that is both the
    /// last two of one tile row and the first two of the next is written twice. Then Bᵀ down
    /// the six rows of all the strip's tiles at once: runs of rows·tw elements, not tw (14 on a
    /// 56×56 map, too short a run to keep most of the work in the vector loops).
    #[inline(always)]
    fn input_strip(
        &self,
        src: &[f32],
        (ty0, rows): (usize, usize),
        vc: &mut [f32],
        work: &mut Vec<f32>,
    ) {
        let tw = self.tw;
        // The padded row reaches 4·tw + 2 columns; the phases read two more (unused).
        let (ts, wb) = (rows * tw, M * (tw + 1));
        let work = room(work, wb + 4 * (tw + 1) + XI * ts);
        let (row, rest) = work.split_at_mut(wb);
        let (phases, across) = rest.split_at_mut(4 * (tw + 1));
        // across[k][j][lt·tw + tx]: the across-transform j of padded row 4·lt + k at tile tx.
        for r in 0..M * rows + 2 {
            // Row r is row k = r - 4·lt of tile row lt, for the one or two lt with 0 ≤ k < 6:
            // written at the first, copied to the second.
            let first = r.saturating_sub(ALPHA - 1).div_ceil(M);
            let last = (r / M).min(rows - 1);
            let at = |lt: usize, j: usize| ((r - M * lt) * ALPHA + j) * ts + lt * tw;
            let iy = (M * ty0 + r) as isize - self.ph as isize;
            if iy < 0 || iy >= self.h as isize {
                for lt in first..=last {
                    for j in 0..ALPHA {
                        across[at(lt, j)..at(lt, j) + tw].fill(0.0);
                    }
                }
                continue;
            }
            let iy = iy as usize;
            row[..self.pw].fill(0.0);
            row[self.pw..self.pw + self.w].copy_from_slice(&src[iy * self.w..(iy + 1) * self.w]);
            row[self.pw + self.w..].fill(0.0);
            deinterleave(row, phases, tw + 1);
            let [p0, p1, p2, p3] = rows_of(phases, tw + 1, tw + 1);
            let d = [
                &p0[..tw],
                &p1[..tw],
                &p2[..tw],
                &p3[..tw],
                &p0[1..],
                &p1[1..],
            ];
            let dst = &mut across[at(first, 0)..];
            input_1d(d, rows_mut(dst, ts, tw));
            for lt in first + 1..=last {
                for j in 0..ALPHA {
                    across.copy_within(at(first, j)..at(first, j) + tw, at(lt, j));
                }
            }
        }
        for j in 0..ALPHA {
            let d = rows_of(&across[j * ts..], ALPHA * ts, ts);
            input_1d(d, rows_mut(&mut vc[j * ALPHA * ts..], ts, ts));
        }
    }

    /// Tile rows `ty0..ty0 + rows` of one output channel from its products `mo` (position ξ's
    /// run of rows·tw tiles at `mo[ξ·stride..]`): Aᵀ down each tile column and then across,
    /// over all the strip's tiles at once, plus `bias` and the ReLU when `relu`, written over
    /// rows 4·ty0.. of the output plane `yo` (Ho×Wo).
    #[inline(always)]
    fn output_strip(
        &self,
        mo: &[f32],
        stride: usize,
        (ty0, rows): (usize, usize),
        (bias, relu): (f32, bool),
        yo: &mut [MaybeUninit<f32>],
        work: &mut Vec<f32>,
    ) {
        let tw = self.tw;
        let ts = rows * tw;
        let work = room(work, (M * ALPHA + M) * ts + M * tw);
        let (down, rest) = work.split_at_mut(M * ALPHA * ts);
        let (across, out_row) = rest.split_at_mut(M * ts);
        // down[a][j]: Aᵀ applied to column j's six products.
        for j in 0..ALPHA {
            let m = rows_of(&mo[j * ALPHA * stride..], stride, ts);
            output_1d(m, rows_mut(&mut down[j * ts..], ALPHA * ts, ts));
        }
        for a in 0..M {
            let s = rows_of(&down[a * ALPHA * ts..], ts, ts);
            output_1d(s, rows_mut(across, ts, ts));
            let [y0, y1, y2, y3] = rows_of(across, ts, ts);
            for lt in 0..rows {
                let oy = M * (ty0 + lt) + a;
                if oy >= self.ho {
                    break;
                }
                let run = lt * tw..(lt + 1) * tw;
                let (y0, y1, y2, y3) = (
                    &y0[run.clone()],
                    &y1[run.clone()],
                    &y2[run.clone()],
                    &y3[run],
                );
                let out_row = &mut out_row[..M * tw];
                if relu {
                    for t in 0..tw {
                        out_row[4 * t] = (y0[t] + bias).max(0.0);
                        out_row[4 * t + 1] = (y1[t] + bias).max(0.0);
                        out_row[4 * t + 2] = (y2[t] + bias).max(0.0);
                        out_row[4 * t + 3] = (y3[t] + bias).max(0.0);
                    }
                } else {
                    for t in 0..tw {
                        out_row[4 * t] = y0[t] + bias;
                        out_row[4 * t + 1] = y1[t] + bias;
                        out_row[4 * t + 2] = y2[t] + bias;
                        out_row[4 * t + 3] = y3[t] + bias;
                    }
                }
                init_from(
                    &mut yo[oy * self.wo..(oy + 1) * self.wo],
                    &out_row[..self.wo],
                );
            }
        }
    }
}

/// `f(work, (i, chunk))` for each `len`-element chunk of `buf`: spread over the rayon pool when
/// `parallel` (each task with a fresh work buffer of its own), in order with `work` otherwise.
fn for_each_chunk<T: Send, W: Default>(
    buf: &mut [T],
    len: usize,
    parallel: bool,
    work: &mut W,
    f: impl Fn(&mut W, (usize, &mut [T])) + Send + Sync,
) {
    if parallel {
        buf.par_chunks_mut(len)
            .enumerate()
            .for_each_init(W::default, f);
    } else {
        buf.chunks_mut(len)
            .enumerate()
            .for_each(|item| f(work, item));
    }
}

/// The first `N` runs of `n` elements, `stride` apart, in `buf`.
fn rows_of<const N: usize>(buf: &[f32], stride: usize, n: usize) -> [&[f32]; N] {
    std::array::from_fn(|i| &buf[i * stride..i * stride + n])
}

/// The first `N` runs of `n` elements, `stride` (≥ n) apart, in `buf`, borrowed mutably.
fn rows_mut<const N: usize>(buf: &mut [f32], stride: usize, n: usize) -> [&mut [f32]; N] {
    let mut runs = buf.chunks_mut(stride.max(1));
    std::array::from_fn(|_| match runs.next() {
        Some(run) => &mut run[..n],
        None => &mut [],
    })
}

/// Bᵀ·d for six runs `d` (element t of each is one six-vector), into six runs `out`.
#[inline(always)]
fn input_1d(d: [&[f32]; ALPHA], out: [&mut [f32]; ALPHA]) {
    let [o0, o1, o2, o3, o4, o5] = out;
    let n = o0.len();
    let [d0, d1, d2, d3, d4, d5] = d.map(|s| &s[..n]);
    let (o1, o2, o3, o4, o5) = (
        &mut o1[..n],
        &mut o2[..n],
        &mut o3[..n],
        &mut o4[..n],
        &mut o5[..n],
    );
    for t in 0..n {
        let (a0, a1, a2, a3, a4, a5) = (d0[t], d1[t], d2[t], d3[t], d4[t], d5[t]);
        o0[t] = 4.0 * a0 - 5.0 * a2 + a4;
        o1[t] = -4.0 * (a1 + a2) + (a3 + a4);
        o2[t] = 4.0 * (a1 - a2) + (a4 - a3);
        o3[t] = 2.0 * (a3 - a1) + (a4 - a2);
        o4[t] = 2.0 * (a1 - a3) + (a4 - a2);
        o5[t] = 4.0 * a1 - 5.0 * a3 + a5;
    }
}

/// Columns 4t + k of `row` as element t of run k of `phases` (four runs of `n`), for t < n,
/// indexed within proven bounds so that the loop vectorises.
#[inline(always)]
fn deinterleave(row: &[f32], phases: &mut [f32], n: usize) {
    let [p0, p1, p2, p3] = rows_mut(phases, n, n);
    let q = &row[..M * n];
    let (p0, p1, p2, p3) = (&mut p0[..n], &mut p1[..n], &mut p2[..n], &mut p3[..n]);
    for t in 0..n {
        (p0[t], p1[t], p2[t], p3[t]) = (q[4 * t], q[4 * t + 1], q[4 * t + 2], q[4 * t + 3]);
    }
}

/// A·y for four runs `y` (the adjoint of [`output_1d`]), into six runs `out`.
#[inline(always)]
fn grad_1d(y: [&[f32]; M], out: [&mut [f32]; ALPHA]) {
    let [o0, o1, o2, o3, o4, o5] = out;
    let n = o0.len();
    let [y0, y1, y2, y3] = y.map(|s| &s[..n]);
    let (o1, o2, o3, o4, o5) = (
        &mut o1[..n],
        &mut o2[..n],
        &mut o3[..n],
        &mut o4[..n],
        &mut o5[..n],
    );
    for t in 0..n {
        let (a0, a1, a2, a3) = (y0[t], y1[t], y2[t], y3[t]);
        let (s02, s13) = (a0 + a2, a1 + a3);
        let (t02, t13) = (a0 + 4.0 * a2, 2.0 * (a1 + 4.0 * a3));
        o0[t] = a0;
        o1[t] = s02 + s13;
        o2[t] = s02 - s13;
        o3[t] = t02 + t13;
        o4[t] = t02 - t13;
        o5[t] = a3;
    }
}

/// Aᵀ·m for six runs `m`, into four runs `out`.
#[inline(always)]
fn output_1d(m: [&[f32]; ALPHA], out: [&mut [f32]; M]) {
    let [o0, o1, o2, o3] = out;
    let n = o0.len();
    let [m0, m1, m2, m3, m4, m5] = m.map(|s| &s[..n]);
    let (o1, o2, o3) = (&mut o1[..n], &mut o2[..n], &mut o3[..n]);
    for t in 0..n {
        let (a1, a2, a3, a4) = (m1[t], m2[t], m3[t], m4[t]);
        let (sum12, dif12, sum34, dif34) = (a1 + a2, a1 - a2, a3 + a4, a3 - a4);
        o0[t] = m0[t] + sum12 + sum34;
        o1[t] = dif12 + 2.0 * dif34;
        o2[t] = sum12 + 4.0 * sum34;
        o3[t] = dif12 + 8.0 * dif34 + m5[t];
    }
}

#[cfg(test)]
mod tests;

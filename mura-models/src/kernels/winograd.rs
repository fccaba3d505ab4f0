//! The 3×3 stride-1 convolution by Winograd's minimal filtering F(4×4, 3×3) (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016): each 4×4 block of outputs comes
//! from a 6×6 tile of input as Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A, 36 multiplications per channel
//! pair where the direct convolution spends 144. Over a batch of tiles the 36 element-wise
//! products are 36 GEMMs, (O×C)·(C×tiles), one per tile position ξ, between the transformed
//! weights U_ξ and the transformed input V_ξ; the output transform then gives back the 4×4
//! blocks. The GEMMs do 4/9 of the direct convolution's multiply-adds; the transforms are
//! additions and multiplications by small constants, run eight lanes wide.
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

use super::gemm::{init_from, sgemm_strided};
use super::room;
use super::simd::vectorised;

/// The side of an output block.
const M: usize = 4;
/// The side of an input tile: the output block plus the kernel's reach.
const ALPHA: usize = M + 2;
/// Positions in a transformed tile: one GEMM each.
const XI: usize = ALPHA * ALPHA;
/// Tiles per strip (rounded up to whole rows of tiles). Strips of 128 and 256 measured within 4% of
/// each other on ResNet-50's and Inception-v3's shapes, 64 up to 19% and 32 up to 33% slower
/// (`docs/benchmarks.md`).
const STRIP_TILES: usize = 128;

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
        const G: [[f64; 3]; ALPHA] = [
            [0.25, 0.0, 0.0],
            [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
            [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
            [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
            [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
            [0.0, 0.0, 1.0],
        ];
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
            // Input transform, channel by channel: V[c][ξ][tile].
            let input = |work: &mut Vec<f32>, (ci, vc): (usize, &mut [f32])| {
                let src = &x[ci * self.h * self.w..(ci + 1) * self.h * self.w];
                vectorised(
                    #[inline(always)]
                    || self.input_strip(src, (ty0, rows), vc, work),
                );
            };
            if parallel {
                v.par_chunks_mut(XI * ts)
                    .enumerate()
                    .for_each_init(Vec::new, input);
            } else {
                v.chunks_mut(XI * ts)
                    .enumerate()
                    .for_each(|item| input(&mut work, item));
            }
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
            if parallel {
                y.par_chunks_mut(plane)
                    .enumerate()
                    .for_each_init(Vec::new, output);
            } else {
                y.chunks_mut(plane)
                    .enumerate()
                    .for_each(|item| output(&mut work, item));
            }
        }
        Ok(())
    }

    /// Tile rows `ty0..ty0 + rows` of one input plane `src` (H×W) transformed into `vc`
    /// (V for this channel: 36 runs of rows·tw tiles, ξ-major). Each padded input row is
    /// transformed across (Bᵀ on its six-column windows, four columns apart) into `across`,
    /// laid out so that row k of every tile in the strip is one run: a row that is both the
    /// last two of one tile row and the first two of the next is written twice. Then Bᵀ down
    /// the six rows of all the strip's tiles at once: runs of rows·tw elements, not tw (14 on a
    /// 56×56 map), which kept most of the work out of the vector loops.
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
            // Columns 4t + k of the padded row as phase k's element t (indexed within proven
            // bounds, so that the loop vectorises).
            let (p01, p23) = phases.split_at_mut(2 * (tw + 1));
            let (p0, p1) = p01.split_at_mut(tw + 1);
            let (p2, p3) = p23.split_at_mut(tw + 1);
            let (q, n) = (&row[..M * (tw + 1)], tw + 1);
            let (p0, p1, p2, p3) = (&mut p0[..n], &mut p1[..n], &mut p2[..n], &mut p3[..n]);
            for t in 0..n {
                (p0[t], p1[t], p2[t], p3[t]) = (q[4 * t], q[4 * t + 1], q[4 * t + 2], q[4 * t + 3]);
            }
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
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Deterministic values in [-1, 1) (the crate's seeded generator, as the conv tests use).
    fn fill(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| crate::layers::unit(crate::layers::splitmix64(seed ^ (i << 20))) * 2.0 - 1.0)
            .collect()
    }

    /// The direct convolution in f64.
    fn direct(g: &Winograd, x: &[f32], w: &[f32], bias: &[f32], relu: bool) -> Vec<f64> {
        let mut y = vec![0f64; g.o * g.ho * g.wo];
        for o in 0..g.o {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    let mut acc = f64::from(bias[o]);
                    for c in 0..g.c {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let iy = (oy + ky) as isize - g.ph as isize;
                                let ix = (ox + kx) as isize - g.pw as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xv = x[(c * g.h + iy as usize) * g.w + ix as usize];
                                acc +=
                                    f64::from(xv) * f64::from(w[((o * g.c + c) * 3 + ky) * 3 + kx]);
                            }
                        }
                    }
                    y[(o * g.ho + oy) * g.wo + ox] = if relu { acc.max(0.0) } else { acc };
                }
            }
        }
        y
    }

    fn run(
        g: &Winograd,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        relu: bool,
        parallel: bool,
    ) -> Vec<f32> {
        let u = g.weights(w);
        let mut y = vec![MaybeUninit::new(f32::NAN); g.o * g.ho * g.wo];
        g.forward(x, &u, Some(bias), relu, &mut y, &mut Vec::new(), parallel)
            .unwrap();
        // SAFETY: `y` was created initialised (NaN) and the forward writes only f32s into it.
        #[allow(unsafe_code)]
        y.into_iter().map(|v| unsafe { v.assume_init() }).collect()
    }

    /// Random shapes (sizes not multiples of four, paddings 0–2, several strips, fewer tiles
    /// than a strip, up to 256 channels) agree with the direct f64 convolution to 2e-6·√C of
    /// the output's largest magnitude (measured: 0.9e-6 with 3 channels, 2.5e-6 with 8, 4.5e-6
    /// with 64, 8e-6 with 256), serial and parallel, bit for bit between the two.
    #[test]
    fn matches_the_direct_convolution() {
        let cases = [
            (3, 5, (7, 9), (1, 1)),
            (8, 4, (35, 35), (1, 1)),
            (16, 12, (3, 3), (0, 0)),
            (5, 7, (4, 6), (2, 2)),
            (4, 3, (71, 13), (0, 1)),
            (2, 2, (1, 1), (1, 1)),
            (64, 8, (20, 20), (1, 1)),
            (256, 4, (12, 12), (1, 1)),
        ];
        for (seed, &(c, o, hw, pad)) in cases.iter().enumerate() {
            let g = Winograd::new(c, o, hw, pad).unwrap();
            let x = fill(c * hw.0 * hw.1, seed as u64);
            let w = fill(o * c * 9, 100 + seed as u64);
            let bias = fill(o, 200 + seed as u64);
            for relu in [false, true] {
                let want = direct(&g, &x, &w, &bias, relu);
                let got = run(&g, &x, &w, &bias, relu, false);
                let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
                let err = got
                    .iter()
                    .zip(&want)
                    .fold(0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
                let tol = 2e-6 * (c as f64).sqrt() * scale;
                assert!(err <= tol, "{c}→{o} {hw:?} pad {pad:?}: {err} of {scale}");
                let par = run(&g, &x, &w, &bias, relu, true);
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    par.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
            }
        }
    }

    /// A padded image smaller than the kernel, or no channels, has no tiling; short buffers are
    /// refused with an error instead of a panic.
    #[test]
    fn refuses_what_it_cannot_tile() {
        assert!(Winograd::new(3, 4, (1, 1), (0, 0)).is_none());
        assert!(Winograd::new(0, 4, (8, 8), (1, 1)).is_none());
        assert!(Winograd::new(3, 0, (8, 8), (1, 1)).is_none());
        let g = Winograd::new(2, 2, (8, 8), (1, 1)).unwrap();
        assert_eq!(g.tiles(), 4);
        let u = g.weights(&fill(2 * 2 * 9, 1));
        let mut y = vec![MaybeUninit::new(0f32); 2 * 64];
        let err = g
            .forward(
                &fill(10, 2),
                &u,
                None,
                false,
                &mut y,
                &mut Vec::new(),
                false,
            )
            .unwrap_err();
        assert!(err.to_string().contains("image of 10"), "{err}");
    }
}

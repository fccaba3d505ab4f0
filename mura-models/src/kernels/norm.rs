//! Batch normalisation of N×C×H×W f32 tensors in single passes, with an optional fused ReLU.
//!
//! Training: one op, channel by channel, takes the mean and (biased) variance of the channel's
//! planes and normalises them while they are in cache; backward one pass for Σdy and Σdy·x̂ per
//! channel and one for dx (candle-nn's BatchNorm builds both from
//! generic ops, its backward about 8× its forward). Evaluation: one pass of x·scale + shift.
//! Channel sums are accumulated in f64.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

use super::gemm::fresh;
use super::simd::vectorised;
use super::{Images, f32_slice};

/// (N, C, H·W) of a 4-D layout.
fn dims(layout: &Layout, op: &str) -> candle_core::Result<(usize, usize, usize)> {
    match *layout.dims() {
        [n, c, h, w] => Ok((n, c, h * w)),
        ref d => candle_core::bail!("{op}: expects an N×C×H×W tensor, got {d:?}"),
    }
}

/// (Σ f(a, b).0, Σ f(a, b).1) over two equally long slices: eight f32 lanes within blocks of 512
/// elements (so the loop vectorises), blocks added in f64.
#[inline(always)]
fn sum_pairs(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f64, f64) {
    let (mut s0, mut s1) = (0f64, 0f64);
    for (ba, bb) in a.chunks(512).zip(b.chunks(512)) {
        let (mut l0, mut l1) = ([0f32; 8], [0f32; 8]);
        let (mut ca, mut cb) = (ba.chunks_exact(8), bb.chunks_exact(8));
        for (xa, xb) in (&mut ca).zip(&mut cb) {
            for k in 0..8 {
                let (u, v) = f(xa[k], xb[k]);
                l0[k] += u;
                l1[k] += v;
            }
        }
        for (xa, xb) in ca.remainder().iter().zip(cb.remainder()) {
            let (u, v) = f(*xa, *xb);
            l0[0] += u;
            l1[0] += v;
        }
        s0 += l0.iter().map(|v| f64::from(*v)).sum::<f64>();
        s1 += l1.iter().map(|v| f64::from(*v)).sum::<f64>();
    }
    (s0, s1)
}

/// One plane's mean and sum of squared deviations from it: two passes over a plane that stays
/// in cache, the deviations taken from the mean rounded to f32 and the sum corrected for it.
#[inline(always)]
fn plane_moments(plane: &[f32]) -> (f64, f64) {
    let pm = sum_pairs(
        plane,
        plane,
        #[inline(always)]
        |v, _| (v, 0.0),
    )
    .0 / plane.len() as f64;
    let pmf = pm as f32;
    let m2 = sum_pairs(
        plane,
        plane,
        #[inline(always)]
        |v, _| ((v - pmf) * (v - pmf), 0.0),
    )
    .0;
    let shift = pm - f64::from(pmf);
    (pm, m2 - plane.len() as f64 * shift * shift)
}

/// `g` = the gradient `dy` reaching a BatchNorm's affine output (scale, shift) through its
/// ReLU: zero where the ReLU was off. A plain loop the compiler vectorises with a select (with
/// the sums below in the same loop, it branched lane by lane around each load of `dy`).
#[inline(always)]
fn mask<const RELU: bool>(g: &mut [f32], x: &[f32], dy: &[f32], (scale, shift): Pair) {
    for ((o, v), d) in g.iter_mut().zip(x).zip(dy) {
        *o = if RELU && v * scale + shift <= 0.0 {
            0.0
        } else {
            *d
        };
    }
}

/// (Σg, Σg·x̂) over one plane, x̂ = (x − mean)·inv.
#[inline(always)]
fn grad_sums(g: &[f32], x: &[f32], (mean, inv): Pair) -> (f64, f64) {
    sum_pairs(
        g,
        x,
        #[inline(always)]
        |gv, v| (gv, gv * ((v - mean) * inv)),
    )
}

/// One plane of an input gradient: written into fresh storage, or added to a gradient
/// buffer (DenseNet's block, where every layer that reads a channel adds its part).
pub(super) enum DxPlane<'a> {
    Write(&'a mut [MaybeUninit<f32>]),
    Add(&'a mut [f32]),
}

/// One plane of the input gradient from `g` (see [`mask`]): in training
/// dx = γ·inv/M · (M·g − Σg − x̂·Σg·x̂) = scale · (g − a − x̂·b) with a = Σg/M, b = Σg·x̂/M;
/// in evaluation dx = g·scale.
#[inline(always)]
fn plane_dx<const TRAIN: bool>(
    dx: &mut DxPlane<'_>,
    x: &[f32],
    g: &[f32],
    (scale, (mean, inv), (a, b)): (f32, Pair, Pair),
) {
    let value = |v: f32, gv: f32| {
        if TRAIN {
            let xhat = (v - mean) * inv;
            scale * (gv - a - xhat * b)
        } else {
            gv * scale
        }
    };
    match dx {
        DxPlane::Write(dx) => {
            for ((o, v), gv) in dx.iter_mut().zip(x).zip(g) {
                o.write(value(*v, *gv));
            }
        }
        DxPlane::Add(dx) => {
            for ((o, v), gv) in dx.iter_mut().zip(x).zip(g) {
                *o += value(*v, *gv);
            }
        }
    }
}

/// y = x·scale + shift (then ReLU), per channel.
#[inline]
fn affine(x: f32, scale: f32, shift: f32, relu: bool) -> f32 {
    let y = x * scale + shift;
    if relu { y.max(0.0) } else { y }
}

/// One plane of y = x·scale + shift (then ReLU), into unwritten storage.
#[inline]
fn affine_plane(y: &mut [MaybeUninit<f32>], x: &[f32], (scale, shift): Pair, relu: bool) {
    vectorised(
        #[inline(always)]
        || {
            for (o, v) in y.iter_mut().zip(x) {
                o.write(affine(*v, scale, shift, relu));
            }
        },
    )
}

/// y = x·scale + shift (then ReLU) with channel ch's (scale, shift) = `ss[ch]`, plane by plane
/// into a fresh N×C×H×W output (the forward of both training and evaluation BatchNorm).
fn affine_planes(
    x: &Images<'_>,
    (n, c, hw): (usize, usize, usize),
    ss: &[Pair],
    relu: bool,
) -> candle_core::Result<Vec<f32>> {
    if ss.len() != c {
        candle_core::bail!(
            "batch norm: {c} channels but {} scales and shifts",
            ss.len()
        )
    }
    let fill = |y: &mut [MaybeUninit<f32>]| {
        if hw > 0 {
            y.par_chunks_mut(hw).enumerate().for_each(|(p, yp)| {
                let (scale, shift) = ss[p % c];
                affine_plane(yp, x.plane(p / c, p % c, hw), (scale, shift), relu)
            });
        }
        Ok::<(), candle_core::Error>(())
    };
    // SAFETY: the N·C planes of hw elements partition the output, and each plane of the input
    // holds hw elements (`Images::of` checked the extent), so every element is written.
    #[allow(unsafe_code)]
    unsafe {
        fresh(n * c * hw, fill)
    }
}

/// Scale and shift per channel from γ, β, the mean and the biased variance.
fn scale_shift(
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> Vec<(f32, f32)> {
    (0..gamma.len())
        .map(|c| {
            let inv = 1.0 / (f64::from(var[c]) + eps).sqrt();
            let scale = f64::from(gamma[c]) * inv;
            (
                scale as f32,
                (f64::from(beta[c]) - f64::from(mean[c]) * scale) as f32,
            )
        })
        .collect()
}

/// A training backward's per-channel (scale, shift) and (mean, inverse deviation).
pub(super) fn train_centres(
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> (Vec<Pair>, Vec<Pair>) {
    let inv = |ch: usize| (1.0 / (f64::from(var[ch]) + eps).sqrt()) as f32;
    (
        scale_shift(gamma, beta, mean, var, eps),
        (0..mean.len()).map(|ch| (mean[ch], inv(ch))).collect(),
    )
}

/// Training-mode batch norm: returns `(y, batch mean, biased batch variance)`; y carries the
/// gradient to x, γ and β, the statistics none (they are for the running averages).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (_, c, _, _) = x.dims4()?;
    let x = x.contiguous()?;
    // One op computes the statistics and normalises with them, channel by channel while the
    // channel's planes are in cache (as two ops, x was read from memory twice). Its output is
    // y alone, so the backward needs no narrowing (candle's backward of a narrow pads the
    // gradient with zeros and copies it whole); the statistics come back through `stats`.
    let stats = Arc::new(OnceLock::new());
    let op = BnTrain {
        eps,
        relu,
        stats: stats.clone(),
    };
    let y = x.apply_op3_arc(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        Arc::new(Box::new(op)),
    )?;
    let Some(Stats { mean, var }) = stats.get() else {
        candle_core::bail!("batch norm: the forward left no batch statistics")
    };
    if mean.len() != c || var.len() != c {
        candle_core::bail!("batch norm: {c} channels but statistics for {}", mean.len())
    }
    let dev = x.device();
    Ok((
        y,
        Tensor::new(mean.as_slice(), dev)?,
        Tensor::new(var.as_slice(), dev)?,
    ))
}

/// Evaluation-mode batch norm from the running statistics (gradients flow to x, γ and β).
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
    relu: bool,
) -> candle_core::Result<Tensor> {
    let scale = gamma.div(&(running_var + eps)?.sqrt()?)?;
    let shift = (beta - running_mean.mul(&scale)?)?;
    let ss = Tensor::cat(&[&scale, &shift], 0)?;
    // A channel range of a wider tensor (DenseNet's block buffer) is read in place.
    let x = if Images::fits(x.layout()) {
        x.clone()
    } else {
        x.contiguous()?
    };
    x.apply_op2(&ss, BnEval { relu })
}

/// A batch's per-channel mean and biased variance.
#[derive(Debug)]
pub(super) struct Stats {
    pub(super) mean: Vec<f32>,
    pub(super) var: Vec<f32>,
}

/// One channel's mean and biased variance over its n planes (`plane(b)` is image b's): each
/// plane's mean and sum of squared deviations (two passes over a plane that stays in cache),
/// combined exactly (Chan et al.), so a large mean does not cancel the variance away.
#[inline]
fn channel_moments<'a>(n: usize, hw: usize, plane: impl Fn(usize) -> &'a [f32]) -> (f32, f32) {
    let planes: Vec<(f64, f64)> = (0..n)
        .map(|b| {
            vectorised(
                #[inline(always)]
                || plane_moments(plane(b)),
            )
        })
        .collect();
    let mean = planes.iter().map(|(pm, _)| pm).sum::<f64>() / n as f64;
    let m2: f64 = planes
        .iter()
        .map(|(pm, m2)| m2 + hw as f64 * (pm - mean) * (pm - mean))
        .sum();
    (mean as f32, (m2 / (n * hw) as f64).max(0.0) as f32)
}

/// The training forward of a BatchNorm over the N×C×hw images `x` (γ, β of C values checked
/// by the caller): y fresh, and the batch statistics.
pub(super) fn train_forward(
    x: &Images<'_>,
    (n, c, hw): (usize, usize, usize),
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    relu: bool,
) -> candle_core::Result<(Vec<f32>, Stats)> {
    let op = "batch norm";
    if n * hw < 2 {
        candle_core::bail!(
            "{op}: training needs more than one value per channel, got {n} image(s) of {c} \
             channel(s) of {hw} value(s)"
        )
    }
    // One channel: its statistics, then its n output planes from them, while its input
    // planes are still in cache.
    let channel = |ch: usize, y: Vec<&mut [MaybeUninit<f32>]>| {
        let (mean, var) = channel_moments(n, hw, |b| x.plane(b, ch, hw));
        let (scale, shift) = scale_shift(&gamma[ch..=ch], &beta[ch..=ch], &[mean], &[var], eps)[0];
        for (b, yp) in y.into_iter().enumerate() {
            affine_plane(yp, x.plane(b, ch, hw), (scale, shift), relu)
        }
        (mean, var)
    };
    let mut stats = Vec::new();
    let fill = |y: &mut [MaybeUninit<f32>]| {
        // Each channel's n output planes (plane b·c + ch), handed to its task.
        let mut planes: Vec<Vec<_>> = (0..c).map(|_| Vec::with_capacity(n)).collect();
        for (p, yp) in y.chunks_mut(hw).enumerate() {
            planes[p % c].push(yp);
        }
        stats = planes
            .into_par_iter()
            .enumerate()
            .map(|(ch, y)| channel(ch, y))
            .collect();
        Ok::<(), candle_core::Error>(())
    };
    // SAFETY: hw > 0 (n·hw ≥ 2), so the n·c planes of hw elements partition the output and
    // each channel's task writes all n of its planes (each input plane holds hw elements:
    // `Images::of` checked the extent), so every element is written.
    #[allow(unsafe_code)]
    let y = unsafe { fresh(n * c * hw, fill)? };
    let (mean, var) = stats.into_iter().unzip();
    Ok((y, Stats { mean, var }))
}

/// (x, γ, β) → y, normalised with the batch statistics it computes, which it leaves in
/// `stats` for the running averages and its own backward.
struct BnTrain {
    eps: f64,
    relu: bool,
    stats: Arc<OnceLock<Stats>>,
}

impl BnTrain {
    fn stats(&self) -> candle_core::Result<&Stats> {
        match self.stats.get() {
            Some(stats) => Ok(stats),
            None => candle_core::bail!("batch norm backward: the forward left no statistics"),
        }
    }
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "mura-batch-norm-train"
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
        let op = "batch norm";
        let (n, c, hw) = dims(l1, op)?;
        let x = Images::of(s1, l1, op)?;
        let (gamma, beta) = (f32_slice(s2, l2, op)?, f32_slice(s3, l3, op)?);
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!(
                "{op}: {c} channels but γ {} and β {}",
                gamma.len(),
                beta.len()
            )
        }
        let (y, stats) = train_forward(&x, (n, c, hw), gamma, beta, self.eps, self.relu)?;
        if self.stats.set(stats).is_err() {
            candle_core::bail!("{op}: the op ran twice")
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let numel = n * c * h * w;
        let Stats { mean, var } = self.stats()?;
        let stats: Vec<f32> = mean.iter().chain(var).copied().collect();
        let aux = Tensor::cat(&[gamma, beta, &Tensor::new(stats, x.device())?], 0)?;
        let packed = x.apply_op3_no_bwd(
            &grad.contiguous()?,
            &aux,
            &BnBackward {
                eps: self.eps,
                relu: self.relu,
                train: true,
            },
        )?;
        let dx = x
            .track_op()
            .then(|| packed.narrow(0, 0, numel)?.reshape((n, c, h, w)))
            .transpose()?;
        let dgamma = packed.narrow(0, numel, c)?;
        let dbeta = packed.narrow(0, numel + c, c)?;
        Ok((dx, Some(dgamma), Some(dbeta)))
    }
}

/// (x, [scale, shift]) → x·scale + shift per channel (then ReLU).
struct BnEval {
    relu: bool,
}

impl CustomOp2 for BnEval {
    fn name(&self) -> &'static str {
        "mura-batch-norm-eval"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = "batch norm";
        let (n, c, hw) = dims(l1, op)?;
        let x = Images::of(s1, l1, op)?;
        let ss = f32_slice(s2, l2, op)?;
        if ss.len() != 2 * c {
            candle_core::bail!("{op}: {c} channels but {} scale and shift values", ss.len())
        }
        let ss: Vec<Pair> = (0..c).map(|ch| (ss[ch], ss[c + ch])).collect();
        let y = affine_planes(&x, (n, c, hw), &ss, self.relu)?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        ss: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let numel = x.elem_count();
        let packed = x.contiguous()?.apply_op3_no_bwd(
            &grad.contiguous()?,
            ss,
            &BnBackward {
                eps: 0.0,
                relu: self.relu,
                train: false,
            },
        )?;
        let dx = x
            .track_op()
            .then(|| packed.narrow(0, 0, numel)?.reshape(x.shape()))
            .transpose()?;
        let c = ss.elem_count() / 2;
        Ok((dx, Some(packed.narrow(0, numel, 2 * c)?)))
    }
}

/// Two per-channel values (scale and shift, or mean and inverse deviation).
pub(super) type Pair = (f32, f32);

/// What a BatchNorm backward needs per channel besides x and dy: the forward's (scale, shift)
/// and centre (mean, inverse deviation in training; (0, 1) in evaluation), and its mode.
pub(super) struct Grads<'a> {
    pub(super) ss: &'a [Pair],
    pub(super) centre: &'a [Pair],
    pub(super) relu: bool,
    pub(super) train: bool,
}

impl Grads<'_> {
    /// The backward of every channel, in parallel: channel ch's n planes of dx go to
    /// `planes[ch]` (image order); returns (Σg·x̂, Σg) per channel. `dy` is contiguous
    /// N×C×hw; x may be a channel range of a wider tensor.
    pub(super) fn channels(
        &self,
        x: &Images<'_>,
        dy: &[f32],
        (n, c, hw): (usize, usize, usize),
        planes: Vec<Vec<DxPlane<'_>>>,
    ) -> Vec<[f64; 2]> {
        let (relu, train, m) = (self.relu, self.train, (n * hw) as f64);
        // One channel: the gradient g reaching the affine output (dy masked by the ReLU) of its
        // n planes into `g`, the sums (Σg·x̂, Σg) plane by plane in index order, then dx from g;
        // the channel's planes stay in cache between the two passes.
        let channel = |g: &mut Vec<f32>, ch: usize, dx: Vec<DxPlane<'_>>| {
            g.resize(n * hw, 0.0);
            let (ss, centre) = (self.ss[ch], self.centre[ch]);
            let (mut s, mut sx) = (0f64, 0f64);
            for (b, gp) in g.chunks_mut(hw).enumerate() {
                let xp = x.plane(b, ch, hw);
                let dyp = &dy[(b * c + ch) * hw..(b * c + ch + 1) * hw];
                let (ps, psx) = vectorised(
                    #[inline(always)]
                    || {
                        match relu {
                            true => mask::<true>(gp, xp, dyp, ss),
                            false => gp.copy_from_slice(dyp),
                        }
                        grad_sums(gp, xp, centre)
                    },
                );
                (s, sx) = (s + ps, sx + psx);
            }
            let args = (ss.0, centre, ((s / m) as f32, (sx / m) as f32));
            for ((b, mut dxp), gp) in dx.into_iter().enumerate().zip(g.chunks(hw)) {
                let xp = x.plane(b, ch, hw);
                vectorised(
                    #[inline(always)]
                    || match train {
                        true => plane_dx::<true>(&mut dxp, xp, gp, args),
                        false => plane_dx::<false>(&mut dxp, xp, gp, args),
                    },
                )
            }
            [sx, s]
        };
        planes
            .into_par_iter()
            .enumerate()
            .map_init(Vec::new, |g, (ch, dx)| channel(g, ch, dx))
            .collect()
    }
}

/// (x, dy, aux) → [dx, Σ, Σ] where, in training, aux = [γ, β, mean, var] and the sums are dγ and
/// dβ; in evaluation aux = [scale, shift] and the sums are dscale and dshift.
struct BnBackward {
    eps: f64,
    relu: bool,
    train: bool,
}

impl CustomOp3 for BnBackward {
    fn name(&self) -> &'static str {
        "mura-batch-norm-backward"
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
        let op = "batch norm backward";
        let (n, c, hw) = dims(l1, op)?;
        let x = f32_slice(s1, l1, op)?;
        let dy = f32_slice(s2, l2, op)?;
        let aux = f32_slice(s3, l3, op)?;
        let want = if self.train { 4 * c } else { 2 * c };
        if dy.len() != x.len() || aux.len() != want {
            candle_core::bail!(
                "{op}: x {:?}, gradient of {} values, {} auxiliary values (want {want})",
                l1.dims(),
                dy.len(),
                aux.len()
            )
        }
        // Per channel: scale and shift of the forward, and x̂ = (x - mean)·inv (train) or x
        // itself (eval, where the sums are taken against x).
        let (ss, centre): (Vec<Pair>, Vec<Pair>) = if self.train {
            let (gamma, beta) = (&aux[..c], &aux[c..2 * c]);
            let (mean, var) = (&aux[2 * c..3 * c], &aux[3 * c..]);
            train_centres(gamma, beta, mean, var, self.eps)
        } else {
            (
                (0..c).map(|ch| (aux[ch], aux[c + ch])).collect(),
                vec![(0.0, 1.0); c],
            )
        };
        let x = Images {
            data: x,
            start: 0,
            stride: c * hw,
        };
        let fill = |out: &mut [MaybeUninit<f32>]| {
            let (dx, tail) = out.split_at_mut(n * c * hw);
            let sums: Vec<[f64; 2]> = if hw == 0 {
                vec![[0.0; 2]; c]
            } else {
                // Each channel's n output planes (plane b·c + ch), handed to its task.
                let mut planes: Vec<Vec<_>> = (0..c).map(|_| Vec::with_capacity(n)).collect();
                for (p, dxp) in dx.chunks_mut(hw).enumerate() {
                    planes[p % c].push(DxPlane::Write(dxp));
                }
                let grads = Grads {
                    ss: &ss,
                    centre: &centre,
                    relu: self.relu,
                    train: self.train,
                };
                grads.channels(&x, dy, (n, c, hw), planes)
            };
            let (dgamma, dbeta) = tail.split_at_mut(c);
            for ((g, b), [sx, s]) in dgamma.iter_mut().zip(dbeta).zip(&sums) {
                g.write(*sx as f32);
                b.write(*s as f32);
            }
            Ok::<(), candle_core::Error>(())
        };
        // SAFETY: the n·c planes of hw elements partition dx and each channel's task writes all
        // of its n planes (x holds them all: its length was checked against dy's and the
        // layout's), and the tail takes the c sums of each kind (one per channel), so every
        // element is written.
        #[allow(unsafe_code)]
        let out = unsafe { fresh(n * c * hw + 2 * c, fill)? };
        Ok((CpuStorage::F32(out), Shape::from(n * c * hw + 2 * c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, ModuleT, Var};

    fn rand_vec(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
        (0..n as u64)
            .map(|i| {
                lo + (hi - lo) * crate::layers::unit(crate::layers::splitmix64(seed ^ (i << 20)))
            })
            .collect()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * y.abs().max(1.0),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    /// Train and eval outputs, statistics and all three gradients against candle-nn's BatchNorm
    /// (built from generic ops) followed by candle's ReLU; tolerance 2e-4 relative.
    #[test]
    fn matches_candle_nn_batch_norm_forward_and_backward() {
        let dev = Device::Cpu;
        for (t, (n, c, h, w)) in [(2, 3, 5, 4), (4, 2, 7, 7), (1, 5, 3, 2), (3, 1, 1, 1)]
            .into_iter()
            .enumerate()
        {
            for relu in [false, true] {
                let seed = 10 * t as u64 + u64::from(relu);
                let xv = rand_vec(n * c * h * w, seed, -2.0, 3.0);
                let gv = rand_vec(c, seed + 1, 0.5, 1.5);
                let bv = rand_vec(c, seed + 2, -0.5, 0.5);
                let dyv = rand_vec(n * c * h * w, seed + 3, -1.0, 1.0);
                let rm = Tensor::from_vec(rand_vec(c, seed + 4, -0.2, 0.2), c, &dev).unwrap();
                let rv = Tensor::from_vec(rand_vec(c, seed + 5, 0.5, 2.0), c, &dev).unwrap();
                let eps = 1e-3;
                for train in [true, false] {
                    let run = |ours: bool| {
                        let x = Var::from_vec(xv.clone(), (n, c, h, w), &dev).unwrap();
                        let g = Var::from_vec(gv.clone(), c, &dev).unwrap();
                        let b = Var::from_vec(bv.clone(), c, &dev).unwrap();
                        let y = if ours {
                            if train {
                                batch_norm_train(&x, &g, &b, eps, relu).unwrap().0
                            } else {
                                batch_norm_eval(&x, &g, &b, &rm, &rv, eps, relu).unwrap()
                            }
                        } else {
                            let bn = candle_nn::BatchNorm::new(
                                c,
                                rm.copy().unwrap(),
                                rv.copy().unwrap(),
                                g.as_tensor().clone(),
                                b.as_tensor().clone(),
                                eps,
                            )
                            .unwrap();
                            let y = bn.forward_t(&x, train).unwrap();
                            if relu { y.relu().unwrap() } else { y }
                        };
                        let dy = Tensor::from_vec(dyv.clone(), (n, c, h, w), &dev).unwrap();
                        let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
                        [
                            flat(&y),
                            flat(grads.get(&x).unwrap()),
                            flat(grads.get(&g).unwrap()),
                            flat(grads.get(&b).unwrap()),
                        ]
                    };
                    if train && n * h * w < 2 {
                        continue;
                    }
                    let (ours, theirs) = (run(true), run(false));
                    for (k, what) in ["y", "dx", "dgamma", "dbeta"].iter().enumerate() {
                        close(
                            &ours[k],
                            &theirs[k],
                            2e-4,
                            &format!("{n}×{c}×{h}×{w} relu {relu} train {train} {what}"),
                        );
                    }
                }
            }
        }
    }

    /// A channel range of a wider tensor (DenseNet's block buffer) is normalised in place, as
    /// its contiguous copy would be.
    #[test]
    fn evaluation_reads_a_channel_range_in_place() {
        let dev = Device::Cpu;
        let wide =
            Tensor::from_vec(rand_vec(3 * 7 * 4 * 5, 21, -2.0, 2.0), (3, 7, 4, 5), &dev).unwrap();
        let x = wide.narrow(1, 0, 4).unwrap();
        assert!(!x.is_contiguous());
        let c = |seed| Tensor::from_vec(rand_vec(4, seed, -1.0, 1.0), 4, &dev).unwrap();
        let var = (c(25).abs().unwrap() + 0.5).unwrap();
        let (g, b, m) = (c(22), c(23), c(24));
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for relu in [false, true] {
            let got = batch_norm_eval(&x, &g, &b, &m, &var, 1e-5, relu).unwrap();
            let copy = x.contiguous().unwrap();
            let want = batch_norm_eval(&copy, &g, &b, &m, &var, 1e-5, relu).unwrap();
            assert_eq!(v(&got), v(&want));
            assert_eq!(got.dims(), [3, 4, 4, 5]);
        }
        // A range that does not start at channel 0 works too; a transposed view is copied first.
        let mid = wide.narrow(1, 2, 4).unwrap();
        let got = batch_norm_eval(&mid, &g, &b, &m, &var, 1e-5, false).unwrap();
        let want =
            batch_norm_eval(&mid.contiguous().unwrap(), &g, &b, &m, &var, 1e-5, false).unwrap();
        assert_eq!(v(&got), v(&want));
        let t = wide.narrow(1, 0, 4).unwrap().transpose(2, 3).unwrap();
        let got = batch_norm_eval(&t, &g, &b, &m, &var, 1e-5, false).unwrap();
        let want =
            batch_norm_eval(&t.contiguous().unwrap(), &g, &b, &m, &var, 1e-5, false).unwrap();
        assert_eq!(v(&got), v(&want));
    }

    #[test]
    fn statistics_are_the_batch_mean_and_biased_variance() {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(
            vec![1f32, 2., 3., 4., 10., 20., 30., 40.],
            (2, 2, 1, 2),
            &dev,
        )
        .unwrap();
        let ones = Tensor::ones(2, DType::F32, &dev).unwrap();
        let zeros = Tensor::zeros(2, DType::F32, &dev).unwrap();
        let (_, mean, var) = batch_norm_train(&x, &ones, &zeros, 0.0, false).unwrap();
        // Channel 0 holds 1, 2, 10, 20; channel 1 holds 3, 4, 30, 40.
        close(&flat(&mean), &[8.25, 19.25], 1e-6, "mean");
        close(&flat(&var), &[58.1875, 260.6875], 1e-5, "var");
    }

    /// A large mean does not cancel a small variance away (mean 1000, deviation 0.01, 2×1500
    /// values in f32): the variance is within 1% of the f64 one.
    #[test]
    fn variance_survives_a_large_mean() {
        let dev = Device::Cpu;
        let v = rand_vec(2 * 1500, 5, -0.0173, 0.0173);
        let xv: Vec<f32> = v.iter().map(|d| 1000.0 + d).collect();
        let xs: Vec<f64> = xv.iter().map(|x| f64::from(*x)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / xs.len() as f64;
        let x = Tensor::from_vec(xv, (2, 1, 30, 50), &dev).unwrap();
        let one = Tensor::ones(1, DType::F32, &dev).unwrap();
        let zero = Tensor::zeros(1, DType::F32, &dev).unwrap();
        let (_, m, s) = batch_norm_train(&x, &one, &zero, 0.0, false).unwrap();
        let (m, s) = (f64::from(flat(&m)[0]), f64::from(flat(&s)[0]));
        assert!((m - mean).abs() < 1e-4, "{m} vs {mean}");
        assert!((s - var).abs() < 0.01 * var, "{s} vs {var}");
    }

    #[test]
    fn one_value_per_channel_is_refused_in_training() {
        let dev = Device::Cpu;
        let x = Tensor::ones((1, 3, 1, 1), DType::F32, &dev).unwrap();
        let g = Tensor::ones(3, DType::F32, &dev).unwrap();
        let err = batch_norm_train(&x, &g, &g, 1e-5, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than one value per channel"), "{err}");
        let x2 = Tensor::ones((2, 3, 1, 1), DType::F32, &dev).unwrap();
        let err = batch_norm_train(&x2, &g.narrow(0, 0, 2).unwrap(), &g, 1e-5, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("3 channels"), "{err}");
    }
}

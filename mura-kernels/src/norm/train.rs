//! Training-mode BatchNorm as one op: each channel's batch statistics, then its normalised
//! planes while they are in cache.

use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::backward::BnBackward;
use super::plane::{Pair, plane_moments};
use super::{affine_plane, dims, scale_shift};
use crate::gemm::fresh;
use crate::simd::vectorised;
use crate::{Images, f32_slice};

/// A training backward's per-channel (scale, shift) and (mean, inverse deviation).
pub(crate) fn train_centres(
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

/// A batch's per-channel mean and biased variance.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) mean: Vec<f32>,
    pub(crate) var: Vec<f32>,
}

/// One channel's mean and biased variance over its n planes (`plane(b)` is image b's): each
/// plane's mean and sum of squared deviations (two passes over a plane that stays in cache),
/// combined exactly (Chan et al.), so a large mean does not cancel the variance away.
#[inline]
pub(crate) fn channel_moments<'a>(
    n: usize,
    hw: usize,
    plane: impl Fn(usize) -> &'a [f32],
) -> (f32, f32) {
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
pub(crate) fn train_forward(
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
pub(crate) struct BnTrain {
    pub(crate) eps: f64,
    pub(crate) relu: bool,
    pub(crate) stats: Arc<OnceLock<Stats>>,
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

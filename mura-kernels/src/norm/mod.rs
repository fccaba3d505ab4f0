//! Batch normalisation of N×C×H×W f32 tensors in single passes, with an optional fused ReLU.
//!
//! Training: one op, channel by channel, takes the mean and (biased) variance of the channel's
//! planes and normalises them while they are in cache (`train.rs`); backward one pass for Σdy
//! and Σdy·x̂ per channel and one for dx (`backward.rs`), where candle-nn's BatchNorm builds
//! both from generic ops. Evaluation: one pass of x·scale + shift. The loops over one plane are
//! in `plane.rs`. Channel sums are accumulated in f64.

mod backward;
mod plane;
mod sync;
mod train;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use std::mem::MaybeUninit;

use crate::gemm::fresh;
use crate::route::fast;
use crate::simd::vectorised;
use crate::{Images, f32_slice, generic};

use backward::BnBackward;
pub(crate) use backward::Grads;
pub(crate) use plane::{DxPlane, Pair};
use std::sync::{Arc, OnceLock};
pub use sync::{
    StatsReduce, SyncBatchNorm, SyncedNorm, batch_norm_train_sync, sync_batch_norm,
    with_sync_batch_norm,
};
use train::BnTrain;
pub(crate) use train::{Stats, train_centres, train_forward};

/// (N, C, H·W) of a 4-D layout.
fn dims(layout: &Layout, op: &str) -> candle_core::Result<(usize, usize, usize)> {
    match *layout.dims() {
        [n, c, h, w] => Ok((n, c, h * w)),
        ref d => candle_core::bail!("{op}: expects an N×C×H×W tensor, got {d:?}"),
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

/// Training-mode batch norm: returns `(y, batch mean, biased batch variance)`; y carries the
/// gradient to x, γ and β, the statistics none (they are for the running averages). The CPU
/// kernels for f32 on the CPU, the generic path elsewhere ([`crate::Kernels`]).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    if !fast(x) {
        return generic::batch_norm_train(x, gamma, beta, eps, relu);
    }
    let (_, c, _, _) = x.dims4()?;
    let x = x.contiguous()?;
    // One op computes the statistics and normalises with them, channel by channel while the
    // channel's planes are in cache (as two ops, x would be read from memory twice). Its output is
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
    if !fast(x) {
        let running = (running_mean, running_var);
        return generic::batch_norm_eval(x, gamma, beta, running, eps, relu);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, ModuleT, Var};

    use crate::testing::uniform as rand_vec;

    pub(super) fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// |a − b| ≤ tol · max(1, |b|) element by element.
    pub(super) fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
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
        crate::with_generic(false, variance_survives_a_large_mean_on_the_cpu_kernels)
    }

    fn variance_survives_a_large_mean_on_the_cpu_kernels() {
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

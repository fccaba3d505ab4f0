//! Adam's update of an f32 variable in CPU memory, in place: one parallel pass reads the weight,
//! its gradient and the two moments and writes the weight and the moments where they are.
//!
//! candle's ops take 13 passes and as many temporaries per variable, and even one fused pass
//! into fresh vectors pays for their allocation and the copy back into the variable. This pass does
//! the same operations in the same order, in f32 as candle's scalar ops do, so it gives the bits
//! of PyTorch's `torch.optim.Adam` / `AdamW` computed step by step in f32.

use std::sync::Mutex;

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;

use crate::vectorised;

/// Adam's two moments of one variable, as plain vectors of its length.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdamMoments {
    /// First moment (the running mean of the gradient).
    pub m: Vec<f32>,
    /// Second moment (the running mean of its square).
    pub v: Vec<f32>,
}

impl AdamMoments {
    /// Zero moments for `n` weights: the first step then gives `(1 − β)·g` exactly.
    pub fn zeros(n: usize) -> Self {
        Self {
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }
}

/// Weight decay as the pass applies it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decay {
    /// Adam's L2: `wd·p` added to the gradient first (0 for none).
    Coupled(f32),
    /// AdamW's: the weight multiplied by this factor (`1 − lr·wd`) before the update.
    Decoupled(f32),
}

/// The hyper-parameters of one step of one variable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// The variable's step count, this step included (1 for its first).
    pub t: u64,
    pub decay: Decay,
}

/// Whether [`adam_in_place`] can update `var` from `grad`: both contiguous f32 tensors in CPU
/// memory with the same number of elements, and the CPU kernels not turned off
/// ([`crate::Kernels`]); elsewhere the optimiser uses candle's ops.
pub fn adam_applies(var: &Var, grad: &Tensor) -> bool {
    if !crate::route::fast(var.as_tensor()) {
        return false;
    }
    let n = var.elem_count();
    let fits = |t: &Tensor| {
        t.dtype() == DType::F32
            && t.device().is_cpu()
            && t.elem_count() == n
            && t.layout().is_contiguous()
    };
    fits(var.as_tensor()) && fits(grad)
}

/// One Adam step of `var` from `grad`, updating `var` and `moments` in place. Fails, changing
/// nothing, where [`adam_applies`] is false or the moments are not of the variable's length.
pub fn adam_in_place(
    var: &Var,
    grad: &Tensor,
    moments: &mut AdamMoments,
    step: AdamStep,
) -> candle_core::Result<()> {
    if !adam_applies(var, grad) {
        candle_core::bail!(
            "adam: expects contiguous f32 CPU tensors of one length, got {:?} {:?} and {:?} {:?}",
            var.dtype(),
            var.dims(),
            grad.dtype(),
            grad.dims()
        )
    }
    let t = step.t.min(i32::MAX as u64) as i32;
    let (beta1, beta2) = (step.beta1, step.beta2);
    let pass = AdamPass {
        moments: Mutex::new(std::mem::take(moments)),
        k: AdamCoeffs {
            b1: beta1 as f32,
            b2: beta2 as f32,
            c1: (1.0 - beta1) as f32,
            c2: (1.0 - beta2) as f32,
            root_bc2: (1.0 - beta2.powi(t)).sqrt() as f32,
            step: (step.lr / (1.0 - beta1.powi(t))) as f32,
            eps: step.eps as f32,
        },
        decay: step.decay,
    };
    let done = var.as_tensor().inplace_op2(grad, &pass);
    // The moments go back whether or not the pass ran (it checks before it writes).
    *moments = pass.moments.into_inner().map_err(poisoned)?;
    done
}

/// The error of a moments lock a panicking pass left poisoned.
fn poisoned<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("adam: a pass panicked".into())
}

/// One Adam step's coefficients in f32.
#[derive(Debug, Clone, Copy)]
struct AdamCoeffs {
    b1: f32,
    b2: f32,
    c1: f32,
    c2: f32,
    root_bc2: f32,
    step: f32,
    eps: f32,
}

impl AdamCoeffs {
    /// The update of one run of weights; `L2` adds `wd·p` to the gradient first, `scale`
    /// multiplies the weight before the step (1 for none: exact).
    #[inline(always)]
    fn run<const L2: bool>(
        self,
        (p, g): (&mut [f32], &[f32]),
        (m, v): (&mut [f32], &mut [f32]),
        (wd, scale): (f32, f32),
    ) {
        let AdamCoeffs {
            b1,
            b2,
            c1,
            c2,
            root_bc2,
            step,
            eps,
        } = self;
        let n = p.len().min(g.len()).min(m.len()).min(v.len());
        let (p, g, m, v) = (&mut p[..n], &g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            let gi = if L2 { g[i] + p[i] * wd } else { g[i] };
            let mi = m[i] * b1 + gi * c1;
            let vi = v[i] * b2 + gi * gi * c2;
            m[i] = mi;
            v[i] = vi;
            p[i] = p[i] * scale - mi / (vi.sqrt() / root_bc2 + eps) * step;
        }
    }
}

/// The in-place pass: the variable is the destination, the gradient the source, the moments
/// the pass's own.
struct AdamPass {
    moments: Mutex<AdamMoments>,
    k: AdamCoeffs,
    decay: Decay,
}

impl InplaceOp2 for AdamPass {
    fn name(&self) -> &'static str {
        "mura-adam"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g), Some((a, b)), Some((c, d))) =
            (s1, s2, l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("adam: expects contiguous f32 weights and gradient")
        };
        let mut moments = self.moments.lock().map_err(poisoned)?;
        let AdamMoments { m, v } = &mut *moments;
        let (p, g) = (&mut p[a..b], &g[c..d]);
        let n = p.len();
        if g.len() != n || m.len() != n || v.len() != n {
            candle_core::bail!(
                "adam: {n} weights but {} gradients, {} and {} moments",
                g.len(),
                m.len(),
                v.len()
            )
        }
        const CHUNK: usize = 1 << 14;
        let (k, decay) = (self.k, self.decay);
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| {
                vectorised(
                    #[inline(always)]
                    || match decay {
                        Decay::Coupled(wd) if wd > 0.0 => k.run::<true>((p, g), (m, v), (wd, 1.0)),
                        Decay::Coupled(_) => k.run::<false>((p, g), (m, v), (0.0, 1.0)),
                        Decay::Decoupled(scale) => k.run::<false>((p, g), (m, v), (0.0, scale)),
                    },
                )
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use candle_core::Device;

    fn step(t: u64, decay: Decay) -> AdamStep {
        AdamStep {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t,
            decay,
        }
    }

    /// Two steps against the update written out in f64 from PyTorch's formulas, for each kind
    /// of decay (relative tolerance 1e-6, f32 arithmetic).
    #[test]
    fn two_steps_follow_pytorchs_update() {
        crate::with_generic(false, two_steps)
    }

    fn two_steps() {
        let dev = Device::Cpu;
        let p0 = [0.5f32, -1.0, 2.0, 0.0];
        let grads = [[0.1f32, -0.2, 0.3, 0.0], [0.4, 0.1, -0.5, 1.0]];
        for decay in [
            Decay::Coupled(0.0),
            Decay::Coupled(0.1),
            Decay::Decoupled(0.99),
        ] {
            let var = Var::from_slice(&p0, 4, &dev).unwrap();
            let mut moments = AdamMoments::zeros(4);
            let (mut p, mut m, mut v) = (p0.map(f64::from), [0f64; 4], [0f64; 4]);
            for (t, g) in grads.iter().enumerate() {
                let t = t as u64 + 1;
                let s = step(t, decay);
                let g_t = Tensor::from_slice(g, 4, &dev).unwrap();
                adam_in_place(&var, &g_t, &mut moments, s).unwrap();
                for i in 0..4 {
                    let mut gi = f64::from(g[i]);
                    match decay {
                        Decay::Coupled(wd) => gi += f64::from(wd) * p[i],
                        Decay::Decoupled(scale) => p[i] *= f64::from(scale),
                    }
                    m[i] = 0.9 * m[i] + 0.1 * gi;
                    v[i] = 0.999 * v[i] + 0.001 * gi * gi;
                    let (bc1, bc2) = (1.0 - 0.9f64.powi(t as i32), 1.0 - 0.999f64.powi(t as i32));
                    p[i] -= 0.1 / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + 1e-8);
                }
            }
            let got: Vec<f32> = var.as_tensor().to_vec1().unwrap();
            for i in 0..4 {
                let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * (1.0 + b.abs());
                assert!(
                    close(f64::from(got[i]), p[i]),
                    "{decay:?} p[{i}]: {} vs {}",
                    got[i],
                    p[i]
                );
                assert!(close(f64::from(moments.m[i]), m[i]), "{decay:?} m[{i}]");
                assert!(close(f64::from(moments.v[i]), v[i]), "{decay:?} v[{i}]");
            }
        }
    }

    /// Another dtype, a device mismatch of lengths, or moments of the wrong length are refused
    /// and leave the weights and the moments as they were.
    #[test]
    fn what_it_cannot_update_is_refused_and_left_alone() {
        crate::with_generic(false, refused)
    }

    fn refused() {
        let dev = Device::Cpu;
        let var64 = Var::from_slice(&[1f64, 2.0], 2, &dev).unwrap();
        let g64 = Tensor::from_slice(&[1f64, 1.0], 2, &dev).unwrap();
        assert!(!adam_applies(&var64, &g64));
        let mut moments = AdamMoments::zeros(2);
        assert!(adam_in_place(&var64, &g64, &mut moments, step(1, Decay::Coupled(0.0))).is_err());
        assert_eq!(moments, AdamMoments::zeros(2));

        let var = Var::from_slice(&[1f32, 2.0], 2, &dev).unwrap();
        let g = Tensor::from_slice(&[1f32, 1.0], 2, &dev).unwrap();
        let mut short = AdamMoments::zeros(1);
        let err = adam_in_place(&var, &g, &mut short, step(1, Decay::Coupled(0.0))).unwrap_err();
        assert!(err.to_string().contains("moments"), "{err}");
        assert_eq!(short, AdamMoments::zeros(1), "the moments are handed back");
        assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
    }
}

//! The backward of BatchNorm (training or evaluation mode, with or without the fused ReLU), one
//! channel at a time: the masked gradient, its sums, the input gradient.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use rayon::prelude::*;

use super::dims;
use super::plane::{DxPlane, Pair, grad_sums, mask, plane_dx};
use super::train::train_centres;
use crate::gemm::fresh;
use crate::simd::vectorised;
use crate::{Images, f32_slice};

/// What a BatchNorm backward needs per channel besides x and dy: the forward's (scale, shift)
/// and centre (mean, inverse deviation in training; (0, 1) in evaluation), and its mode.
pub(crate) struct Grads<'a> {
    pub(crate) ss: &'a [Pair],
    pub(crate) centre: &'a [Pair],
    pub(crate) relu: bool,
    pub(crate) train: bool,
}

impl Grads<'_> {
    /// The backward of every channel, in parallel: channel ch's n planes of dx go to
    /// `planes[ch]` (image order); returns (Σg·x̂, Σg) per channel. `dy` is contiguous
    /// N×C×hw; x may be a channel range of a wider tensor.
    pub(crate) fn channels(
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
pub(crate) struct BnBackward {
    pub(crate) eps: f64,
    pub(crate) relu: bool,
    pub(crate) train: bool,
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

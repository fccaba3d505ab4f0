//! The convolution as candle ops: the forward (bias and ReLU in its output pass) and its
//! backward, the input gradient (Winograd, shifted products, or Wᵀ·dY then col2im) and the bias
//! gradient (channel sums).

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::route::Geom;
use super::weight_grad::ConvGradWeight;
use super::{Conv2dParams, for_each_image};
use crate::gemm::{COLUMN_BLOCK, Stored, fresh, sgemm, sgemm_fresh, sgemm_fresh_blocked};
use crate::{f32_slice, room};

/// The convolution, then the ReLU when `relu`.
pub(super) struct Conv2dOp {
    pub(super) params: Conv2dParams,
    pub(super) relu: bool,
}

impl Conv2dOp {
    fn forward(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.dims(), l2.dims(), self.params)?;
        let x = f32_slice(s1, l1, "conv2d")?;
        let w = f32_slice(s2, l2, "conv2d")?;
        let bias = bias
            .map(|(s, l)| f32_slice(s, l, "conv2d bias"))
            .transpose()?;
        if let Some(b) = bias
            && b.len() != g.o
        {
            candle_core::bail!("conv2d: {} output channels but {} biases", g.o, b.len())
        }
        let (k, l) = (g.k(), g.l());
        let winograd = g.winograd().map(|t| (t, t.weights(w)));
        let taps = (winograd.is_none() && g.shifted()).then(|| g.tap_weights(w));
        let image = |i: usize, yi: &mut [MaybeUninit<f32>], cols: &mut Vec<f32>, par: bool| {
            let xi = &x[i * g.image()..(i + 1) * g.image()];
            if let Some((t, u)) = &winograd {
                // Bias and ReLU are applied in its output transform.
                return t.forward(xi, u, bias, self.relu, yi, cols, par);
            }
            let yi = if g.pointwise() {
                sgemm_fresh((g.o, l, k), w, Stored::AsIs, xi, Stored::AsIs, yi, par)?
            } else if let Some(taps) = &taps {
                g.forward_shifted(xi, taps, yi, cols, par)?
            } else {
                let im2col = |l0, lc, block: &mut [f32]| g.im2col(xi, (l0, lc), block, par);
                sgemm_fresh_blocked((g.o, l, k), w, COLUMN_BLOCK, cols, im2col, yi, par)?
            };
            if bias.is_some() || self.relu {
                let zero = [0f32];
                let shifts = bias.unwrap_or(&zero).iter().cycle();
                for (row, &b) in yi.chunks_mut(l).zip(shifts) {
                    if self.relu {
                        row.iter_mut().for_each(|v| *v = (*v + b).max(0.0));
                    } else {
                        row.iter_mut().for_each(|v| *v += b);
                    }
                }
            }
            Ok(())
        };
        // SAFETY: the images' slots partition the output and `sgemm_fresh` (or the Winograd
        // forward) writes every element of each (o × l) slot before `image` returns `Ok`.
        #[allow(unsafe_code)]
        let y = unsafe { fresh(g.n * g.o * l, |y| for_each_image(y, g.o * l, g.n, image))? };
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.o, g.ho, g.wo))))
    }

    /// The gradient reaching the convolution itself: `grad` where the ReLU passed its input,
    /// zero where it cut it (the output is zero there), contiguous.
    fn pre_act(&self, out: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
        if self.relu {
            grad.mul(&out.gt(0f32)?.to_dtype(grad.dtype())?)
        } else {
            grad.contiguous()
        }
    }

    /// The gradients of the input (when it needs one) and of the weight.
    fn grads(
        &self,
        x: &Tensor,
        weight: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() {
            let (_, _, h, w) = x.dims4()?;
            Some(weight.apply_op2_no_bwd(grad, &ConvGradInput(self.params, (h, w)))?)
        } else {
            None
        };
        let dw = if weight.track_op() {
            let (_, _, kh, kw) = weight.dims4()?;
            Some(x.apply_op2_no_bwd(grad, &ConvGradWeight(self.params, (kh, kw)))?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "mura-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        self.grads(x, weight, &self.pre_act(res, grad)?)
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "mura-conv2d-bias"
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
        self.forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = self.pre_act(res, grad)?;
        let (dx, dw) = self.grads(x, weight, &grad)?;
        let db = bias
            .track_op()
            .then(|| grad.apply_op1_no_bwd(&ChannelSums))
            .transpose()?;
        Ok((dx, dw, db))
    }
}

/// N×C×H×W → the C per-channel sums (the bias gradient), in f64 and a fixed order.
struct ChannelSums;

impl CustomOp1 for ChannelSums {
    fn name(&self) -> &'static str {
        "mura-channel-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let &[n, c, h, w] = l.dims() else {
            candle_core::bail!(
                "channel sums: expects an N×C×H×W tensor, got {:?}",
                l.dims()
            )
        };
        let v = f32_slice(s, l, "channel sums")?;
        let hw = h * w;
        let sums: Vec<f32> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let mut acc = 0f64;
                for b in 0..n {
                    let plane = &v[(b * c + ch) * hw..(b * c + ch + 1) * hw];
                    acc += plane
                        .chunks(256)
                        .map(|k| f64::from(k.iter().sum::<f32>()))
                        .sum::<f64>();
                }
                acc as f32
            })
            .collect();
        Ok((CpuStorage::F32(sums), Shape::from(c)))
    }
}

/// (weight, output gradient) → input gradient, for an input of the given height and width.
struct ConvGradInput(Conv2dParams, (usize, usize));

impl CustomOp2 for ConvGradInput {
    fn name(&self) -> &'static str {
        "mura-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (&[o, c, _, _], &[n, ..]) = (l1.dims(), l2.dims()) else {
            candle_core::bail!(
                "conv2d backward: weight {:?}, gradient {:?}",
                l1.dims(),
                l2.dims()
            )
        };
        let (h, w) = self.1;
        let g = Geom::new(&[n, c, h, w], l1.dims(), self.0)?;
        g.check_grad(l2.dims())?;
        let weight = f32_slice(s1, l1, "conv2d backward")?;
        let dy = f32_slice(s2, l2, "conv2d backward")?;
        let (k, l) = (g.k(), g.l());
        // Winograd, then shifted products, with the flipped kernel (see `grad_input_conv`).
        let winograd = g.grad_input_winograd();
        let shifted = g.grad_input_shifted().filter(|_| winograd.is_none());
        let flipped = (winograd.is_some() || shifted.is_some()).then(|| g.flipped(weight));
        let winograd = winograd
            .zip(flipped.as_deref())
            .map(|(t, f)| (t, t.weights(f)));
        let taps = shifted
            .zip(flipped.as_deref())
            .map(|(t, f)| t.tap_weights(f));
        let image = |i: usize, dxi: &mut [MaybeUninit<f32>], cols: &mut Vec<f32>, par: bool| {
            let dyi = &dy[i * o * l..(i + 1) * o * l];
            let wt = Stored::Transposed;
            if let Some((t, u)) = &winograd {
                t.forward(dyi, u, None, false, dxi, cols, par)?;
            } else if let (Some(t), Some(taps)) = (&shifted, &taps) {
                t.forward_shifted(dyi, taps, dxi, cols, par)?;
            } else if g.pointwise() {
                sgemm_fresh((k, l, o), weight, wt, dyi, Stored::AsIs, dxi, par)?;
            } else {
                let cols = room(cols, k * l);
                sgemm((k, l, o), weight, wt, dyi, Stored::AsIs, cols, false, par)?;
                g.col2im(cols, dxi, par);
            }
            Ok(())
        };
        // SAFETY: the images' slots partition dx; the Winograd forward and `forward_shifted`
        // initialise the first C·ho'·wo' = C·H·W elements of a slot, `sgemm_fresh` all
        // k·l = C·H·W (pointwise: the image is its column matrix), `col2im` zeroes each of its C
        // planes before adding.
        #[allow(unsafe_code)]
        let dx = unsafe {
            fresh(g.n * g.image(), |dx| {
                for_each_image(dx, g.image(), g.n, image)
            })?
        };
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.c, g.h, g.w))))
    }
}

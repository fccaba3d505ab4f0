//! BatchNorm over the channels of N×C×H×W maps with PyTorch's names and momentum: the fused
//! kernels of mura-kernels in f32 on the CPU, candle-nn's BatchNorm elsewhere, and folding into
//! the preceding convolution for inference.

use candle_core::{ModuleT, Tensor, Var};
use candle_nn::VarBuilder;
use mura_kernels as kernels;

use super::Conv;

/// BatchNorm over the channels of N×C×H×W maps, with PyTorch's names (`weight`, `bias`,
/// `running_mean`, `running_var`) and momentum 0.1 (running variance unbiased, as PyTorch), on
/// [`mura_kernels::batch_norm_train`] and [`mura_kernels::batch_norm_eval`] (with the following
/// ReLU fused by [`BatchNorm::forward_act`]).
#[derive(Debug, Clone)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    /// Folded into the preceding convolution by [`BatchNorm::fold_into`], with (`Some(true)`) or
    /// without the ReLU that follows it.
    folded: Option<bool>,
}

const BN_MOMENTUM: f64 = 0.1;

/// A BatchNorm of `c` channels under `vb` (scale 1, shift 0, running mean 0 and variance 1 when
/// new).
pub fn batch_norm(c: usize, eps: f64, vb: VarBuilder<'_>) -> candle_core::Result<BatchNorm> {
    if eps.is_nan() || eps < 0.0 {
        candle_core::bail!("batch norm eps must be a non-negative number, got {eps}")
    }
    let running_mean =
        Var::from_tensor(&vb.get_with_hints(c, "running_mean", candle_nn::Init::Const(0.))?)?;
    let running_var =
        Var::from_tensor(&vb.get_with_hints(c, "running_var", candle_nn::Init::Const(1.))?)?;
    let weight = vb.get_with_hints(c, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(c, "bias", candle_nn::Init::Const(0.))?;
    Ok(BatchNorm {
        weight,
        bias,
        running_mean,
        running_var,
        eps,
        folded: None,
    })
}

impl BatchNorm {
    /// `conv` followed by this BatchNorm in evaluation mode, as one convolution (inference only):
    /// with s = γ / √(σ² + ε) per output channel, weight × s and bias (b − μ) s + β, and the
    /// ReLU that follows fused into it when `relu`. Returns that convolution and this BatchNorm
    /// reduced to what is left of it (nothing, or the ReLU when not fused); training the pair is
    /// refused. The folded tensors are copies: later updates of the variables do not reach them.
    pub fn fold_into(&self, conv: &Conv, relu: bool) -> candle_core::Result<(Conv, BatchNorm)> {
        if self.folded.is_some() {
            candle_core::bail!("this BatchNorm is already folded into a convolution")
        }
        if conv.relu {
            candle_core::bail!("a BatchNorm cannot be folded after a convolution's own ReLU")
        }
        let c_out = conv.weight.dim(0)?;
        if self.weight.dims1()? != c_out {
            candle_core::bail!(
                "a BatchNorm of {} channels cannot follow a convolution of {c_out}",
                self.weight.dims1()?
            )
        }
        let detach = |t: &Tensor| t.detach();
        let (gamma, beta) = (detach(&self.weight), detach(&self.bias));
        let mean = detach(self.running_mean.as_tensor());
        let var = detach(self.running_var.as_tensor());
        let scale = gamma.div(&(var + self.eps)?.sqrt()?)?;
        let weight = detach(&conv.weight).broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        let shift = match &conv.bias {
            Some(b) => (detach(b) - &mean)?,
            None => mean.neg()?,
        };
        let bias = ((shift * &scale)? + beta)?;
        let folded_conv = Conv {
            weight,
            bias: Some(bias),
            relu,
            ..conv.clone()
        };
        Ok((
            folded_conv,
            BatchNorm {
                folded: Some(relu),
                ..self.clone()
            },
        ))
    }

    /// Whether its scale or shift takes a gradient.
    pub fn trainable(&self) -> bool {
        self.weight.track_op() || self.bias.track_op()
    }

    /// `Some(relu)` once folded into a convolution by [`BatchNorm::fold_into`], with or without
    /// the ReLU after it.
    pub(crate) fn folded(&self) -> Option<bool> {
        self.folded
    }

    /// Scale, shift, running mean, running variance and epsilon.
    pub(crate) fn parts(&self) -> (&Tensor, &Tensor, &Tensor, &Tensor, f64) {
        (
            &self.weight,
            &self.bias,
            self.running_mean.as_tensor(),
            self.running_var.as_tensor(),
            self.eps,
        )
    }

    /// True once folded into a convolution by [`BatchNorm::fold_into`].
    pub fn is_folded(&self) -> bool {
        self.folded.is_some()
    }

    /// Normalises `x` (batch statistics in training, updating the running ones; running ones
    /// otherwise), then applies ReLU when `relu`. In training under
    /// [`kernels::with_sync_batch_norm`], the batch statistics are every rank's shards together.
    pub fn forward_act(&self, x: &Tensor, train: bool, relu: bool) -> candle_core::Result<Tensor> {
        if let Some(fused) = self.folded {
            if train {
                candle_core::bail!(
                    "a BatchNorm folded into its convolution for inference cannot train"
                )
            }
            return match (relu, fused) {
                (true, false) => x.relu(),
                (false, true) => {
                    candle_core::bail!("a BatchNorm folded with its ReLU was called without one")
                }
                _ => Ok(x.clone()),
            };
        }
        if !train {
            // Running statistics never take a gradient: detached, they add nothing to a graph.
            let rm = self.running_mean.as_tensor().detach();
            let rv = self.running_var.as_tensor().detach();
            return kernels::batch_norm_eval(x, &self.weight, &self.bias, &rm, &rv, self.eps, relu);
        }
        if let Some(sync) = kernels::sync_batch_norm() {
            let out =
                kernels::batch_norm_train_sync(x, &self.weight, &self.bias, self.eps, relu, &sync)?;
            self.update_running(&out.mean, &out.var, out.count)?;
            return Ok(out.y);
        }
        let (y, mean, var) =
            kernels::batch_norm_train(x, &self.weight, &self.bias, self.eps, relu)?;
        let (n, _, h, w) = x.dims4()?;
        self.update_running(&mean, &var, (n * h * w) as f64)?;
        Ok(y)
    }

    /// Training-mode BatchNorm (then ReLU if `relu`) of a dense block's features so far, read
    /// in place from the block's buffer (see [`kernels::DenseFeatures`]); the running
    /// statistics move as in [`BatchNorm::forward_act`].
    pub(crate) fn forward_dense_train(
        &self,
        features: &kernels::DenseFeatures,
        relu: bool,
    ) -> candle_core::Result<Tensor> {
        if self.folded.is_some() {
            candle_core::bail!("a BatchNorm folded into its convolution for inference cannot train")
        }
        if kernels::sync_batch_norm().is_some() {
            candle_core::bail!("a synchronised BatchNorm reads its input whole, not a block buffer")
        }
        let (y, mean, var) = features.norm_train(&self.weight, &self.bias, self.eps, relu)?;
        let (n, _, h, w) = y.dims4()?;
        self.update_running(&mean, &var, (n * h * w) as f64)?;
        Ok(y)
    }

    /// Moves the running statistics towards a batch's (`m` values per channel), PyTorch's
    /// way: the variance unbiased.
    fn update_running(&self, mean: &Tensor, var: &Tensor, m: f64) -> candle_core::Result<()> {
        let keep = 1.0 - BN_MOMENTUM;
        let rm = ((self.running_mean.as_tensor() * keep)? + (mean * BN_MOMENTUM)?)?;
        let rv = ((self.running_var.as_tensor() * keep)? + (var * (BN_MOMENTUM * m / (m - 1.0)))?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        Ok(())
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.forward_act(x, train, false)
    }
}

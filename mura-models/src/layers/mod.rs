//! Building blocks shared by the zoo: convolution (any rectangular kernel and padding) with
//! BatchNorm and ReLU, seeded dropout, and the multiply-accumulate counter behind `--summary`.

use std::cell::Cell;
use std::sync::Mutex;

use candle_core::{D, Module, ModuleT, Tensor};
use candle_nn::{Linear, VarBuilder};

use mura_kernels::{self as kernels, Conv2dParams};

use crate::vars::{splitmix64, unit};

mod norm;

pub use norm::{BatchNorm, batch_norm};

thread_local! {
    static MACS: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Runs `f` and returns its result with the multiply-accumulates of every convolution and dense
/// layer it ran on this thread.
pub fn count_macs<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let outer = MACS.with(|m| m.replace(Some(0)));
    let r = f();
    let n = MACS.with(|m| m.replace(outer)).unwrap_or(0);
    if let Some(o) = outer {
        MACS.with(|m| m.set(Some(o + n)));
    }
    (r, n)
}

fn add_macs(n: u64) {
    MACS.with(|m| {
        if let Some(v) = m.get() {
            m.set(Some(v + n));
        }
    });
}

/// A 2-D convolution with a `kh`×`kw` kernel and (`ph`, `pw`) zero padding; candle pads both axes
/// alike, so unequal padding is applied to the input first.
#[derive(Debug, Clone)]
pub struct Conv {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
    pub(crate) stride: usize,
    pub(crate) padding: (usize, usize),
    pub(crate) dilation: usize,
    /// A ReLU applied in the same pass (a folded conv → BatchNorm → ReLU).
    pub(crate) relu: bool,
}

/// Options of [`conv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvConfig {
    pub kernel: (usize, usize),
    pub stride: usize,
    pub padding: (usize, usize),
    pub dilation: usize,
    pub bias: bool,
}

impl Default for ConvConfig {
    fn default() -> Self {
        Self {
            kernel: (1, 1),
            stride: 1,
            padding: (0, 0),
            dilation: 1,
            bias: false,
        }
    }
}

impl ConvConfig {
    /// A square `k`×`k` kernel, no padding, no bias.
    pub fn k(k: usize) -> Self {
        Self {
            kernel: (k, k),
            ..Self::default()
        }
    }
    pub fn stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }
    pub fn pad(self, p: usize) -> Self {
        Self {
            padding: (p, p),
            ..self
        }
    }
    pub fn pad_hw(self, ph: usize, pw: usize) -> Self {
        Self {
            padding: (ph, pw),
            ..self
        }
    }
    pub fn kernel_hw(self, kh: usize, kw: usize) -> Self {
        Self {
            kernel: (kh, kw),
            ..self
        }
    }
    pub fn dilation(self, dilation: usize) -> Self {
        Self { dilation, ..self }
    }
    pub fn bias(self, bias: bool) -> Self {
        Self { bias, ..self }
    }
}

/// A convolution named `weight` (and `bias`) under `vb`, as PyTorch's `nn.Conv2d`.
pub fn conv(
    c_in: usize,
    c_out: usize,
    cfg: ConvConfig,
    vb: VarBuilder<'_>,
) -> candle_core::Result<Conv> {
    let (kh, kw) = cfg.kernel;
    let fan_in = (c_in * kh * kw) as f64;
    let bound = 1.0 / fan_in.sqrt();
    let weight = vb.get_with_hints(
        (c_out, c_in, kh, kw),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bias = if cfg.bias {
        Some(vb.get_with_hints(
            c_out,
            "bias",
            candle_nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?)
    } else {
        None
    };
    Ok(Conv {
        weight,
        bias,
        stride: cfg.stride,
        padding: cfg.padding,
        dilation: cfg.dilation,
        relu: false,
    })
}

impl Conv {
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Whether its weight or bias takes a gradient.
    pub fn trainable(&self) -> bool {
        self.weight.track_op() || self.bias.as_ref().is_some_and(Tensor::track_op)
    }

    /// The same convolution with a ReLU applied in its output pass.
    pub fn with_relu(self) -> Self {
        Self { relu: true, ..self }
    }

    /// Whether a ReLU is applied in its output pass.
    pub fn fuses_relu(&self) -> bool {
        self.relu
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (s, d) = (self.stride, self.dilation);
        let params = Conv2dParams {
            stride: (s, s),
            padding: self.padding,
            dilation: (d, d),
        };
        let bias = self.bias.as_ref();
        let y = if self.relu {
            kernels::conv2d_relu(x, &self.weight, bias, params)?
        } else {
            kernels::conv2d(x, &self.weight, bias, params)?
        };
        let (_, c_in, kh, kw) = self.weight.dims4()?;
        add_macs((y.elem_count() * c_in * kh * kw) as u64);
        Ok(y)
    }
}

/// relu(a + b): a residual block's output ([`kernels::add_relu`]: one fused pass each way on the
/// CPU in f32).
pub fn add_relu(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    kernels::add_relu(a, b)
}

/// A dense layer that counts its multiply-accumulates.
pub fn linear_forward(l: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    let (out, inp) = l.weight().dims2()?;
    add_macs((x.elem_count() / inp * inp * out) as u64);
    l.forward(x)
}

/// Convolution (no bias) → BatchNorm → ReLU, named `{conv, bn}` as timm's `ConvNormAct`.
#[derive(Debug, Clone)]
pub struct ConvBnAct {
    pub conv: Conv,
    pub bn: BatchNorm,
    /// Its tensor-name prefix (`Mixed_5b.branch1x1`), naming its nodes in an exported graph.
    pub(crate) name: String,
}

pub fn conv_bn_act(
    c_in: usize,
    c_out: usize,
    cfg: ConvConfig,
    eps: f64,
    vb: VarBuilder<'_>,
) -> candle_core::Result<ConvBnAct> {
    Ok(ConvBnAct {
        conv: conv(c_in, c_out, cfg, vb.pp("conv"))?,
        bn: batch_norm(c_out, eps, vb.pp("bn"))?,
        name: vb.prefix(),
    })
}

impl ConvBnAct {
    /// Folds the BatchNorm and the ReLU into the convolution (inference only; see
    /// [`BatchNorm::fold_into`]).
    pub fn fold(&mut self) -> candle_core::Result<()> {
        (self.conv, self.bn) = self.bn.fold_into(&self.conv, true)?;
        Ok(())
    }
}

impl ModuleT for ConvBnAct {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.bn.forward_act(&self.conv.forward(x)?, train, true)
    }
}

/// The source of dropout masks: a seeded counter-based stream, so that training with the same seed
/// drops the same units whatever the thread count. The training loop reseeds it per step.
#[derive(Debug)]
pub struct Noise {
    state: Mutex<u64>,
}

impl Clone for Noise {
    fn clone(&self) -> Self {
        Self {
            state: Mutex::new(self.state()),
        }
    }
}

impl Default for Noise {
    fn default() -> Self {
        Self::new(0)
    }
}

impl Noise {
    pub fn new(seed: u64) -> Self {
        Self {
            state: Mutex::new(splitmix64(seed)),
        }
    }

    /// The stream state (a poisoned lock still holds a valid number).
    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    fn state(&self) -> u64 {
        *self.lock()
    }

    pub fn reseed(&self, seed: u64) {
        *self.lock() = splitmix64(seed);
    }

    /// `n` uniform draws in [0, 1), advancing the stream.
    fn uniform(&self, n: usize) -> Vec<f32> {
        let mut s = self.lock();
        let key = *s;
        *s = splitmix64(key ^ 0xD1B5_4A32_D192_ED03);
        (0..n as u64)
            .map(|i| unit(splitmix64(key.wrapping_add(i))))
            .collect()
    }

    /// A keep-mask of `shape` (1/(1-p) where kept, 0 where dropped) in `x`'s dtype and device.
    pub fn keep_mask(&self, shape: &[usize], p: f32, like: &Tensor) -> candle_core::Result<Tensor> {
        let n = shape.iter().product();
        let scale = 1.0 / (1.0 - p);
        let mask: Vec<f32> = self
            .uniform(n)
            .into_iter()
            .map(|u| if u >= p { scale } else { 0.0 })
            .collect();
        Tensor::from_vec(mask, shape, like.device())?.to_dtype(like.dtype())
    }

    /// Dropout (element-wise) in training, identity otherwise.
    pub fn dropout(&self, x: &Tensor, p: f32, train: bool) -> candle_core::Result<Tensor> {
        if !train || p <= 0.0 {
            return Ok(x.clone());
        }
        x.mul(&self.keep_mask(x.dims(), p, x)?)
    }

    /// Spatial dropout: whole channels of an N×C×H×W map (Keras' SpatialDropout2D).
    pub fn dropout_channels(&self, x: &Tensor, p: f32, train: bool) -> candle_core::Result<Tensor> {
        if !train || p <= 0.0 {
            return Ok(x.clone());
        }
        let (n, c, _, _) = x.dims4()?;
        x.broadcast_mul(&self.keep_mask(&[n, c, 1, 1], p, x)?)
    }
}

/// Global average or max pooling of N×C×H×W to N×C.
pub fn global_pool(x: &Tensor, max: bool) -> candle_core::Result<Tensor> {
    if max {
        x.max(D::Minus1)?.max(D::Minus1)
    } else {
        x.mean((2, 3))
    }
}

/// True for the tensors BatchNorm updates itself (never given to an optimiser).
pub fn is_running_stat(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn dropout_is_reproducible_and_scaled() {
        let x = Tensor::ones((4, 1000), DType::F32, &Device::Cpu).unwrap();
        let a = Noise::new(3);
        let b = Noise::new(3);
        let ya = a.dropout(&x, 0.25, true).unwrap();
        let yb = b.dropout(&x, 0.25, true).unwrap();
        let va: Vec<f32> = ya.flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f32> = yb.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(va, vb);
        let kept = va.iter().filter(|v| **v > 0.0).count() as f64 / 4000.0;
        assert!((kept - 0.75).abs() < 0.03, "{kept}");
        assert!(
            va.iter()
                .all(|v| *v == 0.0 || (*v - 4.0 / 3.0).abs() < 1e-6)
        );
        // The stream advances: the next mask differs.
        let again: Vec<f32> = a
            .dropout(&x, 0.25, true)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_ne!(va, again);
        // Reseeding replays it.
        a.reseed(3);
        let replay: Vec<f32> = a
            .dropout(&x, 0.25, true)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(va, replay);
        // Off in evaluation.
        let eval: Vec<f32> = a
            .dropout(&x, 0.25, false)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(eval.iter().all(|v| *v == 1.0));
    }

    #[test]
    fn asymmetric_padding_keeps_the_size_of_1x7_kernels() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let c = conv(2, 3, ConvConfig::default().kernel_hw(1, 7).pad_hw(0, 3), vb).unwrap();
        let x = Tensor::ones((1, 2, 5, 9), DType::F32, &dev).unwrap();
        let (y, macs) = count_macs(|| c.forward(&x).unwrap());
        assert_eq!(y.dims(), &[1, 3, 5, 9]);
        assert_eq!(macs, (3 * 5 * 9 * 2 * 7) as u64);
    }
}

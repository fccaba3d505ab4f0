//! DenseNet-121/169/201 with timm's module and tensor names (`features.denseblock1.denselayer1.norm1`).
//!
//! Stem: 7×7/2 convolution, BatchNorm-ReLU, 3×3/2 max pool (padding 1). Each dense layer is
//! BN-ReLU-Conv1×1 (bn_size × growth) → BN-ReLU-Conv3×3 (growth), its output concatenated to its
//! input; transitions halve the channels (BN-ReLU-Conv1×1) and the size (2×2 average pool); a last
//! BN-ReLU (`features.norm5`) ends the features.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::layers::{BatchNorm, Conv, ConvConfig, batch_norm, conv};
use mura_kernels::DenseFeatures;
use mura_kernels::Pool2d;

const EPS: f64 = 1e-5;

/// The shape of a DenseNet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseNetConfig {
    /// Channels each dense layer adds (k).
    pub growth: usize,
    /// Dense layers per block.
    pub blocks: Vec<usize>,
    /// Bottleneck width as a multiple of the growth.
    pub bn_size: usize,
}

impl DenseNetConfig {
    pub fn densenet121() -> Self {
        Self {
            growth: 32,
            blocks: vec![6, 12, 24, 16],
            bn_size: 4,
        }
    }
    pub fn densenet169() -> Self {
        Self {
            blocks: vec![6, 12, 32, 32],
            ..Self::densenet121()
        }
    }
    pub fn densenet201() -> Self {
        Self {
            blocks: vec![6, 12, 48, 32],
            ..Self::densenet121()
        }
    }

    pub fn check(&self) -> Result<(), ModelError> {
        if self.growth == 0
            || self.bn_size == 0
            || self.blocks.is_empty()
            || self.blocks.contains(&0)
        {
            return Err(ModelError::BadConfig {
                reason: format!(
                    "DenseNet needs a positive growth, bottleneck and layers per block, got {self:?}"
                ),
            });
        }
        Ok(())
    }

    /// Channels of the stem (2 × growth, as timm).
    pub fn init_features(&self) -> usize {
        2 * self.growth
    }

    /// Channels of the last feature map.
    pub fn num_features(&self) -> usize {
        let mut c = self.init_features();
        for (i, &n) in self.blocks.iter().enumerate() {
            c += n * self.growth;
            if i + 1 < self.blocks.len() {
                c /= 2;
            }
        }
        c
    }
}

/// BatchNorm followed by ReLU (timm's `BatchNormAct2d`).
#[derive(Debug, Clone)]
pub(crate) struct BnAct(pub(crate) BatchNorm);

impl BnAct {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.0.forward_act(x, train, true)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct DenseLayer {
    pub(crate) norm1: BnAct,
    pub(crate) conv1: Conv,
    pub(crate) norm2: BnAct,
    pub(crate) conv2: Conv,
}

impl DenseLayer {
    fn new(
        c_in: usize,
        growth: usize,
        bn_size: usize,
        vb: VarBuilder<'_>,
    ) -> candle_core::Result<Self> {
        let mid = bn_size * growth;
        Ok(Self {
            norm1: BnAct(batch_norm(c_in, EPS, vb.pp("norm1"))?),
            conv1: conv(c_in, mid, ConvConfig::k(1), vb.pp("conv1"))?,
            norm2: BnAct(batch_norm(mid, EPS, vb.pp("norm2"))?),
            conv2: conv(mid, growth, ConvConfig::k(3).pad(1), vb.pp("conv2"))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let y = self.conv1.forward(&self.norm1.forward_t(x, train)?)?;
        self.conv2.forward(&self.norm2.forward_t(&y, train)?)
    }

    /// Whether a parameter of the layer takes a gradient.
    fn trainable(&self) -> bool {
        self.norm1.0.trainable()
            || self.conv1.trainable()
            || self.norm2.0.trainable()
            || self.conv2.trainable()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Transition {
    pub(crate) norm: BnAct,
    pub(crate) conv: Conv,
}

/// One stage of the features, as timm names them.
#[derive(Debug, Clone)]
pub(crate) enum Stage {
    Stem { conv0: Conv, norm0: BnAct },
    Block(Vec<DenseLayer>),
    Transition(Transition),
    Norm5(BnAct),
}

/// A DenseNet backbone (features only; the head is separate).
#[derive(Debug, Clone)]
pub struct DenseNet {
    pub(crate) config: DenseNetConfig,
    pub(crate) stages: Vec<(String, Stage)>,
}

impl DenseNet {
    pub fn new(
        config: &DenseNetConfig,
        in_channels: usize,
        vb: VarBuilder<'_>,
    ) -> Result<Self, ModelError> {
        config.check()?;
        let f = vb.pp("features");
        let init = config.init_features();
        let mut stages = vec![(
            "features.conv0".to_string(),
            Stage::Stem {
                conv0: conv(
                    in_channels,
                    init,
                    ConvConfig::k(7).stride(2).pad(3),
                    f.pp("conv0"),
                )?,
                norm0: BnAct(batch_norm(init, EPS, f.pp("norm0"))?),
            },
        )];
        let mut c = init;
        for (i, &n) in config.blocks.iter().enumerate() {
            let name = format!("denseblock{}", i + 1);
            let vb_b = f.pp(&name);
            let mut layers = Vec::with_capacity(n);
            for j in 0..n {
                layers.push(DenseLayer::new(
                    c + j * config.growth,
                    config.growth,
                    config.bn_size,
                    vb_b.pp(format!("denselayer{}", j + 1)),
                )?);
            }
            stages.push((format!("features.{name}"), Stage::Block(layers)));
            c += n * config.growth;
            if i + 1 < config.blocks.len() {
                let name = format!("transition{}", i + 1);
                let vb_t = f.pp(&name);
                stages.push((
                    format!("features.{name}"),
                    Stage::Transition(Transition {
                        norm: BnAct(batch_norm(c, EPS, vb_t.pp("norm"))?),
                        conv: conv(c, c / 2, ConvConfig::k(1), vb_t.pp("conv"))?,
                    }),
                ));
                c /= 2;
            }
        }
        stages.push((
            "features.norm5".into(),
            Stage::Norm5(BnAct(batch_norm(c, EPS, f.pp("norm5"))?)),
        ));
        Ok(Self {
            config: config.clone(),
            stages,
        })
    }

    /// Folds the BatchNorms that follow a convolution directly (the stem's `norm0`, each dense
    /// layer's `norm2`), with their ReLUs, into it (inference only; see
    /// [`BatchNorm::fold_into`]). The `norm1`s and the transitions' norms come first in their
    /// layers (pre-activation) and stay.
    pub fn fold_batch_norms(&mut self) -> candle_core::Result<()> {
        for (_, stage) in &mut self.stages {
            match stage {
                Stage::Stem { conv0, norm0 } => {
                    (*conv0, norm0.0) = norm0.0.fold_into(conv0, true)?;
                }
                Stage::Block(layers) => {
                    for l in layers {
                        (l.conv1, l.norm2.0) = l.norm2.0.fold_into(&l.conv1, true)?;
                    }
                }
                Stage::Transition(_) | Stage::Norm5(_) => {}
            }
        }
        Ok(())
    }

    pub fn config(&self) -> &DenseNetConfig {
        &self.config
    }

    pub fn num_features(&self) -> usize {
        self.config.num_features()
    }

    /// Stage names, input to output (`features.conv0`, `features.denseblock1`, ...).
    pub fn stage_names(&self) -> Vec<String> {
        self.stages.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Tensor-name prefixes owned by stage `i` (the stem also owns `features.norm0`).
    pub fn stage_prefixes(&self, i: usize) -> Vec<String> {
        match self.stages.get(i) {
            Some((_, Stage::Stem { .. })) => {
                vec!["features.conv0.".into(), "features.norm0.".into()]
            }
            Some((name, _)) => vec![format!("{name}.")],
            None => vec![],
        }
    }

    pub fn num_stages(&self) -> usize {
        self.stages.len()
    }

    pub fn forward_stage(&self, i: usize, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let Some((_, stage)) = self.stages.get(i) else {
            candle_core::bail!("DenseNet has no stage {i}")
        };
        match stage {
            Stage::Stem { conv0, norm0 } => {
                Pool2d::max(3, 2, 1).forward(&norm0.forward_t(&conv0.forward(x)?, train)?)
            }
            Stage::Block(layers)
                if !train && !x.track_op() && !layers.iter().any(|l| l.trainable()) =>
            {
                dense_block_in_place(layers, x, self.config.growth)
            }
            Stage::Block(layers)
                if train
                    && mura_kernels::Kernels::of(x) == mura_kernels::Kernels::Cpu
                    && x.rank() == 4
                    && mura_kernels::sync_batch_norm().is_none() =>
            {
                dense_block_train(layers, x, self.config.growth)
            }
            Stage::Block(layers) => dense_block_concat(layers, x, train),
            Stage::Transition(t) => {
                let y = t.conv.forward(&t.norm.forward_t(x, train)?)?;
                Pool2d::avg(2, 2, 0).forward(&y)
            }
            Stage::Norm5(n) => n.forward_t(x, train),
        }
    }
}

/// A dense block as written: each layer's input is the concatenation of the block input and
/// every earlier layer's output (the path for other devices and dtypes, and for evaluation
/// that tracks gradients, as Grad-CAM's).
fn dense_block_concat(
    layers: &[DenseLayer],
    x: &Tensor,
    train: bool,
) -> candle_core::Result<Tensor> {
    let mut features = vec![x.clone()];
    for layer in layers {
        let input = Tensor::cat(&features, 1)?;
        features.push(layer.forward_t(&input, train)?);
    }
    Tensor::cat(&features, 1)
}

/// A dense block in training: every layer reads the features gathered so far in place from
/// one buffer and writes its new channels once after them; the backward adds each layer's
/// input gradient into one gradient buffer (see [`DenseFeatures`]). The same values as the
/// concatenating block (its BatchNorms see the same channels), without its quadratic copies
/// and their sums of gradient pieces.
fn dense_block_train(
    layers: &[DenseLayer],
    x: &Tensor,
    growth: usize,
) -> candle_core::Result<Tensor> {
    let (_, c0, _, _) = x.dims4()?;
    let mut features = DenseFeatures::start(x, c0 + layers.len() * growth)?;
    for layer in layers {
        let a = layer.norm1.0.forward_dense_train(&features, true)?;
        let y = layer.conv1.forward(&a)?;
        let y = layer.conv2.forward(&layer.norm2.forward_t(&y, true)?)?;
        features.append(&y)?;
    }
    features.finish()
}

/// A dense block when nothing in it needs a gradient (evaluation of a detached model): every
/// layer writes its `growth` new channels into one buffer holding the block's whole output, and
/// reads its input as the buffer's first channels, in place. The concatenating forward copies
/// all the features gathered so far once per layer (quadratic in the depth); this copies each
/// channel once.
fn dense_block_in_place(
    layers: &[DenseLayer],
    x: &Tensor,
    growth: usize,
) -> candle_core::Result<Tensor> {
    let (n, c0, h, w) = x.dims4()?;
    let buffer = Tensor::zeros((n, c0 + layers.len() * growth, h, w), x.dtype(), x.device())?;
    buffer.slice_set(&x.contiguous()?, 1, 0)?;
    let mut c = c0;
    for layer in layers {
        let y = layer.forward_t(&buffer.narrow(1, 0, c)?, false)?;
        buffer.slice_set(&y.contiguous()?, 1, c)?;
        c += growth;
    }
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    /// A block of three layers (growth 3, bottleneck 2) on 5 input channels, seeded.
    fn block(seed: u64) -> (VarMap, Vec<DenseLayer>) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let layers: Vec<DenseLayer> = (0..3)
            .map(|j| {
                DenseLayer::new(5 + 3 * j, 3, 2, vb.pp(format!("denselayer{}", j + 1))).unwrap()
            })
            .collect();
        crate::init::init_seeded(&varmap, seed).unwrap();
        // γ and β away from 1 and 0, so that their gradients are tested.
        for (name, var) in varmap.data().lock().unwrap().iter() {
            if name.ends_with("norm1.weight") || name.ends_with("norm1.bias") {
                let shifted = (var.as_tensor().ones_like().unwrap() * 0.7).unwrap();
                var.set(
                    &shifted
                        .broadcast_add(&var.as_tensor().affine(0.0, 0.1).unwrap())
                        .unwrap(),
                )
                .unwrap();
            }
        }
        (varmap, layers)
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The buffered training block gives the concatenating block's output to the bit, and its
    /// gradients (input, every weight, γ and β) and running statistics to f32 rounding:
    /// within 2e-6 of the largest magnitude of each.
    #[test]
    fn the_buffered_training_block_matches_the_concatenating_one() {
        mura_kernels::with_generic(
            false,
            the_buffered_training_block_matches_the_concatenating_one_on_the_cpu_kernels,
        )
    }

    fn the_buffered_training_block_matches_the_concatenating_one_on_the_cpu_kernels() {
        let dev = Device::Cpu;
        let (n, h, w) = (2, 5, 4);
        let xv: Vec<f32> = (0..n * 5 * h * w)
            .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 50.0)
            .collect();
        let run = |buffered: bool| {
            let (varmap, layers) = block(11);
            let x = Var::from_vec(xv.clone(), (n, 5, h, w), &dev).unwrap();
            let out = if buffered {
                dense_block_train(&layers, &x, 3).unwrap()
            } else {
                dense_block_concat(&layers, &x, true).unwrap()
            };
            let weights = Tensor::arange(0f32, out.elem_count() as f32, &dev)
                .unwrap()
                .affine(0.01, -0.3)
                .unwrap()
                .cos()
                .unwrap()
                .reshape(out.shape())
                .unwrap();
            let grads = (&out * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let mut named: Vec<(String, Vec<f32>)> = vec![
                ("out".into(), values(&out)),
                (
                    "dx".into(),
                    values(grads.get(&x).expect("no gradient reaches x")),
                ),
            ];
            let data = varmap.data().lock().unwrap();
            let mut names: Vec<&String> = data.keys().collect();
            names.sort();
            for name in names {
                let var = &data[name];
                named.push((name.clone(), values(var.as_tensor())));
                if let Some(g) = grads.get(var.as_tensor()) {
                    named.push((format!("d {name}"), values(g)));
                }
            }
            named
        };
        let (ours, theirs) = (run(true), run(false));
        assert_eq!(
            ours.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            theirs.iter().map(|(k, _)| k).collect::<Vec<_>>()
        );
        // 3 layers × (2 norms × 2 + 2 convs) parameters and 2 running statistics per norm.
        assert!(ours.iter().filter(|(k, _)| k.starts_with("d ")).count() >= 3 * 6);
        assert_eq!(ours[0].1, theirs[0].1, "the output differs");
        for ((what, a), (_, b)) in ours.iter().zip(&theirs) {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
            for (i, (u, v)) in a.iter().zip(b).enumerate() {
                assert!((u - v).abs() <= 2e-6 * scale, "{what}[{i}]: {u} vs {v}");
            }
        }
    }

    /// A layer output of the wrong size and a block finished early are errors, not panics.
    #[test]
    fn the_buffer_refuses_what_does_not_fit() {
        let dev = Device::Cpu;
        let x = Tensor::ones((2, 4, 3, 3), DType::F32, &dev).unwrap();
        let mut f = DenseFeatures::start(&x, 8).unwrap();
        assert_eq!(f.channels().unwrap(), 4);
        let wrong_size = Tensor::ones((2, 2, 4, 4), DType::F32, &dev).unwrap();
        let err = f.append(&wrong_size).unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
        let too_many = Tensor::ones((2, 5, 3, 3), DType::F32, &dev).unwrap();
        assert!(f.append(&too_many).is_err());
        assert_eq!(f.channels().unwrap(), 4, "a refused output wrote nothing");
        f.append(&Tensor::ones((2, 2, 3, 3), DType::F32, &dev).unwrap())
            .unwrap();
        let err = f.finish().unwrap_err().to_string();
        assert!(err.contains("6 of its 8 channels"), "{err}");
        assert!(
            DenseFeatures::start(&x, 3).is_err(),
            "an input wider than the block"
        );
    }
}

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
use crate::pool::Pool2d;

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
struct BnAct(BatchNorm);

impl BnAct {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.0.forward_act(x, train, true)
    }
}

#[derive(Debug, Clone)]
struct DenseLayer {
    norm1: BnAct,
    conv1: Conv,
    norm2: BnAct,
    conv2: Conv,
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
struct Transition {
    norm: BnAct,
    conv: Conv,
}

/// One stage of the features, as timm names them.
#[derive(Debug, Clone)]
enum Stage {
    Stem { conv0: Conv, norm0: BnAct },
    Block(Vec<DenseLayer>),
    Transition(Transition),
    Norm5(BnAct),
}

/// A DenseNet backbone (features only; the head is separate).
#[derive(Debug, Clone)]
pub struct DenseNet {
    config: DenseNetConfig,
    stages: Vec<(String, Stage)>,
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
            Stage::Block(layers) => {
                let mut features = vec![x.clone()];
                for layer in layers {
                    let input = Tensor::cat(&features, 1)?;
                    features.push(layer.forward_t(&input, train)?);
                }
                Tensor::cat(&features, 1)
            }
            Stage::Transition(t) => {
                let y = t.conv.forward(&t.norm.forward_t(x, train)?)?;
                Pool2d::avg(2, 2, 0).forward(&y)
            }
            Stage::Norm5(n) => n.forward_t(x, train),
        }
    }
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

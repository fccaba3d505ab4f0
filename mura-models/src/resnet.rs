//! ResNet-18/34/50, trainable, with timm's names (`conv1`, `bn1`, `layer1.0.conv1`,
//! `layer1.0.downsample.0`). candle-transformers' ResNet is inference-only (BatchNorm fixed to eval);
//! this one passes `train` down.
//!
//! Stem: 7×7/2 convolution (64 channels), BatchNorm, ReLU, 3×3/2 max pool (padding 1). Basic blocks
//! are two 3×3 convolutions; bottlenecks are 1×1 → 3×3 (carrying the stride) → 1×1 ×4. A 1×1
//! convolution with BatchNorm projects the shortcut when the stride or width changes.

use candle_core::{Module, ModuleT, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::layers::{BatchNorm, Conv, ConvConfig, batch_norm, conv};
use mura_kernels::Pool2d;

const EPS: f64 = 1e-5;
const STEM: usize = 64;

/// Residual block kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

impl BlockKind {
    pub fn expansion(self) -> usize {
        match self {
            Self::Basic => 1,
            Self::Bottleneck => 4,
        }
    }
}

/// The shape of a ResNet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    pub block: BlockKind,
    /// Blocks per stage (`layer1`..).
    pub layers: Vec<usize>,
    /// Width of each stage before expansion (64, 128, 256, 512).
    pub channels: Vec<usize>,
}

impl ResNetConfig {
    pub fn resnet18() -> Self {
        Self {
            block: BlockKind::Basic,
            layers: vec![2, 2, 2, 2],
            channels: vec![64, 128, 256, 512],
        }
    }
    pub fn resnet34() -> Self {
        Self {
            layers: vec![3, 4, 6, 3],
            ..Self::resnet18()
        }
    }
    pub fn resnet50() -> Self {
        Self {
            block: BlockKind::Bottleneck,
            ..Self::resnet34()
        }
    }

    pub fn check(&self) -> Result<(), ModelError> {
        if self.layers.is_empty()
            || self.layers.len() != self.channels.len()
            || self.layers.contains(&0)
            || self.channels.contains(&0)
        {
            return Err(ModelError::BadConfig {
                reason: format!(
                    "ResNet needs as many positive layer counts as widths, got {self:?}"
                ),
            });
        }
        Ok(())
    }

    pub fn num_features(&self) -> usize {
        self.channels.last().copied().unwrap_or(0) * self.block.expansion()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) convs: Vec<(Conv, BatchNorm)>,
    pub(crate) downsample: Option<(Conv, BatchNorm)>,
}

impl Block {
    fn new(
        kind: BlockKind,
        c_in: usize,
        planes: usize,
        stride: usize,
        vb: VarBuilder<'_>,
    ) -> candle_core::Result<Self> {
        let out = planes * kind.expansion();
        let specs: Vec<(usize, usize, ConvConfig)> = match kind {
            BlockKind::Basic => vec![
                (c_in, planes, ConvConfig::k(3).stride(stride).pad(1)),
                (planes, planes, ConvConfig::k(3).pad(1)),
            ],
            BlockKind::Bottleneck => vec![
                (c_in, planes, ConvConfig::k(1)),
                (planes, planes, ConvConfig::k(3).stride(stride).pad(1)),
                (planes, out, ConvConfig::k(1)),
            ],
        };
        let mut convs = Vec::with_capacity(specs.len());
        for (i, (a, b, cfg)) in specs.into_iter().enumerate() {
            convs.push((
                conv(a, b, cfg, vb.pp(format!("conv{}", i + 1)))?,
                batch_norm(b, EPS, vb.pp(format!("bn{}", i + 1)))?,
            ));
        }
        let downsample = if stride != 1 || c_in != out {
            let d = vb.pp("downsample");
            Some((
                conv(c_in, out, ConvConfig::k(1).stride(stride), d.pp("0"))?,
                batch_norm(out, EPS, d.pp("1"))?,
            ))
        } else {
            None
        };
        Ok(Self { convs, downsample })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut y = x.clone();
        let last = self.convs.len() - 1;
        for (i, (c, bn)) in self.convs.iter().enumerate() {
            y = bn.forward_act(&c.forward(&y)?, train, i < last)?;
        }
        let shortcut = match &self.downsample {
            Some((c, bn)) => bn.forward_t(&c.forward(x)?, train)?,
            None => x.clone(),
        };
        crate::layers::add_relu(&y, &shortcut)
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Stage {
    Stem { conv1: Conv, bn1: BatchNorm },
    Layer(Vec<Block>),
}

/// A ResNet backbone (features only).
#[derive(Debug, Clone)]
pub struct ResNet {
    pub(crate) config: ResNetConfig,
    pub(crate) stages: Vec<(String, Stage)>,
}

impl ResNet {
    pub fn new(
        config: &ResNetConfig,
        in_channels: usize,
        vb: VarBuilder<'_>,
    ) -> Result<Self, ModelError> {
        config.check()?;
        let mut stages = vec![(
            "conv1".to_string(),
            Stage::Stem {
                conv1: conv(
                    in_channels,
                    STEM,
                    ConvConfig::k(7).stride(2).pad(3),
                    vb.pp("conv1"),
                )?,
                bn1: batch_norm(STEM, EPS, vb.pp("bn1"))?,
            },
        )];
        let mut c = STEM;
        for (i, (&n, &planes)) in config.layers.iter().zip(&config.channels).enumerate() {
            let name = format!("layer{}", i + 1);
            let vb_l = vb.pp(&name);
            let mut blocks = Vec::with_capacity(n);
            for j in 0..n {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                blocks.push(Block::new(
                    config.block,
                    c,
                    planes,
                    stride,
                    vb_l.pp(j.to_string()),
                )?);
                c = planes * config.block.expansion();
            }
            stages.push((name, Stage::Layer(blocks)));
        }
        Ok(Self {
            config: config.clone(),
            stages,
        })
    }

    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// Folds every BatchNorm into the convolution before it (inference only; see
    /// [`BatchNorm::fold_into`]).
    pub fn fold_batch_norms(&mut self) -> candle_core::Result<()> {
        let fold = |(conv, bn): &mut (Conv, BatchNorm), relu: bool| -> candle_core::Result<()> {
            (*conv, *bn) = bn.fold_into(conv, relu)?;
            Ok(())
        };
        for (_, stage) in &mut self.stages {
            match stage {
                Stage::Stem { conv1, bn1 } => (*conv1, *bn1) = bn1.fold_into(conv1, true)?,
                Stage::Layer(blocks) => {
                    for b in blocks {
                        // As `Block::forward_t`: a ReLU after every BatchNorm but the last,
                        // whose output meets the shortcut first.
                        let last = b.convs.len() - 1;
                        for (i, pair) in b.convs.iter_mut().enumerate() {
                            fold(pair, i < last)?;
                        }
                        if let Some(pair) = &mut b.downsample {
                            fold(pair, false)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub fn num_features(&self) -> usize {
        self.config.num_features()
    }

    pub fn stage_names(&self) -> Vec<String> {
        self.stages.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn stage_prefixes(&self, i: usize) -> Vec<String> {
        match self.stages.get(i) {
            Some((_, Stage::Stem { .. })) => vec!["conv1.".into(), "bn1.".into()],
            Some((name, _)) => vec![format!("{name}.")],
            None => vec![],
        }
    }

    pub fn num_stages(&self) -> usize {
        self.stages.len()
    }

    pub fn forward_stage(&self, i: usize, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let Some((_, stage)) = self.stages.get(i) else {
            candle_core::bail!("ResNet has no stage {i}")
        };
        match stage {
            Stage::Stem { conv1, bn1 } => {
                Pool2d::max(3, 2, 1).forward(&bn1.forward_act(&conv1.forward(x)?, train, true)?)
            }
            Stage::Layer(blocks) => {
                let mut y = x.clone();
                for b in blocks {
                    y = b.forward_t(&y, train)?;
                }
                Ok(y)
            }
        }
    }
}

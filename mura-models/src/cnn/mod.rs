//! The custom CNN family of the seed reports, from one typed config: blocks of Conv → BatchNorm →
//! ReLU (→ spatial dropout) with local pooling, a global pooling or flatten readout, an optional
//! self-attention layer on the last feature map, and a dense head with dropout.

use crate::layers::{BatchNorm, Conv, ConvConfig, Noise, batch_norm, conv, linear_forward};
use crate::{ModelError, Pool2d};
use candle_core::{Module, ModuleT, Tensor};
use candle_nn::{Linear, VarBuilder};

mod config;

pub use config::{CnnConfig, FilterGrowth, KernelGrowth, LocalPool, Readout};

/// One convolution with its optional BatchNorm.
#[derive(Debug, Clone)]
pub(crate) struct ConvUnit {
    pub(crate) conv: Conv,
    pub(crate) bn: Option<BatchNorm>,
}

#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) convs: Vec<ConvUnit>,
    pub(crate) pool: Option<Pool2d>,
}

/// SAGAN-style self-attention: out = x + γ · softmax(qᵀk) v, with γ starting at 0.
#[derive(Debug, Clone)]
pub(crate) struct SelfAttention {
    pub(crate) query: Conv,
    pub(crate) key: Conv,
    pub(crate) value: Conv,
    pub(crate) gamma: Tensor,
}

impl SelfAttention {
    fn new(c: usize, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        let q = (c / 8).max(1);
        let cfg = ConvConfig::k(1).bias(true);
        Ok(Self {
            query: conv(c, q, cfg, vb.pp("query"))?,
            key: conv(c, q, cfg, vb.pp("key"))?,
            value: conv(c, c, cfg, vb.pp("value"))?,
            gamma: vb.get_with_hints(1, "gamma", candle_nn::Init::Const(0.0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let q = self.query.forward(x)?.flatten_from(2)?; // n, q, hw
        let k = self.key.forward(x)?.flatten_from(2)?;
        let v = self.value.forward(x)?.flatten_from(2)?; // n, c, hw
        // candle-nn's `softmax_last_dim` has no backward (it is applied with `apply_op1_no_bwd`, so
        // the query and key would silently get no gradient); the composed `softmax` has one.
        let attn = candle_nn::ops::softmax(
            &q.transpose(1, 2)?.contiguous()?.matmul(&k)?,
            candle_core::D::Minus1,
        )?; // n, hw, hw
        let out = v
            .matmul(&attn.transpose(1, 2)?.contiguous()?)?
            .reshape((n, c, h, w))?;
        x + out.broadcast_mul(&self.gamma)?
    }
}

/// A network of the custom CNN family.
#[derive(Debug, Clone)]
pub struct Cnn {
    pub(crate) config: CnnConfig,
    pub(crate) blocks: Vec<Block>,
    pub(crate) attention: Option<SelfAttention>,
    pub(crate) dense: Vec<Linear>,
    pub(crate) classifier: Linear,
    pub(crate) noise: Noise,
}

impl Cnn {
    /// Builds the network; tensor names: `blocks.{b}.convs.{i}.conv`, `.bn`, `attention.*`,
    /// `head.dense.{j}`, `head.classifier`.
    pub fn new(config: &CnnConfig, vb: VarBuilder<'_>) -> Result<Self, ModelError> {
        config.check()?;
        let mut blocks = Vec::with_capacity(config.blocks);
        let mut c_in = config.in_channels;
        for b in 0..config.blocks {
            let vb_b = vb.pp(format!("blocks.{b}"));
            let (c, k) = (config.filters_of(b), config.kernel_of(b));
            let mut convs = Vec::with_capacity(config.convs_per_block);
            for i in 0..config.convs_per_block {
                let vb_c = vb_b.pp(format!("convs.{i}"));
                let cfg = ConvConfig::k(k)
                    .pad(config.dilation * (k - 1) / 2)
                    .stride(if i == 0 { config.stride } else { 1 })
                    .dilation(config.dilation)
                    .bias(true);
                let conv = conv(c_in, c, cfg, vb_c.pp("conv"))?;
                let bn = if config.batch_norm {
                    Some(batch_norm(c, 1e-5, vb_c.pp("bn"))?)
                } else {
                    None
                };
                convs.push(ConvUnit { conv, bn });
                c_in = c;
            }
            let pool = config.pools_after(b).then(|| match config.pool {
                Some(LocalPool::Avg) => Pool2d::avg(2, 2, 0),
                _ => Pool2d::max(2, 2, 0),
            });
            blocks.push(Block { convs, pool });
        }
        let attention = if config.attention {
            Some(SelfAttention::new(c_in, vb.pp("attention"))?)
        } else {
            None
        };
        let mut f = config.num_features()?;
        let mut dense = Vec::new();
        for (j, &d) in config.dense.iter().enumerate() {
            dense.push(candle_nn::linear(f, d, vb.pp(format!("head.dense.{j}")))?);
            f = d;
        }
        let classifier = candle_nn::linear(f, config.num_classes, vb.pp("head.classifier"))?;
        Ok(Self {
            config: config.clone(),
            blocks,
            attention,
            dense,
            classifier,
            noise: Noise::default(),
        })
    }

    pub fn config(&self) -> &CnnConfig {
        &self.config
    }

    /// The name of the last convolutional feature map (for Grad-CAM).
    pub fn last_feature_map(&self) -> String {
        format!("blocks.{}", self.config.blocks - 1)
    }

    /// Checks an input against the configured channels (and size, for the flatten readout).
    pub fn check_input(&self, x: &Tensor) -> Result<(), ModelError> {
        let s = self.config.input_size;
        let ok = match x.dims() {
            &[_, c, h, w] => {
                c == self.config.in_channels
                    && (self.config.readout != Readout::Flatten || (h == s && w == s))
                    && h >= self.min_input()
                    && w >= self.min_input()
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(ModelError::BadInput {
                expected: format!("N×{}×{s}×{s}", self.config.in_channels),
                found: format!("{:?}", x.dims()),
            })
        }
    }

    /// The smallest input side that survives every stride and pooling.
    fn min_input(&self) -> usize {
        let mut side = 1;
        for b in (0..self.config.blocks).rev() {
            if self.config.pools_after(b) {
                side *= 2;
            }
            if self.config.stride > 1 {
                side = (side - 1) * self.config.stride + 1;
            }
        }
        side
    }

    /// Stage names, input to output: `blocks.{b}`, then `attention` when present.
    pub fn stage_names(&self) -> Vec<String> {
        let mut names: Vec<String> = (0..self.blocks.len())
            .map(|b| format!("blocks.{b}"))
            .collect();
        if self.attention.is_some() {
            names.push("attention".into());
        }
        names
    }

    /// Number of stages: the blocks, and the attention layer when present.
    pub fn num_stages(&self) -> usize {
        self.blocks.len() + usize::from(self.attention.is_some())
    }

    /// Tensor-name prefixes of stage `i`.
    pub fn stage_prefixes(&self, i: usize) -> Vec<String> {
        self.stage_names()
            .get(i)
            .map(|n| vec![format!("{n}.")])
            .unwrap_or_default()
    }

    /// Runs stage `i` (a block, or the attention layer).
    pub fn forward_stage(&self, i: usize, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if let Some(block) = self.blocks.get(i) {
            let mut x = x.clone();
            for unit in &block.convs {
                x = unit.conv.forward(&x)?;
                x = match &unit.bn {
                    Some(bn) => bn.forward_act(&x, train, true)?,
                    None if unit.conv.fuses_relu() => x,
                    None => x.relu()?,
                };
            }
            x = self
                .noise
                .dropout_channels(&x, self.config.spatial_dropout, train)?;
            if let Some(pool) = &block.pool {
                x = pool.forward(&x)?;
            }
            return Ok(x);
        }
        match &self.attention {
            Some(a) if i == self.blocks.len() => a.forward(x),
            _ => candle_core::bail!("the CNN has no stage {i}"),
        }
    }

    /// Folds each BatchNorm, with the ReLU after it, into its convolution, and fuses the ReLU
    /// into the convolutions without one (inference only; see [`BatchNorm::fold_into`]).
    pub fn fold_batch_norms(&mut self) -> candle_core::Result<()> {
        for unit in self.blocks.iter_mut().flat_map(|b| &mut b.convs) {
            match &mut unit.bn {
                Some(bn) => (unit.conv, *bn) = bn.fold_into(&unit.conv, true)?,
                None => unit.conv = unit.conv.clone().with_relu(),
            }
        }
        Ok(())
    }

    /// Reseeds the dropout stream (the training loop does it per step).
    pub fn set_seed(&self, seed: u64) {
        self.noise.reseed(seed);
    }

    /// The last feature map (N × C × h × w) after attention.
    pub fn forward_features(&self, x: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        self.check_input(x)?;
        let mut x = x.clone();
        for i in 0..self.num_stages() {
            x = self.forward_stage(i, &x, train)?;
        }
        Ok(x)
    }

    /// Readout, dense layers and classifier: logits N × classes.
    pub fn forward_head(&self, features: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let mut x = match self.config.readout {
            Readout::Flatten => features.flatten_from(1)?,
            Readout::GlobalAvg => features.mean((2, 3))?,
            Readout::GlobalMax => features.max(3)?.max(2)?,
        };
        for d in &self.dense {
            x = linear_forward(d, &x)?.relu()?;
            x = self.noise.dropout(&x, self.config.dropout, train)?;
        }
        if self.dense.is_empty() {
            x = self.noise.dropout(&x, self.config.dropout, train)?;
        }
        Ok(linear_forward(&self.classifier, &x)?)
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        self.forward_head(&self.forward_features(x, train)?, train)
    }
}

impl ModuleT for Cnn {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.forward(x, train).map_err(|e| match e {
            ModelError::Candle(e) => e,
            other => candle_core::Error::Msg(other.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_cnn_has_the_seed_parameter_count() {
        assert_eq!(
            CnnConfig::custom_cnn().parameter_count().unwrap(),
            6_308_609
        );
        assert_eq!(
            CnnConfig::custom_cnn().num_features().unwrap(),
            1024 * 4 * 4
        );
    }

    #[test]
    fn run_names_are_stable_and_distinct() {
        assert_eq!(
            CnnConfig::custom_cnn().run_name(),
            "cnn6x1_f32dbl_k3_bn_maxpool_flat_do0.25_3in256"
        );
        assert_eq!(
            CnnConfig::alexnet_style().run_name(),
            "cnn5x1_f8x1-2-4-4-2_k3_bn_maxpool125_flat_fc64-64_do0.4_1in128"
        );
        let names: std::collections::BTreeSet<String> = CnnConfig::PRESETS
            .iter()
            .map(|p| CnnConfig::preset(p).unwrap().run_name())
            .collect();
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn bad_configs_are_refused() {
        let ok = CnnConfig::custom_cnn();
        for bad in [
            CnnConfig {
                kernel: 4,
                ..ok.clone()
            },
            CnnConfig {
                blocks: 9,
                ..ok.clone()
            },
            CnnConfig {
                dropout: 1.0,
                ..ok.clone()
            },
            CnnConfig {
                pool_after: vec![7],
                ..ok.clone()
            },
            CnnConfig {
                growth: FilterGrowth::Multipliers(vec![1, 2]),
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(bad.check(), Err(ModelError::BadConfig { .. })),
                "{bad:?}"
            );
        }
    }
}

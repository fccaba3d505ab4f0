//! The custom CNN family of the seed reports, from one typed config: blocks of Conv → BatchNorm →
//! ReLU (→ spatial dropout) with local pooling, a global pooling or flatten readout, an optional
//! self-attention layer on the last feature map, and a dense head with dropout.

use candle_core::{Module, ModuleT, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::layers::{BatchNorm, Conv, ConvConfig, Noise, batch_norm, conv, linear_forward};
use crate::{ModelError, Pool2d};

/// How the number of filters changes from block to block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FilterGrowth {
    /// ×2 per block (the seeds' 32, 64, 128, ...).
    Doubling,
    Constant,
    /// Many filters first, halving per block.
    FunnelIn,
    /// Few filters first, doubling per block (the same as `Doubling`, named as seed 003 named it).
    FunnelOut,
    /// Explicit multipliers of the base, one per block (seed 004's AlexNet-style ×1 ×2 ×4 ×4 ×2).
    Multipliers(Vec<usize>),
}

/// How the kernel size changes from block to block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelGrowth {
    Constant,
    /// Large kernels first, shrinking by 2 per block down to 3 (e.g. 7, 5, 3, 3).
    FunnelIn,
    /// Small kernels first, growing by 2 per block.
    FunnelOut,
}

/// Local pooling after a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LocalPool {
    Max,
    Avg,
}

/// How the last feature map becomes a vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Readout {
    GlobalAvg,
    GlobalMax,
    Flatten,
}

/// One config for every network of the seed reports. Serialisable (`deny_unknown_fields`); fields
/// left out take the values of [`CnnConfig::custom_cnn`] (the model's `in_channels`, `input_size` and
/// `num_classes` override this config's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default = "CnnConfig::custom_cnn")]
pub struct CnnConfig {
    pub in_channels: usize,
    /// Square input side; needed by the `flatten` readout.
    pub input_size: usize,
    pub blocks: usize,
    pub convs_per_block: usize,
    /// Filters of the first block.
    pub filters: usize,
    pub growth: FilterGrowth,
    pub kernel: usize,
    pub kernel_growth: KernelGrowth,
    /// Stride of each block's first convolution (1 = keep the size).
    pub stride: usize,
    pub dilation: usize,
    /// BatchNorm between each convolution and its ReLU.
    pub batch_norm: bool,
    pub pool: Option<LocalPool>,
    /// Blocks (0-based) followed by a 2×2 pooling; empty = after every block.
    pub pool_after: Vec<usize>,
    /// Spatial (channel) dropout after each block's activation; 0 disables it.
    pub spatial_dropout: f32,
    pub readout: Readout,
    /// A self-attention layer (SAGAN-style) on the last feature map.
    pub attention: bool,
    /// Hidden dense layers of the head, each followed by ReLU and dropout.
    pub dense: Vec<usize>,
    pub dropout: f32,
    pub num_classes: usize,
}

impl CnnConfig {
    /// The 6-block network of seeds 000/001: Conv3×3 → BN → ReLU → MaxPool2 with 32 filters doubling,
    /// flatten, dropout 0.25, one logit. 6,308,609 parameters at 256×256×3.
    pub fn custom_cnn() -> Self {
        Self {
            in_channels: 3,
            input_size: 256,
            blocks: 6,
            convs_per_block: 1,
            filters: 32,
            growth: FilterGrowth::Doubling,
            kernel: 3,
            kernel_growth: KernelGrowth::Constant,
            stride: 1,
            dilation: 1,
            batch_norm: true,
            pool: Some(LocalPool::Max),
            pool_after: vec![],
            spatial_dropout: 0.0,
            readout: Readout::Flatten,
            attention: false,
            dense: vec![],
            dropout: 0.25,
            num_classes: 1,
        }
    }

    /// Seed 004's AlexNet-style network: five 3×3 conv blocks of base × (1, 2, 4, 4, 2) filters
    /// (base 8), BatchNorm, max pooling after blocks 1, 2 and 5, dense 64 → 64 with dropout 0.4,
    /// 128×128 gray input. (The report gives no kernel sizes; 3×3 is assumed.)
    pub fn alexnet_style() -> Self {
        Self {
            in_channels: 1,
            input_size: 128,
            blocks: 5,
            filters: 8,
            growth: FilterGrowth::Multipliers(vec![1, 2, 4, 4, 2]),
            pool_after: vec![0, 1, 4],
            dense: vec![64, 64],
            dropout: 0.4,
            ..Self::custom_cnn()
        }
    }

    /// A VGG-style network as seed 004 used it: four blocks of two 3×3 convolutions, filters
    /// doubling from 16, max pooling after each block, dense 64 → 64 with dropout 0.2, 128×128 gray.
    pub fn vgg_style() -> Self {
        Self {
            in_channels: 1,
            input_size: 128,
            blocks: 4,
            convs_per_block: 2,
            filters: 16,
            dense: vec![64, 64],
            dropout: 0.2,
            ..Self::custom_cnn()
        }
    }

    /// The named presets.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "custom-cnn" => Some(Self::custom_cnn()),
            "alexnet-style" => Some(Self::alexnet_style()),
            "vgg-style" => Some(Self::vgg_style()),
            _ => None,
        }
    }

    pub const PRESETS: [&'static str; 3] = ["custom-cnn", "alexnet-style", "vgg-style"];

    fn bad(reason: String) -> ModelError {
        ModelError::BadConfig { reason }
    }

    /// Checks the settings and that the input survives every stride and pooling.
    pub fn check(&self) -> Result<(), ModelError> {
        if self.in_channels == 0
            || self.blocks == 0
            || self.convs_per_block == 0
            || self.filters == 0
        {
            return Err(Self::bad(
                "channels, blocks, convs per block and filters must be positive".into(),
            ));
        }
        if self.kernel.is_multiple_of(2) || self.kernel == 0 {
            return Err(Self::bad(format!(
                "kernel {} must be odd (same padding)",
                self.kernel
            )));
        }
        if self.stride == 0 || self.dilation == 0 || self.num_classes == 0 {
            return Err(Self::bad(
                "stride, dilation and classes must be positive".into(),
            ));
        }
        for (what, p) in [
            ("spatial dropout", self.spatial_dropout),
            ("dropout", self.dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(Self::bad(format!("{what} {p} is outside [0, 1)")));
            }
        }
        if let FilterGrowth::Multipliers(m) = &self.growth
            && (m.len() != self.blocks || m.contains(&0))
        {
            return Err(Self::bad(format!(
                "{} positive filter multipliers needed for {} blocks, got {m:?}",
                self.blocks, self.blocks
            )));
        }
        if let Some(b) = self.pool_after.iter().find(|&&b| b >= self.blocks) {
            return Err(Self::bad(format!(
                "pool after block {b}, but there are {} blocks",
                self.blocks
            )));
        }
        if self.feature_size()? == 0 {
            return Err(Self::bad(format!(
                "input {0}×{0} shrinks to nothing",
                self.input_size
            )));
        }
        Ok(())
    }

    fn filters_of(&self, block: usize) -> usize {
        match &self.growth {
            FilterGrowth::Doubling | FilterGrowth::FunnelOut => self.filters << block,
            FilterGrowth::Constant => self.filters,
            FilterGrowth::FunnelIn => (self.filters >> block).max(1),
            FilterGrowth::Multipliers(m) => self.filters * m[block],
        }
    }

    fn kernel_of(&self, block: usize) -> usize {
        match self.kernel_growth {
            KernelGrowth::Constant => self.kernel,
            KernelGrowth::FunnelIn => self.kernel.saturating_sub(2 * block).max(3),
            KernelGrowth::FunnelOut => self.kernel + 2 * block,
        }
    }

    fn pools_after(&self, block: usize) -> bool {
        self.pool.is_some() && (self.pool_after.is_empty() || self.pool_after.contains(&block))
    }

    /// Side of the last feature map for the configured input.
    pub fn feature_size(&self) -> Result<usize, ModelError> {
        let mut s = self.input_size;
        for b in 0..self.blocks {
            if self.stride > 1 {
                s = (s - 1) / self.stride + 1;
            }
            if self.pools_after(b) {
                s /= 2;
            }
        }
        Ok(s)
    }

    /// Channels of the last feature map.
    pub fn feature_channels(&self) -> usize {
        self.filters_of(self.blocks - 1)
    }

    /// Length of the vector the head reads.
    pub fn num_features(&self) -> Result<usize, ModelError> {
        Ok(match self.readout {
            Readout::Flatten => self.feature_channels() * self.feature_size()?.pow(2),
            Readout::GlobalAvg | Readout::GlobalMax => self.feature_channels(),
        })
    }

    /// Trainable parameters (BatchNorm running statistics excluded, as PyTorch counts).
    pub fn parameter_count(&self) -> Result<usize, ModelError> {
        self.check()?;
        let mut n = 0;
        let mut c_in = self.in_channels;
        for b in 0..self.blocks {
            let (c, k) = (self.filters_of(b), self.kernel_of(b));
            for _ in 0..self.convs_per_block {
                n += c_in * c * k * k + c;
                if self.batch_norm {
                    n += 2 * c;
                }
                c_in = c;
            }
        }
        if self.attention {
            let c = c_in;
            let q = (c / 8).max(1);
            n += 2 * (c * q + q) + (c * c + c) + 1;
        }
        let mut f = self.num_features()?;
        for &d in &self.dense {
            n += f * d + d;
            f = d;
        }
        Ok(n + f * self.num_classes + self.num_classes)
    }

    /// A stable, human-readable name built from every setting, as the seed reports named runs.
    pub fn run_name(&self) -> String {
        let growth = match &self.growth {
            FilterGrowth::Doubling => "dbl".to_string(),
            FilterGrowth::Constant => "const".to_string(),
            FilterGrowth::FunnelIn => "fin".to_string(),
            FilterGrowth::FunnelOut => "fout".to_string(),
            FilterGrowth::Multipliers(m) => format!(
                "x{}",
                m.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("-")
            ),
        };
        let kernel = match self.kernel_growth {
            KernelGrowth::Constant => format!("k{}", self.kernel),
            KernelGrowth::FunnelIn => format!("k{}fin", self.kernel),
            KernelGrowth::FunnelOut => format!("k{}fout", self.kernel),
        };
        let mut parts = vec![
            format!("cnn{}x{}", self.blocks, self.convs_per_block),
            format!("f{}{growth}", self.filters),
            kernel,
        ];
        if self.stride > 1 {
            parts.push(format!("s{}", self.stride));
        }
        if self.dilation > 1 {
            parts.push(format!("dil{}", self.dilation));
        }
        if self.batch_norm {
            parts.push("bn".into());
        }
        if let Some(p) = self.pool {
            let kind = match p {
                LocalPool::Max => "max",
                LocalPool::Avg => "avg",
            };
            if self.pool_after.is_empty() {
                parts.push(format!("{kind}pool"));
            } else {
                parts.push(format!(
                    "{kind}pool{}",
                    self.pool_after
                        .iter()
                        .map(|b| (b + 1).to_string())
                        .collect::<String>()
                ));
            }
        }
        if self.spatial_dropout > 0.0 {
            parts.push(format!("sdo{}", self.spatial_dropout));
        }
        if self.attention {
            parts.push("attn".into());
        }
        parts.push(
            match self.readout {
                Readout::GlobalAvg => "gap",
                Readout::GlobalMax => "gmp",
                Readout::Flatten => "flat",
            }
            .into(),
        );
        if !self.dense.is_empty() {
            parts.push(format!(
                "fc{}",
                self.dense
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("-")
            ));
        }
        if self.dropout > 0.0 {
            parts.push(format!("do{}", self.dropout));
        }
        parts.push(format!("{}in{}", self.in_channels, self.input_size));
        parts.join("_")
    }
}

/// One convolution with its optional BatchNorm.
#[derive(Debug, Clone)]
struct ConvUnit {
    conv: Conv,
    bn: Option<BatchNorm>,
}

#[derive(Debug, Clone)]
struct Block {
    convs: Vec<ConvUnit>,
    pool: Option<Pool2d>,
}

/// SAGAN-style self-attention: out = x + γ · softmax(qᵀk) v, with γ starting at 0.
#[derive(Debug, Clone)]
struct SelfAttention {
    query: Conv,
    key: Conv,
    value: Conv,
    gamma: Tensor,
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
    config: CnnConfig,
    blocks: Vec<Block>,
    attention: Option<SelfAttention>,
    dense: Vec<Linear>,
    classifier: Linear,
    noise: Noise,
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

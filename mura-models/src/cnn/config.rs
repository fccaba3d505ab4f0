//! The custom CNN family as data: blocks, filters and their growth, kernels, pooling, readout,
//! attention and head, with the presets of the seed reports (docs/recipes.md) and a stable run
//! name per config.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// How the number of filters changes from block to block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FilterGrowth {
    /// ×2 per block (the seed reports' 32, 64, 128, ...).
    Doubling,
    Constant,
    /// Many filters first, halving per block.
    FunnelIn,
    /// Few filters first, doubling per block (the same as `Doubling`, named as the seed-003 report
    /// names it).
    FunnelOut,
    /// Explicit multipliers of the base, one per block (the seed-004 report's AlexNet-style
    /// ×1 ×2 ×4 ×4 ×2).
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

/// One config for every network of the seed reports. Serialisable (`deny_unknown_fields`);
/// fields left out take the values of [`CnnConfig::custom_cnn`] (the model's `in_channels`,
/// `input_size` and `num_classes` override this config's).
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
    /// The 6-block network of the seed-000 and seed-001 reports: Conv3×3 → BN → ReLU → MaxPool2
    /// with 32 filters doubling, flatten, dropout 0.25, one logit. 6,308,609 parameters at
    /// 256×256×3.
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

    /// A VGG-style network as seed 004 uses it: four blocks of two 3×3 convolutions, filters
    /// doubling from 16, max pooling after each block, dense 64 → 64 with dropout 0.2, 128×128
    /// gray.
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

    pub(super) fn filters_of(&self, block: usize) -> usize {
        match &self.growth {
            FilterGrowth::Doubling | FilterGrowth::FunnelOut => self.filters << block,
            FilterGrowth::Constant => self.filters,
            FilterGrowth::FunnelIn => (self.filters >> block).max(1),
            FilterGrowth::Multipliers(m) => self.filters * m[block],
        }
    }

    pub(super) fn kernel_of(&self, block: usize) -> usize {
        match self.kernel_growth {
            KernelGrowth::Constant => self.kernel,
            KernelGrowth::FunnelIn => self.kernel.saturating_sub(2 * block).max(3),
            KernelGrowth::FunnelOut => self.kernel + 2 * block,
        }
    }

    pub(super) fn pools_after(&self, block: usize) -> bool {
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

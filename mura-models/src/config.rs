//! What a model is: its architecture (`Arch`, every name users type), its configuration
//! (`ModelConfig`: classes, channels, input size, head), what of it trains (`Trainable`), and the
//! preprocessing its pretrained weights expect (`PretrainedCfg`).

use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::cnn::CnnConfig;
use crate::head::{GlobalPool, HeadConfig};
use crate::inception::InceptionV3;

/// Every architecture of the zoo, by the name users type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "custom-cnn")]
    CustomCnn,
    #[serde(rename = "alexnet-style")]
    AlexnetStyle,
    #[serde(rename = "vgg-style")]
    VggStyle,
    #[serde(rename = "densenet121")]
    DenseNet121,
    #[serde(rename = "densenet169")]
    DenseNet169,
    #[serde(rename = "densenet201")]
    DenseNet201,
    #[serde(rename = "resnet18")]
    ResNet18,
    #[serde(rename = "resnet34")]
    ResNet34,
    #[serde(rename = "resnet50")]
    ResNet50,
    #[serde(rename = "inception_v3", alias = "inception-v3")]
    InceptionV3,
}

impl Arch {
    pub const ALL: [Arch; 10] = [
        Arch::CustomCnn,
        Arch::AlexnetStyle,
        Arch::VggStyle,
        Arch::DenseNet121,
        Arch::DenseNet169,
        Arch::DenseNet201,
        Arch::ResNet18,
        Arch::ResNet34,
        Arch::ResNet50,
        Arch::InceptionV3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::CustomCnn => "custom-cnn",
            Self::AlexnetStyle => "alexnet-style",
            Self::VggStyle => "vgg-style",
            Self::DenseNet121 => "densenet121",
            Self::DenseNet169 => "densenet169",
            Self::DenseNet201 => "densenet201",
            Self::ResNet18 => "resnet18",
            Self::ResNet34 => "resnet34",
            Self::ResNet50 => "resnet50",
            Self::InceptionV3 => "inception_v3",
        }
    }

    /// Parses a name (`inception-v3` is accepted for `inception_v3`).
    pub fn from_name(name: &str) -> Result<Self, ModelError> {
        let wanted = name.replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|a| a.name().replace('-', "_") == wanted)
            .ok_or_else(|| ModelError::UnknownArch {
                name: name.to_string(),
                known: Self::ALL
                    .iter()
                    .map(|a| a.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The custom CNN preset behind this name, if it is one.
    pub fn cnn_preset(self) -> Option<CnnConfig> {
        match self {
            Self::CustomCnn => Some(CnnConfig::custom_cnn()),
            Self::AlexnetStyle => Some(CnnConfig::alexnet_style()),
            Self::VggStyle => Some(CnnConfig::vgg_style()),
            _ => None,
        }
    }

    /// The input side the architecture is used at (timm's for the zoo, the seed reports' for the
    /// CNNs).
    pub fn default_input_size(self) -> usize {
        match self {
            Self::InceptionV3 => 299,
            a => a.cnn_preset().map_or(224, |c| c.input_size),
        }
    }

    /// The timm weight tag whose layout this architecture has (`densenet121.tv_in1k`).
    pub fn timm_tag(self) -> Option<String> {
        self.cnn_preset()
            .is_none()
            .then(|| format!("{}.tv_in1k", self.name()))
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn one() -> usize {
    1
}

fn three() -> usize {
    3
}

/// Everything that decides a model's shape. Serialisable (`deny_unknown_fields`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub arch: Arch,
    #[serde(default = "one")]
    pub num_classes: usize,
    /// 3 for ImageNet backbones (the gray radiograph replicated), 1 for gray-only networks.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Square input side; the architecture's default when absent.
    #[serde(default)]
    pub input_size: Option<usize>,
    /// Head of a zoo backbone (the custom CNN family has its own, set in `cnn`).
    #[serde(default)]
    pub head: HeadConfig,
    /// Global pooling before the head; the head's default (avg, max for add-gate) when absent.
    #[serde(default)]
    pub global_pool: Option<GlobalPool>,
    /// A full custom CNN config replacing the preset's (custom CNN architectures only).
    #[serde(default)]
    pub cnn: Option<CnnConfig>,
}

impl ModelConfig {
    /// The architecture with one logit, 3 channels, its default size and a linear head.
    pub fn new(arch: Arch) -> Self {
        Self {
            arch,
            num_classes: 1,
            in_channels: arch.cnn_preset().map_or(3, |c| c.in_channels),
            input_size: None,
            head: HeadConfig::default(),
            global_pool: None,
            cnn: None,
        }
    }

    pub fn input_size(&self) -> usize {
        self.input_size
            .unwrap_or_else(|| self.arch.default_input_size())
    }

    /// The custom CNN config with this config's classes, channels and size applied.
    pub fn cnn_config(&self) -> Option<CnnConfig> {
        let base = self.cnn.clone().or_else(|| self.arch.cnn_preset())?;
        Some(CnnConfig {
            num_classes: self.num_classes,
            in_channels: self.in_channels,
            input_size: self.input_size.unwrap_or(base.input_size),
            ..base
        })
    }

    pub fn check(&self) -> Result<(), ModelError> {
        let bad = |reason: String| Err(ModelError::BadConfig { reason });
        if self.num_classes == 0 || self.in_channels == 0 {
            return bad("classes and input channels must be positive".into());
        }
        match self.cnn_config() {
            Some(c) => {
                if self.head != HeadConfig::default() || self.global_pool.is_some() {
                    return bad(format!(
                        "{} has its own head: set `cnn.dense`, `cnn.dropout` and `cnn.readout` instead of `head`",
                        self.arch
                    ));
                }
                c.check()
            }
            None => {
                if self.cnn.is_some() {
                    return bad(format!(
                        "`cnn` settings apply to the custom CNN family, not {}",
                        self.arch
                    ));
                }
                let min = self.min_input_size();
                if self.input_size() < min {
                    return bad(format!(
                        "{} needs inputs of at least {min}×{min}",
                        self.arch
                    ));
                }
                self.head.check()
            }
        }
    }

    pub(crate) fn min_input_size(&self) -> usize {
        match self.arch {
            Arch::InceptionV3 => InceptionV3::MIN_INPUT,
            _ => 32,
        }
    }

    /// A stable, human-readable name from the settings (`densenet169_lin_3in224`).
    pub fn run_name(&self) -> String {
        if let Some(c) = self.cnn_config() {
            return c.run_name();
        }
        let mut name = format!("{}_{}", self.arch, self.head.tag());
        if let Some(p) = self.global_pool
            && p != self.head.default_pool()
        {
            name.push_str(match p {
                GlobalPool::Avg => "_gap",
                GlobalPool::Max => "_gmp",
            });
        }
        if self.num_classes != 1 {
            name.push_str(&format!("_c{}", self.num_classes));
        }
        name.push_str(&format!("_{}in{}", self.in_channels, self.input_size()));
        name
    }
}

/// Which part of a model trains.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trainable {
    #[default]
    All,
    /// The backbone is frozen (eval-mode BatchNorm, no gradients); only the head trains.
    Head,
    /// Stages before the named one are frozen (`features.denseblock4`, `layer4`, `Mixed_7a`).
    From(String),
}

/// Interpolation of a pretrained config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Interpolation {
    Bilinear,
    Bicubic,
}

/// How inputs must look for a model (timm's `pretrained_cfg`): size, normalisation, resize.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainedCfg {
    /// timm's weight tag (`densenet121.tv_in1k`); none for the custom CNNs.
    pub tag: Option<String>,
    pub hf_hub_id: Option<String>,
    /// Channels, height, width.
    pub input_size: [usize; 3],
    pub interpolation: Interpolation,
    pub crop_pct: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub first_conv: String,
    pub classifier: String,
}

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];

pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

pub const INCEPTION_MEAN: [f32; 3] = [0.5, 0.5, 0.5];

pub const INCEPTION_STD: [f32; 3] = [0.5, 0.5, 0.5];

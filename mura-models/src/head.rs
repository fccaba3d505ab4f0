//! Classification heads on a backbone's feature map: global pooling, then a linear layer (timm's
//! names, so a 1000-class checkpoint loads), an MLP with dropout, or the seed-002 report's
//! add-gate head (docs/recipes.md).

use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::layers::{Noise, global_pool, linear_forward};

/// How the feature map becomes a vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GlobalPool {
    Avg,
    Max,
}

/// The head of a zoo model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum HeadConfig {
    /// Dropout, then one dense layer to the logits (named as timm: `classifier` or `fc`).
    Linear {
        #[serde(default)]
        dropout: f32,
    },
    /// Hidden dense layers with ReLU and dropout (`head.fc.{i}`), then `head.classifier`.
    Mlp { hidden: Vec<usize>, dropout: f32 },
    /// Seed 002's head: `head.fc1` → ReLU → `head.fc2` → ReLU, then an element-wise Add of the two
    /// outputs feeds `head.classifier`. Global max pooling unless told otherwise.
    AddGate { hidden: usize, dropout: f32 },
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self::Linear { dropout: 0.0 }
    }
}

impl HeadConfig {
    /// Seed 000's MLP: 512 → 512, dropout 0.25.
    pub fn mlp_seed000() -> Self {
        Self::Mlp {
            hidden: vec![512, 512],
            dropout: 0.25,
        }
    }

    /// Seed 003's MLP: 1024 → 512, dropout 0.5.
    pub fn mlp_seed003() -> Self {
        Self::Mlp {
            hidden: vec![1024, 512],
            dropout: 0.5,
        }
    }

    /// Seed 002's add-gate head (the report gives no width; 512 is assumed).
    pub fn add_gate_seed002() -> Self {
        Self::AddGate {
            hidden: 512,
            dropout: 0.0,
        }
    }

    /// The global pooling this head uses by default: max for the add-gate head (seed 002), else
    /// average (timm).
    pub fn default_pool(&self) -> GlobalPool {
        match self {
            Self::AddGate { .. } => GlobalPool::Max,
            _ => GlobalPool::Avg,
        }
    }

    fn dropout(&self) -> f32 {
        match self {
            Self::Linear { dropout }
            | Self::Mlp { dropout, .. }
            | Self::AddGate { dropout, .. } => *dropout,
        }
    }

    pub fn check(&self) -> Result<(), ModelError> {
        let p = self.dropout();
        if !(0.0..1.0).contains(&p) {
            return Err(ModelError::BadConfig {
                reason: format!("head dropout {p} is outside [0, 1)"),
            });
        }
        let zero = match self {
            Self::Mlp { hidden, .. } => hidden.contains(&0),
            Self::AddGate { hidden, .. } => *hidden == 0,
            Self::Linear { .. } => false,
        };
        if zero {
            return Err(ModelError::BadConfig {
                reason: "head layers need a positive width".into(),
            });
        }
        Ok(())
    }

    /// Parameters of this head on `features` inputs.
    pub fn parameter_count(&self, features: usize, classes: usize) -> usize {
        let dense = |a: usize, b: usize| a * b + b;
        match self {
            Self::Linear { .. } => dense(features, classes),
            Self::Mlp { hidden, .. } => {
                let mut n = 0;
                let mut f = features;
                for &h in hidden {
                    n += dense(f, h);
                    f = h;
                }
                n + dense(f, classes)
            }
            Self::AddGate { hidden, .. } => {
                dense(features, *hidden) + dense(*hidden, *hidden) + dense(*hidden, classes)
            }
        }
    }

    /// A short tag for run names (`lin`, `mlp512-512`, `addgate512`).
    pub fn tag(&self) -> String {
        let d = self.dropout();
        let drop = if d > 0.0 {
            format!("_do{d}")
        } else {
            String::new()
        };
        match self {
            Self::Linear { .. } => format!("lin{drop}"),
            Self::Mlp { hidden, .. } => format!(
                "mlp{}{drop}",
                hidden
                    .iter()
                    .map(|h| h.to_string())
                    .collect::<Vec<_>>()
                    .join("-")
            ),
            Self::AddGate { hidden, .. } => format!("addgate{hidden}{drop}"),
        }
    }
}

/// A built head.
#[derive(Debug, Clone)]
pub struct Head {
    pub(crate) config: HeadConfig,
    pub(crate) pool: GlobalPool,
    pub(crate) hidden: Vec<Linear>,
    pub(crate) classifier: Linear,
    pub(crate) classifier_name: String,
}

impl Head {
    /// `classifier_name` is where a linear head's layer lives (`classifier` for DenseNet, `fc` for
    /// ResNet and Inception-v3), so that timm checkpoints load into it.
    pub fn new(
        config: &HeadConfig,
        pool: GlobalPool,
        features: usize,
        classes: usize,
        classifier_name: &str,
        vb: VarBuilder<'_>,
    ) -> Result<Self, ModelError> {
        config.check()?;
        let (hidden, classifier, classifier_name) = match config {
            HeadConfig::Linear { .. } => (
                vec![],
                candle_nn::linear(features, classes, vb.pp(classifier_name))?,
                classifier_name.to_string(),
            ),
            HeadConfig::Mlp { hidden, .. } => {
                let mut layers = Vec::with_capacity(hidden.len());
                let mut f = features;
                for (i, &h) in hidden.iter().enumerate() {
                    layers.push(candle_nn::linear(f, h, vb.pp(format!("head.fc.{i}")))?);
                    f = h;
                }
                (
                    layers,
                    candle_nn::linear(f, classes, vb.pp("head.classifier"))?,
                    "head.classifier".into(),
                )
            }
            HeadConfig::AddGate { hidden, .. } => (
                vec![
                    candle_nn::linear(features, *hidden, vb.pp("head.fc1"))?,
                    candle_nn::linear(*hidden, *hidden, vb.pp("head.fc2"))?,
                ],
                candle_nn::linear(*hidden, classes, vb.pp("head.classifier"))?,
                "head.classifier".into(),
            ),
        };
        Ok(Self {
            config: config.clone(),
            pool,
            hidden,
            classifier,
            classifier_name,
        })
    }

    pub fn config(&self) -> &HeadConfig {
        &self.config
    }

    /// Name of the final dense layer (`classifier`, `fc` or `head.classifier`).
    pub fn classifier_name(&self) -> &str {
        &self.classifier_name
    }

    /// Tensor-name prefixes of this head.
    pub fn prefixes(&self) -> Vec<String> {
        match self.config {
            HeadConfig::Linear { .. } => vec![format!("{}.", self.classifier_name)],
            _ => vec!["head.".into()],
        }
    }

    /// Pooling, dense layers and classifier: N×C×h×w features to N×classes logits.
    pub fn forward(
        &self,
        features: &Tensor,
        noise: &Noise,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let x = global_pool(features, self.pool == GlobalPool::Max)?;
        let p = self.config.dropout();
        let x = match &self.config {
            HeadConfig::Linear { .. } => noise.dropout(&x, p, train)?,
            HeadConfig::Mlp { .. } => {
                let mut x = x;
                for l in &self.hidden {
                    x = noise.dropout(&linear_forward(l, &x)?.relu()?, p, train)?;
                }
                x
            }
            HeadConfig::AddGate { .. } => {
                let a = linear_forward(&self.hidden[0], &x)?.relu()?;
                let a = noise.dropout(&a, p, train)?;
                let b = linear_forward(&self.hidden[1], &a)?.relu()?;
                noise.dropout(&(a + b)?, p, train)?
            }
        };
        linear_forward(&self.classifier, &x)
    }
}

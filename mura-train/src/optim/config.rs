//! The optimiser of a run as data: Adam (L2 weight decay), AdamW (decoupled weight decay) or SGD
//! (momentum, Nesterov), with PyTorch's defaults, checked before a run starts.

use serde::{Deserialize, Serialize};

use crate::TrainError;

pub(crate) fn beta1() -> f64 {
    0.9
}

pub(crate) fn beta2() -> f64 {
    0.999
}

pub(crate) fn eps() -> f64 {
    1e-8
}

fn adamw_decay() -> f64 {
    0.01
}

/// Which optimiser, with PyTorch's defaults where a field is left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OptimizerConfig {
    Adam {
        lr: f64,
        #[serde(default = "beta1")]
        beta1: f64,
        #[serde(default = "beta2")]
        beta2: f64,
        #[serde(default = "eps")]
        eps: f64,
        /// L2 penalty added to the gradient (PyTorch's `Adam(weight_decay=)`).
        #[serde(default)]
        weight_decay: f64,
    },
    #[serde(rename = "adamw")]
    AdamW {
        lr: f64,
        #[serde(default = "beta1")]
        beta1: f64,
        #[serde(default = "beta2")]
        beta2: f64,
        #[serde(default = "eps")]
        eps: f64,
        /// Decoupled decay: p ← p·(1 − lr·wd) before the Adam step.
        #[serde(default = "adamw_decay")]
        weight_decay: f64,
    },
    Sgd {
        lr: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        nesterov: bool,
        #[serde(default)]
        weight_decay: f64,
    },
}

impl OptimizerConfig {
    /// Adam with PyTorch's defaults at learning rate `lr`.
    pub fn adam(lr: f64) -> Self {
        Self::Adam {
            lr,
            beta1: beta1(),
            beta2: beta2(),
            eps: eps(),
            weight_decay: 0.0,
        }
    }

    pub fn lr(&self) -> f64 {
        match self {
            Self::Adam { lr, .. } | Self::AdamW { lr, .. } | Self::Sgd { lr, .. } => *lr,
        }
    }

    /// Sets the base learning rate, whatever the optimiser.
    pub fn set_lr(&mut self, new: f64) {
        match self {
            Self::Adam { lr, .. } | Self::AdamW { lr, .. } | Self::Sgd { lr, .. } => *lr = new,
        }
    }

    pub fn check(&self) -> Result<(), TrainError> {
        let bad = |what: &'static str, expected: &'static str, value: f64| {
            Err(TrainError::BadParameter {
                what,
                expected,
                value,
            })
        };
        let lr = self.lr();
        if !(lr.is_finite() && lr > 0.0) {
            return bad("learning rate", "positive", lr);
        }
        match *self {
            Self::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            }
            | Self::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                for (what, b) in [("beta1", beta1), ("beta2", beta2)] {
                    if !(0.0..1.0).contains(&b) {
                        return bad(what, "in [0, 1)", b);
                    }
                }
                if eps.is_nan() || eps <= 0.0 {
                    return bad("eps", "positive", eps);
                }
                if weight_decay.is_nan() || weight_decay < 0.0 {
                    return bad("weight decay", "non-negative", weight_decay);
                }
            }
            Self::Sgd {
                momentum,
                weight_decay,
                ..
            } => {
                if !(0.0..1.0).contains(&momentum) {
                    return bad("momentum", "in [0, 1)", momentum);
                }
                if weight_decay.is_nan() || weight_decay < 0.0 {
                    return bad("weight decay", "non-negative", weight_decay);
                }
            }
        }
        Ok(())
    }
}

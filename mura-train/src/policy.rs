//! Epoch-end policies that decide and do not act: early stopping answers "stop?", plateau decay
//! answers "which learning rate next?". Their state is plain data, saved with a checkpoint so a
//! resumed run decides exactly as an uninterrupted one. Semantics follow Keras' `EarlyStopping` and
//! `ReduceLROnPlateau`, which the seed reports use.

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Whether smaller or larger values of the monitored quantity are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Min,
    Max,
}

/// The validation quantity a policy watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    ValLoss,
    ValAuc,
    ValKappa,
}

impl Monitor {
    pub fn mode(self) -> Mode {
        match self {
            Monitor::ValLoss => Mode::Min,
            Monitor::ValAuc | Monitor::ValKappa => Mode::Max,
        }
    }
}

/// Is `value` better than `best` by more than `min_delta`? NaN is never better.
pub(crate) fn improves(mode: Mode, value: f64, best: Option<f64>, min_delta: f64) -> bool {
    if value.is_nan() {
        return false;
    }
    match (best, mode) {
        (None, _) => true,
        (Some(b), Mode::Min) => value < b - min_delta,
        (Some(b), Mode::Max) => value > b + min_delta,
    }
}

fn non_negative(what: &'static str, value: f64) -> Result<(), TrainError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(TrainError::BadParameter {
            what,
            expected: "finite and non-negative",
            value,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EarlyStoppingConfig {
    pub monitor: Monitor,
    /// Epochs without improvement before stopping (10 in the seed reports).
    pub patience: u32,
    /// An improvement must exceed this.
    pub min_delta: f64,
}

/// What early stopping decided after an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum StopDecision {
    /// Go on; `improved` says whether this epoch is the new best (save it as best).
    Continue { improved: bool },
    /// Stop; restore the weights of `best_epoch`.
    Stop { best_epoch: u32 },
}

/// Keras' `EarlyStopping`, as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    pub config: EarlyStoppingConfig,
    pub best: Option<f64>,
    pub best_epoch: u32,
    pub wait: u32,
}

impl EarlyStopping {
    pub fn new(config: EarlyStoppingConfig) -> Result<Self, TrainError> {
        non_negative("early-stopping min_delta", config.min_delta)?;
        Ok(Self {
            config,
            best: None,
            best_epoch: 0,
            wait: 0,
        })
    }

    /// Records the monitored value of `epoch` and decides.
    pub fn step(&mut self, epoch: u32, value: f64) -> StopDecision {
        if improves(
            self.config.monitor.mode(),
            value,
            self.best,
            self.config.min_delta,
        ) {
            self.best = Some(value);
            self.best_epoch = epoch;
            self.wait = 0;
            return StopDecision::Continue { improved: true };
        }
        self.wait += 1;
        if self.wait >= self.config.patience {
            StopDecision::Stop {
                best_epoch: self.best_epoch,
            }
        } else {
            StopDecision::Continue { improved: false }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlateauConfig {
    pub monitor: Monitor,
    /// New lr = lr × factor (0.2 in the seed reports, 0.1 in the MURA paper).
    pub factor: f64,
    pub patience: u32,
    /// Epochs to wait after a reduction before counting again.
    pub cooldown: u32,
    pub min_lr: f64,
    pub min_delta: f64,
}

/// Keras' `ReduceLROnPlateau`, as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plateau {
    pub config: PlateauConfig,
    pub best: Option<f64>,
    pub wait: u32,
    pub cooldown_left: u32,
}

impl Plateau {
    pub fn new(config: PlateauConfig) -> Result<Self, TrainError> {
        if !(config.factor > 0.0 && config.factor < 1.0) {
            return Err(TrainError::BadParameter {
                what: "plateau factor",
                expected: "in (0, 1)",
                value: config.factor,
            });
        }
        non_negative("plateau min_lr", config.min_lr)?;
        non_negative("plateau min_delta", config.min_delta)?;
        Ok(Self {
            config,
            best: None,
            wait: 0,
            cooldown_left: 0,
        })
    }

    /// Records the monitored value and returns the learning rate for the next epoch.
    pub fn step(&mut self, value: f64, lr: f64) -> f64 {
        if self.cooldown_left > 0 {
            self.cooldown_left -= 1;
            self.wait = 0;
        }
        if improves(
            self.config.monitor.mode(),
            value,
            self.best,
            self.config.min_delta,
        ) {
            self.best = Some(value);
            self.wait = 0;
            return lr;
        }
        if self.cooldown_left > 0 {
            return lr;
        }
        self.wait += 1;
        if self.wait >= self.config.patience && lr > self.config.min_lr {
            self.cooldown_left = self.config.cooldown;
            self.wait = 0;
            return (lr * self.config.factor).max(self.config.min_lr);
        }
        lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stopper(monitor: Monitor, patience: u32, min_delta: f64) -> EarlyStopping {
        EarlyStopping::new(EarlyStoppingConfig {
            monitor,
            patience,
            min_delta,
        })
        .unwrap()
    }

    #[test]
    fn early_stopping_scenarios() {
        use StopDecision::*;
        // (monitor, patience, min_delta, values, expected decisions)
        type Scenario = (Monitor, u32, f64, Vec<f64>, Vec<StopDecision>);
        let table: Vec<Scenario> = vec![
            (
                Monitor::ValLoss,
                2,
                0.0,
                vec![1.0, 0.9, 0.95, 0.92],
                vec![
                    Continue { improved: true },
                    Continue { improved: true },
                    Continue { improved: false },
                    Stop { best_epoch: 1 },
                ],
            ),
            (
                // min_delta: 0.95 → 0.94 is not enough.
                Monitor::ValLoss,
                1,
                0.02,
                vec![0.95, 0.94],
                vec![Continue { improved: true }, Stop { best_epoch: 0 }],
            ),
            (
                Monitor::ValAuc,
                2,
                0.0,
                vec![0.7, 0.8, 0.79, 0.81, f64::NAN, 0.6],
                vec![
                    Continue { improved: true },
                    Continue { improved: true },
                    Continue { improved: false },
                    Continue { improved: true },
                    Continue { improved: false },
                    Stop { best_epoch: 3 },
                ],
            ),
        ];
        for (monitor, patience, min_delta, values, expected) in table {
            let mut s = stopper(monitor, patience, min_delta);
            let got: Vec<StopDecision> = values
                .iter()
                .enumerate()
                .map(|(e, &v)| s.step(e as u32, v))
                .collect();
            assert_eq!(got, expected, "{monitor:?} {values:?}");
        }
    }

    #[test]
    fn plateau_matches_keras() {
        let mut p = Plateau::new(PlateauConfig {
            monitor: Monitor::ValLoss,
            factor: 0.2,
            patience: 2,
            cooldown: 1,
            min_lr: 1e-5,
            min_delta: 0.0,
        })
        .unwrap();
        let mut lr = 1e-3;
        let mut lrs = Vec::new();
        for v in [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5] {
            lr = p.step(v, lr);
            lrs.push(lr);
        }
        // Keras with patience 2, cooldown 1: the cooldown epoch resets the wait but still counts
        // itself, so reductions come after epochs 2, 4 and 6; the last one is clamped at min_lr.
        let expected = [1e-3, 1e-3, 2e-4, 2e-4, 4e-5, 4e-5, 1e-5, 1e-5, 1e-5];
        for (got, want) in lrs.iter().zip(expected) {
            assert!((got - want).abs() < 1e-12, "{lrs:?}");
        }
        // Never below min_lr.
        let mut lr = 2e-5;
        for _ in 0..10 {
            lr = p.step(2.0, lr);
        }
        assert!((lr - 1e-5).abs() < 1e-15);
    }

    #[test]
    fn bad_configs_are_refused() {
        let ok = PlateauConfig {
            monitor: Monitor::ValLoss,
            factor: 0.2,
            patience: 1,
            cooldown: 0,
            min_lr: 0.0,
            min_delta: 0.0,
        };
        for factor in [0.0, 1.0, f64::NAN, 2.0] {
            assert!(Plateau::new(PlateauConfig { factor, ..ok }).is_err());
        }
        assert!(Plateau::new(PlateauConfig { min_lr: -1.0, ..ok }).is_err());
        assert!(
            EarlyStopping::new(EarlyStoppingConfig {
                monitor: Monitor::ValKappa,
                patience: 1,
                min_delta: f64::INFINITY
            })
            .is_err()
        );
    }
}

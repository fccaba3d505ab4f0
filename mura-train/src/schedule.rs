//! Per-step learning-rate schedules, separate from the epoch-end plateau policy: linear warm-up,
//! then constant or cosine decay to a floor over the run's steps.

use serde::{Deserialize, Serialize};

use crate::TrainError;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Schedule {
    /// Linear warm-up from 0 over `warmup_steps`, then the base rate.
    Warmup { warmup_steps: u64 },
    /// Linear warm-up, then half a cosine from the base rate down to `min_lr` at the last step.
    Cosine {
        #[serde(default)]
        warmup_steps: u64,
        #[serde(default)]
        min_lr: f64,
    },
}

impl Schedule {
    pub fn check(&self) -> Result<(), TrainError> {
        if let Schedule::Cosine { min_lr, .. } = self
            && !(min_lr.is_finite() && *min_lr >= 0.0)
        {
            return Err(TrainError::BadParameter {
                what: "cosine schedule min_lr",
                expected: "finite and non-negative",
                value: *min_lr,
            });
        }
        Ok(())
    }

    /// The learning rate of `step` (0-based) of `total` steps, for base rate `base`.
    pub fn lr(&self, base: f64, step: u64, total: u64) -> f64 {
        let warm = |w: u64| {
            if w > 0 && step < w {
                Some(base * (step + 1) as f64 / w as f64)
            } else {
                None
            }
        };
        match *self {
            Schedule::Warmup { warmup_steps } => warm(warmup_steps).unwrap_or(base),
            Schedule::Cosine {
                warmup_steps,
                min_lr,
            } => warm(warmup_steps).unwrap_or_else(|| {
                let span = total.saturating_sub(warmup_steps).max(1) as f64;
                let t = (step.saturating_sub(warmup_steps) as f64 / span).min(1.0);
                min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_ramps_linearly_then_holds() {
        let s = Schedule::Warmup { warmup_steps: 4 };
        let lrs: Vec<f64> = (0..6).map(|i| s.lr(1.0, i, 100)).collect();
        assert_eq!(lrs, vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn cosine_goes_from_base_to_floor() {
        let s = Schedule::Cosine {
            warmup_steps: 0,
            min_lr: 0.1,
        };
        assert!((s.lr(1.0, 0, 11) - 1.0).abs() < 1e-12);
        // Half way: the mean of base and floor.
        assert!((s.lr(1.0, 5, 10) - 0.55).abs() < 1e-12);
        assert!((s.lr(1.0, 10, 10) - 0.1).abs() < 1e-12);
        assert!((s.lr(1.0, 50, 10) - 0.1).abs() < 1e-12);
        let bad = Schedule::Cosine {
            warmup_steps: 0,
            min_lr: f64::NAN,
        };
        assert!(bad.check().is_err());
    }
}

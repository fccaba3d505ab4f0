//! Seeded percentile bootstrap confidence intervals.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::{MetricsError, check_pairs};

/// How to resample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootstrapConfig {
    /// Number of resamples (the MURA paper and most reports use 1,000 to 10,000).
    pub resamples: usize,
    /// Two-sided coverage, e.g. 0.95.
    pub level: f64,
    pub seed: u64,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        Self {
            resamples: 1000,
            level: 0.95,
            seed: 0,
        }
    }
}

/// A point estimate with its percentile interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
    pub level: f64,
    /// Resamples on which the metric was defined (one-class resamples have no AUC, say).
    pub resamples_used: usize,
}

/// Percentile bootstrap of `metric` over the units given (pass study-level labels and probabilities
/// to resample studies, as the MURA paper does).
///
/// Resamples on which the metric is undefined are left out and counted. The result is `Ok(None)` when
/// the metric is undefined on the full sample or on more than half of the resamples. The same inputs
/// and seed always give the same interval, on every platform.
pub fn bootstrap_ci<F>(
    labels: &[bool],
    scores: &[f64],
    config: BootstrapConfig,
    metric: F,
) -> Result<Option<Interval>, MetricsError>
where
    F: Fn(&[bool], &[f64]) -> Result<Option<f64>, MetricsError>,
{
    check_pairs(labels, scores)?;
    if config.resamples == 0 {
        return Err(MetricsError::BadParameter {
            what: "bootstrap resamples",
            expected: "at least 1",
            value: 0.0,
        });
    }
    if !(config.level > 0.0 && config.level < 1.0) {
        return Err(MetricsError::BadParameter {
            what: "bootstrap level",
            expected: "in (0, 1)",
            value: config.level,
        });
    }
    let Some(estimate) = metric(labels, scores)? else {
        return Ok(None);
    };
    let n = labels.len();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut y = vec![false; n];
    let mut s = vec![0.0; n];
    let mut values = Vec::with_capacity(config.resamples);
    for _ in 0..config.resamples {
        for k in 0..n {
            let i = bounded(&mut rng, n);
            y[k] = labels[i];
            s[k] = scores[i];
        }
        if let Some(v) = metric(&y, &s)? {
            values.push(v);
        }
    }
    if values.len() * 2 < config.resamples {
        return Ok(None);
    }
    values.sort_by(f64::total_cmp);
    let tail = (1.0 - config.level) / 2.0;
    Ok(Some(Interval {
        estimate,
        lower: percentile(&values, tail),
        upper: percentile(&values, 1.0 - tail),
        level: config.level,
        resamples_used: values.len(),
    }))
}

/// A uniform index in `0..n` from 64 random bits (Lemire's multiply-shift; the bias is below 2^-40
/// for any realistic n), identical on 32- and 64-bit platforms.
fn bounded(rng: &mut ChaCha8Rng, n: usize) -> usize {
    ((u128::from(rng.next_u64()) * n as u128) >> 64) as usize
}

/// Linear interpolation between closest ranks (numpy's default `percentile`), `q` in [0, 1].
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roc_auc;

    fn sample() -> (Vec<bool>, Vec<f64>) {
        let labels: Vec<bool> = (0..200).map(|i| i % 3 == 0).collect();
        let scores: Vec<f64> = (0..200)
            .map(|i| if i % 3 == 0 { 0.6 } else { 0.4 } + ((i * 37) % 11) as f64 / 20.0 - 0.25)
            .collect();
        (labels, scores)
    }

    #[test]
    fn interval_brackets_estimate_and_is_reproducible() {
        let (y, s) = sample();
        let cfg = BootstrapConfig {
            resamples: 300,
            level: 0.95,
            seed: 7,
        };
        let a = bootstrap_ci(&y, &s, cfg, roc_auc).unwrap().unwrap();
        let b = bootstrap_ci(&y, &s, cfg, roc_auc).unwrap().unwrap();
        assert_eq!(a, b);
        assert!(a.lower <= a.estimate && a.estimate <= a.upper);
        assert!(a.upper - a.lower > 0.0);
        let other = bootstrap_ci(&y, &s, BootstrapConfig { seed: 8, ..cfg }, roc_auc)
            .unwrap()
            .unwrap();
        assert_ne!(a, other, "the seed must matter");
    }

    #[test]
    fn undefined_metric_gives_none() {
        let r = bootstrap_ci(
            &[true, true],
            &[0.1, 0.2],
            BootstrapConfig::default(),
            roc_auc,
        );
        assert_eq!(r, Ok(None));
    }

    #[test]
    fn percentile_matches_numpy() {
        // numpy.percentile([1, 2, 3, 4], [2.5, 97.5]) == [1.075, 3.925]
        let v = [1.0, 2.0, 3.0, 4.0];
        assert!((percentile(&v, 0.025) - 1.075).abs() < 1e-12);
        assert!((percentile(&v, 0.975) - 3.925).abs() < 1e-12);
    }
}

//! Seeded percentile bootstrap confidence intervals.

use std::collections::BTreeMap;

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
    check_config(config)?;
    let Some(estimate) = metric(labels, scores)? else {
        return Ok(None);
    };
    let n = labels.len();
    let values = resampled(
        config,
        |rng, y, s| {
            for _ in 0..n {
                let i = bounded(rng, n);
                y.push(labels[i]);
                s.push(scores[i]);
            }
        },
        |y, s| metric(y, s),
    )?;
    Ok(interval(estimate, values, config))
}

/// [`bootstrap_ci`] resampling whole clusters: each resample draws as many clusters as there
/// are, with replacement, and keeps every sample of each (`clusters[i]` is sample `i`'s key: its
/// study, or its patient). Views of one study, or studies of one patient, are correlated; an
/// interval that resamples them one by one is too narrow. With one sample per cluster, in key
/// order, this is [`bootstrap_ci`] to the bit.
pub fn cluster_bootstrap_ci<K, F>(
    labels: &[bool],
    scores: &[f64],
    clusters: &[K],
    config: BootstrapConfig,
    metric: F,
) -> Result<Option<Interval>, MetricsError>
where
    K: Ord,
    F: Fn(&[bool], &[f64]) -> Result<Option<f64>, MetricsError>,
{
    check_pairs(labels, scores)?;
    check_clusters(labels, clusters)?;
    check_config(config)?;
    let Some(estimate) = metric(labels, scores)? else {
        return Ok(None);
    };
    let groups = groups(clusters);
    let values = resampled(
        config,
        |rng, y, s| {
            for _ in 0..groups.len() {
                for &i in &groups[bounded(rng, groups.len())] {
                    y.push(labels[i]);
                    s.push(scores[i]);
                }
            }
        },
        |y, s| metric(y, s),
    )?;
    Ok(interval(estimate, values, config))
}

/// A difference of a metric between two scorings of the same samples, with its interval and
/// two-sided bootstrap p-value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairedInterval {
    /// The metric of each scoring on the full sample.
    pub a: f64,
    pub b: f64,
    /// `a − b`, with its percentile interval.
    pub difference: f64,
    pub lower: f64,
    pub upper: f64,
    pub level: f64,
    /// Twice the smaller share of resampled differences on either side of 0 (at most 1).
    pub p_value: f64,
    pub resamples_used: usize,
}

/// Paired percentile bootstrap of `metric(a) − metric(b)`: every resample draws the same samples
/// (or, with `clusters`, the same clusters) for both scorings, so what they share cancels.
/// `Ok(None)` when the metric is undefined on the full sample or on more than half the resamples.
pub fn paired_bootstrap<K, F>(
    labels: &[bool],
    (a, b): (&[f64], &[f64]),
    clusters: Option<&[K]>,
    config: BootstrapConfig,
    metric: F,
) -> Result<Option<PairedInterval>, MetricsError>
where
    K: Ord,
    F: Fn(&[bool], &[f64]) -> Result<Option<f64>, MetricsError>,
{
    check_pairs(labels, a)?;
    check_pairs(labels, b)?;
    check_config(config)?;
    let groups: Vec<Vec<usize>> = match clusters {
        Some(c) => {
            check_clusters(labels, c)?;
            groups(c)
        }
        None => (0..labels.len()).map(|i| vec![i]).collect(),
    };
    let (Some(ma), Some(mb)) = (metric(labels, a)?, metric(labels, b)?) else {
        return Ok(None);
    };
    // Each resample's scores are a's, then b's, of the same draws.
    let values = resampled(
        config,
        |rng, y, s| {
            let mut picks = Vec::new();
            for _ in 0..groups.len() {
                picks.extend_from_slice(&groups[bounded(rng, groups.len())]);
            }
            y.extend(picks.iter().map(|&i| labels[i]));
            s.extend(picks.iter().map(|&i| a[i]));
            s.extend(picks.iter().map(|&i| b[i]));
        },
        |y, s| {
            let (sa, sb) = s.split_at(y.len());
            Ok(match (metric(y, sa)?, metric(y, sb)?) {
                (Some(x), Some(z)) => Some(x - z),
                _ => None,
            })
        },
    )?;
    let Some(i) = interval(ma - mb, values.clone(), config) else {
        return Ok(None);
    };
    let below = values.iter().filter(|&&d| d <= 0.0).count();
    let above = values.iter().filter(|&&d| d >= 0.0).count();
    let p_value = (2.0 * below.min(above) as f64 / values.len() as f64).min(1.0);
    Ok(Some(PairedInterval {
        a: ma,
        b: mb,
        difference: i.estimate,
        lower: i.lower,
        upper: i.upper,
        level: i.level,
        p_value,
        resamples_used: i.resamples_used,
    }))
}

fn check_config(config: BootstrapConfig) -> Result<(), MetricsError> {
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
    Ok(())
}

fn check_clusters<K>(labels: &[bool], clusters: &[K]) -> Result<(), MetricsError> {
    if clusters.len() != labels.len() {
        return Err(MetricsError::LengthMismatch {
            labels: labels.len(),
            scores: clusters.len(),
        });
    }
    Ok(())
}

/// The samples of each cluster, clusters in key order, samples in index order.
fn groups<K: Ord>(clusters: &[K]) -> Vec<Vec<usize>> {
    let mut by_key: BTreeMap<&K, Vec<usize>> = BTreeMap::new();
    for (i, k) in clusters.iter().enumerate() {
        by_key.entry(k).or_default().push(i);
    }
    by_key.into_values().collect()
}

/// The metric on each of `config.resamples` resamples that `draw` makes (labels and scores
/// appended to the cleared buffers), left out where it is undefined.
fn resampled(
    config: BootstrapConfig,
    mut draw: impl FnMut(&mut ChaCha8Rng, &mut Vec<bool>, &mut Vec<f64>),
    metric: impl Fn(&[bool], &[f64]) -> Result<Option<f64>, MetricsError>,
) -> Result<Vec<f64>, MetricsError> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let (mut y, mut s) = (Vec::new(), Vec::new());
    let mut values = Vec::with_capacity(config.resamples);
    for _ in 0..config.resamples {
        y.clear();
        s.clear();
        draw(&mut rng, &mut y, &mut s);
        if let Some(v) = metric(&y, &s)? {
            values.push(v);
        }
    }
    Ok(values)
}

/// The percentile interval of `values` around `estimate`; `None` when more than half the
/// resamples left the metric undefined.
fn interval(estimate: f64, mut values: Vec<f64>, config: BootstrapConfig) -> Option<Interval> {
    if values.len() * 2 < config.resamples {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let tail = (1.0 - config.level) / 2.0;
    Some(Interval {
        estimate,
        lower: percentile(&values, tail),
        upper: percentile(&values, 1.0 - tail),
        level: config.level,
        resamples_used: values.len(),
    })
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

    /// Views of one study share most of their score: resampling studies gives a wider interval
    /// than resampling images. With one image per study (keys in image order), the clustered
    /// interval is the image-resampled one to the bit.
    #[test]
    fn clustered_intervals_are_wider_for_correlated_views_and_equal_for_single_views() {
        let (mut y, mut s, mut study) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..120u32 {
            let label = k % 2 == 0;
            let base = if label { 0.58 } else { 0.42 } + ((k * 29) % 17) as f64 / 40.0 - 0.2;
            for v in 0..4u32 {
                y.push(label);
                s.push(base + f64::from((k * 7 + v * 3) % 5) / 200.0);
                study.push(k);
            }
        }
        let cfg = BootstrapConfig {
            resamples: 500,
            level: 0.95,
            seed: 3,
        };
        let plain = bootstrap_ci(&y, &s, cfg, roc_auc).unwrap().unwrap();
        let clustered = cluster_bootstrap_ci(&y, &s, &study, cfg, roc_auc)
            .unwrap()
            .unwrap();
        assert_eq!(plain.estimate, clustered.estimate);
        let width = |i: &Interval| i.upper - i.lower;
        assert!(
            width(&clustered) > 1.5 * width(&plain),
            "{clustered:?} vs {plain:?}"
        );
        let one: Vec<usize> = (0..y.len()).collect();
        let single = cluster_bootstrap_ci(&y, &s, &one, cfg, roc_auc)
            .unwrap()
            .unwrap();
        assert_eq!(single, plain);
        assert!(cluster_bootstrap_ci(&y, &s, &one[1..], cfg, roc_auc).is_err());
    }

    #[test]
    fn a_paired_difference_of_a_scoring_with_itself_is_zero_and_of_a_better_one_significant() {
        let (y, s) = sample();
        let cfg = BootstrapConfig {
            resamples: 400,
            level: 0.95,
            seed: 5,
        };
        let none: Option<&[u32]> = None;
        let same = paired_bootstrap(&y, (&s, &s), none, cfg, roc_auc)
            .unwrap()
            .unwrap();
        assert_eq!((same.difference, same.lower, same.upper), (0.0, 0.0, 0.0));
        assert_eq!(same.p_value, 1.0);
        let noise: Vec<f64> = (0..y.len())
            .map(|i| ((i * 53) % 97) as f64 / 97.0)
            .collect();
        let d = paired_bootstrap(&y, (&s, &noise), none, cfg, roc_auc)
            .unwrap()
            .unwrap();
        assert!(
            d.difference > 0.2 && d.lower > 0.0 && d.p_value < 0.01,
            "{d:?}"
        );
        let patients: Vec<usize> = (0..y.len()).map(|i| i / 2).collect();
        let c = paired_bootstrap(&y, (&s, &noise), Some(&patients), cfg, roc_auc)
            .unwrap()
            .unwrap();
        assert_eq!(c.difference, d.difference);
    }
}

//! Calibration: whether a probability of 0.8 means 80% abnormal. The Brier score, reliability
//! diagrams and the expected and maximum calibration errors over equal-width or equal-mass bins,
//! and temperature scaling, which divides every logit by one fitted number.

use serde::{Deserialize, Serialize};

use crate::{MetricsError, check_pairs, check_probabilities};

/// Mean squared difference between probability and outcome (scikit-learn's
/// `brier_score_loss`): 0 is perfect, 0.25 is a constant 0.5.
pub fn brier_score(labels: &[bool], probs: &[f64]) -> Result<f64, MetricsError> {
    check_probabilities(labels, probs)?;
    let sum: f64 = labels
        .iter()
        .zip(probs)
        .map(|(&y, &p)| (p - f64::from(u8::from(y))).powi(2))
        .sum();
    Ok(sum / labels.len() as f64)
}

/// How the probability axis is cut into bins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Binning {
    /// `bins` equal intervals of [0, 1] (scikit-learn's `strategy="uniform"`).
    EqualWidth,
    /// Edges at the quantiles of the probabilities, so each bin holds about as many
    /// (scikit-learn's `strategy="quantile"`).
    EqualMass,
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReliabilityBin {
    /// The bin's edges; a probability `p` falls in the bin whose `lower < p <= upper` (the first
    /// bin also takes `p == lower`).
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    /// Mean predicted probability in the bin (the diagram's x).
    pub mean_probability: f64,
    /// Share of positives in the bin (the diagram's y).
    pub fraction_positive: f64,
}

/// The non-empty bins of a reliability diagram, in order. Bins are assigned as scikit-learn's
/// `calibration_curve` assigns them: the number of inner edges below the probability.
pub fn reliability(
    labels: &[bool],
    probs: &[f64],
    bins: usize,
    binning: Binning,
) -> Result<Vec<ReliabilityBin>, MetricsError> {
    check_probabilities(labels, probs)?;
    if bins == 0 {
        return Err(MetricsError::BadParameter {
            what: "calibration bins",
            expected: "at least 1",
            value: 0.0,
        });
    }
    let edges = edges(probs, bins, binning);
    let inner = &edges[1..edges.len() - 1];
    let mut count = vec![0usize; bins];
    let mut sum_p = vec![0.0; bins];
    let mut sum_y = vec![0.0; bins];
    for (&y, &p) in labels.iter().zip(probs) {
        // numpy's searchsorted(inner, p): the inner edges strictly below p.
        let b = inner.partition_point(|&e| e < p);
        count[b] += 1;
        sum_p[b] += p;
        sum_y[b] += f64::from(u8::from(y));
    }
    Ok((0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| ReliabilityBin {
            lower: edges[b],
            upper: edges[b + 1],
            count: count[b],
            mean_probability: sum_p[b] / count[b] as f64,
            fraction_positive: sum_y[b] / count[b] as f64,
        })
        .collect())
}

/// The `bins + 1` edges from 0 to 1: equal steps, or the probabilities' quantiles (linear
/// interpolation between closest ranks, numpy's default) with the ends at 0 and 1.
fn edges(probs: &[f64], bins: usize, binning: Binning) -> Vec<f64> {
    match binning {
        Binning::EqualWidth => (0..=bins).map(|i| i as f64 / bins as f64).collect(),
        Binning::EqualMass => {
            let mut sorted = probs.to_vec();
            sorted.sort_by(f64::total_cmp);
            let n = sorted.len();
            let mut edges: Vec<f64> = (0..=bins)
                .map(|i| {
                    let pos = i as f64 / bins as f64 * (n - 1) as f64;
                    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
                    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
                })
                .collect();
            edges[0] = 0.0;
            edges[bins] = 1.0;
            edges
        }
    }
}

/// Expected and maximum calibration error of one binning.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CalibrationError {
    /// Σ over bins of (share of samples) × |fraction positive − mean probability|.
    pub expected: f64,
    /// The largest |fraction positive − mean probability| over the non-empty bins.
    pub maximum: f64,
}

/// The expected (ECE) and maximum (MCE) calibration errors over `bins` bins.
pub fn calibration_error(
    labels: &[bool],
    probs: &[f64],
    bins: usize,
    binning: Binning,
) -> Result<CalibrationError, MetricsError> {
    let diagram = reliability(labels, probs, bins, binning)?;
    let n = labels.len() as f64;
    let gap = |b: &ReliabilityBin| (b.fraction_positive - b.mean_probability).abs();
    Ok(CalibrationError {
        expected: diagram.iter().map(|b| b.count as f64 / n * gap(b)).sum(),
        maximum: diagram.iter().map(gap).fold(0.0, f64::max),
    })
}

/// The logit of a probability, clamped to ±`MAX_LOGIT` so that 0 and 1 stay finite.
pub fn logit(p: f64) -> f64 {
    const MAX_LOGIT: f64 = 36.0;
    (p.ln() - (-p).ln_1p()).clamp(-MAX_LOGIT, MAX_LOGIT)
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// `p` rescaled by temperature `t`: sigmoid(logit(p) / t). `t > 1` softens over-confident
/// probabilities towards 0.5, `t < 1` sharpens them; the order of the probabilities, and so the
/// AUC, is unchanged. `t == 1` gives `p` back exactly.
pub fn apply_temperature(p: f64, t: f64) -> f64 {
    if t == 1.0 { p } else { sigmoid(logit(p) / t) }
}

/// Mean binary cross-entropy of sigmoid(`logits` / `t`), and its derivatives in s = 1/t.
fn nll(labels: &[bool], logits: &[f64], s: f64) -> (f64, f64, f64) {
    let (mut f, mut d1, mut d2) = (0.0, 0.0, 0.0);
    for (&y, &z) in labels.iter().zip(logits) {
        let u = z * s;
        // −log σ(u) for a positive, −log(1 − σ(u)) = −log σ(−u) for a negative, stably.
        let signed = if y { u } else { -u };
        f += if signed >= 0.0 {
            (-signed).exp().ln_1p()
        } else {
            -signed + signed.exp().ln_1p()
        };
        let q = sigmoid(u);
        d1 += (q - f64::from(u8::from(y))) * z;
        d2 += q * (1.0 - q) * z * z;
    }
    let n = labels.len() as f64;
    (f / n, d1 / n, d2 / n)
}

/// A fitted temperature and what it did to the validation loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Temperature {
    /// Divide every logit by this (1 = unchanged).
    pub temperature: f64,
    /// Mean binary cross-entropy on the fitting set before and after.
    pub nll_before: f64,
    pub nll_after: f64,
}

/// Fits the temperature that minimises the mean binary cross-entropy of sigmoid(logit / t) on
/// `labels` (Guo et al., 2017, for one logit): Newton's method on s = 1/t, which is convex,
/// from s = 1. `Ok(None)` when one class only is present (any sharpening then lowers the loss,
/// without end). The temperature stays within [0.05, 20].
pub fn fit_temperature(
    labels: &[bool],
    logits: &[f64],
) -> Result<Option<Temperature>, MetricsError> {
    check_pairs(labels, logits)?;
    let positives = labels.iter().filter(|&&y| y).count();
    if positives == 0 || positives == labels.len() {
        return Ok(None);
    }
    let (s_min, s_max) = (1.0 / 20.0, 20.0);
    let (before, _, _) = nll(labels, logits, 1.0);
    let mut s = 1.0;
    for _ in 0..100 {
        let (_, d1, d2) = nll(labels, logits, s);
        if d2 <= 1e-300 {
            break;
        }
        let next = (s - d1 / d2).clamp(s_min, s_max);
        if (next - s).abs() <= 1e-12 * s {
            s = next;
            break;
        }
        s = next;
    }
    let (after, _, _) = nll(labels, logits, s);
    Ok(Some(Temperature {
        temperature: 1.0 / s,
        nll_before: before,
        nll_after: after,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brier_of_perfect_and_constant_predictions() {
        let y = [true, false, true, false];
        assert_eq!(brier_score(&y, &[1.0, 0.0, 1.0, 0.0]), Ok(0.0));
        assert_eq!(brier_score(&y, &[0.5; 4]), Ok(0.25));
        assert!(brier_score(&y, &[1.5, 0.0, 0.0, 0.0]).is_err());
    }

    #[test]
    fn a_calibrated_sample_has_small_errors_and_a_skewed_one_large() {
        // In each decile, as many positives as the probability says.
        let mut y = Vec::new();
        let mut p = Vec::new();
        for d in 0..10 {
            let prob = (d as f64 + 0.5) / 10.0;
            for k in 0..100 {
                p.push(prob);
                y.push(k < (prob * 100.0).round() as usize);
            }
        }
        let e = calibration_error(&y, &p, 10, Binning::EqualWidth).unwrap();
        assert!(e.expected < 1e-12 && e.maximum < 1e-12, "{e:?}");
        let sharp: Vec<f64> = p
            .iter()
            .map(|&q| if q > 0.5 { 0.99 } else { 0.01 })
            .collect();
        let e = calibration_error(&y, &sharp, 10, Binning::EqualWidth).unwrap();
        assert!(e.expected > 0.2 && e.maximum > e.expected, "{e:?}");
    }

    #[test]
    fn equal_mass_bins_hold_about_as_many_samples() {
        let p: Vec<f64> = (0..1000).map(|i| (i as f64 / 1000.0).powi(3)).collect();
        let y: Vec<bool> = (0..1000).map(|i| i % 3 == 0).collect();
        let bins = reliability(&y, &p, 5, Binning::EqualMass).unwrap();
        assert_eq!(bins.len(), 5);
        assert!(
            bins.iter().all(|b| (199..=201).contains(&b.count)),
            "{bins:?}"
        );
        let wide = reliability(&y, &p, 5, Binning::EqualWidth).unwrap();
        assert!(wide[0].count > 500, "most cubes are small: {wide:?}");
        assert!(reliability(&y, &p, 0, Binning::EqualWidth).is_err());
    }

    #[test]
    fn temperature_undoes_a_scaling_of_the_logits() {
        // Logits drawn calibrated, then multiplied by 3: the fit finds t close to 3.
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut y, mut z) = (Vec::new(), Vec::new());
        for _ in 0..20_000 {
            let logit = (next() - 0.5) * 6.0;
            y.push(next() < sigmoid(logit));
            z.push(3.0 * logit);
        }
        let t = fit_temperature(&y, &z).unwrap().unwrap();
        assert!((t.temperature - 3.0).abs() < 0.15, "{t:?}");
        assert!(t.nll_after < t.nll_before);
        assert_eq!(fit_temperature(&[true, true], &[1.0, 2.0]), Ok(None));
        assert_eq!(apply_temperature(0.3, 1.0), 0.3);
        let soft = apply_temperature(0.9, 2.0);
        assert!(soft > 0.5 && soft < 0.9);
        assert!((logit(sigmoid(2.5)) - 2.5).abs() < 1e-12);
        assert!(logit(0.0).is_finite() && logit(1.0).is_finite());
    }

    /// An over-confident scoring (calibrated logits × 3) is fixed by its fitted temperature: the
    /// expected calibration error drops, the AUC stays exactly the same.
    #[test]
    fn an_overconfident_scoring_is_fixed_by_its_temperature() {
        let mut state = 11u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut y, mut z) = (Vec::new(), Vec::new());
        for _ in 0..5000 {
            let logit = (next() - 0.5) * 4.0;
            y.push(next() < sigmoid(logit));
            z.push(3.0 * logit);
        }
        let probs: Vec<f64> = z.iter().map(|&v| sigmoid(v)).collect();
        let t = fit_temperature(&y, &z).unwrap().unwrap();
        let fixed: Vec<f64> = probs
            .iter()
            .map(|&p| apply_temperature(p, t.temperature))
            .collect();
        let ece = |p: &[f64]| {
            calibration_error(&y, p, 10, Binning::EqualWidth)
                .unwrap()
                .expected
        };
        assert!(ece(&probs) > 0.08, "over-confident: {}", ece(&probs));
        assert!(
            ece(&fixed) < ece(&probs) / 3.0,
            "{} → {}",
            ece(&probs),
            ece(&fixed)
        );
        let auc = |p: &[f64]| crate::roc_auc(&y, p).unwrap().unwrap();
        assert_eq!(auc(&probs), auc(&fixed));
        assert!(brier_score(&y, &fixed).unwrap() < brier_score(&y, &probs).unwrap());
    }
}

//! Threshold metrics: confusion matrix, accuracy, precision, recall, specificity, F1, Cohen's kappa,
//! and binary cross-entropy.

use serde::Serialize;

use crate::{MetricsError, check_pairs, check_probabilities};

/// Counts of a binary decision against the truth. Positive = abnormal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ConfusionMatrix {
    pub true_negative: u64,
    pub false_positive: u64,
    pub false_negative: u64,
    pub true_positive: u64,
}

impl ConfusionMatrix {
    /// Builds the matrix from labels and hard predictions.
    pub fn from_predictions(labels: &[bool], predicted: &[bool]) -> Result<Self, MetricsError> {
        if labels.len() != predicted.len() {
            return Err(MetricsError::LengthMismatch {
                labels: labels.len(),
                scores: predicted.len(),
            });
        }
        let mut m = Self::default();
        for (&y, &p) in labels.iter().zip(predicted) {
            match (y, p) {
                (false, false) => m.true_negative += 1,
                (false, true) => m.false_positive += 1,
                (true, false) => m.false_negative += 1,
                (true, true) => m.true_positive += 1,
            }
        }
        Ok(m)
    }

    pub fn total(&self) -> u64 {
        self.true_negative + self.false_positive + self.false_negative + self.true_positive
    }

    pub fn positives(&self) -> u64 {
        self.true_positive + self.false_negative
    }

    pub fn negatives(&self) -> u64 {
        self.true_negative + self.false_positive
    }

    /// Fraction of correct decisions; `None` for an empty matrix.
    pub fn accuracy(&self) -> Option<f64> {
        ratio(self.true_positive + self.true_negative, self.total())
    }

    /// TP / (TP + FP); `None` when nothing was predicted positive.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.true_positive, self.true_positive + self.false_positive)
    }

    /// Sensitivity, TP / (TP + FN); `None` when there is no positive sample.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.true_positive, self.positives())
    }

    /// TN / (TN + FP); `None` when there is no negative sample.
    pub fn specificity(&self) -> Option<f64> {
        ratio(self.true_negative, self.negatives())
    }

    /// Harmonic mean of precision and recall, 2TP / (2TP + FP + FN); `None` when that is 0/0.
    pub fn f1(&self) -> Option<f64> {
        ratio(
            2 * self.true_positive,
            2 * self.true_positive + self.false_positive + self.false_negative,
        )
    }

    /// Cohen's kappa, (p_o - p_e) / (1 - p_e); `None` when the chance agreement p_e is 1 (both
    /// raters constant and equal) or the matrix is empty.
    pub fn kappa(&self) -> Option<f64> {
        let n = self.total() as f64;
        if n == 0.0 {
            return None;
        }
        let p_o = (self.true_positive + self.true_negative) as f64 / n;
        let truth_pos = self.positives() as f64 / n;
        let pred_pos = (self.true_positive + self.false_positive) as f64 / n;
        let p_e = truth_pos * pred_pos + (1.0 - truth_pos) * (1.0 - pred_pos);
        if (1.0 - p_e).abs() < f64::EPSILON {
            return None;
        }
        Some((p_o - p_e) / (1.0 - p_e))
    }
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Hard decisions: abnormal when the probability is strictly greater than `threshold`.
fn decide(probs: &[f64], threshold: f64) -> Vec<bool> {
    probs.iter().map(|&p| p > threshold).collect()
}

fn check_threshold(threshold: f64) -> Result<(), MetricsError> {
    if !(0.0..=1.0).contains(&threshold) {
        return Err(MetricsError::BadParameter {
            what: "threshold",
            expected: "in [0, 1]",
            value: threshold,
        });
    }
    Ok(())
}

/// The confusion matrix of `probs > threshold` against `labels`.
pub fn confusion_matrix(
    labels: &[bool],
    probs: &[f64],
    threshold: f64,
) -> Result<ConfusionMatrix, MetricsError> {
    check_probabilities(labels, probs)?;
    check_threshold(threshold)?;
    ConfusionMatrix::from_predictions(labels, &decide(probs, threshold))
}

/// Accuracy at `threshold`.
pub fn accuracy(labels: &[bool], probs: &[f64], threshold: f64) -> Result<f64, MetricsError> {
    // The matrix is non-empty once the inputs are checked, so accuracy is always defined.
    confusion_matrix(labels, probs, threshold)?
        .accuracy()
        .ok_or(MetricsError::Empty)
}

/// Precision at `threshold`; `None` when nothing is predicted positive.
pub fn precision(
    labels: &[bool],
    probs: &[f64],
    threshold: f64,
) -> Result<Option<f64>, MetricsError> {
    Ok(confusion_matrix(labels, probs, threshold)?.precision())
}

/// Recall (sensitivity) at `threshold`; `None` when there is no positive sample.
pub fn recall(labels: &[bool], probs: &[f64], threshold: f64) -> Result<Option<f64>, MetricsError> {
    Ok(confusion_matrix(labels, probs, threshold)?.recall())
}

/// Specificity at `threshold`; `None` when there is no negative sample.
pub fn specificity(
    labels: &[bool],
    probs: &[f64],
    threshold: f64,
) -> Result<Option<f64>, MetricsError> {
    Ok(confusion_matrix(labels, probs, threshold)?.specificity())
}

/// F1 at `threshold`; `None` when there is no positive sample and none predicted.
pub fn f1(labels: &[bool], probs: &[f64], threshold: f64) -> Result<Option<f64>, MetricsError> {
    Ok(confusion_matrix(labels, probs, threshold)?.f1())
}

/// Cohen's kappa between the labels and `probs > threshold`; `None` when undefined.
pub fn cohen_kappa(
    labels: &[bool],
    probs: &[f64],
    threshold: f64,
) -> Result<Option<f64>, MetricsError> {
    Ok(confusion_matrix(labels, probs, threshold)?.kappa())
}

/// Mean binary cross-entropy, optionally weighted per sample.
///
/// Probabilities are clipped to `[eps, 1 - eps]` with `eps = f64::EPSILON`, as scikit-learn's
/// `log_loss` does for float64 input, so a confident mistake costs about 36 rather than infinity.
/// With weights the result is `sum(w_i * l_i) / sum(w_i)`.
pub fn binary_cross_entropy(
    labels: &[bool],
    probs: &[f64],
    weights: Option<&[f64]>,
) -> Result<f64, MetricsError> {
    check_probabilities(labels, probs)?;
    if let Some(w) = weights {
        check_pairs(labels, w)?;
        if let Some(&value) = w.iter().find(|&&w| w < 0.0) {
            return Err(MetricsError::BadParameter {
                what: "sample weight",
                expected: "non-negative",
                value,
            });
        }
    }
    let eps = f64::EPSILON;
    let (mut sum, mut total_weight) = (0.0, 0.0);
    for (i, (&y, &p)) in labels.iter().zip(probs).enumerate() {
        let p = p.clamp(eps, 1.0 - eps);
        let loss = if y { -p.ln() } else { -(1.0 - p).ln() };
        let w = weights.map_or(1.0, |w| w[i]);
        sum += w * loss;
        total_weight += w;
    }
    if total_weight == 0.0 {
        return Err(MetricsError::BadParameter {
            what: "sum of sample weights",
            expected: "positive",
            value: total_weight,
        });
    }
    Ok(sum / total_weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kappa_of_perfect_and_chance_agreement() {
        let y = [true, false, true, false];
        let m = ConfusionMatrix::from_predictions(&y, &y).unwrap();
        assert!((m.kappa().unwrap() - 1.0).abs() < 1e-12);
        // Predictions independent of the truth: p_o = p_e = 0.5.
        let p = [true, true, false, false];
        let m = ConfusionMatrix::from_predictions(&y, &p).unwrap();
        assert!(m.kappa().unwrap().abs() < 1e-12);
    }

    #[test]
    fn undefined_values_are_none_not_zero() {
        // One class, and the classifier agrees with it: p_e = 1.
        let y = [false, false, false];
        let m = ConfusionMatrix::from_predictions(&y, &y).unwrap();
        assert_eq!(m.kappa(), None);
        assert_eq!(m.precision(), None);
        assert_eq!(m.recall(), None);
        assert_eq!(m.f1(), None);
        assert_eq!(m.specificity(), Some(1.0));
    }

    #[test]
    fn threshold_is_strictly_greater() {
        let m = confusion_matrix(&[true, false], &[0.5, 0.5], 0.5).unwrap();
        assert_eq!(m.true_positive + m.false_positive, 0);
    }

    #[test]
    fn bce_clips_confident_mistakes() {
        let l = binary_cross_entropy(&[true], &[0.0], None).unwrap();
        assert!((l - (-f64::EPSILON.ln())).abs() < 1e-12);
        let l = binary_cross_entropy(&[true, false], &[0.8, 0.4], Some(&[3.0, 1.0])).unwrap();
        let expect = (3.0 * -(0.8f64).ln() + -(0.6f64).ln()) / 4.0;
        assert!((l - expect).abs() < 1e-12);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert_eq!(
            accuracy(&[true], &[0.1, 0.2], 0.5),
            Err(MetricsError::LengthMismatch {
                labels: 1,
                scores: 2
            })
        );
        assert_eq!(accuracy(&[], &[], 0.5), Err(MetricsError::Empty));
        assert!(matches!(
            accuracy(&[true], &[f64::NAN], 0.5),
            Err(MetricsError::NonFinite { index: 0, .. })
        ));
        assert!(matches!(
            accuracy(&[true], &[1.5], 0.5),
            Err(MetricsError::NotAProbability { index: 0, .. })
        ));
        assert!(matches!(
            accuracy(&[true], &[0.5], 2.0),
            Err(MetricsError::BadParameter { .. })
        ));
        assert!(matches!(
            binary_cross_entropy(&[true], &[0.5], Some(&[-1.0])),
            Err(MetricsError::BadParameter { .. })
        ));
    }
}

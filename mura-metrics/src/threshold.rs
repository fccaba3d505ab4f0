//! Choosing the decision threshold on validation data: maximum Cohen's kappa or Youden's J.

use serde::{Deserialize, Serialize};

use crate::{ConfusionMatrix, MetricsError, check_probabilities};

/// What a chosen threshold maximises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Criterion {
    /// Cohen's kappa between the labels and the decisions (the MURA paper's metric).
    #[default]
    Kappa,
    /// Youden's J = sensitivity + specificity - 1 (the ROC point farthest above the diagonal).
    Youden,
}

impl Criterion {
    pub fn as_str(self) -> &'static str {
        match self {
            Criterion::Kappa => "kappa",
            Criterion::Youden => "youden",
        }
    }

    /// The criterion's value for a confusion matrix; `None` where it is undefined.
    pub fn value(self, m: &ConfusionMatrix) -> Option<f64> {
        match self {
            Criterion::Kappa => m.kappa(),
            Criterion::Youden => Some(m.recall()? + m.specificity()? - 1.0),
        }
    }
}

/// A threshold and what it reaches on the data it was chosen on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    pub criterion: Criterion,
    /// Abnormal when the probability is strictly greater than this.
    pub value: f64,
    /// The criterion's value at `value` on the data it was chosen on.
    pub score: f64,
}

/// The threshold that maximises `criterion` for the decisions `probs > threshold`.
///
/// Every way of splitting the distinct probabilities into "abnormal" (the higher ones) and "normal"
/// is tried in one sweep, O(n log n); the threshold returned lies halfway between the two
/// probabilities at the split, so it does not sit on a validation score. Ties in the criterion go to
/// the threshold nearest 0.5. `Ok(None)` when there is no split to choose (one distinct probability)
/// or the criterion is undefined everywhere (one class only).
pub fn choose_threshold(
    labels: &[bool],
    probs: &[f64],
    criterion: Criterion,
) -> Result<Option<Threshold>, MetricsError> {
    check_probabilities(labels, probs)?;
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let positives = labels.iter().filter(|&&y| y).count() as u64;
    // Start with everything predicted normal and move runs of equal probability to abnormal.
    let mut m = ConfusionMatrix {
        true_negative: labels.len() as u64 - positives,
        false_positive: 0,
        false_negative: positives,
        true_positive: 0,
    };
    let mut best: Option<Threshold> = None;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && probs[order[end]] == probs[order[start]] {
            end += 1;
        }
        for &i in &order[start..end] {
            if labels[i] {
                m.true_positive += 1;
                m.false_negative -= 1;
            } else {
                m.false_positive += 1;
                m.true_negative -= 1;
            }
        }
        if end == order.len() {
            break;
        }
        let value = (probs[order[end - 1]] + probs[order[end]]) / 2.0;
        if let Some(score) = criterion.value(&m) {
            let better = match best {
                None => true,
                Some(b) => {
                    score > b.score
                        || (score == b.score && (value - 0.5).abs() < (b.value - 0.5).abs())
                }
            };
            if better {
                best = Some(Threshold {
                    criterion,
                    value,
                    score,
                });
            }
        }
        start = end;
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::confusion_matrix;
    use proptest::prelude::*;

    #[test]
    fn separable_scores_get_a_threshold_between_the_classes() {
        let labels = [false, false, true, true];
        let probs = [0.1, 0.3, 0.35, 0.9];
        for c in [Criterion::Kappa, Criterion::Youden] {
            let t = choose_threshold(&labels, &probs, c).unwrap().unwrap();
            assert!((t.value - 0.325).abs() < 1e-12, "{t:?}");
            assert!((t.score - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn youden_and_kappa_can_disagree() {
        // 2 positives, 8 negatives. Youden prefers catching both positives (J = 1 - 3/8 = 0.625 at
        // 0.45); kappa prefers the stricter cut that makes one mistake fewer in total.
        let labels = [
            true, true, false, false, false, false, false, false, false, false,
        ];
        let probs = [0.9, 0.4, 0.8, 0.5, 0.45, 0.3, 0.2, 0.1, 0.05, 0.0];
        let y = choose_threshold(&labels, &probs, Criterion::Youden)
            .unwrap()
            .unwrap();
        let k = choose_threshold(&labels, &probs, Criterion::Kappa)
            .unwrap()
            .unwrap();
        assert!((y.value - 0.35).abs() < 1e-12, "{y:?}");
        assert!((y.score - 0.625).abs() < 1e-12, "{y:?}");
        assert!(k.value > 0.4, "{k:?}");
    }

    #[test]
    fn nothing_to_choose_is_none_and_bad_input_is_an_error() {
        assert_eq!(
            choose_threshold(&[true, false], &[0.5, 0.5], Criterion::Kappa).unwrap(),
            None
        );
        assert_eq!(
            choose_threshold(&[true, true], &[0.2, 0.7], Criterion::Youden).unwrap(),
            None
        );
        assert!(matches!(
            choose_threshold(&[true], &[f64::NAN], Criterion::Kappa),
            Err(MetricsError::NonFinite { .. })
        ));
        assert!(matches!(
            choose_threshold(&[true], &[], Criterion::Kappa),
            Err(MetricsError::LengthMismatch { .. })
        ));
    }

    proptest! {
        /// The sweep finds the same best score as trying every candidate threshold directly.
        #[test]
        fn sweep_matches_brute_force(
            data in prop::collection::vec((any::<bool>(), 0u8..20), 2..40),
            youden in any::<bool>(),
        ) {
            let labels: Vec<bool> = data.iter().map(|d| d.0).collect();
            let probs: Vec<f64> = data.iter().map(|d| f64::from(d.1) / 19.0).collect();
            let c = if youden { Criterion::Youden } else { Criterion::Kappa };
            let chosen = choose_threshold(&labels, &probs, c).unwrap();
            let mut brute: Option<f64> = None;
            for k in 0..19 {
                let t = (f64::from(k) + 0.5) / 19.0;
                if let Some(v) = c.value(&confusion_matrix(&labels, &probs, t).unwrap()) {
                    // Only thresholds that split the observed scores count.
                    let splits = probs.iter().any(|&p| p > t) && probs.iter().any(|&p| p <= t);
                    if splits {
                        brute = Some(brute.map_or(v, |b: f64| b.max(v)));
                    }
                }
            }
            match (chosen, brute) {
                (Some(t), Some(b)) => {
                    prop_assert!((t.score - b).abs() < 1e-12, "{t:?} vs {b}");
                    let at = c.value(&confusion_matrix(&labels, &probs, t.value).unwrap()).unwrap();
                    prop_assert!((at - t.score).abs() < 1e-12);
                }
                (None, None) => {}
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }
}

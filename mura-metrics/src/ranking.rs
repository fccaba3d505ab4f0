//! Ranking metrics: ROC-AUC by rank sum with ties, and the ROC curve.

use serde::Serialize;

use crate::{MetricsError, check_pairs};

/// Area under the ROC curve: the probability that a random positive scores above a random negative,
/// ties counting one half.
///
/// Computed from the Mann-Whitney rank sum with average ranks for tied scores, in O(n log n).
/// Returns `Ok(None)` when only one class is present: the AUC is undefined there, not 0.5.
pub fn roc_auc(labels: &[bool], scores: &[f64]) -> Result<Option<f64>, MetricsError> {
    check_pairs(labels, scores)?;
    let n_pos = labels.iter().filter(|&&y| y).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Ok(None);
    }
    let order = ascending_order(scores);
    // Walk runs of equal scores; each run shares the average of the ranks it spans (1-based).
    let mut rank_sum_pos = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let average_rank = (start + 1 + end) as f64 / 2.0;
        let positives_in_run = order[start..end].iter().filter(|&&i| labels[i]).count();
        rank_sum_pos += average_rank * positives_in_run as f64;
        start = end;
    }
    let n_pos = n_pos as f64;
    let n_neg = n_neg as f64;
    Ok(Some(
        (rank_sum_pos - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg),
    ))
}

fn ascending_order(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    order
}

/// One point of a ROC curve: predicting positive when `score >= threshold` gives these rates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RocPoint {
    pub false_positive_rate: f64,
    pub true_positive_rate: f64,
    /// `f64::INFINITY` for the first point (nothing predicted positive).
    pub threshold: f64,
}

/// The ROC curve, one point per distinct score from the highest down, starting at (0, 0).
///
/// This is scikit-learn's `roc_curve(..., drop_intermediate=False)`. Returns `Ok(None)` when only
/// one class is present, since one of the two rates is then undefined.
pub fn roc_curve(labels: &[bool], scores: &[f64]) -> Result<Option<Vec<RocPoint>>, MetricsError> {
    check_pairs(labels, scores)?;
    let n_pos = labels.iter().filter(|&&y| y).count() as f64;
    let n_neg = labels.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return Ok(None);
    }
    let mut order = ascending_order(scores);
    order.reverse();
    let mut points = vec![RocPoint {
        false_positive_rate: 0.0,
        true_positive_rate: 0.0,
        threshold: f64::INFINITY,
    }];
    let (mut tp, mut fp) = (0u64, 0u64);
    for (k, &i) in order.iter().enumerate() {
        if labels[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_run = order
            .get(k + 1)
            .is_none_or(|&next| scores[next] != scores[i]);
        if last_of_run {
            points.push(RocPoint {
                false_positive_rate: fp as f64 / n_neg,
                true_positive_rate: tp as f64 / n_pos,
                threshold: scores[i],
            });
        }
    }
    Ok(Some(points))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition, in O(n²): pairs ordered correctly, ties counting one half.
    fn auc_by_pairs(labels: &[bool], scores: &[f64]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (i, &yi) in labels.iter().enumerate() {
            for (j, &yj) in labels.iter().enumerate() {
                if yi && !yj {
                    pairs += 1.0;
                    if scores[i] > scores[j] {
                        wins += 1.0;
                    } else if scores[i] == scores[j] {
                        wins += 0.5;
                    }
                }
            }
        }
        wins / pairs
    }

    #[test]
    fn one_class_is_undefined() {
        assert_eq!(roc_auc(&[true, true], &[0.1, 0.9]).unwrap(), None);
        assert_eq!(roc_curve(&[false], &[0.1]).unwrap(), None);
    }

    #[test]
    fn all_tied_scores_give_one_half() {
        let auc = roc_auc(&[true, false, true, false], &[0.3; 4])
            .unwrap()
            .unwrap();
        assert!((auc - 0.5).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn rank_sum_equals_pair_count(
            pairs in prop::collection::vec((any::<bool>(), 0u8..6), 2..60)
        ) {
            let labels: Vec<bool> = pairs.iter().map(|p| p.0).collect();
            // Few distinct values, so ties are common.
            let scores: Vec<f64> = pairs.iter().map(|p| f64::from(p.1) / 5.0).collect();
            match roc_auc(&labels, &scores).unwrap() {
                Some(auc) => prop_assert!((auc - auc_by_pairs(&labels, &scores)).abs() < 1e-12),
                None => prop_assert!(labels.iter().all(|&y| y) || labels.iter().all(|&y| !y)),
            }
        }

        #[test]
        fn trapezoid_under_curve_equals_auc(
            pairs in prop::collection::vec((any::<bool>(), 0u8..8), 2..60)
        ) {
            let labels: Vec<bool> = pairs.iter().map(|p| p.0).collect();
            let scores: Vec<f64> = pairs.iter().map(|p| f64::from(p.1)).collect();
            if let Some(curve) = roc_curve(&labels, &scores).unwrap() {
                let area: f64 = curve.windows(2).map(|w| {
                    (w[1].false_positive_rate - w[0].false_positive_rate)
                        * (w[1].true_positive_rate + w[0].true_positive_rate) / 2.0
                }).sum();
                let auc = roc_auc(&labels, &scores).unwrap().unwrap();
                prop_assert!((area - auc).abs() < 1e-12);
                let last = curve.last().unwrap();
                prop_assert_eq!((last.false_positive_rate, last.true_positive_rate), (1.0, 1.0));
            }
        }
    }
}

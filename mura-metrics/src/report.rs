//! Every metric of a binary classifier in one report, overall or per group (body part).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    ConfusionMatrix, MetricsError, binary_cross_entropy, check_probabilities, confusion_matrix,
    roc_auc,
};

/// All the figures MURA work quotes for one set of predictions. `None` marks an undefined value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BinaryReport {
    pub n: usize,
    pub positives: usize,
    pub threshold: f64,
    pub loss: f64,
    pub auc: Option<f64>,
    pub accuracy: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub specificity: Option<f64>,
    pub f1: Option<f64>,
    pub kappa: Option<f64>,
    pub confusion: ConfusionMatrix,
}

/// Computes a [`BinaryReport`] of `probs` against `labels`, deciding abnormal when `p > threshold`.
pub fn evaluate(
    labels: &[bool],
    probs: &[f64],
    threshold: f64,
) -> Result<BinaryReport, MetricsError> {
    check_probabilities(labels, probs)?;
    let confusion = confusion_matrix(labels, probs, threshold)?;
    Ok(BinaryReport {
        n: labels.len(),
        positives: labels.iter().filter(|&&y| y).count(),
        threshold,
        loss: binary_cross_entropy(labels, probs, None)?,
        auc: roc_auc(labels, probs)?,
        accuracy: confusion.accuracy(),
        precision: confusion.precision(),
        recall: confusion.recall(),
        specificity: confusion.specificity(),
        f1: confusion.f1(),
        kappa: confusion.kappa(),
        confusion,
    })
}

/// The report of one group (for example one body part).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupReport<K> {
    pub group: K,
    pub report: BinaryReport,
}

/// One [`BinaryReport`] per distinct key, in key order.
pub fn by_group<K: Ord + Clone>(
    keys: &[K],
    labels: &[bool],
    probs: &[f64],
    threshold: f64,
) -> Result<Vec<GroupReport<K>>, MetricsError> {
    check_probabilities(labels, probs)?;
    if keys.len() != labels.len() {
        return Err(MetricsError::LengthMismatch {
            labels: labels.len(),
            scores: keys.len(),
        });
    }
    let mut groups: BTreeMap<&K, (Vec<bool>, Vec<f64>)> = BTreeMap::new();
    for ((k, &y), &p) in keys.iter().zip(labels).zip(probs) {
        let g = groups.entry(k).or_default();
        g.0.push(y);
        g.1.push(p);
    }
    groups
        .into_iter()
        .map(|(k, (y, p))| {
            Ok(GroupReport {
                group: k.clone(),
                report: evaluate(&y, &p, threshold)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_reported_separately_and_in_order() {
        let keys = ["wrist", "hand", "wrist", "hand"];
        let y = [true, false, false, false];
        let p = [0.9, 0.2, 0.1, 0.7];
        let r = by_group(&keys, &y, &p, 0.5).unwrap();
        assert_eq!(r[0].group, "hand");
        assert_eq!(r[0].report.auc, None, "hand has one class only");
        assert_eq!(r[0].report.confusion.false_positive, 1);
        assert_eq!(r[1].group, "wrist");
        assert_eq!(r[1].report.auc, Some(1.0));
        assert_eq!(r[1].report.kappa, Some(1.0));
    }
}

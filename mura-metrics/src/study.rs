//! Study-level aggregation: a study's probability is the mean of its images' probabilities.

use std::collections::BTreeMap;
use std::fmt::Display;

use serde::Serialize;

use crate::{MetricsError, check_probabilities};

/// One study's aggregated score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StudyScore<K> {
    pub study: K,
    pub label: bool,
    /// Arithmetic mean of the study's image probabilities (the MURA paper's rule).
    pub probability: f64,
    pub images: usize,
}

/// Groups image-level probabilities by study and averages them.
///
/// Studies come out in the order of their first image. Every image of a study must carry the same
/// label; a conflict is an error naming the study.
pub fn aggregate_studies<K: Ord + Clone + Display>(
    studies: &[K],
    labels: &[bool],
    probs: &[f64],
) -> Result<Vec<StudyScore<K>>, MetricsError> {
    check_probabilities(labels, probs)?;
    if studies.len() != labels.len() {
        return Err(MetricsError::LengthMismatch {
            labels: labels.len(),
            scores: studies.len(),
        });
    }
    let mut slot: BTreeMap<&K, usize> = BTreeMap::new();
    let mut out: Vec<StudyScore<K>> = Vec::new();
    let mut sums: Vec<f64> = Vec::new();
    for ((study, &label), &p) in studies.iter().zip(labels).zip(probs) {
        let i = *slot.entry(study).or_insert_with(|| {
            out.push(StudyScore {
                study: study.clone(),
                label,
                probability: 0.0,
                images: 0,
            });
            sums.push(0.0);
            out.len() - 1
        });
        if out[i].label != label {
            return Err(MetricsError::StudyLabelConflict {
                study: study.to_string(),
            });
        }
        out[i].images += 1;
        sums[i] += p;
    }
    for (score, sum) in out.iter_mut().zip(sums) {
        score.probability = sum / score.images as f64;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_per_study_in_first_seen_order() {
        let studies = ["b", "a", "b", "b"];
        let s =
            aggregate_studies(&studies, &[true, false, true, true], &[0.2, 0.9, 0.4, 0.6]).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].study, "b");
        assert_eq!(s[0].images, 3);
        assert!((s[0].probability - 0.4).abs() < 1e-12);
        assert!((s[1].probability - 0.9).abs() < 1e-12);
    }

    #[test]
    fn conflicting_labels_name_the_study() {
        let err = aggregate_studies(&["s1", "s1"], &[true, false], &[0.5, 0.5]).unwrap_err();
        assert_eq!(err, MetricsError::StudyLabelConflict { study: "s1".into() });
        assert!(err.to_string().contains("\"s1\""));
    }
}

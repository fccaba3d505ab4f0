#![doc = include_str!("../README.md")]

mod bootstrap;
mod calibration;
mod classification;
mod delong;
mod error;
mod ranking;
mod report;
mod study;
mod threshold;

pub use bootstrap::{
    BootstrapConfig, Interval, PairedInterval, bootstrap_ci, cluster_bootstrap_ci, paired_bootstrap,
};
pub use calibration::{
    Binning, CalibrationError, ReliabilityBin, Temperature, apply_temperature, brier_score,
    calibration_error, fit_temperature, logit, reliability,
};
pub use classification::{
    ConfusionMatrix, accuracy, binary_cross_entropy, cohen_kappa, confusion_matrix, f1, precision,
    recall, specificity,
};
pub use delong::{
    AucVariance, DelongTest, delong_test, delong_variance, normal_cdf, normal_quantile,
};
pub use error::MetricsError;
pub use ranking::{RocPoint, roc_auc, roc_curve};
pub use report::{BinaryReport, GroupReport, by_group, evaluate};
pub use study::{StudyScore, aggregate_studies};
pub use threshold::{Criterion, Threshold, choose_threshold};

/// The decision threshold the MURA paper uses: abnormal when the probability is *greater* than 0.5.
pub const DEFAULT_THRESHOLD: f64 = 0.5;

/// Checks that labels and scores pair up, that there is at least one, and that every score is finite.
fn check_pairs(labels: &[bool], scores: &[f64]) -> Result<(), MetricsError> {
    if labels.len() != scores.len() {
        return Err(MetricsError::LengthMismatch {
            labels: labels.len(),
            scores: scores.len(),
        });
    }
    if labels.is_empty() {
        return Err(MetricsError::Empty);
    }
    if let Some((index, &value)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
        return Err(MetricsError::NonFinite { index, value });
    }
    Ok(())
}

/// Like [`check_pairs`], and every score must also be a probability in [0, 1].
fn check_probabilities(labels: &[bool], probs: &[f64]) -> Result<(), MetricsError> {
    check_pairs(labels, probs)?;
    if let Some((index, &value)) = probs
        .iter()
        .enumerate()
        .find(|(_, p)| !(0.0..=1.0).contains(*p))
    {
        return Err(MetricsError::NotAProbability { index, value });
    }
    Ok(())
}

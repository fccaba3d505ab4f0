//! The one error type of `mura-metrics`.

/// Why a metric could not be computed from its inputs.
///
/// A metric that is merely *undefined* for valid inputs (the AUC of a set with one class, the precision
/// of a classifier that never predicts positive) is not an error: it is returned as `None`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error("{labels} labels but {scores} scores: they must pair up one to one")]
    LengthMismatch { labels: usize, scores: usize },
    #[error("no samples: a metric needs at least one")]
    Empty,
    #[error("score {index} is {value}: scores must be finite")]
    NonFinite { index: usize, value: f64 },
    #[error("score {index} is {value}: a probability must lie in [0, 1]")]
    NotAProbability { index: usize, value: f64 },
    #[error("study {study:?} has images labelled both normal and abnormal: a study has one label")]
    StudyLabelConflict { study: String },
    #[error("{what} must be {expected}, got {value}")]
    BadParameter {
        what: &'static str,
        expected: &'static str,
        value: f64,
    },
}

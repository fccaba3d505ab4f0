//! The per-epoch history of a run: what `history.csv` holds, one row per epoch.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::state::write_durable;

/// One epoch. Train metrics are computed on the fly during the epoch (under augmentation and
/// dropout, as Keras reports them); validation metrics in evaluation mode after it. A metric that
/// is undefined (one class only) is empty in the CSV.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    /// 1-based.
    pub epoch: u32,
    pub stage: u32,
    pub train_loss: f64,
    pub train_auc: Option<f64>,
    pub train_accuracy: Option<f64>,
    pub train_kappa: Option<f64>,
    pub val_loss: f64,
    pub val_auc: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub val_kappa: Option<f64>,
    /// Learning rate the epoch trained with (at its last step).
    pub lr: f64,
    /// Seconds of the whole epoch: training and validation.
    pub seconds: f64,
    /// Training images per second.
    pub images_per_sec: f64,
}

/// The CSV header of `history.csv`.
pub const HISTORY_HEADER: [&str; 13] = [
    "epoch",
    "stage",
    "train_loss",
    "train_auc",
    "train_accuracy",
    "train_kappa",
    "val_loss",
    "val_auc",
    "val_accuracy",
    "val_kappa",
    "lr",
    "seconds",
    "images_per_sec",
];

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_default()
}

/// The rows as CSV text.
pub fn to_csv(rows: &[HistoryRow]) -> String {
    let mut out = HISTORY_HEADER.join(",");
    out.push('\n');
    for r in rows {
        let fields = [
            r.epoch.to_string(),
            r.stage.to_string(),
            format!("{:.6}", r.train_loss),
            opt(r.train_auc),
            opt(r.train_accuracy),
            opt(r.train_kappa),
            format!("{:.6}", r.val_loss),
            opt(r.val_auc),
            opt(r.val_accuracy),
            opt(r.val_kappa),
            format!("{:e}", r.lr),
            format!("{:.3}", r.seconds),
            format!("{:.2}", r.images_per_sec),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// Writes `history.csv` atomically.
pub fn write(path: &Path, rows: &[HistoryRow]) -> Result<(), TrainError> {
    write_durable(path, to_csv(rows).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_one_line_per_epoch_and_empty_cells_for_undefined_metrics() {
        let row = HistoryRow {
            epoch: 1,
            stage: 0,
            train_loss: 0.5,
            train_auc: Some(0.75),
            train_accuracy: Some(0.6),
            train_kappa: None,
            val_loss: 0.4,
            val_auc: None,
            val_accuracy: Some(0.7),
            val_kappa: Some(0.1),
            lr: 1e-3,
            seconds: 2.5,
            images_per_sec: 40.0,
        };
        let csv = to_csv(&[row]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].split(',').count(), 13);
        assert_eq!(
            lines[1],
            "1,0,0.500000,0.750000,0.600000,,0.400000,,0.700000,0.100000,1e-3,2.500,40.00"
        );
    }
}

//! The per-epoch history of a run: what `history.csv` holds, one row per epoch.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::io::write_durable;

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

/// Reads `history.csv` back; a malformed line is named by its number.
pub fn read(path: &Path) -> Result<Vec<HistoryRow>, TrainError> {
    let bad = |reason: String| TrainError::Config {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut lines = text.lines();
    if lines.next() != Some(HISTORY_HEADER.join(",").as_str()) {
        return Err(bad(format!(
            "line 1: the header is not `{}`",
            HISTORY_HEADER.join(",")
        )));
    }
    lines
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, line)| {
            let f: Vec<&str> = line.split(',').collect();
            let at = |reason: &str| bad(format!("line {}: {reason}", i + 2));
            if f.len() != HISTORY_HEADER.len() {
                return Err(at(&format!(
                    "{} fields, expected {}",
                    f.len(),
                    HISTORY_HEADER.len()
                )));
            }
            let num = |k: usize| -> Result<f64, TrainError> {
                f[k].parse::<f64>()
                    .map_err(|_| at(&format!("{} `{}` is not a number", HISTORY_HEADER[k], f[k])))
            };
            let opt = |k: usize| -> Result<Option<f64>, TrainError> {
                if f[k].is_empty() {
                    Ok(None)
                } else {
                    num(k).map(Some)
                }
            };
            let int = |k: usize| -> Result<u32, TrainError> {
                f[k].parse::<u32>().map_err(|_| {
                    at(&format!(
                        "{} `{}` is not a whole number",
                        HISTORY_HEADER[k], f[k]
                    ))
                })
            };
            Ok(HistoryRow {
                epoch: int(0)?,
                stage: int(1)?,
                train_loss: num(2)?,
                train_auc: opt(3)?,
                train_accuracy: opt(4)?,
                train_kappa: opt(5)?,
                val_loss: num(6)?,
                val_auc: opt(7)?,
                val_accuracy: opt(8)?,
                val_kappa: opt(9)?,
                lr: num(10)?,
                seconds: num(11)?,
                images_per_sec: num(12)?,
            })
        })
        .collect()
}

/// Writes `history.csv` atomically.
pub fn write(path: &Path, rows: &[HistoryRow]) -> Result<(), TrainError> {
    write_durable(path, to_csv(rows).as_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
        let csv = to_csv(std::slice::from_ref(&row));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.csv");
        std::fs::write(&path, &csv).unwrap();
        assert_eq!(read(&path).unwrap(), vec![row.clone()]);
        std::fs::write(&path, csv.replace("0.400000", "x")).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 2: val_loss `x` is not a number"),
            "{err}"
        );
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].split(',').count(), 13);
        assert_eq!(
            lines[1],
            "1,0,0.500000,0.750000,0.600000,,0.400000,,0.700000,0.100000,1e-3,2.500,40.00"
        );
    }
}

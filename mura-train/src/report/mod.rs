//! `mura report`: one self-contained HTML page comparing runs (and ensembles), with the PNGs it
//! shows beside it.
//!
//! The page holds, for the test split (the official valid set): a comparison table ordered by a
//! chosen metric; the training curves of the runs overlaid (train dashed, validation solid); the
//! study-level ROC curves with each AUC in the legend; the per-body-part study kappa of each run
//! beside the MURA paper's model; the study-level confusion matrices at 0.5 and at the
//! threshold chosen on validation; the study-level reliability diagrams; and DeLong's test of
//! every pair's study-level AUCs. Everything is recomputed from each run's `predictions.csv` and
//! `study_predictions.csv`; a run without them is evaluated first (as `mura evaluate` would).
//! No external style sheet, script or font: the page opens from disk anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mura_data::{BodyPart, Role};
use mura_metrics::{BinaryReport, Binning, DelongTest, Threshold, delong_test};
use serde::Serialize;

use crate::TrainError;
use crate::ensemble::EnsembleDef;
use crate::evaluate::{EvaluateOptions, evaluate, per_part};
use crate::history::{self, HistoryRow};
use crate::io::write_durable;
use crate::plot::{Legend, PALETTE, Panel, Series, curve_panels, render};
use crate::run::{Weights, files, load_threshold};
use crate::trained::Tta;

mod page;

use page::page;

/// The MURA paper's model, study-level Cohen's kappa on its hidden test set, per body part and
/// overall (Rajpurkar et al., 2017, table 2).
pub const PAPER_KAPPA: [(&str, f64); 8] = [
    ("elbow", 0.710),
    ("finger", 0.389),
    ("forearm", 0.737),
    ("hand", 0.851),
    ("humerus", 0.600),
    ("shoulder", 0.729),
    ("wrist", 0.931),
    ("all", 0.705),
];

/// Columns of the comparison table, any of which can order it.
pub const SORT_KEYS: [&str; 8] = [
    "study_auc",
    "study_kappa",
    "kappa_at_threshold",
    "study_accuracy",
    "study_f1",
    "study_sensitivity",
    "study_specificity",
    "image_auc",
];

/// How to build a report.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// One of [`SORT_KEYS`]; the table is ordered best first.
    pub sort_by: String,
    /// Threads for runs evaluated on the way.
    pub threads: usize,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            sort_by: "study_auc".into(),
            threads: 2,
        }
    }
}

/// One column of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub name: String,
    pub dir: PathBuf,
    /// `densenet121 @224`, or `ensemble (mean of 3)`.
    pub model: String,
    pub epochs: usize,
    pub best_val_auc: Option<f64>,
    #[serde(skip)]
    pub history: Vec<HistoryRow>,
    pub images: BinaryReport,
    pub studies: BinaryReport,
    pub study_parts: BTreeMap<String, BinaryReport>,
    pub threshold: Option<Threshold>,
    pub at_threshold: Option<BinaryReport>,
    /// Study-level ROC curve, (false positive rate, true positive rate).
    #[serde(skip)]
    pub roc: Vec<(f64, f64)>,
    /// Study-level Brier score and expected calibration error (10 equal-width bins).
    pub brier: f64,
    pub ece: f64,
    /// The study-level reliability diagram, (mean probability, share abnormal) per bin.
    #[serde(skip)]
    pub reliability: Vec<(f64, f64)>,
    /// Each study's (label, probability), for the pairwise tests.
    #[serde(skip)]
    pub study_probs: BTreeMap<String, (bool, f64)>,
}

/// DeLong's test of two entries' study-level AUCs on the studies both scored.
#[derive(Debug, Clone, Serialize)]
pub struct Pairwise {
    /// Indices into the entries, in the table's order.
    pub a: usize,
    pub b: usize,
    pub studies: usize,
    pub test: Option<DelongTest>,
}

impl Entry {
    /// The value of one of [`SORT_KEYS`].
    pub fn key(&self, key: &str) -> Option<f64> {
        let s = &self.studies;
        match key {
            "study_auc" => s.auc,
            "study_kappa" => s.kappa,
            "kappa_at_threshold" => self.at_threshold.as_ref().and_then(|r| r.kappa),
            "study_accuracy" => s.accuracy,
            "study_f1" => s.f1,
            "study_sensitivity" => s.recall,
            "study_specificity" => s.specificity,
            "image_auc" => self.images.auc,
            _ => None,
        }
    }
}

/// What `report` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ReportSummary {
    pub html: PathBuf,
    pub images: Vec<PathBuf>,
    /// The entries, in the table's order.
    pub entries: Vec<Entry>,
}

fn bad(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Config {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// One row of a predictions CSV: its first column (the study, or the image's path), label,
/// probability and body part.
type Row = (String, bool, f64, BodyPart);

/// The rows of a predictions CSV whose first column names the study or image and whose last
/// three are `body_part,label,probability`.
fn read_predictions(path: &Path) -> Result<Vec<Row>, TrainError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| bad(path, e.to_string()))?;
    let mut rows = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| bad(path, format!("line {line}: {e}")))?;
        let n = rec.len();
        let field = |k: usize| rec.get(n.wrapping_sub(k)).unwrap_or("");
        let part: BodyPart = field(3)
            .parse()
            .map_err(|e| bad(path, format!("line {line}: {e}")))?;
        let label = match field(2) {
            "0" => false,
            "1" => true,
            other => {
                return Err(bad(
                    path,
                    format!("line {line}: label `{other}` is not 0 or 1"),
                ));
            }
        };
        let p: f64 = field(1).parse().map_err(|_| {
            bad(
                path,
                format!("line {line}: probability `{}` is not a number", field(1)),
            )
        })?;
        rows.push((field(n).to_string(), label, p, part));
    }
    if rows.is_empty() {
        return Err(bad(path, "no predictions"));
    }
    Ok(rows)
}

fn split_columns(rows: &[Row]) -> (Vec<bool>, Vec<f64>) {
    rows.iter().map(|r| (r.1, r.2)).unzip()
}

/// Reads (or makes, by evaluating on the test split) one run's or ensemble's figures.
pub fn entry(dir: &Path, threads: usize) -> Result<Entry, TrainError> {
    let studies_csv = dir.join("study_predictions.csv");
    let images_csv = dir.join("predictions.csv");
    if !studies_csv.exists() || !images_csv.exists() {
        evaluate(
            dir,
            EvaluateOptions {
                role: Role::Test,
                weights: Weights::Final,
                resamples: 0,
                threads,
                tta: Tta::None,
            },
        )?;
    }
    let study_rows = read_predictions(&studies_csv)?;
    let image_rows = read_predictions(&images_csv)?;
    let t = mura_metrics::DEFAULT_THRESHOLD;
    let (sl, sp) = split_columns(&study_rows);
    let (il, ip) = split_columns(&image_rows);
    let studies = mura_metrics::evaluate(&sl, &sp, t)?;
    let images = mura_metrics::evaluate(&il, &ip, t)?;
    let parts: Vec<BodyPart> = study_rows.iter().map(|r| r.3).collect();
    let study_parts = per_part(&parts, &sl, &sp, |_, l, p| {
        Ok(mura_metrics::evaluate(l, p, t)?)
    })?;
    let threshold = load_threshold(dir)?;
    let at_threshold = match threshold {
        Some(th) => Some(mura_metrics::evaluate(&sl, &sp, th.value)?),
        None => None,
    };
    let diagram = mura_metrics::reliability(&sl, &sp, 10, Binning::EqualWidth)?;
    let ece = mura_metrics::calibration_error(&sl, &sp, 10, Binning::EqualWidth)?.expected;
    let roc = mura_metrics::roc_curve(&sl, &sp)?
        .unwrap_or_default()
        .iter()
        .map(|p| (p.false_positive_rate, p.true_positive_rate))
        .collect();
    let history_path = dir.join(files::HISTORY);
    let history = if history_path.exists() {
        history::read(&history_path)?
    } else {
        Vec::new()
    };
    let model = if dir.join(files::ENSEMBLE).exists() {
        // The definition is enough to describe it: no member is loaded.
        let def = EnsembleDef::load(dir)?;
        format!("ensemble ({} of {})", def.mode.as_str(), def.members.len())
    } else {
        let config = crate::config::RunConfig::load(&dir.join(files::CONFIG))?;
        format!("{} @{}", config.model.arch, config.model.input_size())
    };
    let name = dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    Ok(Entry {
        name,
        dir: dir.to_path_buf(),
        model,
        epochs: history.len(),
        best_val_auc: history
            .iter()
            .filter_map(|r| r.val_auc)
            .fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.max(v)))),
        history,
        images,
        studies,
        study_parts,
        threshold,
        at_threshold,
        roc,
        brier: mura_metrics::brier_score(&sl, &sp)?,
        ece,
        reliability: diagram
            .iter()
            .map(|b| (b.mean_probability, b.fraction_positive))
            .collect(),
        study_probs: study_rows
            .iter()
            .map(|r| (r.0.clone(), (r.1, r.2)))
            .collect(),
    })
}

/// DeLong's test for every pair of entries, on the studies both scored.
pub fn pairwise(entries: &[Entry]) -> Result<Vec<Pairwise>, TrainError> {
    let mut out = Vec::new();
    for a in 0..entries.len() {
        for b in a + 1..entries.len() {
            let (mut y, mut pa, mut pb) = (Vec::new(), Vec::new(), Vec::new());
            for (study, &(label, p)) in &entries[a].study_probs {
                if let Some(&(_, q)) = entries[b].study_probs.get(study) {
                    y.push(label);
                    pa.push(p);
                    pb.push(q);
                }
            }
            let test = match y.is_empty() {
                true => None,
                false => delong_test(&y, &pa, &pb, 0.95)?,
            };
            out.push(Pairwise {
                a,
                b,
                studies: y.len(),
                test,
            });
        }
    }
    Ok(out)
}

/// Writes `out/index.html`, `out/curves.png` (when some entry has a history) and `out/roc.png`.
pub fn report(
    dirs: &[PathBuf],
    out: &Path,
    options: &ReportOptions,
) -> Result<ReportSummary, TrainError> {
    if dirs.is_empty() {
        return Err(bad(out, "no runs to report on"));
    }
    if !SORT_KEYS.contains(&options.sort_by.as_str()) {
        return Err(bad(
            out,
            format!(
                "cannot sort by `{}`: not a column (one of: {})",
                options.sort_by,
                SORT_KEYS.join(", ")
            ),
        ));
    }
    let mut entries = dirs
        .iter()
        .map(|d| entry(d, options.threads))
        .collect::<Result<Vec<_>, _>>()?;
    // Best first; undefined values last.
    entries.sort_by(|a, b| {
        let (x, y) = (a.key(&options.sort_by), b.key(&options.sort_by));
        y.unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&x.unwrap_or(f64::NEG_INFINITY))
    });
    std::fs::create_dir_all(out).map_err(|e| TrainError::Unwritable {
        path: out.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut images = Vec::new();
    let with_history: Vec<(&str, &[HistoryRow])> = entries
        .iter()
        .filter(|e| !e.history.is_empty())
        .map(|e| (e.name.as_str(), e.history.as_slice()))
        .collect();
    let curves = !with_history.is_empty();
    if curves {
        let path = out.join("curves.png");
        write_durable(&path, &render(&curve_panels(&with_history), 2, (560, 380))?)?;
        images.push(path);
    }
    let roc_path = out.join("roc.png");
    let panels = [roc_panel(&entries), reliability_panel(&entries)];
    write_durable(&roc_path, &render(&panels, 2, (520, 480))?)?;
    images.push(roc_path);
    let tests = pairwise(&entries)?;
    let html = out.join("index.html");
    write_durable(&html, page(&entries, &tests, options, curves).as_bytes())?;
    Ok(ReportSummary {
        html,
        images,
        entries,
    })
}

/// The study-level reliability diagrams of the entries beside the diagonal of perfect
/// calibration.
fn reliability_panel(entries: &[Entry]) -> Panel {
    let mut series: Vec<Series> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| Series {
            label: format!("{} (ECE {:.3})", e.name, e.ece),
            points: e.reliability.clone(),
            color: PALETTE[i % PALETTE.len()],
            dashed: false,
        })
        .collect();
    series.push(Series {
        label: "calibrated".into(),
        points: vec![(0.0, 0.0), (1.0, 1.0)],
        color: plotters::style::RGBColor(150, 150, 150),
        dashed: true,
    });
    Panel {
        title: "Reliability, study level (test)".into(),
        x_label: "mean predicted probability".into(),
        y_label: "share abnormal".into(),
        series,
        y_range: Some((0.0, 1.0)),
        legend: Legend::LowerRight,
    }
}

fn roc_panel(entries: &[Entry]) -> Panel {
    let mut series: Vec<Series> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| Series {
            label: format!(
                "{} (AUC {})",
                e.name,
                e.studies.auc.map_or("n/a".into(), |a| format!("{a:.3}"))
            ),
            points: e.roc.clone(),
            color: PALETTE[i % PALETTE.len()],
            dashed: false,
        })
        .collect();
    series.push(Series {
        label: "chance".into(),
        points: vec![(0.0, 0.0), (1.0, 1.0)],
        color: plotters::style::RGBColor(150, 150, 150),
        dashed: true,
    });
    Panel {
        title: "ROC, study level (test)".into(),
        x_label: "1 - specificity".into(),
        y_label: "sensitivity".into(),
        series,
        y_range: Some((0.0, 1.0)),
        legend: Legend::LowerRight,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn predictions_are_read_with_quoted_fields_and_bad_lines_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("study_predictions.csv");
        std::fs::write(
            &p,
            "study,body_part,label,probability\n\"a,b\",XR_WRIST,1,0.900000\nc,XR_HAND,0,0.100000\n",
        )
        .unwrap();
        let rows = read_predictions(&p).unwrap();
        assert_eq!(
            rows,
            vec![
                ("a,b".to_string(), true, 0.9, BodyPart::Wrist),
                ("c".to_string(), false, 0.1, BodyPart::Hand)
            ]
        );
        std::fs::write(&p, "study,body_part,label,probability\nc,XR_HAND,2,0.1\n").unwrap();
        let err = read_predictions(&p).unwrap_err().to_string();
        assert!(err.contains("line 2: label `2`"), "{err}");
    }
}

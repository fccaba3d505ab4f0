//! `mura report`: one self-contained HTML page comparing runs (and ensembles), with the PNGs it
//! shows beside it.
//!
//! The page holds, for the test split (the official valid set): a comparison table ordered by a
//! chosen metric; the training curves of the runs overlaid (train dashed, validation solid); the
//! study-level ROC curves with each AUC in the legend; the per-body-part study kappa of each run
//! beside the MURA paper's model; and the study-level confusion matrices at 0.5 and at the
//! threshold chosen on validation. Everything is recomputed from each run's `predictions.csv` and
//! `study_predictions.csv`; a run without them is evaluated first (as `mura evaluate` would).
//! No external style sheet, script or font: the page opens from disk anywhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use mura_data::{BodyPart, Role};
use mura_metrics::{BinaryReport, Threshold};
use serde::Serialize;

use crate::TrainError;
use crate::ensemble::EnsembleDef;
use crate::evaluate::{EvaluateOptions, evaluate, per_part};
use crate::history::{self, HistoryRow};
use crate::io::write_durable;
use crate::plot::{Legend, PALETTE, Panel, Series, curve_panels, render};
use crate::run::{Weights, files, load_threshold};
use crate::trained::Tta;

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

/// `(label, probability, body part)` rows of a predictions CSV whose last three columns are
/// `body_part,label,probability`.
fn read_predictions(path: &Path) -> Result<Vec<(bool, f64, BodyPart)>, TrainError> {
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
        rows.push((label, p, part));
    }
    if rows.is_empty() {
        return Err(bad(path, "no predictions"));
    }
    Ok(rows)
}

fn split_columns(rows: &[(bool, f64, BodyPart)]) -> (Vec<bool>, Vec<f64>) {
    rows.iter().map(|r| (r.0, r.1)).unzip()
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
    let parts: Vec<BodyPart> = study_rows.iter().map(|r| r.2).collect();
    let study_parts = per_part(&parts, &sl, &sp, |_, l, p| {
        Ok(mura_metrics::evaluate(l, p, t)?)
    })?;
    let threshold = load_threshold(dir)?;
    let at_threshold = match threshold {
        Some(th) => Some(mura_metrics::evaluate(&sl, &sp, th.value)?),
        None => None,
    };
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
    })
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
    write_durable(&roc_path, &render(&[roc_panel(&entries)], 1, (560, 520))?)?;
    images.push(roc_path);
    let html = out.join("index.html");
    write_durable(&html, page(&entries, options, curves).as_bytes())?;
    Ok(ReportSummary {
        html,
        images,
        entries,
    })
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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn f3(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.3}"))
}

/// The page's only script: it says on the page when an image did not load (a moved report),
/// and records how many did in `data-images-loaded` for automated checks.
const SCRIPT: &str = r#"window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
  if (ok < imgs.length) {
    var p = document.createElement('p');
    p.className = 'warn';
    p.textContent = (imgs.length - ok) + ' image(s) did not load: keep the PNG files beside index.html.';
    document.body.insertBefore(p, document.body.firstChild);
  }
});"#;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}\
th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #ddd}\
.warn{background:#fee;border:1px solid #c00;padding:.5em}.cm{display:inline-block;margin-right:2em;vertical-align:top}\
.note{color:#666;font-size:90%}";

fn page(entries: &[Entry], options: &ReportOptions, curves: bool) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>mura report: {} run(s)</title>\n<style>{STYLE}</style>\n<script>{SCRIPT}</script>\n</head>\n<body>\n<h1>mura report</h1>\n<p class=\"note\">Test split (the official MURA valid set); a study's probability is the mean of its images'. Ordered by {}.</p>\n",
        entries.len(),
        esc(&options.sort_by)
    );
    // Comparison table.
    h.push_str("<h2>Comparison</h2>\n<table id=\"comparison\">\n<tr><th>#</th><th class=\"l\">run</th><th class=\"l\">model</th><th>epochs</th><th>best val AUC</th><th>study AUC</th><th>study κ @0.5</th><th>threshold</th><th>study κ @threshold</th><th>accuracy</th><th>sensitivity</th><th>specificity</th><th>F1</th><th>image AUC</th><th>studies</th></tr>\n");
    for (i, e) in entries.iter().enumerate() {
        let s = &e.studies;
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            i + 1,
            esc(&e.name),
            esc(&e.model),
            e.epochs,
            f3(e.best_val_auc),
            f3(s.auc),
            f3(s.kappa),
            e.threshold.map_or("–".into(), |t| format!(
                "{:.3} ({})",
                t.value,
                t.criterion.as_str()
            )),
            f3(e.at_threshold.as_ref().and_then(|r| r.kappa)),
            f3(s.accuracy),
            f3(s.recall),
            f3(s.specificity),
            f3(s.f1),
            f3(e.images.auc),
            s.n
        );
    }
    h.push_str("</table>\n");
    if curves {
        h.push_str("<h2>Training curves</h2>\n<p class=\"note\">Train dashed, validation solid.</p>\n<img src=\"curves.png\" alt=\"training curves: loss, AUC, accuracy and kappa by epoch\">\n");
    }
    h.push_str("<h2>ROC curves</h2>\n<img src=\"roc.png\" alt=\"study-level ROC curves\">\n");
    // Per body part kappa beside the paper.
    h.push_str("<h2>Study-level Cohen's κ per body part (threshold 0.5)</h2>\n<table id=\"kappa\">\n<tr><th class=\"l\">body part</th>");
    for e in entries {
        let _ = write!(h, "<th>{}</th>", esc(&e.name));
    }
    h.push_str("<th>MURA paper (test)</th></tr>\n");
    for (part, paper) in PAPER_KAPPA {
        let _ = write!(h, "<tr><td class=\"l\">{part}</td>");
        for e in entries {
            let k = if part == "all" {
                e.studies.kappa
            } else {
                e.study_parts.get(part).and_then(|r| r.kappa)
            };
            let _ = write!(h, "<td>{}</td>", f3(k));
        }
        let _ = writeln!(h, "<td>{paper:.3}</td></tr>");
    }
    h.push_str("</table>\n<p class=\"note\">The paper's figures are on MURA's hidden test set; ours on the public valid set.</p>\n");
    // Confusion matrices.
    h.push_str("<h2>Confusion matrices (studies)</h2>\n");
    for e in entries {
        let _ = writeln!(h, "<h3>{}</h3>", esc(&e.name));
        let mut cm = |title: String, r: &BinaryReport| {
            let c = &r.confusion;
            let _ = writeln!(
                h,
                "<div class=\"cm\"><table><tr><th class=\"l\">{}</th><th>predicted normal</th><th>predicted abnormal</th></tr><tr><th class=\"l\">normal</th><td>{}</td><td>{}</td></tr><tr><th class=\"l\">abnormal</th><td>{}</td><td>{}</td></tr></table></div>",
                esc(&title),
                c.true_negative,
                c.false_positive,
                c.false_negative,
                c.true_positive
            );
        };
        cm("threshold 0.5".into(), &e.studies);
        if let (Some(t), Some(r)) = (e.threshold, &e.at_threshold) {
            cm(
                format!(
                    "threshold {:.3} (max {} on val)",
                    t.value,
                    t.criterion.as_str()
                ),
                r,
            );
        }
    }
    h.push_str("</body>\n</html>\n");
    h
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn html_escapes_names() {
        assert_eq!(esc("a<b>&\"c\""), "a&lt;b&gt;&amp;&quot;c&quot;");
    }

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
            vec![(true, 0.9, BodyPart::Wrist), (false, 0.1, BodyPart::Hand)]
        );
        std::fs::write(&p, "study,body_part,label,probability\nc,XR_HAND,2,0.1\n").unwrap();
        let err = read_predictions(&p).unwrap_err().to_string();
        assert!(err.contains("line 2: label `2`"), "{err}");
    }
}

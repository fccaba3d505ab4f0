//! `mura cv`: k-fold cross-validation over patient-grouped, stratified folds of the official
//! train set.
//!
//! The folds come from [`mura_data::k_fold`] with the run's split seed, so the same config gives
//! the same folds. Fold `i` is an ordinary run (`<out>/<name>-cv<K>/fold-<i>/`) whose manifest
//! (`fold-<i>.csv`) puts fold `i` in validation and the others in training; the official valid set
//! stays the test set of every fold. Each fold is scored on its validation studies, and every
//! metric is reported as mean ± sample standard deviation (n - 1) over the folds, as the
//! seed-004 report (docs/recipes.md) gives its 67.46% ± 7.88%. An interrupted cross-validation
//! resumes: finished folds are kept, a started one resumes from its checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mura_data::rng::derive_seed;
use mura_data::{IndexOptions, Manifest, Role};
use serde::Serialize;

use crate::TrainError;
use crate::config::RunConfig;
use crate::evaluate::{EvaluateOptions, Evaluation, evaluate};
use crate::fit::{FitEnd, FitOptions};
use crate::io::write_durable;
use crate::observer::Observer;
use crate::run::{STREAM_SPLIT, Weights, create_run_dir, files};
use crate::train::train;
use crate::trained::Tta;

/// The metrics summarised over folds: study level on each fold's validation set, and image AUC.
pub const CV_METRICS: [&str; 7] = [
    "study_auc",
    "study_kappa",
    "study_accuracy",
    "study_f1",
    "study_sensitivity",
    "study_specificity",
    "image_auc",
];

/// One fold's result.
#[derive(Debug, Clone, Serialize)]
pub struct FoldResult {
    /// 1-based.
    pub fold: usize,
    pub run: PathBuf,
    pub val_images: usize,
    pub val_studies: usize,
    /// Each of [`CV_METRICS`] (absent when undefined).
    pub metrics: BTreeMap<&'static str, f64>,
}

/// Mean and sample standard deviation of a metric over the folds where it is defined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
    pub folds: usize,
}

/// What `cross_validate` produced.
#[derive(Debug, Clone, Serialize)]
pub struct CvSummary {
    pub dir: PathBuf,
    pub folds: Vec<FoldResult>,
    pub summary: BTreeMap<&'static str, MeanStd>,
    /// True when the run was interrupted before every fold finished.
    pub interrupted: bool,
}

/// Mean and sample standard deviation (n - 1; 0 for a single value).
pub fn mean_std(values: &[f64]) -> Option<MeanStd> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    Some(MeanStd {
        mean,
        std: var.sqrt(),
        folds: values.len(),
    })
}

fn fold_metrics(ev: &Evaluation) -> BTreeMap<&'static str, f64> {
    let s = &ev.studies.overall.report;
    let values = [
        s.auc,
        s.kappa,
        s.accuracy,
        s.f1,
        s.recall,
        s.specificity,
        ev.images.overall.report.auc,
    ];
    CV_METRICS
        .iter()
        .zip(values)
        .filter_map(|(&k, v)| v.map(|v| (k, v)))
        .collect()
}

/// The cross-validation folder of `config` under `out`.
pub fn cv_dir(config: &RunConfig, folds: usize, out: &Path) -> PathBuf {
    out.join(format!("{}-cv{folds}", config.run_name()))
}

/// Trains and scores `folds` runs of `config`.
pub fn cross_validate(
    config: &RunConfig,
    folds: usize,
    out: &Path,
    options: &FitOptions,
    observer: &mut dyn Observer,
) -> Result<CvSummary, TrainError> {
    config.check()?;
    if config.data.manifest.is_some() {
        return Err(TrainError::Config {
            path: PathBuf::new(),
            reason: "cross-validation makes its own folds: remove data.manifest".into(),
        });
    }
    let dir = cv_dir(config, folds, out);
    let unwritable = |path: &Path, e: std::io::Error| TrainError::Unwritable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(&dir).map_err(|e| unwritable(&dir, e))?;
    let folds_csv = dir.join("folds.csv");
    let manifest = if folds_csv.exists() {
        observer.message(&format!("reusing the folds of {}", folds_csv.display()));
        Manifest::load(&folds_csv)?
    } else {
        let root = config.data.root.as_deref().unwrap_or(Path::new(""));
        let indexed = mura_data::index(root, &IndexOptions::default())?;
        let parts = config.body_parts();
        let dataset = if parts.is_empty() {
            indexed.dataset
        } else {
            indexed.dataset.body_parts(&parts)
        };
        let m = mura_data::k_fold(&dataset, folds, derive_seed(config.seed, &[STREAM_SPLIT]))?;
        m.save(&folds_csv)?;
        m
    };
    let mut results = Vec::new();
    let mut interrupted = false;
    for f in 0..folds {
        let name = format!("fold-{}", f + 1);
        let run = dir.join(&name);
        let split = dir.join(format!("{name}.csv"));
        let mut fold_config = config.clone();
        fold_config.name = Some(name.clone());
        fold_config.data.manifest = Some(std::path::absolute(&split).unwrap_or(split.clone()));
        observer.message(&format!("fold {} of {folds}: {}", f + 1, run.display()));
        if !run.join(files::LAST).exists() {
            manifest.fold_as_val(f as u32).save(&split)?;
            create_run_dir(&fold_config, &dir)?;
        }
        let fold_config = RunConfig::load(&run.join(files::CONFIG))?;
        let summary = train(&fold_config, &run, options, observer)?;
        if let FitEnd::Interrupted { .. } = summary.end {
            interrupted = true;
            break;
        }
        let ev = evaluate(
            &run,
            EvaluateOptions {
                role: Role::Val,
                weights: Weights::Final,
                resamples: 0,
                threads: config.data.threads,
                tta: Tta::None,
            },
        )?;
        results.push(FoldResult {
            fold: f + 1,
            run,
            val_images: ev.images.overall.report.n,
            val_studies: ev.studies.overall.report.n,
            metrics: fold_metrics(&ev),
        });
    }
    let summary = CV_METRICS
        .iter()
        .filter_map(|&k| {
            let v: Vec<f64> = results
                .iter()
                .filter_map(|r| r.metrics.get(k).copied())
                .collect();
            mean_std(&v).map(|m| (k, m))
        })
        .collect();
    let cv = CvSummary {
        dir: dir.clone(),
        folds: results,
        summary,
        interrupted,
    };
    write_summary(&cv)?;
    Ok(cv)
}

/// Writes `cv.json` and `cv.csv` (one row per fold, then `mean` and `std`).
fn write_summary(cv: &CvSummary) -> Result<(), TrainError> {
    let json_path = cv.dir.join("cv.json");
    let json = serde_json::to_string_pretty(cv).map_err(|e| TrainError::Unwritable {
        path: json_path.clone(),
        reason: e.to_string(),
    })?;
    write_durable(&json_path, json.as_bytes())?;
    let mut csv = format!("fold,val_images,val_studies,{}\n", CV_METRICS.join(","));
    let cell = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
    for r in &cv.folds {
        let cells: Vec<String> = CV_METRICS
            .iter()
            .map(|k| cell(r.metrics.get(k).copied()))
            .collect();
        csv.push_str(&format!(
            "{},{},{},{}\n",
            r.fold,
            r.val_images,
            r.val_studies,
            cells.join(",")
        ));
    }
    for (label, pick) in [("mean", 0), ("std", 1)] {
        let cells: Vec<String> = CV_METRICS
            .iter()
            .map(|k| {
                cell(
                    cv.summary
                        .get(k)
                        .map(|m| if pick == 0 { m.mean } else { m.std }),
                )
            })
            .collect();
        csv.push_str(&format!("{label},,,{}\n", cells.join(",")));
    }
    write_durable(&cv.dir.join("cv.csv"), csv.as_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        let m = mean_std(&[0.6, 0.7, 0.8]).unwrap();
        assert!((m.mean - 0.7).abs() < 1e-12);
        assert!((m.std - 0.1).abs() < 1e-12);
        assert_eq!(m.folds, 3);
        assert_eq!(mean_std(&[0.5]).unwrap().std, 0.0);
        assert!(mean_std(&[]).is_none());
    }
}

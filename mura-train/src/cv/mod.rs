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
//!
//! On a cluster the folds are independent jobs ([`run_fold`], one per array task, see
//! [`jobs`]) and [`collect`] gathers them afterwards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mura_data::rng::derive_seed;
use mura_data::{IndexOptions, Manifest, Role};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::config::RunConfig;
use crate::evaluate::{EvaluateOptions, Evaluation, evaluate};
use crate::fit::{FitEnd, FitOptions};
use crate::io::{read_json, write_durable, write_json};
use crate::observer::Observer;
use crate::run::{STREAM_SPLIT, Weights, create_run_dir, files};
use crate::train::train;
use crate::trained::Tta;

pub mod jobs;

pub use jobs::{ArrayJob, Scheduler, array_job, array_task, emit, emit_array};

/// The folds of a cross-validation folder.
const FOLDS: &str = "folds.csv";
/// A finished fold's result, in its run directory.
const FOLD_RESULT: &str = "fold.json";

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldResult {
    /// 1-based.
    pub fold: usize,
    pub run: PathBuf,
    pub val_images: usize,
    pub val_studies: usize,
    /// Each of [`CV_METRICS`] (absent when undefined).
    pub metrics: BTreeMap<String, f64>,
}

/// Mean and sample standard deviation of a metric over the folds where it is defined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
    pub summary: BTreeMap<String, MeanStd>,
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

pub(crate) fn fold_metrics(ev: &Evaluation) -> BTreeMap<String, f64> {
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
        .filter_map(|(&k, v)| v.map(|v| (k.to_string(), v)))
        .collect()
}

/// The cross-validation folder of `config` under `out`.
pub fn cv_dir(config: &RunConfig, folds: usize, out: &Path) -> PathBuf {
    out.join(format!("{}-cv{folds}", config.run_name()))
}

/// Creates the cross-validation folder of `config` under `out` and its folds (`folds.csv`), or
/// reads the folds already there. The folds are a function of the config and its seed, written
/// atomically, so array tasks that start together agree on them.
pub fn prepare(
    config: &RunConfig,
    folds: usize,
    out: &Path,
    observer: &mut dyn Observer,
) -> Result<(PathBuf, Manifest), TrainError> {
    config.check()?;
    if config.data.manifest.is_some() {
        return Err(TrainError::Config {
            path: PathBuf::new(),
            reason: "cross-validation makes its own folds: remove data.manifest".into(),
        });
    }
    let dir = cv_dir(config, folds, out);
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::Unwritable {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    let folds_csv = dir.join(FOLDS);
    if folds_csv.exists() {
        observer.message(&format!("reusing the folds of {}", folds_csv.display()));
        return Ok((dir, Manifest::load(&folds_csv)?));
    }
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
    Ok((dir, m))
}

/// The run directory of fold `fold` (1-based) in the cross-validation folder `dir`.
pub fn fold_dir(dir: &Path, fold: usize) -> PathBuf {
    dir.join(format!("fold-{fold}"))
}

/// Trains and scores fold `fold` (1 to `folds`) of `config`: a run of its own, resumed when it
/// has a checkpoint; its result lands in `fold-<i>/fold.json`. `None` when interrupted.
pub fn run_fold(
    config: &RunConfig,
    folds: usize,
    out: &Path,
    fold: usize,
    options: &FitOptions,
    observer: &mut dyn Observer,
) -> Result<Option<FoldResult>, TrainError> {
    if fold == 0 || fold > folds {
        return Err(TrainError::Config {
            path: PathBuf::new(),
            reason: format!("fold {fold} does not exist: the folds are 1 to {folds}"),
        });
    }
    let (dir, manifest) = prepare(config, folds, out, observer)?;
    let name = format!("fold-{fold}");
    let run = fold_dir(&dir, fold);
    let split = dir.join(format!("{name}.csv"));
    let mut fold_config = config.clone();
    fold_config.name = Some(name.clone());
    fold_config.data.manifest = Some(std::path::absolute(&split).unwrap_or(split.clone()));
    observer.message(&format!("fold {fold} of {folds}: {}", run.display()));
    if !run.join(files::LAST).exists() {
        manifest.fold_as_val(fold as u32 - 1).save(&split)?;
        if !run.join(files::CONFIG).exists() {
            create_run_dir(&fold_config, &dir)?;
        }
    }
    let Some(ev) = train_and_validate(&run, options, observer)? else {
        return Ok(None);
    };
    let result = FoldResult {
        fold,
        run: run.clone(),
        val_images: ev.images.overall.report.n,
        val_studies: ev.studies.overall.report.n,
        metrics: fold_metrics(&ev),
    };
    write_json(&run.join(FOLD_RESULT), &result)?;
    Ok(Some(result))
}

/// Trains (or resumes) the run in `run` to its end and scores it on its validation studies
/// (no intervals); `None` when interrupted.
pub(crate) fn train_and_validate(
    run: &Path,
    options: &FitOptions,
    observer: &mut dyn Observer,
) -> Result<Option<Evaluation>, TrainError> {
    let config = RunConfig::load(&run.join(files::CONFIG))?;
    let summary = train(&config, run, options, observer)?;
    if let FitEnd::Interrupted { .. } = summary.end {
        return Ok(None);
    }
    let options = EvaluateOptions {
        role: Role::Val,
        weights: Weights::Final,
        resamples: 0,
        threads: config.data.threads,
        tta: Tta::None,
    };
    Ok(Some(evaluate(run, options)?))
}

/// Trains and scores the `folds` runs of `config` one after another, then summarises them.
pub fn cross_validate(
    config: &RunConfig,
    folds: usize,
    out: &Path,
    options: &FitOptions,
    observer: &mut dyn Observer,
) -> Result<CvSummary, TrainError> {
    let (dir, _) = prepare(config, folds, out, observer)?;
    let mut results = Vec::new();
    let mut interrupted = false;
    for fold in 1..=folds {
        match run_fold(config, folds, out, fold, options, observer)? {
            Some(r) => results.push(r),
            None => {
                interrupted = true;
                break;
            }
        }
    }
    let cv = summarise(dir, results, interrupted);
    write_summary(&cv)?;
    Ok(cv)
}

/// What `collect` found.
#[derive(Debug, Clone, Serialize)]
pub struct Collected {
    #[serde(flatten)]
    pub cv: CvSummary,
    /// Folds with no run directory yet.
    pub missing: Vec<usize>,
    /// Folds whose run started but left no result (still running, failed or cancelled).
    pub unfinished: Vec<usize>,
}

/// Gathers the finished folds of a cross-validation run as separate jobs (`run_fold`) into
/// `cv.json` and `cv.csv`, and says which folds are missing or unfinished.
pub fn collect(config: &RunConfig, folds: usize, out: &Path) -> Result<Collected, TrainError> {
    let dir = cv_dir(config, folds, out);
    if !dir.join(FOLDS).is_file() {
        return Err(TrainError::Input {
            path: dir,
            reason: "no fold has started here (no folds.csv): nothing to collect".into(),
        });
    }
    let (mut results, mut missing, mut unfinished) = (Vec::new(), Vec::new(), Vec::new());
    for fold in 1..=folds {
        let run = fold_dir(&dir, fold);
        match read_json::<FoldResult>(&run.join(FOLD_RESULT))? {
            Some(r) => results.push(r),
            None if run.is_dir() => unfinished.push(fold),
            None => missing.push(fold),
        }
    }
    let interrupted = !(missing.is_empty() && unfinished.is_empty());
    let cv = summarise(dir, results, interrupted);
    write_summary(&cv)?;
    Ok(Collected {
        cv,
        missing,
        unfinished,
    })
}

fn summarise(dir: PathBuf, folds: Vec<FoldResult>, interrupted: bool) -> CvSummary {
    let summary = CV_METRICS
        .iter()
        .filter_map(|&k| {
            let v: Vec<f64> = folds
                .iter()
                .filter_map(|r| r.metrics.get(k).copied())
                .collect();
            mean_std(&v).map(|m| (k.to_string(), m))
        })
        .collect();
    CvSummary {
        dir,
        folds,
        summary,
        interrupted,
    }
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
            .map(|k| cell(r.metrics.get(*k).copied()))
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
                        .get(*k)
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

//! Evaluation of a trained run and prediction on new images.
//!
//! `evaluate` scores a split of the run's manifest at image level and study level (a study's
//! probability is the mean of its images'), overall and per body part, with seeded percentile
//! bootstrap 95% intervals (studies resampled for study-level figures), and writes
//! `predictions.csv`, `study_predictions.csv` and the `evaluation` entry of `metrics.json`.

use std::collections::BTreeMap;
use std::path::Path;

use mura_data::{BodyPart, ImageRecord, PatientKey, Role};
use mura_metrics::{
    BinaryReport, Binning, BootstrapConfig, Criterion, Interval, MetricsError, ReliabilityBin,
    Threshold,
};
use serde::Serialize;

use crate::TrainError;
use crate::ensemble::{Predictor, inputs};
use crate::io::write_durable;
use crate::run::{Weights, files, store_threshold};
use crate::trained::Tta;

/// Chooses the decision threshold that maximises `criterion` over the validation studies (a
/// study's probability is the mean of its images') and stores it in `threshold.json`. `None` when
/// the validation studies admit no choice (one class, or one distinct probability).
pub fn choose_threshold(
    predictor: &Predictor,
    criterion: Criterion,
    threads: usize,
) -> Result<Option<Threshold>, TrainError> {
    let items = predictor.records(Role::Val)?;
    let probs = predictor.predict(&inputs(&items), threads, Tta::None)?;
    let keys: Vec<&str> = items.iter().map(|i| i.record.study_key()).collect();
    let labels: Vec<bool> = items.iter().map(|i| i.record.label).collect();
    let studies = mura_metrics::aggregate_studies(&keys, &labels, &probs)?;
    let s_labels: Vec<bool> = studies.iter().map(|s| s.label).collect();
    let s_probs: Vec<f64> = studies.iter().map(|s| s.probability).collect();
    let chosen = mura_metrics::choose_threshold(&s_labels, &s_probs, criterion)?;
    if let Some(t) = &chosen {
        store_threshold(predictor.dir(), t)?;
    }
    Ok(chosen)
}

/// A metric with its bootstrap interval.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub report: BinaryReport,
    /// 95% intervals of AUC, accuracy, kappa, F1, precision, recall, specificity (absent when the
    /// metric is undefined).
    pub intervals: BTreeMap<&'static str, Interval>,
}

/// Image-level or study-level scores, overall and per body part.
#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub overall: Scored,
    pub body_parts: BTreeMap<String, Scored>,
}

/// One image's prediction.
#[derive(Debug, Clone, Serialize)]
pub struct ImagePrediction {
    pub path: String,
    pub study: String,
    pub body_part: BodyPart,
    pub label: bool,
    pub probability: f64,
}

/// One study's prediction (mean of its images).
#[derive(Debug, Clone, Serialize)]
pub struct StudyPrediction {
    pub study: String,
    pub body_part: BodyPart,
    pub label: bool,
    pub probability: f64,
    pub images: usize,
}

/// What `evaluate` found.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub split: String,
    pub weights: Weights,
    pub tta: Tta,
    pub images: Level,
    pub studies: Level,
    /// The threshold chosen on validation, and the figures at it.
    pub threshold: Option<Threshold>,
    pub at_threshold: Option<AtThreshold>,
    /// How well the probabilities are calibrated, before and after the run's temperature.
    pub calibration: CalibrationReport,
    #[serde(skip)]
    pub image_predictions: Vec<ImagePrediction>,
    #[serde(skip)]
    pub study_predictions: Vec<StudyPrediction>,
}

/// Calibration of the probabilities at image and study level.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationReport {
    /// The temperature the probabilities were rescaled by; none for a run without one (and for
    /// an ensemble, whose members each apply their own).
    pub temperature: Option<f64>,
    pub studies: CalibrationLevel,
    pub images: CalibrationLevel,
}

/// The Brier score and calibration errors of one level, after the run's temperature and before.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationLevel {
    pub brier: f64,
    pub brier_before: f64,
    /// Expected calibration error over 10 equal-width bins.
    pub ece: f64,
    pub ece_before: f64,
    /// Maximum calibration error over the same bins.
    pub mce: f64,
    /// The reliability diagram of the calibrated probabilities (10 equal-width bins).
    pub reliability: Vec<ReliabilityBin>,
}

impl CalibrationLevel {
    fn of(labels: &[bool], calibrated: &[f64], raw: &[f64]) -> Result<Self, TrainError> {
        let bins = |p: &[f64]| mura_metrics::calibration_error(labels, p, 10, Binning::EqualWidth);
        let (after, before) = (bins(calibrated)?, bins(raw)?);
        Ok(Self {
            brier: mura_metrics::brier_score(labels, calibrated)?,
            brier_before: mura_metrics::brier_score(labels, raw)?,
            ece: after.expected,
            ece_before: before.expected,
            mce: after.maximum,
            reliability: mura_metrics::reliability(labels, calibrated, 10, Binning::EqualWidth)?,
        })
    }
}

/// Scores at the chosen threshold (no intervals).
#[derive(Debug, Clone, Serialize)]
pub struct AtThreshold {
    pub images: BinaryReport,
    pub studies: BinaryReport,
    /// Study level, per body part.
    pub study_body_parts: BTreeMap<String, BinaryReport>,
}

type Metric = fn(&[bool], &[f64]) -> Result<Option<f64>, MetricsError>;

fn scored<K: Ord>(
    labels: &[bool],
    probs: &[f64],
    clusters: &[K],
    seed: u64,
    resamples: usize,
) -> Result<Scored, TrainError> {
    let t = mura_metrics::DEFAULT_THRESHOLD;
    let report = mura_metrics::evaluate(labels, probs, t)?;
    let metrics: [(&'static str, Metric); 7] = [
        ("auc", |l, p| mura_metrics::roc_auc(l, p)),
        ("accuracy", |l, p| {
            mura_metrics::accuracy(l, p, mura_metrics::DEFAULT_THRESHOLD).map(Some)
        }),
        ("kappa", |l, p| {
            mura_metrics::cohen_kappa(l, p, mura_metrics::DEFAULT_THRESHOLD)
        }),
        ("f1", |l, p| {
            mura_metrics::f1(l, p, mura_metrics::DEFAULT_THRESHOLD)
        }),
        ("precision", |l, p| {
            mura_metrics::precision(l, p, mura_metrics::DEFAULT_THRESHOLD)
        }),
        ("recall", |l, p| {
            mura_metrics::recall(l, p, mura_metrics::DEFAULT_THRESHOLD)
        }),
        ("specificity", |l, p| {
            mura_metrics::specificity(l, p, mura_metrics::DEFAULT_THRESHOLD)
        }),
    ];
    let mut intervals = BTreeMap::new();
    if resamples > 0 {
        let cfg = BootstrapConfig {
            resamples,
            level: 0.95,
            seed,
        };
        for (name, f) in metrics {
            if let Some(i) = mura_metrics::cluster_bootstrap_ci(labels, probs, clusters, cfg, f)? {
                intervals.insert(name, i);
            }
        }
    }
    Ok(Scored { report, intervals })
}

/// Scores overall and per body part, with intervals that resample whole clusters (`clusters[i]`
/// is sample `i`'s: its study for images, its patient for studies).
fn level<K: Ord + Clone>(
    parts: &[BodyPart],
    labels: &[bool],
    probs: &[f64],
    clusters: &[K],
    seed: u64,
    resamples: usize,
) -> Result<Level, TrainError> {
    let overall = scored(labels, probs, clusters, seed, resamples)?;
    let mut body_parts = BTreeMap::new();
    for part in BodyPart::ALL {
        let idx: Vec<usize> = (0..parts.len()).filter(|&i| parts[i] == part).collect();
        if idx.is_empty() {
            continue;
        }
        let l: Vec<bool> = idx.iter().map(|&i| labels[i]).collect();
        let p: Vec<f64> = idx.iter().map(|&i| probs[i]).collect();
        let c: Vec<K> = idx.iter().map(|&i| clusters[i].clone()).collect();
        let s = scored(&l, &p, &c, seed ^ part.index() as u64, resamples)?;
        body_parts.insert(part.short().to_string(), s);
    }
    Ok(Level {
        overall,
        body_parts,
    })
}

/// `f(part, labels, probs)` of the samples of each body part present, keyed by the part's short
/// name.
pub fn per_part<T>(
    parts: &[BodyPart],
    labels: &[bool],
    probs: &[f64],
    mut f: impl FnMut(BodyPart, &[bool], &[f64]) -> Result<T, TrainError>,
) -> Result<BTreeMap<String, T>, TrainError> {
    let mut out = BTreeMap::new();
    for part in BodyPart::ALL {
        let idx: Vec<usize> = (0..parts.len()).filter(|&i| parts[i] == part).collect();
        if idx.is_empty() {
            continue;
        }
        let l: Vec<bool> = idx.iter().map(|&i| labels[i]).collect();
        let p: Vec<f64> = idx.iter().map(|&i| probs[i]).collect();
        out.insert(part.short().to_string(), f(part, &l, &p)?);
    }
    Ok(out)
}

/// How to evaluate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvaluateOptions {
    pub role: Role,
    pub weights: Weights,
    /// Bootstrap resamples for the intervals (0: none).
    pub resamples: usize,
    pub threads: usize,
    pub tta: Tta,
}

impl Default for EvaluateOptions {
    fn default() -> Self {
        Self {
            role: Role::Test,
            weights: Weights::Final,
            resamples: 1000,
            threads: 2,
            tta: Tta::None,
        }
    }
}

/// Scores the run or ensemble in `dir` on one role of its split and writes the prediction files
/// and `metrics.json` into that directory. The threshold chosen on validation is read from
/// `threshold.json`, or chosen now and stored when there is none.
pub fn evaluate(dir: &Path, options: EvaluateOptions) -> Result<Evaluation, TrainError> {
    let predictor = Predictor::open(dir, options.weights, None)?;
    let items = predictor.records(options.role)?;
    let probs = predictor.predict_both(&inputs(&items), options.threads, options.tta)?;
    let threshold = match predictor.threshold() {
        Some(t) => Some(t),
        None => choose_threshold(&predictor, predictor.criterion(), options.threads)?,
    };
    let options = EvaluateOptions {
        weights: predictor.weights(),
        ..options
    };
    let records: Vec<ImageRecord> = items.into_iter().map(|i| i.record).collect();
    let mut ev = score(
        &records,
        &probs.calibrated,
        options,
        predictor.seed(),
        threshold,
    )?;
    ev.calibration.temperature = match &predictor {
        Predictor::Run(r) => r.calibration.map(|c| c.temperature.temperature),
        Predictor::Ensemble(_) => None,
    };
    let raw_studies = study_probabilities(&records, &probs.raw)?;
    let labels: Vec<bool> = records.iter().map(|r| r.label).collect();
    let s_labels: Vec<bool> = ev.study_predictions.iter().map(|s| s.label).collect();
    let s_probs: Vec<f64> = ev.study_predictions.iter().map(|s| s.probability).collect();
    ev.calibration.images = CalibrationLevel::of(&labels, &probs.calibrated, &probs.raw)?;
    ev.calibration.studies = CalibrationLevel::of(&s_labels, &s_probs, &raw_studies)?;
    write_predictions(dir, &ev)?;
    let metrics_path = dir.join(files::METRICS);
    let mut metrics: serde_json::Value = std::fs::read_to_string(&metrics_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    let unwritable = |e: serde_json::Error| TrainError::Unwritable {
        path: metrics_path.clone(),
        reason: e.to_string(),
    };
    if let Some(obj) = metrics.as_object_mut() {
        obj.insert(
            format!("evaluation_{}", options.role.as_str()),
            serde_json::to_value(&ev).map_err(unwritable)?,
        );
    }
    let text = serde_json::to_string_pretty(&metrics).map_err(unwritable)?;
    write_durable(&metrics_path, text.as_bytes())?;
    Ok(ev)
}

/// Image- and study-level scores of `probs` for `records`.
pub fn score(
    records: &[ImageRecord],
    probs: &[f64],
    options: EvaluateOptions,
    seed: u64,
    threshold: Option<Threshold>,
) -> Result<Evaluation, TrainError> {
    let labels: Vec<bool> = records.iter().map(|r| r.label).collect();
    let parts: Vec<BodyPart> = records.iter().map(|r| r.body_part).collect();
    let keys: Vec<String> = records.iter().map(|r| r.study_key().to_string()).collect();
    let images = level(&parts, &labels, probs, &keys, seed, options.resamples)?;
    let studies = mura_metrics::aggregate_studies(&keys, &labels, probs)?;
    let part_of: BTreeMap<&str, (BodyPart, PatientKey)> = records
        .iter()
        .map(|r| (r.study_key(), (r.body_part, r.patient_key())))
        .collect();
    let study_predictions: Vec<StudyPrediction> = studies
        .iter()
        .map(|s| StudyPrediction {
            study: s.study.clone(),
            body_part: part_of[s.study.as_str()].0,
            label: s.label,
            probability: s.probability,
            images: s.images,
        })
        .collect();
    let s_labels: Vec<bool> = study_predictions.iter().map(|s| s.label).collect();
    let s_probs: Vec<f64> = study_predictions.iter().map(|s| s.probability).collect();
    let s_parts: Vec<BodyPart> = study_predictions.iter().map(|s| s.body_part).collect();
    let patients: Vec<PatientKey> = study_predictions
        .iter()
        .map(|s| part_of[s.study.as_str()].1)
        .collect();
    let study_level = level(
        &s_parts,
        &s_labels,
        &s_probs,
        &patients,
        seed ^ 0x5757,
        options.resamples,
    )?;
    let calibration = CalibrationReport {
        temperature: None,
        studies: CalibrationLevel::of(&s_labels, &s_probs, &s_probs)?,
        images: CalibrationLevel::of(&labels, probs, probs)?,
    };
    let at_threshold = match threshold {
        Some(t) => {
            let study_body_parts = per_part(&s_parts, &s_labels, &s_probs, |_, l, p| {
                Ok(mura_metrics::evaluate(l, p, t.value)?)
            })?;
            Some(AtThreshold {
                images: mura_metrics::evaluate(&labels, probs, t.value)?,
                studies: mura_metrics::evaluate(&s_labels, &s_probs, t.value)?,
                study_body_parts,
            })
        }
        None => None,
    };
    Ok(Evaluation {
        split: options.role.as_str().to_string(),
        weights: options.weights,
        tta: options.tta,
        images,
        studies: study_level,
        threshold,
        at_threshold,
        calibration,
        image_predictions: records
            .iter()
            .zip(probs)
            .map(|(r, &p)| ImagePrediction {
                path: r.path.clone(),
                study: r.study_key().to_string(),
                body_part: r.body_part,
                label: r.label,
                probability: p,
            })
            .collect(),
        study_predictions,
    })
}

/// The mean probability of each study of `records`, in the order `aggregate_studies` gives.
fn study_probabilities(records: &[ImageRecord], probs: &[f64]) -> Result<Vec<f64>, TrainError> {
    let keys: Vec<&str> = records.iter().map(|r| r.study_key()).collect();
    let labels: Vec<bool> = records.iter().map(|r| r.label).collect();
    let studies = mura_metrics::aggregate_studies(&keys, &labels, probs)?;
    Ok(studies.iter().map(|s| s.probability).collect())
}

/// Writes `predictions.csv` (`path,study,body_part,label,probability`) and
/// `study_predictions.csv` (`study,body_part,label,probability`) of a test evaluation;
/// `predictions_val.csv` and `study_predictions_val.csv` of a validation one.
pub fn write_predictions(dir: &Path, ev: &Evaluation) -> Result<(), TrainError> {
    let suffix = if ev.split == Role::Test.as_str() {
        String::new()
    } else {
        format!("_{}", ev.split)
    };
    let mut images = String::from("path,study,body_part,label,probability\n");
    for p in &ev.image_predictions {
        images.push_str(&format!(
            "{},{},{},{},{:.6}\n",
            csv_field(&p.path),
            csv_field(&p.study),
            p.body_part.folder(),
            u8::from(p.label),
            p.probability
        ));
    }
    write_durable(
        &dir.join(format!("predictions{suffix}.csv")),
        images.as_bytes(),
    )?;
    let mut studies = String::from("study,body_part,label,probability\n");
    for s in &ev.study_predictions {
        studies.push_str(&format!(
            "{},{},{},{:.6}\n",
            csv_field(&s.study),
            s.body_part.folder(),
            u8::from(s.label),
            s.probability
        ));
    }
    write_durable(
        &dir.join(format!("study_predictions{suffix}.csv")),
        studies.as_bytes(),
    )
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

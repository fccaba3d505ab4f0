//! Evaluation of a trained run and prediction on new images.
//!
//! `evaluate` scores a split of the run's manifest at image level and study level (a study's
//! probability is the mean of its images'), overall and per body part, with seeded percentile
//! bootstrap 95% intervals (studies resampled for study-level figures), and writes
//! `predictions.csv`, `study_predictions.csv` and the `evaluation` entry of `metrics.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use candle_nn::VarMap;
use mura_augment::View;
use mura_data::{BodyPart, ImageRecord, Role};
use mura_metrics::{BinaryReport, BootstrapConfig, Criterion, Interval, MetricsError, Threshold};
use mura_models::Model;
use mura_models::checkpoint::{self, LoadOptions};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::config::RunConfig;
use crate::ensemble::{Predictor, inputs};
use crate::epoch::{Example, batches, predict};
use crate::fit::{device, files, loader, pipelines};
use crate::state::{OPTIM_PREFIX, write_durable};

/// Which checkpoint of a run to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weights {
    /// The weights the run ended with: the best epoch's (Keras' `restore_best_weights`), unless
    /// `train.early_stopping.restore_best = false`, then the last epoch's.
    #[default]
    Final,
    /// `best.safetensors` (the monitored quantity's best epoch).
    Best,
    /// `last.safetensors` (the last epoch).
    Last,
}

impl Weights {
    /// `Best` or `Last`: what this choice means for a run configured by `config`.
    pub fn resolve(self, config: &RunConfig) -> Weights {
        match self {
            Weights::Final => match config.train.early_stopping {
                Some(es) if !es.restore_best => Weights::Last,
                _ => Weights::Best,
            },
            w => w,
        }
    }

    /// The checkpoint file of this choice in a run configured by `config`.
    pub fn file(self, config: &RunConfig) -> &'static str {
        match self.resolve(config) {
            Weights::Last => files::LAST,
            _ => files::BEST,
        }
    }
}

/// Test-time augmentation: each image is predicted through several views and the probabilities
/// averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tta {
    /// The image as it is.
    #[default]
    None,
    /// The image and its mirror image.
    Hflip,
    /// The image rotated by each of [`TTA_ANGLES`] and not at all.
    Rot,
    /// Every combination of the two: six views.
    HflipRot,
}

/// The rotations of [`Tta::Rot`], in degrees.
pub const TTA_ANGLES: [f32; 2] = [-10.0, 10.0];

impl Tta {
    /// `none`, `hflip`, `rot` or `hflip+rot`.
    pub fn parse(text: &str) -> Result<Self, TrainError> {
        match text {
            "none" => Ok(Tta::None),
            "hflip" => Ok(Tta::Hflip),
            "rot" => Ok(Tta::Rot),
            "hflip+rot" | "rot+hflip" => Ok(Tta::HflipRot),
            other => Err(TrainError::Config {
                path: PathBuf::new(),
                reason: format!(
                    "unknown test-time augmentation `{other}` (none, hflip, rot, hflip+rot)"
                ),
            }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tta::None => "none",
            Tta::Hflip => "hflip",
            Tta::Rot => "rot",
            Tta::HflipRot => "hflip+rot",
        }
    }

    /// The views whose probabilities are averaged; the first is the identity.
    pub fn views(self) -> Vec<View> {
        let flips: &[bool] = match self {
            Tta::Hflip | Tta::HflipRot => &[false, true],
            _ => &[false],
        };
        let angles: Vec<f32> = match self {
            Tta::Rot | Tta::HflipRot => std::iter::once(0.0).chain(TTA_ANGLES).collect(),
            _ => vec![0.0],
        };
        flips
            .iter()
            .flat_map(|&hflip| {
                angles.iter().map(move |&angle_degrees| View {
                    hflip,
                    angle_degrees,
                })
            })
            .collect()
    }
}

/// A trained run, ready to predict.
pub struct TrainedRun {
    pub dir: PathBuf,
    pub config: RunConfig,
    pub model: Model,
    pub varmap: VarMap,
    pub device: Device,
    /// The decision threshold chosen on validation (`threshold.json`), when there is one.
    pub threshold: Option<Threshold>,
    /// The checkpoint loaded: `Best` or `Last`.
    pub weights: Weights,
}

impl std::fmt::Debug for TrainedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainedRun")
            .field("dir", &self.dir)
            .field("arch", &self.model.arch())
            .finish_non_exhaustive()
    }
}

impl TrainedRun {
    /// Opens a run directory: its `config.toml` and the chosen checkpoint.
    pub fn open(
        dir: &Path,
        weights: Weights,
        device_spec: Option<&str>,
    ) -> Result<Self, TrainError> {
        let config = RunConfig::load(&dir.join(files::CONFIG))?;
        let dev = device(device_spec.unwrap_or(&config.device))?;
        let (model, varmap) = Model::with_seed(&config.model, config.seed, &dev)?;
        let path = dir.join(weights.file(&config));
        if !path.exists() {
            return Err(TrainError::BadCheckpoint {
                path,
                reason: "missing: the run has not finished an epoch".into(),
            });
        }
        checkpoint::load(
            &model,
            &varmap,
            &path,
            LoadOptions {
                ignore_prefix: Some(OPTIM_PREFIX),
                ..LoadOptions::default()
            },
        )?;
        // A trained run only predicts: no autograd graph, BatchNorm folded where it can be (see
        // `Model::for_inference`).
        let model = model.for_inference(&varmap)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            threshold: load_threshold(dir)?,
            weights: weights.resolve(&config),
            config,
            model,
            varmap,
            device: dev,
        })
    }

    /// Eval-mode probabilities of `paths`, in their order, averaged over the views of `tta`.
    pub fn predict_paths(
        &self,
        paths: &[PathBuf],
        threads: usize,
        tta: Tta,
    ) -> Result<Vec<f64>, TrainError> {
        let views = tta.views();
        let mut sum = vec![0.0; paths.len()];
        for view in &views {
            for (s, p) in sum
                .iter_mut()
                .zip(self.predict_view(paths, threads, *view)?)
            {
                *s += p;
            }
        }
        Ok(sum.into_iter().map(|s| s / views.len() as f64).collect())
    }

    fn predict_view(
        &self,
        paths: &[PathBuf],
        threads: usize,
        view: View,
    ) -> Result<Vec<f64>, TrainError> {
        let examples: Arc<Vec<Example>> = Arc::new(
            paths
                .iter()
                .map(|p| Example {
                    path: p.clone(),
                    label: false,
                    weight: 1.0,
                })
                .collect(),
        );
        let (_, eval) = pipelines(&self.config, &self.model)?;
        let eval = eval.with_view(view)?;
        let mut lc = loader(&self.config, false);
        lc.threads = threads.max(1);
        let bs = self
            .config
            .train
            .eval_batch_size
            .unwrap_or(self.config.train.batch_size);
        let mut out = vec![f64::NAN; paths.len()];
        for (i, p) in predict(
            &self.model,
            batches(&examples, &eval, lc, 0, bs, &self.device)?,
        )? {
            out[i] = p;
        }
        Ok(out)
    }
}

/// The stored threshold of a run or ensemble directory, if one was chosen.
pub fn load_threshold(dir: &Path) -> Result<Option<Threshold>, TrainError> {
    let path = dir.join(files::THRESHOLD);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| TrainError::Config {
                path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TrainError::Config {
            path,
            reason: e.to_string(),
        }),
    }
}

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
    if let Some(t) = chosen {
        let path = predictor.dir().join(files::THRESHOLD);
        let text = serde_json::to_string_pretty(&t).map_err(|e| TrainError::Unwritable {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_durable(&path, text.as_bytes())?;
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
    #[serde(skip)]
    pub image_predictions: Vec<ImagePrediction>,
    #[serde(skip)]
    pub study_predictions: Vec<StudyPrediction>,
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

fn scored(
    labels: &[bool],
    probs: &[f64],
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
            if let Some(i) = mura_metrics::bootstrap_ci(labels, probs, cfg, f)? {
                intervals.insert(name, i);
            }
        }
    }
    Ok(Scored { report, intervals })
}

fn level(
    parts: &[BodyPart],
    labels: &[bool],
    probs: &[f64],
    seed: u64,
    resamples: usize,
) -> Result<Level, TrainError> {
    let overall = scored(labels, probs, seed, resamples)?;
    let body_parts = per_part(parts, labels, probs, |part, l, p| {
        scored(l, p, seed ^ part.index() as u64, resamples)
    })?;
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
    let probs = predictor.predict(&inputs(&items), options.threads, options.tta)?;
    let threshold = match predictor.threshold() {
        Some(t) => Some(t),
        None => choose_threshold(&predictor, predictor.criterion(), options.threads)?,
    };
    let options = EvaluateOptions {
        weights: predictor.weights(),
        ..options
    };
    let records: Vec<ImageRecord> = items.into_iter().map(|i| i.record).collect();
    let ev = score(&records, &probs, options, predictor.seed(), threshold)?;
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
    let images = level(&parts, &labels, probs, seed, options.resamples)?;
    let keys: Vec<String> = records.iter().map(|r| r.study_key().to_string()).collect();
    let studies = mura_metrics::aggregate_studies(&keys, &labels, probs)?;
    let part_of: BTreeMap<&str, BodyPart> = records
        .iter()
        .map(|r| (r.study_key(), r.body_part))
        .collect();
    let study_predictions: Vec<StudyPrediction> = studies
        .iter()
        .map(|s| StudyPrediction {
            study: s.study.clone(),
            body_part: part_of[s.study.as_str()],
            label: s.label,
            probability: s.probability,
            images: s.images,
        })
        .collect();
    let s_labels: Vec<bool> = study_predictions.iter().map(|s| s.label).collect();
    let s_probs: Vec<f64> = study_predictions.iter().map(|s| s.probability).collect();
    let s_parts: Vec<BodyPart> = study_predictions.iter().map(|s| s.body_part).collect();
    let study_level = level(
        &s_parts,
        &s_labels,
        &s_probs,
        seed ^ 0x5757,
        options.resamples,
    )?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::EarlyStoppingSettings;
    use crate::policy::Monitor;

    #[test]
    fn final_weights_follow_restore_best() {
        let mut c =
            RunConfig::parse("[data]\nroot = \"data\"\n[model]\narch = \"custom-cnn\"\n").unwrap();
        assert_eq!(Weights::Final.resolve(&c), Weights::Best);
        let mut es = EarlyStoppingSettings {
            monitor: Monitor::ValAuc,
            patience: 3,
            min_delta: 0.0,
            restore_best: true,
        };
        c.train.early_stopping = Some(es);
        assert_eq!(Weights::Final.file(&c), files::BEST);
        es.restore_best = false;
        c.train.early_stopping = Some(es);
        assert_eq!(Weights::Final.resolve(&c), Weights::Last);
        assert_eq!(Weights::Best.resolve(&c), Weights::Best);
    }
}

//! A whole training run: data split, model, optimiser, epochs with validation, epoch-end policies,
//! checkpoints and the run directory, interruptible at any batch boundary and resumable.
//!
//! Run directory (`<out>/<name>/`):
//! `config.toml` (resolved), `split.csv` (the manifest), `history.csv`, `best.safetensors` (model
//! only), `last.safetensors` (model, optimiser state and [`TrainState`]), `metrics.json`, and
//! `curves.png`. Every file is written to a temporary name and renamed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::Device;
use candle_nn::VarMap;
use mura_augment::{Normalize, Pipeline, Preprocess};
use mura_data::Role;
use mura_data::rng::derive_seed;
use mura_data::{
    BodyPart, ClassWeights, ImageRecord, IndexOptions, Loader, LoaderConfig, Manifest, SplitConfig,
};
use mura_models::checkpoint::{self, LoadOptions};
use mura_models::hub;
use mura_models::{Model, Trainable};
use serde::Serialize;

use crate::TrainError;
use crate::cache::FeatureCache;
use crate::config::{ClassWeighting, Freeze, RunConfig};
use crate::epoch::{
    Batch, EpochEnd, EpochProgress, Example, batches, batches_from, train_epoch_with,
};
use crate::history::{self, HistoryRow};
use crate::lock::RunLock;
use crate::optim::{Optim, OptimizerConfig};
use crate::policy::{EarlyStopping, Monitor, Plateau, StopDecision};
use crate::state::{self, OPTIM_PREFIX, TrainState};

/// File names inside a run directory.
pub mod files {
    pub const CONFIG: &str = "config.toml";
    pub const SPLIT: &str = "split.csv";
    pub const HISTORY: &str = "history.csv";
    pub const BEST: &str = "best.safetensors";
    pub const LAST: &str = "last.safetensors";
    pub const METRICS: &str = "metrics.json";
    pub const CURVES: &str = "curves.png";
    pub const THRESHOLD: &str = "threshold.json";
    /// Marks an ensemble directory (instead of `config.toml`).
    pub const ENSEMBLE: &str = "ensemble.toml";
}

/// Streams of the run's one seed.
pub(crate) const STREAM_SPLIT: u64 = 1;
const STREAM_LOADER: u64 = 2;
const STREAM_AUGMENT: u64 = 3;

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn device(spec: &str) -> Result<Device, TrainError> {
    let bad = |reason: String| TrainError::Device {
        spec: spec.to_string(),
        reason,
    };
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let n = s
                .strip_prefix("cuda:")
                .map(|n| n.parse::<usize>())
                .transpose()
                .map_err(|_| bad("the device number must be a whole number".into()))?
                .unwrap_or(0);
            Device::new_cuda(n).map_err(|e| {
                bad(if cfg!(feature = "cuda") {
                    e.to_string()
                } else {
                    "this build has no CUDA support; rebuild with `--features cuda`".into()
                })
            })
        }
        _ => Err(bad("expected `cpu` or `cuda:N`".into())),
    }
}

/// The images of a run and the folder their paths are relative to.
#[derive(Debug, Clone)]
pub struct RunData {
    pub base: PathBuf,
    pub manifest: Manifest,
}

impl RunData {
    /// Indexes the data root (or reads the manifest), keeps the configured body parts and splits:
    /// validation is a patient-grouped, stratified share of the official train set; the test set is
    /// the official valid set.
    pub fn prepare(config: &RunConfig) -> Result<Self, TrainError> {
        let root = config
            .data
            .root
            .as_deref()
            .ok_or_else(|| TrainError::Config {
                path: PathBuf::new(),
                reason: "data.root is not set".into(),
            })?;
        let parts = config.body_parts();
        let (base, manifest) = match &config.data.manifest {
            Some(m) => {
                let (base, _) = mura_data::locate(root)?;
                (base, Manifest::load(m)?)
            }
            None => {
                let indexed = mura_data::index(root, &IndexOptions::default())?;
                let dataset = if parts.is_empty() {
                    indexed.dataset
                } else {
                    indexed.dataset.body_parts(&parts)
                };
                let split = SplitConfig {
                    val_fraction: config.data.val_fraction,
                    seed: derive_seed(config.seed, &[STREAM_SPLIT]),
                };
                (
                    dataset.base().to_path_buf(),
                    mura_data::train_val_test(&dataset, &split)?,
                )
            }
        };
        let manifest = if parts.is_empty() {
            manifest
        } else {
            manifest.body_parts(&parts)
        };
        let data = Self { base, manifest };
        for role in [Role::Train, Role::Val] {
            if data.manifest.role(role).next().is_none() {
                return Err(TrainError::Config {
                    path: PathBuf::new(),
                    reason: format!("the {} set is empty", role.as_str()),
                });
            }
        }
        Ok(data)
    }

    pub fn records(&self, role: Role) -> Vec<ImageRecord> {
        self.manifest.role(role).cloned().collect()
    }

    /// The examples of a role, weighted by `weights` (per body part) or 1.
    pub fn examples(
        &self,
        role: Role,
        weights: Option<&BTreeMap<BodyPart, ClassWeights>>,
    ) -> Vec<Example> {
        self.manifest
            .role(role)
            .map(|r| Example {
                path: r.file(&self.base),
                label: r.label,
                weight: weights
                    .and_then(|w| w.get(&r.body_part))
                    .map_or(1.0, |w| w.for_label(r.label) as f32),
            })
            .collect()
    }
}

/// Class weights per body part for the training images.
pub fn class_weights(
    weighting: ClassWeighting,
    train: &[ImageRecord],
) -> Result<Option<BTreeMap<BodyPart, ClassWeights>>, TrainError> {
    Ok(match weighting {
        ClassWeighting::None => None,
        ClassWeighting::Balanced => {
            let w = mura_data::balanced_weights(train)?;
            Some(BodyPart::ALL.iter().map(|&p| (p, w)).collect())
        }
        ClassWeighting::Paper => Some(mura_data::paper_weights(train)?),
    })
}

/// The preprocessing a model expects: its input size and channels, its normalisation.
pub fn preprocess(config: &RunConfig, model: &Model) -> Preprocess {
    let cfg = model.pretrained_cfg();
    let size = config.model.input_size() as u32;
    Preprocess {
        width: size,
        height: size,
        mode: config.data.resize,
        filter: config.data.filter,
        channels: config.model.in_channels,
        normalize: Normalize {
            mean: cfg.mean,
            std: cfg.std,
        },
    }
}

/// The train-time and evaluation pipelines of a run.
pub fn pipelines(config: &RunConfig, model: &Model) -> Result<(Pipeline, Pipeline), TrainError> {
    let pre = preprocess(config, model);
    let seed = derive_seed(config.seed, &[STREAM_AUGMENT]);
    let augment = config.data.augment.config();
    let train = Pipeline::new(pre, augment, seed)?;
    // Evaluation keeps the always-on steps (windowing, CLAHE at probability 1): preprocessing.
    let eval = Pipeline::new(pre, augment.always(), seed)?;
    Ok((train, eval))
}

/// The loader settings of a run: shuffled for training, in file order for evaluation.
pub fn loader(config: &RunConfig, shuffle: bool) -> LoaderConfig {
    LoaderConfig {
        threads: config.data.threads,
        seed: derive_seed(config.seed, &[STREAM_LOADER]),
        shuffle,
        ..LoaderConfig::default()
    }
}

/// What happens during a run, for progress bars and logs. Every method has an empty default.
pub trait Observer {
    /// A message about a step of the run (data split, model, resume).
    fn message(&mut self, _text: &str) {}
    /// An epoch's training starts: `images` to go, `done` already done (a resumed epoch).
    fn epoch_start(&mut self, _epoch: u32, _epochs: u32, _images: usize, _done: usize) {}
    /// A training step ended.
    fn batch(&mut self, _progress: &EpochProgress) {}
    /// Validation of an epoch starts.
    fn eval_start(&mut self, _images: usize) {}
    /// An epoch ended.
    fn epoch_end(&mut self, _row: &HistoryRow, _improved: bool) {}
}

/// An observer that says nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Observer for Silent {}

/// How to run `fit`.
#[derive(Debug, Clone, Default)]
pub struct FitOptions {
    /// Set (by a Ctrl-C handler) to stop at the next batch boundary and save the last state.
    pub stop: Option<Arc<AtomicBool>>,
    /// Stop as if interrupted once the run has taken this many optimiser steps (for tests).
    pub stop_after_steps: Option<u64>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum FitEnd {
    /// All epochs ran, or early stopping ended the run: the reason.
    Finished(String),
    /// Stopped at a batch boundary; `mura train --resume` continues.
    Interrupted { epoch: u32, step: u64 },
}

/// The result of [`fit`].
#[derive(Debug, Clone, Serialize)]
pub struct FitSummary {
    pub run_dir: PathBuf,
    pub end: FitEnd,
    pub epochs_done: u32,
    pub best: Option<(f64, u32)>,
    pub monitor: Monitor,
    pub history: Vec<HistoryRow>,
    pub seconds: f64,
}

/// Creates a new run directory for `config` under `out` and returns it; the directory must not
/// already hold a run that started training (one that failed before its first checkpoint, e.g.
/// on a wrong data root, is started afresh). The resolved config is written first, which also
/// proves the folder writable.
pub fn create_run_dir(config: &RunConfig, out: &Path) -> Result<PathBuf, TrainError> {
    let dir = out.join(config.run_name());
    if dir.join(files::LAST).exists() {
        return Err(TrainError::RunExists { path: dir });
    }
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::Unwritable {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    // Checked again under the lock: another process may have started this run meanwhile.
    let _lock = RunLock::acquire(&dir)?;
    if dir.join(files::LAST).exists() {
        return Err(TrainError::RunExists { path: dir });
    }
    let mut resolved = config.clone();
    for p in [&mut resolved.data.root, &mut resolved.data.manifest]
        .into_iter()
        .flatten()
    {
        if let Ok(abs) = std::path::absolute(&*p) {
            *p = abs;
        }
    }
    // A weights file (not a registry tag) is kept as an absolute path too.
    if let Some(p) = &mut resolved.pretrained
        && p.weights.exists()
        && let Ok(abs) = std::path::absolute(&p.weights)
    {
        p.weights = abs;
    }
    state::write_durable(&dir.join(files::CONFIG), resolved.to_toml()?.as_bytes())?;
    Ok(dir)
}

/// The file behind `pretrained.weights`: a path to a `.safetensors` file, or a tag of the weights
/// registry (`densenet169.tv_in1k`) read from the local hub cache, digest-checked; an absent tag
/// names the `cargo xtask fetch-weights` command to run.
pub fn pretrained_file(weights: &Path) -> Result<PathBuf, TrainError> {
    if weights.exists() {
        return Ok(weights.to_path_buf());
    }
    let registry = hub::Registry::builtin()?;
    let tag = weights.to_string_lossy();
    if registry.get(&tag).is_ok() {
        return Ok(hub::Hub::from_env().resolve(&registry, &tag)?);
    }
    Err(TrainError::Config {
        path: weights.to_path_buf(),
        reason: format!(
            "pretrained weights: no such file, and not a known tag ({})",
            registry.tags().join(", ")
        ),
    })
}

/// The freezing of `stage` of a run.
fn trainable(config: &RunConfig, stage: u32) -> Trainable {
    match (&config.train.fine_tune, stage) {
        (Some(_), 0) => Trainable::Head,
        (Some(f), _) => f.from.clone().map_or(Trainable::All, Trainable::From),
        (None, _) => match &config.train.freeze {
            Freeze::None => Trainable::All,
            Freeze::Backbone => Trainable::Head,
            Freeze::Before(s) => Trainable::From(s.clone()),
        },
    }
}

/// The optimiser of `stage`: the configured one, at the fine-tuning rate in stage 1.
fn optimizer(config: &RunConfig, stage: u32) -> OptimizerConfig {
    let mut o = config.train.optimizer.clone();
    if let (Some(f), 1) = (&config.train.fine_tune, stage) {
        o.set_lr(f.lr);
    }
    o
}

fn monitored(monitor: Monitor, row: &HistoryRow) -> f64 {
    match monitor {
        Monitor::ValLoss => row.val_loss,
        Monitor::ValAuc => row.val_auc.unwrap_or(f64::NAN),
        Monitor::ValKappa => row.val_kappa.unwrap_or(f64::NAN),
    }
}

/// (unweighted loss, AUC, accuracy, kappa) of one pass.
type Scores = (f64, Option<f64>, Option<f64>, Option<f64>);

/// Probability metrics of one pass.
fn scores(examples: &[Example], predictions: &[(usize, f64)]) -> Result<Scores, TrainError> {
    let labels: Vec<bool> = predictions
        .iter()
        .map(|(i, _)| examples[*i].label)
        .collect();
    // Clamp so a saturated sigmoid (exactly 0 or 1 in f32) gives a finite loss.
    let probs: Vec<f64> = predictions
        .iter()
        .map(|(_, p)| p.clamp(1e-7, 1.0 - 1e-7))
        .collect();
    if labels.is_empty() {
        return Ok((f64::NAN, None, None, None));
    }
    let t = mura_metrics::DEFAULT_THRESHOLD;
    Ok((
        mura_metrics::binary_cross_entropy(&labels, &probs, None)?,
        mura_metrics::roc_auc(&labels, &probs)?,
        Some(mura_metrics::accuracy(&labels, &probs, t)?),
        mura_metrics::cohen_kappa(&labels, &probs, t)?,
    ))
}

/// When to save `last.safetensors` inside an epoch: every `train.checkpoint_steps` steps and
/// every `train.checkpoint_minutes` minutes.
struct CheckpointClock {
    steps: Option<u64>,
    every: Option<std::time::Duration>,
    last_step: u64,
    last_time: Instant,
}

impl CheckpointClock {
    fn new(t: &crate::config::TrainConfig, step: u64) -> Self {
        CheckpointClock {
            steps: t.checkpoint_steps,
            every: (t.checkpoint_minutes > 0.0)
                .then(|| std::time::Duration::from_secs_f64(t.checkpoint_minutes * 60.0)),
            last_step: step,
            last_time: Instant::now(),
        }
    }

    fn due(&self, step: u64) -> bool {
        self.steps
            .is_some_and(|n| step.saturating_sub(self.last_step) >= n)
            || self.every.is_some_and(|d| self.last_time.elapsed() >= d)
    }

    fn saved(&mut self, step: u64) {
        self.last_step = step;
        self.last_time = Instant::now();
    }
}

/// The live parts of a run.
struct Session {
    model: Model,
    varmap: VarMap,
    optim: Optim,
    state: TrainState,
}

impl Session {
    fn save_last(&self, dir: &Path) -> Result<(), TrainError> {
        let mut tensors = checkpoint::varmap_tensors(&self.varmap);
        tensors.extend(self.optim.state_tensors()?);
        state::save(&dir.join(files::LAST), &tensors, Some(&self.state))
    }

    fn save_best(&self, dir: &Path) -> Result<(), TrainError> {
        let tensors = checkpoint::varmap_tensors(&self.varmap);
        state::save(&dir.join(files::BEST), &tensors, None)
    }

    fn set_stage(&mut self, config: &RunConfig, stage: u32) -> Result<(), TrainError> {
        self.model.set_trainable(&trainable(config, stage))?;
        let o = optimizer(config, stage);
        self.state.stage = stage;
        self.state.base_lr = o.lr();
        self.optim =
            Optim::new(o, self.model.trainable_vars(&self.varmap))?.with_l2(config.train.l2)?;
        Ok(())
    }
}

/// Trains the run in `dir` (made by [`create_run_dir`], or one to resume: then it continues from
/// `last.safetensors`). Writes the split, history, checkpoints and metrics as it goes.
pub fn fit(
    config: &RunConfig,
    dir: &Path,
    options: &FitOptions,
    observer: &mut dyn Observer,
) -> Result<FitSummary, TrainError> {
    let started = Instant::now();
    config.check()?;
    let dev = device(&config.device)?;
    let _lock = RunLock::acquire(dir)?;
    // Under the run's lock no other process can be writing these.
    mura_data::remove_stale_temporaries(dir);
    let last_path = dir.join(files::LAST);
    let resuming = last_path.exists();

    // Data: a resumed run reads its own manifest so that nothing about the split can change.
    let data = if resuming {
        let (base, _) = mura_data::locate(config.data.root.as_deref().unwrap_or(dir))?;
        RunData {
            base,
            manifest: Manifest::load(&dir.join(files::SPLIT))?,
        }
    } else {
        let d = RunData::prepare(config)?;
        d.manifest.save(&dir.join(files::SPLIT))?;
        d
    };
    let train_records = data.records(Role::Train);
    let weights = class_weights(config.data.class_weights, &train_records)?;
    let train = Arc::new(data.examples(Role::Train, weights.as_ref()));
    let val = Arc::new(data.examples(Role::Val, None));
    observer.message(&format!(
        "{} training and {} validation images",
        train.len(),
        val.len()
    ));

    // Model, optimiser, state.
    let (mut model, varmap) = Model::with_seed(&config.model, config.seed, &dev)?;
    model.set_trainable(&trainable(config, 0))?;
    let o = optimizer(config, 0);
    let mut s = Session {
        optim: Optim::new(o.clone(), model.trainable_vars(&varmap))?.with_l2(config.train.l2)?,
        model,
        varmap,
        state: TrainState {
            epochs_done: 0,
            stage: 0,
            global_step: 0,
            base_lr: o.lr(),
            early_stopping: config
                .train
                .early_stopping
                .map(|e| EarlyStopping::new(e.policy()))
                .transpose()?,
            plateau: config.train.plateau.map(Plateau::new).transpose()?,
            best: None,
            history: Vec::new(),
            partial: None,
            finished: None,
        },
    };
    if resuming {
        let loaded = state::load(&last_path, &dev)?;
        let st = loaded
            .state
            .clone()
            .ok_or_else(|| TrainError::BadCheckpoint {
                path: last_path.clone(),
                reason: "no training state (is it a best.safetensors?)".into(),
            })?;
        if st.stage != 0 {
            s.set_stage(config, st.stage)?;
        }
        checkpoint::load(
            &s.model,
            &s.varmap,
            &last_path,
            LoadOptions {
                ignore_prefix: Some(OPTIM_PREFIX),
                ..LoadOptions::default()
            },
        )?;
        s.optim.load_state(&loaded.optimizer())?;
        s.state = st;
        observer.message(&format!(
            "resuming after epoch {}{}",
            s.state.epochs_done,
            s.state
                .partial
                .as_ref()
                .map(|p| format!(", step {}", p.steps))
                .unwrap_or_default()
        ));
    } else {
        if let Some(p) = &config.pretrained {
            let file = pretrained_file(&p.weights)?;
            let report = checkpoint::load(
                &s.model,
                &s.varmap,
                &file,
                LoadOptions {
                    skip_classifier: p.skip_classifier,
                    fold_first_conv: p.fold_first_conv,
                    ignore_prefix: None,
                },
            )?;
            observer.message(&format!(
                "loaded {} tensors from {}",
                report.loaded,
                file.display()
            ));
        }
        s.save_last(dir)?;
    }
    if let Some(reason) = &s.state.finished {
        return Ok(summary(
            config,
            dir,
            &s,
            FitEnd::Finished(reason.clone()),
            started,
        ));
    }

    let (train_pipe, eval_pipe) = pipelines(config, &s.model)?;
    let t = &config.train;
    let steps_per_epoch = train.len().div_ceil(t.batch_size) as u64;
    let total_steps = steps_per_epoch * u64::from(t.epochs);
    let eval_bs = t.eval_batch_size.unwrap_or(t.batch_size);
    let stop_flag = options.stop.clone();
    let order = |epoch: u32| -> Result<Vec<usize>, TrainError> {
        let files = train.iter().map(|e| e.path.clone()).collect();
        Ok(Loader::new(files, loader(config, true))?.order(u64::from(epoch)))
    };

    let mut checkpoint_clock = CheckpointClock::new(t, s.state.global_step);
    // One event file per process; a resumed run adds a file, which TensorBoard merges.
    let mut events = if t.tensorboard {
        Some(crate::tensorboard::EventWriter::create(
            &dir.join(crate::tensorboard::DIR),
        )?)
    } else {
        None
    };
    let mut end = None;
    // (train, val) features of the frozen backbone; `None` inside once found too large.
    let mut cache: Option<Option<(FeatureCache, FeatureCache)>> = None;
    for epoch in s.state.epochs_done..t.epochs {
        if let Some(f) = &t.fine_tune
            && epoch >= f.head_epochs
            && s.state.stage == 0
        {
            s.set_stage(config, 1)?;
            observer.message(&format!(
                "stage 2: training from {} at lr {}",
                f.from.as_deref().unwrap_or("the first stage"),
                f.lr
            ));
        }
        if !crate::cache::applies(t.feature_cache, &s.model, &train_pipe) {
            cache = None;
        } else if cache.is_none() {
            let t0 = Instant::now();
            cache = Some(feature_caches(
                &s.model,
                &train,
                &val,
                &train_pipe,
                &eval_pipe,
                config,
                &dev,
            )?);
            observer.message(&match &cache {
                Some(Some((a, b))) => format!(
                    "frozen backbone: cached the features of {} images ({:.0} MB) in {:.1} s",
                    a.len() + b.len(),
                    (a.bytes() + b.bytes()) as f64 / 1e6,
                    t0.elapsed().as_secs_f64()
                ),
                _ => "frozen backbone: features too large to cache; computing them every epoch"
                    .into(),
            });
        }
        let cached = cache.as_ref().and_then(Option::as_ref);
        let epoch_t = Instant::now();
        let mut progress = s.state.partial.take().unwrap_or_default();
        let before = progress.seconds;
        let train_batches: Box<dyn Iterator<Item = Result<Batch, TrainError>>> = match cached {
            Some((c, _)) => {
                Box::new(c.batches(&train, order(epoch)?, progress.images, t.batch_size))
            }
            None => Box::new(batches_from(
                &train,
                &train_pipe,
                loader(config, true),
                u64::from(epoch),
                progress.images,
                t.batch_size,
                &dev,
            )?),
        };
        observer.epoch_start(epoch + 1, t.epochs, train.len(), progress.images);
        s.optim
            .set_schedule(t.schedule.map(|schedule| crate::optim::Scheduled {
                schedule,
                base_lr: s.state.base_lr,
                total_steps,
                step: s.state.global_step,
            }));
        let mut train_batches = train_batches;
        let mut global = s.state.global_step;
        let ended = loop {
            let mut due = false;
            let ended = train_epoch_with(
                &s.model,
                &mut s.optim,
                &mut train_batches,
                config.seed,
                u64::from(epoch),
                &mut progress,
                &mut |p: &EpochProgress| {
                    global += 1;
                    observer.batch(p);
                    if stop_flag.as_ref().is_some_and(|f| f.load(Ordering::SeqCst))
                        || options.stop_after_steps.is_some_and(|n| global >= n)
                    {
                        return true;
                    }
                    due = checkpoint_clock.due(global);
                    due
                },
            )?;
            s.state.global_step = global;
            if ended == EpochEnd::Interrupted && due {
                // A checkpoint inside the epoch; training goes on from the same batch stream.
                s.state.partial = Some(progress.clone());
                s.save_last(dir)?;
                s.state.partial = None;
                checkpoint_clock.saved(global);
                continue;
            }
            break ended;
        };
        let session_train_seconds = progress.seconds - before;
        if ended == EpochEnd::Interrupted {
            let step = progress.steps;
            s.state.partial = Some(progress);
            s.save_last(dir)?;
            end = Some(FitEnd::Interrupted {
                epoch: epoch + 1,
                step,
            });
            break;
        }

        // Validation.
        observer.eval_start(val.len());
        let eval_model = s.model.for_inference(&s.varmap)?;
        let val_pred = match cached {
            Some((_, c)) => crate::epoch::predict(
                &eval_model,
                c.batches(&val, (0..val.len()).collect(), 0, eval_bs),
            )?,
            None => {
                let b = batches(&val, &eval_pipe, loader(config, false), 0, eval_bs, &dev)?;
                crate::epoch::predict(&eval_model, b)?
            }
        };
        let (_, train_auc, train_acc, train_kappa) = scores(&train, &progress.predictions)?;
        let (val_loss, val_auc, val_acc, val_kappa) = scores(&val, &val_pred)?;
        let stats = progress.stats();
        let row = HistoryRow {
            epoch: epoch + 1,
            stage: s.state.stage,
            train_loss: stats.loss,
            train_auc,
            train_accuracy: train_acc,
            train_kappa,
            val_loss,
            val_auc,
            val_accuracy: val_acc,
            val_kappa,
            lr: s.optim.lr(),
            // This session's share of the epoch plus what earlier sessions spent training it.
            seconds: epoch_t.elapsed().as_secs_f64() + stats.seconds - session_train_seconds,
            images_per_sec: stats.images_per_sec(),
        };

        // Best checkpoint.
        let value = monitored(t.monitor, &row);
        let better =
            crate::policy::improves(t.monitor.mode(), value, s.state.best.map(|b| b.0), 0.0);
        if better {
            s.state.best = Some((value, epoch + 1));
            s.save_best(dir)?;
        }

        // Epoch-end policies.
        let mut stop_reason = None;
        if let Some(es) = &mut s.state.early_stopping {
            let v = monitored(es.config.monitor, &row);
            if let StopDecision::Stop { .. } = es.step(epoch + 1, v) {
                stop_reason = Some(format!(
                    "early stopping: no improvement of {:?} for {} epochs (best epoch {})",
                    es.config.monitor, es.config.patience, es.best_epoch
                ));
            }
        }
        if let Some(p) = &mut s.state.plateau {
            let v = monitored(p.config.monitor, &row);
            let lr = p.step(v, s.optim.lr());
            if lr != s.optim.lr() {
                observer.message(&format!("plateau: learning rate {} → {lr}", s.optim.lr()));
                s.optim.set_lr(lr);
            }
        }
        s.state.epochs_done = epoch + 1;
        s.state.history.push(row.clone());
        if stop_reason.is_none() && epoch + 1 == t.epochs {
            stop_reason = Some(format!("all {} epochs done", t.epochs));
        }
        s.state.finished = stop_reason.clone();
        s.save_last(dir)?;
        checkpoint_clock.saved(s.state.global_step);
        history::write(&dir.join(files::HISTORY), &s.state.history)?;
        crate::plot::write_curves(&dir.join(files::CURVES), &s.state.history)?;
        if let Some(w) = &mut events {
            w.epoch(&row)?;
        }
        observer.epoch_end(&row, better);
        if let Some(r) = stop_reason {
            end = Some(FitEnd::Finished(r));
            break;
        }
        if stop_flag.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
            end = Some(FitEnd::Interrupted {
                epoch: epoch + 1,
                step: steps_per_epoch,
            });
            break;
        }
    }
    let end = end.unwrap_or_else(|| FitEnd::Finished("all epochs done".into()));
    let out = summary(config, dir, &s, end, started);
    if matches!(out.end, FitEnd::Finished(_)) {
        let json = serde_json::to_string_pretty(&serde_json::json!({ "training": &out })).map_err(
            |e| TrainError::Unwritable {
                path: dir.join(files::METRICS),
                reason: e.to_string(),
            },
        )?;
        state::write_durable(&dir.join(files::METRICS), json.as_bytes())?;
        // The decision threshold, chosen on the validation studies with the final weights.
        drop(s);
        let run = crate::ensemble::Predictor::open(
            dir,
            crate::evaluate::Weights::Final,
            Some(&config.device),
        )?;
        if let Some(t) = crate::evaluate::choose_threshold(&run, t.threshold, config.data.threads)?
        {
            observer.message(&format!(
                "threshold {:.4} (maximum {} on the validation studies: {:.4}) stored in {}",
                t.value,
                t.criterion.as_str(),
                t.score,
                files::THRESHOLD
            ));
        }
    }
    Ok(out)
}

/// The frozen backbone's features of the training and validation images, or `None` when they
/// would pass [`crate::cache::MAX_CACHE_BYTES`].
#[allow(clippy::too_many_arguments)]
fn feature_caches(
    model: &Model,
    train: &Arc<Vec<Example>>,
    val: &Arc<Vec<Example>>,
    train_pipe: &Pipeline,
    eval_pipe: &Pipeline,
    config: &RunConfig,
    dev: &Device,
) -> Result<Option<(FeatureCache, FeatureCache)>, TrainError> {
    let bs = config
        .train
        .eval_batch_size
        .unwrap_or(config.train.batch_size);
    let max = crate::cache::MAX_CACHE_BYTES;
    let Some(a) = FeatureCache::compute(
        model,
        train,
        train_pipe,
        loader(config, false),
        bs,
        dev,
        max,
    )?
    else {
        return Ok(None);
    };
    let left = max.saturating_sub(a.bytes());
    let Some(b) =
        FeatureCache::compute(model, val, eval_pipe, loader(config, false), bs, dev, left)?
    else {
        return Ok(None);
    };
    Ok(Some((a, b)))
}

fn summary(config: &RunConfig, dir: &Path, s: &Session, end: FitEnd, t: Instant) -> FitSummary {
    FitSummary {
        run_dir: dir.to_path_buf(),
        end,
        epochs_done: s.state.epochs_done,
        best: s.state.best,
        monitor: config.train.monitor,
        history: s.state.history.clone(),
        seconds: t.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_fall_due_by_steps_and_by_time() {
        let mut t = crate::config::TrainConfig {
            checkpoint_minutes: 0.0,
            checkpoint_steps: Some(3),
            ..crate::config::TrainConfig::default()
        };
        let mut clock = CheckpointClock::new(&t, 10);
        assert!(!clock.due(12));
        assert!(clock.due(13));
        clock.saved(13);
        assert!(!clock.due(15) && clock.due(16));
        t.checkpoint_steps = None;
        assert!(
            !CheckpointClock::new(&t, 0).due(1_000_000),
            "0 minutes: never"
        );
        t.checkpoint_minutes = 1e-6; // 60 µs
        let clock = CheckpointClock::new(&t, 0);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(clock.due(1));
        t.checkpoint_minutes = 10.0;
        assert!(!CheckpointClock::new(&t, 0).due(1));
    }
}

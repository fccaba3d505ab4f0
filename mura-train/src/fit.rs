//! A whole training run: epochs with validation, epoch-end policies and checkpoints in the run
//! directory, interruptible at any batch boundary and resumable. `fit` is a few named steps:
//! open or resume the run ([`Session::open`]), then per epoch the fine-tuning stage, the
//! frozen-backbone feature cache, the training pass with its mid-epoch saves, validation and
//! the end of the epoch (best checkpoint, early stopping, plateau, history), and at the end the
//! training summary in `metrics.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::Device;
use mura_augment::Pipeline;
use mura_data::{Loader, Role};
use mura_models::Model;
use serde::Serialize;

use crate::TrainError;
use crate::cache::{self, FeatureCache};
use crate::config::RunConfig;
use crate::epoch::{
    Batch, EpochEnd, EpochProgress, Example, batches, batches_from, predict, train_ranks,
};
use crate::history::{self, HistoryRow};
use crate::io::write_json;
use crate::lock::RunLock;
use crate::observer::Observer;
use crate::optim::Scheduled;
use crate::parallel::Workers;
use crate::policy::{Monitor, StopDecision, improves};
use crate::run::{class_weights, device, files, loader, pipelines};
use crate::session::{CheckpointClock, Session};
use crate::tensorboard::{self, EventWriter};

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

/// Trains the run in `dir` (made by [`crate::create_run_dir`], or one to resume: then it
/// continues from `last.safetensors`). Writes the split, history, checkpoints and the training
/// summary as it goes; the decision threshold is a step after it (`train::train`).
pub fn fit(
    config: &RunConfig,
    dir: &Path,
    options: &FitOptions,
    observer: &mut dyn Observer,
) -> Result<FitSummary, TrainError> {
    let started = Instant::now();
    config.check()?;
    let dev = device(&config.device)?;
    crate::run::set_tf32(config.tf32);
    let _lock = RunLock::acquire(dir)?;
    // Under the run's lock no other process can be writing these.
    mura_data::remove_stale_temporaries(dir);
    let (mut s, data) = Session::open(config, dir, &dev, observer)?;
    if let Some(reason) = &s.state.finished {
        let end = FitEnd::Finished(reason.clone());
        return Ok(summary(config, dir, &s, end, started));
    }
    let weights = class_weights(config.data.class_weights, &data.records(Role::Train))?;
    let train = Arc::new(data.examples(Role::Train, weights.as_ref()));
    let val = Arc::new(data.examples(Role::Val, None));
    observer.message(&format!(
        "{} training and {} validation images",
        train.len(),
        val.len()
    ));
    let ranks = config.train.ranks();
    if ranks > 1 {
        let sync = config
            .train
            .data_parallel
            .is_some_and(|d| d.sync_batch_norm);
        observer.message(&format!(
            "data-parallel: {ranks} ranks, {} images per rank of each batch of {}, BatchNorm \
             statistics {}",
            config.train.batch_size.div_ceil(ranks),
            config.train.batch_size,
            if sync { "over every rank" } else { "per rank" }
        ));
    }
    let mut epochs = Epochs::new(config, dir, options, (train, val), &s, dev)?;
    let mut clock = CheckpointClock::new(&config.train, s.state.global_step);
    let mut end = None;
    for epoch in s.state.epochs_done..config.train.epochs {
        epochs.enter_stage(&mut s, epoch, observer)?;
        epochs.refresh_cache(&s, observer)?;
        let started = Instant::now();
        let Some(trained) = epochs.train(&mut s, (epoch, &mut clock), observer)? else {
            end = s.state.partial.as_ref().map(|p| FitEnd::Interrupted {
                epoch: epoch + 1,
                step: p.steps,
            });
            break;
        };
        let row = epochs.validate(&s, epoch, trained, started, observer)?;
        if let Some(e) = epochs.end_epoch(&mut s, (row, &mut clock), observer)? {
            end = Some(e);
            break;
        }
    }
    let end = end.unwrap_or_else(|| FitEnd::Finished("all epochs done".into()));
    let out = summary(config, dir, &s, end, started);
    if matches!(out.end, FitEnd::Finished(_)) {
        let metrics = serde_json::json!({ "training": &out });
        write_json(&dir.join(files::METRICS), &metrics)?;
    }
    Ok(out)
}

/// Whether a stop was requested (Ctrl-C).
fn stop_requested(options: &FitOptions) -> bool {
    let flag = options.stop.as_ref();
    flag.is_some_and(|f| f.load(Ordering::SeqCst))
}

/// The training pass of an epoch that ran to its end: its progress, and the seconds of it
/// spent by this process (a resumed epoch had earlier ones).
struct Trained {
    progress: EpochProgress,
    seconds_here: f64,
}

/// What the epochs of one `fit` share.
struct Epochs<'a> {
    config: &'a RunConfig,
    dir: &'a Path,
    options: &'a FitOptions,
    dev: Device,
    train: Arc<Vec<Example>>,
    val: Arc<Vec<Example>>,
    train_pipe: Pipeline,
    eval_pipe: Pipeline,
    /// One event file per process; a resumed run adds a file, which TensorBoard merges.
    events: Option<EventWriter>,
    /// (train, val) features of the frozen backbone; `Some(None)` once found too large.
    cache: Option<Option<(FeatureCache, FeatureCache)>>,
    /// Ranks 1.. of data-parallel training (the run's own `Session` is rank 0).
    workers: Option<Workers>,
}

impl<'a> Epochs<'a> {
    fn new(
        config: &'a RunConfig,
        dir: &'a Path,
        options: &'a FitOptions,
        (train, val): (Arc<Vec<Example>>, Arc<Vec<Example>>),
        s: &Session,
        dev: Device,
    ) -> Result<Self, TrainError> {
        let (train_pipe, eval_pipe) = pipelines(config, &s.model)?;
        let events = match config.train.tensorboard {
            true => Some(EventWriter::create(&dir.join(tensorboard::DIR))?),
            false => None,
        };
        let workers = Workers::start(config, config.train.ranks(), &dev)?;
        Ok(Self {
            config,
            dir,
            options,
            dev,
            train,
            val,
            train_pipe,
            eval_pipe,
            events,
            cache: None,
            workers,
        })
    }

    fn stop_requested(&self) -> bool {
        stop_requested(self.options)
    }

    /// Moves to the second stage of a fine-tuning schedule when its epoch comes.
    fn enter_stage(
        &self,
        s: &mut Session,
        epoch: u32,
        observer: &mut dyn Observer,
    ) -> Result<(), TrainError> {
        if let Some(f) = &self.config.train.fine_tune
            && epoch >= f.head_epochs
            && s.state.stage == 0
        {
            s.set_stage(self.config, 1)?;
            observer.message(&format!(
                "stage 2: training from {} at lr {}",
                f.from.as_deref().unwrap_or("the first stage"),
                f.lr
            ));
        }
        Ok(())
    }

    /// Computes the frozen backbone's features once, when the model and augmentation allow it
    /// (see [`cache::applies`]); drops them when they no longer do.
    fn refresh_cache(
        &mut self,
        s: &Session,
        observer: &mut dyn Observer,
    ) -> Result<(), TrainError> {
        let t = &self.config.train;
        if !cache::applies(t.feature_cache, &s.model, &self.train_pipe) {
            self.cache = None;
            return Ok(());
        }
        if self.cache.is_some() {
            return Ok(());
        }
        let t0 = Instant::now();
        self.cache = Some(self.feature_caches(&s.model)?);
        observer.message(&match &self.cache {
            Some(Some((a, b))) => format!(
                "frozen backbone: cached the features of {} images ({:.0} MB) in {:.1} s",
                a.len() + b.len(),
                (a.bytes() + b.bytes()) as f64 / 1e6,
                t0.elapsed().as_secs_f64()
            ),
            _ => "frozen backbone: features too large to cache; computing them every epoch".into(),
        });
        Ok(())
    }

    /// The frozen backbone's features of the training and validation images, or `None` when
    /// they would pass [`cache::MAX_CACHE_BYTES`].
    fn feature_caches(
        &self,
        model: &Model,
    ) -> Result<Option<(FeatureCache, FeatureCache)>, TrainError> {
        let (config, dev) = (self.config, &self.dev);
        let bs = config
            .train
            .eval_batch_size
            .unwrap_or(config.train.batch_size);
        let max = cache::MAX_CACHE_BYTES;
        let lc = || loader(config, false);
        let Some(a) =
            FeatureCache::compute(model, &self.train, &self.train_pipe, lc(), bs, dev, max)?
        else {
            return Ok(None);
        };
        let left = max.saturating_sub(a.bytes());
        let Some(b) =
            FeatureCache::compute(model, &self.val, &self.eval_pipe, lc(), bs, dev, left)?
        else {
            return Ok(None);
        };
        Ok(Some((a, b)))
    }

    /// The training batches of `epoch` from image `from` on: cached feature rows, or images
    /// through the loader and the train pipeline, in the loader's seeded order.
    fn train_batches(
        &self,
        epoch: u32,
        from: usize,
    ) -> Result<Box<dyn Iterator<Item = Result<Batch, TrainError>> + '_>, TrainError> {
        let (config, bs) = (self.config, self.config.train.batch_size);
        Ok(match self.cache.as_ref().and_then(Option::as_ref) {
            Some((c, _)) => {
                let files = self.train.iter().map(|e| e.path.clone()).collect();
                let order = Loader::new(files, loader(config, true))?.order(u64::from(epoch));
                Box::new(c.batches(&self.train, order, from, bs))
            }
            None => Box::new(batches_from(
                &self.train,
                &self.train_pipe,
                loader(config, true),
                u64::from(epoch),
                from,
                bs,
                &self.dev,
            )?),
        })
    }

    /// The training pass of `epoch`, from where an interrupted one stopped, saving
    /// `last.safetensors` whenever the checkpoint clock falls due (the batch stream goes on
    /// after the save). `None` when it was interrupted: the partial epoch is saved.
    fn train(
        &self,
        s: &mut Session,
        (epoch, clock): (u32, &mut CheckpointClock),
        observer: &mut dyn Observer,
    ) -> Result<Option<Trained>, TrainError> {
        let t = &self.config.train;
        let mut progress = s.state.partial.take().unwrap_or_default();
        let before = progress.seconds;
        let mut batches = self.train_batches(epoch, progress.images)?;
        observer.epoch_start(epoch + 1, t.epochs, self.train.len(), progress.images);
        let steps_per_epoch = self.train.len().div_ceil(t.batch_size) as u64;
        s.optim.set_schedule(t.schedule.map(|schedule| Scheduled {
            schedule,
            base_lr: s.state.base_lr,
            total_steps: steps_per_epoch * u64::from(t.epochs),
            step: s.state.global_step,
        }));
        if let Some(w) = &self.workers {
            w.mirror(s)?;
        }
        let stop_after = self.options.stop_after_steps;
        let mut global = s.state.global_step;
        loop {
            let mut due = false;
            let ended = train_ranks(
                &s.model,
                &mut s.optim,
                self.workers.as_ref(),
                &mut batches,
                (self.config.seed, u64::from(epoch)),
                &mut progress,
                &mut |p: &EpochProgress| {
                    global += 1;
                    observer.batch(p);
                    if stop_requested(self.options) || stop_after.is_some_and(|n| global >= n) {
                        return true;
                    }
                    due = clock.due(global);
                    due
                },
            )?;
            s.state.global_step = global;
            match (ended, due) {
                (EpochEnd::Completed, _) => break,
                (EpochEnd::Interrupted, true) => {
                    // A checkpoint inside the epoch; training goes on from the same batches.
                    s.state.partial = Some(progress.clone());
                    s.save_last(self.dir)?;
                    s.state.partial = None;
                    clock.saved(global);
                }
                (EpochEnd::Interrupted, false) => {
                    s.state.partial = Some(progress);
                    s.save_last(self.dir)?;
                    return Ok(None);
                }
            }
        }
        let seconds_here = progress.seconds - before;
        Ok(Some(Trained {
            progress,
            seconds_here,
        }))
    }

    /// Eval-mode validation after an epoch's training: its history row.
    fn validate(
        &self,
        s: &Session,
        epoch: u32,
        trained: Trained,
        started: Instant,
        observer: &mut dyn Observer,
    ) -> Result<HistoryRow, TrainError> {
        let t = &self.config.train;
        let eval_bs = t.eval_batch_size.unwrap_or(t.batch_size);
        observer.eval_start(self.val.len());
        let eval_model = s.model.for_inference(&s.varmap)?;
        let val = &self.val;
        let val_pred = match self.cache.as_ref().and_then(Option::as_ref) {
            Some((_, c)) => predict(
                &eval_model,
                c.batches(val, (0..val.len()).collect(), 0, eval_bs),
            )?,
            None => {
                let lc = loader(self.config, false);
                let b = batches(val, &self.eval_pipe, lc, 0, eval_bs, &self.dev)?;
                predict(&eval_model, b)?
            }
        };
        let progress = &trained.progress;
        let (_, train_auc, train_accuracy, train_kappa) =
            scores(&self.train, &progress.predictions)?;
        let (val_loss, val_auc, val_accuracy, val_kappa) = scores(val, &val_pred)?;
        let stats = progress.stats();
        Ok(HistoryRow {
            epoch: epoch + 1,
            stage: s.state.stage,
            train_loss: stats.loss,
            train_auc,
            train_accuracy,
            train_kappa,
            val_loss,
            val_auc,
            val_accuracy,
            val_kappa,
            lr: s.optim.lr(),
            // This process's share of the epoch plus what earlier processes spent training it.
            seconds: started.elapsed().as_secs_f64() + stats.seconds - trained.seconds_here,
            images_per_sec: stats.images_per_sec(),
        })
    }

    /// The end of an epoch: the best checkpoint, early stopping and the plateau's learning
    /// rate, then `last.safetensors`, `history.csv`, `curves.png` and the events. How the run
    /// ends, when it does.
    fn end_epoch(
        &mut self,
        s: &mut Session,
        (row, clock): (HistoryRow, &mut CheckpointClock),
        observer: &mut dyn Observer,
    ) -> Result<Option<FitEnd>, TrainError> {
        let t = &self.config.train;
        let value = monitored(t.monitor, &row);
        let better = improves(t.monitor.mode(), value, s.state.best.map(|b| b.0), 0.0);
        if better {
            s.state.best = Some((value, row.epoch));
            s.save_best(self.dir)?;
        }
        let mut stop_reason = None;
        if let Some(es) = &mut s.state.early_stopping
            && let StopDecision::Stop { .. } =
                es.step(row.epoch, monitored(es.config.monitor, &row))
        {
            stop_reason = Some(format!(
                "early stopping: no improvement of {:?} for {} epochs (best epoch {})",
                es.config.monitor, es.config.patience, es.best_epoch
            ));
        }
        if let Some(p) = &mut s.state.plateau {
            let lr = p.step(monitored(p.config.monitor, &row), s.optim.lr());
            if lr != s.optim.lr() {
                observer.message(&format!("plateau: learning rate {} → {lr}", s.optim.lr()));
                s.optim.set_lr(lr);
            }
        }
        s.state.epochs_done = row.epoch;
        s.state.history.push(row.clone());
        if stop_reason.is_none() && row.epoch == t.epochs {
            stop_reason = Some(format!("all {} epochs done", t.epochs));
        }
        s.state.finished = stop_reason.clone();
        s.save_last(self.dir)?;
        clock.saved(s.state.global_step);
        history::write(&self.dir.join(files::HISTORY), &s.state.history)?;
        crate::plot::write_curves(&self.dir.join(files::CURVES), &s.state.history)?;
        if let Some(w) = &mut self.events {
            w.epoch(&row)?;
        }
        observer.epoch_end(&row, better);
        if let Some(r) = stop_reason {
            return Ok(Some(FitEnd::Finished(r)));
        }
        if self.stop_requested() {
            let step = self.train.len().div_ceil(t.batch_size) as u64;
            return Ok(Some(FitEnd::Interrupted {
                epoch: row.epoch,
                step,
            }));
        }
        Ok(None)
    }
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

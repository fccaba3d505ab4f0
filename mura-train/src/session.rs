//! The live parts of a run (model, variables, optimiser, training state): opened fresh (the
//! split made and saved, pretrained weights loaded) or resumed from `last.safetensors`, saved
//! as the last and the best checkpoint, moved to the second stage of a fine-tuning schedule.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Device;
use candle_nn::VarMap;
use mura_data::Manifest;
use mura_models::checkpoint::{self, LoadOptions};
use mura_models::{Model, Trainable};

use crate::TrainError;
use crate::config::{Freeze, RunConfig, TrainConfig};
use crate::observer::Observer;
use crate::optim::{Optim, OptimizerConfig};
use crate::policy::{EarlyStopping, Plateau};
use crate::run::{RunData, files, pretrained_file};
use crate::state::{self, OPTIM_PREFIX, TrainState};

/// The live parts of a run.
pub(crate) struct Session {
    pub(crate) model: Model,
    pub(crate) varmap: VarMap,
    pub(crate) optim: Optim,
    pub(crate) state: TrainState,
}

impl Session {
    /// The run in `dir` and its data: resumed from `last.safetensors` when there is one (with the
    /// run's own manifest, so nothing about the split can change), else started: the split made
    /// and saved, the model initialised from the seed, pretrained weights loaded, and a first
    /// `last.safetensors` written.
    pub(crate) fn open(
        config: &RunConfig,
        dir: &Path,
        dev: &Device,
        observer: &mut dyn Observer,
    ) -> Result<(Self, RunData), TrainError> {
        let last = dir.join(files::LAST);
        let resuming = last.exists();
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
        let mut s = Self::new(config, dev)?;
        if resuming {
            s.resume(config, &last, dev, observer)?;
        } else {
            s.load_pretrained(config, observer)?;
            s.save_last(dir)?;
        }
        Ok((s, data))
    }

    /// A new run's model (initialised from the seed), first-stage optimiser and state.
    pub(crate) fn new(config: &RunConfig, dev: &Device) -> Result<Self, TrainError> {
        let (mut model, varmap) = Model::with_seed(&config.model, config.seed, dev)?;
        model.set_trainable(&trainable(config, 0))?;
        let o = optimizer(config, 0);
        let optim =
            Optim::new(o.clone(), model.trainable_vars(&varmap))?.with_l2(config.train.l2)?;
        let t = &config.train;
        let state = TrainState {
            epochs_done: 0,
            stage: 0,
            global_step: 0,
            base_lr: o.lr(),
            early_stopping: t
                .early_stopping
                .map(|e| EarlyStopping::new(e.policy()))
                .transpose()?,
            plateau: t.plateau.map(Plateau::new).transpose()?,
            best: None,
            history: Vec::new(),
            partial: None,
            finished: None,
        };
        Ok(Self {
            model,
            varmap,
            optim,
            state,
        })
    }

    /// Weights, optimiser and training state from `last`.
    fn resume(
        &mut self,
        config: &RunConfig,
        last: &Path,
        dev: &Device,
        observer: &mut dyn Observer,
    ) -> Result<(), TrainError> {
        let loaded = state::load(last, dev)?;
        let st = loaded
            .state
            .clone()
            .ok_or_else(|| TrainError::BadCheckpoint {
                path: last.to_path_buf(),
                reason: "no training state (is it a best.safetensors?)".into(),
            })?;
        if st.stage != 0 {
            self.set_stage(config, st.stage)?;
        }
        let options = LoadOptions {
            ignore_prefix: Some(OPTIM_PREFIX),
            ..LoadOptions::default()
        };
        checkpoint::load(&self.model, &self.varmap, last, options)?;
        self.optim.load_state(&loaded.optimizer())?;
        self.state = st;
        let partial = self.state.partial.as_ref();
        observer.message(&format!(
            "resuming after epoch {}{}",
            self.state.epochs_done,
            partial
                .map(|p| format!(", step {}", p.steps))
                .unwrap_or_default()
        ));
        Ok(())
    }

    /// The configured pretrained weights, if any.
    fn load_pretrained(
        &mut self,
        config: &RunConfig,
        observer: &mut dyn Observer,
    ) -> Result<(), TrainError> {
        let Some(p) = &config.pretrained else {
            return Ok(());
        };
        let file = pretrained_file(&p.weights)?;
        let options = LoadOptions {
            skip_classifier: p.skip_classifier,
            fold_first_conv: p.fold_first_conv,
            ignore_prefix: None,
        };
        let report = checkpoint::load(&self.model, &self.varmap, &file, options)?;
        observer.message(&format!(
            "loaded {} tensors from {}",
            report.loaded,
            file.display()
        ));
        Ok(())
    }

    /// Writes `last.safetensors`: weights, optimiser state and training state.
    pub(crate) fn save_last(&self, dir: &Path) -> Result<(), TrainError> {
        let mut tensors = checkpoint::varmap_tensors(&self.varmap);
        tensors.extend(self.optim.state_tensors()?);
        state::save(&dir.join(files::LAST), &tensors, Some(&self.state))
    }

    /// Writes `best.safetensors`: the weights alone.
    pub(crate) fn save_best(&self, dir: &Path) -> Result<(), TrainError> {
        let tensors = checkpoint::varmap_tensors(&self.varmap);
        state::save(&dir.join(files::BEST), &tensors, None)
    }

    /// Freezes the model and makes the optimiser of fine-tuning stage `stage`.
    pub(crate) fn set_stage(&mut self, config: &RunConfig, stage: u32) -> Result<(), TrainError> {
        self.model.set_trainable(&trainable(config, stage))?;
        let o = optimizer(config, stage);
        self.state.stage = stage;
        self.state.base_lr = o.lr();
        self.optim =
            Optim::new(o, self.model.trainable_vars(&self.varmap))?.with_l2(config.train.l2)?;
        Ok(())
    }
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

/// When to save `last.safetensors` inside an epoch: every `train.checkpoint_steps` steps and
/// every `train.checkpoint_minutes` minutes.
pub(crate) struct CheckpointClock {
    steps: Option<u64>,
    every: Option<Duration>,
    last_step: u64,
    last_time: Instant,
}

impl CheckpointClock {
    pub(crate) fn new(t: &TrainConfig, step: u64) -> Self {
        CheckpointClock {
            steps: t.checkpoint_steps,
            every: (t.checkpoint_minutes > 0.0)
                .then(|| Duration::from_secs_f64(t.checkpoint_minutes * 60.0)),
            last_step: step,
            last_time: Instant::now(),
        }
    }

    pub(crate) fn due(&self, step: u64) -> bool {
        self.steps
            .is_some_and(|n| step.saturating_sub(self.last_step) >= n)
            || self.every.is_some_and(|d| self.last_time.elapsed() >= d)
    }

    pub(crate) fn saved(&mut self, step: u64) {
        self.last_step = step;
        self.last_time = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_fall_due_by_steps_and_by_time() {
        let mut t = TrainConfig {
            checkpoint_minutes: 0.0,
            checkpoint_steps: Some(3),
            ..TrainConfig::default()
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
        std::thread::sleep(Duration::from_millis(2));
        assert!(clock.due(1));
        t.checkpoint_minutes = 10.0;
        assert!(!CheckpointClock::new(&t, 0).due(1));
    }
}

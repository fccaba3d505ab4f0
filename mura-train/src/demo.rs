//! `mura demo`: the main job on a synthetic MURA. Generates the data set once
//! ([`prepare_data`]), then trains the recipe of `configs/demo.toml` (compiled in) with the
//! patient-grouped split, chooses the threshold and evaluates the best epoch on the held-out
//! test split ([`run_demo`]). The working folder holds `data/` (the synthetic MURA) and `run/` (the run
//! directory, replaced on every demo).

use std::path::PathBuf;
use std::time::Instant;

use mura_data::synth::{Difficulty, SynthConfig, SynthSummary};
use mura_data::{IndexOptions, Indexed, index};
use serde::Serialize;

use crate::TrainError;
use crate::config::RunConfig;
use crate::evaluate::{EvaluateOptions, Evaluation, evaluate};
use crate::fit::{FitOptions, FitSummary};
use crate::observer::Observer;
use crate::run::{files, init_run_dir};
use crate::train::train;

/// The demo's run configuration, as `configs/demo.toml` writes it.
pub const RECIPE: &str = include_str!("../../configs/demo.toml");

/// What `mura demo` can change.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoOptions {
    /// The working folder: `data/` and `run/` go there.
    pub out: PathBuf,
    /// Synthetic studies, generated once (delete `data/` to change the number).
    pub studies: usize,
    pub seed: u64,
    /// Most epochs; early stopping may end sooner.
    pub epochs: u32,
    /// The CNN's input side.
    pub image_size: usize,
    /// Loader threads.
    pub threads: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            out: PathBuf::from("runs/demo"),
            studies: 1000,
            seed: 0,
            epochs: 8,
            image_size: 96,
            threads: 2,
        }
    }
}

/// What the demo did.
#[derive(Debug, Serialize)]
pub struct DemoOutcome {
    /// The synthetic MURA's folder.
    pub data: PathBuf,
    pub run_dir: PathBuf,
    pub fit: FitSummary,
    pub evaluation: Evaluation,
    pub seconds: f64,
}

impl DemoOptions {
    /// The synthetic data's folder.
    pub fn data(&self) -> PathBuf {
        self.out.join("data")
    }

    /// The run directory.
    pub fn run_dir(&self) -> PathBuf {
        self.out.join("run")
    }

    /// The recipe with the data folder and these options filled in, checked.
    pub fn config(&self) -> Result<RunConfig, TrainError> {
        let mut c = RunConfig::parse(RECIPE)?;
        c.data.root = Some(self.data());
        c.seed = self.seed;
        c.train.epochs = self.epochs;
        c.model.input_size = Some(self.image_size);
        c.data.threads = self.threads;
        c.check()?;
        Ok(c)
    }
}

/// The demo's data set, ready to train on.
#[derive(Debug)]
pub struct DemoData {
    /// The folder holding `MURA-v1.1/`.
    pub dir: PathBuf,
    /// What was generated, when the data set was not there yet.
    pub generated: Option<SynthSummary>,
    /// Seconds spent generating.
    pub seconds: f64,
    /// The data set indexed, with what indexing skipped.
    pub indexed: Indexed,
}

/// Generates the demo's synthetic MURA unless it is there, and indexes it: strong findings in
/// every view, images half MURA's size and a 20% test split, so that a small CNN learns it in
/// minutes on a CPU.
pub fn prepare_data(o: &DemoOptions) -> Result<DemoData, TrainError> {
    let dir = o.data();
    let t = Instant::now();
    let generated = if dir.join(mura_data::DATASET_DIR).exists() {
        None
    } else {
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::Unwritable {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
        let config = SynthConfig {
            studies: o.studies,
            seed: o.seed,
            max_side: 256,
            valid_fraction: 0.2,
            difficulty: Difficulty::Easy,
            ..SynthConfig::default()
        };
        Some(mura_data::synth::generate(&dir, &config)?)
    };
    let seconds = t.elapsed().as_secs_f64();
    let indexed = index(&dir, &IndexOptions::default())?;
    Ok(DemoData {
        dir,
        generated,
        seconds,
        indexed,
    })
}

/// Trains and evaluates the demo on the data [`prepare_data`] made: the run directory
/// (replaced), training with `fit_options`' interrupt flag, the threshold, the evaluation on the
/// test split. Progress goes to `observer`.
pub fn run_demo(
    o: &DemoOptions,
    fit_options: &FitOptions,
    observer: &mut dyn Observer,
) -> Result<DemoOutcome, TrainError> {
    let t = Instant::now();
    let config = o.config()?;
    let dir = o.run_dir();
    // The demo owns its run folder: a previous demo run is replaced.
    if dir.join(files::CONFIG).exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| TrainError::Unwritable {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
    }
    init_run_dir(&config, &dir)?;
    observer.message(&format!("run directory {}", dir.display()));
    let fit = train(&config, &dir, fit_options, observer)?;
    let evaluation = evaluate(&dir, EvaluateOptions::default())?;
    Ok(DemoOutcome {
        data: o.data(),
        run_dir: dir,
        fit,
        evaluation,
        seconds: t.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{ClassWeighting, DataConfig, EarlyStoppingSettings, TrainConfig};
    use crate::optim::OptimizerConfig;
    use crate::policy::{Monitor, PlateauConfig};
    use mura_models::{Arch, CnnConfig, LocalPool, ModelConfig, Readout};

    /// The recipe file is the demo's run, setting for setting, with the options filled in.
    #[test]
    fn the_recipe_is_the_demo_run() {
        let o = DemoOptions {
            out: PathBuf::from("/tmp/d"),
            seed: 7,
            epochs: 3,
            image_size: 64,
            threads: 1,
            ..DemoOptions::default()
        };
        let want = RunConfig {
            name: Some("demo".into()),
            seed: 7,
            device: "cpu".into(),
            tf32: true,
            data: DataConfig {
                class_weights: ClassWeighting::Balanced,
                resize: mura_augment::ResizeMode::Stretch,
                threads: 1,
                ..DataConfig::new(Some(PathBuf::from("/tmp/d/data")))
            },
            model: ModelConfig {
                in_channels: 1,
                input_size: Some(64),
                cnn: Some(CnnConfig {
                    blocks: 5,
                    filters: 8,
                    pool: Some(LocalPool::Max),
                    readout: Readout::GlobalMax,
                    dropout: 0.2,
                    ..CnnConfig::custom_cnn()
                }),
                ..ModelConfig::new(Arch::CustomCnn)
            },
            pretrained: None,
            train: TrainConfig {
                epochs: 3,
                batch_size: 32,
                optimizer: OptimizerConfig::adam(3e-3),
                monitor: Monitor::ValAuc,
                early_stopping: Some(EarlyStoppingSettings {
                    monitor: Monitor::ValAuc,
                    patience: 3,
                    min_delta: 0.0,
                    restore_best: true,
                }),
                plateau: Some(PlateauConfig {
                    monitor: Monitor::ValLoss,
                    factor: 0.2,
                    patience: 2,
                    cooldown: 0,
                    min_lr: 1e-5,
                    min_delta: 0.0,
                }),
                ..TrainConfig::default()
            },
        };
        assert_eq!(o.config().unwrap(), want);
        assert_eq!(o.run_dir(), std::path::Path::new("/tmp/d/run"));
        let bad = DemoOptions {
            threads: 0,
            ..DemoOptions::default()
        };
        assert!(
            bad.config()
                .unwrap_err()
                .to_string()
                .contains("data.threads")
        );
    }
}

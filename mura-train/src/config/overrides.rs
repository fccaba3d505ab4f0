//! Settings given on the command line over a run configuration (`mura train --config run.toml
//! --epochs 3`): applied in one place, checked together, and an error in an overridden setting
//! names the flag it came from.

use std::path::PathBuf;

use mura_metrics::Criterion;
use mura_models::{Arch, ModelConfig};

use super::{DataConfig, PretrainedConfig, RunConfig, TrainConfig};
use crate::TrainError;

/// Settings that override a run configuration's; `None` (or `false`) leaves it as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--data`: the MURA root.
    pub data: Option<PathBuf>,
    /// `--manifest`: a saved split.
    pub manifest: Option<PathBuf>,
    /// `--model`: another architecture, with its defaults (the input size is kept).
    pub model: Option<Arch>,
    /// `--image-size`.
    pub image_size: Option<usize>,
    /// `--epochs`.
    pub epochs: Option<u32>,
    /// `--batch-size`.
    pub batch_size: Option<usize>,
    /// `--lr`: the optimiser's learning rate.
    pub lr: Option<f64>,
    /// `--seed`.
    pub seed: Option<u64>,
    /// `--name`.
    pub name: Option<String>,
    /// `--pretrained`: a `.safetensors` file or a registry tag, loaded with the classifier
    /// skipped and the stem folded for gray input.
    pub pretrained: Option<PathBuf>,
    /// `--device`.
    pub device: Option<String>,
    /// `--tensorboard`.
    pub tensorboard: bool,
    /// `--threshold`: how the decision threshold is chosen.
    pub threshold: Option<Criterion>,
    /// `--ranks`: data-parallel replicas.
    pub ranks: Option<usize>,
    /// `--sync-batch-norm`: BatchNorm statistics over every rank's shard.
    pub sync_batch_norm: bool,
}

/// The config key behind each flag, as errors name them.
const FLAGS: [(&str, &str); 9] = [
    ("--ranks", "train.data_parallel"),
    ("--image-size", "model.input_size"),
    ("--epochs", "train.epochs"),
    ("--batch-size", "train.batch_size"),
    ("--lr", "train.optimizer"),
    ("--name", "name"),
    ("--model", "model"),
    ("--device", "device"),
    ("--data", "data"),
];

impl RunConfig {
    /// The configuration `mura train` starts from without `--config`: a run of `arch` with
    /// every default and no data source.
    pub fn defaults(arch: Arch) -> Self {
        RunConfig {
            name: None,
            seed: 0,
            device: "cpu".into(),
            tf32: true,
            data: DataConfig::new(None),
            model: ModelConfig::new(arch),
            pretrained: None,
            train: TrainConfig::default(),
        }
    }

    /// This configuration with `o` applied, checked as [`RunConfig::check`] does. An error in a
    /// setting a flag gave names the flag (`--batch-size: train.batch_size must be at least 1`).
    pub fn with_overrides(mut self, o: &Overrides) -> Result<Self, TrainError> {
        if let Some(d) = &o.data {
            self.data.root = Some(d.clone());
        }
        if let Some(m) = &o.manifest {
            self.data.manifest = Some(m.clone());
        }
        if let Some(arch) = o.model
            && arch != self.model.arch
        {
            self.model = ModelConfig {
                input_size: self.model.input_size,
                ..ModelConfig::new(arch)
            };
        }
        if let Some(s) = o.image_size {
            self.model.input_size = Some(s);
        }
        if let Some(e) = o.epochs {
            self.train.epochs = e;
        }
        if let Some(b) = o.batch_size {
            self.train.batch_size = b;
        }
        if let Some(lr) = o.lr {
            self.train.optimizer.set_lr(lr);
        }
        if let Some(s) = o.seed {
            self.seed = s;
        }
        if let Some(n) = &o.name {
            self.name = Some(n.clone());
        }
        if let Some(p) = &o.pretrained {
            self.pretrained = Some(PretrainedConfig {
                weights: p.clone(),
                skip_classifier: true,
                fold_first_conv: true,
            });
        }
        if let Some(d) = &o.device {
            self.device = d.clone();
        }
        self.train.tensorboard |= o.tensorboard;
        if let Some(t) = o.threshold {
            self.train.threshold = t;
        }
        if let Some(ranks) = o.ranks {
            let sync_batch_norm = self.train.data_parallel.is_some_and(|d| d.sync_batch_norm);
            self.train.data_parallel = (ranks != 1).then_some(super::DataParallel {
                ranks,
                sync_batch_norm,
            });
        }
        if o.sync_batch_norm {
            match &mut self.train.data_parallel {
                Some(d) => d.sync_batch_norm = true,
                None => {
                    return Err(TrainError::Config {
                        path: PathBuf::new(),
                        reason: "--sync-batch-norm: train.data_parallel.sync_batch_norm needs \
                                 more than one rank (--ranks N)"
                            .into(),
                    });
                }
            }
        }
        self.check().map_err(|e| o.name_flag(e))?;
        Ok(self)
    }
}

impl Overrides {
    /// Whether the flag `flag` was given.
    fn gave(&self, flag: &str) -> bool {
        match flag {
            "--image-size" => self.image_size.is_some(),
            "--epochs" => self.epochs.is_some(),
            "--batch-size" => self.batch_size.is_some(),
            "--lr" => self.lr.is_some(),
            "--name" => self.name.is_some(),
            "--model" => self.model.is_some(),
            "--device" => self.device.is_some(),
            "--data" => self.data.is_some(),
            "--ranks" => self.ranks.is_some(),
            _ => false,
        }
    }

    /// `e` with the flag named in front when the setting at fault came from one.
    fn name_flag(&self, e: TrainError) -> TrainError {
        let (path, reason) = match e {
            TrainError::Config { path, reason } => (path, reason),
            TrainError::BadParameter { what, .. }
                if what == "learning rate" && self.lr.is_some() =>
            {
                return TrainError::Config {
                    path: PathBuf::new(),
                    reason: format!("--lr: train.optimizer.lr: {e}"),
                };
            }
            other => return other,
        };
        let flag = FLAGS
            .iter()
            .find(|(flag, key)| self.gave(flag) && reason.starts_with(key))
            .map(|(flag, _)| *flag);
        match flag {
            Some(flag) => TrainError::Config {
                path,
                reason: format!("{flag}: {reason}"),
            },
            None => TrainError::Config { path, reason },
        }
    }
}

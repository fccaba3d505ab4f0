//! The typed run configuration: what `mura train --config run.toml` reads and what every run
//! directory keeps as `config.toml`, resolved. Unknown keys are refused, naming the key.

mod overrides;

use std::path::{Path, PathBuf};

use mura_augment::{AugmentConfig, Filter, Preset, ResizeMode};
use mura_models::ModelConfig;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::optim::OptimizerConfig;
use crate::policy::{EarlyStoppingConfig, Monitor, PlateauConfig};
use crate::schedule::Schedule;

pub use overrides::Overrides;

/// One training run, as written in `run.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The run's folder name under the output directory; the model's name and the seed when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// The one seed every random choice flows from: split, init, order, augmentation, dropout.
    #[serde(default)]
    pub seed: u64,
    /// `cpu` or `cuda:N` (CUDA needs the `cuda` cargo feature).
    #[serde(default = "cpu")]
    pub device: String,
    /// f32 matrix products and cuDNN convolutions on NVIDIA GPUs (Ampere and newer) in TF32,
    /// as PyTorch with `allow_tf32` on: several times the f32 throughput, 10-bit mantissas in the
    /// products' inputs, f32 sums. No effect on the CPU.
    #[serde(default = "yes")]
    pub tf32: bool,
    pub data: DataConfig,
    pub model: ModelConfig,
    #[serde(default)]
    pub pretrained: Option<PretrainedConfig>,
    #[serde(default)]
    pub train: TrainConfig,
}

fn cpu() -> String {
    "cpu".into()
}

/// Where the images come from and how they are prepared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A MURA root (the folder holding `MURA-v1.1/`, or that folder itself).
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// A saved split manifest (`split.csv` of an earlier run); its paths are relative to `root`.
    #[serde(default)]
    pub manifest: Option<PathBuf>,
    /// Body parts to keep (`wrist`, `XR_WRIST`, ...); all when empty.
    #[serde(default)]
    pub body_parts: Vec<String>,
    /// Share of the official train set's patients held out for validation.
    #[serde(default = "val_fraction")]
    pub val_fraction: f64,
    #[serde(default)]
    pub resize: ResizeMode,
    #[serde(default)]
    pub filter: Filter,
    /// Train-time augmentation: a preset (`train`: the MURA paper's flips and ±30°; `eval`: none)
    /// or a full table of settings.
    #[serde(default = "train_augment")]
    pub augment: Augment,
    #[serde(default)]
    pub class_weights: ClassWeighting,
    /// Decoding and augmentation threads.
    #[serde(default = "two")]
    pub threads: usize,
    /// How DICOM frames become display values: `auto` (the file's VOI LUT, else its window, else
    /// the frame's min–max), `none` (min–max) or `"CENTER,WIDTH"`.
    #[serde(default)]
    pub voi: mura_data::Voi,
}

fn val_fraction() -> f64 {
    0.2
}

fn two() -> usize {
    2
}

fn train_augment() -> Augment {
    Augment::Preset(Preset::Train)
}

impl DataConfig {
    /// Defaults for the MURA root `root`.
    pub fn new(root: Option<PathBuf>) -> Self {
        Self {
            root,
            manifest: None,
            body_parts: Vec::new(),
            val_fraction: val_fraction(),
            resize: ResizeMode::default(),
            filter: Filter::default(),
            augment: train_augment(),
            class_weights: ClassWeighting::None,
            threads: two(),
            voi: mura_data::Voi::Auto,
        }
    }
}

/// An augmentation preset by name, or every setting spelled out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Augment {
    Preset(Preset),
    Custom(AugmentConfig),
}

impl Augment {
    pub fn config(&self) -> AugmentConfig {
        match self {
            Augment::Preset(p) => p.config(),
            Augment::Custom(c) => *c,
        }
    }
}

/// Loss weights per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeighting {
    #[default]
    None,
    /// `N / (2 N_c)` over the training images.
    Balanced,
    /// The MURA paper's per-body-part weights.
    Paper,
}

/// Weights to start from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainedConfig {
    /// A `.safetensors` file with the architecture's timm names, or a tag of the weights registry
    /// (`densenet169.tv_in1k`), read from the local hub cache (`cargo xtask fetch-weights`).
    pub weights: PathBuf,
    /// Leave the classifier at its initialisation when its size differs (ImageNet's 1000 classes).
    #[serde(default = "yes")]
    pub skip_classifier: bool,
    /// Sum an RGB first convolution over its input channels for a gray model.
    #[serde(default = "yes")]
    pub fold_first_conv: bool,
}

fn yes() -> bool {
    true
}

/// Which part of the network trains.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Freeze {
    /// Everything trains.
    #[default]
    None,
    /// Only the head trains.
    Backbone,
    /// Stages before the named one are frozen.
    Before(String),
}

/// Two-stage fine-tuning, as in the seed-002 report (docs/recipes.md): the head alone first, then
/// the network from a named stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FineTune {
    /// Epochs of the first stage, backbone frozen, at the optimiser's learning rate.
    pub head_epochs: u32,
    /// The first stage trained in the second stage (`features.denseblock4`); all when absent.
    #[serde(default)]
    pub from: Option<String>,
    /// Learning rate of the second stage.
    pub lr: f64,
}

/// Data-parallel training (`[train.data_parallel]`): `ranks` replicas of the model, each taking
/// its shard of every batch (the global batch is `train.batch_size`), their gradients summed
/// before every step. On the CPU the ranks share its cores; on `cuda:N` rank r runs on
/// `cuda:(N+r)`. BatchNorm statistics are per rank's shard, as PyTorch's DDP keeps them, unless
/// `sync_batch_norm` (PyTorch's `SyncBatchNorm`): then every rank normalises with the whole
/// global batch's statistics, and training matches one process reading the batch whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataParallel {
    pub ranks: usize,
    #[serde(default)]
    pub sync_batch_norm: bool,
}

/// How to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Most epochs (100 as in the seed reports); early stopping may end sooner.
    #[serde(default = "hundred")]
    pub epochs: u32,
    #[serde(default = "eight")]
    pub batch_size: usize,
    /// Batch size of evaluation passes; the training batch size when absent.
    #[serde(default)]
    pub eval_batch_size: Option<usize>,
    #[serde(default = "adam")]
    pub optimizer: OptimizerConfig,
    /// L2 penalty λ·Σw² added to the loss (Keras' `kernel_regularizer`), on top of any decay.
    #[serde(default)]
    pub l2: f64,
    #[serde(default)]
    pub freeze: Freeze,
    /// The quantity `best.safetensors` is chosen by.
    #[serde(default = "val_loss")]
    pub monitor: Monitor,
    #[serde(default)]
    pub early_stopping: Option<EarlyStoppingSettings>,
    #[serde(default)]
    pub plateau: Option<PlateauConfig>,
    /// A per-step learning-rate schedule (cosine, warm-up); not with `plateau`.
    #[serde(default)]
    pub schedule: Option<Schedule>,
    #[serde(default)]
    pub fine_tune: Option<FineTune>,
    /// With the whole backbone frozen and no random augmentation, compute the backbone's
    /// features once and train the head on them (see `cache.rs`).
    #[serde(default = "yes")]
    pub feature_cache: bool,
    /// Save `last.safetensors` inside an epoch at least this often (minutes of training), so a
    /// killed run loses little; 0 saves only at epoch ends.
    #[serde(default = "ten")]
    pub checkpoint_minutes: f64,
    /// Also save it every this many steps inside an epoch.
    #[serde(default)]
    pub checkpoint_steps: Option<u64>,
    /// How the decision threshold is chosen on the validation studies when the run ends
    /// (`kappa`: maximum Cohen's kappa; `youden`: maximum sensitivity + specificity - 1); stored in
    /// `threshold.json` and reported by `evaluate` beside 0.5.
    #[serde(default)]
    pub threshold: mura_metrics::Criterion,
    /// Fit a temperature on the validation images when the run ends (stored in
    /// `calibration.json`), so that its probabilities are calibrated; the threshold is then
    /// chosen, and every prediction made, on the calibrated probabilities.
    #[serde(default = "yes")]
    pub calibrate: bool,
    /// Also write the per-epoch scalars as TensorBoard event files under `<run>/tensorboard/`.
    #[serde(default)]
    pub tensorboard: bool,
    /// Train with several replicas; one process, one device when absent.
    #[serde(default)]
    pub data_parallel: Option<DataParallel>,
}

impl TrainConfig {
    /// Ranks of data-parallel training (1 without it).
    pub fn ranks(&self) -> usize {
        self.data_parallel.map_or(1, |d| d.ranks)
    }
}

/// Early stopping and whether the best weights are restored at the end.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStoppingSettings {
    pub monitor: Monitor,
    /// Epochs without improvement before stopping.
    pub patience: u32,
    #[serde(default)]
    pub min_delta: f64,
    /// End with the best epoch's weights (Keras' `restore_best_weights`).
    #[serde(default = "yes")]
    pub restore_best: bool,
}

impl EarlyStoppingSettings {
    pub fn policy(&self) -> EarlyStoppingConfig {
        EarlyStoppingConfig {
            monitor: self.monitor,
            patience: self.patience,
            min_delta: self.min_delta,
        }
    }
}

fn ten() -> f64 {
    10.0
}

fn hundred() -> u32 {
    100
}

fn eight() -> usize {
    8
}

fn adam() -> OptimizerConfig {
    OptimizerConfig::adam(1e-3)
}

fn val_loss() -> Monitor {
    Monitor::ValLoss
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: hundred(),
            batch_size: eight(),
            eval_batch_size: None,
            optimizer: adam(),
            l2: 0.0,
            freeze: Freeze::None,
            monitor: val_loss(),
            early_stopping: None,
            plateau: None,
            schedule: None,
            fine_tune: None,
            feature_cache: yes(),
            checkpoint_minutes: ten(),
            checkpoint_steps: None,
            threshold: mura_metrics::Criterion::Kappa,
            calibrate: yes(),
            tensorboard: false,
            data_parallel: None,
        }
    }
}

impl RunConfig {
    /// Reads and checks a TOML run configuration; errors name the file and the key.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|e| match e {
            TrainError::Config { reason, .. } => TrainError::Config {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<Self, TrainError> {
        let config: RunConfig = toml::from_str(text).map_err(|e| TrainError::Config {
            path: PathBuf::new(),
            reason: e.message().to_string()
                + &e.span()
                    .map(|s| {
                        let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                        format!(" (line {line})")
                    })
                    .unwrap_or_default(),
        })?;
        config.check_settings()?;
        Ok(config)
    }

    /// The configuration as TOML, as saved in the run directory.
    pub fn to_toml(&self) -> Result<String, TrainError> {
        toml::to_string_pretty(self).map_err(|e| TrainError::Config {
            path: PathBuf::from("config.toml"),
            reason: e.to_string(),
        })
    }

    /// The run's name: the configured one, or `<arch>-s<seed>`.
    pub fn run_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}-s{}", self.model.arch, self.seed))
    }

    /// Checks every setting that can be checked without the data or the model, and that the data
    /// source is given.
    pub fn check(&self) -> Result<(), TrainError> {
        let bad = |reason: &str| {
            Err(TrainError::Config {
                path: PathBuf::new(),
                reason: reason.into(),
            })
        };
        if self.data.root.is_none() && self.data.manifest.is_none() {
            return bad("data: give `root` (a MURA folder, or `--data`) or `manifest` and `root`");
        }
        if self.data.manifest.is_some() && self.data.root.is_none() {
            return bad("data: a manifest's paths are relative to `root`; give `root` too");
        }
        self.check_settings()
    }

    /// [`RunConfig::check`] without the data source, which a shared config may leave to `--data`.
    pub fn check_settings(&self) -> Result<(), TrainError> {
        let bad = |reason: String| {
            Err(TrainError::Config {
                path: PathBuf::new(),
                reason,
            })
        };
        if !(self.data.val_fraction > 0.0 && self.data.val_fraction < 1.0) {
            return bad(format!(
                "data.val_fraction must be in (0, 1), got {}",
                self.data.val_fraction
            ));
        }
        if self.data.threads == 0 {
            return bad("data.threads must be at least 1".into());
        }
        for p in &self.data.body_parts {
            if let Err(e) = p.parse::<mura_data::BodyPart>() {
                return bad(format!("data.body_parts: {e}"));
            }
        }
        if let Some(name) = &self.name
            && (name.is_empty() || name.contains(['/', '\\']) || name == "." || name == "..")
        {
            return bad(format!("name {name:?} must be a plain folder name"));
        }
        let t = &self.train;
        if t.epochs == 0 {
            return bad("train.epochs must be at least 1".into());
        }
        if t.batch_size == 0 || t.eval_batch_size == Some(0) {
            return bad("train.batch_size must be at least 1".into());
        }
        if !(t.l2.is_finite() && t.l2 >= 0.0) {
            return bad(format!("train.l2 must be finite and ≥ 0, got {}", t.l2));
        }
        if !(t.checkpoint_minutes.is_finite() && t.checkpoint_minutes >= 0.0) {
            return bad(format!(
                "train.checkpoint_minutes must be finite and ≥ 0, got {}",
                t.checkpoint_minutes
            ));
        }
        if let Some(d) = t.data_parallel
            && !(1..=t.batch_size).contains(&d.ranks)
        {
            return bad(format!(
                "train.data_parallel.ranks must be from 1 to train.batch_size ({}), got {}",
                t.batch_size, d.ranks
            ));
        }
        if let Some(d) = t.data_parallel
            && d.sync_batch_norm
            && d.ranks < 2
        {
            return bad(
                "train.data_parallel.sync_batch_norm needs more than one rank (ranks = N)".into(),
            );
        }
        if t.checkpoint_steps == Some(0) {
            return bad("train.checkpoint_steps must be at least 1".into());
        }
        if t.plateau.is_some() && t.schedule.is_some() {
            return bad(
                "train: `plateau` and `schedule` both set the learning rate; keep one".into(),
            );
        }
        if let Some(f) = &t.fine_tune {
            if f.head_epochs >= t.epochs {
                return bad(format!(
                    "train.fine_tune.head_epochs ({}) must be below train.epochs ({})",
                    f.head_epochs, t.epochs
                ));
            }
            if !(f.lr.is_finite() && f.lr > 0.0) {
                return bad(format!("train.fine_tune.lr must be positive, got {}", f.lr));
            }
            if t.freeze != Freeze::None {
                return bad("train: `fine_tune` decides the freezing; drop `freeze`".into());
            }
        }
        t.optimizer.check()?;
        if let Some(s) = &t.schedule {
            s.check()?;
        }
        if let Some(es) = &t.early_stopping {
            crate::EarlyStopping::new(es.policy())?;
        }
        if let Some(p) = &t.plateau {
            crate::Plateau::new(*p)?;
        }
        self.model.check()?;
        Ok(())
    }

    /// Body parts to keep, parsed.
    pub fn body_parts(&self) -> Vec<mura_data::BodyPart> {
        self.data
            .body_parts
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

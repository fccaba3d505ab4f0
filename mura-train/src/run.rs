//! The basics of a run directory that training, evaluation and ensembles share: its file names,
//! the device, the data of a run (manifest, examples, class weights), the pipelines and loader
//! settings derived from its config and seed, creating a new run directory, the choice of
//! checkpoint and the stored decision threshold.
//!
//! Run directory (`<out>/<name>/`): `config.toml` (resolved), `split.csv` (the manifest),
//! `history.csv`, `best.safetensors` (model only), `last.safetensors` (model, optimiser state
//! and training state), `metrics.json`, `curves.png` and `threshold.json`. Every file is written
//! to a temporary name and renamed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use mura_augment::{Normalize, Pipeline, Preprocess};
use mura_data::rng::derive_seed;
use mura_data::{
    BodyPart, ClassWeights, ImageRecord, IndexOptions, LoaderConfig, Manifest, Role, SplitConfig,
};
use mura_metrics::{Temperature, Threshold};
use mura_models::{Model, hub};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::config::{ClassWeighting, RunConfig};
use crate::epoch::Example;
use crate::io::{read_json, write_durable, write_json};
use crate::lock::RunLock;

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
    pub const CALIBRATION: &str = "calibration.json";
    /// Marks an ensemble directory (instead of `config.toml`).
    pub const ENSEMBLE: &str = "ensemble.toml";
}

/// Streams of the run's one seed.
pub(crate) const STREAM_SPLIT: u64 = 1;
const STREAM_LOADER: u64 = 2;
const STREAM_AUGMENT: u64 = 3;

/// Lets (or forbids) candle's f32 matrix products and cuDNN convolutions on NVIDIA GPUs use TF32
/// tensor cores, for the whole process (`RunConfig::tf32`). No effect on the CPU.
pub fn set_tf32(on: bool) {
    candle_core::cuda::set_gemm_reduced_precision_f32(on)
}

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
            // A stream of its own (not CUDA's per-thread default stream): the ranks of a
            // data-parallel run read rank 0's tensors from other threads, and NCCL's
            // communicators are built on the devices' streams.
            Device::new_cuda_with_stream(n).map_err(|e| {
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
        voi: config.data.voi,
        ..LoaderConfig::default()
    }
}

/// Creates a new run directory for `config` under `out` (`out/<run name>`) and returns it (see
/// [`init_run_dir`]).
pub fn create_run_dir(config: &RunConfig, out: &Path) -> Result<PathBuf, TrainError> {
    let dir = out.join(config.run_name());
    init_run_dir(config, &dir)?;
    Ok(dir)
}

/// Makes `dir` the directory of a new run of `config`; it must not already hold a run that
/// started training (one that failed before its first checkpoint, e.g. on a wrong data root, is
/// started afresh). The resolved config is written first, which also proves the folder writable.
pub fn init_run_dir(config: &RunConfig, dir: &Path) -> Result<(), TrainError> {
    let dir = dir.to_path_buf();
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
    write_durable(&dir.join(files::CONFIG), resolved.to_toml()?.as_bytes())
}

/// A run's calibration: the temperature fitted on its validation images, and their expected
/// calibration error (10 equal-width bins) before and after it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    #[serde(flatten)]
    pub temperature: Temperature,
    pub images: usize,
    pub ece_before: f64,
    pub ece_after: f64,
}

/// The stored calibration of a run, if one was fitted.
pub fn load_calibration(dir: &Path) -> Result<Option<Calibration>, TrainError> {
    read_json(&dir.join(files::CALIBRATION))
}

/// Stores (or, with `None`, removes) the calibration of a run.
pub fn store_calibration(dir: &Path, c: Option<&Calibration>) -> Result<(), TrainError> {
    let path = dir.join(files::CALIBRATION);
    match c {
        Some(c) => write_json(&path, c),
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TrainError::Unwritable {
                path,
                reason: e.to_string(),
            }),
            _ => Ok(()),
        },
    }
}

/// Whether `dir` holds a run (`config.toml`) or an ensemble (`ensemble.toml`).
pub fn is_run_dir(dir: &Path) -> bool {
    dir.join(files::CONFIG).is_file() || dir.join(files::ENSEMBLE).is_file()
}

/// `Ok` when `dir` is a run or ensemble directory; otherwise an error that names, when there is
/// exactly one, the run directory inside it (`--out runs` given where `runs/<name>` was meant).
pub fn check_run_dir(dir: &Path) -> Result<(), TrainError> {
    if is_run_dir(dir) {
        return Ok(());
    }
    let mut runs = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && is_run_dir(p));
    let below = match (runs.next(), runs.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    };
    Err(TrainError::NotARun {
        path: dir.to_path_buf(),
        below,
    })
}

/// The config of the run in `dir` to resume: its `config.toml`, when it has a
/// `last.safetensors` to continue from.
pub fn resume_config(dir: &Path) -> Result<RunConfig, TrainError> {
    let config = RunConfig::load(&dir.join(files::CONFIG))?;
    if !dir.join(files::LAST).exists() {
        return Err(TrainError::BadCheckpoint {
            path: dir.join(files::LAST),
            reason: "missing: there is nothing to resume (start the run with `mura train`)".into(),
        });
    }
    Ok(config)
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

/// The stored threshold of a run or ensemble directory, if one was chosen.
pub fn load_threshold(dir: &Path) -> Result<Option<Threshold>, TrainError> {
    read_json(&dir.join(files::THRESHOLD))
}

/// Stores `threshold` as the decision threshold of a run or ensemble directory.
pub fn store_threshold(dir: &Path, threshold: &Threshold) -> Result<(), TrainError> {
    write_json(&dir.join(files::THRESHOLD), threshold)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::EarlyStoppingSettings;
    use crate::policy::Monitor;

    #[test]
    fn tf32_is_on_by_default_and_follows_the_setting() {
        let toml = "[data]\nroot = \"d\"\n[model]\narch = \"custom-cnn\"\n";
        let on: RunConfig = toml::from_str(toml).unwrap();
        assert!(on.tf32);
        let off: RunConfig = toml::from_str(&format!("tf32 = false\n{toml}")).unwrap();
        assert!(!off.tf32);
        if cfg!(feature = "cuda") {
            set_tf32(false);
            assert!(!candle_core::cuda::gemm_reduced_precision_f32());
            set_tf32(true);
            assert!(candle_core::cuda::gemm_reduced_precision_f32());
        }
    }

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

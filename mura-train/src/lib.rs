#![doc = include_str!("../README.md")]

pub mod bench;
pub mod cache;
pub mod compare;
pub mod config;
pub mod cv;
pub mod demo;
pub mod ensemble;
pub mod epoch;
pub mod evaluate;
pub mod explain;
pub mod export;
pub mod fit;
pub mod history;
pub mod io;
pub mod lock;
pub mod loss;
pub mod observer;
pub mod optim;
pub mod parallel;
pub mod plot;
pub mod policy;
pub mod predict;
pub mod report;
pub mod run;
pub mod schedule;
mod session;
pub mod state;
pub mod sweep;
pub mod tensorboard;
pub mod train;
pub mod trained;

pub use config::{
    Augment, ClassWeighting, DataConfig, DataParallel, EarlyStoppingSettings, FineTune, Freeze,
    Overrides, PretrainedConfig, RunConfig, TrainConfig,
};
pub use ensemble::{EnsembleMode, Input, Predictor, create_ensemble};
pub use epoch::{
    Batch, Batches, EpochEnd, EpochProgress, EpochStats, Example, batches, batches_from, predict,
    step_seed, train_epoch, train_epoch_with,
};
pub use evaluate::{EvaluateOptions, Evaluation, evaluate};
pub use export::{ExportOptions, ExportReport, export_model, export_run};
pub use fit::{FitEnd, FitOptions, FitSummary, fit};
pub use history::HistoryRow;
pub use loss::{bce_with_logits, l2_penalty};
pub use observer::{Observer, Silent};
pub use optim::{Optim, OptimizerConfig, Scheduled};
pub use policy::{
    EarlyStopping, EarlyStoppingConfig, Mode, Monitor, Plateau, PlateauConfig, StopDecision,
};
pub use run::{RunData, Weights, create_run_dir, init_run_dir};
pub use schedule::Schedule;
pub use train::train;
pub use trained::{TrainedRun, Tta};

/// The one error type of `mura-train`.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(
        "{}: its preprocessed pixels hold NaN or infinity (check the normalisation and augmentation settings)",
        path.display()
    )]
    NonFiniteInput { path: std::path::PathBuf },
    #[error("{what} must be {expected}, got {value}")]
    BadParameter {
        what: &'static str,
        expected: &'static str,
        value: f64,
    },
    #[error("optimiser state does not fit: {reason}")]
    BadOptimizerState { reason: String },
    /// `epoch` and `batch` count from 1, as the progress output does.
    #[error(
        "{what} became {value} at epoch {epoch}, batch {batch}: training stopped before applying it, and the last good checkpoint is kept"
    )]
    NonFinite {
        what: String,
        epoch: u64,
        batch: u64,
        value: f64,
    },
    /// `path` is empty for a setting that came from no file (a flag, a default).
    #[error("{}{reason}", if path.as_os_str().is_empty() { String::new() } else { format!("{}: ", path.display()) })]
    Config {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("{}: {reason}", path.display())]
    Input {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(
        "{} is not a run or ensemble directory (it has no config.toml or ensemble.toml){}",
        path.display(),
        below.as_ref().map(|b| format!("; the run directory in it is {}", b.display())).unwrap_or_default()
    )]
    NotARun {
        path: std::path::PathBuf,
        /// The one run or ensemble directory directly inside `path`, when there is exactly one.
        below: Option<std::path::PathBuf>,
    },
    #[error("device `{spec}`: {reason}")]
    Device { spec: String, reason: String },
    #[error(
        "{} already holds a run: resume it with `mura train --resume {}` or choose another name",
        path.display(),
        path.display()
    )]
    RunExists { path: std::path::PathBuf },
    #[error(
        "{} is in use by {holder} (another `mura train`?); wait for it to end or stop it",
        path.display()
    )]
    RunLocked {
        path: std::path::PathBuf,
        holder: String,
    },
    #[error("cannot write {}: {reason}", path.display())]
    Unwritable {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("checkpoint {}: {reason}", path.display())]
    BadCheckpoint {
        path: std::path::PathBuf,
        reason: String,
    },
    /// A data-parallel rank failed or was stopped by another's failure.
    #[error("data-parallel training: {reason}")]
    Parallel { reason: String },
    #[error("plot: {0}")]
    Plot(String),
    #[error(transparent)]
    Data(#[from] mura_data::DataError),
    #[error(transparent)]
    Augment(#[from] mura_augment::AugmentError),
    #[error(transparent)]
    Metrics(#[from] mura_metrics::MetricsError),
    #[error(transparent)]
    Model(#[from] mura_models::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

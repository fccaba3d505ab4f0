#![doc = include_str!("../README.md")]

pub mod epoch;
pub mod loss;
pub mod optim;
pub mod policy;

pub use epoch::{Batch, Batches, EpochStats, Example, batches, predict, step_seed, train_epoch};
pub use loss::{bce_with_logits, l2_penalty};
pub use optim::{Optim, OptimizerConfig};
pub use policy::{
    EarlyStopping, EarlyStoppingConfig, Mode, Monitor, Plateau, PlateauConfig, StopDecision,
};

/// The one error type of `mura-train`.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{what} must be {expected}, got {value}")]
    BadParameter {
        what: &'static str,
        expected: &'static str,
        value: f64,
    },
    #[error("optimiser state does not fit: {reason}")]
    BadOptimizerState { reason: String },
    #[error(
        "the loss became {value} at epoch {epoch}, step {step}; the last good checkpoint is kept"
    )]
    NonFinite { epoch: u64, step: u64, value: f64 },
    #[error(transparent)]
    Data(#[from] mura_data::DataError),
    #[error(transparent)]
    Model(#[from] mura_models::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

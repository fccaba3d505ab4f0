#![doc = include_str!("../README.md")]

pub mod cnn;
pub mod pool;

pub use cnn::{Cnn, CnnConfig, FilterGrowth, KernelGrowth, LocalPool, Readout};
pub use pool::{Pool2d, PoolKind};

/// The one error type of `mura-models`.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model config: {reason}")]
    BadConfig { reason: String },
    #[error("input of shape {found} does not fit the model, which expects {expected}")]
    BadInput { expected: String, found: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

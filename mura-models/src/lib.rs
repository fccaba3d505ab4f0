#![doc = include_str!("../README.md")]

pub mod checkpoint;
pub mod cnn;
pub mod config;
pub mod densenet;
pub mod gradcam;
pub mod head;
pub mod hub;
pub mod inception;
pub mod init;
pub mod inspect;
pub mod layers;
pub mod model;
pub mod onnx;
pub mod resnet;
pub mod summary;
mod vars;

pub use checkpoint::{LoadOptions, LoadReport, Mismatch, TensorInfo};
pub use cnn::{Cnn, CnnConfig, FilterGrowth, KernelGrowth, LocalPool, Readout};
pub use config::{Arch, Interpolation, ModelConfig, PretrainedCfg, Trainable};
pub use densenet::{DenseNet, DenseNetConfig};
pub use gradcam::{GradCam, grad_cam};
pub use head::{GlobalPool, Head, HeadConfig};
pub use inception::{InceptionA, InceptionB, InceptionC, InceptionD, InceptionE, InceptionV3};
pub use init::init_seeded;
pub use model::Model;
pub use mura_kernels::{Pool2d, PoolKind};
pub use onnx::{Exported, OnnxOptions, to_onnx};
pub use resnet::{BlockKind, ResNet, ResNetConfig};
pub use summary::{Summary, SummaryRow, summarize};

/// The one error type of `mura-models`.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model config: {reason}")]
    BadConfig { reason: String },
    #[error("unknown architecture `{name}` (known: {known})")]
    UnknownArch { name: String, known: String },
    #[error("{arch} has no stage `{name}` (stages: {stages})")]
    UnknownStage {
        name: String,
        arch: String,
        stages: String,
    },
    #[error("input of shape {found} does not fit the model, which expects {expected}")]
    BadInput { expected: String, found: String },
    #[error("running {arch} on `input` of {path}: {reason}")]
    Forward {
        arch: String,
        path: String,
        reason: String,
    },
    #[error("cannot export {arch} to ONNX: {reason}")]
    Export { arch: String, reason: String },
    #[error("{path}: cannot read checkpoint: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path}: cannot write: {reason}")]
    Unwritable { path: String, reason: String },
    #[error("{path} does not fit {arch}: {} tensor(s) at fault: {}", problems.len(), problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Checkpoint {
        path: String,
        arch: String,
        problems: Vec<Mismatch>,
    },
    #[error("unknown pretrained weights `{tag}` (known: {known})")]
    UnknownWeights { tag: String, known: String },
    #[error(
        "pretrained weights `{tag}` are not in the local hub cache {cache}; fetch them with `{command}`"
    )]
    WeightsNotCached {
        tag: String,
        cache: String,
        command: String,
    },
    #[error("{0}")]
    DigestMismatch(Box<hub::DigestMismatch>),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

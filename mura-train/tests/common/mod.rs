//! What the whole-run tests share: a small synthetic MURA and a tiny run configuration.

#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use mura_data::synth::{Difficulty, SynthConfig, generate};
use mura_models::{Arch, CnnConfig, LocalPool, ModelConfig, Readout};
use mura_train::{
    ClassWeighting, DataConfig, OptimizerConfig, RunConfig, TrainConfig, create_run_dir,
};

/// One small, easy synthetic data set shared by the tests (generated once per test binary).
pub fn data() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        generate(
            dir.path(),
            &SynthConfig {
                studies: 500,
                seed: 3,
                max_side: 128,
                valid_fraction: 0.2,
                odd_format_fraction: 0.0,
                difficulty: Difficulty::Easy,
            },
        )
        .unwrap();
        dir
    })
    .path()
}

/// A 5-block CNN (8 filters doubling) on `size`-px gray input, Adam 3e-3, balanced weights, the
/// MURA paper's flips and rotations.
pub fn config(name: &str, epochs: u32) -> RunConfig {
    sized(name, epochs, 48)
}

pub fn sized(name: &str, epochs: u32, size: usize) -> RunConfig {
    RunConfig {
        name: Some(name.into()),
        seed: 11,
        device: "cpu".into(),
        tf32: true,
        data: DataConfig {
            class_weights: ClassWeighting::Balanced,
            resize: mura_augment::ResizeMode::Stretch,
            ..DataConfig::new(Some(data().to_path_buf()))
        },
        model: ModelConfig {
            in_channels: 1,
            input_size: Some(size),
            cnn: Some(CnnConfig {
                blocks: if size >= 96 { 5 } else { 4 },
                filters: 8,
                pool: Some(LocalPool::Max),
                readout: Readout::GlobalMax,
                dropout: 0.1,
                ..CnnConfig::custom_cnn()
            }),
            ..ModelConfig::new(Arch::CustomCnn)
        },
        pretrained: None,
        train: TrainConfig {
            epochs,
            batch_size: 16,
            optimizer: OptimizerConfig::adam(3e-3),
            ..TrainConfig::default()
        },
    }
}

pub fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let map = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = map
        .into_iter()
        .map(|(n, t)| {
            let v = t
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            (n, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub fn new_run(c: &RunConfig) -> (tempfile::TempDir, PathBuf) {
    let out = tempfile::tempdir().unwrap();
    let dir = create_run_dir(c, out.path()).unwrap();
    (out, dir)
}

/// SGD at a rate large enough that the weights overflow f32 after the first step.
pub fn diverging() -> OptimizerConfig {
    OptimizerConfig::Sgd {
        lr: 1e300,
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    }
}

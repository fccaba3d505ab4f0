//! Training memory stays flat: candle's leaf gradients reference the forward graph, so an
//! optimiser that kept one in its moments would hold every step's activations (on a small CNN at
//! batch 32, enough for the OOM killer to end a run within a few epochs). Own test binary, so
//! that no other test shares the process's resident size.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::{DType, Device, Tensor};
use mura_models::{Arch, CnnConfig, LocalPool, Model, ModelConfig, Readout};
use mura_train::{Optim, OptimizerConfig, bce_with_logits};

/// Resident set size in MB (Linux); None elsewhere.
fn rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0 / 1e6)
}

#[test]
fn optimiser_steps_do_not_accumulate_memory() {
    let dev = Device::Cpu;
    let cfg = ModelConfig {
        in_channels: 1,
        input_size: Some(64),
        cnn: Some(CnnConfig {
            blocks: 4,
            filters: 8,
            pool: Some(LocalPool::Max),
            readout: Readout::GlobalMax,
            dropout: 0.2,
            ..CnnConfig::custom_cnn()
        }),
        ..ModelConfig::new(Arch::CustomCnn)
    };
    let x = Tensor::randn(0f32, 1., (16, 1, 64, 64), &dev).unwrap();
    let y = Tensor::ones((16, 1), DType::F32, &dev).unwrap();
    for opt in [
        OptimizerConfig::adam(1e-3),
        OptimizerConfig::Sgd {
            lr: 1e-2,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
        },
    ] {
        let (model, vars) = Model::with_seed(&cfg, 0, &dev).unwrap();
        let mut optim = Optim::new(opt, model.trainable_vars(&vars)).unwrap();
        let step = |optim: &mut Optim| {
            let loss = bce_with_logits(&model.forward(&x, true).unwrap(), &y, None).unwrap();
            optim.step(&loss.backward().unwrap()).unwrap();
        };
        for _ in 0..5 {
            step(&mut optim);
        }
        let Some(before) = rss_mb() else { return };
        for _ in 0..40 {
            step(&mut optim);
        }
        let after = rss_mb().unwrap_or(before);
        // One step's activations and gradients are ~8 MB here; a leak adds them every step
        // (≥ 300 MB over 40 steps). Allocator noise stays well under 100 MB.
        assert!(
            after - before < 100.0,
            "resident size grew {before:.0} → {after:.0} MB over 40 steps"
        );
    }
}

//! Model throughput, measured as `../shared/peers/models.py` measures PyTorch: random weights, a
//! random N×3×S×S batch, inference (eval mode, no gradient) or a whole training step (train-mode
//! forward, BCE on logits, backward, Adam), 2 warm-up steps then the median of `iters`.

use std::time::Instant;

use candle_core::{DType, Tensor};
use mura_models::{Arch, Model, ModelConfig};
use serde::Serialize;

use crate::TrainError;
use crate::loss::bce_with_logits;
use crate::optim::{Optim, OptimizerConfig};

/// What a model benchmark runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchMode {
    Infer,
    Train,
}

impl BenchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BenchMode::Infer => "infer",
            BenchMode::Train => "train",
        }
    }
}

/// A model benchmark's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelBench {
    pub arch: Arch,
    pub mode: BenchMode,
    /// Batch size; the peer's default when absent (16 to infer, 8 to train).
    pub batch: Option<usize>,
    /// Input side; the peer's default when absent (256 for the custom CNN, 299 for
    /// Inception-v3, 224 otherwise).
    pub image_size: Option<usize>,
    /// Timed steps after 2 warm-up steps; the median is reported.
    pub iters: usize,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// TF32 f32 products on a GPU (the peer turns them on).
    pub tf32: bool,
}

/// A model benchmark's result (the peer's JSON fields).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchResult {
    pub arch: String,
    pub mode: BenchMode,
    #[serde(rename = "impl")]
    pub implementation: String,
    pub batch: usize,
    pub image_size: usize,
    pub threads: usize,
    pub images_per_sec: f64,
    /// Median seconds per step.
    pub seconds_per_step: f64,
    /// Peak resident memory of the process (Linux), MB.
    pub peak_rss_mb: Option<f64>,
    /// The kernels that ran: `cpu` (this crate's), `generic` (candle's ops on the CPU) or `cuda`.
    pub kernels: &'static str,
    /// Whether f32 products could use TF32 (GPUs only; always false on the CPU).
    pub tf32: bool,
}

/// The process's peak resident set size in MB (`VmHWM`; Linux only).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs the benchmark on its device.
pub fn bench_model(b: &ModelBench) -> Result<BenchResult, TrainError> {
    let batch = b.batch.unwrap_or(match b.mode {
        BenchMode::Infer => 16,
        BenchMode::Train => 8,
    });
    if batch == 0 || b.iters == 0 {
        return Err(TrainError::BadParameter {
            what: "benchmark batch and iterations",
            expected: "positive",
            value: 0.0,
        });
    }
    let size = b.image_size.unwrap_or(match b.arch {
        Arch::CustomCnn => 256,
        a => a.default_input_size(),
    });
    let dev = crate::run::device(&b.device)?;
    crate::run::set_tf32(b.tf32);
    let config = ModelConfig {
        in_channels: 3,
        input_size: Some(size),
        ..ModelConfig::new(b.arch)
    };
    let (model, varmap) = Model::with_seed(&config, 0, &dev)?;
    let x = Tensor::randn(0f32, 1f32, (batch, 3, size, size), &dev)?;
    let y = Tensor::from_vec(
        (0..batch).map(|i| (i % 2) as f32).collect::<Vec<_>>(),
        (batch, 1),
        &dev,
    )?;
    let mut optim = Optim::new(OptimizerConfig::adam(1e-4), model.trainable_vars(&varmap))?;
    // Inference runs as evaluation does: on the weights without autograd bookkeeping, BatchNorm
    // folded where it can be.
    let inference = model.for_inference(&varmap)?;
    let mut step = || -> Result<(), TrainError> {
        match b.mode {
            BenchMode::Infer => {
                inference
                    .forward(&x, false)?
                    .to_dtype(DType::F32)?
                    .sum_all()?;
            }
            BenchMode::Train => {
                let loss = bce_with_logits(&model.forward(&x, true)?, &y, None)?;
                optim.step(&loss.backward()?)?;
            }
        }
        Ok(())
    };
    for _ in 0..2 {
        step()?;
    }
    let mut times = Vec::with_capacity(b.iters);
    for _ in 0..b.iters {
        let t = Instant::now();
        step()?;
        dev.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let sec = median(times);
    Ok(BenchResult {
        arch: b.arch.name().to_string(),
        mode: b.mode,
        implementation: "mura-candle".into(),
        batch,
        image_size: size,
        threads: candle_core::utils::get_num_threads(),
        images_per_sec: batch as f64 / sec,
        seconds_per_step: sec,
        peak_rss_mb: peak_rss_mb(),
        kernels: mura_kernels::Kernels::for_device(&dev, DType::F32).name(),
        tf32: dev.is_cuda() && candle_core::cuda::gemm_reduced_precision_f32(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_small_model_benchmark_reports_its_rate() {
        let r = bench_model(&ModelBench {
            arch: Arch::CustomCnn,
            mode: BenchMode::Train,
            batch: Some(2),
            image_size: Some(64),
            iters: 1,
            device: "cpu".into(),
            tf32: true,
        })
        .unwrap();
        assert_eq!((r.batch, r.image_size), (2, 64));
        assert!(r.images_per_sec > 0.0 && r.images_per_sec.is_finite());
        assert!((r.images_per_sec * r.seconds_per_step - 2.0).abs() < 1e-9);
        let bad = ModelBench {
            batch: Some(0),
            ..ModelBench {
                arch: Arch::CustomCnn,
                mode: BenchMode::Infer,
                batch: None,
                image_size: Some(64),
                iters: 1,
                device: "cpu".into(),
                tf32: true,
            }
        };
        assert!(bench_model(&bad).is_err());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}

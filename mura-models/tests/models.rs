//! Integration tests of mura-models against PyTorch fixtures (`tools/*.py`, outputs committed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "models/candle_grads.rs"]
mod candle_grads;
#[path = "models/common.rs"]
mod common;
#[path = "models/contract.rs"]
mod contract;
#[path = "models/gradcheck.rs"]
mod gradcheck;
#[path = "models/sync_bn.rs"]
mod sync_bn;
#[path = "models/zoo.rs"]
mod zoo;

use candle_core::{Device, Tensor, Var};
use mura_models::{Pool2d, PoolKind};
use serde::Deserialize;

#[derive(Deserialize)]
struct PoolFixture {
    input_shape: Vec<usize>,
    input: Vec<f64>,
    cases: Vec<PoolCase>,
}

#[derive(Deserialize)]
struct PoolCase {
    name: String,
    kind: String,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    count_include_pad: bool,
    output_shape: Vec<usize>,
    output: Vec<f64>,
    weights: Vec<f64>,
    input_grad: Vec<f64>,
}

/// Pooling equals PyTorch's `max_pool2d` / `avg_pool2d`, forward and input gradient, in f64 to
/// 1e-12 and in f32 to 1e-5 (relative to the magnitude, inputs are standard normal).
#[test]
fn pooling_matches_pytorch() {
    mura_kernels::with_generic(false, pooling)
}

/// The same fixture through the generic pooling (tensor ops, as on a GPU).
#[test]
fn pooling_matches_pytorch_on_the_generic_path() {
    mura_kernels::with_generic(true, pooling)
}

fn pooling() {
    let fixture: PoolFixture =
        serde_json::from_str(include_str!("fixtures/pool_torch.json")).unwrap();
    assert_eq!(fixture.cases.len(), 7);
    let dev = Device::Cpu;
    for case in &fixture.cases {
        let pool = Pool2d {
            kind: match case.kind.as_str() {
                "max" => PoolKind::Max,
                _ => PoolKind::Avg {
                    count_include_pad: case.count_include_pad,
                },
            },
            kernel: case.kernel,
            stride: case.stride,
            padding: case.padding,
        };
        for f32_run in [false, true] {
            let tol = if f32_run { 1e-5 } else { 1e-12 };
            let x = Tensor::from_vec(fixture.input.clone(), fixture.input_shape.as_slice(), &dev)
                .unwrap();
            let x = if f32_run {
                x.to_dtype(DType::F32).unwrap()
            } else {
                x
            };
            let x = Var::from_tensor(&x).unwrap();
            let y = pool.forward(x.as_tensor()).unwrap();
            assert_eq!(y.dims(), case.output_shape.as_slice(), "{}", case.name);
            let w = Tensor::from_vec(case.weights.clone(), y.shape(), &dev)
                .unwrap()
                .to_dtype(y.dtype())
                .unwrap();
            let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let out: Vec<f64> = y
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let grad: Vec<f64> = grads
                .get(x.as_tensor())
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (a, b) in out.iter().zip(&case.output) {
                assert!(
                    (a - b).abs() <= tol * (1.0 + b.abs()),
                    "{} forward: {a} vs {b}",
                    case.name
                );
            }
            for (a, b) in grad.iter().zip(&case.input_grad) {
                assert!(
                    (a - b).abs() <= tol * (1.0 + b.abs()),
                    "{} gradient: {a} vs {b}",
                    case.name
                );
            }
        }
    }
}

use candle_core::DType;
use candle_nn::{Optimizer, VarBuilder, VarMap};
use mura_models::{Cnn, CnnConfig, FilterGrowth, KernelGrowth, LocalPool, ModelError, Readout};

/// Mean BCE on logits in the log-sum-exp form, max(z, 0) - z·t + ln(1 + e^-|z|).
/// candle-nn's `binary_cross_entropy_with_logit` takes a sigmoid then a log, which gives NaN once
/// a logit passes about 17 in f32 (vgg-style reaches 17.9 within five training steps).
fn stable_bce_with_logits(z: &Tensor, t: &Tensor) -> Tensor {
    let relu = z.relu().unwrap();
    let soft = (z.abs().unwrap().neg().unwrap().exp().unwrap() + 1.0)
        .unwrap()
        .log()
        .unwrap();
    ((relu - (z * t).unwrap()).unwrap() + soft)
        .unwrap()
        .mean_all()
        .unwrap()
}

#[test]
fn stable_bce_is_finite_where_candles_is_not() {
    let dev = Device::Cpu;
    let z = Tensor::new(&[[30f32], [-30.], [100.], [0.]], &dev).unwrap();
    let t = Tensor::new(&[[1f32], [1.], [0.], [1.]], &dev).unwrap();
    let ours = stable_bce_with_logits(&z, &t).to_scalar::<f32>().unwrap();
    // (≈0 + 30 + 100 + ln 2) / 4
    assert!((ours - (130.0 + 2f32.ln()) / 4.0).abs() < 1e-4, "{ours}");
    let theirs = candle_nn::loss::binary_cross_entropy_with_logit(&z, &t)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        !theirs.is_finite(),
        "candle-nn 0.11.1 was expected to overflow here, got {theirs}"
    );
}

/// The presets at a small input size, and one config that switches on everything else.
fn contract_configs() -> Vec<CnnConfig> {
    let mut configs: Vec<CnnConfig> = CnnConfig::PRESETS
        .iter()
        .map(|p| CnnConfig {
            input_size: 64,
            ..CnnConfig::preset(p).unwrap()
        })
        .collect();
    configs.push(CnnConfig {
        in_channels: 1,
        input_size: 48,
        blocks: 3,
        convs_per_block: 2,
        filters: 16,
        growth: FilterGrowth::FunnelIn,
        kernel: 7,
        kernel_growth: KernelGrowth::FunnelIn,
        stride: 1,
        dilation: 2,
        batch_norm: true,
        pool: Some(LocalPool::Avg),
        pool_after: vec![],
        spatial_dropout: 0.5,
        readout: Readout::GlobalMax,
        attention: true,
        dense: vec![32],
        dropout: 0.5,
        num_classes: 2,
    });
    configs
}

/// Deterministic values in [-1, 1) (xorshift), so the contract test does not depend on candle's
/// unseeded initialisation.
fn det_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Re-initialises every trainable tensor from a seed: weights uniform in ±1/√fan_in, biases and
/// BatchNorm shifts 0, BatchNorm scales 1 (PyTorch's defaults in shape, without the randomness).
fn seed_weights(varmap: &VarMap, seed: u64) {
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (k, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let t = var.as_tensor();
        let value = if name.ends_with("running_mean") || name.ends_with("bias") {
            t.zeros_like().unwrap()
        } else if name.ends_with("running_var") || name.ends_with("bn.weight") {
            t.ones_like().unwrap()
        } else if name.ends_with("gamma") {
            t.zeros_like().unwrap()
        } else {
            let fan_in = (t.elem_count() / t.dims()[0]).max(1) as f32;
            let v: Vec<f32> = det_values(t.elem_count(), seed + k as u64)
                .iter()
                .map(|x| x / fan_in.sqrt())
                .collect();
            Tensor::from_vec(v, t.shape(), t.device()).unwrap()
        };
        var.set(&value).unwrap();
    }
}

fn trainable_count(varmap: &VarMap) -> usize {
    let data = varmap.data().lock().unwrap();
    data.iter()
        .filter(|(name, _)| !name.ends_with("running_mean") && !name.ends_with("running_var"))
        .map(|(_, v)| v.elem_count())
        .sum()
}

/// Every model: output shape, finite values, `num_features`, parameter count, save → load
/// round-trip, and a few training steps that lower the loss on a fixed tiny batch.
#[test]
fn contract_over_every_cnn_config() {
    let dev = Device::Cpu;
    for config in contract_configs() {
        let name = config.run_name();
        let varmap = VarMap::new();
        let model = Cnn::new(&config, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        assert_eq!(
            trainable_count(&varmap),
            config.parameter_count().unwrap(),
            "{name}"
        );
        let s = config.input_size;
        let x = Tensor::from_vec(
            det_values(4 * config.in_channels * s * s, 99),
            (4, config.in_channels, s, s),
            &dev,
        )
        .unwrap();
        let features = model.forward_features(&x, false).unwrap();
        let logits = model.forward_head(&features, false).unwrap();
        assert_eq!(logits.dims(), &[4, config.num_classes], "{name}");
        let read = match config.readout {
            Readout::Flatten => features.flatten_from(1).unwrap().dim(1).unwrap(),
            Readout::GlobalAvg | Readout::GlobalMax => features.dim(1).unwrap(),
        };
        assert_eq!(read, config.num_features().unwrap(), "{name}");
        let values: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{name}: {values:?}");

        // Save, load into a fresh model, same outputs.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        varmap.save(&path).unwrap();
        let mut other = VarMap::new();
        let reloaded =
            Cnn::new(&config, VarBuilder::from_varmap(&other, DType::F32, &dev)).unwrap();
        other.load(&path).unwrap();
        let again = reloaded.forward(&x, false).unwrap();
        let diff = (again - &logits)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "{name}: reloaded model differs by {diff}");

        // Training lowers the loss (dropout off so the loss is deterministic).
        let quiet = CnnConfig {
            dropout: 0.0,
            spatial_dropout: 0.0,
            ..config.clone()
        };
        let varmap = VarMap::new();
        let model = Cnn::new(&quiet, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        seed_weights(&varmap, 7);
        let targets = Tensor::from_vec(
            (0..4 * quiet.num_classes)
                .map(|i| (i % 2) as f32)
                .collect::<Vec<_>>(),
            (4, quiet.num_classes),
            &dev,
        )
        .unwrap();
        let loss_of = |m: &Cnn| {
            candle_nn::loss::binary_cross_entropy_with_logit(
                &m.forward(&x, true).unwrap(),
                &targets,
            )
            .unwrap()
        };
        let before = loss_of(&model).to_scalar::<f32>().unwrap();
        let mut opt = candle_nn::AdamW::new_lr(varmap.all_vars(), 1e-3).unwrap();
        for _ in 0..5 {
            opt.backward_step(&loss_of(&model)).unwrap();
        }
        let after = loss_of(&model).to_scalar::<f32>().unwrap();
        assert!(after < before, "{name}: loss {before} → {after}");
    }
}

#[test]
fn wrong_input_names_the_expected_shape() {
    let dev = Device::Cpu;
    let config = CnnConfig {
        input_size: 64,
        ..CnnConfig::custom_cnn()
    };
    let varmap = VarMap::new();
    let model = Cnn::new(&config, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
    let x = Tensor::zeros((2, 1, 64, 64), DType::F32, &dev).unwrap();
    let err = model.forward(&x, false).unwrap_err();
    assert!(matches!(err, ModelError::BadInput { .. }));
    assert!(err.to_string().contains("N×3×64×64"), "{err}");
    let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &dev).unwrap();
    assert!(
        model.forward(&x, false).is_err(),
        "flatten readout needs the configured size"
    );
}

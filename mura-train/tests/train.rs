//! mura-train against PyTorch: optimisers (`tools/optim_golden.py`), the stable BCE, and saved
//! optimiser state that resumes exactly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use mura_train::{Optim, OptimizerConfig, TrainError, bce_with_logits};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    p0: (Vec<Vec<f64>>, Vec<f64>),
    a: (Vec<Vec<f64>>, Vec<f64>),
    b: (Vec<Vec<f64>>, Vec<f64>),
    steps: usize,
    halve_lr_after: usize,
    cases: HashMap<String, Vec<Vec<f64>>>,
    bce: Bce,
}

#[derive(Deserialize)]
struct Bce {
    logits: Vec<f64>,
    targets: Vec<f64>,
    weights: Vec<f64>,
    mean: f64,
    weighted_mean: f64,
}

fn fixture() -> Fixture {
    serde_json::from_str(include_str!("fixtures/optim_torch.json")).unwrap()
}

fn pair(v: &(Vec<Vec<f64>>, Vec<f64>)) -> [Tensor; 2] {
    let dev = Device::Cpu;
    [
        Tensor::new(v.0.clone(), &dev).unwrap(),
        Tensor::new(v.1.as_slice(), &dev).unwrap(),
    ]
}

fn configs() -> Vec<(&'static str, OptimizerConfig)> {
    vec![
        (
            "adam",
            OptimizerConfig::Adam {
                lr: 0.1,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            },
        ),
        (
            "adamw",
            OptimizerConfig::AdamW {
                lr: 0.1,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.05,
            },
        ),
        (
            "sgd",
            OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 0.0,
                nesterov: false,
                weight_decay: 0.0,
            },
        ),
        (
            "sgd_momentum",
            OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 0.9,
                nesterov: false,
                weight_decay: 0.01,
            },
        ),
        (
            "sgd_nesterov",
            OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 0.01,
            },
        ),
    ]
}

/// Runs steps `from..to` of the fixture's schedule.
fn run(opt: &mut Optim, vars: &[Var], fx: &Fixture, from: usize, to: usize) {
    let [a0, a1] = pair(&fx.a);
    let [b0, b1] = pair(&fx.b);
    for step in from..to {
        if step == fx.halve_lr_after {
            opt.set_lr(opt.lr() / 2.0);
        }
        let loss = ((vars[0].as_tensor().sqr().unwrap() * &a0)
            .unwrap()
            .sum_all()
            .unwrap()
            + (vars[0].as_tensor() * &b0).unwrap().sum_all().unwrap()
            + (vars[1].as_tensor().sqr().unwrap() * &a1)
                .unwrap()
                .sum_all()
                .unwrap()
            + (vars[1].as_tensor() * &b1).unwrap().sum_all().unwrap())
        .unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
}

fn fresh(fx: &Fixture) -> Vec<Var> {
    pair(&fx.p0)
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect()
}

fn named(vars: &[Var]) -> Vec<(String, Var)> {
    vars.iter()
        .enumerate()
        .map(|(i, v)| (format!("p{i}"), v.clone()))
        .collect()
}

fn flat(v: &Var) -> Vec<f64> {
    v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
}

/// Adam (L2), AdamW (decoupled), SGD, SGD with momentum and with Nesterov, with a learning-rate
/// change half-way, end where `torch.optim` ends after 6 steps, within 1e-12 (f64).
#[test]
fn optimisers_match_torch() {
    let fx = fixture();
    for (name, config) in configs() {
        let vars = fresh(&fx);
        let mut opt = Optim::new(config, named(&vars)).unwrap();
        run(&mut opt, &vars, &fx, 0, fx.steps);
        let want = &fx.cases[name];
        for (v, w) in vars.iter().zip(want) {
            for (a, b) in flat(v).iter().zip(w) {
                assert!((a - b).abs() < 1e-12, "{name}: {a} vs {b}");
            }
        }
    }
}

/// Three steps, save the state, rebuild, load, three more: bit-identical to six uninterrupted
/// steps, for every optimiser (the learning-rate change included).
#[test]
fn saved_state_resumes_exactly() {
    let fx = fixture();
    for (name, config) in configs() {
        let straight = fresh(&fx);
        let mut opt = Optim::new(config.clone(), named(&straight)).unwrap();
        run(&mut opt, &straight, &fx, 0, fx.steps);

        let resumed = fresh(&fx);
        let mut first = Optim::new(config.clone(), named(&resumed)).unwrap();
        run(&mut first, &resumed, &fx, 0, 4);
        let state = first.state_tensors().unwrap();
        drop(first);
        let mut second = Optim::new(config, named(&resumed)).unwrap();
        second.load_state(&state).unwrap();
        assert_eq!(
            second.lr(),
            0.05,
            "{name}: the halved lr is part of the state"
        );
        run(&mut second, &resumed, &fx, 4, fx.steps);
        for (a, b) in straight.iter().zip(&resumed) {
            assert_eq!(flat(a), flat(b), "{name}");
        }
    }
}

#[test]
fn bad_optimizer_state_and_config_are_refused() {
    let fx = fixture();
    let vars = fresh(&fx);
    let mut opt = Optim::new(OptimizerConfig::adam(0.1), named(&vars)).unwrap();
    let mut state = HashMap::new();
    state.insert(
        "optim.m.p0".to_string(),
        Tensor::zeros(7, DType::F64, &Device::Cpu).unwrap(),
    );
    let err = opt.load_state(&state).unwrap_err();
    assert!(
        matches!(err, TrainError::BadOptimizerState { .. })
            && err.to_string().contains("optim.m.p0"),
        "{err}"
    );
    let mut state = HashMap::new();
    state.insert(
        "optim.m.nope".to_string(),
        Tensor::zeros(4, DType::F64, &Device::Cpu).unwrap(),
    );
    assert!(
        opt.load_state(&state)
            .unwrap_err()
            .to_string()
            .contains("nope")
    );
    for bad in [
        OptimizerConfig::adam(0.0),
        OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 1.5,
            nesterov: false,
            weight_decay: 0.0,
        },
    ] {
        assert!(matches!(
            Optim::new(bad, vec![]),
            Err(TrainError::BadParameter { .. })
        ));
    }
    let toml_like: OptimizerConfig =
        serde_json::from_str(r#"{"kind": "adamw", "lr": 0.001}"#).unwrap();
    assert!(
        matches!(toml_like, OptimizerConfig::AdamW { weight_decay, .. } if weight_decay == 0.01)
    );
    assert!(
        serde_json::from_str::<OptimizerConfig>(r#"{"kind": "adam", "lr": 0.1, "betas": 1}"#)
            .is_err()
    );
}

/// The stable BCE equals PyTorch's `binary_cross_entropy_with_logits` on logits ±30, ±100, 0, 2.5,
/// plain and weighted, within 1e-12 (f64); and it stays finite in f32.
#[test]
fn bce_matches_torch_on_extreme_logits() {
    let fx = fixture().bce;
    let dev = Device::Cpu;
    let z = Tensor::new(fx.logits.as_slice(), &dev).unwrap();
    let t = Tensor::new(fx.targets.as_slice(), &dev).unwrap();
    let w = Tensor::new(fx.weights.as_slice(), &dev).unwrap();
    let plain = bce_with_logits(&z, &t, None)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let weighted = bce_with_logits(&z, &t, Some(&w))
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!((plain - fx.mean).abs() < 1e-12, "{plain} vs {}", fx.mean);
    assert!(
        (weighted - fx.weighted_mean).abs() < 1e-12,
        "{weighted} vs {}",
        fx.weighted_mean
    );
    let z32 = z.to_dtype(DType::F32).unwrap();
    let t32 = t.to_dtype(DType::F32).unwrap();
    let l32 = bce_with_logits(&z32, &t32, None)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((f64::from(l32) - fx.mean).abs() < 1e-4, "{l32}");
}

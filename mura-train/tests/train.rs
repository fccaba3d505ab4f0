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

mod epochs {
    use std::sync::Arc;

    use candle_core::Device;
    use mura_augment::{AugmentConfig, Filter, Normalize, Pipeline, Preprocess, ResizeMode};
    use mura_data::synth::{SynthConfig, generate};
    use mura_data::{IndexOptions, LoaderConfig, Split, index};
    use mura_metrics::roc_auc;
    use mura_models::{Arch, CnnConfig, LocalPool, Model, ModelConfig, Readout};
    use mura_train::{Example, Optim, OptimizerConfig, TrainError, batches, predict, train_epoch};

    const SIZE: u32 = 32;

    /// A small synthetic MURA (160 studies, 48-px images), as train and valid examples.
    fn data(dir: &std::path::Path) -> (Arc<Vec<Example>>, Arc<Vec<Example>>) {
        generate(
            dir,
            &SynthConfig {
                studies: 160,
                seed: 5,
                max_side: 48,
                valid_fraction: 0.25,
                odd_format_fraction: 0.0,
                ..SynthConfig::default()
            },
        )
        .unwrap();
        let d = index(dir, &IndexOptions::default()).unwrap().dataset;
        let of = |split: Split| {
            Arc::new(
                d.images()
                    .iter()
                    .filter(|r| r.split == split)
                    .map(|r| Example {
                        path: r.file(d.base()),
                        label: r.label,
                        weight: 1.0,
                    })
                    .collect::<Vec<_>>(),
            )
        };
        (of(Split::Train), of(Split::Valid))
    }

    fn pipeline(augment: AugmentConfig) -> Pipeline {
        Pipeline::new(
            Preprocess {
                width: SIZE,
                height: SIZE,
                mode: ResizeMode::Stretch,
                filter: Filter::Bilinear,
                channels: 1,
                normalize: Normalize::INCEPTION,
            },
            augment,
            9,
        )
        .unwrap()
    }

    fn small_cnn() -> ModelConfig {
        ModelConfig {
            in_channels: 1,
            input_size: Some(SIZE as usize),
            cnn: Some(CnnConfig {
                in_channels: 1,
                input_size: SIZE as usize,
                blocks: 3,
                filters: 8,
                pool: Some(LocalPool::Max),
                readout: Readout::GlobalMax,
                dropout: 0.1,
                ..CnnConfig::custom_cnn()
            }),
            ..ModelConfig::new(Arch::CustomCnn)
        }
    }

    fn loader(seed: u64) -> LoaderConfig {
        LoaderConfig {
            threads: 2,
            seed,
            ..LoaderConfig::default()
        }
    }

    fn eval(model: &Model, examples: &Arc<Vec<Example>>) -> (f64, f64) {
        let dev = Device::Cpu;
        let eval_loader = LoaderConfig {
            shuffle: false,
            ..loader(0)
        };
        let b = batches(
            examples,
            &pipeline(AugmentConfig::none()),
            eval_loader,
            0,
            32,
            &dev,
        )
        .unwrap();
        let probs = predict(model, b).unwrap();
        let labels: Vec<bool> = probs.iter().map(|(i, _)| examples[*i].label).collect();
        let scores: Vec<f64> = probs.iter().map(|(_, p)| *p).collect();
        let loss = probs
            .iter()
            .zip(&labels)
            .map(|((_, p), &y)| {
                let p = p.clamp(1e-7, 1.0 - 1e-7);
                if y { -p.ln() } else { -(1.0 - p).ln() }
            })
            .sum::<f64>()
            / probs.len() as f64;
        (loss, roc_auc(&labels, &scores).unwrap().unwrap_or(0.5))
    }

    /// Six epochs on a small synthetic set (about 400 training images at 32×32): the epoch loss
    /// falls by more than 10% and the model, in eval mode, ranks its training images far above
    /// chance. (Generalisation to the validation split needs more data and epochs than a unit test
    /// affords; the whole-run tests of `tests/fit.rs` and `mura demo` measure it.)
    #[test]
    fn training_lowers_the_loss_and_learns() {
        let dir = tempfile::tempdir().unwrap();
        let (train, valid) = data(dir.path());
        assert!(train.len() > 100 && !valid.is_empty());
        let dev = Device::Cpu;
        let (model, varmap) = Model::with_seed(&small_cnn(), 1, &dev).unwrap();
        let mut optim =
            Optim::new(OptimizerConfig::adam(3e-3), model.trainable_vars(&varmap)).unwrap();
        let (val_before, _) = eval(&model, &valid);
        let mut losses = vec![];
        for epoch in 0..6 {
            let b = batches(
                &train,
                &pipeline(AugmentConfig::none()),
                loader(1),
                epoch,
                16,
                &dev,
            )
            .unwrap();
            let stats = train_epoch(&model, &mut optim, b, 1, epoch).unwrap();
            assert_eq!(stats.images, train.len());
            losses.push(stats.loss);
        }
        let (val_after, val_auc) = eval(&model, &valid);
        let (train_loss, train_auc) = eval(&model, &train);
        eprintln!(
            "validation loss {val_before:.3} → {val_after:.3}, AUC {val_auc:.3}; training loss {train_loss:.3}, AUC {train_auc:.3}; epochs {losses:?}"
        );
        assert!(losses[5] < 0.9 * losses[0], "training loss {losses:?}");
        assert!(train_auc > 0.75, "training AUC {train_auc}");
    }

    /// Same seed, same data: the same weights after an epoch, whatever the threads do.
    #[test]
    fn an_epoch_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let (train, _) = data(dir.path());
        let dev = Device::Cpu;
        let run = || {
            let (model, varmap) = Model::with_seed(&small_cnn(), 3, &dev).unwrap();
            let mut optim =
                Optim::new(OptimizerConfig::adam(1e-3), model.trainable_vars(&varmap)).unwrap();
            let b = batches(
                &train,
                &pipeline(AugmentConfig::mura_paper()),
                loader(4),
                0,
                16,
                &dev,
            )
            .unwrap();
            train_epoch(&model, &mut optim, b, 4, 0).unwrap();
            let mut out = vec![];
            for (name, v) in model.trainable_vars(&varmap) {
                let values: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                out.push((name, values));
            }
            out
        };
        assert_eq!(run(), run());
    }

    /// A model whose loss overflows stops the epoch with a clear error before its step.
    #[test]
    fn a_non_finite_loss_stops_training() {
        let dir = tempfile::tempdir().unwrap();
        let (train, _) = data(dir.path());
        let dev = Device::Cpu;
        let (model, varmap) = Model::with_seed(&small_cnn(), 3, &dev).unwrap();
        let vars = model.trainable_vars(&varmap);
        let (_, bias) = vars
            .iter()
            .find(|(n, _)| n == "head.classifier.bias")
            .unwrap();
        bias.set(&candle_core::Tensor::new(&[f32::NAN], &dev).unwrap())
            .unwrap();
        let mut optim = Optim::new(OptimizerConfig::adam(1e-3), vars).unwrap();
        let b = batches(
            &train,
            &pipeline(AugmentConfig::none()),
            loader(0),
            0,
            16,
            &dev,
        )
        .unwrap();
        let err = train_epoch(&model, &mut optim, b, 0, 0).unwrap_err();
        assert!(
            matches!(
                err,
                TrainError::NonFinite {
                    epoch: 1,
                    batch: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("last good checkpoint"), "{err}");
    }
}

//! The optimisers: L2, the in-place Adam pass against candle's ops, saved state, non-finite
//! gradients.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use candle_core::Device;
use config::{beta1, beta2, eps};

#[test]
fn l2_adds_the_penalty_of_the_optimised_kernels_only() {
    let dev = Device::Cpu;
    let kernel = Var::from_vec(vec![1f32, 2., 3., 4.], (2, 2), &dev).unwrap();
    let bias = Var::from_vec(vec![10f32, 10.], 2, &dev).unwrap();
    let vars = vec![("w".to_string(), kernel), ("b".to_string(), bias)];
    let loss = Tensor::new(0.5f32, &dev).unwrap();
    let plain = Optim::new(OptimizerConfig::adam(1e-3), vars.clone()).unwrap();
    let same = plain.regularize(loss.clone()).unwrap();
    assert_eq!(same.to_scalar::<f32>().unwrap(), 0.5);
    let l2 = plain.with_l2(0.01).unwrap();
    let got = l2.regularize(loss).unwrap().to_scalar::<f32>().unwrap();
    // 0.5 + 0.01·(1 + 4 + 9 + 16); the bias is not penalised.
    assert!((got - 0.8).abs() < 1e-6, "{got}");
    let bad = Optim::new(OptimizerConfig::adam(1e-3), vars).unwrap();
    assert!(bad.with_l2(f64::NAN).is_err());
}

/// Six steps of a quadratic on 40,000 weights (more than one chunk of the fused pass), as
/// f32 (the fused pass) and as f64 (candle's ops, checked against `torch.optim` in
/// tests/train.rs); the state saved after three f32 steps and loaded resumes bit for bit.
#[test]
fn the_fused_f32_adam_matches_the_ops_and_resumes_exactly() {
    mura_kernels::with_generic(
        false,
        the_fused_f32_adam_matches_the_ops_and_resumes_exactly_on_the_cpu_kernels,
    )
}

fn the_fused_f32_adam_matches_the_ops_and_resumes_exactly_on_the_cpu_kernels() {
    let dev = Device::Cpu;
    let n = 40_000;
    let p0: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
    let a: Vec<f64> = (0..n)
        .map(|i| 0.5 + (i as f64 * 0.11).cos().abs())
        .collect();
    let configs = [
        OptimizerConfig::adam(0.01),
        OptimizerConfig::Adam {
            lr: 0.01,
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-6,
            weight_decay: 0.1,
        },
        OptimizerConfig::AdamW {
            lr: 0.01,
            beta1: beta1(),
            beta2: beta2(),
            eps: eps(),
            weight_decay: 0.05,
        },
    ];
    let run = |config: &OptimizerConfig,
               dtype: DType,
               steps: (usize, usize),
               var: Option<(Var, Optim)>| {
        let (var, mut opt) = var.unwrap_or_else(|| {
            let var = Var::from_tensor(
                &Tensor::new(p0.as_slice(), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
            .unwrap();
            let opt = Optim::new(config.clone(), vec![("w".into(), var.clone())]).unwrap();
            (var, opt)
        });
        let a = Tensor::new(a.as_slice(), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        for _ in steps.0..steps.1 {
            let loss = (var.as_tensor().sqr().unwrap() * &a)
                .unwrap()
                .sum_all()
                .unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
        }
        (var, opt)
    };
    let values = |v: &Var| -> Vec<f64> {
        v.as_tensor()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    // The f32 run takes the fused pass, the f64 one the ops.
    let t = |dtype| {
        Tensor::new(&[1f32, 2.0][..], &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    let takes = |dtype| {
        let mut slot = Slot {
            steps: 1,
            ..Slot::default()
        };
        let (p, g) = (Var::from_tensor(&t(dtype)).unwrap(), t(dtype));
        let decay = Decay::Coupled(0.0);
        adam_in_place(&p, &g, &mut slot, 0.1, (0.9, 0.999), 1e-8, decay).unwrap()
    };
    assert!(takes(DType::F32) && !takes(DType::F64));
    for config in &configs {
        let (fused, _) = run(config, DType::F32, (0, 6), None);
        let (ops, _) = run(config, DType::F64, (0, 6), None);
        let (fused, ops) = (values(&fused), values(&ops));
        for (i, (f, o)) in fused.iter().zip(&ops).enumerate() {
            assert!(
                (f - o).abs() < 1e-5 * (1.0 + o.abs()),
                "{config:?} [{i}]: {f} vs {o}"
            );
        }
        // The moved weights differ from the start: the update was applied.
        assert!(fused.iter().zip(&p0).any(|(f, p)| (f - p).abs() > 1e-3));

        let (first, opt) = run(config, DType::F32, (0, 3), None);
        let state = opt.state_tensors().unwrap();
        let mut second = Optim::new(config.clone(), vec![("w".into(), first.clone())]).unwrap();
        second.load_state(&state).unwrap();
        let (resumed, _) = run(config, DType::F32, (3, 6), Some((first, second)));
        assert_eq!(values(&resumed), fused, "{config:?}: resumed");
    }
}

/// The in-place pass updates the moments where they live: a saved state must be a copy, not
/// a view that later steps keep moving.
#[test]
fn a_saved_state_stays_as_it_was_saved() {
    mura_kernels::with_generic(
        false,
        a_saved_state_stays_as_it_was_saved_on_the_cpu_kernels,
    )
}

fn a_saved_state_stays_as_it_was_saved_on_the_cpu_kernels() {
    let dev = Device::Cpu;
    let var = Var::from_tensor(&Tensor::new(&[0.5f32, -1.0, 2.0], &dev).unwrap()).unwrap();
    let mut opt = Optim::new(OptimizerConfig::adam(0.1), vec![("w".into(), var.clone())]).unwrap();
    let step = |opt: &mut Optim| {
        let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    };
    step(&mut opt);
    assert!(
        opt.slots[0].host.is_some(),
        "the f32 variable takes the in-place pass"
    );
    let values = |t: &Tensor| t.to_vec1::<f32>().unwrap();
    let saved = opt.state_tensors().unwrap();
    let (m, v) = (values(&saved["optim.m.w"]), values(&saved["optim.v.w"]));
    step(&mut opt);
    assert_eq!(values(&saved["optim.m.w"]), m);
    assert_eq!(values(&saved["optim.v.w"]), v);
    let now = opt.state_tensors().unwrap();
    assert_ne!(values(&now["optim.m.w"]), m, "the moments moved on");
}

#[test]
fn a_non_finite_gradient_is_found_and_named() {
    let dev = Device::Cpu;
    let a = Var::from_vec(vec![1f32, 2.], 2, &dev).unwrap();
    let b = Var::from_vec(vec![3f32, 4.], 2, &dev).unwrap();
    let vars = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
    let optim = Optim::new(OptimizerConfig::adam(1e-3), vars).unwrap();
    let grads_of = |x: &[f32]| {
        let x = Tensor::new(x, &dev).unwrap();
        let loss = ((a.as_tensor() * &x).unwrap().sum_all().unwrap()
            + b.as_tensor().sum_all().unwrap())
        .unwrap();
        loss.backward().unwrap()
    };
    assert_eq!(
        optim.non_finite_gradient(&grads_of(&[1., 2.])).unwrap(),
        None
    );
    let (name, value) = optim
        .non_finite_gradient(&grads_of(&[1., f32::NAN]))
        .unwrap()
        .unwrap();
    assert_eq!(name, "a");
    assert!(value.is_nan());
    let (name, value) = optim
        .non_finite_gradient(&grads_of(&[f32::INFINITY, 0.]))
        .unwrap()
        .unwrap();
    assert_eq!((name.as_str(), value), ("a", f64::INFINITY));
}

//! Integration tests of mura-models against PyTorch fixtures (`tools/*.py`, outputs committed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

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

/// Pooling equals PyTorch's `max_pool2d` / `avg_pool2d`, forward and input gradient, in f64 to 1e-12
/// and in f32 to 1e-5 (relative to the magnitude, inputs are standard normal).
#[test]
fn pooling_matches_pytorch() {
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
                x.to_dtype(candle_core::DType::F32).unwrap()
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
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let grad: Vec<f64> = grads
                .get(x.as_tensor())
                .unwrap()
                .to_dtype(candle_core::DType::F64)
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

//! Deterministic weights and inputs shared with `tools/zoo_fixtures.py` (see its docstring): tensor
//! k of the model in sorted-name order gets key = splitmix64((seed << 32) | k) and
//! u_i = (splitmix64(key + i) >> 40) / 2^23 - 1 in f32.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn det_uniform(n: usize, seed: u64, k: u64) -> Vec<f32> {
    let key = splitmix64((seed << 32) | k);
    (0..n as u64)
        .map(|i| (splitmix64(key.wrapping_add(i)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        .collect()
}

pub fn det_tensor(shape: &[usize], seed: u64, dev: &Device) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(det_uniform(n, seed, 0), shape, dev).unwrap()
}

/// Fills every tensor of `varmap` as the Python script fills the state dict.
pub fn fill_deterministic(varmap: &VarMap, seed: u64) {
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (k, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let n = var.elem_count();
        let u = det_uniform(n, seed, k as u64);
        let v: Vec<f32> = if name.ends_with("running_mean") || name.ends_with("bias") {
            u.iter().map(|x| 0.1f32 * x).collect()
        } else if name.ends_with("running_var") {
            u.iter().map(|x| 0.5f32 * x + 1.0).collect()
        } else if dims.len() == 1 {
            u.iter().map(|x| 0.2f32 * x + 1.0).collect()
        } else {
            let fan_in = n / dims[0];
            let scale = (6.0f64 / fan_in as f64).sqrt() as f32;
            u.iter().map(|x| x * scale).collect()
        };
        let t = Tensor::from_vec(v, dims.as_slice(), var.device())
            .unwrap()
            .to_dtype(var.dtype())
            .unwrap();
        var.set(&t).unwrap();
    }
}

pub fn to_vec(t: &Tensor) -> Vec<f32> {
    t.to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest |a - b| relative to the largest |b|, computed in f64.
pub fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let v = |t: &Tensor| -> Vec<f64> {
        t.to_dtype(candle_core::DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (a, b) = (v(a), v(b));
    let scale = b.iter().fold(f64::MIN_POSITIVE, |m, x| m.max(x.abs()));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f64, f64::max)
        / scale
}

/// Mean BCE on logits in the log-sum-exp form, as `mura-train` computes it.
pub fn bce_with_logits(z: &Tensor, t: &Tensor) -> Tensor {
    let soft = (z.abs().unwrap().neg().unwrap().exp().unwrap() + 1.0)
        .unwrap()
        .log()
        .unwrap();
    ((z.relu().unwrap() - (z * t).unwrap()).unwrap() + soft)
        .unwrap()
        .mean_all()
        .unwrap()
}

/// Targets (i + j) mod 2, as the Python script's.
pub fn alternating_targets(n: usize, c: usize, dev: &Device) -> Tensor {
    let v: Vec<f32> = (0..n * c).map(|k| ((k / c + k % c) % 2) as f32).collect();
    Tensor::from_vec(v, (n, c), dev).unwrap()
}

/// The device a test runs on: the CPU, unless the generic paths are forced and
/// `MURA_TEST_DEVICE=cuda:N` names a GPU (a CUDA build on a GPU machine, `tools/gpu-check.sh`).
pub fn checked_device() -> Device {
    match std::env::var("MURA_TEST_DEVICE") {
        Ok(spec) if spec.starts_with("cuda") && mura_kernels::generic_forced() => {
            let n = spec.strip_prefix("cuda:").map_or(0, |n| n.parse().unwrap());
            Device::new_cuda(n).unwrap()
        }
        _ => Device::Cpu,
    }
}

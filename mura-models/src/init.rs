//! Seeded weight initialisation. candle's CPU generator cannot be seeded, so a model built from a
//! `VarBuilder` starts from different weights each run; [`init_seeded`] replaces every tensor with
//! values drawn from one seed (a counter-based SplitMix64 stream per tensor, in sorted-name order),
//! so the same seed gives the same model whatever the thread count.
//!
//! The schemes follow timm and torchvision: convolutions Kaiming-normal (fan-out, ReLU gain), dense
//! layers uniform ±1/√fan_in, biases 0, BatchNorm scale 1 and shift 0, running mean 0 and variance 1,
//! the self-attention gate γ 0.

use candle_core::Tensor;
use candle_nn::VarMap;

use crate::ModelError;
use crate::vars::{lock_vars, splitmix64, unit};

/// The stream of tensor `k` under `seed`: `n` uniform values in [0, 1).
fn uniforms(n: usize, seed: u64, k: u64) -> impl Iterator<Item = f32> {
    let key = splitmix64((seed << 32) ^ k);
    (0..n as u64).map(move |i| unit(splitmix64(key.wrapping_add(i))))
}

/// Standard normal values by Box–Muller from the uniform stream.
fn normals(n: usize, seed: u64, k: u64) -> Vec<f32> {
    let u: Vec<f32> = uniforms(n + n % 2, seed, k).collect();
    let mut out = Vec::with_capacity(n + 1);
    for pair in u.chunks_exact(2) {
        let r = (-2.0 * f64::from(1.0 - pair[0]).ln()).sqrt();
        let t = std::f64::consts::TAU * f64::from(pair[1]);
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// Re-initialises every tensor of `varmap` from `seed`.
pub fn init_seeded(varmap: &VarMap, seed: u64) -> Result<(), ModelError> {
    let data = lock_vars(varmap);
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (k, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let t = var.as_tensor();
        let dims = t.dims().to_vec();
        let n = t.elem_count();
        let value =
            if name.ends_with("running_var") || (dims.len() == 1 && name.ends_with("weight")) {
                t.ones_like()?
            } else if dims.len() <= 1 {
                t.zeros_like()?
            } else if dims.len() == 4 {
                let fan_out = (dims[0] * dims[2] * dims[3]) as f64;
                let std = (2.0 / fan_out).sqrt() as f32;
                let v: Vec<f32> = normals(n, seed, k as u64)
                    .into_iter()
                    .map(|x| x * std)
                    .collect();
                Tensor::from_vec(v, dims.as_slice(), t.device())?.to_dtype(t.dtype())?
            } else {
                let fan_in = (n / dims[0].max(1)).max(1) as f32;
                let bound = 1.0 / fan_in.sqrt();
                let v: Vec<f32> = uniforms(n, seed, k as u64)
                    .map(|u| (2.0 * u - 1.0) * bound)
                    .collect();
                Tensor::from_vec(v, dims.as_slice(), t.device())?.to_dtype(t.dtype())?
            };
        var.set(&value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_have_unit_variance() {
        let v = normals(20_001, 5, 0);
        assert_eq!(v.len(), 20_001);
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / v.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
        assert!(v.iter().all(|x| x.is_finite()));
    }
}

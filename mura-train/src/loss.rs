//! Losses: binary cross-entropy on logits in the log-sum-exp form, with per-sample (class) weights,
//! and an L2 penalty on weights.
//!
//! candle-nn's `binary_cross_entropy_with_logit` takes a sigmoid and then a log, which gives `inf`
//! or NaN for logits like ±30 and 100 in f32; here each term is
//! `max(z, 0) − z·t + ln(1 + e^(−|z|))`, finite for every finite logit.

use candle_core::{Tensor, Var};

use crate::TrainError;

/// Mean binary cross-entropy of `logits` against `targets` (same shape, 0/1 or soft labels).
/// With `weights` (same shape), the mean of `weight · loss`, as PyTorch's `weight=` and Keras'
/// `class_weight` compute it.
pub fn bce_with_logits(
    logits: &Tensor,
    targets: &Tensor,
    weights: Option<&Tensor>,
) -> Result<Tensor, TrainError> {
    let soft = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let per = ((logits.relu()? - (logits * targets)?)? + soft)?;
    let per = match weights {
        Some(w) => (per * w)?,
        None => per,
    };
    Ok(per.mean_all()?)
}

/// `coeff · Σ w²` over the weight matrices and kernels among `vars` (rank ≥ 2: biases and
/// BatchNorm parameters are not penalised), Keras' `kernel_regularizer=l2(coeff)` on every layer.
pub fn l2_penalty(vars: &[(String, Var)], coeff: f64) -> Result<Option<Tensor>, TrainError> {
    if coeff == 0.0 {
        return Ok(None);
    }
    let mut total: Option<Tensor> = None;
    for (_, v) in vars.iter().filter(|(_, v)| v.rank() >= 2) {
        let s = v.as_tensor().sqr()?.sum_all()?;
        total = Some(match total {
            Some(t) => (t + s)?,
            None => s,
        });
    }
    Ok(match total {
        Some(t) => Some((t * coeff)?),
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn bce_is_finite_for_extreme_logits_in_f32() {
        let dev = Device::Cpu;
        let z = Tensor::new(&[30f32, -30., 100., -100., 0.], &dev).unwrap();
        let t = Tensor::new(&[1f32, 1., 0., 0., 1.], &dev).unwrap();
        let l = bce_with_logits(&z, &t, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // ≈ (0 + 30 + 100 + 0 + ln 2) / 5
        assert!((l - (130.0 + 2f32.ln()) / 5.0).abs() < 1e-4, "{l}");
        let g = {
            let v = Var::from_tensor(&z).unwrap();
            let grads = bce_with_logits(v.as_tensor(), &t, None)
                .unwrap()
                .backward()
                .unwrap();
            grads.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap()
        };
        assert!(g.iter().all(|x| x.is_finite()), "{g:?}");
        // d/dz = (sigmoid(z) - t) / n
        assert!(
            (g[1] + 0.2).abs() < 1e-6 && (g[2] - 0.2).abs() < 1e-6,
            "{g:?}"
        );
    }

    #[test]
    fn l2_skips_biases() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[10f32], &dev).unwrap()).unwrap();
        let vars = vec![("w".to_string(), w), ("b".to_string(), b)];
        let p = l2_penalty(&vars, 0.01).unwrap().unwrap();
        assert!((p.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap() - 0.3).abs() < 1e-6);
        assert!(l2_penalty(&vars, 0.0).unwrap().is_none());
    }
}

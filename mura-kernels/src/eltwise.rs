//! Elementwise ops fused where candle runs several passes: the residual sum followed by ReLU
//! (ResNet's block output). candle's add + relu is two passes forward, and its ReLU backward
//! builds zeros, a comparison, a cast and a product (four passes and three temporaries); here
//! one pass each way.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use std::mem::MaybeUninit;

use super::gemm::fresh;
use super::simd::vectorised;
use super::{f32_slice, generic};
use crate::route::fast;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// relu(a + b) for two f32 tensors of the same shape, with its backward: the gradient where the
/// output is positive, zero elsewhere, for both inputs.
pub fn add_relu(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if !(fast(a) && fast(b)) {
        return generic::add_relu(a, b);
    }
    if a.shape() != b.shape() {
        candle_core::bail!("add_relu: shapes {:?} and {:?} differ", a.dims(), b.dims())
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "mura-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = (
            f32_slice(s1, l1, "add_relu")?,
            f32_slice(s2, l2, "add_relu")?,
        );
        if a.len() != b.len() {
            candle_core::bail!("add_relu: {} and {} elements", a.len(), b.len())
        }
        let out = zip_map(
            a,
            b,
            #[inline(always)]
            |a, b| (a + b).max(0.0),
        )?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = res.apply_op2_no_bwd(&grad.contiguous()?, &ReluGrad)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// (ReLU output, gradient) → the gradient where the output is positive, zero elsewhere.
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "mura-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, "relu backward")?;
        let g = f32_slice(s2, l2, "relu backward")?;
        if y.len() != g.len() {
            candle_core::bail!("relu backward: {} outputs, {} gradients", y.len(), g.len())
        }
        let out = zip_map(
            y,
            g,
            #[inline(always)]
            |y, g| if y > 0.0 { g } else { 0.0 },
        )?;
        Ok((CpuStorage::F32(out), l2.shape().clone()))
    }
}

/// `f(a[i], b[i])` for every i of two equally long slices, in parallel chunks, the loop built
/// for AVX2 where the CPU has it (`f` must be `#[inline(always)]` for that).
fn zip_map(
    a: &[f32],
    b: &[f32],
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> candle_core::Result<Vec<f32>> {
    if a.len() != b.len() {
        candle_core::bail!("elementwise: {} and {} elements", a.len(), b.len())
    }
    let fill = |out: &mut [MaybeUninit<f32>]| {
        let parts = out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK));
        parts.zip(b.par_chunks(CHUNK)).for_each(|((o, a), b)| {
            vectorised(
                #[inline(always)]
                || {
                    for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                        o.write(f(*a, *b));
                    }
                },
            )
        });
        Ok::<(), candle_core::Error>(())
    };
    // SAFETY: `a` and `b` hold the same number of elements (checked above), so the output's
    // chunks pair with chunks of both of the same lengths and every element is written.
    #[allow(unsafe_code)]
    unsafe {
        fresh(a.len(), fill)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Values and both gradients against candle's add then relu, on more elements than one
    /// chunk; at ties (a + b = 0) the gradient is zero, as PyTorch's.
    #[test]
    fn matches_candle_add_then_relu() {
        let dev = Device::Cpu;
        let n = 37 * 900; // more than two chunks, the last one partial
        assert!(n > 2 * CHUNK);
        let av: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 201) as f32 / 50.0 - 2.0)
            .collect();
        let bv: Vec<f32> = (0..n)
            .map(|i| ((i * 104_729) % 203) as f32 / 50.0 - 2.0)
            .collect();
        let gv: Vec<f32> = (0..n).map(|i| ((i * 31) % 17) as f32 - 8.0).collect();
        let run = |ours: bool| {
            let a = Var::from_vec(av.clone(), (n / 37, 37), &dev).unwrap();
            let b = Var::from_vec(bv.clone(), (n / 37, 37), &dev).unwrap();
            let y = if ours {
                add_relu(&a, &b).unwrap()
            } else {
                (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap()
            };
            let g = Tensor::from_vec(gv.clone(), y.shape(), &dev).unwrap();
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (
                flat(&y),
                flat(grads.get(&a).unwrap()),
                flat(grads.get(&b).unwrap()),
            )
        };
        let (ours, theirs) = (run(true), run(false));
        let mut ties = 0;
        for (i, (a, b)) in av.iter().zip(&bv).enumerate() {
            assert_eq!(ours.0[i], theirs.0[i], "value {i}");
            if a + b == 0.0 {
                // PyTorch's convention, relu'(0) = 0 (candle passes the gradient at 0).
                ties += 1;
                assert_eq!((ours.1[i], ours.2[i]), (0.0, 0.0), "gradient at tie {i}");
            } else {
                assert_eq!(ours.1[i], theirs.1[i], "gradient of a at {i}");
                assert_eq!(ours.2[i], theirs.2[i], "gradient of b at {i}");
            }
        }
        assert!(ties > 0, "the inputs hold ties at zero");
    }

    #[test]
    fn different_shapes_are_refused() {
        let dev = Device::Cpu;
        let a = Tensor::zeros((2, 3), candle_core::DType::F32, &dev).unwrap();
        let b = Tensor::zeros((3, 2), candle_core::DType::F32, &dev).unwrap();
        let err = add_relu(&a, &b).unwrap_err().to_string();
        assert!(err.contains("shapes [2, 3] and [3, 2] differ"), "{err}");
    }
}

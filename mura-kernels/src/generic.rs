//! The generic paths: every op of the crate built from candle's tensor ops, for any device and
//! float dtype, with the semantics (and gradients) of the CPU kernels and of PyTorch. They run
//! on CUDA, for f64, and on the CPU under `MURA_KERNELS=generic`.
//!
//! Gradients come from candle's autograd of these ops. Pooling is built so that the max-pool
//! gradient reaches only the first maximum of each window (an `argmax`, then a `gather`, whose
//! backward scatters to the chosen element), not every tied element as candle's own max pool
//! does; padding, kernels other than the stride, and `count_include_pad` follow PyTorch.

use candle_core::{D, Tensor};

use crate::{Conv2dParams, Pool2d, PoolKind};

/// The convolution (then ReLU when `relu`) with candle's `conv2d`. candle pads both axes alike
/// and its backward derives one output padding from the height for both axes, which fails when
/// strided windows leave different remainders per axis: the input is padded by hand and the
/// rows and columns no window reads are cut, so both remainders are zero.
pub(crate) fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    p: Conv2dParams,
    relu: bool,
) -> candle_core::Result<Tensor> {
    let ((sh, sw), (dh, dw)) = (p.stride, p.dilation);
    if sh != sw || dh != dw {
        candle_core::bail!("conv2d: the generic path takes a square stride and dilation, got {p:?}")
    }
    let (s, d) = (sh, dh);
    let (ph, pw) = p.padding;
    let (_, _, kh, kw) = weight.dims4()?;
    let (_, _, h, w) = x.dims4()?;
    // Rows (columns) of the padded input the windows reach, and whether some are left over.
    let reach = |size: usize, pad: usize, k: usize| -> candle_core::Result<(usize, bool)> {
        let span = d * (k - 1) + 1;
        if size + 2 * pad < span || s == 0 || d == 0 {
            candle_core::bail!(
                "conv2d: input {size} (padding {pad}) is smaller than the kernel span {span}"
            )
        }
        let used = (size + 2 * pad - span) / s * s + span;
        Ok((used, used != size + 2 * pad))
    };
    let (used_h, rest_h) = reach(h, ph, kh)?;
    let (used_w, rest_w) = reach(w, pw, kw)?;
    let y = if ph == pw && !rest_h && !rest_w {
        x.conv2d(weight, ph, s, d, 1)?
    } else {
        let x = x
            .pad_with_zeros(D::Minus2, ph, ph)?
            .pad_with_zeros(D::Minus1, pw, pw)?
            .narrow(2, 0, used_h)?
            .narrow(3, 0, used_w)?;
        x.conv2d(weight, 0, s, d, 1)?
    };
    let y = match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
        None => y,
    };
    if relu { self::relu(&y) } else { Ok(y) }
}

/// max(x, 0) with PyTorch's gradient: the upstream gradient where the output is positive, zero
/// elsewhere, at 0 too (candle's own `relu` passes the gradient at 0).
pub(crate) fn relu(x: &Tensor) -> candle_core::Result<Tensor> {
    let positive = x.gt(0.0)?.to_dtype(x.dtype())?;
    // x·0 is −0 for a negative x; adding +0 makes it +0, as max(x, 0) gives.
    (x * positive)? + 0.0
}

/// relu(a + b).
pub(crate) fn add_relu(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if a.shape() != b.shape() {
        candle_core::bail!("add_relu: shapes {:?} and {:?} differ", a.dims(), b.dims())
    }
    relu(&(a + b)?)
}

/// Per-channel values (C) shaped to broadcast over N×C×H×W.
fn per_channel(t: &Tensor) -> candle_core::Result<Tensor> {
    t.reshape((1, (), 1, 1))
}

/// Training-mode batch norm: `(y, batch mean, biased batch variance)`, the statistics detached,
/// y differentiable in x, γ and β through the statistics (the full BatchNorm gradient).
pub(crate) fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (n, c, h, w) = x.dims4()?;
    if n * h * w < 2 {
        candle_core::bail!(
            "batch norm: training needs more than one value per channel, got {n} image(s) of {c} \
             channel(s) of {} value(s)",
            h * w
        )
    }
    check_channels(c, gamma, beta)?;
    let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred
        .sqr()?
        .mean_keepdim(0)?
        .mean_keepdim(2)?
        .mean_keepdim(3)?;
    let y = centred
        .broadcast_div(&(var.clone() + eps)?.sqrt()?)?
        .broadcast_mul(&per_channel(gamma)?)?
        .broadcast_add(&per_channel(beta)?)?;
    let y = if relu { self::relu(&y)? } else { y };
    Ok((y, mean.reshape(c)?.detach(), var.reshape(c)?.detach()))
}

/// An error unless γ and β hold one value per channel.
fn check_channels(c: usize, gamma: &Tensor, beta: &Tensor) -> candle_core::Result<()> {
    let (g, b) = (gamma.elem_count(), beta.elem_count());
    if g != c || b != c {
        candle_core::bail!("batch norm: {c} channels but γ {g} and β {b}")
    }
    Ok(())
}

/// Evaluation-mode batch norm from the running statistics: x·scale + shift per channel.
pub(crate) fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    (running_mean, running_var): (&Tensor, &Tensor),
    eps: f64,
    relu: bool,
) -> candle_core::Result<Tensor> {
    check_channels(x.dim(1)?, gamma, beta)?;
    let scale = gamma.div(&(running_var + eps)?.sqrt()?)?;
    let shift = (beta - running_mean.mul(&scale)?)?;
    let y = x
        .broadcast_mul(&per_channel(&scale)?)?
        .broadcast_add(&per_channel(&shift)?)?;
    if relu { self::relu(&y) } else { Ok(y) }
}

/// For one axis of a pooling window: per kernel tap, the input index each output reads (clamped
/// into the input) and whether it lies inside the input.
fn taps(
    size: usize,
    out: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> Vec<(Vec<u32>, Vec<bool>)> {
    (0..k)
        .map(|t| {
            (0..out)
                .map(|o| {
                    let i = (o * stride + t) as i64 - pad as i64;
                    let inside = i >= 0 && i < size as i64;
                    (i.clamp(0, size as i64 - 1) as u32, inside)
                })
                .unzip()
        })
        .collect()
}

/// Max or average pooling with PyTorch's semantics, as tensor ops.
pub(crate) fn pool2d(pool: &Pool2d, x: &Tensor) -> candle_core::Result<Tensor> {
    if !x.dtype().is_float() {
        candle_core::bail!("pool2d supports float tensors only, got {:?}", x.dtype())
    }
    let (_, _, h, w) = x.dims4()?;
    let (oh, ow) = pool.output_size(h, w)?;
    let dev = x.device();
    let rows = taps(h, oh, pool.kernel.0, pool.stride.0, pool.padding.0);
    let cols = taps(w, ow, pool.kernel.1, pool.stride.1, pool.padding.1);
    let x = x.contiguous()?;
    // Per tap, in the window's scan order (row by row, so that argmax's first maximum is the
    // window scan's): the values it reads and where it lies inside the input.
    let mut values = Vec::with_capacity(rows.len() * cols.len());
    let mut inside: Vec<Vec<bool>> = Vec::with_capacity(values.capacity());
    for (ry, vy) in &rows {
        let by_row = x.index_select(&Tensor::new(ry.as_slice(), dev)?, 2)?;
        for (cx, vx) in &cols {
            values.push(by_row.index_select(&Tensor::new(cx.as_slice(), dev)?, 3)?);
            inside.push(
                vy.iter()
                    .flat_map(|&a| vx.iter().map(move |&b| a && b))
                    .collect(),
            );
        }
    }
    let map = |f: &dyn Fn(bool) -> f32, m: &[bool]| -> candle_core::Result<Tensor> {
        let v: Vec<f32> = m.iter().map(|&b| f(b)).collect();
        Tensor::from_vec(v, (oh, ow), dev)?.to_dtype(x.dtype())
    };
    match pool.kind {
        PoolKind::Max => {
            // Outside the input counts as −∞: never a window's maximum.
            let masked = values
                .iter()
                .zip(&inside)
                .map(|(v, m)| {
                    v.broadcast_add(&map(&|b| if b { 0.0 } else { f32::NEG_INFINITY }, m)?)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let stacked = Tensor::stack(&masked, 4)?;
            let first = stacked.detach().argmax_keepdim(4)?;
            stacked.gather(&first, 4)?.squeeze(4)
        }
        PoolKind::Avg { count_include_pad } => {
            let one = |b: bool| f32::from(u8::from(b));
            let mut sum = values[0].broadcast_mul(&map(&one, &inside[0])?)?;
            for (v, m) in values.iter().zip(&inside).skip(1) {
                sum = (sum + v.broadcast_mul(&map(&one, m)?)?)?;
            }
            let divisor: Vec<f32> = (0..oh * ow)
                .map(|i| match count_include_pad {
                    true => (pool.kernel.0 * pool.kernel.1) as f32,
                    false => inside.iter().filter(|m| m[i]).count() as f32,
                })
                .collect();
            sum.broadcast_div(&Tensor::from_vec(divisor, (oh, ow), dev)?.to_dtype(x.dtype())?)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::{Device, Var};

    use super::*;
    use crate::testing::uniform;
    use crate::with_generic;

    /// The device the generic paths are checked on: the CPU, or the GPU that
    /// `MURA_TEST_DEVICE=cuda:N` names (a CUDA build on a GPU machine, `tools/gpu-check.sh`).
    fn checked_device() -> Device {
        match std::env::var("MURA_TEST_DEVICE") {
            Ok(spec) if spec.starts_with("cuda") => {
                let n = spec.strip_prefix("cuda:").map_or(0, |n| n.parse().unwrap());
                Device::new_cuda(n).unwrap()
            }
            _ => Device::Cpu,
        }
    }

    /// The forward and the gradients of every input under the CPU kernels and the generic
    /// path (on [`checked_device`]), for `f` of the variables, with `dy` weighting the output.
    fn both_ways(
        shapes: &[&[usize]],
        (seed, coarse): (u64, bool),
        f: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    ) -> [(Vec<f32>, Vec<Vec<f32>>); 2] {
        let run = |generic: bool| {
            let dev = if generic {
                checked_device()
            } else {
                Device::Cpu
            };
            with_generic(generic, || {
                let vars: Vec<Var> = shapes
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let n = s.iter().product();
                        let mut v = uniform(n, seed + i as u64, -1.0, 1.0);
                        if coarse {
                            // Few distinct values: ties in every window.
                            v.iter_mut().for_each(|x| *x = (*x * 2.0).round());
                        }
                        Var::from_vec(v, *s, &dev).unwrap()
                    })
                    .collect();
                let inputs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
                let y = f(&inputs).unwrap();
                let dy = Tensor::from_vec(
                    uniform(y.elem_count(), seed + 99, -1.0, 1.0),
                    y.shape(),
                    &dev,
                )
                .unwrap();
                let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let g = vars.iter().map(|v| flat(grads.get(v).unwrap())).collect();
                (flat(&y), g)
            })
        };
        [run(false), run(true)]
    }

    fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * scale, "{what}[{i}]: {x} vs {y}");
        }
    }

    fn agree(
        shapes: &[&[usize]],
        what: &str,
        f: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    ) {
        agree_on(shapes, false, what, f)
    }

    fn agree_on(
        shapes: &[&[usize]],
        coarse: bool,
        what: &str,
        f: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    ) {
        let [(cy, cg), (gy, gg)] = both_ways(shapes, (7, coarse), f);
        close(&gy, &cy, 1e-5, &format!("{what}: output"));
        for (i, (g, c)) in gg.iter().zip(&cg).enumerate() {
            close(g, c, 1e-4, &format!("{what}: gradient {i}"));
        }
    }

    /// Convolutions of the zoo's kinds and awkward ones: asymmetric padding, strides leaving
    /// other remainders per axis, dilation, a bias and a fused ReLU.
    #[test]
    fn convolutions_agree_with_the_cpu_kernels() {
        let p = |s, pad: (usize, usize), d| Conv2dParams {
            stride: (s, s),
            padding: pad,
            dilation: (d, d),
        };
        for (x, w, params, relu) in [
            ([2, 3, 9, 7], [4, 3, 3, 3], p(1, (1, 1), 1), false),
            ([2, 3, 10, 11], [5, 3, 3, 3], p(2, (1, 1), 1), true),
            ([1, 3, 15, 12], [2, 3, 7, 7], p(2, (3, 3), 1), false),
            ([2, 3, 6, 13], [2, 3, 1, 7], p(1, (0, 3), 1), true),
            ([2, 2, 12, 12], [3, 2, 3, 3], p(1, (2, 2), 2), false),
        ] {
            let what = format!("conv {x:?} {w:?} {params:?}");
            agree(&[&x, &w, &[w[0]]], &what, |t| {
                let f = if relu {
                    crate::conv2d_relu
                } else {
                    crate::conv2d
                };
                f(&t[0], &t[1], Some(&t[2]), params)
            });
        }
    }

    /// Pooling with padding, kernel ≠ stride, both average divisors, and ties: the max-pool
    /// gradient reaches the first maximum only, as PyTorch's does.
    #[test]
    fn pooling_agrees_with_the_cpu_kernels_ties_included() {
        let pools = [
            Pool2d::max(3, 2, 1),
            Pool2d::max(2, 2, 0),
            Pool2d::avg(3, 1, 1),
            Pool2d {
                kind: PoolKind::Avg {
                    count_include_pad: false,
                },
                ..Pool2d::avg(3, 2, 1)
            },
        ];
        for pool in pools {
            agree(&[&[2, 3, 9, 8]], &format!("{pool:?}"), |t| {
                pool.forward(&t[0])
            });
            // Coarse values: many tied maxima in every window.
            agree_on(&[&[1, 2, 7, 7]], true, &format!("{pool:?}, ties"), |t| {
                pool.forward(&t[0])
            });
        }
    }

    /// Training and evaluation BatchNorm (with and without ReLU): outputs, batch statistics
    /// and the gradients of x, γ and β.
    #[test]
    fn batch_norm_agrees_with_the_cpu_kernels() {
        for relu in [false, true] {
            agree(
                &[&[3, 4, 5, 6], &[4], &[4]],
                &format!("train, relu {relu}"),
                |t| {
                    let (y, mean, var) = crate::batch_norm_train(&t[0], &t[1], &t[2], 1e-5, relu)?;
                    // The statistics too, as extra outputs without gradient.
                    Tensor::cat(&[y.flatten_all()?, mean, var], 0)
                },
            );
            agree(
                &[&[2, 4, 3, 5], &[4], &[4]],
                &format!("eval, relu {relu}"),
                |t| {
                    let rm = Tensor::new(&[0.1f32, -0.2, 0.3, 0.0], t[0].device())?;
                    let rv = Tensor::new(&[1.5f32, 0.5, 2.0, 1.0], t[0].device())?;
                    crate::batch_norm_eval(&t[0], &t[1], &t[2], &rm, &rv, 1e-3, relu)
                },
            );
        }
        agree(&[&[2, 3, 4, 4], &[2, 3, 4, 4]], "add_relu", |t| {
            crate::add_relu(&t[0], &t[1])
        });
    }

    #[test]
    fn bad_inputs_are_errors_on_the_generic_path_too() {
        with_generic(true, || {
            let dev = Device::Cpu;
            let x = Tensor::zeros((1, 3, 4, 4), candle_core::DType::F32, &dev).unwrap();
            let w = Tensor::zeros((2, 3, 5, 5), candle_core::DType::F32, &dev).unwrap();
            let err = crate::conv2d(&x, &w, None, Conv2dParams::default()).unwrap_err();
            assert!(err.to_string().contains("smaller than the kernel"), "{err}");
            let one = Tensor::zeros((1, 2, 1, 1), candle_core::DType::F32, &dev).unwrap();
            let g = Tensor::ones(2, candle_core::DType::F32, &dev).unwrap();
            assert!(crate::batch_norm_train(&one, &g, &g, 1e-5, false).is_err());
            let b = Tensor::zeros((1, 2, 1, 2), candle_core::DType::F32, &dev).unwrap();
            assert!(crate::add_relu(&one, &b).is_err());
            assert!(Pool2d::max(5, 1, 0).forward(&x).is_err());
        })
    }
}

//! 2-D max and average pooling as candle custom ops: any kernel, stride and padding, forward and
//! backward, parallel over the N×C planes.
//!
//! candle 0.11.1's own pooling cannot train our zoo: its backward refuses kernel ≠ stride (the
//! 3×3/stride-2 stems of ResNet and DenseNet, Inception's pools), it has no padding, and its
//! max-pool backward scales the gradient by (number of maxima)/(window area) instead of routing
//! it to the maximum. These follow PyTorch: `max_pool2d` sends each output's gradient to the
//! first maximum of its window (padding counts as -∞); `avg_pool2d` divides by the window area
//! (`count_include_pad`, PyTorch's default) or by the number of real elements.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

mod backward;
mod forward;

use crate::route::fast;

/// Max or average.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Avg {
        /// Divide by the full window area, padding included (PyTorch's default), rather than by the
        /// number of elements inside the image.
        count_include_pad: bool,
    },
}

/// A pooling window: kernel, stride and zero padding, each (height, width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2d {
    pub kind: PoolKind,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

impl Pool2d {
    pub fn max(kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            kind: PoolKind::Max,
            kernel: (kernel, kernel),
            stride: (stride, stride),
            padding: (padding, padding),
        }
    }

    pub fn avg(kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            kind: PoolKind::Avg {
                count_include_pad: true,
            },
            kernel: (kernel, kernel),
            stride: (stride, stride),
            padding: (padding, padding),
        }
    }

    /// The output height and width for an input of `h`×`w` (PyTorch's floor mode).
    pub fn output_size(&self, h: usize, w: usize) -> candle_core::Result<(usize, usize)> {
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let (ph, pw) = self.padding;
        if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
            candle_core::bail!(
                "pool2d: kernel {:?} and stride {:?} must be positive",
                self.kernel,
                self.stride
            )
        }
        if 2 * ph > kh || 2 * pw > kw {
            candle_core::bail!(
                "pool2d: padding {:?} must be at most half the kernel {:?}",
                self.padding,
                self.kernel
            )
        }
        if h + 2 * ph < kh || w + 2 * pw < kw {
            candle_core::bail!(
                "pool2d: input {h}×{w} (padded {}×{}) is smaller than the kernel {kh}×{kw}",
                h + 2 * ph,
                w + 2 * pw
            )
        }
        Ok(((h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1))
    }

    /// Applies the pooling to an N×C×H×W tensor (made contiguous if needed).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if fast(x) {
            x.contiguous()?.apply_op1(*self)
        } else {
            crate::generic::pool2d(self, x)
        }
    }

    /// The window of output position (oy, ox): rows and columns of the input, clipped to the image,
    /// and the divisor of an average.
    fn window(
        &self,
        oy: usize,
        ox: usize,
        h: usize,
        w: usize,
    ) -> (std::ops::Range<usize>, std::ops::Range<usize>, f64) {
        let y0 = (oy * self.stride.0) as isize - self.padding.0 as isize;
        let x0 = (ox * self.stride.1) as isize - self.padding.1 as isize;
        let y1 = y0 + self.kernel.0 as isize;
        let x1 = x0 + self.kernel.1 as isize;
        let rows = (y0.max(0) as usize)..(y1.min(h as isize) as usize);
        let cols = (x0.max(0) as usize)..(x1.min(w as isize) as usize);
        let divisor = match self.kind {
            PoolKind::Avg {
                count_include_pad: true,
            } => (self.kernel.0 * self.kernel.1) as f64,
            _ => (rows.len() * cols.len()) as f64,
        };
        (rows, cols, divisor)
    }

    /// The input rows of each output row and the input columns of each output column (a window
    /// is their product).
    #[allow(clippy::type_complexity)]
    fn windows(
        &self,
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
    ) -> (Vec<std::ops::Range<usize>>, Vec<std::ops::Range<usize>>) {
        let rows = (0..oh).map(|oy| self.window(oy, 0, h, w).0).collect();
        let cols = (0..ow).map(|ox| self.window(0, ox, h, w).1).collect();
        (rows, cols)
    }

    fn dims4(layout: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
        match *layout.dims() {
            [n, c, h, w] => Ok((n, c, h, w)),
            ref d => candle_core::bail!("pool2d expects an N×C×H×W tensor, got shape {d:?}"),
        }
    }
}

/// Splits `row` into `stride` interleaved phases of `phase_len` (phase p holds columns p,
/// p + stride, ...).
#[inline(always)]
fn deinterleave(row: &[f32], stride: usize, phase_len: usize, phases: &mut [f32]) {
    if stride == 2 {
        // The pairs loop vectorises with shuffles; `step_by` goes element by element.
        let (even, odd) = phases.split_at_mut(phase_len);
        let pairs = row.chunks_exact(2);
        if let Some(&last) = pairs.remainder().first() {
            even[phase_len - 1] = last;
        }
        for ((pair, e), o) in pairs.zip(even.iter_mut()).zip(odd.iter_mut()) {
            *e = pair[0];
            *o = pair[1];
        }
        return;
    }
    for (p, phase) in phases.chunks_mut(phase_len).enumerate() {
        let taken = row[p.min(row.len())..].iter().step_by(stride);
        phase.iter_mut().zip(taken).for_each(|(d, &v)| *d = v);
    }
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("pool2d needs a contiguous input"),
    }
}

impl CustomOp1 for Pool2d {
    fn name(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "mura-max-pool2d",
            PoolKind::Avg { .. } => "mura-avg-pool2d",
        }
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = Self::dims4(layout)?;
        match storage {
            CpuStorage::F32(v) => {
                let (out, shape) = self.fwd_f32(contiguous(v, layout)?, dims)?;
                Ok((CpuStorage::F32(out), shape))
            }
            CpuStorage::F64(v) => {
                let (out, shape) = self.fwd_typed(contiguous(v, layout)?, dims)?;
                Ok((CpuStorage::F64(out), shape))
            }
            _ => candle_core::bail!("pool2d supports f32 and f64 tensors only"),
        }
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = grad_res
            .contiguous()?
            .apply_op2_no_bwd(&arg.contiguous()?, &Pool2dBackward(*self))?;
        Ok(Some(grad))
    }
}

/// The input gradient of a [`Pool2d`]: (output gradient, input) → input gradient.
struct Pool2dBackward(Pool2d);

impl CustomOp2 for Pool2dBackward {
    fn name(&self) -> &'static str {
        "mura-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = Pool2d::dims4(l2)?;
        let (oh, ow) = self.0.output_size(dims.2, dims.3)?;
        if l1.dims() != [dims.0, dims.1, oh, ow] {
            candle_core::bail!(
                "pool2d backward: gradient shape {:?} does not match output {:?}",
                l1.dims(),
                (dims.0, dims.1, oh, ow)
            )
        }
        match (s1, s2) {
            (CpuStorage::F32(g), CpuStorage::F32(x)) => {
                let (out, shape) = self
                    .0
                    .bwd_f32(contiguous(g, l1)?, contiguous(x, l2)?, dims)?;
                Ok((CpuStorage::F32(out), shape))
            }
            (CpuStorage::F64(g), CpuStorage::F64(x)) => {
                let (out, shape) =
                    self.0
                        .bwd_typed(contiguous(g, l1)?, contiguous(x, l2)?, dims)?;
                Ok((CpuStorage::F64(out), shape))
            }
            _ => candle_core::bail!("pool2d backward supports f32 and f64 with matching dtypes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn max_pool_gradient_goes_to_the_maximum() {
        // candle 0.11.1 gives 0.25 here; PyTorch gives 1.0 at the maximum.
        let x = Var::from_vec(vec![1f32, 2., 3., 4.], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let y = Pool2d::max(2, 2, 0).forward(x.as_tensor()).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(g, vec![0., 0., 0., 1.]);
    }

    /// The separable f32 forward equals the generic one (window by window, sums in f64) for
    /// every kind, kernel, stride and padding, NaN included: maxima exactly, averages to f32
    /// rounding; so does the f32 backward (maxima routed to the same element).
    #[test]
    fn separable_f32_forward_matches_the_generic_one() {
        let mut cases = 0;
        // An even and an odd width (the stride-2 phase split has a remainder).
        for (n, c, h, w) in [(2, 3, 9, 8), (1, 2, 7, 9)] {
            cases += f32_paths_match_the_generic_ones((n, c, h, w));
        }
        assert!(cases > 200, "{cases}");
    }

    /// The cases of [`separable_f32_forward_matches_the_generic_one`] on one input shape;
    /// returns how many pools it compared.
    fn f32_paths_match_the_generic_ones((n, c, h, w): (usize, usize, usize, usize)) -> usize {
        let mut x: Vec<f32> = (0..n * c * h * w)
            .map(|i| ((i * 7919 % 1013) as f32 - 500.0) / 37.0)
            .collect();
        x[5] = f32::NAN;
        x[h * w + 17] = f32::NAN;
        // Ties: a run of equal maxima and a signed zero beside a zero.
        x[20..24].fill(1e3);
        x[30] = -0.0;
        x[31] = 0.0;
        // Two NaNs in one window: the first takes the gradient.
        x[40] = f32::NAN;
        x[41] = f32::NAN;
        let kinds = [
            PoolKind::Max,
            PoolKind::Avg {
                count_include_pad: true,
            },
            PoolKind::Avg {
                count_include_pad: false,
            },
        ];
        let mut cases = 0;
        for kind in kinds {
            for kernel in [(1, 1), (2, 2), (3, 3), (3, 2), (5, 1)] {
                for stride in [(1, 1), (2, 2), (1, 3)] {
                    for padding in [(0, 0), (1, 0), (1, 1), (2, 0)] {
                        let pool = Pool2d {
                            kind,
                            kernel,
                            stride,
                            padding,
                        };
                        if pool.output_size(h, w).is_err() {
                            continue;
                        }
                        let (oh, ow) = pool.output_size(h, w).unwrap();
                        let g: Vec<f32> = (0..n * c * oh * ow)
                            .map(|i| ((i * 31 % 17) as f32 - 8.0) / 4.0)
                            .collect();
                        let (want, _) = pool.bwd_typed(&g, &x, (n, c, h, w)).unwrap();
                        let (got, _) = pool.bwd_f32(&g, &x, (n, c, h, w)).unwrap();
                        for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                            let tol = 1e-6 * a.abs().max(1.0);
                            assert!((a - b).abs() <= tol, "{pool:?} gradient {i}: {a} vs {b}");
                        }
                        let (want, ws) = pool.fwd_typed(&x, (n, c, h, w)).unwrap();
                        let (got, gs) = pool.fwd_f32(&x, (n, c, h, w)).unwrap();
                        assert_eq!(ws, gs);
                        for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                            let same = (a.is_nan() && b.is_nan())
                                || (a - b).abs() <= 1e-6 * a.abs().max(1.0);
                            assert!(same, "{pool:?} output {i}: {a} vs {b}");
                            if kind == PoolKind::Max && !a.is_nan() {
                                assert_eq!(a, b, "{pool:?} output {i}");
                            }
                        }
                        cases += 1;
                    }
                }
            }
        }
        cases
    }

    /// Finite differences on f64, for max (away from ties) and average pooling with padding.
    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let n = 2 * 3 * 7 * 6;
        // Distinct values so max pooling has no ties.
        let values: Vec<f64> = (0..n)
            .map(|i| ((i * 7919) % n) as f64 / n as f64 + 0.001 * i as f64)
            .collect();
        let weights: Vec<f64> = (0..n)
            .map(|i| ((i * 31) % 17) as f64 / 17.0 - 0.4)
            .collect();
        for pool in [
            Pool2d::max(3, 2, 1),
            Pool2d::avg(3, 2, 1),
            Pool2d {
                kind: PoolKind::Avg {
                    count_include_pad: false,
                },
                ..Pool2d::avg(3, 1, 1)
            },
            Pool2d {
                kernel: (1, 3),
                stride: (1, 2),
                padding: (0, 1),
                ..Pool2d::max(1, 1, 0)
            },
            Pool2d::max(2, 2, 0),
        ] {
            let x = Var::from_vec(values.clone(), (2, 3, 7, 6), &dev).unwrap();
            let y = pool.forward(x.as_tensor()).unwrap();
            let wt = Tensor::from_vec(weights[..y.elem_count()].to_vec(), y.shape(), &dev).unwrap();
            let loss = |t: &Tensor| -> f64 {
                (pool.forward(t).unwrap() * &wt)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let grads = (y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
            let g: Vec<f64> = grads
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let eps = 1e-6;
            for i in (0..n).step_by(5) {
                let mut plus = values.clone();
                plus[i] += eps;
                let mut minus = values.clone();
                minus[i] -= eps;
                let fd = (loss(&Tensor::from_vec(plus, (2, 3, 7, 6), &dev).unwrap())
                    - loss(&Tensor::from_vec(minus, (2, 3, 7, 6), &dev).unwrap()))
                    / (2.0 * eps);
                assert!(
                    (fd - g[i]).abs() < 1e-6,
                    "{pool:?} element {i}: analytic {} vs numeric {fd}",
                    g[i]
                );
            }
        }
    }

    #[test]
    fn shapes_and_bad_inputs() {
        crate::with_generic(false, shapes_and_bad_inputs_on_the_cpu_kernels)
    }

    fn shapes_and_bad_inputs_on_the_cpu_kernels() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 2, 112, 112), DType::F32, &dev).unwrap();
        assert_eq!(
            Pool2d::max(3, 2, 1).forward(&x).unwrap().dims(),
            &[1, 2, 56, 56]
        );
        assert_eq!(
            Pool2d::avg(2, 2, 0).forward(&x).unwrap().dims(),
            &[1, 2, 56, 56]
        );
        let tiny = Tensor::zeros((1, 1, 2, 2), DType::F32, &dev).unwrap();
        let err = Pool2d::max(3, 1, 0).forward(&tiny).unwrap_err().to_string();
        assert!(err.contains("smaller than the kernel"), "{err}");
        assert!(
            Pool2d::max(2, 2, 2).forward(&tiny).is_err(),
            "padding above half the kernel"
        );
        assert!(Pool2d::max(0, 1, 0).forward(&tiny).is_err());
        let three = Tensor::zeros((2, 2, 2), DType::F32, &dev).unwrap();
        assert!(
            Pool2d::max(1, 1, 0)
                .forward(&three)
                .unwrap_err()
                .to_string()
                .contains("N×C×H×W")
        );
        let ints = Tensor::zeros((1, 1, 2, 2), DType::U8, &dev).unwrap();
        assert!(Pool2d::max(1, 1, 0).forward(&ints).is_err());
    }
}

//! The convolution against direct loops in f64: forward, both gradients, bias, fused ReLU, thread counts, bad shapes.

use super::*;
use candle_core::{D, DType, Device, Var};

use crate::testing::rand_vec;

// These tests are of the CPU kernels, whatever `MURA_KERNELS` says.
fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: Conv2dParams,
) -> candle_core::Result<Tensor> {
    cpu_conv2d(x, w, b, p, false)
}

fn conv2d_relu(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: Conv2dParams,
) -> candle_core::Result<Tensor> {
    cpu_conv2d(x, w, b, p, true)
}

/// Direct convolution in f64: (y, dx, dw) for a given output gradient.
#[allow(clippy::type_complexity)]
fn reference(
    x: &[f32],
    wt: &[f32],
    dy: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    (o, kh, kw): (usize, usize, usize),
    p: Conv2dParams,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let ho = out_len(h, p.padding.0, kh, p.stride.0, p.dilation.0).unwrap();
    let wo = out_len(w, p.padding.1, kw, p.stride.1, p.dilation.1).unwrap();
    let mut y = vec![0f64; n * o * ho * wo];
    let mut dx = vec![0f64; n * c * h * w];
    let mut dw = vec![0f64; o * c * kh * kw];
    for b in 0..n {
        for oc in 0..o {
            for oy in 0..ho {
                for ox in 0..wo {
                    let yi = ((b * o + oc) * ho + oy) * wo + ox;
                    for ci in 0..c {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * p.stride.0 + ky * p.dilation.0) as isize
                                    - p.padding.0 as isize;
                                let ix = (ox * p.stride.1 + kx * p.dilation.1) as isize
                                    - p.padding.1 as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xi = ((b * c + ci) * h + iy as usize) * w + ix as usize;
                                let wi = ((oc * c + ci) * kh + ky) * kw + kx;
                                y[yi] += f64::from(x[xi]) * f64::from(wt[wi]);
                                dx[xi] += f64::from(dy[yi]) * f64::from(wt[wi]);
                                dw[wi] += f64::from(dy[yi]) * f64::from(x[xi]);
                            }
                        }
                    }
                }
            }
        }
    }
    (y, dx, dw)
}

fn close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= 1e-5 * scale,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

/// Forward, input and weight gradients against the direct loops, over the shapes the zoo uses
/// and awkward ones: strides leaving different remainders per axis, asymmetric padding,
/// dilation, 1×7 kernels, pointwise, by shifted products and by im2col, batches below and
/// above the thread count.
#[test]
fn forward_and_both_gradients_match_direct_loops() {
    let dev = Device::Cpu;
    let cases = [
        ((2, 3, 9, 7), (4, 3, 3), params((1, 1), (1, 1), (1, 1))),
        ((3, 2, 10, 11), (5, 3, 3), params((2, 2), (1, 1), (1, 1))),
        ((1, 3, 15, 12), (2, 7, 7), params((2, 2), (3, 3), (1, 1))),
        ((2, 4, 8, 9), (3, 1, 1), params((1, 1), (0, 0), (1, 1))),
        ((4, 4, 8, 9), (3, 1, 1), params((2, 2), (0, 0), (1, 1))),
        ((2, 3, 6, 13), (2, 1, 7), params((1, 1), (0, 3), (1, 1))),
        ((2, 3, 13, 6), (2, 7, 1), params((1, 1), (3, 0), (1, 1))),
        ((2, 2, 12, 12), (3, 3, 3), params((1, 1), (2, 2), (2, 2))),
        ((3, 2, 11, 8), (2, 3, 2), params((3, 2), (1, 0), (1, 2))),
        ((1, 1, 5, 5), (1, 5, 5), params((1, 1), (0, 0), (1, 1))),
        ((2, 2, 3, 3), (2, 3, 3), params((2, 2), (4, 4), (1, 1))),
        // More output positions than one GEMM column block (256): blocks end mid-row.
        ((1, 2, 23, 19), (3, 3, 3), params((1, 1), (1, 1), (1, 1))),
        ((2, 2, 40, 37), (2, 3, 3), params((2, 2), (1, 1), (1, 1))),
        ((1, 1, 30, 41), (2, 3, 5), params((1, 2), (2, 1), (2, 1))),
        // Inception-v3's 1×7 and 7×1 at 17×17 (one block of 289 columns), and at 20×17,
        // where a block ends one column into a row: a segment narrower than the padding.
        ((1, 2, 17, 17), (2, 1, 7), params((1, 1), (0, 3), (1, 1))),
        ((1, 2, 17, 17), (2, 7, 1), params((1, 1), (3, 0), (1, 1))),
        ((1, 2, 20, 17), (2, 1, 7), params((1, 1), (0, 3), (1, 1))),
        ((1, 2, 20, 17), (2, 7, 1), params((1, 1), (3, 0), (1, 1))),
        // By shifted products (see `shifted_products_are_chosen_where_they_pay`): a 3×2
        // kernel padded on one axis over two blocks, a 5×5 padded by 2.
        ((2, 3, 20, 18), (3, 3, 2), params((1, 1), (1, 0), (1, 1))),
        ((2, 2, 12, 16), (3, 5, 5), params((1, 1), (2, 2), (1, 1))),
        // Few outputs from many inputs: both gradients by shifted products too, the input
        // gradient over two column blocks in the first.
        ((2, 32, 20, 18), (3, 3, 2), params((1, 1), (1, 0), (1, 1))),
        ((2, 32, 12, 16), (3, 5, 5), params((1, 1), (2, 2), (1, 1))),
        ((1, 40, 9, 11), (8, 3, 3), params((1, 1), (1, 1), (1, 1))),
        // Shifted forward, but padding as wide as the kernel: the input gradient by col2im.
        ((1, 2, 6, 7), (2, 3, 3), params((1, 1), (3, 3), (1, 1))),
        ((2, 2, 9, 12), (3, 3, 1), params((1, 1), (1, 1), (1, 1))),
        // By Winograd F(4×4, 3×3) (see `winograd_is_chosen_where_it_pays`): one image (its
        // steps spread over the threads), two with one axis unpadded and sizes that leave
        // partial tiles.
        // Both also take Winograd for the input gradient (32 → 32 at 28×28; 34 → 33 at
        // 30×29 padded by (2, 1)); the weight gradient by Winograd from 256 tiles up: one
        // image, and two (one per thread) of 16×16 tiles, the last row partial.
        ((1, 32, 28, 28), (32, 3, 3), params((1, 1), (1, 1), (1, 1))),
        ((2, 33, 30, 29), (34, 3, 3), params((1, 1), (0, 1), (1, 1))),
        ((1, 32, 64, 64), (32, 3, 3), params((1, 1), (1, 1), (1, 1))),
        ((2, 32, 63, 64), (33, 3, 3), params((1, 1), (1, 1), (1, 1))),
        // The weight gradient as one product over the batch (see
        // `weight_grad_batched_is_chosen_for_deep_layers_on_small_maps`): 3×3, pointwise
        // and a strided 1×1.
        ((3, 16, 4, 3), (24, 3, 3), params((1, 1), (1, 1), (1, 1))),
        ((3, 40, 3, 3), (48, 1, 1), params((1, 1), (0, 0), (1, 1))),
        ((2, 32, 7, 7), (128, 1, 1), params((2, 2), (0, 0), (1, 1))),
    ];
    for (t, ((n, c, h, w), (o, kh, kw), p)) in cases.into_iter().enumerate() {
        let xv = rand_vec(n * c * h * w, 10 + t as u64);
        let wv = rand_vec(o * c * kh * kw, 100 + t as u64);
        let x = Var::from_vec(xv.clone(), (n, c, h, w), &dev).unwrap();
        let wt = Var::from_vec(wv.clone(), (o, c, kh, kw), &dev).unwrap();
        let y = conv2d(&x, &wt, None, p).unwrap();
        let (_, _, ho, wo) = y.dims4().unwrap();
        let dyv = rand_vec(n * o * ho * wo, 1000 + t as u64);
        let dy = Tensor::from_vec(dyv.clone(), (n, o, ho, wo), &dev).unwrap();
        let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let (ry, rdx, rdw) = reference(&xv, &wv, &dyv, (n, c, h, w), (o, kh, kw), p);
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        close(&flat(&y), &ry, &format!("case {t} y"));
        close(&flat(grads.get(&x).unwrap()), &rdx, &format!("case {t} dx"));
        close(
            &flat(grads.get(&wt).unwrap()),
            &rdw,
            &format!("case {t} dw"),
        );
    }
}

/// The input gradient by central finite differences of a scalar loss (f32, step 1e-2).
#[test]
fn input_gradient_matches_finite_differences() {
    let dev = Device::Cpu;
    let p = params((2, 1), (1, 2), (1, 1));
    let xv = rand_vec(2 * 2 * 6 * 5, 7);
    let wv = rand_vec(3 * 2 * 3 * 3, 8);
    let wt = Tensor::from_vec(wv, (3, 2, 3, 3), &dev).unwrap();
    let loss = |xv: &[f32]| -> f32 {
        let x = Tensor::from_vec(xv.to_vec(), (2, 2, 6, 5), &dev).unwrap();
        let y = conv2d(&x, &wt, None, p).unwrap();
        y.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let x = Var::from_vec(xv.clone(), (2, 2, 6, 5), &dev).unwrap();
    let y = conv2d(&x, &wt, None, p).unwrap();
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let dx: Vec<f32> = grads
        .get(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(
        grads.get(&wt).is_none(),
        "a constant weight gets no gradient"
    );
    for i in (0..xv.len()).step_by(7) {
        let (mut up, mut down) = (xv.clone(), xv.clone());
        up[i] += 1e-2;
        down[i] -= 1e-2;
        let fd = (loss(&up) - loss(&down)) / 2e-2;
        assert!(
            (fd - dx[i]).abs() <= 2e-2 * dx[i].abs().max(1.0),
            "{i}: {fd} vs {}",
            dx[i]
        );
    }
}

/// The bias is added per output channel and gets the channel sums of the output gradient;
/// the other gradients are those of the convolution without it.
#[test]
fn bias_is_added_per_channel_and_gets_the_channel_sums() {
    let dev = Device::Cpu;
    let p = params((2, 1), (1, 0), (1, 1));
    let x = Var::from_vec(rand_vec(3 * 2 * 7 * 6, 1), (3, 2, 7, 6), &dev).unwrap();
    let wt = Var::from_vec(rand_vec(4 * 2 * 3 * 3, 2), (4, 2, 3, 3), &dev).unwrap();
    let b = Var::from_vec(vec![0.5f32, -1.0, 2.0, 0.0], 4, &dev).unwrap();
    let y0 = conv2d(&x, &wt, None, p).unwrap();
    let y1 = conv2d(&x, &wt, Some(&b), p).unwrap();
    let dy = Tensor::from_vec(rand_vec(y0.elem_count(), 3), y0.shape(), &dev).unwrap();
    let g0 = (&y0 * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    let g1 = (&y1 * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let want = y0.broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap()).unwrap();
    assert_eq!(v(&y1), v(&want));
    assert_eq!(v(g0.get(&x).unwrap()), v(g1.get(&x).unwrap()));
    assert_eq!(v(g0.get(&wt).unwrap()), v(g1.get(&wt).unwrap()));
    let sums: Vec<f64> = (0..4)
        .map(|c| {
            v(&dy.narrow(1, c, 1).unwrap())
                .iter()
                .map(|e| f64::from(*e))
                .sum()
        })
        .collect();
    close(&v(g1.get(&b).unwrap()), &sums, "bias gradient");
    let bad = Tensor::zeros(3, DType::F32, &dev).unwrap();
    let err = conv2d(&x, &wt, Some(&bad), p).unwrap_err().to_string();
    assert!(err.contains("4 output channels but 3 biases"), "{err}");
}

/// The fused ReLU gives relu(conv + bias) and the gradients of candle's own ReLU after the
/// convolution, for the input, the weight and the bias (about half the outputs are cut).
#[test]
fn fused_relu_matches_relu_after_the_convolution() {
    let dev = Device::Cpu;
    let p = params((1, 2), (1, 1), (1, 1));
    let x = Var::from_vec(rand_vec(2 * 3 * 7 * 6, 11), (2, 3, 7, 6), &dev).unwrap();
    let wt = Var::from_vec(rand_vec(5 * 3 * 3 * 3, 12), (5, 3, 3, 3), &dev).unwrap();
    let b = Var::from_vec(rand_vec(5, 13), 5, &dev).unwrap();
    let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for bias in [None, Some(b.as_tensor())] {
        let want = conv2d(&x, &wt, bias, p).unwrap().relu().unwrap();
        let got = conv2d_relu(&x, &wt, bias, p).unwrap();
        assert_eq!(v(&got), v(&want));
        let cut = v(&got).iter().filter(|e| **e == 0.0).count();
        assert!(
            cut > got.elem_count() / 4 && cut < got.elem_count() * 3 / 4,
            "{cut}"
        );
        let dy = Tensor::from_vec(rand_vec(got.elem_count(), 14), got.shape(), &dev).unwrap();
        let gw = (&want * &dy)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gg = (&got * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        for t in [x.as_tensor(), wt.as_tensor(), b.as_tensor()] {
            match (gw.get(t), gg.get(t)) {
                (Some(a), Some(c)) => close(
                    &v(c),
                    &v(a).iter().map(|e| f64::from(*e)).collect::<Vec<_>>(),
                    "fused ReLU gradient",
                ),
                (None, None) => assert!(bias.is_none(), "only an absent bias has no gradient"),
                _ => panic!("the gradients disagree on what gets one"),
            }
        }
    }
}

#[test]
fn an_input_that_needs_no_gradient_gets_none() {
    let dev = Device::Cpu;
    let x = Tensor::ones((2, 3, 8, 8), DType::F32, &dev).unwrap();
    let wt = Var::ones((4, 3, 3, 3), DType::F32, &dev).unwrap();
    let y = conv2d(&x, &wt, None, Conv2dParams::default()).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none());
    // Each weight sees 2 images × 6×6 positions of ones.
    let dw: Vec<f32> = grads
        .get(&wt)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(dw.iter().all(|v| *v == 72.0), "{dw:?}");
}

/// The same gradients, to the bit, on 1 and on 3 threads (images spread over threads or not).
#[test]
fn results_do_not_depend_on_the_thread_count() {
    // Strided by im2col; stride 1 by shifted products in the forward and both gradients;
    // 32 → 32 at 28×28 by Winograd in the forward and the input gradient, at 64×64 in the
    // weight gradient too; at 4×4 the weight gradient as one product over the batch. Four
    // images: spread over the threads with up to 4, one at a time with 8.
    let cases = [
        ((2, 2), 12, 5),
        ((1, 1), 12, 5),
        ((1, 1), 28, 32),
        ((1, 1), 64, 32),
        ((1, 1), 4, 32),
    ];
    for (stride, size, o) in cases {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let dev = Device::Cpu;
                let x = rand_vec(4 * 32 * size * size, 1);
                let x = Var::from_vec(x, (4, 32, size, size), &dev).unwrap();
                let wt = Var::from_vec(rand_vec(o * 32 * 3 * 3, 2), (o, 32, 3, 3), &dev).unwrap();
                let y = conv2d(&x, &wt, None, params(stride, (1, 1), (1, 1))).unwrap();
                let loss = y
                    .sqr()
                    .unwrap()
                    .sum_keepdim(D::Minus1)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let g = loss.backward().unwrap();
                let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (v(&y), v(g.get(&x).unwrap()), v(g.get(&wt).unwrap()))
            })
        };
        for (a, b) in [(1, 3), (2, 8)] {
            let ((ya, dxa, dwa), (yb, dxb, dwb)) = (run(a), run(b));
            let what = format!("{stride:?} {size}×{size} → {o}, {a} and {b} threads");
            assert!(ya == yb, "outputs differ: {what}");
            assert!(dxa == dxb, "input gradients differ: {what}");
            assert!(dwa == dwb, "weight gradients differ: {what}");
        }
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev).unwrap();
    let small = conv2d(
        &x,
        &Tensor::zeros((2, 3, 5, 5), DType::F32, &dev).unwrap(),
        None,
        Conv2dParams::default(),
    );
    assert!(
        small
            .unwrap_err()
            .to_string()
            .contains("smaller than the kernel")
    );
    let chans = conv2d(
        &x,
        &Tensor::zeros((2, 4, 3, 3), DType::F32, &dev).unwrap(),
        None,
        Conv2dParams::default(),
    );
    assert!(chans.unwrap_err().to_string().contains("3 channels"));
    let zero = params((0, 1), (0, 0), (1, 1));
    let stride = conv2d(
        &x,
        &Tensor::zeros((2, 3, 3, 3), DType::F32, &dev).unwrap(),
        None,
        zero,
    );
    assert!(stride.unwrap_err().to_string().contains("positive"));
    let f64x = x.to_dtype(DType::F64).unwrap();
    let w64 = Tensor::zeros((2, 3, 3, 3), DType::F64, &dev).unwrap();
    assert!(
        conv2d(&f64x, &w64, None, Conv2dParams::default())
            .unwrap_err()
            .to_string()
            .contains("f32")
    );
}

/// Empty channel counts run as empty products, not panics.
#[test]
fn empty_channel_counts_give_empty_outputs() {
    let same = params((1, 1), (1, 1), (1, 1));
    let dev = Device::Cpu;
    for (c, o) in [(0, 2), (2, 0)] {
        let x = Tensor::zeros((1, c, 16, 16), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((o, c, 3, 3), DType::F32, &dev).unwrap();
        let y = conv2d(&x, &w, None, same).unwrap();
        assert_eq!(y.dims(), &[1, o, 16, 16]);
        assert!(
            y.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|&v| v == 0.0)
        );
    }
}

#[test]
fn valid_ranges_cover_exactly_the_inside_positions() {
    for stride in 1..4 {
        for offset in -5isize..5 {
            for size in 1..8 {
                let out = 6;
                let (lo, hi) = valid(offset, stride, size, out);
                for o in 0..out {
                    let i = (o * stride) as isize + offset;
                    let inside = i >= 0 && i < size as isize;
                    assert_eq!(
                        inside,
                        (lo..hi).contains(&o),
                        "{stride} {offset} {size} {o}"
                    );
                }
            }
        }
    }
}

//! Winograd F(4×4, 3×3) against the direct convolution in f64, forward and weight gradient.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

use crate::testing::rand_vec as fill;

/// The direct convolution in f64.
fn direct(g: &Winograd, x: &[f32], w: &[f32], bias: &[f32], relu: bool) -> Vec<f64> {
    let mut y = vec![0f64; g.o * g.ho * g.wo];
    for o in 0..g.o {
        for oy in 0..g.ho {
            for ox in 0..g.wo {
                let mut acc = f64::from(bias[o]);
                for c in 0..g.c {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let iy = (oy + ky) as isize - g.ph as isize;
                            let ix = (ox + kx) as isize - g.pw as isize;
                            if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                continue;
                            }
                            let xv = x[(c * g.h + iy as usize) * g.w + ix as usize];
                            acc += f64::from(xv) * f64::from(w[((o * g.c + c) * 3 + ky) * 3 + kx]);
                        }
                    }
                }
                y[(o * g.ho + oy) * g.wo + ox] = if relu { acc.max(0.0) } else { acc };
            }
        }
    }
    y
}

fn run(g: &Winograd, x: &[f32], w: &[f32], bias: &[f32], relu: bool, parallel: bool) -> Vec<f32> {
    let u = g.weights(w);
    let mut y = vec![MaybeUninit::new(f32::NAN); g.o * g.ho * g.wo];
    g.forward(x, &u, Some(bias), relu, &mut y, &mut Vec::new(), parallel)
        .unwrap();
    // SAFETY: `y` was created initialised (NaN) and the forward writes only f32s into it.
    #[allow(unsafe_code)]
    y.into_iter().map(|v| unsafe { v.assume_init() }).collect()
}

/// (C, O, (H, W), padding): sizes not multiples of four, paddings 0–2, several strips,
/// fewer tiles than a strip, up to 256 channels.
type Shape = (usize, usize, (usize, usize), (usize, usize));
const SHAPES: [Shape; 8] = [
    (3, 5, (7, 9), (1, 1)),
    (8, 4, (35, 35), (1, 1)),
    (16, 12, (3, 3), (0, 0)),
    (5, 7, (4, 6), (2, 2)),
    (4, 3, (71, 13), (0, 1)),
    (2, 2, (1, 1), (1, 1)),
    (64, 8, (20, 20), (1, 1)),
    (256, 4, (12, 12), (1, 1)),
];

/// The shapes of [`SHAPES`] agree with the direct f64 convolution to 2e-6·√C of
/// the output's largest magnitude (measured: 0.9e-6 with 3 channels, 2.5e-6 with 8, 4.5e-6
/// with 64, 8e-6 with 256), serial and parallel, bit for bit between the two.
#[test]
fn matches_the_direct_convolution() {
    for (seed, &(c, o, hw, pad)) in SHAPES.iter().enumerate() {
        let g = Winograd::new(c, o, hw, pad).unwrap();
        let x = fill(c * hw.0 * hw.1, seed as u64);
        let w = fill(o * c * 9, 100 + seed as u64);
        let bias = fill(o, 200 + seed as u64);
        for relu in [false, true] {
            let want = direct(&g, &x, &w, &bias, relu);
            let got = run(&g, &x, &w, &bias, relu, false);
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
            let err = got
                .iter()
                .zip(&want)
                .fold(0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
            let tol = 2e-6 * (c as f64).sqrt() * scale;
            assert!(err <= tol, "{c}→{o} {hw:?} pad {pad:?}: {err} of {scale}");
            let par = run(&g, &x, &w, &bias, relu, true);
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                par.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}

/// The direct weight gradient in f64: dW[o][c][ky][kx] = Σ dy[o][oy][ox]·x[c][iy][ix].
fn direct_weight_grad(g: &Winograd, x: &[f32], dy: &[f32]) -> Vec<f64> {
    let mut dw = vec![0f64; g.o * g.c * 9];
    for o in 0..g.o {
        for c in 0..g.c {
            for tap in 0..9 {
                let (ky, kx) = (tap / 3, tap % 3);
                let mut acc = 0f64;
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let iy = (oy + ky) as isize - g.ph as isize;
                        let ix = (ox + kx) as isize - g.pw as isize;
                        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                            continue;
                        }
                        let xv = x[(c * g.h + iy as usize) * g.w + ix as usize];
                        acc += f64::from(xv) * f64::from(dy[(o * g.ho + oy) * g.wo + ox]);
                    }
                }
                dw[(o * g.c + c) * 9 + tap] = acc;
            }
        }
    }
    dw
}

/// The weight gradient (the adjoint of the forward) against the direct f64 sums over the
/// shapes of `matches_the_direct_convolution` and two of several strips with many tiles,
/// to 2e-6·√tiles of the largest magnitude (each element sums over the tiles, not the
/// channels; measured: 0.3e-6 with one tile, 2.3e-6 with 6, 5.5e-6 with 196), serial and
/// parallel bit for bit, written in dWᵀ's layout over whatever `dwt` held.
#[test]
fn weight_gradient_matches_the_direct_sums() {
    let many_tiles = [(32, 32, (56, 56), (1, 1)), (6, 40, (61, 47), (0, 0))];
    for (seed, &(c, o, hw, pad)) in SHAPES.iter().chain(&many_tiles).enumerate() {
        let g = Winograd::new(c, o, hw, pad).unwrap();
        let x = fill(c * hw.0 * hw.1, 300 + seed as u64);
        let dy = fill(o * g.ho * g.wo, 400 + seed as u64);
        let want = direct_weight_grad(&g, &x, &dy);
        let run = |parallel| {
            let mut dwt = vec![f32::NAN; 9 * c * o + 3];
            g.weight_grad(&x, &dy, &mut dwt, &mut vec![7.0; 5], parallel)
                .unwrap();
            assert!(dwt[9 * c * o..].iter().all(|v| v.is_nan()), "past the end");
            dwt.truncate(9 * c * o);
            dwt
        };
        let got = run(false);
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
        let mut err = 0f64;
        for oi in 0..o {
            for ci in 0..c {
                for tap in 0..9 {
                    let d = f64::from(got[(ci * 9 + tap) * o + oi]);
                    err = err.max((d - want[(oi * c + ci) * 9 + tap]).abs());
                }
            }
        }
        let tol = 2e-6 * (g.tiles() as f64).sqrt() * scale;
        assert!(
            err <= tol,
            "{c}→{o} {hw:?} pad {pad:?}: {err} of {scale} (tol {tol})"
        );
        let par = run(true);
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            par.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}

/// A padded image smaller than the kernel, or no channels, has no tiling; short buffers are
/// refused with an error instead of a panic.
#[test]
fn refuses_what_it_cannot_tile() {
    assert!(Winograd::new(3, 4, (1, 1), (0, 0)).is_none());
    assert!(Winograd::new(0, 4, (8, 8), (1, 1)).is_none());
    assert!(Winograd::new(3, 0, (8, 8), (1, 1)).is_none());
    let g = Winograd::new(2, 2, (8, 8), (1, 1)).unwrap();
    assert_eq!(g.tiles(), 4);
    let u = g.weights(&fill(2 * 2 * 9, 1));
    let mut y = vec![MaybeUninit::new(0f32); 2 * 64];
    let err = g
        .forward(
            &fill(10, 2),
            &u,
            None,
            false,
            &mut y,
            &mut Vec::new(),
            false,
        )
        .unwrap_err();
    assert!(err.to_string().contains("image of 10"), "{err}");
    let (x, dy) = (fill(2 * 64, 3), fill(2 * 64, 4));
    let mut dwt = vec![0f32; 2 * 2 * 9];
    let err = g
        .weight_grad(&x, &dy[..100], &mut dwt, &mut Vec::new(), false)
        .unwrap_err();
    assert!(err.to_string().contains("output gradient of 100"), "{err}");
    let err = g
        .weight_grad(&x, &dy, &mut dwt[..35], &mut Vec::new(), false)
        .unwrap_err();
    assert!(err.to_string().contains("weight gradient of 35"), "{err}");
}

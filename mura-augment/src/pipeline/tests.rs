//! The pipeline against straightforward references, seeds, views and bad configs.

use super::*;
use crate::{Clahe, ClaheAug, Filter, WindowAug};
use proptest::prelude::*;

fn gray(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> DecodedImage {
    DecodedImage {
        width: w,
        height: h,
        color: ColorMode::Gray,
        pixels: (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y))
            .collect(),
    }
}

fn pre(w: u32, h: u32, channels: usize) -> Preprocess {
    Preprocess {
        width: w,
        height: h,
        mode: ResizeMode::Stretch,
        filter: Filter::Bilinear,
        channels,
        normalize: Normalize {
            mean: [0.0; 3],
            std: [1.0; 3],
        },
    }
}

fn params() -> Params {
    Params {
        hflip: false,
        vflip: false,
        angle_degrees: 0.0,
        scale: 1.0,
        shift: (0.0, 0.0),
        brightness: 0.0,
        contrast: 1.0,
        window: false,
        clahe: false,
    }
}

#[test]
fn warp_with_identity_parameters_reproduces_the_image() {
    let img = gray(13, 9, |x, y| (x * 17 + y * 5) as u8);
    let mut direct = vec![0.0; 13 * 9];
    let p = params();
    render(&img.pixels, 13, 9, &p, &mut direct);
    // Force the general (bilinear) path with a tiny-but-zero-effect shift.
    let mut warped = vec![0.0; 13 * 9];
    let q = Params {
        shift: (1e-7, 0.0),
        ..p
    };
    render(&img.pixels, 13, 9, &q, &mut warped);
    for (a, b) in direct.iter().zip(&warped) {
        assert!((a - b).abs() < 1e-5);
    }
    for (a, &b) in direct.iter().zip(&img.pixels) {
        assert!((a - f32::from(b) / 255.0).abs() < 1e-7);
    }
}

#[test]
fn views_flip_and_rotate_on_top_of_the_sampled_parameters() {
    let img = gray(16, 12, |x, y| (x * 13 + y * 7) as u8);
    let plain = Pipeline::new(pre(16, 12, 1), AugmentConfig::none(), 3).unwrap();
    let base = plain.process(&img, 0, 0).unwrap();
    let flipped = plain
        .with_view(View {
            hflip: true,
            angle_degrees: 0.0,
        })
        .unwrap();
    let out = flipped.process(&img, 0, 0).unwrap();
    for y in 0..12 {
        for x in 0..16 {
            assert_eq!(out[y * 16 + x], base[y * 16 + 15 - x]);
        }
    }
    // A rotation view equals sampling that angle; a flip view undoes a sampled flip.
    let turned = plain
        .with_view(View {
            hflip: false,
            angle_degrees: 10.0,
        })
        .unwrap();
    let mut expected = vec![0.0; 16 * 12];
    let p = Params {
        angle_degrees: 10.0,
        ..params()
    };
    render(&img.pixels, 16, 12, &p, &mut expected);
    // The fast warp uses 8-bit bilinear weights: within 0.01 of the float reference.
    let got = turned.process(&img, 0, 0).unwrap();
    assert!(got.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 0.01));
    assert_ne!(got, base);
    let always = AugmentConfig {
        hflip: 1.0,
        ..AugmentConfig::none()
    };
    let undone = Pipeline::new(pre(16, 12, 1), always, 3)
        .unwrap()
        .with_view(View {
            hflip: true,
            angle_degrees: 0.0,
        })
        .unwrap();
    assert_eq!(undone.process(&img, 0, 0).unwrap(), base);
    assert!(
        plain
            .with_view(View {
                hflip: false,
                angle_degrees: f32::NAN,
            })
            .is_err()
    );
}

proptest! {
    #[test]
    fn fused_pass_equals_reference(
        w in 1usize..40, h in 1usize..40, angle in -180.0f32..180.0, scale in 0.5f32..2.0,
        tx in -5.0f32..5.0, ty in -5.0f32..5.0, hflip in any::<bool>(), vflip in any::<bool>(),
        brightness in -0.3f32..0.3, contrast in 0.6f32..1.4, identity in any::<bool>(),
    ) {
        let img = gray(w as u32, h as u32, |x, y| ((x * 37 + y * 11) % 256) as u8);
        let p = if identity {
            Params { hflip, vflip, brightness, contrast, ..params() }
        } else {
            Params { hflip, vflip, angle_degrees: angle, scale, shift: (tx, ty), brightness, contrast, window: false, clahe: false }
        };
        let mut reference = vec![0.0; w * h];
        render(&img.pixels, w, h, &p, &mut reference);
        let norm = Normalize::IMAGENET;
        let mut values = vec![0.0; w * h];
        render_values(&img.pixels, (w, h), &p, &mut values);
        let mut fused = vec![0.0; 3 * w * h];
        write_channels(&values, &norm, 3, Out::Slot(&mut fused));
        let mut appended = Vec::new();
        write_channels(&values, &norm, 3, Out::Append(&mut appended));
        prop_assert_eq!(&appended, &fused);
        for c in 0..3 {
            for i in 0..w * h {
                let v = ((reference[i] - 0.5) * contrast + 0.5 + brightness).clamp(0.0, 1.0);
                let expect = (v - norm.mean[c]) / norm.std[c];
                // 8-bit bilinear weights truncate by under 1/256 per axis: at most one gray level
                // per axis on a 255-level edge, so 2 levels, plus < 0.3 from 16.16 coordinate
                // steps over a 64-pixel block; the contrast factor scales the error.
                let tol = 2.5 * contrast.max(1.0) / 255.0 / norm.std[c] + 1e-4;
                prop_assert!((fused[c * w * h + i] - expect).abs() <= tol, "c {c} i {i}: {} vs {expect}", fused[c * w * h + i]);
            }
        }
    }
}

#[test]
fn rotation_by_180_equals_both_flips() {
    let img = gray(10, 8, |x, y| (x * 23 + y * 7) as u8);
    let mut rotated = vec![0.0; 80];
    render(
        &img.pixels,
        10,
        8,
        &Params {
            angle_degrees: 180.0,
            ..params()
        },
        &mut rotated,
    );
    let mut flipped = vec![0.0; 80];
    render(
        &img.pixels,
        10,
        8,
        &Params {
            hflip: true,
            vflip: true,
            ..params()
        },
        &mut flipped,
    );
    for (a, b) in rotated.iter().zip(&flipped) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}

#[test]
fn rotation_of_90_degrees_moves_a_bright_corner() {
    // Bright top-left quadrant of a square image; rotating +90° (clockwise in image coordinates,
    // y down) moves it to the top-right.
    let img = gray(8, 8, |x, y| if x < 4 && y < 4 { 255 } else { 0 });
    let mut out = vec![0.0; 64];
    render(
        &img.pixels,
        8,
        8,
        &Params {
            angle_degrees: 90.0,
            ..params()
        },
        &mut out,
    );
    assert!(out[7] > 0.99 && out[0] < 0.01, "{out:?}");
}

#[test]
fn zoom_out_leaves_a_black_border_and_zoom_in_fills() {
    let img = gray(20, 20, |_, _| 200);
    let mut out = vec![0.0; 400];
    render(
        &img.pixels,
        20,
        20,
        &Params {
            scale: 0.5,
            ..params()
        },
        &mut out,
    );
    assert!(out[0] == 0.0 && (out[210] - 200.0 / 255.0).abs() < 1e-6);
    render(
        &img.pixels,
        20,
        20,
        &Params {
            scale: 1.5,
            ..params()
        },
        &mut out,
    );
    assert!(out.iter().all(|&v| (v - 200.0 / 255.0).abs() < 1e-6));
}

#[test]
fn same_seed_epoch_index_same_pixels_whatever_the_thread() {
    let cfg = AugmentConfig {
        vflip: 0.5,
        zoom: (0.8, 1.2),
        translate: 0.1,
        brightness: 0.1,
        contrast: 0.2,
        window: Some(WindowAug {
            p_low: 5.0,
            p_high: 95.0,
            probability: 0.5,
        }),
        clahe: Some(ClaheAug {
            clahe: Clahe::default(),
            probability: 0.5,
        }),
        ..AugmentConfig::mura_paper()
    };
    let pipeline = Pipeline::new(Preprocess::imagenet(32), cfg, 9).unwrap();
    let images: Vec<DecodedImage> = (0..24)
        .map(|i| gray(40 + i, 50, |x, y| ((x * y + i) % 251) as u8))
        .collect();
    let serial: Vec<Vec<f32>> = images
        .iter()
        .enumerate()
        .map(|(i, im)| pipeline.process(im, 3, i as u64).unwrap())
        .collect();
    for threads in [2, 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let parallel: Vec<Vec<f32>> = pool.install(|| {
            use rayon::prelude::*;
            images
                .par_iter()
                .enumerate()
                .rev()
                .map(|(i, im)| pipeline.process(im, 3, i as u64).unwrap())
                .collect::<Vec<_>>()
        });
        let mut parallel = parallel;
        parallel.reverse();
        assert_eq!(parallel, serial, "{threads} threads");
    }
    let other_epoch = pipeline.process(&images[0], 4, 0).unwrap();
    assert_ne!(other_epoch, serial[0]);
}

#[test]
fn bad_configs_are_clear_errors_and_720_degrees_is_defined() {
    let ok = AugmentConfig::mura_paper();
    for (bad, field) in [
        (
            AugmentConfig {
                hflip: f32::NAN,
                ..ok
            },
            "hflip",
        ),
        (
            AugmentConfig {
                rotation: f32::NAN,
                ..ok
            },
            "rotation",
        ),
        (
            AugmentConfig {
                zoom: (1.2, 0.8),
                ..ok
            },
            "zoom",
        ),
        (
            AugmentConfig {
                zoom: (0.0, 1.0),
                ..ok
            },
            "zoom",
        ),
        (
            // A positive but tiny scale, below the smallest zoom accepted (a case fuzzing found).
            AugmentConfig {
                zoom: (1.9e-24, 5.7e-16),
                ..ok
            },
            "zoom",
        ),
        (
            AugmentConfig {
                zoom: (1.0, 17.0),
                ..ok
            },
            "zoom",
        ),
        (
            AugmentConfig {
                translate: 1.0,
                ..ok
            },
            "translate",
        ),
        (
            AugmentConfig {
                brightness: f32::INFINITY,
                ..ok
            },
            "brightness",
        ),
        (
            AugmentConfig {
                window: Some(WindowAug {
                    p_low: 95.0,
                    p_high: 5.0,
                    probability: 1.0,
                }),
                ..ok
            },
            "percentile window",
        ),
    ] {
        let err = Pipeline::new(Preprocess::imagenet(8), bad, 0).unwrap_err();
        assert!(
            matches!(&err, AugmentError::BadConfig { what, .. } if *what == field),
            "{err:?}"
        );
    }
    let spin = Pipeline::new(
        Preprocess::imagenet(8),
        AugmentConfig {
            rotation: 720.0,
            ..ok
        },
        0,
    )
    .unwrap();
    let out = spin
        .process(&gray(9, 9, |x, _| x as u8 * 20), 0, 0)
        .unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
    let crop = Preprocess {
        mode: ResizeMode::CenterCrop { crop_fraction: 0.0 },
        ..Preprocess::imagenet(8)
    };
    assert!(Pipeline::new(crop, ok, 0).is_err());
    assert!(
        Pipeline::new(
            Preprocess {
                channels: 2,
                ..Preprocess::imagenet(8)
            },
            ok,
            0
        )
        .is_err()
    );
    let p = Pipeline::new(Preprocess::imagenet(8), ok, 0).unwrap();
    assert!(matches!(
        p.process(&gray(0, 0, |_, _| 0), 0, 0),
        Err(AugmentError::EmptyImage { .. })
    ));
    let one = p.process(&gray(1, 1, |_, _| 77), 0, 0).unwrap();
    assert_eq!(one.len(), 3 * 64);
}

#[test]
fn always_on_intensity_steps_are_preprocessing_and_deterministic() {
    let window = WindowAug {
        p_low: 5.0,
        p_high: 95.0,
        probability: 1.0,
    };
    let cfg = AugmentConfig {
        window: Some(window),
        clahe: Some(ClaheAug {
            clahe: Clahe::default(),
            probability: 0.5,
        }),
        ..AugmentConfig::mura_paper()
    };
    let always = cfg.always();
    assert_eq!(always.window, Some(window));
    assert_eq!(always.clahe, None);
    assert_eq!(always.hflip, 0.0);
    assert!(always.is_deterministic());
    assert!(!cfg.is_deterministic());
    assert!(AugmentConfig::none().is_deterministic());
    // A deterministic pipeline gives the same pixels at every epoch.
    let p = Pipeline::new(pre(12, 12, 1), always, 9).unwrap();
    let img = gray(20, 16, |x, y| ((x * 11 + y * 5) % 256) as u8);
    let a = p.process(&img, 0, 3).unwrap();
    assert_eq!(a, p.process(&img, 7, 3).unwrap());
    assert_ne!(
        a,
        Pipeline::new(pre(12, 12, 1), AugmentConfig::none(), 9)
            .unwrap()
            .process(&img, 0, 3)
            .unwrap()
    );
}

proptest! {
    #[test]
    fn outputs_have_the_shape_and_stay_in_range(
        sw in 1u32..60, sh in 1u32..60, ow in 1u32..24, oh in 1u32..24,
        seed in any::<u64>(), index in 0u64..1000, three in any::<bool>(),
    ) {
        let cfg = AugmentConfig { vflip: 0.5, zoom: (0.7, 1.3), translate: 0.2, brightness: 0.3, contrast: 0.5, ..AugmentConfig::mura_paper() };
        let norm = Normalize::IMAGENET;
        let pre = Preprocess { width: ow, height: oh, mode: ResizeMode::Letterbox { pad: 0 }, filter: Filter::Bicubic, channels: if three { 3 } else { 1 }, normalize: norm };
        let pipeline = Pipeline::new(pre, cfg, seed).unwrap();
        let img = gray(sw, sh, |x, y| ((x * 31 + y * 17) % 256) as u8);
        let out = pipeline.process(&img, 0, index).unwrap();
        prop_assert_eq!(out.len(), pre.channels * (ow * oh) as usize);
        for (c, plane) in out.chunks((ow * oh) as usize).enumerate() {
            let lo = (0.0 - norm.mean[c]) / norm.std[c] - 1e-4;
            let hi = (1.0 - norm.mean[c]) / norm.std[c] + 1e-4;
            prop_assert!(plane.iter().all(|&v| v >= lo && v <= hi));
        }
    }

    #[test]
    fn zoom_one_rotation_zero_is_identity(w in 1u32..30, h in 1u32..30) {
        let pipeline = Pipeline::new(pre(w, h, 1), AugmentConfig::none(), 1).unwrap();
        let img = gray(w, h, |x, y| ((x * 7 + y * 13) % 256) as u8);
        let out = pipeline.process(&img, 0, 0).unwrap();
        for (o, &p) in out.iter().zip(&img.pixels) {
            prop_assert!((o - f32::from(p) / 255.0).abs() < 1e-6);
        }
    }
}

/// Writes the geometric transform of `plane` (flips, then rotation, scale and shift about the
/// centre) into `out` as values in [0, 1]. Bilinear sampling; outside the image is black. The
/// straightforward reference the fused pass is tested against.
fn render(plane: &[u8], w: usize, h: usize, params: &Params, out: &mut [f32]) {
    const INV: f32 = 1.0 / 255.0;
    if params.is_geometric_identity() {
        for y in 0..h {
            let sy = if params.vflip { h - 1 - y } else { y };
            let src = &plane[sy * w..(sy + 1) * w];
            let dst = &mut out[y * w..(y + 1) * w];
            if params.hflip {
                for (o, &v) in dst.iter_mut().zip(src.iter().rev()) {
                    *o = f32::from(v) * INV;
                }
            } else {
                for (o, &v) in dst.iter_mut().zip(src) {
                    *o = f32::from(v) * INV;
                }
            }
        }
        return;
    }
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let (sin, cos) = params.angle_degrees.to_radians().sin_cos();
    let inv_scale = 1.0 / params.scale;
    let fx = if params.hflip { -1.0 } else { 1.0 };
    let fy = if params.vflip { -1.0 } else { 1.0 };
    // Source position (centre-relative) of destination offset (dx, dy):
    // flip( R(-θ) (d - shift) / s ).
    let (m00, m01) = (fx * cos * inv_scale, fx * sin * inv_scale);
    let (m10, m11) = (-fy * sin * inv_scale, fy * cos * inv_scale);
    let sample = |x: isize, y: isize| -> f32 {
        if x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h {
            f32::from(plane[y as usize * w + x as usize])
        } else {
            0.0
        }
    };
    for y in 0..h {
        let dy = y as f32 + 0.5 - cy - params.shift.1;
        for x in 0..w {
            let dx = x as f32 + 0.5 - cx - params.shift.0;
            // Continuous source coordinates, pixel centres at k + 0.5.
            let sx = m00 * dx + m01 * dy + cx - 0.5;
            let sy = m10 * dx + m11 * dy + cy - 0.5;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (ax, ay) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            let top = sample(x0, y0) * (1.0 - ax) + sample(x0 + 1, y0) * ax;
            let bottom = sample(x0, y0 + 1) * (1.0 - ax) + sample(x0 + 1, y0 + 1) * ax;
            out[y * w + x] = (top * (1.0 - ay) + bottom * ay) * INV;
        }
    }
}

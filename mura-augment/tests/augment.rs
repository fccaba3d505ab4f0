//! Integration tests of mura-augment: CLAHE against OpenCV, the pipeline over decoded synthetic
//! radiographs through the loader, and the preview grid (`SAVE_RESULT=1` writes it for a person).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mura_augment::{AugmentConfig, Clahe, ClaheAug, Pipeline, Preprocess, WindowAug, preview_grid};
use mura_data::synth::{SynthConfig, generate};
use mura_data::{ColorMode, DataError, IndexOptions, Loader, LoaderConfig, decode_file, index};

const W: usize = 128;
const H: usize = 96;

/// The formula of `tools/clahe_golden.py`.
fn test_radiograph() -> Vec<u8> {
    let mut v = Vec::with_capacity(W * H);
    for y in 0..H as i64 {
        for x in 0..W as i64 {
            let bone = i64::from((x - 64 - (y - 48).div_euclid(4)).abs() < 14);
            v.push(
                (40 + (x * 30) / W as i64
                    + bone * (90 + (y * 20) / H as i64)
                    + (x * 7 + y * 13) % 9) as u8,
            );
        }
    }
    v
}

#[test]
fn clahe_matches_opencv() {
    let fixture = include_bytes!("fixtures/clahe_opencv.bin");
    let input = &fixture[..W * H];
    assert_eq!(
        input,
        test_radiograph().as_slice(),
        "the formula matches the fixture's input"
    );
    for (k, clip) in [2.0f32, 4.0].into_iter().enumerate() {
        let expected = &fixture[W * H * (k + 1)..W * H * (k + 2)];
        let mut ours = input.to_vec();
        Clahe {
            clip_limit: clip,
            tiles: 8,
        }
        .apply(&mut ours, W, H)
        .unwrap();
        let diffs: Vec<i16> = ours
            .iter()
            .zip(expected)
            .map(|(a, b)| i16::from(*a) - i16::from(*b))
            .collect();
        let worst = diffs.iter().map(|d| d.abs()).max().unwrap();
        let off = diffs.iter().filter(|d| **d != 0).count();
        // Tolerance: one gray level (float rounding of the bilinear blend), on under 2% of pixels.
        assert!(
            worst <= 1 && off * 50 < W * H,
            "clip {clip}: worst {worst}, {off} pixels differ"
        );
    }
}

#[test]
fn pipeline_runs_on_the_loaders_worker_threads() {
    let dir = tempfile::tempdir().unwrap();
    generate(
        dir.path(),
        &SynthConfig {
            studies: 8,
            seed: 4,
            max_side: 96,
            odd_format_fraction: 0.3,
            ..SynthConfig::default()
        },
    )
    .unwrap();
    let d = index(dir.path(), &IndexOptions::default()).unwrap().dataset;
    let files: Vec<_> = d.images().iter().map(|r| r.file(d.base())).collect();
    let cfg = AugmentConfig {
        window: Some(WindowAug {
            p_low: 5.0,
            p_high: 95.0,
            probability: 0.5,
        }),
        clahe: Some(ClaheAug {
            clahe: Clahe::default(),
            probability: 0.5,
        }),
        zoom: (0.9, 1.1),
        ..AugmentConfig::mura_paper()
    };
    let pipeline = Pipeline::new(Preprocess::imagenet(48), cfg, 5).unwrap();
    let run = |threads| {
        let loader = Loader::new(
            files.clone(),
            LoaderConfig {
                threads,
                seed: 5,
                ..LoaderConfig::default()
            },
        )
        .unwrap();
        loader
            .epoch_with(2, move |i, img| {
                pipeline
                    .process(&img, 2, i as u64)
                    .map_err(|e| DataError::InvalidConfig {
                        what: "augmentation",
                        reason: e.to_string(),
                    })
            })
            .map(|s| s.unwrap())
            .map(|s| (s.index, s.value))
            .collect::<Vec<_>>()
    };
    let one = run(1);
    assert_eq!(one.len(), files.len());
    assert!(
        one.iter()
            .all(|(_, v)| v.len() == 3 * 48 * 48 && v.iter().all(|x| x.is_finite()))
    );
    assert_eq!(run(3), one, "thread count changes nothing");

    // The preview grid, for a person to look at.
    let images: Vec<_> = files
        .iter()
        .take(4)
        .map(|f| decode_file(f, ColorMode::Gray).unwrap())
        .collect();
    let (gw, gh, grid) = preview_grid(&pipeline, &images, 6).unwrap();
    assert_eq!(grid.len(), (gw * gh) as usize);
    assert_eq!((gw, gh), (6 * 50 + 2, 4 * 50 + 2));
    if std::env::var_os("SAVE_RESULT").is_some() {
        let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("augment-preview.png");
        mura_data::write_gray_png(&out, gw, gh, &grid).unwrap();
        println!("wrote {}", out.display());
    }
}

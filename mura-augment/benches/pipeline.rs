//! Images/s of decode alone and of decode + resize + train augmentations + normalise, through the
//! loader on 1 and 2 threads, over synthetic MURA-like PNGs (longer side 512) resized to 224; and
//! the stages on one decoded image and one thread: resize + normalise (the eval preset), and resize +
//! rotation/flips + normalise (the train preset), the difference being the warp.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mura_augment::{AugmentConfig, Pipeline, Preprocess, ResizeMode};
use mura_data::synth::{SynthConfig, generate};
use mura_data::{ColorMode, DecodedImage, IndexOptions, Loader, LoaderConfig, index};

fn bench_pipeline(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    generate(
        dir.path(),
        &SynthConfig {
            studies: 40,
            seed: 1,
            ..SynthConfig::default()
        },
    )
    .unwrap();
    let d = index(dir.path(), &IndexOptions::default()).unwrap().dataset;
    let files: Vec<_> = d.images().iter().map(|r| r.file(d.base())).collect();
    let pipeline =
        Pipeline::new(Preprocess::imagenet(224), AugmentConfig::mura_paper(), 0).unwrap();
    let mut g = c.benchmark_group("pipeline_512px_png_to_224");
    g.throughput(Throughput::Elements(files.len() as u64));
    g.sample_size(10);
    for threads in [1, 2] {
        let loader = Loader::new(
            files.clone(),
            LoaderConfig {
                threads,
                ..LoaderConfig::default()
            },
        )
        .unwrap();
        g.bench_function(format!("decode_only_threads_{threads}"), |b| {
            b.iter(|| {
                loader
                    .epoch(0)
                    .map(|s| s.unwrap().value.pixels.len())
                    .sum::<usize>()
            })
        });
        g.bench_function(format!("decode_augment_normalise_threads_{threads}"), |b| {
            b.iter(|| {
                let epoch = loader.epoch_with(0, move |i, img| {
                    pipeline.process(&img, 0, i as u64).map_err(|e| {
                        mura_data::DataError::InvalidConfig {
                            what: "augment",
                            reason: e.to_string(),
                        }
                    })
                });
                epoch.map(|s| s.unwrap().value.len()).sum::<usize>()
            })
        });
    }
    g.finish();
}

fn bench_stages(c: &mut Criterion) {
    // A 410x512 gray radiograph-like ramp with texture, as the loader hands it over.
    let (w, h) = (410u32, 512u32);
    let image = DecodedImage {
        width: w,
        height: h,
        color: ColorMode::Gray,
        pixels: (0..w * h)
            .map(|i| (((i % w) * 255 / w) ^ ((i / w) % 7 * 9)) as u8)
            .collect(),
    };
    let mut g = c.benchmark_group("stages_410x512_to_224_one_thread");
    g.throughput(Throughput::Elements(1));
    for (name, augment) in [
        ("resize_normalise", AugmentConfig::none()),
        ("resize_rotate_flip_normalise", AugmentConfig::mura_paper()),
    ] {
        // Stretched, as `mura bench pipeline` and the Python peer resize.
        let preprocess = Preprocess {
            mode: ResizeMode::Stretch,
            ..Preprocess::imagenet(224)
        };
        let pipeline = Pipeline::new(preprocess, augment, 0).unwrap();
        let mut dst = vec![0.0f32; pipeline.output_len()];
        let mut i = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                i += 1;
                pipeline.process_into(&image, 0, i, &mut dst).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_pipeline, bench_stages);
criterion_main!(benches);

//! The input pipeline's throughput: decoding alone against decoding + resize + the MURA paper's
//! train augmentations + normalisation, on the loader's threads, as `mura bench pipeline` and
//! the Python peer (`pipeline.py`) measure it.

use std::path::PathBuf;
use std::time::Instant;

use mura_data::{DataError, Loader, LoaderConfig};
use serde::Serialize;

use crate::{AugmentConfig, AugmentError, Filter, Pipeline, Preprocess, ResizeMode};

/// What one benchmark measured: the best pass of each kind, in images per second.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineBench {
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    pub threads: usize,
    pub images: usize,
    pub size: u32,
    /// Decode + resize + augment + normalise.
    pub images_per_sec: f64,
    /// Decoding alone.
    pub decode_images_per_sec: f64,
    /// The first over the second.
    pub ratio_to_decode: f64,
}

/// Runs `epochs` passes of each kind over `files` on `threads` threads, to `size`×`size`
/// (stretched, bilinear) with the MURA paper's flips and ±30° rotations. Decoding alone and the
/// full pipeline take turns, so both meet the same machine (a noisy neighbour or a frequency
/// change hits both); the best pass of each is kept.
pub fn bench_pipeline(
    files: Vec<PathBuf>,
    threads: usize,
    size: u32,
    epochs: u64,
) -> Result<PipelineBench, AugmentError> {
    let images = files.len();
    let data_error = |e: DataError| AugmentError::Data(e.to_string());
    let loader = Loader::new(
        files,
        LoaderConfig {
            threads,
            ..LoaderConfig::default()
        },
    )
    .map_err(data_error)?;
    let pipeline = Pipeline::new(
        Preprocess {
            mode: ResizeMode::Stretch,
            filter: Filter::Bilinear,
            ..Preprocess::imagenet(size)
        },
        AugmentConfig::mura_paper(),
        0,
    )?;
    let rate = |n: usize, t: Instant| n as f64 / t.elapsed().as_secs_f64().max(1e-9);
    let (mut decode, mut full) = (0.0f64, 0.0f64);
    for epoch in 0..epochs.max(1) {
        let t = Instant::now();
        let mut n = 0;
        for s in loader.epoch(epoch) {
            s.map_err(data_error)?;
            n += 1;
        }
        decode = decode.max(rate(n, t));
        let t = Instant::now();
        let samples = loader.epoch_with(epoch, move |i, img| {
            pipeline
                .process(&img, epoch, i as u64)
                .map_err(|e| DataError::InvalidConfig {
                    what: "augmentation",
                    reason: e.to_string(),
                })
        });
        let mut n = 0;
        for s in samples {
            s.map_err(data_error)?;
            n += 1;
        }
        full = full.max(rate(n, t));
    }
    Ok(PipelineBench {
        implementation: "mura",
        threads,
        images,
        size,
        images_per_sec: full,
        decode_images_per_sec: decode,
        ratio_to_decode: full / decode,
    })
}

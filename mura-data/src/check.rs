//! Decoding every image of a data set once, to find the files that cannot be read (truncated,
//! corrupt, or not images) before a long run meets them.

use std::path::PathBuf;
use std::time::Instant;

use crate::{DataError, Dataset, Loader, LoaderConfig};

/// What decoding every image found.
#[derive(Debug)]
pub struct ImageCheck {
    /// Images that decoded.
    pub decoded: usize,
    /// Images looked at.
    pub total: usize,
    /// Each image that did not decode, with why.
    pub unreadable: Vec<DataError>,
    /// Wall-clock seconds the pass took.
    pub seconds: f64,
}

impl ImageCheck {
    /// Decoded images per second.
    pub fn images_per_sec(&self) -> f64 {
        self.decoded as f64 / self.seconds.max(1e-9)
    }
}

/// Decodes every image of `dataset` on `threads` threads, in file order.
pub fn check_images(dataset: &Dataset, threads: usize) -> Result<ImageCheck, DataError> {
    let files: Vec<PathBuf> = dataset
        .images()
        .iter()
        .map(|r| r.file(dataset.base()))
        .collect();
    let loader = Loader::new(
        files,
        LoaderConfig {
            threads,
            shuffle: false,
            skip_unreadable: true,
            ..LoaderConfig::default()
        },
    )?;
    let t = Instant::now();
    let mut epoch = loader.epoch(0);
    let mut decoded = 0usize;
    for sample in epoch.by_ref() {
        sample?;
        decoded += 1;
    }
    Ok(ImageCheck {
        decoded,
        total: epoch.len(),
        unreadable: epoch.take_skipped(),
        seconds: t.elapsed().as_secs_f64(),
    })
}

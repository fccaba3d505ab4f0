#![doc = include_str!("../README.md")]

mod check;
mod dataset;
pub mod dicom;
mod error;
mod index;
pub mod loader;
mod manifest;
mod record;
pub mod rng;
mod split;
mod stats;
pub mod synth;
mod weights;

pub use check::{ImageCheck, check_images};
pub use dataset::{Dataset, Study};
pub use dicom::Voi;
pub use error::DataError;
pub use index::{
    DATASET_DIR, IndexOptions, IndexSource, Indexed, MAX_LINE_BYTES, SkipReason, Skipped, index,
    locate,
};
pub use loader::{
    ColorMode, DecodedImage, Loader, LoaderConfig, MAX_IMAGE_SIDE, Sample, decode_bytes,
    decode_file, decode_file_with,
};
pub use manifest::{MANIFEST_HEADER, Manifest, ManifestEntry, ManifestSummary};
pub use record::{BodyPart, ImageRecord, PatientKey, Split, UnknownBodyPart};
pub use split::{Role, SplitConfig, k_fold, train_val_test};
pub use stats::{ImageSizes, PartCounts, SplitStats, Stats, image_sizes, stats};
pub use weights::{ClassWeights, balanced as balanced_weights, paper as paper_weights};

use std::io::Write;
use std::path::Path;

/// A testing aid for crash tests: with this variable set to N, [`write_atomic`] writes the first
/// half of each file, flushes it, and waits N milliseconds before the rest, so that a test can
/// kill the process in the middle of a write. Unset in normal use.
pub const WRITE_PAUSE_ENV: &str = "MURA_DEBUG_WRITE_PAUSE_MS";

fn write_pause() -> Option<std::time::Duration> {
    let ms: u64 = std::env::var(WRITE_PAUSE_ENV).ok()?.trim().parse().ok()?;
    (ms > 0).then(|| std::time::Duration::from_millis(ms))
}

/// Writes `bytes` to `path` through a temporary file in the same folder, flushed and renamed, so a
/// crash leaves either the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let err = |source: std::io::Error| DataError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(temporary_name(&name));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        match write_pause() {
            Some(pause) => {
                let (head, tail) = bytes.split_at(bytes.len() / 2);
                f.write_all(head)?;
                f.sync_data()?;
                std::thread::sleep(pause);
                f.write_all(tail)?;
            }
            None => f.write_all(bytes)?,
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Persist the rename too; not every platform lets a folder be synced.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

/// The temporary name [`write_atomic`] writes `name` under, in this process.
fn temporary_name(name: &str) -> String {
    format!(".{name}.tmp{}", std::process::id())
}

/// Is `name` a temporary file of [`write_atomic`] (`.<name>.tmp<pid>`)?
fn is_temporary_name(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".tmp")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes the temporary files that a killed [`write_atomic`] left half-written in `dir`. Only
/// for a folder no other process is writing (a run directory under its lock); errors are ignored.
pub fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if is_temporary_name(&e.file_name().to_string_lossy()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What a failed [`write_atomic`] means for the user's files, for the errors that are about space:
/// the previous file was never touched.
pub fn write_hint(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::StorageFull => "; the disk is full, and the previous file is kept",
        ErrorKind::QuotaExceeded => "; the disk quota is used up, and the previous file is kept",
        ErrorKind::FileTooLarge => {
            "; the file size limit (ulimit -f) was reached, and the previous file is kept"
        }
        _ => "",
    }
}

/// Writes an 8-bit gray image as PNG, atomically (see [`write_atomic`]).
pub fn write_gray_png(
    path: &Path,
    width: u32,
    height: u32,
    pixels: &[u8],
) -> Result<(), DataError> {
    use image::ImageEncoder;
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(pixels, width, height, image::ExtendedColorType::L8)
        .map_err(|e| DataError::Encode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_are_recognised_by_the_name_write_atomic_gives_them() {
        assert!(is_temporary_name(&temporary_name("last.safetensors")));
        assert!(is_temporary_name(".history.csv.tmp12"));
        for keep in ["last.safetensors", ".lock", ".x.tmp", ".x.tmpab", "x.tmp12"] {
            assert!(!is_temporary_name(keep), "{keep}");
        }
    }
}

//! The MURA CSV index and the split manifest: any bytes give an index or a clear error.
//! The input is the train image CSV, then (after the first 0xFF byte) the train labels CSV.

use std::path::Path;

use mura_data::{IndexOptions, Manifest, index};

/// Runs one input in `scratch`, a folder the harness may fill.
pub fn run(bytes: &[u8], scratch: &Path) {
    let data = scratch.join("MURA-v1.1");
    std::fs::create_dir_all(&data).expect("a scratch folder");
    for f in ["valid_image_paths.csv", "valid_labeled_studies.csv"] {
        std::fs::write(data.join(f), b"").expect("a scratch file");
    }
    let (images, labels) = match bytes.iter().position(|&b| b == 0xFF) {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &[][..]),
    };
    std::fs::write(data.join("train_image_paths.csv"), images).expect("write");
    std::fs::write(data.join("train_labeled_studies.csv"), labels).expect("write");
    let options = IndexOptions {
        strict: false,
        check_files: false,
    };
    let _ = index(scratch, &options);
    let manifest = scratch.join("split.csv");
    std::fs::write(&manifest, bytes).expect("write");
    let _ = Manifest::load(&manifest);
}

//! Replays the fuzz targets' seed corpora and their regression inputs, each a crash fuzzing
//! found (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`), through the same harnesses, so
//! none of those crashes comes back. The harnesses live in `fuzz/harness/`; `bash tools/fuzz.sh`
//! fuzzes them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};

#[path = "../../fuzz/harness/decode_augment.rs"]
mod decode_augment;
#[path = "../../fuzz/harness/index_csv.rs"]
mod index_csv;
#[path = "../../fuzz/harness/run_config.rs"]
mod run_config;
#[path = "../../fuzz/harness/safetensors.rs"]
mod safetensors;

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for kind in ["seeds", "regressions"] {
        if let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(target)) {
            out.extend(dir.map(|e| e.unwrap().path()));
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no inputs for {target}");
    out
}

fn replay(target: &str, run: fn(&[u8], &Path)) -> usize {
    let files = inputs(target);
    for file in &files {
        let scratch = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(file).unwrap();
        // A panic here names the input through the test's output.
        eprintln!("{target}: {}", file.display());
        run(&bytes, scratch.path());
    }
    files.len()
}

#[test]
fn index_csv_inputs() {
    replay("index_csv", index_csv::run);
}

#[test]
fn run_config_inputs() {
    replay("run_config", run_config::run);
}

#[test]
fn safetensors_inputs() {
    replay("safetensors", safetensors::run);
}

/// Includes the two regressions: `zoom-1e-24-overflow`, a zoom range of (1.9e-24, 5.7e-16),
/// which the config check must refuse (the zoom range is bounded to [1/16, 16]) and which must
/// not overflow the warp's fixed-point coordinates (an add overflow panic in debug builds; the
/// warp cannot overflow whatever its map); and `crop-1e-24-empty-crop`, a centre-crop fraction
/// of 1.65e-24, which must not ask fast_image_resize for an empty crop (an index panic inside
/// it; the crop is at least one source pixel).
#[test]
fn decode_augment_inputs() {
    let n = replay("decode_augment", decode_augment::run);
    assert!(n >= 4, "the seeds and both regressions");
}

//! Integration tests of mura-data: indexing real-layout trees (good and bad), statistics against
//! the official counts, splits, manifests, the loader and the synthetic generator.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dicom;
mod indexing;
mod loader;
mod split;
mod synth;

pub use std::collections::{BTreeMap, BTreeSet};
pub use std::fs;
pub use std::path::{Path, PathBuf};

pub use mura_data::synth::{OFFICIAL_COUNTS, SynthConfig, generate, write_official_csvs};
pub use mura_data::{
    BodyPart, ColorMode, DataError, IndexOptions, IndexSource, Loader, LoaderConfig, Manifest,
    Role, SkipReason, Split, SplitConfig, balanced_weights, decode_file, index, k_fold,
    paper_weights, stats, train_val_test,
};

pub const CSV_ONLY: IndexOptions = IndexOptions {
    strict: false,
    check_files: false,
};

/// A tiny hand-made MURA tree: 3 patients, 4 studies, 6 images of 12×9 pixels, with CSVs.
pub fn tree(dir: &Path) -> PathBuf {
    let studies = [
        ("train", "XR_WRIST", 1, 1, true, 2),
        ("train", "XR_WRIST", 1, 2, false, 1),
        ("train", "XR_HAND", 2, 1, false, 2),
        ("valid", "XR_ELBOW", 3, 1, true, 1),
    ];
    let mut csv: BTreeMap<&str, (String, String)> = BTreeMap::new();
    for (split, part, patient, study, abnormal, views) in studies {
        let folder = format!(
            "MURA-v1.1/{split}/{part}/patient{patient:05}/study{study}_{}",
            if abnormal { "positive" } else { "negative" }
        );
        fs::create_dir_all(dir.join(&folder)).unwrap();
        let entry = csv.entry(split).or_default();
        entry
            .1
            .push_str(&format!("{folder}/,{}\n", u8::from(abnormal)));
        for v in 1..=views {
            let img = image::GrayImage::from_fn(12, 9, |x, y| image::Luma([(x * 20 + y) as u8]));
            img.save(dir.join(format!("{folder}/image{v}.png")))
                .unwrap();
            entry.0.push_str(&format!("{folder}/image{v}.png\n"));
        }
    }
    for (split, (images, labels)) in csv {
        fs::write(
            dir.join(format!("MURA-v1.1/{split}_image_paths.csv")),
            images,
        )
        .unwrap();
        fs::write(
            dir.join(format!("MURA-v1.1/{split}_labeled_studies.csv")),
            labels,
        )
        .unwrap();
    }
    dir.to_path_buf()
}

pub fn csv_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("MURA-v1.1").join(name)
}

/// Replaces line `line` (1-based) of a CSV.
pub fn set_line(path: &Path, line: usize, text: &str) {
    let content = fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = content.lines().map(String::from).collect();
    lines[line - 1] = text.to_string();
    fs::write(path, lines.join("\n") + "\n").unwrap();
}

pub fn append_line(path: &Path, text: &str) {
    let mut content = fs::read_to_string(path).unwrap();
    content.push_str(text);
    content.push('\n');
    fs::write(path, content).unwrap();
}

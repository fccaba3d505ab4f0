//! A synthetic MURA: a complete MURA-v1.1-format tree (four CSVs and PNG radiographs) with learnable,
//! not trivial, abnormalities. The built-in data set of `mura demo` and of the tests.
//!
//! What it draws, per image: soft tissue and bones as attenuating capsules arranged per body part
//! (one long bone for the humerus, two for the forearm, rays of phalanges for the hand, ...), a random
//! pose, exposure and noise, a laterality marker ("L" or "R") on every image of both classes, and in
//! about a third of all studies (both classes) growth plates: thin dark lines near bone ends that look
//! like fractures. Abnormal studies carry one finding, visible in each view with probability 0.85
//! (and in at least one): a displaced, angulated shaft fracture, metal hardware (a plate with
//! screws, pure white), or a lytic or sclerotic lesion, at a random strength. Body parts have MURA's
//! abnormal rates. Everything follows from the seed: the same seed gives the same bytes.
//!
//! Calibration (`tools/synth_learnability.py`, PyTorch, a 5-layer CNN with global max pooling at
//! 96 px on 2,000 studies): study AUC 0.67 after 5 epochs, 0.77 after 10, 0.90–0.96 after 20–30:
//! learnable, not trivial.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

mod plan;
mod render;

use crate::rng::{stream_rng, unit};
use plan::{FileFormat, plan};
use render::render;

use crate::{BodyPart, DATASET_DIR, DataError, Split};
pub use plan::abnormal_rate;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthConfig {
    /// Number of studies, train and valid together.
    pub studies: usize,
    pub seed: u64,
    /// Longer side of every image, in pixels (MURA's is 512). The shorter side is 55–100% of it.
    pub max_side: u32,
    /// Share of patients placed in the official `valid` split.
    pub valid_fraction: f64,
    /// Share of images written as RGB, and again as 16-bit gray, instead of 8-bit gray.
    pub odd_format_fraction: f64,
    pub difficulty: Difficulty,
}

/// How hard the abnormalities are to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Difficulty {
    /// Findings at strength 0.4–1.0, shown in 85% of views; growth plates (fracture look-alikes)
    /// in a third of patients. The calibrated setting (see the module docs).
    #[default]
    Standard,
    /// Findings twice the size, at strength 0.85–1.0, shown in every view; no growth plates. The same studies,
    /// patients and labels as `Standard` for the same seed. Small CPU budgets (`mura demo`) learn it
    /// in a few epochs.
    Easy,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            studies: 2000,
            seed: 0,
            max_side: 512,
            valid_fraction: 0.12,
            odd_format_fraction: 0.02,
            difficulty: Difficulty::Standard,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthSummary {
    /// The folder holding `MURA-v1.1/`.
    pub base: PathBuf,
    pub patients: usize,
    pub studies: usize,
    pub abnormal_studies: usize,
    pub images: usize,
    pub rgb_images: usize,
    pub sixteen_bit_images: usize,
}

fn write_png(
    path: &Path,
    w: usize,
    h: usize,
    values: &[f32],
    format: FileFormat,
) -> Result<(), DataError> {
    use image::ImageEncoder;
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let file = std::fs::File::create(path).map_err(|e| DataError::Write {
        path: path.to_path_buf(),
        source: e,
    })?;
    let writer = std::io::BufWriter::new(file);
    let encoder =
        PngEncoder::new_with_quality(writer, CompressionType::Default, FilterType::Adaptive);
    let (bytes, color): (Vec<u8>, image::ExtendedColorType) = match format {
        FileFormat::Gray8 => (
            values.iter().map(|v| (v * 255.0).round() as u8).collect(),
            image::ExtendedColorType::L8,
        ),
        FileFormat::Rgb8 => (
            values
                .iter()
                .flat_map(|v| {
                    let g = (v * 255.0).round() as u8;
                    [g, g, g]
                })
                .collect(),
            image::ExtendedColorType::Rgb8,
        ),
        FileFormat::Gray16 => (
            values
                .iter()
                .flat_map(|v| ((v * 65535.0).round() as u16).to_ne_bytes())
                .collect(),
            image::ExtendedColorType::L16,
        ),
    };
    encoder
        .write_image(&bytes, w as u32, h as u32, color)
        .map_err(|e| DataError::Encode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

fn check(config: &SynthConfig) -> Result<(), DataError> {
    if config.studies == 0 {
        return Err(DataError::InvalidConfig {
            what: "synthetic studies",
            reason: "0 studies: at least 1 is needed".into(),
        });
    }
    if !(16..=4096).contains(&config.max_side) {
        return Err(DataError::InvalidConfig {
            what: "synthetic image size",
            reason: format!("longer side {} is outside 16..=4096", config.max_side),
        });
    }
    for (what, f) in [
        ("synthetic valid fraction", config.valid_fraction),
        ("synthetic odd-format fraction", config.odd_format_fraction),
    ] {
        if !(0.0..=1.0).contains(&f) {
            return Err(DataError::InvalidConfig {
                what,
                reason: format!("{f} is outside [0, 1]"),
            });
        }
    }
    Ok(())
}

/// Writes a synthetic MURA-v1.1 tree under `out` (which gets a `MURA-v1.1/` folder).
///
/// Refuses to write over an existing `MURA-v1.1/`. Images are rendered and encoded in parallel; the
/// result depends only on the config.
pub fn generate(out: &Path, config: &SynthConfig) -> Result<SynthSummary, DataError> {
    check(config)?;
    let root = out.join(DATASET_DIR);
    if root.exists() {
        return Err(DataError::InvalidConfig {
            what: "synthetic output",
            reason: format!("{} already exists; choose an empty folder", root.display()),
        });
    }
    let studies = plan(config);
    let mut jobs: Vec<(usize, u32, u64, FileFormat)> = Vec::new();
    let mut format_rng = stream_rng(config.seed, &[0x0046_4d54]); // "FMT"
    for (s, study) in studies.iter().enumerate() {
        for view in 1..=study.views {
            let x = unit(&mut format_rng);
            let f = config.odd_format_fraction;
            let format = if x < f {
                FileFormat::Rgb8
            } else if x < 2.0 * f {
                FileFormat::Gray16
            } else {
                FileFormat::Gray8
            };
            jobs.push((s, view, jobs.len() as u64, format));
        }
    }
    for study in &studies {
        let dir = out.join(study.folder());
        std::fs::create_dir_all(&dir).map_err(|e| DataError::Write {
            path: dir,
            source: e,
        })?;
    }
    jobs.par_iter().try_for_each(|&(s, view, id, format)| {
        let study = &studies[s];
        let (w, h, pixels) = render(study, view, config.seed, config.max_side, id);
        let path = out.join(format!("{}/image{view}.png", study.folder()));
        write_png(&path, w, h, &pixels, format)
    })?;

    for split in [Split::Train, Split::Valid] {
        let mut images = String::new();
        let mut labels = String::new();
        for (s, study) in studies
            .iter()
            .enumerate()
            .filter(|(_, st)| st.split == split)
        {
            let _ = s;
            labels.push_str(&format!(
                "{}/,{}\n",
                study.folder(),
                u8::from(study.abnormal)
            ));
            for view in 1..=study.views {
                images.push_str(&format!("{}/image{view}.png\n", study.folder()));
            }
        }
        crate::write_atomic(
            &root.join(format!("{split}_image_paths.csv")),
            images.as_bytes(),
        )?;
        crate::write_atomic(
            &root.join(format!("{split}_labeled_studies.csv")),
            labels.as_bytes(),
        )?;
    }
    let patients = studies.last().map_or(0, |s| s.patient as usize);
    Ok(SynthSummary {
        base: out.to_path_buf(),
        patients,
        studies: studies.len(),
        abnormal_studies: studies.iter().filter(|s| s.abnormal).count(),
        images: jobs.len(),
        rgb_images: jobs.iter().filter(|j| j.3 == FileFormat::Rgb8).count(),
        sixteen_bit_images: jobs.iter().filter(|j| j.3 == FileFormat::Gray16).count(),
    })
}

/// Official MURA-v1.1 counts: (part, split, normal studies, abnormal studies, normal images,
/// abnormal images), from the MURA paper and the data set's CSVs.
pub const OFFICIAL_COUNTS: [(BodyPart, Split, usize, usize, usize, usize); 14] = [
    (BodyPart::Elbow, Split::Train, 1094, 660, 2925, 2006),
    (BodyPart::Finger, Split::Train, 1280, 655, 3138, 1968),
    (BodyPart::Forearm, Split::Train, 590, 287, 1164, 661),
    (BodyPart::Hand, Split::Train, 1497, 521, 4059, 1484),
    (BodyPart::Humerus, Split::Train, 321, 271, 673, 599),
    (BodyPart::Shoulder, Split::Train, 1364, 1457, 4211, 4168),
    (BodyPart::Wrist, Split::Train, 2134, 1326, 5765, 3987),
    (BodyPart::Elbow, Split::Valid, 92, 66, 235, 230),
    (BodyPart::Finger, Split::Valid, 92, 83, 214, 247),
    (BodyPart::Forearm, Split::Valid, 69, 64, 150, 151),
    (BodyPart::Hand, Split::Valid, 101, 66, 271, 189),
    (BodyPart::Humerus, Split::Valid, 68, 67, 148, 140),
    (BodyPart::Shoulder, Split::Valid, 99, 95, 285, 278),
    (BodyPart::Wrist, Split::Valid, 140, 97, 364, 295),
];

/// Writes only the four CSVs of a MURA-v1.1 copy whose study and image counts per body part, label
/// and split equal the official ones ([`OFFICIAL_COUNTS`]): 40,005 image entries, no image files.
///
/// Views are spread as evenly as the counts allow; patients have one or two studies. Useful to check
/// statistics and splits at full scale without the data set (index it with `check_files: false`).
pub fn write_official_csvs(out: &Path) -> Result<(), DataError> {
    let root = out.join(DATASET_DIR);
    std::fs::create_dir_all(&root).map_err(|e| DataError::Write {
        path: root.clone(),
        source: e,
    })?;
    let mut patient = 0u32;
    for split in [Split::Train, Split::Valid] {
        let mut images = String::new();
        let mut labels = String::new();
        for &(part, _, normal_studies, abnormal_studies, normal_images, abnormal_images) in
            OFFICIAL_COUNTS.iter().filter(|c| c.1 == split)
        {
            for (abnormal, studies, views) in [
                (false, normal_studies, normal_images),
                (true, abnormal_studies, abnormal_images),
            ] {
                let (base, extra) = (views / studies, views % studies);
                for s in 0..studies {
                    // Two studies per patient, numbered 1 and 2.
                    if s % 2 == 0 {
                        patient += 1;
                    }
                    let folder = format!(
                        "{DATASET_DIR}/{split}/{}/patient{patient:05}/study{}_{}",
                        part.folder(),
                        s % 2 + 1,
                        if abnormal { "positive" } else { "negative" }
                    );
                    labels.push_str(&format!("{folder}/,{}\n", u8::from(abnormal)));
                    for v in 1..=base + usize::from(s < extra) {
                        images.push_str(&format!("{folder}/image{v}.png\n"));
                    }
                }
            }
        }
        crate::write_atomic(
            &root.join(format!("{split}_image_paths.csv")),
            images.as_bytes(),
        )?;
        crate::write_atomic(
            &root.join(format!("{split}_labeled_studies.csv")),
            labels.as_bytes(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configs_are_refused() {
        let ok = SynthConfig::default();
        for bad in [
            SynthConfig { studies: 0, ..ok },
            SynthConfig { max_side: 8, ..ok },
            SynthConfig {
                max_side: 100_000,
                ..ok
            },
            SynthConfig {
                valid_fraction: f64::NAN,
                ..ok
            },
            SynthConfig {
                odd_format_fraction: 2.0,
                ..ok
            },
        ] {
            assert!(
                matches!(check(&bad), Err(DataError::InvalidConfig { .. })),
                "{bad:?}"
            );
        }
    }
}

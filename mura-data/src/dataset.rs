//! An indexed data set: the images, where they live, and views of them by split, body part and study.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{BodyPart, ImageRecord, Split};

/// The images of a MURA copy (or a subset of it), with the folder their paths are relative to.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    base: PathBuf,
    images: Vec<ImageRecord>,
}

/// One study: its images share split, body part, patient, study number and label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Study {
    /// The study folder, as `*_labeled_studies.csv` writes it (trailing `/`).
    pub key: String,
    pub split: Split,
    pub body_part: BodyPart,
    pub patient: u32,
    pub study: u32,
    pub label: bool,
    /// Indices into [`Dataset::images`].
    pub images: Vec<usize>,
}

impl Dataset {
    pub fn new(base: PathBuf, images: Vec<ImageRecord>) -> Self {
        Self { base, images }
    }

    /// The folder that contains `MURA-v1.1/`; image paths are relative to it.
    pub fn base(&self) -> &Path {
        &self.base
    }

    pub fn images(&self) -> &[ImageRecord] {
        &self.images
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// A new data set holding the images for which `keep` is true.
    pub fn filter(&self, keep: impl Fn(&ImageRecord) -> bool) -> Dataset {
        Dataset {
            base: self.base.clone(),
            images: self.images.iter().filter(|r| keep(r)).cloned().collect(),
        }
    }

    /// The images of one official split.
    pub fn split(&self, split: Split) -> Dataset {
        self.filter(|r| r.split == split)
    }

    /// The images of the given body parts (all of them when `parts` is empty).
    pub fn body_parts(&self, parts: &[BodyPart]) -> Dataset {
        self.filter(|r| parts.is_empty() || parts.contains(&r.body_part))
    }

    /// The studies, in the order of their first image.
    pub fn studies(&self) -> Vec<Study> {
        let mut slot: BTreeMap<&str, usize> = BTreeMap::new();
        let mut out: Vec<Study> = Vec::new();
        for (i, r) in self.images.iter().enumerate() {
            let k = *slot.entry(r.study_key()).or_insert_with(|| {
                out.push(Study {
                    key: r.study_key().to_string(),
                    split: r.split,
                    body_part: r.body_part,
                    patient: r.patient,
                    study: r.study,
                    label: r.label,
                    images: Vec::new(),
                });
                out.len() - 1
            });
            out[k].images.push(i);
        }
        out
    }
}

//! Statistics of an indexed copy: the seed reports' inspection table (images per body part × label),
//! studies per body part, views per study, and image sizes read from file headers.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;

use crate::{BodyPart, Dataset, Split};

/// Counts for one body part of one split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PartCounts {
    pub normal_images: usize,
    pub abnormal_images: usize,
    pub normal_studies: usize,
    pub abnormal_studies: usize,
    pub patients: usize,
}

impl PartCounts {
    pub fn images(&self) -> usize {
        self.normal_images + self.abnormal_images
    }

    pub fn studies(&self) -> usize {
        self.normal_studies + self.abnormal_studies
    }
}

/// Statistics of one official split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitStats {
    pub split: Split,
    pub parts: BTreeMap<BodyPart, PartCounts>,
    /// Number of studies having `k` views, keyed by `k`.
    pub views_per_study: BTreeMap<usize, usize>,
}

impl SplitStats {
    pub fn total(&self) -> PartCounts {
        let mut t = PartCounts::default();
        for c in self.parts.values() {
            t.normal_images += c.normal_images;
            t.abnormal_images += c.abnormal_images;
            t.normal_studies += c.normal_studies;
            t.abnormal_studies += c.abnormal_studies;
            t.patients += c.patients;
        }
        t
    }
}

/// Statistics of a data set, split by split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub splits: Vec<SplitStats>,
    /// Present when sizes were read (see [`image_sizes`]).
    pub sizes: Option<ImageSizes>,
}

/// Counts images, studies, patients and views per study. Reads no file.
pub fn stats(dataset: &Dataset) -> Stats {
    let studies = dataset.studies();
    let mut splits = Vec::new();
    for split in [Split::Train, Split::Valid] {
        let mut parts: BTreeMap<BodyPart, PartCounts> = BTreeMap::new();
        let mut patients: BTreeMap<BodyPart, std::collections::BTreeSet<u32>> = BTreeMap::new();
        let mut views_per_study: BTreeMap<usize, usize> = BTreeMap::new();
        for s in studies.iter().filter(|s| s.split == split) {
            let c = parts.entry(s.body_part).or_default();
            let n = s.images.len();
            if s.label {
                c.abnormal_studies += 1;
                c.abnormal_images += n;
            } else {
                c.normal_studies += 1;
                c.normal_images += n;
            }
            patients.entry(s.body_part).or_default().insert(s.patient);
            *views_per_study.entry(n).or_default() += 1;
        }
        for (part, set) in patients {
            if let Some(c) = parts.get_mut(&part) {
                c.patients = set.len();
            }
        }
        if !parts.is_empty() {
            splits.push(SplitStats {
                split,
                parts,
                views_per_study,
            });
        }
    }
    Stats {
        splits,
        sizes: None,
    }
}

/// Image dimensions over a data set, read from each file's header without decoding pixels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageSizes {
    pub images: usize,
    pub min_width: u32,
    pub max_width: u32,
    pub min_height: u32,
    pub max_height: u32,
    pub mean_width: f64,
    pub mean_height: f64,
    /// Files whose header could not be read, with the reason.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// Reads every image's width and height from its header (PNG `IHDR`, JPEG `SOF`), in parallel.
pub fn image_sizes(dataset: &Dataset) -> ImageSizes {
    type Dims = Result<(u32, u32), String>;
    let results: Vec<(PathBuf, Dims)> = dataset
        .images()
        .par_iter()
        .map(|r| {
            let path = r.file(dataset.base());
            let dims = image::ImageReader::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|reader| reader.with_guessed_format().map_err(|e| e.to_string()))
                .and_then(|reader| reader.into_dimensions().map_err(|e| e.to_string()));
            (path, dims)
        })
        .collect();
    let mut s = ImageSizes {
        images: 0,
        min_width: u32::MAX,
        max_width: 0,
        min_height: u32::MAX,
        max_height: 0,
        mean_width: 0.0,
        mean_height: 0.0,
        unreadable: Vec::new(),
    };
    let (mut sum_w, mut sum_h) = (0.0, 0.0);
    for (path, dims) in results {
        match dims {
            Ok((w, h)) => {
                s.images += 1;
                s.min_width = s.min_width.min(w);
                s.max_width = s.max_width.max(w);
                s.min_height = s.min_height.min(h);
                s.max_height = s.max_height.max(h);
                sum_w += f64::from(w);
                sum_h += f64::from(h);
            }
            Err(e) => s.unreadable.push((path, e)),
        }
    }
    if s.images > 0 {
        s.mean_width = sum_w / s.images as f64;
        s.mean_height = sum_h / s.images as f64;
    } else {
        s.min_width = 0;
        s.min_height = 0;
    }
    s
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

impl fmt::Display for Stats {
    /// The seed reports' inspection table per split, then studies and views per study.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.splits {
            let t = s.total();
            writeln!(
                f,
                "{}: {} images ({} normal {:.2}%, {} abnormal {:.2}%), {} studies, {} patients",
                s.split,
                t.images(),
                t.normal_images,
                percent(t.normal_images, t.images()),
                t.abnormal_images,
                percent(t.abnormal_images, t.images()),
                t.studies(),
                t.patients,
            )?;
            writeln!(
                f,
                "  {:<12} {:>5} {:>7} {:>8}",
                "body part", "label", "images", "percent"
            )?;
            for (part, c) in &s.parts {
                for (label, n) in [(0, c.normal_images), (1, c.abnormal_images)] {
                    writeln!(
                        f,
                        "  {:<12} {:>5} {:>7} {:>8.2}",
                        part.folder(),
                        label,
                        n,
                        percent(n, c.images())
                    )?;
                }
            }
            writeln!(
                f,
                "  {:<12} {:>8} {:>9} {:>7} {:>9}",
                "body part", "studies", "abnormal", "normal", "patients"
            )?;
            for (part, c) in &s.parts {
                writeln!(
                    f,
                    "  {:<12} {:>8} {:>9} {:>7} {:>9}",
                    part.folder(),
                    c.studies(),
                    c.abnormal_studies,
                    c.normal_studies,
                    c.patients
                )?;
            }
            let views: Vec<String> = s
                .views_per_study
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            writeln!(
                f,
                "  views per study (views: studies): {}",
                views.join(", ")
            )?;
        }
        if let Some(z) = &self.sizes {
            writeln!(
                f,
                "image sizes over {} images: width {}–{} (mean {:.1}), height {}–{} (mean {:.1}); {} unreadable",
                z.images,
                z.min_width,
                z.max_width,
                z.mean_width,
                z.min_height,
                z.max_height,
                z.mean_height,
                z.unreadable.len()
            )?;
        }
        Ok(())
    }
}

//! Indexing a MURA-v1.1 tree: from its four header-less CSVs, or by walking its folders when the
//! CSVs are absent.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

mod csv;
mod path;

use crate::{DataError, Dataset, ImageRecord, Split};
use csv::SplitCsvs;
use path::{PathProblem, junk_reason, parse_study_parts, parse_view, record};

pub use csv::MAX_LINE_BYTES;
pub(crate) use csv::{LineLimited, csv_problem};

/// The name of the data set folder in every official copy.
pub const DATASET_DIR: &str = "MURA-v1.1";

/// How to index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexOptions {
    /// Turn every skip (a `._` side file, a `.DS_Store`, a stray file) into an error.
    pub strict: bool,
    /// Check that every image the CSVs list exists. Off for CSV-only copies (statistics, splits).
    pub check_files: bool,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            strict: false,
            check_files: true,
        }
    }
}

/// Where the index came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexSource {
    Csv,
    Walk,
}

/// Why an entry was left out of the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// A macOS `._name` AppleDouble side file.
    SideFile,
    /// A macOS `.DS_Store` folder file.
    DsStore,
    /// A file or folder that is not part of the MURA layout (a README in `train/`, a `.txt` beside the
    /// images).
    Unexpected,
    /// A labelled-studies row that repeats an earlier one (same study, same label).
    DuplicateStudy,
    /// A labelled study none of whose images the image list names.
    StudyWithoutImages,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::SideFile => "macOS ._ side file",
            SkipReason::DsStore => ".DS_Store",
            SkipReason::Unexpected => "not part of the MURA layout",
            SkipReason::DuplicateStudy => "labelled study listed twice",
            SkipReason::StudyWithoutImages => "labelled study with no image in the image list",
        })
    }
}

/// One entry left out of the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The file (walk) or `csv:line` (CSV) that was skipped.
    pub path: PathBuf,
    pub reason: SkipReason,
}

/// What indexing read, beside what it skipped, so the caller decides what to make of the skips.
#[derive(Debug, Clone)]
pub struct Indexed {
    pub dataset: Dataset,
    pub skipped: Vec<Skipped>,
    pub source: IndexSource,
}

impl Indexed {
    /// Skip counts per reason, in a stable order.
    pub fn skip_counts(&self) -> Vec<(SkipReason, usize)> {
        let mut counts: std::collections::BTreeMap<SkipReason, usize> = Default::default();
        for s in &self.skipped {
            *counts.entry(s.reason).or_default() += 1;
        }
        counts.into_iter().collect()
    }
}

/// The four CSVs of a copy, relative to the data set folder.
const CSVS: [(Split, &str, &str); 2] = [
    (
        Split::Train,
        "train_image_paths.csv",
        "train_labeled_studies.csv",
    ),
    (
        Split::Valid,
        "valid_image_paths.csv",
        "valid_labeled_studies.csv",
    ),
];

/// Finds the base folder (the one that contains the data set folder) and the data set folder's name.
///
/// `root` may be either the folder holding `MURA-v1.1/`, or `MURA-v1.1/` itself (under any name, as
/// long as it holds the CSVs or a `train/` or `valid/` folder).
pub fn locate(root: &Path) -> Result<(PathBuf, String), DataError> {
    if !root.is_dir() {
        return Err(DataError::RootNotFound {
            path: root.to_path_buf(),
        });
    }
    if root.join(DATASET_DIR).is_dir() {
        return Ok((root.to_path_buf(), DATASET_DIR.to_string()));
    }
    let looks_like_dataset = ["train", "valid"].iter().any(|d| root.join(d).is_dir())
        || CSVS
            .iter()
            .any(|(_, images, labels)| root.join(images).is_file() || root.join(labels).is_file());
    let absolute = fs::canonicalize(root).map_err(|e| DataError::io(root, e))?;
    match (looks_like_dataset, absolute.parent(), absolute.file_name()) {
        (true, Some(parent), Some(name)) => {
            Ok((parent.to_path_buf(), name.to_string_lossy().into_owned()))
        }
        _ => Err(DataError::RootNotFound {
            path: root.to_path_buf(),
        }),
    }
}

/// Indexes the MURA copy at `root` (see [`locate`]).
///
/// Reads the four CSVs when they are there (all four, or an error names the missing one), otherwise
/// walks `train/` and `valid/`. Images come out in a canonical order (split, body part, patient, study,
/// view), so both ways give the same [`Dataset`] for the same tree.
pub fn index(root: &Path, options: &IndexOptions) -> Result<Indexed, DataError> {
    let (base, dir) = locate(root)?;
    let data_dir = base.join(&dir);
    let inside = Inside::new(&data_dir)?;
    let present: Vec<PathBuf> = CSVS
        .iter()
        .flat_map(|(_, i, l)| [data_dir.join(i), data_dir.join(l)])
        .collect();
    let (mut images, skipped, source) = if present.iter().any(|p| p.exists()) {
        if let Some(missing) = present.iter().find(|p| !p.is_file()) {
            return Err(DataError::MissingCsv {
                path: missing.clone(),
            });
        }
        let mut images = Vec::new();
        let mut skipped = Vec::new();
        for (split, image_csv, label_csv) in CSVS {
            let csvs = SplitCsvs {
                base: &base,
                dir: &dir,
                split,
                image_csv: data_dir.join(image_csv),
                label_csv: data_dir.join(label_csv),
                options,
                inside: &inside,
            };
            csvs.read(&mut images, &mut skipped)?;
        }
        (images, skipped, IndexSource::Csv)
    } else {
        let (images, skipped) = walk(&base, &dir, &inside)?;
        (images, skipped, IndexSource::Walk)
    };
    if options.strict
        && let Some(s) = skipped.first()
    {
        return Err(DataError::StrictSkip {
            path: s.path.clone(),
            reason: s.reason,
        });
    }
    images.sort_by(|a, b| {
        (a.split, a.body_part, a.patient, a.study, a.view, &a.path).cmp(&(
            b.split,
            b.body_part,
            b.patient,
            b.study,
            b.view,
            &b.path,
        ))
    });
    Ok(Indexed {
        dataset: Dataset::new(base, images),
        skipped,
        source,
    })
}

/// The data set folder, resolved, to check that links inside the tree stay inside it.
struct Inside {
    root: PathBuf,
}

impl Inside {
    fn new(data_dir: &Path) -> Result<Self, DataError> {
        Ok(Inside {
            root: fs::canonicalize(data_dir).map_err(|e| DataError::io(data_dir, e))?,
        })
    }

    /// `path` resolved (every link followed), refused when it leaves the data set folder.
    fn check(&self, path: &Path) -> Result<PathBuf, DataError> {
        let target = fs::canonicalize(path).map_err(|e| DataError::io(path, e))?;
        if target.starts_with(&self.root) {
            Ok(target)
        } else {
            Err(DataError::LinkEscapes {
                path: path.to_path_buf(),
                target,
                root: self.root.clone(),
            })
        }
    }
}

/// Sorted entries of a folder: name, path, and whether it is a folder (a link is followed, and
/// refused when it points outside the data set folder).
fn entries(path: &Path, inside: &Inside) -> Result<Vec<(String, PathBuf, bool)>, DataError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(path).map_err(|e| DataError::io(path, e))? {
        let entry = entry.map_err(|e| DataError::io(path, e))?;
        let file_type = entry
            .file_type()
            .map_err(|e| DataError::io(entry.path(), e))?;
        let is_dir = if file_type.is_symlink() {
            inside.check(&entry.path())?.is_dir()
        } else {
            file_type.is_dir()
        };
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
            is_dir,
        ));
    }
    out.sort();
    Ok(out)
}

/// Walks `<dir>/{train,valid}/XR_<PART>/patient<N>/study<K>_<label>/image<V>.<ext>`.
fn walk(
    base: &Path,
    dir: &str,
    inside: &Inside,
) -> Result<(Vec<ImageRecord>, Vec<Skipped>), DataError> {
    let mut images = Vec::new();
    let mut skipped = Vec::new();
    let data_dir = base.join(dir);
    let skip = |path: &Path, name: &str, skipped: &mut Vec<Skipped>| {
        skipped.push(Skipped {
            path: path.to_path_buf(),
            reason: junk_reason(name).unwrap_or(SkipReason::Unexpected),
        });
    };
    let layout = |path: &Path, p: PathProblem| DataError::BadLayout {
        path: path.to_path_buf(),
        reason: match p {
            PathProblem::UnknownBodyPart(part) => format!(
                "unknown body part folder {part:?} (expected XR_ELBOW, XR_FINGER, XR_FOREARM, XR_HAND, XR_HUMERUS, XR_SHOULDER or XR_WRIST)"
            ),
            PathProblem::Escapes => "escapes the data root".to_string(),
            PathProblem::Layout(reason) => reason,
        },
    };
    for (split_name, split_path, is_dir) in entries(&data_dir, inside)? {
        if !is_dir || !(split_name == "train" || split_name == "valid") {
            if is_dir || junk_reason(&split_name).is_some() {
                skip(&split_path, &split_name, &mut skipped);
            }
            // Files at the top (CSV leftovers, READMEs) are not image entries: ignore silently only
            // when they are not junk; junk is counted above.
            continue;
        }
        for (part_name, part_path, is_dir) in entries(&split_path, inside)? {
            if !is_dir {
                skip(&part_path, &part_name, &mut skipped);
                continue;
            }
            for (patient_name, patient_path, is_dir) in entries(&part_path, inside)? {
                if !is_dir {
                    skip(&patient_path, &patient_name, &mut skipped);
                    continue;
                }
                for (study_name, study_path, is_dir) in entries(&patient_path, inside)? {
                    if !is_dir {
                        skip(&study_path, &study_name, &mut skipped);
                        continue;
                    }
                    let study = parse_study_parts(
                        dir,
                        &[dir, &split_name, &part_name, &patient_name, &study_name],
                    )
                    .map_err(|p| layout(&study_path, p))?;
                    for (name, path, is_dir) in entries(&study_path, inside)? {
                        if is_dir || junk_reason(&name).is_some() {
                            skip(&path, &name, &mut skipped);
                            continue;
                        }
                        let Ok(view) = parse_view(&name) else {
                            skip(&path, &name, &mut skipped);
                            continue;
                        };
                        let rel = format!(
                            "{dir}/{split_name}/{part_name}/{patient_name}/{study_name}/{name}"
                        );
                        images.push(record(&study, view, study.label, rel));
                    }
                }
            }
        }
    }
    Ok((images, skipped))
}

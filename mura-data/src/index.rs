//! Indexing a MURA-v1.1 tree: from its four header-less CSVs, or by walking its folders when the
//! CSVs are absent.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{BodyPart, DataError, Dataset, ImageRecord, Split};

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
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::SideFile => "macOS ._ side file",
            SkipReason::DsStore => ".DS_Store",
            SkipReason::Unexpected => "not part of the MURA layout",
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
            read_split_csvs(
                &base,
                &dir,
                split,
                &data_dir.join(image_csv),
                &data_dir.join(label_csv),
                options,
                &inside,
                &mut images,
                &mut skipped,
            )?;
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

/// A path that did not fit the MURA layout, before the file and line are known.
enum PathProblem {
    Escapes,
    UnknownBodyPart(String),
    Layout(String),
}

impl PathProblem {
    fn at(self, csv: &Path, line: u64, entry: &str) -> DataError {
        let path = csv.to_path_buf();
        match self {
            PathProblem::Escapes => DataError::EscapesRoot {
                path,
                line,
                entry: entry.to_string(),
            },
            PathProblem::UnknownBodyPart(part) => DataError::UnknownBodyPart { path, line, part },
            PathProblem::Layout(reason) => DataError::Malformed { path, line, reason },
        }
    }
}

/// Is this file name a macOS side file or folder file? Returns why it should be skipped.
pub(crate) fn junk_reason(name: &str) -> Option<SkipReason> {
    if name == ".DS_Store" {
        Some(SkipReason::DsStore)
    } else if name.starts_with("._") {
        Some(SkipReason::SideFile)
    } else {
        None
    }
}

/// The parts of a study folder path `<dir>/<split>/XR_<PART>/patientNNNNN/studyK_<label>`.
struct StudyPath {
    split: Split,
    body_part: BodyPart,
    patient: u32,
    study: u32,
    label: bool,
}

fn check_components(entry: &str) -> Result<Vec<&str>, PathProblem> {
    if entry.starts_with('/') || entry.starts_with('\\') || entry.contains(':') {
        return Err(PathProblem::Escapes);
    }
    let parts: Vec<&str> = entry.split(['/', '\\']).collect();
    if parts.iter().any(|p| *p == ".." || *p == ".") {
        return Err(PathProblem::Escapes);
    }
    Ok(parts)
}

fn parse_number(text: &str, prefix: &str, what: &str) -> Result<u32, PathProblem> {
    text.strip_prefix(prefix)
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| PathProblem::Layout(format!("{what} {text:?} is not {prefix}<number>")))
}

fn parse_study_parts(dir: &str, parts: &[&str]) -> Result<StudyPath, PathProblem> {
    if parts.len() != 5 {
        return Err(PathProblem::Layout(format!(
            "expected {dir}/<split>/XR_<PART>/patient<N>/study<K>_<positive|negative>, got {} path components",
            parts.len()
        )));
    }
    if parts[0] != dir {
        return Err(PathProblem::Layout(format!(
            "path starts with {:?}, not the data set folder {dir:?}",
            parts[0]
        )));
    }
    let split = match parts[1] {
        "train" => Split::Train,
        "valid" => Split::Valid,
        other => {
            return Err(PathProblem::Layout(format!(
                "split folder {other:?} is neither train nor valid"
            )));
        }
    };
    let body_part = parts[2]
        .strip_prefix("XR_")
        .and(parts[2].parse::<BodyPart>().ok())
        .ok_or_else(|| PathProblem::UnknownBodyPart(parts[2].to_string()))?;
    let patient = parse_number(parts[3], "patient", "patient folder")?;
    let (study_text, label_text) = parts[4].split_once('_').ok_or_else(|| {
        PathProblem::Layout(format!(
            "study folder {:?} is not study<K>_<positive|negative>",
            parts[4]
        ))
    })?;
    let study = parse_number(study_text, "study", "study folder")?;
    let label = match label_text {
        "positive" => true,
        "negative" => false,
        other => {
            return Err(PathProblem::Layout(format!(
                "study label {other:?} is neither positive nor negative"
            )));
        }
    };
    Ok(StudyPath {
        split,
        body_part,
        patient,
        study,
        label,
    })
}

/// The view number of `image<N>.<png|jpg|jpeg>`.
fn parse_view(name: &str) -> Result<u32, PathProblem> {
    let (stem, ext) = name
        .rsplit_once('.')
        .ok_or_else(|| PathProblem::Layout(format!("image {name:?} has no extension")))?;
    if !["png", "jpg", "jpeg"].contains(&ext.to_ascii_lowercase().as_str()) {
        return Err(PathProblem::Layout(format!(
            "image {name:?} is not a .png, .jpg or .jpeg file"
        )));
    }
    parse_number(stem, "image", "image file")
}

fn record(study: &StudyPath, view: u32, label: bool, path: String) -> ImageRecord {
    ImageRecord {
        split: study.split,
        body_part: study.body_part,
        patient: study.patient,
        study: study.study,
        view,
        label,
        path,
    }
}

/// The longest CSV line accepted (a MURA path is under 100 bytes): a longer one is refused with
/// its line number instead of being buffered whole.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// The error a [`LineLimited`] reader stops with.
#[derive(Debug)]
pub(crate) struct LineTooLong {
    pub line: u64,
}

impl fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line longer than {MAX_LINE_BYTES} bytes; not a line of a MURA CSV"
        )
    }
}

impl std::error::Error for LineTooLong {}

/// A reader that fails with [`LineTooLong`] as soon as a line passes [`MAX_LINE_BYTES`], so that
/// the CSV parser's buffers stay bounded whatever the file holds.
pub(crate) struct LineLimited<R> {
    inner: R,
    line: u64,
    run: usize,
}

impl<R> LineLimited<R> {
    pub(crate) fn new(inner: R) -> Self {
        LineLimited {
            inner,
            line: 1,
            run: 0,
        }
    }
}

impl<R: std::io::Read> std::io::Read for LineLimited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                self.line += 1;
                self.run = 0;
            } else {
                self.run += 1;
                if self.run > MAX_LINE_BYTES {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        LineTooLong { line: self.line },
                    ));
                }
            }
        }
        Ok(n)
    }
}

/// The line and message of a CSV error, reading through a [`LineLimited`] reader's own error.
pub(crate) fn csv_problem(e: &csv::Error) -> (u64, String) {
    if let csv::ErrorKind::Io(io) = e.kind()
        && let Some(long) = io.get_ref().and_then(|i| i.downcast_ref::<LineTooLong>())
    {
        return (long.line, long.to_string());
    }
    let line = e.position().map_or(0, |p| p.line());
    match e.kind() {
        csv::ErrorKind::Io(_) => (line, format!("read error: {e}")),
        _ => (line, e.to_string()),
    }
}

fn csv_reader(path: &Path) -> Result<csv::Reader<LineLimited<fs::File>>, DataError> {
    let file = fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    Ok(csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(LineLimited::new(file)))
}

/// Reads CSV records, turning the csv crate's errors into ours with file and line.
fn records(
    path: &Path,
) -> Result<impl Iterator<Item = Result<(u64, csv::StringRecord), DataError>>, DataError> {
    let owned = path.to_path_buf();
    Ok(csv_reader(path)?.into_records().map(move |r| match r {
        Ok(rec) => Ok((rec.position().map_or(0, |p| p.line()), rec)),
        Err(e) => {
            let (line, reason) = csv_problem(&e);
            Err(DataError::Malformed {
                path: owned.clone(),
                line,
                reason,
            })
        }
    }))
}

#[allow(clippy::too_many_arguments)]
fn read_split_csvs(
    base: &Path,
    dir: &str,
    split: Split,
    image_csv: &Path,
    label_csv: &Path,
    options: &IndexOptions,
    inside: &Inside,
    images: &mut Vec<ImageRecord>,
    skipped: &mut Vec<Skipped>,
) -> Result<(), DataError> {
    // Labelled studies: "<study folder>/,<0|1>".
    let mut labels: HashMap<String, bool> = HashMap::new();
    for rec in records(label_csv)? {
        let (line, rec) = rec?;
        if rec.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let malformed = |reason: String| DataError::Malformed {
            path: label_csv.to_path_buf(),
            line,
            reason,
        };
        if rec.len() != 2 {
            return Err(malformed(format!(
                "expected 2 columns (study folder, label), found {}",
                rec.len()
            )));
        }
        let entry = rec[0].trim();
        let label = match rec[1].trim() {
            "1" => true,
            "0" => false,
            other => return Err(malformed(format!("label {other:?} is neither 0 nor 1"))),
        };
        let parts = check_components(entry.trim_end_matches('/'))
            .map_err(|p| p.at(label_csv, line, entry))?;
        let study = parse_study_parts(dir, &parts).map_err(|p| p.at(label_csv, line, entry))?;
        if study.split != split {
            return Err(malformed(format!(
                "study {entry} is in {} but listed in the {split} CSV",
                study.split
            )));
        }
        if study.label != label {
            return Err(DataError::LabelMismatch {
                path: label_csv.to_path_buf(),
                line,
                study: entry.to_string(),
                csv_label: u8::from(label),
                folder_label: u8::from(study.label),
            });
        }
        labels.insert(format!("{}/", entry.trim_end_matches('/')), label);
    }

    let mut seen: HashMap<String, u64> = HashMap::new();
    for rec in records(image_csv)? {
        let (line, rec) = rec?;
        if rec.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        if rec.len() != 1 {
            return Err(DataError::Malformed {
                path: image_csv.to_path_buf(),
                line,
                reason: format!("expected 1 column (image path), found {}", rec.len()),
            });
        }
        let entry = rec[0].trim();
        let parts = check_components(entry).map_err(|p| p.at(image_csv, line, entry))?;
        let name = parts.last().copied().unwrap_or_default();
        if let Some(reason) = junk_reason(name) {
            skipped.push(Skipped {
                path: PathBuf::from(format!("{}:{line}", image_csv.display())),
                reason,
            });
            continue;
        }
        let at = |p: PathProblem| p.at(image_csv, line, entry);
        let study = parse_study_parts(dir, &parts[..parts.len() - 1]).map_err(at)?;
        let view = parse_view(name).map_err(at)?;
        if study.split != split {
            return Err(DataError::Malformed {
                path: image_csv.to_path_buf(),
                line,
                reason: format!(
                    "image {entry} is in {} but listed in the {split} CSV",
                    study.split
                ),
            });
        }
        let study_key = &entry[..entry.len() - name.len()];
        let label = *labels
            .get(study_key)
            .ok_or_else(|| DataError::StudyNotLabelled {
                path: image_csv.to_path_buf(),
                line,
                study: study_key.to_string(),
                image: entry.to_string(),
                labels_csv: label_csv.to_path_buf(),
            })?;
        if let Some(&first_line) = seen.get(entry) {
            return Err(DataError::DuplicateImage {
                path: image_csv.to_path_buf(),
                line,
                image: entry.to_string(),
                first_line,
            });
        }
        seen.insert(entry.to_string(), line);
        if options.check_files {
            let image = base.join(entry);
            if !image.is_file() {
                return Err(DataError::MissingImage {
                    path: image_csv.to_path_buf(),
                    line,
                    image,
                });
            }
            inside.check(&image)?;
        }
        images.push(record(&study, view, label, entry.to_string()));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_paths_are_refused() {
        for bad in [
            "/etc/passwd",
            "MURA-v1.1/../x",
            "C:\\x",
            "MURA-v1.1/./train",
        ] {
            assert!(
                matches!(check_components(bad), Err(PathProblem::Escapes)),
                "{bad}"
            );
        }
    }

    #[test]
    fn views_parse() {
        assert!(matches!(parse_view("image12.png"), Ok(12)));
        assert!(matches!(parse_view("image1.JPG"), Ok(1)));
        assert!(parse_view("image.png").is_err());
        assert!(parse_view("scan1.png").is_err());
        assert!(parse_view("image1.txt").is_err());
    }
}

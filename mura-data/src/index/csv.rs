//! Reading the four header-less CSVs of a MURA copy: lines bounded in length, each malformed
//! line an error naming the file and line, the labelled studies of a split and its images.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use super::path::{
    PathProblem, check_components, junk_reason, parse_study_parts, parse_view, record,
};
use super::{IndexOptions, Inside, SkipReason, Skipped};
use crate::{DataError, ImageRecord, Split};

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

/// The two CSVs of one split and how to read them.
pub(super) struct SplitCsvs<'a> {
    /// The folder holding the data set folder.
    pub(super) base: &'a Path,
    /// The data set folder's name.
    pub(super) dir: &'a str,
    pub(super) split: Split,
    pub(super) image_csv: PathBuf,
    pub(super) label_csv: PathBuf,
    pub(super) options: &'a IndexOptions,
    pub(super) inside: &'a Inside,
}

impl SplitCsvs<'_> {
    /// The split's images, labelled by their studies' rows; skipped lines go to `skipped`.
    pub(super) fn read(
        &self,
        images: &mut Vec<ImageRecord>,
        skipped: &mut Vec<Skipped>,
    ) -> Result<(), DataError> {
        let labels = self.labels(skipped)?;
        let before = images.len();
        let listed = self.images(&labels, images, skipped)?;
        if images.len() == before && !labels.is_empty() {
            return Err(DataError::EmptyImageList {
                images_csv: self.image_csv.clone(),
                labels_csv: self.label_csv.clone(),
                studies: labels.len(),
            });
        }
        // Every labelled study whose images the list does not name, in the order of its rows.
        let mut unlisted: Vec<u64> = labels
            .iter()
            .filter(|(study, _)| !listed.contains(study.as_str()))
            .map(|(_, &(_, line))| line)
            .collect();
        unlisted.sort_unstable();
        skipped.extend(unlisted.into_iter().map(|line| Skipped {
            path: PathBuf::from(format!("{}:{line}", self.label_csv.display())),
            reason: SkipReason::StudyWithoutImages,
        }));
        Ok(())
    }

    /// The labelled studies, each with its label and line: "<study folder>/,<0|1>", each checked
    /// against its folder's name. A row repeating a study is skipped (counted in `skipped`) when
    /// it gives the same label, an error when it gives the other.
    fn labels(
        &self,
        skipped: &mut Vec<Skipped>,
    ) -> Result<HashMap<String, (bool, u64)>, DataError> {
        let label_csv = &self.label_csv;
        let mut labels: HashMap<String, (bool, u64)> = HashMap::new();
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
            let at = |p: PathProblem| p.at(label_csv, line, entry);
            let parts = check_components(entry.trim_end_matches('/')).map_err(at)?;
            let study = parse_study_parts(self.dir, &parts).map_err(at)?;
            if study.split != self.split {
                return Err(malformed(format!(
                    "study {entry} is in {} but listed in the {} CSV",
                    study.split, self.split
                )));
            }
            let key = format!("{}/", entry.trim_end_matches('/'));
            match labels.get(&key) {
                Some(&(first, _)) if first == label => {
                    skipped.push(Skipped {
                        path: PathBuf::from(format!("{}:{line}", label_csv.display())),
                        reason: SkipReason::DuplicateStudy,
                    });
                    continue;
                }
                Some(&(_, first_line)) => {
                    return Err(DataError::ConflictingLabels {
                        path: label_csv.to_path_buf(),
                        line,
                        study: entry.to_string(),
                        first_line,
                    });
                }
                None => {}
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
            labels.insert(key, (label, line));
        }
        Ok(labels)
    }

    /// The images: one path per line, each in a labelled study of this split, listed once,
    /// and (with `check_files`) present inside the data set. Returns the studies they are in.
    fn images<'l>(
        &self,
        labels: &'l HashMap<String, (bool, u64)>,
        images: &mut Vec<ImageRecord>,
        skipped: &mut Vec<Skipped>,
    ) -> Result<HashSet<&'l str>, DataError> {
        let mut listed = HashSet::new();
        let image_csv = &self.image_csv;
        let mut seen: HashMap<String, u64> = HashMap::new();
        for rec in records(image_csv)? {
            let (line, rec) = rec?;
            if rec.iter().all(|f| f.trim().is_empty()) {
                continue;
            }
            let malformed = |reason: String| DataError::Malformed {
                path: image_csv.to_path_buf(),
                line,
                reason,
            };
            if rec.len() != 1 {
                return Err(malformed(format!(
                    "expected 1 column (image path), found {}",
                    rec.len()
                )));
            }
            let entry = rec[0].trim();
            let at = |p: PathProblem| p.at(image_csv, line, entry);
            let parts = check_components(entry).map_err(at)?;
            let name = parts.last().copied().unwrap_or_default();
            if let Some(reason) = junk_reason(name) {
                skipped.push(Skipped {
                    path: PathBuf::from(format!("{}:{line}", image_csv.display())),
                    reason,
                });
                continue;
            }
            let study = parse_study_parts(self.dir, &parts[..parts.len() - 1]).map_err(at)?;
            let view = parse_view(name).map_err(at)?;
            if study.split != self.split {
                return Err(malformed(format!(
                    "image {entry} is in {} but listed in the {} CSV",
                    study.split, self.split
                )));
            }
            let study_key = &entry[..entry.len() - name.len()];
            let (key, &(label, _)) =
                labels
                    .get_key_value(study_key)
                    .ok_or_else(|| DataError::StudyNotLabelled {
                        path: image_csv.to_path_buf(),
                        line,
                        study: study_key.to_string(),
                        image: entry.to_string(),
                        labels_csv: self.label_csv.clone(),
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
            if self.options.check_files {
                let image = self.base.join(entry);
                if !image.is_file() {
                    return Err(DataError::MissingImage {
                        path: image_csv.to_path_buf(),
                        line,
                        image,
                    });
                }
                self.inside.check(&image)?;
            }
            listed.insert(key.as_str());
            images.push(record(&study, view, label, entry.to_string()));
        }
        Ok(listed)
    }
}

//! The manifest of a split: exactly which images a run uses and in which role (and fold), saved
//! as CSV beside every run and read back to resume or re-evaluate it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use crate::{BodyPart, DataError, ImageRecord, PatientKey, Role, Split};

/// One line of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub role: Role,
    /// The k-fold fold of an official-train image, when the manifest holds folds.
    pub fold: Option<u32>,
    pub record: ImageRecord,
}

/// Exactly which images a run uses and in which role; saved as CSV beside every run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
}

/// The CSV header of a manifest.
pub const MANIFEST_HEADER: [&str; 9] = [
    "role",
    "fold",
    "split",
    "body_part",
    "patient",
    "study",
    "view",
    "label",
    "path",
];

impl Manifest {
    /// The records with a given role.
    pub fn role(&self, role: Role) -> impl Iterator<Item = &ImageRecord> {
        self.entries
            .iter()
            .filter(move |e| e.role == role)
            .map(|e| &e.record)
    }

    /// For fold `f` of a k-fold manifest: the images of the other folds train, fold `f` validates.
    pub fn fold_as_val(&self, f: u32) -> Manifest {
        Manifest {
            entries: self
                .entries
                .iter()
                .map(|e| ManifestEntry {
                    role: match (e.role, e.fold) {
                        (Role::Train, Some(x)) if x == f => Role::Val,
                        (role, _) => role,
                    },
                    fold: e.fold,
                    record: e.record.clone(),
                })
                .collect(),
        }
    }

    /// Keeps only the given body parts (all when `parts` is empty).
    pub fn body_parts(&self, parts: &[BodyPart]) -> Manifest {
        Manifest {
            entries: self
                .entries
                .iter()
                .filter(|e| parts.is_empty() || parts.contains(&e.record.body_part))
                .cloned()
                .collect(),
        }
    }

    /// Checks that no patient has images in two roles (or two folds).
    pub fn check_patients(&self) -> Result<(), DataError> {
        let mut seen: BTreeMap<PatientKey, (Role, Option<u32>)> = BTreeMap::new();
        for e in &self.entries {
            let here = (e.role, e.fold);
            if let Some(&first) = seen.get(&e.record.patient_key())
                && first != here
            {
                let show = |(r, f): (Role, Option<u32>)| match f {
                    Some(f) => format!("{r} fold {f}"),
                    None => r.to_string(),
                };
                return Err(DataError::PatientLeak {
                    patient: format!("{} patient{:05}", e.record.split, e.record.patient),
                    first: show(first),
                    second: show(here),
                });
            }
            seen.insert(e.record.patient_key(), here);
        }
        Ok(())
    }

    /// Writes the manifest as CSV (header [`MANIFEST_HEADER`]), atomically: a temporary file in the
    /// same folder, renamed over the target.
    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        let write_err = |e: std::io::Error| DataError::Write {
            path: path.to_path_buf(),
            source: e,
        };
        let csv_err = |e: csv::Error| DataError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        };
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(MANIFEST_HEADER).map_err(csv_err)?;
        for e in &self.entries {
            let r = &e.record;
            w.write_record([
                e.role.as_str(),
                &e.fold.map(|f| f.to_string()).unwrap_or_default(),
                r.split.folder(),
                r.body_part.folder(),
                &r.patient.to_string(),
                &r.study.to_string(),
                &r.view.to_string(),
                if r.label { "1" } else { "0" },
                &r.path,
            ])
            .map_err(csv_err)?;
        }
        let bytes = w.into_inner().map_err(|e| write_err(e.into_error()))?;
        crate::write_atomic(path, &bytes)
    }

    /// Reads a manifest written by [`Manifest::save`], checking every field (errors name the line)
    /// and that no patient is in two roles.
    pub fn load(path: &Path) -> Result<Manifest, DataError> {
        let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(crate::index::LineLimited::new(file));
        let header = reader.headers().map_err(|e| DataError::Malformed {
            path: path.to_path_buf(),
            line: 1,
            reason: crate::index::csv_problem(&e).1,
        })?;
        if header.iter().ne(MANIFEST_HEADER) {
            return Err(DataError::Malformed {
                path: path.to_path_buf(),
                line: 1,
                reason: format!("header must be {}", MANIFEST_HEADER.join(",")),
            });
        }
        let mut entries = Vec::new();
        for rec in reader.records() {
            let rec = rec.map_err(|e| {
                let (line, reason) = crate::index::csv_problem(&e);
                DataError::Malformed {
                    path: path.to_path_buf(),
                    line,
                    reason,
                }
            })?;
            let line = rec.position().map_or(0, |p| p.line());
            let bad = |reason: String| DataError::Malformed {
                path: path.to_path_buf(),
                line,
                reason,
            };
            if rec.len() != MANIFEST_HEADER.len() {
                return Err(bad(format!(
                    "expected {} columns, found {}",
                    MANIFEST_HEADER.len(),
                    rec.len()
                )));
            }
            let number = |i: usize| -> Result<u32, DataError> {
                rec[i].parse().map_err(|_| {
                    bad(format!(
                        "{} {:?} is not a number",
                        MANIFEST_HEADER[i], &rec[i]
                    ))
                })
            };
            let role: Role = rec[0].parse().map_err(bad)?;
            let fold = if rec[1].is_empty() {
                None
            } else {
                Some(number(1)?)
            };
            let split = match &rec[2] {
                "train" => Split::Train,
                "valid" => Split::Valid,
                other => return Err(bad(format!("split {other:?} is neither train nor valid"))),
            };
            let body_part: BodyPart = rec[3]
                .parse()
                .map_err(|e: crate::UnknownBodyPart| bad(e.to_string()))?;
            let label = match &rec[7] {
                "1" => true,
                "0" => false,
                other => return Err(bad(format!("label {other:?} is neither 0 nor 1"))),
            };
            let entry_path = &rec[8];
            if entry_path.starts_with('/')
                || entry_path.contains(':')
                || entry_path.split(['/', '\\']).any(|c| c == "..")
            {
                return Err(DataError::EscapesRoot {
                    path: path.to_path_buf(),
                    line,
                    entry: entry_path.to_string(),
                });
            }
            entries.push(ManifestEntry {
                role,
                fold,
                record: ImageRecord {
                    split,
                    body_part,
                    patient: number(4)?,
                    study: number(5)?,
                    view: number(6)?,
                    label,
                    path: entry_path.to_string(),
                },
            });
        }
        let manifest = Manifest { entries };
        manifest.check_patients()?;
        Ok(manifest)
    }
}

/// Images per stratum (body part × label) and per role or fold of a manifest: the table
/// `mura split` prints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ManifestSummary {
    /// Per stratum, the images of each part (`train`, `val`, `test`, or `fold i`).
    pub counts: BTreeMap<(BodyPart, bool), BTreeMap<String, usize>>,
}

impl Manifest {
    /// The images per stratum and role (or fold).
    pub fn summary(&self) -> ManifestSummary {
        let mut counts: BTreeMap<(BodyPart, bool), BTreeMap<String, usize>> = BTreeMap::new();
        for e in &self.entries {
            let key = match e.fold {
                Some(f) => format!("fold {f}"),
                None => e.role.to_string(),
            };
            *counts
                .entry(e.record.stratum())
                .or_default()
                .entry(key)
                .or_default() += 1;
        }
        ManifestSummary { counts }
    }
}

impl fmt::Display for ManifestSummary {
    /// One line per stratum: `  XR_WRIST     1 train 812, val 201, test 140`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for ((part, label), per) in &self.counts {
            let cells: Vec<String> = per.iter().map(|(k, n)| format!("{k} {n}")).collect();
            writeln!(
                f,
                "  {:<12} {} {}",
                part.folder(),
                u8::from(*label),
                cells.join(", ")
            )?;
        }
        Ok(())
    }
}

//! What a path in a MURA copy means: `MURA-v1.1/<split>/XR_<PART>/patient<N>/study<N>_<label>/
//! image<N>.png`, each component checked (no `..`, no absolute paths, no junk files) and parsed
//! into a record.

use std::path::Path;

use super::SkipReason;
use crate::{BodyPart, DataError, ImageRecord, Split};

/// A path that did not fit the MURA layout, before the file and line are known.
pub(super) enum PathProblem {
    Escapes,
    UnknownBodyPart(String),
    Layout(String),
}

impl PathProblem {
    pub(super) fn at(self, csv: &Path, line: u64, entry: &str) -> DataError {
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
pub(super) struct StudyPath {
    pub(super) split: Split,
    pub(super) body_part: BodyPart,
    pub(super) patient: u32,
    pub(super) study: u32,
    pub(super) label: bool,
}

pub(super) fn check_components(entry: &str) -> Result<Vec<&str>, PathProblem> {
    if entry.starts_with('/') || entry.starts_with('\\') || entry.contains(':') {
        return Err(PathProblem::Escapes);
    }
    let parts: Vec<&str> = entry.split(['/', '\\']).collect();
    if parts.iter().any(|p| *p == ".." || *p == ".") {
        return Err(PathProblem::Escapes);
    }
    Ok(parts)
}

pub(super) fn parse_number(text: &str, prefix: &str, what: &str) -> Result<u32, PathProblem> {
    text.strip_prefix(prefix)
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| PathProblem::Layout(format!("{what} {text:?} is not {prefix}<number>")))
}

pub(super) fn parse_study_parts(dir: &str, parts: &[&str]) -> Result<StudyPath, PathProblem> {
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

/// The view number of `image<N>.<png|jpg|jpeg|dcm>`.
pub(super) fn parse_view(name: &str) -> Result<u32, PathProblem> {
    let (stem, ext) = name
        .rsplit_once('.')
        .ok_or_else(|| PathProblem::Layout(format!("image {name:?} has no extension")))?;
    if !["png", "jpg", "jpeg", "dcm"].contains(&ext.to_ascii_lowercase().as_str()) {
        return Err(PathProblem::Layout(format!(
            "image {name:?} is not a .png, .jpg, .jpeg or .dcm file"
        )));
    }
    parse_number(stem, "image", "image file")
}

pub(super) fn record(study: &StudyPath, view: u32, label: bool, path: String) -> ImageRecord {
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

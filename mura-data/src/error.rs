//! The one error type of `mura-data`.

use std::path::PathBuf;

use crate::SkipReason;

/// Everything that can go wrong reading, splitting or generating MURA data. Each variant names the
/// file (and line, study or image) at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "{path}: data root not found (expected a folder holding MURA-v1.1/ or MURA-v1.1 itself)"
    )]
    RootNotFound { path: PathBuf },
    #[error(
        "{path}: missing; the index CSVs come in a set of four (train/valid image paths and labelled studies)"
    )]
    MissingCsv { path: PathBuf },
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Malformed {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    /// A DICOM file that cannot be used: not DICOM, no image, a syntax this build lacks.
    #[error("{path}: {reason}")]
    Dicom { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadLayout { path: PathBuf, reason: String },
    #[error(
        "{path}:{line}: unknown body part {part:?} (expected one of XR_ELBOW, XR_FINGER, XR_FOREARM, XR_HAND, XR_HUMERUS, XR_SHOULDER, XR_WRIST)"
    )]
    UnknownBodyPart {
        path: PathBuf,
        line: u64,
        part: String,
    },
    #[error(
        "{path}:{line}: study {study} is labelled {csv_label} in the CSV but its folder says {folder_label}"
    )]
    LabelMismatch {
        path: PathBuf,
        line: u64,
        study: String,
        csv_label: u8,
        folder_label: u8,
    },
    #[error("{path}:{line}: study {study} of image {image} has no label in {labels_csv}")]
    StudyNotLabelled {
        path: PathBuf,
        line: u64,
        study: String,
        image: String,
        labels_csv: PathBuf,
    },
    #[error("{path}:{line}: {entry:?} escapes the data root (absolute or containing '..')")]
    EscapesRoot {
        path: PathBuf,
        line: u64,
        entry: String,
    },
    #[error(
        "{path}: a link to {target}, outside the data set folder {root}; refusing to read it (copy the file into the tree instead)"
    )]
    LinkEscapes {
        path: PathBuf,
        target: PathBuf,
        root: PathBuf,
    },
    #[error("{path}:{line}: listed image {image} does not exist")]
    MissingImage {
        path: PathBuf,
        line: u64,
        image: PathBuf,
    },
    #[error("{path}:{line}: image {image} is listed twice (first on line {first_line})")]
    DuplicateImage {
        path: PathBuf,
        line: u64,
        image: String,
        first_line: u64,
    },
    #[error(
        "{path}:{line}: study {study} is listed again with the other label (first at line {first_line})"
    )]
    ConflictingLabels {
        path: PathBuf,
        line: u64,
        study: String,
        first_line: u64,
    },
    #[error(
        "{images_csv} lists no image while {labels_csv} lists {studies} studies: the image list is empty or was emptied"
    )]
    EmptyImageList {
        images_csv: PathBuf,
        labels_csv: PathBuf,
        studies: usize,
    },
    #[error("{path}: skipped ({reason}) and --strict forbids skipping")]
    StrictSkip { path: PathBuf, reason: SkipReason },
    #[error("{path}: cannot decode image: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("{path}: cannot write: {source}{}", crate::write_hint(source))]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot encode image: {message}")]
    Encode { path: PathBuf, message: String },
    #[error("invalid {what}: {reason}")]
    InvalidConfig { what: &'static str, reason: String },
    #[error("patient {patient} appears in both {first} and {second} of the manifest")]
    PatientLeak {
        patient: String,
        first: String,
        second: String,
    },
    #[error("the loader's worker thread stopped unexpectedly")]
    WorkerLost,
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

//! Durable writes of the files a run depends on: written to a temporary name, flushed to disk
//! and renamed, so a crash leaves either the old file or the new one, never a mix.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::TrainError;

/// The error of a file that could not be written.
pub(crate) fn unwritable(path: &Path, reason: impl ToString) -> TrainError {
    TrainError::Unwritable {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Writes `bytes` to `path` atomically and durably ([`mura_data::write_atomic`]).
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    mura_data::write_atomic(path, bytes).map_err(|e| match e {
        mura_data::DataError::Write { source, .. } => {
            unwritable(path, format!("{source}{}", mura_data::write_hint(&source)))
        }
        other => unwritable(path, other),
    })
}

/// Writes `value` as pretty-printed JSON to `path`, durably.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| unwritable(path, e))?;
    write_durable(path, text.as_bytes())
}

/// Reads the JSON file at `path`; `None` when there is no such file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, TrainError> {
    let bad = |reason: String| TrainError::Config {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| bad(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(bad(e.to_string())),
    }
}

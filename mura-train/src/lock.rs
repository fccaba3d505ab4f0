//! One process per run directory: an advisory lock on `<run>/.lock`, held while a run is
//! created or trained. The operating system drops it when the process ends, however it ends
//! (a SIGKILL leaves no stale lock behind); the file itself stays and holds the last holder's
//! process id, for the message a second process gets.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::TrainError;

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = ".lock";

/// A held run-directory lock; released on drop.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Locks the run directory `dir` (which must exist), or fails with
    /// [`TrainError::RunLocked`] naming the process that holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock, TrainError> {
        let path = dir.join(LOCK_FILE);
        let unwritable = |e: std::io::Error| TrainError::Unwritable {
            path: path.clone(),
            reason: e.to_string(),
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(unwritable)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(TrainError::RunLocked {
                    path: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "another process".into()
                    } else {
                        format!("process {holder}")
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(unwritable(e)),
        }
        file.set_len(0).map_err(unwritable)?;
        file.rewind().map_err(unwritable)?;
        writeln!(file, "{}", std::process::id()).map_err(unwritable)?;
        Ok(RunLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        // Another open file description of the same file conflicts, as another process would.
        let err = RunLock::acquire(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TrainError::RunLocked { .. }), "{msg}");
        assert!(
            msg.contains(&format!("process {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        drop(first);
        let again = RunLock::acquire(dir.path()).unwrap();
        assert!(again.path().exists());
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = RunLock::acquire(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(err, TrainError::Unwritable { .. }), "{err}");
        assert!(err.to_string().contains("absent"), "{err}");
    }
}

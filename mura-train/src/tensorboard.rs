//! TensorBoard event files: the per-epoch scalars of a run, for users who watch runs in TensorBoard.
//!
//! No maintained Rust crate writes them without pulling in a protobuf toolchain, and the format is
//! small: a file of TFRecords (`u64` length, its masked CRC-32C, the bytes, their masked CRC-32C),
//! each holding one `tensorflow.Event` protobuf. The first event carries `file_version =
//! "brain.Event:2"`; the others a `Summary` of `simple_value` scalars at a step. Only the fields
//! used here are encoded:
//!
//! ```text
//! Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//! Summary { repeated Value value = 1; }
//! Value   { string tag = 1; float simple_value = 2; }
//! ```
//!
//! [`read_events`] parses such files back (checking every CRC); the tests use it, and
//! `tools/tensorboard_check.py` checks a file with TensorBoard's own reader.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::TrainError;
use crate::history::HistoryRow;

/// The folder of a run's event files.
pub const DIR: &str = "tensorboard";

/// CRC-32C (Castagnoli), reflected polynomial 0x82F63B78.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// TFRecord's masked CRC.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xA282_EAD8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(field: u64, data: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// One Event: its wall time, step, and either the file version or scalars.
fn event(
    wall_time: f64,
    step: i64,
    file_version: Option<&str>,
    scalars: &[(&str, f32)],
) -> Vec<u8> {
    let mut e = Vec::new();
    varint(1 << 3 | 1, &mut e);
    e.extend_from_slice(&wall_time.to_le_bytes());
    varint(2 << 3, &mut e);
    varint(step as u64, &mut e);
    if let Some(v) = file_version {
        bytes_field(3, v.as_bytes(), &mut e);
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut v = Vec::new();
            bytes_field(1, tag.as_bytes(), &mut v);
            varint(2 << 3 | 5, &mut v);
            v.extend_from_slice(&value.to_le_bytes());
            bytes_field(1, &v, &mut summary);
        }
        bytes_field(5, &summary, &mut e);
    }
    e
}

fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut r = Vec::with_capacity(data.len() + 16);
    r.extend_from_slice(&len);
    r.extend_from_slice(&masked_crc(&len).to_le_bytes());
    r.extend_from_slice(data);
    r.extend_from_slice(&masked_crc(data).to_le_bytes());
    r
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Appends events to one file, `events.out.tfevents.<seconds>.<host>.<pid>`.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

impl EventWriter {
    /// A new event file in `dir` (created if needed), starting with the file-version event.
    pub fn create(dir: &Path) -> Result<Self, TrainError> {
        let unwritable = |path: &Path, e: std::io::Error| TrainError::Unwritable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| unwritable(dir, e))?;
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| {
                !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            })
            .unwrap_or_else(|| "mura".into());
        let wall = now();
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}",
            wall as u64,
            std::process::id()
        ));
        let file = File::create(&path).map_err(|e| unwritable(&path, e))?;
        let mut w = Self { path, file };
        w.write(&event(wall, 0, Some("brain.Event:2"), &[]))?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, data: &[u8]) -> Result<(), TrainError> {
        self.file
            .write_all(&record(data))
            .and_then(|()| self.file.flush())
            .map_err(|e| TrainError::Unwritable {
                path: self.path.clone(),
                reason: e.to_string(),
            })
    }

    /// Scalars at `step`; non-finite values (an undefined metric) are left out.
    pub fn scalars(&mut self, step: i64, scalars: &[(&str, f64)]) -> Result<(), TrainError> {
        let kept: Vec<(&str, f32)> = scalars
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|&(t, v)| (t, v as f32))
            .collect();
        self.write(&event(now(), step, None, &kept))
    }

    /// The scalars of one epoch of the history, at step = epoch.
    pub fn epoch(&mut self, row: &HistoryRow) -> Result<(), TrainError> {
        let nan = f64::NAN;
        self.scalars(
            i64::from(row.epoch),
            &[
                ("loss/train", row.train_loss),
                ("loss/val", row.val_loss),
                ("auc/train", row.train_auc.unwrap_or(nan)),
                ("auc/val", row.val_auc.unwrap_or(nan)),
                ("kappa/train", row.train_kappa.unwrap_or(nan)),
                ("kappa/val", row.val_kappa.unwrap_or(nan)),
                ("accuracy/train", row.train_accuracy.unwrap_or(nan)),
                ("accuracy/val", row.val_accuracy.unwrap_or(nan)),
                ("lr", row.lr),
                ("images_per_sec", row.images_per_sec),
            ],
        )
    }
}

/// One event read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    pub scalars: Vec<(String, f32)>,
}

fn bad(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Config {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A protobuf reader over the few wire types used here.
struct Wire<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.data.get(self.at)?;
            self.at += 1;
            v |= u64::from(b & 0x7F) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.data.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    /// (field, wire type, payload) of the next field.
    fn field(&mut self) -> Option<(u64, u64, &'a [u8])> {
        let key = self.varint()?;
        let payload = match key & 7 {
            0 => {
                let start = self.at;
                self.varint()?;
                &self.data[start..self.at]
            }
            1 => self.take(8)?,
            2 => {
                let n = usize::try_from(self.varint()?).ok()?;
                self.take(n)?
            }
            5 => self.take(4)?,
            _ => return None,
        };
        Some((key >> 3, key & 7, payload))
    }

    fn done(&self) -> bool {
        self.at >= self.data.len()
    }
}

fn parse_event(data: &[u8]) -> Option<Event> {
    let mut e = Event {
        wall_time: 0.0,
        step: 0,
        file_version: None,
        scalars: Vec::new(),
    };
    let mut w = Wire { data, at: 0 };
    while !w.done() {
        match w.field()? {
            (1, 1, p) => e.wall_time = f64::from_le_bytes(p.try_into().ok()?),
            (2, 0, p) => e.step = Wire { data: p, at: 0 }.varint()? as i64,
            (3, 2, p) => e.file_version = Some(String::from_utf8(p.to_vec()).ok()?),
            (5, 2, p) => {
                let mut s = Wire { data: p, at: 0 };
                while !s.done() {
                    let (1, 2, value) = s.field()? else {
                        continue;
                    };
                    let mut v = Wire { data: value, at: 0 };
                    let (mut tag, mut x) = (None, None);
                    while !v.done() {
                        match v.field()? {
                            (1, 2, t) => tag = Some(String::from_utf8(t.to_vec()).ok()?),
                            (2, 5, f) => x = Some(f32::from_le_bytes(f.try_into().ok()?)),
                            _ => {}
                        }
                    }
                    if let (Some(t), Some(x)) = (tag, x) {
                        e.scalars.push((t, x));
                    }
                }
            }
            _ => {}
        }
    }
    Some(e)
}

/// Reads every event of a file, checking the framing and both CRCs of every record.
pub fn read_events(path: &Path) -> Result<Vec<Event>, TrainError> {
    let data = std::fs::read(path).map_err(|e| bad(path, e.to_string()))?;
    let mut events = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let n = events.len();
        let header = data
            .get(at..at + 12)
            .ok_or_else(|| bad(path, format!("record {n}: truncated header")))?;
        let (len_bytes, len_crc) = header.split_at(8);
        if masked_crc(len_bytes).to_le_bytes() != len_crc {
            return Err(bad(path, format!("record {n}: length CRC mismatch")));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap_or([0; 8]));
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| (at + 12).checked_add(len))
            .filter(|&end| end <= data.len())
            .ok_or_else(|| bad(path, format!("record {n}: truncated data")))?;
        let body = &data[at + 12..end];
        let crc = data
            .get(end..end + 4)
            .ok_or_else(|| bad(path, format!("record {n}: truncated data CRC")))?;
        if masked_crc(body).to_le_bytes() != crc {
            return Err(bad(path, format!("record {n}: data CRC mismatch")));
        }
        events
            .push(parse_event(body).ok_or_else(|| bad(path, format!("record {n}: not an Event")))?);
        at = end + 4;
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn events_written_are_read_back_with_their_scalars() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(&dir.path().join(DIR)).unwrap();
        w.scalars(
            3,
            &[("loss/train", 0.25), ("auc/val", f64::NAN), ("lr", 1e-3)],
        )
        .unwrap();
        w.scalars(300, &[("loss/train", 0.125)]).unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let events = read_events(w.path()).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        assert_eq!(events[1].step, 3);
        assert_eq!(
            events[1].scalars,
            vec![("loss/train".to_string(), 0.25), ("lr".to_string(), 1e-3)]
        );
        assert_eq!(events[2].step, 300);
        assert!(events[2].wall_time >= events[0].wall_time && events[0].wall_time > 1.6e9);
    }

    #[test]
    fn a_damaged_file_is_refused_with_the_record_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(1, &[("x", 1.0)]).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        let err = read_events(&path).unwrap_err().to_string();
        assert!(err.contains("record 1: data CRC mismatch"), "{err}");
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&path, &bytes).unwrap();
        let err = read_events(&path).unwrap_err().to_string();
        assert!(err.contains("record 1: truncated"), "{err}");
        // A length near u64::MAX (with its CRC right) is refused, not added past the end.
        let huge = u64::MAX.to_le_bytes();
        let mut forged = huge.to_vec();
        forged.extend_from_slice(&masked_crc(&huge).to_le_bytes());
        std::fs::write(&path, &forged).unwrap();
        let err = read_events(&path).unwrap_err().to_string();
        assert!(err.contains("record 0: truncated data"), "{err}");
    }
}

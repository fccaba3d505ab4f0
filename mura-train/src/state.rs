//! Training checkpoints: the model's tensors, the optimiser's state (tensors named `optim.*`) and
//! the run's progress (JSON in the safetensors header's metadata) in one file, written to a
//! temporary name, flushed to disk and renamed, so a crash leaves either the old file or the new one.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::epoch::EpochProgress;
use crate::history::HistoryRow;
use crate::io::{unwritable, write_durable};
use crate::policy::{EarlyStopping, Plateau};

/// The metadata key holding [`TrainState`] as JSON.
pub const STATE_KEY: &str = "mura.train_state";
/// Names of optimiser-state tensors start with this; a model loader ignores them.
pub const OPTIM_PREFIX: &str = "optim.";

/// Everything about a run's progress that is not a tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs fully done.
    pub epochs_done: u32,
    /// 0, or 1 in the second stage of two-stage fine-tuning.
    pub stage: u32,
    /// Optimiser steps taken over the whole run.
    pub global_step: u64,
    /// The learning rate the schedule and the plateau policy start from (the current stage's).
    pub base_lr: f64,
    pub early_stopping: Option<EarlyStopping>,
    pub plateau: Option<Plateau>,
    /// Best monitored value and its (1-based) epoch.
    pub best: Option<(f64, u32)>,
    pub history: Vec<HistoryRow>,
    /// The part of an interrupted epoch already done.
    pub partial: Option<EpochProgress>,
    /// Why the run ended, once it has.
    pub finished: Option<String>,
}

/// One tensor's bytes, as the safetensors writer wants them.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn raw(t: &Tensor) -> Result<Raw, TrainError> {
    let shape = t.dims().to_vec();
    let flat = t.flatten_all()?;
    let (dtype, bytes) = match t.dtype() {
        DType::F64 => (
            Dtype::F64,
            flat.to_vec1::<f64>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        _ => (
            Dtype::F32,
            flat.to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
    };
    Ok(Raw {
        dtype,
        shape,
        bytes,
    })
}

fn unreadable(path: &Path, reason: impl ToString) -> TrainError {
    TrainError::BadCheckpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Saves tensors and, when given, the training state, durably.
pub fn save(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    state: Option<&TrainState>,
) -> Result<(), TrainError> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut raws = Vec::with_capacity(names.len());
    for n in &names {
        raws.push(raw(&tensors[*n])?);
    }
    let metadata = match state {
        Some(s) => Some(HashMap::from([(
            STATE_KEY.to_string(),
            serde_json::to_string(s).map_err(|e| unwritable(path, e))?,
        )])),
        None => None,
    };
    let bytes = safetensors::serialize(names.iter().map(|n| n.as_str()).zip(&raws), metadata)
        .map_err(|e| unwritable(path, e))?;
    write_durable(path, &bytes)
}

/// A checkpoint read back: all its tensors and its training state, if it has one.
#[derive(Debug)]
pub struct Loaded {
    pub tensors: HashMap<String, Tensor>,
    pub state: Option<TrainState>,
}

impl Loaded {
    /// The optimiser's tensors.
    pub fn optimizer(&self) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .filter(|(n, _)| n.starts_with(OPTIM_PREFIX))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect()
    }
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path, device: &Device) -> Result<Loaded, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| unreadable(path, e))?;
    mura_models::checkpoint::check_framing(&bytes).map_err(|e| unreadable(path, e))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| unreadable(path, e))?;
    let state = match meta.metadata().as_ref().and_then(|m| m.get(STATE_KEY)) {
        Some(json) => Some(
            serde_json::from_str(json)
                .map_err(|e| unreadable(path, format!("training state: {e}")))?,
        ),
        None => None,
    };
    let st = mura_models::checkpoint::parse_safetensors(&bytes).map_err(|e| unreadable(path, e))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F64 => DType::F64,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => return Err(unreadable(path, format!("`{name}` is {other:?}"))),
        };
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), device)?;
        tensors.insert(name, t);
    }
    Ok(Loaded { tensors, state })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_checkpoints_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("last.safetensors");
        let t = Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap();
        save(&good, &HashMap::from([("w".to_string(), t)]), None).unwrap();
        assert_eq!(load(&good, &Device::Cpu).unwrap().tensors.len(), 1);
        let bytes = std::fs::read(&good).unwrap();

        // Header length larger than the file; a file shorter than the length field; a state that
        // is not JSON of a TrainState.
        let mut liar = (1u64 << 40).to_le_bytes().to_vec();
        liar.extend_from_slice(&bytes[8..]);
        let state = safetensors::serialize(
            [(
                "w",
                &raw(&Tensor::new(&[1f32], &Device::Cpu).unwrap()).unwrap(),
            )],
            Some(HashMap::from([(
                STATE_KEY.to_string(),
                "{oops".to_string(),
            )])),
        )
        .unwrap();
        for (name, content, needle) in [
            ("liar.safetensors", liar, "header claims"),
            ("short.safetensors", vec![1, 2, 3], "too short"),
            ("state.safetensors", state, "training state"),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            let err = load(&path, &Device::Cpu).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, TrainError::BadCheckpoint { .. }), "{msg}");
            assert!(msg.contains(name) && msg.contains(needle), "{msg}");
        }
    }
}

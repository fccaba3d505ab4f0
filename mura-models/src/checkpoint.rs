//! Reading, checking and writing `.safetensors` checkpoints against a model's declared tensors.
//!
//! A checkpoint is checked whole before anything is copied: every missing, unexpected, mis-shaped
//! or non-float tensor is listed in one [`ModelError::Checkpoint`], and the model keeps its weights.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use safetensors::SafeTensors;

use crate::ModelError;
use crate::model::Model;
use crate::vars::lock_vars;

/// A tensor as a checkpoint declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    /// safetensors' dtype name (`F32`, `F16`, `I64`, ...).
    pub dtype: String,
}

/// One way a checkpoint does not fit a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    Missing {
        name: String,
        expected: Vec<usize>,
    },
    Unexpected {
        name: String,
        found: Vec<usize>,
    },
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    Dtype {
        name: String,
        found: String,
    },
}

impl Mismatch {
    pub fn name(&self) -> &str {
        match self {
            Self::Missing { name, .. }
            | Self::Unexpected { name, .. }
            | Self::Shape { name, .. }
            | Self::Dtype { name, .. } => name,
        }
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { name, expected } => {
                write!(f, "missing `{name}` (expected {expected:?})")
            }
            Self::Unexpected { name, found } => write!(f, "unexpected `{name}` {found:?}"),
            Self::Shape {
                name,
                expected,
                found,
            } => write!(f, "`{name}`: expected {expected:?}, found {found:?}"),
            Self::Dtype { name, found } => {
                write!(f, "`{name}`: dtype {found} is not F32, F16, BF16 or F64")
            }
        }
    }
}

/// How to load a checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Leave the model's classifier as it is and ignore the checkpoint's (an ImageNet checkpoint
    /// into a one-logit model).
    pub skip_classifier: bool,
    /// Sum the first convolution's RGB filters into one channel when the model takes gray input.
    pub fold_first_conv: bool,
    /// Accept and ignore tensors whose names start with this (a training checkpoint's optimiser
    /// state stored beside the weights).
    pub ignore_prefix: Option<&'static str>,
}

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub loaded: usize,
    /// Checkpoint tensors accepted and not used (`num_batches_tracked`, `AuxLogits.*`, a skipped
    /// classifier).
    pub ignored: Vec<String>,
    /// Tensors adapted on the way in (the folded first convolution).
    pub adapted: Vec<String>,
}

fn unreadable(path: &Path, reason: impl ToString) -> ModelError {
    ModelError::Unreadable {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|e| unreadable(path, e))
}

/// Refuses bytes that cannot be a safetensors file before its parser sees them, saying why: fewer
/// than the 8 bytes of the header length, or a header length reaching past the end of the file
/// (a truncated or hostile file). Nothing is allocated from the claimed length.
pub fn check_framing(bytes: &[u8]) -> Result<(), String> {
    let Some(head) = bytes.first_chunk::<8>() else {
        return Err(format!(
            "{} bytes: too short for a safetensors file (its first 8 bytes are the header length)",
            bytes.len()
        ));
    };
    let claimed = u64::from_le_bytes(*head);
    let present = bytes.len() as u64 - 8;
    if claimed > present {
        return Err(format!(
            "the header claims {claimed} bytes but only {present} follow: a truncated file, or not safetensors"
        ));
    }
    Ok(())
}

/// [`check_framing`], then the whole file parsed (header JSON, every tensor's extent).
pub fn parse_safetensors(bytes: &[u8]) -> Result<SafeTensors<'_>, String> {
    check_framing(bytes)?;
    SafeTensors::deserialize(bytes).map_err(|e| format!("not a valid safetensors file: {e}"))
}

/// The tensors a `.safetensors` file declares, sorted by name. A truncated or malformed file is an
/// error naming the file.
pub fn read_header(path: &Path) -> Result<Vec<TensorInfo>, ModelError> {
    let bytes = read(path)?;
    let st = parse_safetensors(&bytes).map_err(|e| unreadable(path, e))?;
    Ok(infos(&st))
}

/// Name, shape and dtype of every tensor in `st`, sorted by name.
fn infos(st: &SafeTensors<'_>) -> Vec<TensorInfo> {
    let mut out: Vec<TensorInfo> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| TensorInfo {
            name,
            shape: view.shape().to_vec(),
            dtype: format!("{:?}", view.dtype()),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn float_dtype(d: safetensors::Dtype) -> Option<DType> {
    match d {
        safetensors::Dtype::F32 => Some(DType::F32),
        safetensors::Dtype::F16 => Some(DType::F16),
        safetensors::Dtype::BF16 => Some(DType::BF16),
        safetensors::Dtype::F64 => Some(DType::F64),
        _ => None,
    }
}

/// The tensors a model declares (BatchNorm running statistics included), sorted by name.
pub fn declared(varmap: &VarMap) -> Vec<(String, Vec<usize>)> {
    let data = lock_vars(varmap);
    let mut out: Vec<(String, Vec<usize>)> = data
        .iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec()))
        .collect();
    out.sort();
    out
}

/// A planned load: which file tensor goes to which variable, or the list of problems.
struct Plan {
    pairs: Vec<(String, bool)>,
    report: LoadReport,
}

fn plan(
    model: &Model,
    expected: &[(String, Vec<usize>)],
    found: &[TensorInfo],
    opts: LoadOptions,
) -> Result<Plan, Vec<Mismatch>> {
    let classifier = format!("{}.", model.classifier_name());
    let first_conv = format!("{}.weight", model.pretrained_cfg().first_conv);
    let skipped = |n: &str| opts.skip_classifier && n.starts_with(&classifier);
    let by_name: HashMap<&str, &TensorInfo> = found.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut problems = Vec::new();
    let mut report = LoadReport::default();
    let mut pairs = Vec::new();
    for (name, shape) in expected {
        if skipped(name) {
            continue;
        }
        let Some(t) = by_name.get(name.as_str()) else {
            problems.push(Mismatch::Missing {
                name: name.clone(),
                expected: shape.clone(),
            });
            continue;
        };
        if !matches!(t.dtype.as_str(), "F32" | "F16" | "BF16" | "F64") {
            problems.push(Mismatch::Dtype {
                name: name.clone(),
                found: t.dtype.clone(),
            });
            continue;
        }
        let fold = opts.fold_first_conv
            && *name == first_conv
            && shape.len() == 4
            && shape[1] == 1
            && t.shape.len() == 4
            && t.shape[1] == 3
            && t.shape[0] == shape[0]
            && t.shape[2..] == shape[2..];
        if t.shape != *shape && !fold {
            problems.push(Mismatch::Shape {
                name: name.clone(),
                expected: shape.clone(),
                found: t.shape.clone(),
            });
            continue;
        }
        if fold {
            report.adapted.push(name.clone());
        }
        pairs.push((name.clone(), fold));
    }
    let declared: std::collections::HashSet<&str> =
        expected.iter().map(|(n, _)| n.as_str()).collect();
    for t in found {
        if declared.contains(t.name.as_str()) && !skipped(&t.name) {
            continue;
        }
        let foreign = opts.ignore_prefix.is_some_and(|p| t.name.starts_with(p));
        if model.ignores_tensor(&t.name) || skipped(&t.name) || foreign {
            report.ignored.push(t.name.clone());
        } else {
            problems.push(Mismatch::Unexpected {
                name: t.name.clone(),
                found: t.shape.clone(),
            });
        }
    }
    if problems.is_empty() {
        report.loaded = pairs.len();
        Ok(Plan { pairs, report })
    } else {
        problems.sort_by(|a, b| a.name().cmp(b.name()));
        Err(problems)
    }
}

/// Every way the checkpoint at `path` does not fit `model` (empty when it fits).
pub fn check(
    model: &Model,
    varmap: &VarMap,
    path: &Path,
    opts: LoadOptions,
) -> Result<Vec<Mismatch>, ModelError> {
    let found = read_header(path)?;
    Ok(match plan(model, &declared(varmap), &found, opts) {
        Ok(_) => vec![],
        Err(problems) => problems,
    })
}

/// Loads the checkpoint at `path` into `varmap` after checking all of it; on any mismatch nothing is
/// changed and the error lists every offending tensor.
pub fn load(
    model: &Model,
    varmap: &VarMap,
    path: &Path,
    opts: LoadOptions,
) -> Result<LoadReport, ModelError> {
    let bytes = read(path)?;
    let st = parse_safetensors(&bytes).map_err(|e| unreadable(path, e))?;
    let found = infos(&st);
    let plan = plan(model, &declared(varmap), &found, opts).map_err(|problems| {
        ModelError::Checkpoint {
            path: path.display().to_string(),
            arch: model.arch().to_string(),
            problems,
        }
    })?;
    let data = lock_vars(varmap);
    // Convert everything first, then assign, so a failure part-way leaves the model untouched.
    let mut values = Vec::with_capacity(plan.pairs.len());
    for (name, fold) in &plan.pairs {
        let (Some(var), Ok(view)) = (data.get(name), st.tensor(name)) else {
            return Err(unreadable(
                path,
                format!("tensor `{name}` vanished while loading"),
            ));
        };
        let dtype = float_dtype(view.dtype())
            .ok_or_else(|| unreadable(path, format!("`{name}` is not a float tensor")))?;
        let mut t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), var.device())?
            .to_dtype(var.dtype())?;
        if *fold {
            t = t.sum_keepdim(1)?;
        }
        values.push((var.clone(), t));
    }
    for (var, t) in values {
        var.set(&t)?;
    }
    Ok(plan.report)
}

/// Writes tensors to `path` through a temporary file and a rename, so a crash never leaves a
/// half-written checkpoint.
pub fn save_atomic(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<(), ModelError> {
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(tensors, &tmp).map_err(|e| ModelError::Unwritable {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::Unwritable {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// The tensors of a `VarMap` by name (for [`save_atomic`]).
pub fn varmap_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    let data = lock_vars(varmap);
    data.iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect()
}

/// Reads the tensor `name` of a `.safetensors` file as f32; a missing file, tensor or a non-float
/// tensor is an error naming both.
pub fn read_tensor(
    path: &Path,
    name: &str,
    device: &candle_core::Device,
) -> Result<Tensor, ModelError> {
    let bytes = read(path)?;
    let st = parse_safetensors(&bytes).map_err(|e| unreadable(path, e))?;
    let view = st.tensor(name).map_err(|_| {
        let mut names = st.names();
        names.sort();
        let names: Vec<String> = names.into_iter().map(|n| n.to_string()).collect();
        unreadable(
            path,
            format!("no tensor named `{name}` (found: {})", names.join(", ")),
        )
    })?;
    let dtype = float_dtype(view.dtype()).ok_or_else(|| {
        unreadable(
            path,
            format!("`{name}` is {:?}, not a float tensor", view.dtype()),
        )
    })?;
    Ok(Tensor::from_raw_buffer(view.data(), dtype, view.shape(), device)?.to_dtype(DType::F32)?)
}

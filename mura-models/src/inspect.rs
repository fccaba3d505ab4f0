//! The zoo at a glance and a checkpoint run from outside, as `mura model` shows them: every
//! architecture with its input, parameters and timm tag; a checkpoint's eval-mode logits of a
//! tensor read from a file (how timm parity is checked by hand).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use serde::Serialize;

use crate::checkpoint::{self, LoadOptions};
use crate::{Arch, Model, ModelConfig, ModelError};

/// One architecture of the zoo.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZooEntry {
    #[serde(serialize_with = "arch_name")]
    pub arch: Arch,
    pub input_size: usize,
    pub in_channels: usize,
    /// Trainable parameters.
    pub params: usize,
    /// Channels of the last feature map (what the head reads).
    pub num_features: usize,
    /// The timm model its weights and tensor names come from.
    pub timm_tag: Option<String>,
}

fn arch_name<S: serde::Serializer>(arch: &Arch, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(arch.name())
}

/// Every architecture, each built (on the CPU, uninitialised) from `config(arch)`.
pub fn zoo(config: impl Fn(Arch) -> ModelConfig) -> Result<Vec<ZooEntry>, ModelError> {
    Arch::ALL
        .iter()
        .map(|&arch| {
            let config = config(arch);
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let model = Model::new(&config, vb)?;
            let params = model
                .trainable_vars(&varmap)
                .iter()
                .map(|(_, v)| v.elem_count())
                .sum();
            Ok(ZooEntry {
                arch,
                input_size: config.input_size(),
                in_channels: config.in_channels,
                params,
                num_features: model.num_features(),
                timm_tag: arch.timm_tag(),
            })
        })
        .collect()
}

/// What [`forward_file`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForwardReport {
    /// The shape of the logits written.
    pub dims: Vec<usize>,
    /// Tensors loaded from the checkpoint.
    pub loaded: usize,
    /// Checkpoint tensors accepted and not used.
    pub ignored: usize,
}

/// Loads `weights` into `model` (checked whole first; without a file the model keeps the
/// weights it has), runs it in eval mode on the tensor `input` of the safetensors file `input`,
/// and writes the result as the tensor `logits` of `out`.
pub fn forward_file(
    model: &Model,
    varmap: &VarMap,
    weights: Option<&Path>,
    input: &Path,
    out: &Path,
) -> Result<ForwardReport, ModelError> {
    let report = match weights {
        Some(w) => checkpoint::load(model, varmap, w, LoadOptions::default())?,
        None => checkpoint::LoadReport::default(),
    };
    let x = checkpoint::read_tensor(input, "input", &Device::Cpu)?;
    let logits = model.forward(&x, false).map_err(|e| ModelError::Forward {
        arch: model.arch().to_string(),
        path: input.display().to_string(),
        reason: e.to_string(),
    })?;
    let dims = logits.dims().to_vec();
    checkpoint::save_atomic(&HashMap::from([("logits".to_string(), logits)]), out)?;
    Ok(ForwardReport {
        dims,
        loaded: report.loaded,
        ignored: report.ignored.len(),
    })
}

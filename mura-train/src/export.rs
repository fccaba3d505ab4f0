//! `mura export`: a trained run as an ONNX file, with what a runtime needs to use it written in
//! the file's metadata (the preprocessing, the decision threshold, the temperature), or an
//! architecture of the zoo with given or seeded weights (to benchmark or check a runtime).

use std::path::{Path, PathBuf};

use candle_core::Device;
use mura_models::checkpoint::{self, LoadOptions};
use mura_models::onnx::{OnnxOptions, to_onnx};
use mura_models::{Model, ModelConfig};
use serde::Serialize;

use crate::TrainError;
use crate::config::RunConfig;
use crate::ensemble::EnsembleDef;
use crate::io::write_durable;
use crate::run::{Weights, files, preprocess};
use crate::trained::TrainedRun;

/// How to export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// The ONNX operator set ([`mura_models::onnx::OPSETS`]).
    pub opset: i64,
    /// Also output the last feature map (`features`), for class activation maps.
    pub with_features: bool,
    /// Which checkpoint of a run.
    pub weights: Weights,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            opset: mura_models::onnx::DEFAULT_OPSET,
            with_features: false,
            weights: Weights::Final,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportReport {
    pub out: PathBuf,
    pub arch: String,
    pub opset: i64,
    pub bytes: usize,
    pub nodes: usize,
    pub ops: Vec<String>,
    /// Numbers stored as weights.
    pub weights: usize,
    pub outputs: Vec<String>,
    pub metadata: Vec<(String, String)>,
}

/// Exports the run (or refuses an ensemble, naming its members) in `dir` to `out`.
pub fn export_run(
    dir: &Path,
    out: &Path,
    options: &ExportOptions,
) -> Result<ExportReport, TrainError> {
    if dir.join(files::ENSEMBLE).is_file() {
        let def = EnsembleDef::load(dir)?;
        let members: Vec<String> = def
            .members
            .iter()
            .map(|m| dir.join(m).display().to_string())
            .collect();
        return Err(TrainError::Input {
            path: dir.to_path_buf(),
            reason: format!(
                "an ensemble ({}) is not one network: export each member with `mura export MEMBER --out FILE` (members: {})",
                def.mode.as_str(),
                members.join(", ")
            ),
        });
    }
    let run = TrainedRun::open(dir, options.weights, Some("cpu"))?;
    let mut metadata = run_metadata(&run.config, &run.model);
    metadata.push(("mura.run".into(), run_name(dir)));
    metadata.push((
        "mura.weights".into(),
        format!("{:?}", run.weights).to_lowercase(),
    ));
    if let Some(t) = &run.threshold {
        metadata.push(("mura.threshold".into(), t.value.to_string()));
        metadata.push((
            "mura.threshold_criterion".into(),
            format!("{:?}", t.criterion).to_lowercase(),
        ));
    }
    let temperature = run.calibration.map(|c| c.temperature.temperature);
    if let Some(t) = temperature {
        metadata.push(("mura.temperature".into(), t.to_string()));
    }
    write(&run.model, out, options, temperature, metadata)
}

/// Exports the zoo's `config` with the weights of `weights` (a `.safetensors` checkpoint, timm's
/// or ours), or seeded from `seed` without one.
pub fn export_model(
    config: &ModelConfig,
    weights: Option<&Path>,
    seed: u64,
    out: &Path,
    options: &ExportOptions,
) -> Result<ExportReport, TrainError> {
    let (model, varmap) = Model::with_seed(config, seed, &Device::Cpu)?;
    let source = match weights {
        Some(w) => {
            checkpoint::load(&model, &varmap, w, LoadOptions::default())?;
            w.display().to_string()
        }
        None => format!("seed {seed}"),
    };
    let model = model.for_inference(&varmap)?;
    let metadata = vec![("mura.weights".to_string(), source)];
    write(&model, out, options, None, metadata)
}

fn write(
    model: &Model,
    out: &Path,
    options: &ExportOptions,
    temperature: Option<f64>,
    metadata: Vec<(String, String)>,
) -> Result<ExportReport, TrainError> {
    let onnx = OnnxOptions {
        opset: options.opset,
        with_features: options.with_features,
        temperature,
        metadata,
    };
    let e = to_onnx(model, &onnx)?;
    write_durable(out, &e.bytes)?;
    let mut outputs = vec!["logits".to_string(), "probability".to_string()];
    if options.with_features {
        outputs.push("features".into());
    }
    Ok(ExportReport {
        out: out.to_path_buf(),
        arch: model.arch().to_string(),
        opset: options.opset,
        bytes: e.bytes.len(),
        nodes: e.nodes,
        ops: e.ops.into_iter().collect(),
        weights: e.weights,
        outputs,
        metadata: e.metadata,
    })
}

fn run_name(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The run's preprocessing, as metadata a runtime can follow: resize mode and filter, and the
/// augmentations that are part of the preprocessing (windowing, CLAHE at probability 1).
fn run_metadata(config: &RunConfig, model: &Model) -> Vec<(String, String)> {
    let pre = preprocess(config, model);
    let json = |v: serde_json::Result<String>| v.unwrap_or_default();
    let always = config.data.augment.config().always();
    vec![
        ("mura.resize".into(), json(serde_json::to_string(&pre.mode))),
        (
            "mura.filter".into(),
            json(serde_json::to_string(&pre.filter)),
        ),
        (
            "mura.window".into(),
            json(serde_json::to_string(&always.window)),
        ),
        (
            "mura.clahe".into(),
            json(serde_json::to_string(&always.clahe)),
        ),
    ]
}

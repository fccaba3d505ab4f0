//! ONNX export: a model of the zoo, in evaluation mode, as an ONNX graph any runtime reads
//! (ONNX Runtime, tract, TensorRT, OpenVINO). BatchNorms folded into their convolutions stay
//! folded; the others become `BatchNormalization` nodes with their running statistics.
//!
//! The graph has one input, `input` (batch × channels × size × size, f32, the batch axis
//! symbolic), and the outputs `logits` (batch × classes), `probability` (the sigmoid of the
//! logits for one class, the softmax for several, after dividing them by the temperature when
//! one is given) and, when asked, `features`: the last feature map, from which a runtime draws
//! the class activation map (with a global average pool and a linear head, CAM equals Grad-CAM).
//! The model's input size, channels and normalisation, and whatever the caller adds (the run's
//! resize and threshold), are written in the file's metadata.
//!
//! Operators used: Conv, Relu, BatchNormalization, MaxPool, AveragePool, GlobalAveragePool,
//! GlobalMaxPool, Flatten, Concat, Add, Mul, Div, Gemm, Sigmoid, Softmax, Identity, and for the custom
//! CNN's self-attention Reshape, Shape, Transpose and MatMul; every one with the same meaning from
//! opset 13 to 21.

pub(crate) mod graph;
pub mod proto;
pub(crate) mod zoo;

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use candle_core::{DType, Tensor};
use prost::Message;

use crate::{Model, ModelError};
use graph::Graph;
use proto::{
    Dimension, DimensionValue, GraphProto, ModelProto, OperatorSetIdProto, StringStringEntryProto,
    TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto, data_type,
};

/// The operator sets an export can target.
pub const OPSETS: RangeInclusive<i64> = 13..=21;
/// The operator set written unless told otherwise.
pub const DEFAULT_OPSET: i64 = 17;

/// What to write besides the network.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxOptions {
    /// The default-domain operator set (see [`OPSETS`]).
    pub opset: i64,
    /// Also output the last feature map as `features`.
    pub with_features: bool,
    /// The logits are divided by it before `probability` (a fitted temperature).
    pub temperature: Option<f64>,
    /// Extra metadata entries (key, value).
    pub metadata: Vec<(String, String)>,
}

impl Default for OnnxOptions {
    fn default() -> Self {
        Self {
            opset: DEFAULT_OPSET,
            with_features: false,
            temperature: None,
            metadata: Vec::new(),
        }
    }
}

/// An exported model.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// The ONNX file's bytes.
    pub bytes: Vec<u8>,
    /// Nodes of the graph.
    pub nodes: usize,
    /// The operators it uses.
    pub ops: BTreeSet<String>,
    /// Numbers stored as weights (the folded ones counted once).
    pub weights: usize,
    /// The shape of `features` for one image.
    pub feature_dims: Vec<usize>,
    /// Its metadata as written.
    pub metadata: Vec<(String, String)>,
}

/// The IR version that goes with `opset` (the oldest that allows it, for older readers).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

fn tensor_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(n) => DimensionValue::DimValue(*n as i64),
                None => DimensionValue::DimParam("batch".into()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
        doc_string: String::new(),
    }
}

/// Writes `model` (in evaluation mode) as an ONNX model: see the module's description.
pub fn to_onnx(model: &Model, options: &OnnxOptions) -> Result<Exported, ModelError> {
    let arch = model.arch().to_string();
    let fail = |reason: String| ModelError::Export {
        arch: arch.clone(),
        reason,
    };
    if !OPSETS.contains(&options.opset) {
        return Err(fail(format!(
            "opset {} is not supported (from {} to {})",
            options.opset,
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    let config = model.config();
    let (c, s) = (config.in_channels, config.input_size());
    let probe = Tensor::zeros((1, c, s, s), DType::F32, &candle_core::Device::Cpu)?;
    let feature_dims = model.forward_features(&probe, false)?.dims()[1..].to_vec();

    let mut g = Graph::default();
    let input = g.input("input");
    let (features, logits) = model
        .onnx(&mut g, &input)
        .map_err(|e| fail(e.to_string()))?;
    // The outputs under their documented names.
    let logits = g.node("Identity", "logits", &[&logits], vec![]);
    let features = match options.with_features {
        true => g.node("Identity", "features", &[&features], vec![]),
        false => features,
    };
    let scaled = match options.temperature {
        Some(t) if t.is_finite() && t > 0.0 && t != 1.0 => {
            let t = Tensor::new(&[t as f32], &candle_core::Device::Cpu)?;
            let t = g.weight("temperature", &t)?;
            g.binary("Div", &logits, &t, "logits_over_temperature")
        }
        Some(t) if !(t.is_finite() && t > 0.0) => {
            return Err(fail(format!("temperature {t} is not a positive number")));
        }
        _ => logits.clone(),
    };
    let probability = if config.num_classes == 1 {
        g.node("Sigmoid", "probability", &[&scaled], vec![])
    } else {
        g.softmax(&scaled, "probability")
    };
    let named = [(&logits, "logits"), (&probability, "probability")];
    if let Some((got, want)) = named.iter().find(|(got, want)| got.as_str() != *want) {
        return Err(fail(format!("output `{want}` came out as `{got}`")));
    }
    let classes = config.num_classes;
    let mut outputs = vec![
        tensor_info(&logits, &[None, Some(classes)]),
        tensor_info(&probability, &[None, Some(classes)]),
    ];
    if options.with_features {
        let mut dims = vec![None];
        dims.extend(feature_dims.iter().map(|&d| Some(d)));
        outputs.push(tensor_info(&features, &dims));
    }
    let mut metadata = model_metadata(model);
    metadata.extend(options.metadata.iter().cloned());
    let ops: BTreeSet<String> = g.nodes.iter().map(|n| n.op_type.clone()).collect();
    let weights = g
        .initializers
        .iter()
        .map(|t| t.dims.iter().product::<i64>() as usize)
        .sum();
    let nodes = g.nodes.len();
    let proto = ModelProto {
        ir_version: ir_version(options.opset),
        producer_name: "mura".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: String::new(),
        model_version: 1,
        doc_string: format!("{arch}: abnormality classifier for musculoskeletal radiographs"),
        graph: Some(GraphProto {
            node: g.nodes,
            name: config.run_name(),
            initializer: g.initializers,
            doc_string: String::new(),
            input: vec![tensor_info(&input, &[None, Some(c), Some(s), Some(s)])],
            output: outputs,
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: options.opset,
        }],
        metadata_props: metadata
            .iter()
            .map(|(key, value)| StringStringEntryProto {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
    };
    Ok(Exported {
        bytes: proto.encode_to_vec(),
        nodes,
        ops,
        weights,
        feature_dims,
        metadata,
    })
}

/// What the model says of its input: architecture, size, channels, normalisation.
fn model_metadata(model: &Model) -> Vec<(String, String)> {
    let cfg = model.pretrained_cfg();
    let config = model.config();
    let c = config.in_channels.min(3);
    let list = |v: &[f32]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let entries = [
        ("mura.arch", model.arch().to_string()),
        ("mura.model", config.run_name()),
        ("mura.num_classes", config.num_classes.to_string()),
        ("mura.input_size", config.input_size().to_string()),
        ("mura.channels", config.in_channels.to_string()),
        ("mura.mean", list(&cfg.mean[..c])),
        ("mura.std", list(&cfg.std[..c])),
        ("mura.last_feature_map", model.last_feature_map()),
    ];
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

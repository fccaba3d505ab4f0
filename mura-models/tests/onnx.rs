//! Every architecture of the zoo exported to ONNX and run by tract (a pure-Rust ONNX runtime):
//! its logits, probabilities and last feature map agree with mura's own forward. Tolerance:
//! |tract − mura| ≤ 1e-4 · max(1, largest |mura| value of that output), f32 sums in another order.
//! Inputs are reduced (64×64, 75×75 for Inception-v3) to keep the test short; the widths and
//! depths are the real ones.

#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use mura_models::onnx::{OnnxOptions, proto::ModelProto, to_onnx};
use mura_models::{
    Arch, CnnConfig, HeadConfig, LocalPool, Model, ModelConfig, ModelError, Readout,
};
use prost::Message;
use tract_onnx::prelude::{
    Datum, Framework, InferenceFact, InferenceModelExt, IntoTValue, Tensor as TractTensor, tvec,
};
use tract_onnx::tract_core::model::IntoRunnable;

const TOLERANCE: f32 = 1e-4;

/// Running statistics away from 0 and 1, so that BatchNorm (folded or not) is not an identity.
fn spread_running_stats(varmap: &VarMap) {
    let data = varmap.data().lock().unwrap();
    for (name, var) in data.iter() {
        let n = var.elem_count();
        let phase = name.len() as f32;
        let v: Vec<f32> = (0..n)
            .map(|i| {
                let s = ((i as f32) * 0.37 + phase).sin();
                if name.ends_with("running_var") {
                    1.0 + 0.5 * s
                } else if name.ends_with("running_mean") {
                    0.1 * s
                } else if name.ends_with("gamma") {
                    // The self-attention's residual weight, 0 when new.
                    0.5 + s
                } else {
                    f32::NAN
                }
            })
            .collect();
        if v.iter().all(|x| x.is_finite()) {
            var.set(&Tensor::from_vec(v, var.shape(), var.device()).unwrap())
                .unwrap();
        }
    }
}

fn input(n: usize, c: usize, s: usize) -> Tensor {
    let v: Vec<f32> = (0..n * c * s * s)
        .map(|i| ((i as f32) * 0.013).sin())
        .collect();
    Tensor::from_vec(v, (n, c, s, s), &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// A tract output's values in order.
fn plain(t: &TractTensor) -> Vec<f32> {
    t.to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= TOLERANCE * scale,
        "{what}: largest difference {worst} against a scale of {scale}"
    );
}

/// Exports `config`'s model (seeded, BatchNorm folded as `mura export` does unless `unfolded`),
/// runs the file in tract on a batch of `n`, and compares every output with mura's forward.
fn export_and_compare(config: &ModelConfig, n: usize, unfolded: bool) -> mura_models::Exported {
    let (model, varmap) = Model::with_seed(config, 7, &Device::Cpu).unwrap();
    spread_running_stats(&varmap);
    let model = match unfolded {
        true => model.detached(&varmap).unwrap(),
        false => model.for_inference(&varmap).unwrap(),
    };
    let options = OnnxOptions {
        with_features: true,
        temperature: Some(1.5),
        ..OnnxOptions::default()
    };
    let exported = to_onnx(&model, &options).unwrap();
    let (c, s) = (config.in_channels, config.input_size());
    let x = input(n, c, s);
    let features = model.forward_features(&x, false).unwrap();
    let logits = model.forward_head(&features, false).unwrap();
    let scaled = (logits.clone() / 1.5).unwrap();
    let probability = match config.num_classes {
        1 => candle_nn::ops::sigmoid(&scaled).unwrap(),
        _ => candle_nn::ops::softmax_last_dim(&scaled).unwrap(),
    };

    let plan = tract_onnx::onnx()
        .model_for_read(&mut exported.bytes.as_slice())
        .unwrap()
        .with_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), [n, c, s, s]))
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let x_tract = TractTensor::from_shape(&[n, c, s, s], &values(&x)).unwrap();
    let out = plan.run(tvec!(x_tract.into_tvalue())).unwrap();
    let got = |i: usize| plain(&out[i]);
    let arch = config.arch;
    assert_close(&format!("{arch} logits"), &got(0), &values(&logits));
    assert_close(
        &format!("{arch} probability"),
        &got(1),
        &values(&probability),
    );
    assert_close(&format!("{arch} features"), &got(2), &values(&features));
    assert_eq!(out[2].shape(), features.dims(), "{arch} features shape");
    exported
}

fn small(arch: Arch) -> ModelConfig {
    let size = if arch == Arch::InceptionV3 { 75 } else { 64 };
    ModelConfig {
        input_size: Some(size),
        ..ModelConfig::new(arch)
    }
}

#[test]
fn the_custom_cnns_export_and_run_in_tract() {
    for arch in [Arch::CustomCnn, Arch::AlexnetStyle, Arch::VggStyle] {
        export_and_compare(&small(arch), 2, false);
    }
}

#[test]
fn custom_cnn_variants_export_and_run_in_tract() {
    let base = CnnConfig {
        blocks: 3,
        filters: 8,
        input_size: 32,
        ..CnnConfig::custom_cnn()
    };
    let variants = [
        CnnConfig {
            attention: true,
            readout: Readout::GlobalAvg,
            ..base.clone()
        },
        CnnConfig {
            batch_norm: false,
            pool: Some(LocalPool::Avg),
            readout: Readout::GlobalMax,
            dense: vec![16, 8],
            ..base.clone()
        },
        CnnConfig {
            convs_per_block: 2,
            dilation: 2,
            stride: 2,
            pool: None,
            ..base.clone()
        },
    ];
    for cnn in variants {
        for num_classes in [1, 3] {
            let config = ModelConfig {
                input_size: Some(32),
                num_classes,
                cnn: Some(cnn.clone()),
                ..ModelConfig::new(Arch::CustomCnn)
            };
            export_and_compare(&config, 2, false);
        }
    }
}

#[test]
fn densenets_export_and_run_in_tract() {
    for arch in [Arch::DenseNet121, Arch::DenseNet169, Arch::DenseNet201] {
        export_and_compare(&small(arch), 2, false);
    }
}

#[test]
fn resnets_export_and_run_in_tract() {
    for arch in [Arch::ResNet18, Arch::ResNet34, Arch::ResNet50] {
        export_and_compare(&small(arch), 2, false);
    }
}

#[test]
fn inception_v3_exports_and_runs_in_tract() {
    export_and_compare(&small(Arch::InceptionV3), 2, false);
}

#[test]
fn unfolded_batch_norms_export_as_batch_normalization_nodes() {
    let e = export_and_compare(&small(Arch::ResNet18), 1, true);
    assert!(e.ops.contains("BatchNormalization"), "{:?}", e.ops);
    // Folded, none is left: ResNet's every BatchNorm follows a convolution.
    let e = export_and_compare(&small(Arch::ResNet18), 1, false);
    assert!(!e.ops.contains("BatchNormalization"), "{:?}", e.ops);
}

#[test]
fn every_head_exports() {
    for head in [
        HeadConfig::mlp_seed000(),
        HeadConfig::add_gate_seed002(),
        HeadConfig::default(),
    ] {
        let config = ModelConfig {
            head,
            ..small(Arch::ResNet18)
        };
        export_and_compare(&config, 2, false);
    }
}

#[test]
fn the_batch_axis_is_symbolic() {
    let config = small(Arch::ResNet18);
    let (model, varmap) = Model::with_seed(&config, 3, &Device::Cpu).unwrap();
    let model = model.for_inference(&varmap).unwrap();
    let e = to_onnx(&model, &OnnxOptions::default()).unwrap();
    let plan = tract_onnx::onnx()
        .model_for_read(&mut e.bytes.as_slice())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    for n in [1, 3] {
        let x = input(n, 3, 64);
        let want = model.forward(&x, false).unwrap();
        let x = TractTensor::from_shape(&[n, 3, 64, 64], &values(&x)).unwrap();
        let out = plan.run(tvec!(x.into_tvalue())).unwrap();
        assert_eq!(out[0].shape(), &[n, 1]);
        assert_close("logits", &plain(&out[0]), &values(&want));
    }
}

#[test]
fn the_file_carries_its_preprocessing_and_outputs() {
    let config = small(Arch::DenseNet121);
    let (model, _) = Model::with_seed(&config, 1, &Device::Cpu).unwrap();
    let options = OnnxOptions {
        opset: 13,
        metadata: vec![("mura.threshold".into(), "0.42".into())],
        ..OnnxOptions::default()
    };
    let e = to_onnx(&model, &options).unwrap();
    // Read back with tract's own copy of onnx.proto, not ours.
    let theirs = tract_onnx::pb::ModelProto::decode(e.bytes.as_slice()).unwrap();
    assert_eq!(theirs.ir_version, 7);
    assert_eq!(theirs.opset_import[0].version, 13);
    let meta: std::collections::HashMap<_, _> = theirs
        .metadata_props
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_str()))
        .collect();
    assert_eq!(meta["mura.arch"], "densenet121");
    assert_eq!(meta["mura.input_size"], "64");
    assert_eq!(meta["mura.mean"], "0.485,0.456,0.406");
    assert_eq!(meta["mura.threshold"], "0.42");
    let graph = theirs.graph.unwrap();
    let names = |v: &[tract_onnx::pb::ValueInfoProto]| -> Vec<String> {
        v.iter().map(|i| i.name.clone()).collect()
    };
    assert_eq!(names(&graph.input), ["input"]);
    assert_eq!(names(&graph.output), ["logits", "probability"]);
    // Ours decodes what we wrote, too.
    let ours = ModelProto::decode(e.bytes.as_slice()).unwrap();
    assert_eq!(ours.graph.unwrap().node.len(), e.nodes);
    assert_eq!(e.feature_dims, [1024, 2, 2]);
}

#[test]
fn bad_options_are_refused_with_the_reason() {
    let (model, _) = Model::with_seed(&small(Arch::ResNet18), 1, &Device::Cpu).unwrap();
    for (options, want) in [
        (
            OnnxOptions {
                opset: 9,
                ..OnnxOptions::default()
            },
            "opset 9 is not supported (from 13 to 21)",
        ),
        (
            OnnxOptions {
                temperature: Some(-1.0),
                ..OnnxOptions::default()
            },
            "temperature -1 is not a positive number",
        ),
    ] {
        let err = to_onnx(&model, &options).unwrap_err();
        assert!(matches!(err, ModelError::Export { .. }), "{err:?}");
        assert!(err.to_string().contains(want), "{err}");
    }
}

#[test]
fn one_channel_models_export() {
    let config = ModelConfig {
        in_channels: 1,
        ..small(Arch::CustomCnn)
    };
    let e = export_and_compare(&config, 2, false);
    let meta: std::collections::HashMap<_, _> = e.metadata.iter().cloned().collect();
    assert_eq!(meta["mura.channels"], "1");
    assert_eq!(meta["mura.mean"], "0.485");
}

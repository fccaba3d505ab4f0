//! The contract every architecture keeps, freezing, and checkpoint errors.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use mura_models::checkpoint::{self, LoadOptions, Mismatch};
use mura_models::{Arch, HeadConfig, Model, ModelConfig, ModelError, Trainable, summarize};

use crate::common::{alternating_targets, bce_with_logits, det_tensor, to_vec};

/// Small but valid sizes so the contract runs in seconds.
fn small(arch: Arch) -> ModelConfig {
    ModelConfig {
        input_size: Some(if arch == Arch::InceptionV3 { 75 } else { 64 }),
        ..ModelConfig::new(arch)
    }
}

fn sgd_step(model: &Model, varmap: &VarMap, loss: &Tensor, lr: f64) {
    let grads = loss.backward().unwrap();
    for (name, var) in model.trainable_vars(varmap) {
        if let Some(g) = grads.get(var.as_tensor()) {
            var.set(&(var.as_tensor() - (g * lr).unwrap()).unwrap())
                .unwrap();
        } else {
            panic!("no gradient for trainable {name}");
        }
    }
}

/// Every architecture: output shape, finite values, `num_features`, stage names and last feature
/// map, seeded initialisation (same seed → same logits), save → load round-trip through
/// `checkpoint::load`, and one SGD step that lowers the loss on a fixed tiny batch.
#[test]
fn contract_over_every_architecture() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    for arch in Arch::ALL {
        let config = small(arch);
        let (model, varmap) = Model::with_seed(&config, 1, &dev).unwrap();
        let s = config.input_size();
        let x = det_tensor(&[4, config.in_channels, s, s], 2, &dev);
        let features = model.forward_features(&x, false).unwrap();
        let logits = model.forward_head(&features, false).unwrap();
        assert_eq!(logits.dims(), &[4, 1], "{arch}");
        let values = to_vec(&logits);
        assert!(values.iter().all(|v| v.is_finite()), "{arch}: {values:?}");
        let read = if arch.cnn_preset().is_some() && features.dims()[2] > 1 {
            features.flatten_from(1).unwrap().dim(1).unwrap()
        } else {
            features.dim(1).unwrap()
        };
        assert_eq!(read, model.num_features(), "{arch}");
        assert_eq!(
            model.last_feature_map(),
            *model.stage_names().last().unwrap()
        );

        // Same seed, same model; another seed, another model.
        let (again, _) = Model::with_seed(&config, 1, &dev).unwrap();
        assert_eq!(
            to_vec(&again.forward(&x, false).unwrap()),
            values,
            "{arch}: seeded init"
        );
        let (other, other_vars) = Model::with_seed(&config, 2, &dev).unwrap();
        assert_ne!(to_vec(&other.forward(&x, false).unwrap()), values, "{arch}");

        // Save → load into the other model → same outputs.
        let path = dir.path().join(format!("{arch}.safetensors"));
        checkpoint::save_atomic(&checkpoint::varmap_tensors(&varmap), &path).unwrap();
        let report = checkpoint::load(&other, &other_vars, &path, LoadOptions::default()).unwrap();
        assert_eq!(report.loaded, checkpoint::declared(&varmap).len());
        assert_eq!(
            to_vec(&other.forward(&x, false).unwrap()),
            values,
            "{arch}: reloaded"
        );

        // A step of gradient descent lowers the training loss (same dropout masks each time). Tiny
        // train-mode batches make the loss sharp, so the step backs off from 1e-3 if needed.
        let t = alternating_targets(4, 1, &dev);
        let loss = || {
            model.set_seed(11);
            bce_with_logits(&model.forward(&x, true).unwrap(), &t)
        };
        let before = loss();
        let b = before.to_scalar::<f32>().unwrap();
        let saved: Vec<(candle_core::Var, Tensor)> = model
            .trainable_vars(&varmap)
            .into_iter()
            .map(|(_, v)| {
                let copy = v.as_tensor().copy().unwrap();
                (v, copy)
            })
            .collect();
        let grads = before.backward().unwrap();
        let mut a = f32::INFINITY;
        for lr in [1e-3, 1e-4, 1e-5, 1e-6, 1e-7] {
            for (v, orig) in &saved {
                let g = grads.get(v.as_tensor()).unwrap();
                v.set(&(orig - (g * lr).unwrap()).unwrap()).unwrap();
            }
            a = loss().to_scalar::<f32>().unwrap();
            if a < b {
                break;
            }
        }
        assert!(a < b, "{arch}: loss {b} → {a}");
    }
}

#[test]
fn every_head_builds_and_counts_its_parameters() {
    let dev = Device::Cpu;
    for head in [
        HeadConfig::default(),
        HeadConfig::mlp_seed000(),
        HeadConfig::mlp_seed003(),
        HeadConfig::add_gate_seed002(),
    ] {
        let config = ModelConfig {
            head: head.clone(),
            ..small(Arch::ResNet18)
        };
        let (model, varmap) = Model::with_seed(&config, 3, &dev).unwrap();
        model
            .forward(&det_tensor(&[2, 3, 64, 64], 4, &dev), false)
            .unwrap();
        let summary = summarize(&model, &varmap, &dev).unwrap();
        let head_row = summary.rows.last().unwrap();
        assert_eq!(head_row.params, head.parameter_count(512, 1), "{head:?}");
    }
    // The seed-002 report's network (docs/recipes.md): Inception-v3 with the add-gate head on
    // global max pooling.
    let config = ModelConfig {
        head: HeadConfig::add_gate_seed002(),
        input_size: Some(75),
        ..ModelConfig::new(Arch::InceptionV3)
    };
    assert_eq!(config.run_name(), "inception_v3_addgate512_3in75");
    let (model, _) = Model::with_seed(&config, 3, &dev).unwrap();
    assert_eq!(
        model
            .forward(&det_tensor(&[1, 3, 75, 75], 5, &dev), false)
            .unwrap()
            .dims(),
        &[1, 1]
    );
}

/// `Trainable::From("layer4")`: only layer4 and the head reach the optimiser, earlier stages get
/// no gradient, run BatchNorm in eval mode (running statistics untouched) and keep their weights.
#[test]
fn freezing_from_a_named_stage() {
    let dev = Device::Cpu;
    let config = small(Arch::ResNet18);
    let (mut model, varmap) = Model::with_seed(&config, 5, &dev).unwrap();
    model
        .set_trainable(&Trainable::From("layer4".into()))
        .unwrap();
    let names: Vec<String> = model
        .trainable_vars(&varmap)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(!names.is_empty());
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("layer4.") || n.starts_with("fc.")),
        "{names:?}"
    );
    let snapshot = |name: &str| to_vec(varmap.data().lock().unwrap()[name].as_tensor());
    let frozen_w = snapshot("layer1.0.conv1.weight");
    let frozen_rm = snapshot("layer1.0.bn1.running_mean");
    let live_rm = snapshot("layer4.0.bn1.running_mean");
    let x = det_tensor(&[4, 3, 64, 64], 6, &dev);
    let loss = bce_with_logits(
        &model.forward(&x, true).unwrap(),
        &alternating_targets(4, 1, &dev),
    );
    let grads = loss.backward().unwrap();
    let conv1 = varmap.data().lock().unwrap()["conv1.weight"].clone();
    assert!(
        grads.get(conv1.as_tensor()).is_none(),
        "frozen stem received a gradient"
    );
    sgd_step(&model, &varmap, &loss, 1e-2);
    assert_eq!(snapshot("layer1.0.conv1.weight"), frozen_w);
    assert_eq!(snapshot("layer1.0.bn1.running_mean"), frozen_rm);
    assert_ne!(snapshot("layer4.0.bn1.running_mean"), live_rm);

    model.set_trainable(&Trainable::Head).unwrap();
    let names: Vec<String> = model
        .trainable_vars(&varmap)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["fc.bias", "fc.weight"]);

    let err = model
        .set_trainable(&Trainable::From("layer9".into()))
        .unwrap_err();
    assert!(matches!(err, ModelError::UnknownStage { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("layer9") && msg.contains("conv1, layer1, layer2, layer3, layer4"),
        "{msg}"
    );

    for (arch, stage) in [
        (Arch::DenseNet121, "features.denseblock4"),
        (Arch::InceptionV3, "Mixed_7a"),
        (Arch::CustomCnn, "blocks.4"),
    ] {
        let (mut m, _) = Model::with_seed(&small(arch), 1, &dev).unwrap();
        m.set_trainable(&Trainable::From(stage.into())).unwrap();
        assert!(m.frozen_stages() > 0, "{arch}");
    }
}

fn raw(t: &Tensor) -> Vec<u8> {
    to_vec(t).iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A checkpoint with a missing, an extra, a mis-shaped and an integer tensor: one error lists all
/// four with expected and found shapes, and the model keeps its weights. A truncated file and a
/// missing file are errors naming the path. `num_batches_tracked` counters are accepted.
#[test]
fn bad_checkpoints_list_every_offending_tensor() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let config = small(Arch::ResNet18);
    let (model, varmap) = Model::with_seed(&config, 7, &dev).unwrap();
    let good = checkpoint::varmap_tensors(&varmap);

    let mut bad: HashMap<String, Tensor> = good.clone();
    bad.remove("layer1.0.conv1.weight");
    bad.insert(
        "extra.weight".into(),
        Tensor::zeros((2, 2), DType::F32, &dev).unwrap(),
    );
    bad.insert(
        "fc.weight".into(),
        Tensor::zeros((2, 512), DType::F32, &dev).unwrap(),
    );
    bad.insert(
        "bn1.running_mean".into(),
        Tensor::zeros(64, DType::I64, &dev).unwrap(),
    );
    bad.insert(
        "bn1.num_batches_tracked".into(),
        Tensor::zeros((), DType::I64, &dev).unwrap(),
    );
    let path = dir.path().join("bad.safetensors");
    candle_core::safetensors::save(&bad, &path).unwrap();

    let (fresh, fresh_vars) = Model::with_seed(&config, 8, &dev).unwrap();
    let before = to_vec(fresh_vars.data().lock().unwrap()["fc.weight"].as_tensor());
    let problems = checkpoint::check(&fresh, &fresh_vars, &path, LoadOptions::default()).unwrap();
    assert_eq!(
        problems,
        vec![
            Mismatch::Dtype {
                name: "bn1.running_mean".into(),
                found: "I64".into()
            },
            Mismatch::Unexpected {
                name: "extra.weight".into(),
                found: vec![2, 2]
            },
            Mismatch::Shape {
                name: "fc.weight".into(),
                expected: vec![1, 512],
                found: vec![2, 512]
            },
            Mismatch::Missing {
                name: "layer1.0.conv1.weight".into(),
                expected: vec![64, 64, 3, 3]
            },
        ]
    );
    let err = checkpoint::load(&fresh, &fresh_vars, &path, LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    for needle in [
        "bad.safetensors",
        "resnet18",
        "4 tensor(s)",
        "layer1.0.conv1.weight",
        "[2, 512]",
        "extra.weight",
        "I64",
    ] {
        assert!(msg.contains(needle), "{needle} not in {msg}");
    }
    assert_eq!(
        to_vec(fresh_vars.data().lock().unwrap()["fc.weight"].as_tensor()),
        before
    );

    // A truncated file.
    let good_path = dir.path().join("good.safetensors");
    checkpoint::save_atomic(&good, &good_path).unwrap();
    let bytes = std::fs::read(&good_path).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = checkpoint::load(&fresh, &fresh_vars, &cut, LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, ModelError::Unreadable { .. }) && err.to_string().contains("cut.safetensors"),
        "{err}"
    );
    // Hostile framing: a header length far past the end of the file, and a file shorter than the
    // length field itself. Refused by name, before anything of the claimed size is allocated.
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(&bytes[8..]);
    let liar = dir.path().join("liar.safetensors");
    std::fs::write(&liar, &huge).unwrap();
    let tiny = dir.path().join("tiny.safetensors");
    std::fs::write(&tiny, b"abc").unwrap();
    for (path, needle) in [(&liar, "header claims"), (&tiny, "too short")] {
        let err = checkpoint::load(&fresh, &fresh_vars, path, LoadOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ModelError::Unreadable { .. }), "{msg}");
        assert!(msg.contains(needle), "{msg}");
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(msg.contains(name), "{msg}");
        let err = checkpoint::read_header(path).unwrap_err().to_string();
        assert!(err.contains(needle) && err.contains(name), "{err}");
    }
    let err = checkpoint::load(
        &fresh,
        &fresh_vars,
        &dir.path().join("nope.safetensors"),
        LoadOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("nope.safetensors"), "{err}");
    assert_eq!(
        to_vec(fresh_vars.data().lock().unwrap()["fc.weight"].as_tensor()),
        before
    );

    // The good one (plus timm's counters) loads.
    let mut with_counters = good.clone();
    with_counters.insert(
        "bn1.num_batches_tracked".into(),
        Tensor::zeros((), DType::I64, &dev).unwrap(),
    );
    checkpoint::save_atomic(&with_counters, &good_path).unwrap();
    let report = checkpoint::load(&fresh, &fresh_vars, &good_path, LoadOptions::default()).unwrap();
    assert_eq!(report.ignored, ["bn1.num_batches_tracked"]);
    assert_eq!(
        raw(fresh_vars.data().lock().unwrap()["fc.weight"].as_tensor()),
        raw(&good["fc.weight"])
    );
    assert!(
        Model::with_seed(&small(Arch::InceptionV3), 1, &dev)
            .unwrap()
            .0
            .ignores_tensor("AuxLogits.fc.weight")
    );
    assert!(!model.ignores_tensor("AuxLogits.fc.weight"));
}

/// An ImageNet-shaped checkpoint (1000 classes, RGB) loads into a one-logit gray model with
/// `skip_classifier` and `fold_first_conv`: the classifier is left alone and the stem's filters are
/// summed over the colour channels.
#[test]
fn pretrained_checkpoint_into_a_gray_one_logit_model() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let imagenet = ModelConfig {
        num_classes: 1000,
        ..small(Arch::ResNet18)
    };
    let (_, source) = Model::with_seed(&imagenet, 9, &dev).unwrap();
    let path = dir.path().join("imagenet.safetensors");
    checkpoint::save_atomic(&checkpoint::varmap_tensors(&source), &path).unwrap();
    let gray = ModelConfig {
        in_channels: 1,
        ..small(Arch::ResNet18)
    };
    let (model, vars) = Model::with_seed(&gray, 10, &dev).unwrap();
    let err = checkpoint::load(&model, &vars, &path, LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("conv1.weight") && msg.contains("fc.weight") && msg.contains("fc.bias"),
        "{msg}"
    );
    let fc_before = to_vec(vars.data().lock().unwrap()["fc.weight"].as_tensor());
    let report = checkpoint::load(
        &model,
        &vars,
        &path,
        LoadOptions {
            skip_classifier: true,
            fold_first_conv: true,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(report.adapted, ["conv1.weight"]);
    assert_eq!(report.ignored, ["fc.bias", "fc.weight"]);
    let data = vars.data().lock().unwrap();
    assert_eq!(to_vec(data["fc.weight"].as_tensor()), fc_before);
    let want = to_vec(
        &source.data().lock().unwrap()["conv1.weight"]
            .as_tensor()
            .sum_keepdim(1)
            .unwrap(),
    );
    assert_eq!(to_vec(data["conv1.weight"].as_tensor()), want);
}

#[test]
fn wrong_inputs_name_the_expected_shape() {
    let dev = Device::Cpu;
    for arch in [Arch::DenseNet121, Arch::InceptionV3, Arch::CustomCnn] {
        let (model, _) = Model::with_seed(&small(arch), 1, &dev).unwrap();
        let err = model
            .forward(
                &Tensor::zeros((1, 2, 64, 64), DType::F32, &dev).unwrap(),
                false,
            )
            .unwrap_err();
        assert!(matches!(err, ModelError::BadInput { .. }), "{arch}: {err}");
        assert!(err.to_string().contains("N×3×"), "{err}");
    }
    let (model, _) = Model::with_seed(&small(Arch::InceptionV3), 1, &dev).unwrap();
    let err = model
        .forward(
            &Tensor::zeros((1, 3, 60, 60), DType::F32, &dev).unwrap(),
            false,
        )
        .unwrap_err();
    assert!(err.to_string().contains("at least 75×75"), "{err}");
    let bad = ModelConfig {
        head: HeadConfig::mlp_seed000(),
        ..ModelConfig::new(Arch::CustomCnn)
    };
    assert!(matches!(bad.check(), Err(ModelError::BadConfig { .. })));
    assert!(Arch::from_name("densenet-121").is_err());
    assert_eq!(Arch::from_name("inception-v3").unwrap(), Arch::InceptionV3);
}

/// The summary of DenseNet-121 at 224: timm's 7,978,856 parameters at 1000 classes and about 2.9
/// GMACs per image (the figure timm and the DenseNet paper give).
#[test]
fn summary_counts_parameters_and_macs() {
    let dev = Device::Cpu;
    let config = ModelConfig {
        num_classes: 1000,
        ..ModelConfig::new(Arch::DenseNet121)
    };
    let (model, varmap) = Model::with_seed(&config, 1, &dev).unwrap();
    let s = summarize(&model, &varmap, &dev).unwrap();
    assert_eq!(s.params, 7_978_856);
    assert_eq!(s.rows.last().unwrap().output, [1000]);
    let gmacs = s.macs as f64 / 1e9;
    assert!((2.8..2.95).contains(&gmacs), "{gmacs}");
    let text = s.to_string();
    assert!(
        text.contains("features.denseblock4") && text.contains("7,978,856"),
        "{text}"
    );
}

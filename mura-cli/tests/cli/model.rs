//! `mura model`: the zoo list, summaries, checkpoint checks and forwards of a tensor file.

use super::*;
use candle_core::{DType, Device, Tensor};
use mura_models::checkpoint;
use mura_models::{Arch, Model, ModelConfig};

#[test]
fn list_shows_every_architecture_with_its_parameters() {
    let o = mura(&["model", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for arch in Arch::ALL {
        assert!(out.contains(arch.name()), "{arch} missing from\n{out}");
    }
    assert!(
        out.contains("6308609") && out.contains("densenet121.tv_in1k"),
        "{out}"
    );
}

#[test]
fn summary_prints_the_layer_table() {
    let o = mura(&["model", "resnet18", "--summary", "--image-size", "64"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("Total params: 11,177,025") && out.contains("layer4"),
        "{out}"
    );
    assert!(out.contains("GFLOPs"), "{out}");
    let o = mura(&["model", "resnet18", "--trainable-from", "layer9"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no stage `layer9`"), "{}", stderr(&o));
    let o = mura(&["model", "resnet-18"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("known: custom-cnn"), "{}", stderr(&o));
}

/// `--check` passes a fitting checkpoint and lists every mismatch of a bad one; `--forward`
/// writes the same logits the library computes.
fn forward(weights: &Path, input: &Path, out: &Path) -> Output {
    mura(&[
        "model",
        "resnet18",
        "--weights",
        weights.to_str().unwrap(),
        "--forward",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn check_and_forward_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let config = ModelConfig {
        input_size: Some(64),
        ..ModelConfig::new(Arch::ResNet18)
    };
    let (model, varmap) = Model::with_seed(&config, 4, &dev).unwrap();
    let mut tensors = checkpoint::varmap_tensors(&varmap);
    tensors.insert(
        "bn1.num_batches_tracked".into(),
        Tensor::zeros((), DType::I64, &dev).unwrap(),
    );
    let good = dir.path().join("good.safetensors");
    checkpoint::save_atomic(&tensors, &good).unwrap();
    let o = mura(&[
        "model",
        "resnet18",
        "--weights",
        good.to_str().unwrap(),
        "--check",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("fits resnet18"), "{}", stdout(&o));

    tensors.remove("fc.bias");
    tensors.insert(
        "layer1.0.conv1.weight".into(),
        Tensor::zeros((3, 3), DType::F32, &dev).unwrap(),
    );
    let bad = dir.path().join("bad.safetensors");
    checkpoint::save_atomic(&tensors, &bad).unwrap();
    let o = mura(&[
        "model",
        "resnet18",
        "--weights",
        bad.to_str().unwrap(),
        "--check",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let out = stdout(&o);
    assert!(
        out.contains("missing `fc.bias`")
            && out.contains("`layer1.0.conv1.weight`: expected [64, 64, 3, 3], found [3, 3]"),
        "{out}"
    );
    assert!(
        stderr(&o).contains("2 tensor(s) at fault"),
        "{}",
        stderr(&o)
    );

    let x = Tensor::rand(0f32, 1f32, (2, 3, 64, 64), &dev).unwrap();
    let input = dir.path().join("in.safetensors");
    let mut m = std::collections::HashMap::new();
    m.insert("input".to_string(), x.clone());
    checkpoint::save_atomic(&m, &input).unwrap();
    let out = dir.path().join("out.safetensors");
    let o = forward(&good, &input, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = checkpoint::read_tensor(&out, "logits", &dev).unwrap();
    let want = model.forward(&x, false).unwrap();
    let diff = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "{diff}");

    // A gray input for an RGB model, and a file without `input`.
    m.insert(
        "input".to_string(),
        Tensor::zeros((1, 1, 64, 64), DType::F32, &dev).unwrap(),
    );
    checkpoint::save_atomic(&m, &input).unwrap();
    let o = forward(&good, &input, &out);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("N×3×224×224"), "{}", stderr(&o));
    let o = forward(&good, &good, &out);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no tensor named `input`"),
        "{}",
        stderr(&o)
    );
}

//! The zoo against timm: tensor manifests of the full-size networks, forward and gradient parity of
//! reduced networks built with timm's own classes (`tools/zoo_fixtures.py`), finite-difference
//! gradient checks of every layer type, the contract over every architecture, freezing, and
//! checkpoint errors.

use std::collections::HashMap;

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mura_models::checkpoint;
use mura_models::layers::Noise;
use mura_models::{
    Arch, CnnConfig, DenseNet, DenseNetConfig, GlobalPool, Head, HeadConfig, InceptionA,
    InceptionB, InceptionC, InceptionD, InceptionE, Model, ModelConfig, ResNet, ResNetConfig,
};
use serde::Deserialize;

use crate::common::{
    alternating_targets, bce_with_logits, checked_device, det_tensor, fill_deterministic,
    max_rel_diff,
};

#[derive(Deserialize)]
struct ManifestEntry {
    tensors: Vec<(String, Vec<usize>, String)>,
    num_features: usize,
    pretrained_cfg: ManifestCfg,
}

#[derive(Deserialize)]
struct ManifestCfg {
    tag: String,
    hf_hub_id: String,
    input_size: Vec<usize>,
    interpolation: String,
    crop_pct: f64,
    mean: Vec<f32>,
    std: Vec<f32>,
    first_conv: String,
    classifier: String,
}

fn build(config: &ModelConfig, dtype: DType) -> (Model, VarMap) {
    let varmap = VarMap::new();
    let model = Model::new(
        config,
        VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu),
    )
    .unwrap();
    (model, varmap)
}

/// Our full-size DenseNet, ResNet and Inception-v3 declare exactly timm's tensors (names, shapes,
/// f32), apart from BatchNorm's `num_batches_tracked` counters, which are accepted and ignored; and
/// report timm's `num_features` and pretrained config.
#[test]
fn full_size_models_declare_timms_tensors() {
    let manifest: HashMap<String, ManifestEntry> =
        serde_json::from_str(include_str!("../fixtures/timm_manifest.json")).unwrap();
    let zoo: Vec<Arch> = Arch::ALL
        .into_iter()
        .filter(|a| a.cnn_preset().is_none())
        .collect();
    assert_eq!(zoo.len(), 7);
    for arch in zoo {
        let entry = &manifest[arch.name()];
        let config = ModelConfig {
            num_classes: 1000,
            ..ModelConfig::new(arch)
        };
        let (model, varmap) = build(&config, DType::F32);
        let ours = checkpoint::declared(&varmap);
        let mut theirs: Vec<(String, Vec<usize>)> = entry
            .tensors
            .iter()
            .filter(|(n, _, _)| !model.ignores_tensor(n))
            .map(|(n, s, d)| {
                assert_eq!(d, "float32", "{n}");
                (n.clone(), s.clone())
            })
            .collect();
        theirs.sort();
        let missing: Vec<_> = theirs
            .iter()
            .filter(|t| !ours.contains(t))
            .take(5)
            .collect();
        let extra: Vec<_> = ours
            .iter()
            .filter(|t| !theirs.contains(t))
            .take(5)
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{arch}: missing {missing:?}, extra {extra:?}"
        );
        assert_eq!(model.num_features(), entry.num_features, "{arch}");
        let cfg = model.pretrained_cfg();
        let want = &entry.pretrained_cfg;
        assert_eq!(cfg.tag.as_deref(), Some(want.tag.as_str()));
        assert_eq!(cfg.hf_hub_id.as_deref(), Some(want.hf_hub_id.as_str()));
        assert_eq!(cfg.input_size.to_vec(), want.input_size, "{arch}");
        assert_eq!(
            serde_json::to_value(cfg.interpolation).unwrap(),
            serde_json::Value::String(want.interpolation.clone())
        );
        assert!((cfg.crop_pct - want.crop_pct).abs() < 1e-9);
        for i in 0..3 {
            assert!(
                (cfg.mean[i] - want.mean[i]).abs() < 1e-6
                    && (cfg.std[i] - want.std[i]).abs() < 1e-6
            );
        }
        assert_eq!(cfg.first_conv, want.first_conv);
        assert_eq!(cfg.classifier, want.classifier);
    }
}

/// The PyTorch fixtures, from this crate's folder: where it was built, else the working
/// directory (a test binary carried to another machine, `tools/gpu-check.sh`).
fn fixtures() -> HashMap<String, Tensor> {
    let built = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/zoo_torch.safetensors"
    );
    let path = match std::path::Path::new(built).exists() {
        true => built,
        false => "tests/fixtures/zoo_torch.safetensors",
    };
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// Forward tolerance: 1e-4 of the largest output magnitude (f32 sums in a different order).
const FWD_TOL: f64 = 1e-4;
/// Gradient tolerance: 1e-3 of the largest gradient magnitude (deeper f32 chains).
const GRAD_TOL: f64 = 1e-3;

/// A backbone with a head, as the fixtures build them from timm's classes.
enum Reduced {
    DenseNet(DenseNet),
    ResNet(ResNet),
}

fn reduced_forward(net: &Reduced, head: &Head, x: &Tensor, train: bool) -> Tensor {
    let mut y = x.clone();
    let n = match net {
        Reduced::DenseNet(d) => d.num_stages(),
        Reduced::ResNet(r) => r.num_stages(),
    };
    for i in 0..n {
        y = match net {
            Reduced::DenseNet(d) => d.forward_stage(i, &y, train).unwrap(),
            Reduced::ResNet(r) => r.forward_stage(i, &y, train).unwrap(),
        };
    }
    head.forward(&y, &Noise::default(), train).unwrap()
}

/// Reduced DenseNet (growth 8, blocks 2-2-2-2) and ResNets (basic and bottleneck, widths 8-64)
/// agree with timm in eval and train mode; for two of them the BCE loss, the input gradient and
/// weight gradients agree too, and so do the BatchNorm running statistics after one train step.
#[test]
fn reduced_networks_match_timm() {
    mura_kernels::with_generic(false, reduced_networks)
}

/// The same fixtures through the generic paths (candle's tensor ops, as on a GPU).
#[test]
fn reduced_networks_match_timm_on_the_generic_paths() {
    mura_kernels::with_generic(true, reduced_networks)
}

fn reduced_networks() {
    let fx = fixtures();
    let dev = checked_device();
    struct Case {
        name: &'static str,
        in_seed: u64,
        w_seed: u64,
        grads: &'static [&'static str],
    }
    let cases = [
        Case {
            name: "densenet_tiny",
            in_seed: 11,
            w_seed: 21,
            grads: &[
                "features.conv0.weight",
                "features.denseblock2.denselayer1.conv2.weight",
                "classifier.weight",
            ],
        },
        Case {
            name: "resnet_basic",
            in_seed: 12,
            w_seed: 22,
            grads: &[],
        },
        Case {
            name: "resnet_bottleneck",
            in_seed: 13,
            w_seed: 23,
            grads: &[
                "conv1.weight",
                "layer1.0.downsample.0.weight",
                "layer4.0.conv3.weight",
                "fc.weight",
            ],
        },
    ];
    for case in cases {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let (net, head) = match case.name {
            "densenet_tiny" => {
                let cfg = DenseNetConfig {
                    growth: 8,
                    blocks: vec![2, 2, 2, 2],
                    bn_size: 4,
                };
                let d = DenseNet::new(&cfg, 3, vb.clone()).unwrap();
                let f = d.num_features();
                let h = Head::new(
                    &HeadConfig::default(),
                    GlobalPool::Avg,
                    f,
                    3,
                    "classifier",
                    vb,
                )
                .unwrap();
                (Reduced::DenseNet(d), h)
            }
            name => {
                let block = if name == "resnet_basic" {
                    mura_models::BlockKind::Basic
                } else {
                    mura_models::BlockKind::Bottleneck
                };
                let layers = if name == "resnet_basic" {
                    vec![2, 1, 1, 1]
                } else {
                    vec![1, 1, 1, 1]
                };
                let cfg = ResNetConfig {
                    block,
                    layers,
                    channels: vec![8, 16, 32, 64],
                };
                let r = ResNet::new(&cfg, 3, vb.clone()).unwrap();
                let f = r.num_features();
                let h = Head::new(&HeadConfig::default(), GlobalPool::Avg, f, 3, "fc", vb).unwrap();
                (Reduced::ResNet(r), h)
            }
        };
        fill_deterministic(&varmap, case.w_seed);
        let x = det_tensor(&[2, 3, 64, 64], case.in_seed, &dev);
        let eval = reduced_forward(&net, &head, &x, false);
        let d = max_rel_diff(&eval, &fx[&format!("{}.eval", case.name)]);
        assert!(d <= FWD_TOL, "{} eval: {d}", case.name);

        let xv = Var::from_tensor(&x).unwrap();
        let train = reduced_forward(&net, &head, xv.as_tensor(), true);
        let d = max_rel_diff(&train, &fx[&format!("{}.train", case.name)]);
        assert!(d <= FWD_TOL, "{} train: {d}", case.name);
        if case.grads.is_empty() {
            continue;
        }
        let loss = bce_with_logits(&train, &alternating_targets(2, 3, &dev));
        let d = max_rel_diff(
            &loss.reshape(1).unwrap(),
            &fx[&format!("{}.loss", case.name)],
        );
        assert!(d <= FWD_TOL, "{} loss: {d}", case.name);
        let grads = loss.backward().unwrap();
        let d = max_rel_diff(
            grads.get(xv.as_tensor()).unwrap(),
            &fx[&format!("{}.grad.input", case.name)],
        );
        assert!(d <= GRAD_TOL, "{} input gradient: {d}", case.name);
        let data = varmap.data().lock().unwrap();
        for p in case.grads {
            let g = grads.get(data[*p].as_tensor()).unwrap();
            let d = max_rel_diff(g, &fx[&format!("{}.grad.{p}", case.name)]);
            assert!(d <= GRAD_TOL, "{} gradient of {p}: {d}", case.name);
        }
        let (key, want) = fx
            .iter()
            .find(|(k, _)| k.starts_with(&format!("{}.after.", case.name)))
            .unwrap();
        let name = key.trim_start_matches(&format!("{}.after.", case.name));
        let d = max_rel_diff(data[name].as_tensor(), want);
        assert!(d <= FWD_TOL, "{} running stats of {name}: {d}", case.name);
    }
}

/// Each Inception block kind (A–E, BatchNorm eps 1e-3, asymmetric kernels), the whole Inception-v3
/// at 75×75 (eval) and the add-gate head agree with PyTorch.
#[test]
fn inception_blocks_and_add_gate_head_match_timm() {
    mura_kernels::with_generic(false, inception_blocks_and_add_gate_head)
}

/// The same fixtures through the generic paths.
#[test]
fn inception_blocks_and_add_gate_head_match_timm_on_the_generic_paths() {
    mura_kernels::with_generic(true, inception_blocks_and_add_gate_head)
}

fn inception_blocks_and_add_gate_head() {
    let fx = fixtures();
    let dev = Device::Cpu;
    let cases: [(&str, &[usize], u64, u64); 5] = [
        ("inception_a", &[2, 16, 5, 5], 14, 24),
        ("inception_b", &[2, 16, 5, 5], 15, 25),
        ("inception_c", &[2, 16, 5, 5], 16, 26),
        ("inception_d", &[2, 16, 5, 5], 17, 27),
        ("inception_e", &[2, 16, 3, 3], 18, 28),
    ];
    for (name, shape, in_seed, w_seed) in cases {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let block: Box<dyn ModuleT> = match name {
            "inception_a" => Box::new(InceptionA::new(16, 8, vb).unwrap()),
            "inception_b" => Box::new(InceptionB::new(16, vb).unwrap()),
            "inception_c" => Box::new(InceptionC::new(16, 8, vb).unwrap()),
            "inception_d" => Box::new(InceptionD::new(16, vb).unwrap()),
            _ => Box::new(InceptionE::new(16, vb).unwrap()),
        };
        fill_deterministic(&varmap, w_seed);
        let x = det_tensor(shape, in_seed, &dev);
        for mode in ["eval", "train"] {
            let y = block.forward_t(&x, mode == "train").unwrap();
            let d = max_rel_diff(&y, &fx[&format!("{name}.{mode}")]);
            assert!(d <= FWD_TOL, "{name} {mode}: {d}");
        }
    }

    let config = ModelConfig {
        num_classes: 5,
        input_size: Some(75),
        ..ModelConfig::new(Arch::InceptionV3)
    };
    let (model, varmap) = build(&config, DType::F32);
    fill_deterministic(&varmap, 29);
    let y = model
        .forward(&det_tensor(&[1, 3, 75, 75], 19, &dev), false)
        .unwrap();
    let d = max_rel_diff(&y, &fx["inception_v3_75.eval"]);
    assert!(d <= FWD_TOL, "inception_v3 at 75: {d}");

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let head = Head::new(
        &HeadConfig::AddGate {
            hidden: 8,
            dropout: 0.0,
        },
        GlobalPool::Max,
        16,
        1,
        "fc",
        vb,
    )
    .unwrap();
    fill_deterministic(&varmap, 30);
    let f = det_tensor(&[2, 16, 3, 3], 20, &dev);
    let d = max_rel_diff(
        &head.forward(&f, &Noise::default(), false).unwrap(),
        &fx["addgate_head.eval"],
    );
    assert!(d <= FWD_TOL, "add-gate head: {d}");
}

/// The whole Inception-v3 in train mode (batch statistics) at 107×107: logits, BCE loss and the
/// gradients of four weights from stem to classifier (first 4 filters each) agree with PyTorch, in
/// f64 to 1e-6. (In f32, BatchNorm over a batch of 2 amplifies rounding: the stem's gradient then
/// differs by about 2% on both sides alike.)
#[test]
fn inception_v3_trains_like_timm() {
    let fx = fixtures();
    let dev = Device::Cpu;
    let config = ModelConfig {
        num_classes: 2,
        input_size: Some(107),
        ..ModelConfig::new(Arch::InceptionV3)
    };
    let (model, varmap) = build(&config, DType::F64);
    fill_deterministic(&varmap, 32);
    let x = det_tensor(&[2, 3, 107, 107], 31, &dev)
        .to_dtype(DType::F64)
        .unwrap();
    let y = model.forward(&x, true).unwrap();
    let d = max_rel_diff(&y, &fx["inception_v3_107.train"]);
    assert!(d <= 1e-6, "train logits: {d}");
    let t = alternating_targets(2, 2, &dev)
        .to_dtype(DType::F64)
        .unwrap();
    let loss = bce_with_logits(&y, &t);
    let d = max_rel_diff(&loss.reshape(1).unwrap(), &fx["inception_v3_107.loss"]);
    assert!(d <= 1e-6, "loss: {d}");
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    for p in [
        "Conv2d_1a_3x3.conv.weight",
        "Mixed_6b.branch7x7dbl_3.conv.weight",
        "Mixed_7c.branch3x3_2b.conv.weight",
        "fc.weight",
    ] {
        let g = grads
            .get(data[p].as_tensor())
            .unwrap()
            .narrow(0, 0, 2)
            .unwrap();
        let want = fx[&format!("inception_v3_107.grad4.{p}")]
            .narrow(0, 0, 2)
            .unwrap();
        let d = max_rel_diff(&g, &want);
        assert!(d <= 1e-6, "gradient of {p}: {d}");
    }
}

/// A seeded model of `config` with 3 channels for `size`² inputs, and a deterministic batch of
/// two such images.
fn model_and_input(config: &ModelConfig, size: usize, seed: u64) -> (Model, VarMap, Tensor) {
    let config = ModelConfig {
        in_channels: 3,
        input_size: Some(size),
        ..config.clone()
    };
    let (model, varmap) = Model::with_seed(&config, seed, &Device::Cpu).unwrap();
    let x = det_tensor(&[2, 3, size, size], seed + 2, &Device::Cpu);
    (model, varmap, x)
}

/// A seeded 3-channel ResNet-18 at 64 px and a batch of two inputs for it.
fn resnet18_and_input() -> (Model, VarMap, Tensor) {
    model_and_input(&ModelConfig::new(Arch::ResNet18), 64, 3)
}

/// The inference copy gives the eval-mode outputs of the model it came from, records no graph,
/// and sees later updates of the weights (shared storage); ResNet-18 covers conv, BatchNorm,
/// pooling and the head.
#[test]
fn detached_model_predicts_the_same_without_a_graph() {
    let (model, varmap, x) = resnet18_and_input();
    let inference = model.detached(&varmap).unwrap();
    let (y, z) = (
        model.forward(&x, false).unwrap(),
        inference.forward(&x, false).unwrap(),
    );
    assert!(y.track_op(), "the variables' forward records a graph");
    assert!(!z.track_op(), "the detached forward records none");
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        z.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    // An update of the classifier shows through.
    let data = varmap.data().lock().unwrap();
    let fc = data.get("fc.bias").unwrap();
    fc.set(&(fc.as_tensor() + 1.0).unwrap()).unwrap();
    drop(data);
    let moved = inference.forward(&x, false).unwrap();
    let diff = (moved - z)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(diff.iter().all(|d| (d - 1.0).abs() < 1e-5), "{diff:?}");
}

/// BatchNorm folded into the convolutions (`Model::for_inference`) gives the eval-mode outputs to
/// within f32 rounding, with non-trivial running statistics, scales and shifts; training the folded
/// copy is refused. ResNet-18: stem, basic blocks (a BatchNorm with and one without the ReLU
/// fused) and the projection shortcuts. DenseNet-121: the stem and every bottleneck folded, and
/// the dense blocks run in place (one buffer, no concatenation) against the concatenating
/// forward of the model with variables. Inception-v3: every convolution of every block type.
/// The custom CNN: each block's convolutions, with BatchNorm and without (the ReLU alone fused).
#[test]
fn folded_batch_norm_predicts_the_same_and_refuses_to_train() {
    let (d_model, d_varmap, d_x) = model_and_input(&ModelConfig::new(Arch::DenseNet121), 64, 4);
    let (i_model, i_varmap, i_x) = model_and_input(&ModelConfig::new(Arch::InceptionV3), 75, 5);
    let cnn = ModelConfig::new(Arch::CustomCnn);
    let (c_model, c_varmap, c_x) = model_and_input(&cnn, 64, 6);
    let mut plain = cnn.clone();
    let mut plain_cnn = plain.cnn.clone().unwrap_or_else(CnnConfig::custom_cnn);
    plain_cnn.batch_norm = false;
    plain.cnn = Some(plain_cnn);
    let (p_model, p_varmap, p_x) = model_and_input(&plain, 64, 7);
    let (r_model, r_varmap, r_x) = resnet18_and_input();
    let resnet_bn = |n: &str| n.contains("bn") || n.contains("downsample.1");
    let densenet_bn = |n: &str| n.contains("norm");
    let inception_bn = |n: &str| n.contains(".bn.");
    for (model, varmap, x, is_bn, has_bn) in [
        (
            r_model,
            r_varmap,
            r_x,
            &resnet_bn as &dyn Fn(&str) -> bool,
            true,
        ),
        (d_model, d_varmap, d_x, &densenet_bn, true),
        (i_model, i_varmap, i_x, &inception_bn, true),
        (c_model, c_varmap, c_x, &inception_bn, true),
        (p_model, p_varmap, p_x, &inception_bn, false),
    ] {
        // Running statistics from a few training passes; scales and shifts away from 1 and 0.
        for _ in 0..3 {
            model.forward(&x, true).unwrap();
        }
        {
            let data = varmap.data().lock().unwrap();
            for (i, (name, var)) in data.iter().enumerate() {
                if is_bn(name) && (name.ends_with(".weight") || name.ends_with(".bias")) {
                    let n = var.as_tensor().dims1().unwrap();
                    let t = det_tensor(&[n], 100 + i as u64, &Device::Cpu);
                    let t = if name.ends_with(".weight") {
                        (t * 0.5).unwrap() + 1.0
                    } else {
                        t * 0.3
                    };
                    var.set(&t.unwrap()).unwrap();
                }
            }
        }
        // The features (every value of the last feature map) and the logits.
        let both = |m: &Model| {
            let f = m
                .forward_features(&x, false)
                .unwrap()
                .flatten_all()
                .unwrap();
            let y = m.forward(&x, false).unwrap().flatten_all().unwrap();
            Tensor::cat(&[f, y], 0).unwrap()
        };
        let want = both(&model);
        let folded = model.for_inference(&varmap).unwrap();
        let got = both(&folded);
        let (want, got) = (
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let arch = model.config().arch;
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = want
            .iter()
            .zip(&got)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            scale > 0.1,
            "{arch:?}: outputs too small to compare: {want:?}"
        );
        // Folding reorders f32 products through 20-120 layers: 1e-4 of the output scale.
        assert!(
            worst <= 1e-4 * scale,
            "{arch:?}: worst {worst} at scale {scale}"
        );
        if has_bn {
            let err = folded.forward(&x, true).unwrap_err().to_string();
            assert!(err.contains("folded"), "{err}");
        }
    }
}

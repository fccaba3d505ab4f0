//! Finite-difference gradient checks, in f64 and train mode, of every layer type the zoo writes or
//! wraps: rectangular/strided/dilated convolution with bias, BatchNorm (batch statistics), the stem
//! max pool and transition average pool, dense layers and transitions, basic and bottleneck residual
//! blocks, the five Inception blocks, the linear, MLP and add-gate heads with global average and
//! max pooling, and the custom CNN with self-attention.
//!
//! Central differences with h = 1e-6; agreement within 1e-6 + 1e-4·|gradient|.

use candle_core::{DType, Device, Module, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mura_models::layers::{ConvConfig, Noise, conv, conv_bn_act};
use mura_models::{
    Cnn, CnnConfig, DenseNet, DenseNetConfig, FilterGrowth, GlobalPool, Head, HeadConfig,
    InceptionA, InceptionB, InceptionC, InceptionD, InceptionE, KernelGrowth, LocalPool, Readout,
    ResNet, ResNetConfig,
};

use crate::common::det_uniform;

fn det64(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f64> = det_uniform(n, seed, 1).into_iter().map(f64::from).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Checks d(loss)/d(var) at a few entries of each var against central differences.
fn check(what: &str, loss: &dyn Fn() -> Tensor, vars: &[(String, Var)]) {
    let l = loss();
    let grads = l.backward().unwrap();
    let h = 1e-6;
    let mut checked = 0;
    for (name, var) in vars {
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{what}: no gradient reaches {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let orig = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let n = orig.len();
        let picks = [0, n / 3, n / 2, n - 1];
        for &i in picks.iter() {
            let mut v = orig.clone();
            let mut at = |delta: f64| {
                v[i] = orig[i] + delta;
                var.set(&Tensor::from_vec(v.clone(), var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss().to_scalar::<f64>().unwrap()
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            var.set(&Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            assert!(
                (fd - g[i]).abs() <= 1e-6 + 1e-4 * g[i].abs().max(fd.abs()),
                "{what}: d/d{name}[{i}] analytic {} vs finite difference {fd}",
                g[i]
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
}

/// Loss = Σ y·w with fixed weights w, so every output matters differently.
fn weighted_sum(y: &Tensor, seed: u64) -> Tensor {
    let w = det64(y.dims(), seed);
    (y * w).unwrap().sum_all().unwrap()
}

/// The input and a few parameters (sorted names, every `stride`-th weight tensor) as vars to check.
fn pick_vars(varmap: &VarMap, x: &Var, stride: usize) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data
        .keys()
        .filter(|n| !n.ends_with("running_mean") && !n.ends_with("running_var"))
        .collect();
    names.sort();
    let mut vars = vec![("input".to_string(), x.clone())];
    vars.extend(
        names
            .into_iter()
            .step_by(stride)
            .map(|n| (n.clone(), data[n].clone())),
    );
    vars
}

fn f64_vb(varmap: &VarMap) -> VarBuilder<'static> {
    VarBuilder::from_varmap(varmap, DType::F64, &Device::Cpu)
}

/// Fills the model's tensors with deterministic values of a sensible scale (f64).
fn fill(varmap: &VarMap, seed: u64) {
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (k, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let u: Vec<f64> = det_uniform(var.elem_count(), seed, k as u64)
            .into_iter()
            .map(f64::from)
            .collect();
        let v: Vec<f64> =
            if name.ends_with("running_var") || (dims.len() == 1 && name.ends_with("weight")) {
                u.iter().map(|x| 1.0 + 0.3 * x).collect()
            } else if dims.len() <= 1 {
                u.iter().map(|x| 0.1 * x).collect()
            } else {
                let fan_in = (var.elem_count() / dims[0]) as f64;
                u.iter().map(|x| x * (6.0 / fan_in).sqrt()).collect()
            };
        var.set(&Tensor::from_vec(v, dims.as_slice(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

#[test]
fn convolutions_and_batch_norm() {
    let varmap = VarMap::new();
    let vb = f64_vb(&varmap);
    let c1 = conv(
        3,
        4,
        ConvConfig::default()
            .kernel_hw(1, 3)
            .pad_hw(0, 1)
            .stride(2)
            .bias(true),
        vb.pp("a"),
    )
    .unwrap();
    let c2 = conv(
        4,
        5,
        ConvConfig::k(3).pad(2).dilation(2).bias(true),
        vb.pp("b"),
    )
    .unwrap();
    let cba = conv_bn_act(
        5,
        6,
        ConvConfig::default().kernel_hw(3, 1).pad_hw(1, 0),
        1e-3,
        vb.pp("c"),
    )
    .unwrap();
    fill(&varmap, 1);
    let x = Var::from_tensor(&det64(&[2, 3, 7, 6], 2)).unwrap();
    let loss = || {
        let y = c2.forward(&c1.forward(x.as_tensor()).unwrap()).unwrap();
        weighted_sum(&cba.forward_t(&y, true).unwrap(), 3)
    };
    check("conv + bn", &loss, &pick_vars(&varmap, &x, 1));
}

#[test]
fn densenet_layers_and_pools() {
    let varmap = VarMap::new();
    let vb = f64_vb(&varmap);
    let cfg = DenseNetConfig {
        growth: 4,
        blocks: vec![2, 1],
        bn_size: 2,
    };
    let net = DenseNet::new(&cfg, 3, vb.clone()).unwrap();
    let head = Head::new(
        &HeadConfig::default(),
        GlobalPool::Avg,
        net.num_features(),
        2,
        "classifier",
        vb,
    )
    .unwrap();
    fill(&varmap, 4);
    let x = Var::from_tensor(&det64(&[2, 3, 16, 16], 5)).unwrap();
    let loss = || {
        let mut y = x.as_tensor().clone();
        for i in 0..net.num_stages() {
            y = net.forward_stage(i, &y, true).unwrap();
        }
        weighted_sum(&head.forward(&y, &Noise::default(), true).unwrap(), 6)
    };
    check("densenet", &loss, &pick_vars(&varmap, &x, 3));
}

#[test]
fn residual_blocks() {
    for block in [
        mura_models::BlockKind::Basic,
        mura_models::BlockKind::Bottleneck,
    ] {
        let varmap = VarMap::new();
        let vb = f64_vb(&varmap);
        let cfg = ResNetConfig {
            block,
            layers: vec![1, 1],
            channels: vec![4, 8],
        };
        let net = ResNet::new(&cfg, 3, vb.clone()).unwrap();
        let head = Head::new(
            &HeadConfig::default(),
            GlobalPool::Max,
            net.num_features(),
            1,
            "fc",
            vb,
        )
        .unwrap();
        fill(&varmap, 7);
        let x = Var::from_tensor(&det64(&[2, 3, 16, 16], 8)).unwrap();
        let loss = || {
            let mut y = x.as_tensor().clone();
            for i in 0..net.num_stages() {
                y = net.forward_stage(i, &y, true).unwrap();
            }
            weighted_sum(&head.forward(&y, &Noise::default(), true).unwrap(), 9)
        };
        check(
            &format!("resnet {block:?}"),
            &loss,
            &pick_vars(&varmap, &x, 4),
        );
    }
}

#[test]
fn inception_blocks() {
    for kind in ["a", "b", "c", "d", "e"] {
        let varmap = VarMap::new();
        let vb = f64_vb(&varmap);
        let block: Box<dyn ModuleT> = match kind {
            "a" => Box::new(InceptionA::new(4, 3, vb).unwrap()),
            "b" => Box::new(InceptionB::new(4, vb).unwrap()),
            "c" => Box::new(InceptionC::new(4, 3, vb).unwrap()),
            "d" => Box::new(InceptionD::new(4, vb).unwrap()),
            _ => Box::new(InceptionE::new(4, vb).unwrap()),
        };
        fill(&varmap, 10);
        let side = if kind == "e" { 3 } else { 5 };
        let x = Var::from_tensor(&det64(&[2, 4, side, side], 11)).unwrap();
        let loss = || weighted_sum(&block.forward_t(x.as_tensor(), true).unwrap(), 12);
        check(
            &format!("inception {kind}"),
            &loss,
            &pick_vars(&varmap, &x, 5),
        );
    }
}

#[test]
fn heads() {
    for (config, pool) in [
        (
            HeadConfig::Mlp {
                hidden: vec![5, 4],
                dropout: 0.0,
            },
            GlobalPool::Avg,
        ),
        (
            HeadConfig::AddGate {
                hidden: 5,
                dropout: 0.0,
            },
            GlobalPool::Max,
        ),
    ] {
        let varmap = VarMap::new();
        let head = Head::new(&config, pool, 6, 2, "fc", f64_vb(&varmap)).unwrap();
        fill(&varmap, 13);
        let x = Var::from_tensor(&det64(&[3, 6, 3, 3], 14)).unwrap();
        let loss = || {
            weighted_sum(
                &head
                    .forward(x.as_tensor(), &Noise::default(), true)
                    .unwrap(),
                15,
            )
        };
        check(&format!("{config:?}"), &loss, &pick_vars(&varmap, &x, 1));
    }
}

#[test]
fn custom_cnn_with_attention() {
    let config = CnnConfig {
        in_channels: 1,
        input_size: 12,
        blocks: 2,
        convs_per_block: 1,
        filters: 8,
        growth: FilterGrowth::Doubling,
        kernel: 3,
        kernel_growth: KernelGrowth::Constant,
        stride: 1,
        dilation: 1,
        batch_norm: true,
        pool: Some(LocalPool::Avg),
        pool_after: vec![],
        spatial_dropout: 0.0,
        readout: Readout::Flatten,
        attention: true,
        dense: vec![4],
        dropout: 0.0,
        num_classes: 1,
    };
    let varmap = VarMap::new();
    let model = Cnn::new(&config, f64_vb(&varmap)).unwrap();
    fill(&varmap, 16);
    // γ starts at 0 in a fresh model; give it a value so the attention path carries gradient.
    varmap.data().lock().unwrap()["attention.gamma"]
        .set(&Tensor::new(&[0.7f64], &Device::Cpu).unwrap())
        .unwrap();
    let x = Var::from_tensor(&det64(&[2, 1, 12, 12], 17)).unwrap();
    let loss = || weighted_sum(&model.forward(x.as_tensor(), true).unwrap(), 18);
    check("custom cnn", &loss, &pick_vars(&varmap, &x, 1));
}

//! Each network of the zoo written as an ONNX graph, layer for layer as its evaluation forward
//! runs (dropout is the identity there): the custom CNN family with its readouts and
//! self-attention, DenseNet's concatenating blocks, ResNet's residual blocks, Inception-v3's
//! five block kinds, and the heads.

use mura_kernels::Pool2d;

use super::graph::{Graph, Value};
use crate::cnn::{Cnn, Readout, SelfAttention};
use crate::densenet::{self, DenseNet};
use crate::head::{GlobalPool, Head, HeadConfig};
use crate::inception::{self, InceptionV3};
use crate::layers::ConvBnAct;
use crate::resnet::{self, ResNet};

type Result<T> = candle_core::Result<T>;

/// The custom CNN's blocks and attention: its last feature map.
pub(crate) fn cnn_features(net: &Cnn, g: &mut Graph, x: &str) -> Result<Value> {
    let mut x = x.to_string();
    for (b, block) in net.blocks.iter().enumerate() {
        for (i, unit) in block.convs.iter().enumerate() {
            let name = format!("blocks.{b}.convs.{i}");
            x = g.conv(&unit.conv, &x, &format!("{name}.conv"))?;
            x = match &unit.bn {
                Some(bn) => g.batch_norm(bn, &x, &format!("{name}.bn"), true)?,
                None if unit.conv.relu => x,
                None => g.relu(&x, &name),
            };
        }
        if let Some(pool) = &block.pool {
            x = g.pool(pool, &x, &format!("blocks.{b}.pool"));
        }
    }
    match &net.attention {
        Some(a) => attention(a, g, &x),
        None => Ok(x),
    }
}

/// out = x + γ · v softmax(qᵀk)ᵀ over the h·w positions.
fn attention(a: &SelfAttention, g: &mut Graph, x: &str) -> Result<Value> {
    let flat = g.int64s("attention.flat_shape", &[0, 0, -1]);
    let mut project = |conv, name: &str| -> Result<Value> {
        let y = g.conv(conv, x, &format!("attention.{name}"))?;
        Ok(g.binary("Reshape", &y, &flat, &format!("attention.{name}.flat")))
    };
    let q = project(&a.query, "query")?;
    let k = project(&a.key, "key")?;
    let v = project(&a.value, "value")?;
    let qt = g.transpose(&q, &[0, 2, 1], "attention.query_t");
    let scores = g.binary("MatMul", &qt, &k, "attention.scores");
    let attn = g.softmax(&scores, "attention.softmax");
    let attn_t = g.transpose(&attn, &[0, 2, 1], "attention.softmax_t");
    let out = g.binary("MatMul", &v, &attn_t, "attention.out");
    let shape = g.node("Shape", "attention.shape", &[x], vec![]);
    let out = g.binary("Reshape", &out, &shape, "attention.out_map");
    let gamma = g.weight("attention.gamma", &a.gamma)?;
    let scaled = g.binary("Mul", &out, &gamma, "attention.scaled");
    Ok(g.binary("Add", x, &scaled, "attention.residual"))
}

/// The custom CNN's readout, dense layers and classifier.
pub(crate) fn cnn_head(net: &Cnn, g: &mut Graph, f: &str) -> Result<Value> {
    let mut x = match net.config.readout {
        Readout::Flatten => g.flatten(f, "head"),
        Readout::GlobalAvg => g.global_pool(f, false, "head.pool"),
        Readout::GlobalMax => g.global_pool(f, true, "head.pool"),
    };
    for (j, d) in net.dense.iter().enumerate() {
        x = g.linear_relu(d, &x, &format!("head.dense.{j}"))?;
    }
    g.linear(&net.classifier, &x, "head.classifier")
}

pub(crate) fn densenet(net: &DenseNet, g: &mut Graph, x: &str) -> Result<Value> {
    let mut x = x.to_string();
    for (name, stage) in &net.stages {
        x = match stage {
            densenet::Stage::Stem { conv0, norm0 } => {
                let y = g.conv(conv0, &x, "features.conv0")?;
                let y = g.batch_norm(&norm0.0, &y, "features.norm0", true)?;
                g.pool(&Pool2d::max(3, 2, 1), &y, "features.pool0")
            }
            densenet::Stage::Block(layers) => {
                let mut features = vec![x];
                for (j, l) in layers.iter().enumerate() {
                    let p = format!("{name}.denselayer{}", j + 1);
                    let input = g.concat(&features, &format!("{p}.input"));
                    let y = g.batch_norm(&l.norm1.0, &input, &format!("{p}.norm1"), true)?;
                    let y = g.conv(&l.conv1, &y, &format!("{p}.conv1"))?;
                    let y = g.batch_norm(&l.norm2.0, &y, &format!("{p}.norm2"), true)?;
                    features.push(g.conv(&l.conv2, &y, &format!("{p}.conv2"))?);
                }
                g.concat(&features, name)
            }
            densenet::Stage::Transition(t) => {
                let y = g.batch_norm(&t.norm.0, &x, &format!("{name}.norm"), true)?;
                let y = g.conv(&t.conv, &y, &format!("{name}.conv"))?;
                g.pool(&Pool2d::avg(2, 2, 0), &y, &format!("{name}.pool"))
            }
            densenet::Stage::Norm5(n) => g.batch_norm(&n.0, &x, name, true)?,
        };
    }
    Ok(x)
}

pub(crate) fn resnet(net: &ResNet, g: &mut Graph, x: &str) -> Result<Value> {
    let mut x = x.to_string();
    for (name, stage) in &net.stages {
        x = match stage {
            resnet::Stage::Stem { conv1, bn1 } => {
                let y = g.conv(conv1, &x, "conv1")?;
                let y = g.batch_norm(bn1, &y, "bn1", true)?;
                g.pool(&Pool2d::max(3, 2, 1), &y, "maxpool")
            }
            resnet::Stage::Layer(blocks) => {
                for (j, b) in blocks.iter().enumerate() {
                    x = residual_block(b, g, &x, &format!("{name}.{j}"))?;
                }
                x
            }
        };
    }
    Ok(x)
}

fn residual_block(b: &resnet::Block, g: &mut Graph, x: &str, name: &str) -> Result<Value> {
    let mut y = x.to_string();
    let last = b.convs.len() - 1;
    for (i, (c, bn)) in b.convs.iter().enumerate() {
        y = g.conv(c, &y, &format!("{name}.conv{}", i + 1))?;
        y = g.batch_norm(bn, &y, &format!("{name}.bn{}", i + 1), i < last)?;
    }
    let shortcut = match &b.downsample {
        Some((c, bn)) => {
            let s = g.conv(c, x, &format!("{name}.downsample.0"))?;
            g.batch_norm(bn, &s, &format!("{name}.downsample.1"), false)?
        }
        None => x.to_string(),
    };
    let sum = g.binary("Add", &y, &shortcut, &format!("{name}.add"));
    Ok(g.relu(&sum, name))
}

/// Convolution, BatchNorm and ReLU of Inception-v3, named by the block's tensor prefix.
fn cba(c: &ConvBnAct, g: &mut Graph, x: &str) -> Result<Value> {
    let y = g.conv(&c.conv, x, &format!("{}.conv", c.name))?;
    g.batch_norm(&c.bn, &y, &format!("{}.bn", c.name), true)
}

fn chain<'a>(
    convs: impl IntoIterator<Item = &'a ConvBnAct>,
    g: &mut Graph,
    x: &str,
) -> Result<Value> {
    let mut y = x.to_string();
    for c in convs {
        y = cba(c, g, &y)?;
    }
    Ok(y)
}

pub(crate) fn inception(net: &InceptionV3, g: &mut Graph, x: &str) -> Result<Value> {
    let avg = inception::branch_avg_pool();
    let max = Pool2d::max(3, 2, 0);
    let mut x = x.to_string();
    for (name, stage) in &net.stages {
        let pooled = |g: &mut Graph, p: &Pool2d, x: &str| g.pool(p, x, &format!("{name}.pool"));
        x = match stage {
            inception::Stage::Conv(c) => cba(c, g, &x)?,
            inception::Stage::MaxPool => g.pool(&max, &x, name),
            inception::Stage::A(b) => {
                let b1 = cba(&b.branch1x1, g, &x)?;
                let b5 = chain([&b.branch5x5_1, &b.branch5x5_2], g, &x)?;
                let dbl = [&b.branch3x3dbl_1, &b.branch3x3dbl_2, &b.branch3x3dbl_3];
                let b3 = chain(dbl, g, &x)?;
                let p = pooled(g, &avg, &x);
                let bp = cba(&b.branch_pool, g, &p)?;
                g.concat(&[b1, b5, b3, bp], name)
            }
            inception::Stage::B(b) => {
                let b3 = cba(&b.branch3x3, g, &x)?;
                let dbl = [&b.branch3x3dbl_1, &b.branch3x3dbl_2, &b.branch3x3dbl_3];
                let bd = chain(dbl, g, &x)?;
                let bp = pooled(g, &max, &x);
                g.concat(&[b3, bd, bp], name)
            }
            inception::Stage::C(b) => {
                let b1 = cba(&b.branch1x1, g, &x)?;
                let b7 = chain(&b.branch7x7, g, &x)?;
                let bd = chain(&b.branch7x7dbl, g, &x)?;
                let p = pooled(g, &avg, &x);
                let bp = cba(&b.branch_pool, g, &p)?;
                g.concat(&[b1, b7, bd, bp], name)
            }
            inception::Stage::D(b) => {
                let b3 = chain(&b.branch3x3, g, &x)?;
                let b7 = chain(&b.branch7x7x3, g, &x)?;
                let bp = pooled(g, &max, &x);
                g.concat(&[b3, b7, bp], name)
            }
            inception::Stage::E(b) => {
                let b1 = cba(&b.branch1x1, g, &x)?;
                let a = cba(&b.branch3x3_1, g, &x)?;
                let b3 = [cba(&b.branch3x3_2a, g, &a)?, cba(&b.branch3x3_2b, g, &a)?];
                let b3 = g.concat(&b3, &format!("{name}.branch3x3"));
                let d = chain([&b.branch3x3dbl_1, &b.branch3x3dbl_2], g, &x)?;
                let bd = [
                    cba(&b.branch3x3dbl_3a, g, &d)?,
                    cba(&b.branch3x3dbl_3b, g, &d)?,
                ];
                let bd = g.concat(&bd, &format!("{name}.branch3x3dbl"));
                let p = pooled(g, &avg, &x);
                let bp = cba(&b.branch_pool, g, &p)?;
                g.concat(&[b1, b3, bd, bp], name)
            }
        };
    }
    Ok(x)
}

/// A zoo head: global pooling, then its dense layers and classifier.
pub(crate) fn head(h: &Head, g: &mut Graph, f: &str) -> Result<Value> {
    let x = g.global_pool(f, h.pool == GlobalPool::Max, "head.global_pool");
    let x = match &h.config {
        HeadConfig::Linear { .. } => x,
        HeadConfig::Mlp { .. } => {
            let mut x = x;
            for (i, l) in h.hidden.iter().enumerate() {
                x = g.linear_relu(l, &x, &format!("head.fc.{i}"))?;
            }
            x
        }
        HeadConfig::AddGate { .. } => {
            let [fc1, fc2] = h.hidden.as_slice() else {
                candle_core::bail!(
                    "the add-gate head has {} dense layers, not 2",
                    h.hidden.len()
                )
            };
            let a = g.linear_relu(fc1, &x, "head.fc1")?;
            let b = g.linear_relu(fc2, &a, "head.fc2")?;
            g.binary("Add", &a, &b, "head.gate")
        }
    };
    g.linear(&h.classifier, &x, &h.classifier_name)
}

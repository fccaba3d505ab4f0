//! The kernels of mura-kernels against the candle ops they replace, measured in the same run:
//! convolution forward + backward (a DenseNet 3×3 growth convolution, the custom CNN's 64 → 128
//! at 64×64 (Winograd forward and both gradients), ResNet-50's 512 → 512 at 7×7 (the weight
//! gradient as one product over the batch), a 1×1 bottleneck and a ResNet-style 7×7/2 stem on
//! the image) and BatchNorm + ReLU forward + backward, each running one forward and the
//! backward of the sum of its output; the forward alone of 3×3 stride-1 convolutions that run
//! by Winograd (ResNet-50's first stage, Inception-v3's 80 → 192 stem convolution); and max and
//! average pooling (see [`bench_pool`]). The ratio of the two medians is the speed-up. Run with
//! `cargo bench -p mura-kernels`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use criterion::{Criterion, criterion_group, criterion_main};
use mura_kernels::{Conv2dParams, Pool2d, batch_norm_train, conv2d};

fn random(shape: &[usize], dev: &Device) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, dev).unwrap()
}

/// (name, input N×C×H×W, weight O×C×k×k, stride, padding, whether the input needs a gradient).
type Case = (&'static str, [usize; 4], [usize; 4], usize, usize, bool);

const CONVS: [Case; 5] = [
    (
        "densenet_3x3_128to32_28px",
        [8, 128, 28, 28],
        [32, 128, 3, 3],
        1,
        1,
        true,
    ),
    // Winograd forward and both gradients.
    (
        "custom_3x3_64to128_64px",
        [8, 64, 64, 64],
        [128, 64, 3, 3],
        1,
        1,
        true,
    ),
    // The weight gradient as one product over the batch.
    (
        "resnet_3x3_512to512_7px",
        [8, 512, 7, 7],
        [512, 512, 3, 3],
        1,
        1,
        true,
    ),
    (
        "densenet_1x1_256to128_28px",
        [8, 256, 28, 28],
        [128, 256, 1, 1],
        1,
        0,
        true,
    ),
    (
        "stem_7x7s2_3to64_224px",
        [8, 3, 224, 224],
        [64, 3, 7, 7],
        2,
        3,
        false,
    ),
];

fn bench_conv(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut g = c.benchmark_group("conv2d_forward_backward");
    g.sample_size(10);
    for (name, xs, ws, stride, pad, input_grad) in CONVS {
        let x0 = random(&xs, &dev);
        let x = if input_grad {
            Var::from_tensor(&x0).unwrap().as_tensor().clone()
        } else {
            x0
        };
        let w = Var::from_tensor(&random(&ws, &dev)).unwrap();
        let params = Conv2dParams {
            stride: (stride, stride),
            padding: (pad, pad),
            dilation: (1, 1),
        };
        g.bench_function(format!("mura/{name}"), |b| {
            b.iter(|| {
                let y = conv2d(&x, &w, None, params).unwrap();
                y.sum_all().unwrap().backward().unwrap()
            })
        });
        g.bench_function(format!("candle/{name}"), |b| {
            b.iter(|| {
                let y = x.conv2d(&w, pad, stride, 1, 1).unwrap();
                y.sum_all().unwrap().backward().unwrap()
            })
        });
    }
    g.finish();
}

/// (name, input N×C×H×W, output channels, padding): 3×3 stride-1 forwards by Winograd.
const WINOGRAD: [(&str, [usize; 4], usize, usize); 2] = [
    ("resnet_3x3_64to64_56px", [4, 64, 56, 56], 64, 1),
    ("inception_3x3_80to192_73px", [4, 80, 73, 73], 192, 0),
];

fn bench_conv_forward(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut g = c.benchmark_group("conv2d_3x3_forward");
    g.sample_size(10);
    for (name, xs, o, pad) in WINOGRAD {
        let x = random(&xs, &dev);
        let w = random(&[o, xs[1], 3, 3], &dev);
        let params = Conv2dParams {
            padding: (pad, pad),
            ..Conv2dParams::default()
        };
        g.bench_function(format!("mura/{name}"), |b| {
            b.iter(|| conv2d(&x, &w, None, params).unwrap())
        });
        g.bench_function(format!("candle/{name}"), |b| {
            b.iter(|| x.conv2d(&w, pad, 1, 1, 1).unwrap())
        });
    }
    g.finish();
}

fn bench_batch_norm(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut g = c.benchmark_group("batch_norm_relu_train_forward_backward");
    g.sample_size(10);
    let (n, ch, h, w) = (8, 64, 112, 112);
    let x = Var::from_tensor(&random(&[n, ch, h, w], &dev)).unwrap();
    let gamma = Var::ones(ch, DType::F32, &dev).unwrap();
    let beta = Var::zeros(ch, DType::F32, &dev).unwrap();
    g.bench_function("mura/8x64x112x112", |b| {
        b.iter(|| {
            let (y, _, _) = batch_norm_train(&x, &gamma, &beta, 1e-5, true).unwrap();
            y.sum_all().unwrap().backward().unwrap()
        })
    });
    let bn = candle_nn::BatchNorm::new(
        ch,
        Tensor::zeros(ch, DType::F32, &dev).unwrap(),
        Tensor::ones(ch, DType::F32, &dev).unwrap(),
        gamma.as_tensor().clone(),
        beta.as_tensor().clone(),
        1e-5,
    )
    .unwrap();
    g.bench_function("candle/8x64x112x112", |b| {
        b.iter(|| {
            let y = bn.forward_t(&x, true).unwrap().relu().unwrap();
            y.sum_all().unwrap().backward().unwrap()
        })
    });
    g.finish();
}

/// Pooling forward + backward (the backward of the sum of the output): the 3×3/2 max pool of
/// the ResNet and DenseNet stems and DenseNet's first 2×2 average-pooling transition. candle
/// has no padding and refuses the backward of a window wider than its stride, so its peer
/// cases are the stem's pool without padding (forward only) and the average pool (forward +
/// backward).
fn bench_pool(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut g = c.benchmark_group("pool2d");
    g.sample_size(10);
    let stem = Var::from_tensor(&random(&[8, 64, 112, 112], &dev)).unwrap();
    g.bench_function("mura/max_3x3s2p1_8x64x112px_forward_backward", |b| {
        b.iter(|| {
            let y = Pool2d::max(3, 2, 1).forward(&stem).unwrap();
            y.sum_all().unwrap().backward().unwrap()
        })
    });
    g.bench_function("mura/max_3x3s2_8x64x112px_forward", |b| {
        b.iter(|| Pool2d::max(3, 2, 0).forward(&stem).unwrap())
    });
    g.bench_function("candle/max_3x3s2_8x64x112px_forward", |b| {
        b.iter(|| stem.max_pool2d_with_stride(3, 2).unwrap())
    });
    let transition = Var::from_tensor(&random(&[8, 128, 56, 56], &dev)).unwrap();
    g.bench_function("mura/avg_2x2s2_8x128x56px_forward_backward", |b| {
        b.iter(|| {
            let y = Pool2d::avg(2, 2, 0).forward(&transition).unwrap();
            y.sum_all().unwrap().backward().unwrap()
        })
    });
    g.bench_function("candle/avg_2x2s2_8x128x56px_forward_backward", |b| {
        b.iter(|| {
            let y = transition.avg_pool2d(2).unwrap();
            y.sum_all().unwrap().backward().unwrap()
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_conv,
    bench_conv_forward,
    bench_batch_norm,
    bench_pool
);
criterion_main!(benches);

//! Grad-CAM on a trained model points at the abnormality.
//!
//! A small CNN (3 conv blocks, two max-pools, global average pooling: a 16×16 map at 64 px) learns synthetic
//! "radiographs": noisy background and a bright bar (a bone) in every image, plus, in abnormal
//! ones, a bright 12×12 square (hardware) at a random place. After training, the Grad-CAM peak
//! (upsampled to the image) of held-out abnormal images must fall inside the square, grown by one
//! cell of the 16×16 map (4 px), in at least 18 of 20 images.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use mura_models::cnn::{CnnConfig, Readout};
use mura_models::{Arch, Model, ModelConfig, grad_cam};

const SIZE: usize = 64;
const SQUARE: usize = 12;

/// xorshift64*: the test's own seeded stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32) / (1u64 << 24) as f32
    }

    fn below(&mut self, n: usize) -> usize {
        ((self.next() * n as f32) as usize).min(n - 1)
    }
}

/// One image and, when abnormal, the square's top-left corner.
fn image(rng: &mut Rng, abnormal: bool) -> (Vec<f32>, Option<(usize, usize)>) {
    let mut px: Vec<f32> = (0..SIZE * SIZE).map(|_| 0.2 + 0.2 * rng.next()).collect();
    let bar = 4 + rng.below(SIZE - 12);
    for y in bar..bar + 5 {
        for x in 0..SIZE {
            px[y * SIZE + x] += 0.4;
        }
    }
    let square = abnormal.then(|| {
        // Away from the bar, so the square is its own region, and 6 px from the edges, where zero
        // padding makes the last cells of the map respond differently.
        loop {
            let (x, y) = (
                6 + rng.below(SIZE - SQUARE - 12),
                6 + rng.below(SIZE - SQUARE - 12),
            );
            if y + SQUARE < bar || y > bar + 5 {
                break (x, y);
            }
        }
    });
    if let Some((sx, sy)) = square {
        for y in sy..sy + SQUARE {
            for x in sx..sx + SQUARE {
                px[y * SIZE + x] = 0.95;
            }
        }
    }
    (px, square)
}

fn batch(rng: &mut Rng, n: usize, dev: &Device) -> (Tensor, Tensor) {
    let mut pixels = Vec::with_capacity(n * SIZE * SIZE);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let abnormal = i % 2 == 0;
        pixels.extend(image(rng, abnormal).0);
        labels.push(if abnormal { 1f32 } else { 0.0 });
    }
    (
        Tensor::from_vec(pixels, (n, 1, SIZE, SIZE), dev).unwrap(),
        Tensor::from_vec(labels, (n, 1), dev).unwrap(),
    )
}

#[test]
fn the_peak_of_a_trained_model_falls_on_the_abnormality() {
    let dev = Device::Cpu;
    let cnn = CnnConfig {
        in_channels: 1,
        input_size: SIZE,
        blocks: 3,
        filters: 8,
        pool_after: vec![0, 1],
        readout: Readout::GlobalAvg,
        dense: vec![],
        dropout: 0.0,
        ..CnnConfig::custom_cnn()
    };
    let mut config = ModelConfig::new(Arch::from_name("custom-cnn").unwrap());
    config.in_channels = 1;
    config.input_size = Some(SIZE);
    config.cnn = Some(cnn);
    let (model, varmap) = Model::with_seed(&config, 3, &dev).unwrap();
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 1e-3,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )
    .unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..150 {
        let (x, y) = batch(&mut rng, 16, &dev);
        let logits = model.forward(&x, true).unwrap();
        let loss = candle_nn::loss::binary_cross_entropy_with_logit(&logits, &y).unwrap();
        opt.backward_step(&loss).unwrap();
    }
    // The model has learnt the task.
    let (x, y) = batch(&mut rng, 64, &dev);
    let p = candle_nn::ops::sigmoid(&model.forward(&x, false).unwrap()).unwrap();
    let correct = p
        .ge(0.5)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .eq(&y)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(correct >= 60.0, "only {correct}/64 right after training");

    let mut hits = 0;
    let mut misses = Vec::new();
    for _ in 0..20 {
        let (px, square) = image(&mut rng, true);
        let (sx, sy) = square.unwrap();
        let x = Tensor::from_vec(px, (1, 1, SIZE, SIZE), &dev).unwrap();
        let cam = grad_cam(&model, &x, 0).unwrap();
        assert_eq!((cam.height, cam.width), (16, 16));
        let up = cam.upsampled(SIZE, SIZE);
        let peak = up
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        let (px_, py_) = (peak % SIZE, peak / SIZE);
        let inside = |v: usize, lo: usize| v + 4 >= lo && v < lo + SQUARE + 4;
        if inside(px_, sx) && inside(py_, sy) {
            hits += 1;
        } else {
            misses.push(format!("peak ({px_}, {py_}), square at ({sx}, {sy})"));
        }
    }
    // Measured: 19 of 20.
    assert!(
        hits >= 18,
        "the Grad-CAM peak fell on the square in only {hits}/20 images: {misses:?}"
    );
}

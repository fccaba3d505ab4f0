//! Image decoding and the augmentation pipeline: the first 24 bytes choose the settings (any
//! values, NaN included: the config check must refuse what the pipeline cannot take), the rest
//! is the file.

use std::path::Path;

use mura_augment::{AugmentConfig, Filter, Normalize, Pipeline, Preprocess, ResizeMode};
use mura_data::{ColorMode, decode_bytes};

fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

pub fn run(bytes: &[u8], _scratch: &Path) {
    if bytes.len() < 24 {
        return;
    }
    let (head, file) = bytes.split_at(24);
    let flags = head[0];
    let augment = AugmentConfig {
        hflip: if flags & 1 != 0 { 0.5 } else { 0.0 },
        vflip: if flags & 2 != 0 { 0.5 } else { 0.0 },
        rotation: f32_at(head, 4),
        zoom: (f32_at(head, 8), f32_at(head, 12)),
        translate: f32_at(head, 16).fract().abs(),
        ..AugmentConfig::none()
    };
    let size = 8 + u32::from(head[1] % 64);
    let preprocess = Preprocess {
        width: size,
        height: size + u32::from(head[2] % 8),
        mode: match head[3] % 3 {
            0 => ResizeMode::Stretch,
            1 => ResizeMode::Letterbox { pad: head[20] },
            _ => ResizeMode::CenterCrop {
                crop_fraction: f32_at(head, 20),
            },
        },
        filter: match (flags >> 4) & 3 {
            0 => Filter::Bilinear,
            1 => Filter::Bicubic,
            _ => Filter::Lanczos3,
        },
        channels: if flags & 4 != 0 { 3 } else { 1 },
        normalize: Normalize::IMAGENET,
    };
    let Ok(pipeline) = Pipeline::new(preprocess, augment, u64::from(head[5])) else {
        return;
    };
    let Ok(image) = decode_bytes(file, Path::new("fuzz.png"), ColorMode::Gray) else {
        return;
    };
    if let Ok(out) = pipeline.process(&image, 1, 2) {
        assert_eq!(out.len(), pipeline.output_len());
        assert!(out.iter().all(|v| v.is_finite()), "non-finite output");
    }
}

#![doc = include_str!("../README.md")]

use mura_data::{ColorMode, DecodedImage};

/// The one error type of `mura-augment`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AugmentError {
    #[error(
        "destination holds {found} floats but a {channels}×{height}×{width} image needs {needed}"
    )]
    DestinationSize {
        channels: usize,
        height: u32,
        width: u32,
        needed: usize,
        found: usize,
    },
    #[error("image is {width}×{height} with {found} bytes; {expected} expected")]
    PixelCount {
        width: u32,
        height: u32,
        expected: usize,
        found: usize,
    },
    #[error("channel {channel} has standard deviation {std}: it must be positive and finite")]
    BadStd { channel: usize, std: f32 },
    #[error("channel {channel} has mean {mean}: it must be finite")]
    BadMean { channel: usize, mean: f32 },
}

/// Per-channel mean and standard deviation applied to pixel values scaled to [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalize {
    /// ImageNet's statistics (timm's `IMAGENET_DEFAULT_MEAN/STD`), for DenseNet and ResNet weights.
    pub const IMAGENET: Normalize = Normalize {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    /// Inception's 0.5/0.5 (timm's `IMAGENET_INCEPTION_MEAN/STD`).
    pub const INCEPTION: Normalize = Normalize {
        mean: [0.5; 3],
        std: [0.5; 3],
    };

    fn check(&self) -> Result<(), AugmentError> {
        for c in 0..3 {
            if !(self.std[c].is_finite() && self.std[c] > 0.0) {
                return Err(AugmentError::BadStd {
                    channel: c,
                    std: self.std[c],
                });
            }
            if !self.mean[c].is_finite() {
                return Err(AugmentError::BadMean {
                    channel: c,
                    mean: self.mean[c],
                });
            }
        }
        Ok(())
    }
}

/// Writes `image` into a CHW f32 slot of `out_channels` channels (1, or 3 with a gray image
/// replicated for ImageNet backbones), as `(pixel / 255 - mean[c]) / std[c]`.
///
/// `dst` must hold exactly `out_channels × height × width` floats. A colour image written to one
/// channel uses its luminance (ITU-R BT.601 weights).
pub fn to_chw_into(
    image: &DecodedImage,
    out_channels: usize,
    norm: &Normalize,
    dst: &mut [f32],
) -> Result<(), AugmentError> {
    norm.check()?;
    let plane = image.width as usize * image.height as usize;
    let in_channels = image.color.channels();
    if image.pixels.len() != plane * in_channels {
        return Err(AugmentError::PixelCount {
            width: image.width,
            height: image.height,
            expected: plane * in_channels,
            found: image.pixels.len(),
        });
    }
    let out_channels = out_channels.clamp(1, 3);
    if dst.len() != plane * out_channels {
        return Err(AugmentError::DestinationSize {
            channels: out_channels,
            height: image.height,
            width: image.width,
            needed: plane * out_channels,
            found: dst.len(),
        });
    }
    for c in 0..out_channels {
        let scale = 1.0 / (255.0 * norm.std[c]);
        let shift = norm.mean[c] / norm.std[c];
        let out = &mut dst[c * plane..(c + 1) * plane];
        match (image.color, out_channels) {
            (ColorMode::Gray, _) => {
                for (o, &p) in out.iter_mut().zip(&image.pixels) {
                    *o = f32::from(p) * scale - shift;
                }
            }
            (ColorMode::Rgb, 3) => {
                for (o, px) in out.iter_mut().zip(image.pixels.chunks_exact(3)) {
                    *o = f32::from(px[c]) * scale - shift;
                }
            }
            (ColorMode::Rgb, _) => {
                for (o, px) in out.iter_mut().zip(image.pixels.chunks_exact(3)) {
                    let y = 0.299 * f32::from(px[0])
                        + 0.587 * f32::from(px[1])
                        + 0.114 * f32::from(px[2]);
                    *o = y * scale - shift;
                }
            }
        }
    }
    Ok(())
}

/// Mirrors an image left to right, in place.
pub fn hflip_in_place(image: &mut DecodedImage) {
    let c = image.color.channels();
    let row = image.width as usize * c;
    if row == 0 {
        return;
    }
    for line in image.pixels.chunks_exact_mut(row) {
        let w = image.width as usize;
        for x in 0..w / 2 {
            for k in 0..c {
                line.swap(x * c + k, (w - 1 - x) * c + k);
            }
        }
    }
}

/// Mirrors an image top to bottom, in place.
pub fn vflip_in_place(image: &mut DecodedImage) {
    let row = image.width as usize * image.color.channels();
    let h = image.height as usize;
    if row == 0 {
        return;
    }
    for y in 0..h / 2 {
        let (top, bottom) = image.pixels.split_at_mut((h - 1 - y) * row);
        top[y * row..(y + 1) * row].swap_with_slice(&mut bottom[..row]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn image(width: u32, height: u32, color: ColorMode, pixels: Vec<u8>) -> DecodedImage {
        DecodedImage {
            width,
            height,
            color,
            pixels,
        }
    }

    #[test]
    fn gray_is_replicated_and_normalised() {
        let img = image(2, 1, ColorMode::Gray, vec![0, 255]);
        let mut dst = vec![0.0; 6];
        to_chw_into(&img, 3, &Normalize::IMAGENET, &mut dst).unwrap();
        for c in 0..3 {
            let m = Normalize::IMAGENET.mean[c];
            let s = Normalize::IMAGENET.std[c];
            assert!((dst[c * 2] - (0.0 - m) / s).abs() < 1e-6);
            assert!((dst[c * 2 + 1] - (1.0 - m) / s).abs() < 1e-6);
        }
    }

    #[test]
    fn bad_sizes_and_stats_are_errors() {
        let img = image(2, 2, ColorMode::Gray, vec![0; 4]);
        let mut dst = vec![0.0; 3];
        assert!(matches!(
            to_chw_into(&img, 1, &Normalize::INCEPTION, &mut dst),
            Err(AugmentError::DestinationSize {
                needed: 4,
                found: 3,
                ..
            })
        ));
        let bad = Normalize {
            mean: [0.0; 3],
            std: [0.0, 1.0, f32::NAN],
        };
        assert!(matches!(
            to_chw_into(&img, 1, &bad, &mut [0.0; 4]),
            Err(AugmentError::BadStd { channel: 0, .. })
        ));
        let short = image(2, 2, ColorMode::Rgb, vec![0; 4]);
        assert!(matches!(
            to_chw_into(&short, 3, &Normalize::IMAGENET, &mut [0.0; 12]),
            Err(AugmentError::PixelCount { .. })
        ));
    }

    proptest! {
        #[test]
        fn flipping_twice_is_identity(w in 0u32..9, h in 0u32..9, rgb in any::<bool>(), seed in any::<u64>()) {
            let color = if rgb { ColorMode::Rgb } else { ColorMode::Gray };
            let n = (w * h) as usize * color.channels();
            let pixels: Vec<u8> = (0..n).map(|i| (seed.wrapping_mul(i as u64 + 1) >> 7) as u8).collect();
            let original = image(w, h, color, pixels);
            let mut img = original.clone();
            hflip_in_place(&mut img);
            hflip_in_place(&mut img);
            prop_assert_eq!(&img, &original);
            vflip_in_place(&mut img);
            vflip_in_place(&mut img);
            prop_assert_eq!(&img, &original);
        }
    }

    #[test]
    fn hflip_mirrors_rows() {
        let mut img = image(3, 2, ColorMode::Gray, vec![1, 2, 3, 4, 5, 6]);
        hflip_in_place(&mut img);
        assert_eq!(img.pixels, vec![3, 2, 1, 6, 5, 4]);
        vflip_in_place(&mut img);
        assert_eq!(img.pixels, vec![6, 5, 4, 3, 2, 1]);
    }
}

//! Normalisation of decoded images into CHW f32 batch slots.

use mura_data::{ColorMode, DecodedImage};

use crate::AugmentError;

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

    pub(crate) fn check(&self) -> Result<(), AugmentError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use mura_data::{ColorMode, DecodedImage};

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
}

//! The per-image pipeline: gray source → resize → intensity augmentations → one fused pass of
//! flips, rotation, zoom, translation, brightness/contrast and normalisation into a CHW f32 slot.
//!
//! Every random draw comes from `(seed, epoch, image index)`, so an image gets the same pixels
//! whichever thread processes it and in whatever order.

use std::cell::RefCell;

use mura_data::{ColorMode, DecodedImage};

use crate::intensity::percentile_window;
use crate::params::{Params, View, sample_params};
use crate::resize::{GrayResizer, ResizeMode};
use crate::warp::{InverseMap, sample_row};
use crate::{AugmentConfig, AugmentError, Normalize, Preprocess};

/// Scratch space of one worker thread: the resizer and two planes, reused across images.
#[derive(Debug, Default)]
pub struct Worker {
    resizer: GrayResizer,
    gray: Vec<u8>,
    plane: Vec<u8>,
    values: Vec<f32>,
}

thread_local! {
    static WORKER: RefCell<Worker> = RefCell::new(Worker::default());
}

/// Preprocessing, augmentation and the seed: everything needed to turn an image into model input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pipeline {
    pub preprocess: Preprocess,
    pub augment: AugmentConfig,
    pub seed: u64,
    /// A fixed view applied to every image (test-time augmentation); the identity by default.
    pub view: View,
}

impl Pipeline {
    /// Validates the settings.
    pub fn new(
        preprocess: Preprocess,
        augment: AugmentConfig,
        seed: u64,
    ) -> Result<Self, AugmentError> {
        augment.check()?;
        let p = &preprocess;
        if p.width == 0 || p.height == 0 || p.width > 8192 || p.height > 8192 {
            return Err(AugmentError::BadConfig {
                what: "output size",
                reason: format!("{}×{} is outside 1..=8192", p.width, p.height),
            });
        }
        if !(p.channels == 1 || p.channels == 3) {
            return Err(AugmentError::BadConfig {
                what: "channels",
                reason: format!("{} channels: 1 or 3", p.channels),
            });
        }
        if let ResizeMode::CenterCrop { crop_fraction } = p.mode
            && !(crop_fraction.is_finite() && crop_fraction > 0.0 && crop_fraction <= 1.0)
        {
            return Err(AugmentError::BadConfig {
                what: "crop fraction",
                reason: format!("{crop_fraction} is not in (0, 1]"),
            });
        }
        p.normalize.check()?;
        Ok(Self {
            preprocess,
            augment,
            seed,
            view: View::IDENTITY,
        })
    }

    /// The same pipeline seeing every image through `view`. A non-finite angle is refused.
    pub fn with_view(self, view: View) -> Result<Self, AugmentError> {
        if !view.angle_degrees.is_finite() {
            return Err(AugmentError::BadConfig {
                what: "view angle",
                reason: format!("{} is not a finite angle", view.angle_degrees),
            });
        }
        Ok(Self { view, ..self })
    }

    /// Floats per output image: channels × height × width.
    pub fn output_len(&self) -> usize {
        let p = &self.preprocess;
        p.channels * p.width as usize * p.height as usize
    }

    /// Processes `image` (image `index` of `epoch`) into `dst`, using this thread's scratch space.
    pub fn process_into(
        &self,
        image: &DecodedImage,
        epoch: u64,
        index: u64,
        dst: &mut [f32],
    ) -> Result<Params, AugmentError> {
        WORKER.with(|w| self.process_with(&mut w.borrow_mut(), image, epoch, index, dst))
    }

    /// Processes `image` into a new vector.
    pub fn process(
        &self,
        image: &DecodedImage,
        epoch: u64,
        index: u64,
    ) -> Result<Vec<f32>, AugmentError> {
        let mut out = Vec::with_capacity(self.output_len());
        WORKER.with(|w| {
            self.run(
                &mut w.borrow_mut(),
                image,
                epoch,
                index,
                Out::Append(&mut out),
            )
        })?;
        Ok(out)
    }

    /// Like [`Pipeline::process_into`] with explicit scratch space (and so an explicit resizer).
    pub fn process_with(
        &self,
        worker: &mut Worker,
        image: &DecodedImage,
        epoch: u64,
        index: u64,
        dst: &mut [f32],
    ) -> Result<Params, AugmentError> {
        let p = &self.preprocess;
        if dst.len() != self.output_len() {
            return Err(AugmentError::DestinationSize {
                channels: p.channels,
                height: p.height,
                width: p.width,
                needed: self.output_len(),
                found: dst.len(),
            });
        }
        self.run(worker, image, epoch, index, Out::Slot(dst))
    }

    fn run(
        &self,
        worker: &mut Worker,
        image: &DecodedImage,
        epoch: u64,
        index: u64,
        out: Out<'_>,
    ) -> Result<Params, AugmentError> {
        let p = &self.preprocess;
        let (w, h) = (p.width as usize, p.height as usize);
        let src: &[u8] = match image.color {
            ColorMode::Gray => &image.pixels,
            ColorMode::Rgb => {
                worker.gray.clear();
                worker.gray.extend(image.pixels.chunks_exact(3).map(|c| {
                    (0.299 * f32::from(c[0]) + 0.587 * f32::from(c[1]) + 0.114 * f32::from(c[2]))
                        .round() as u8
                }));
                &worker.gray
            }
        };
        worker.plane.resize(w * h, 0);
        worker.resizer.resize(
            src,
            (image.width, image.height),
            &mut worker.plane,
            (p.width, p.height),
            p.mode,
            p.filter,
        )?;

        let mut params = sample_params(&self.augment, (p.width, p.height), self.seed, epoch, index);
        self.view.apply(&mut params);
        if let (true, Some(win)) = (params.window, self.augment.window) {
            percentile_window(&mut worker.plane, win.p_low, win.p_high)?;
        }
        if let (true, Some(c)) = (params.clahe, self.augment.clahe) {
            c.clahe.apply(&mut worker.plane, w, h)?;
        }
        worker.values.resize(w * h, 0.0);
        render_values(&worker.plane, (w, h), &params, &mut worker.values);
        write_channels(&worker.values, &p.normalize, p.channels, out);
        Ok(params)
    }
}

/// The geometric transform (flips, rotation, zoom, shift) and brightness/contrast of `plane`,
/// as values in [0, 1], into `values` (`w`×`h`).
fn render_values(plane: &[u8], (w, h): (usize, usize), params: &Params, values: &mut [f32]) {
    const INV: f32 = 1.0 / 255.0;
    let map = InverseMap::new(w, h, params);
    let identity = params.is_geometric_identity();
    let intensity = params.brightness != 0.0 || params.contrast != 1.0;
    for (y, row) in values.chunks_exact_mut(w).enumerate() {
        if identity {
            let sy = if params.vflip { h - 1 - y } else { y };
            let src = &plane[sy * w..(sy + 1) * w];
            if params.hflip {
                for (o, &v) in row.iter_mut().zip(src.iter().rev()) {
                    *o = f32::from(v) * INV;
                }
            } else {
                for (o, &v) in row.iter_mut().zip(src) {
                    *o = f32::from(v) * INV;
                }
            }
        } else {
            sample_row(plane, (w, h), &map, y, row);
        }
        if intensity {
            for v in row.iter_mut() {
                *v = ((*v - 0.5) * params.contrast + 0.5 + params.brightness).clamp(0.0, 1.0);
            }
        }
    }
}

/// Per channel, `value × a + b` normalises a [0, 1] value.
fn channel_affine(norm: &Normalize, channels: usize) -> impl Iterator<Item = (f32, f32)> + '_ {
    (0..channels).map(|c| (1.0 / norm.std[c], -norm.mean[c] / norm.std[c]))
}

/// Where a processed image goes.
enum Out<'a> {
    /// A caller's CHW slot of exactly the output length.
    Slot(&'a mut [f32]),
    /// Appended to a vector, each float written once (no zero-filling first).
    Append(&'a mut Vec<f32>),
}

/// Normalises `values` into every output channel.
fn write_channels(values: &[f32], norm: &Normalize, channels: usize, out: Out<'_>) {
    match out {
        Out::Slot(dst) => {
            for ((a, b), plane) in
                channel_affine(norm, channels).zip(dst.chunks_exact_mut(values.len()))
            {
                for (o, &v) in plane.iter_mut().zip(values) {
                    *o = v * a + b;
                }
            }
        }
        Out::Append(dst) => {
            for (a, b) in channel_affine(norm, channels) {
                dst.extend(values.iter().map(|&v| v * a + b));
            }
        }
    }
}

#[cfg(test)]
mod tests;

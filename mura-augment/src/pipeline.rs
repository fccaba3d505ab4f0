//! The per-image pipeline: gray source → resize → intensity augmentations → one fused pass of
//! flips, rotation, zoom, translation, brightness/contrast and normalisation into a CHW f32 slot.
//!
//! Every random draw comes from `(seed, epoch, image index)`, so an image gets the same pixels
//! whichever thread processes it and in whatever order.

use std::cell::RefCell;

use mura_data::rng::{stream_rng, unit};
use mura_data::{ColorMode, DecodedImage};
use serde::{Deserialize, Serialize};

use crate::intensity::{Clahe, percentile_window};
use crate::resize::{Filter, GrayResizer, ResizeMode};
use crate::warp::{InverseMap, sample_row};
use crate::{AugmentError, Normalize};

/// Percentile windowing applied with a probability.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowAug {
    pub p_low: f32,
    pub p_high: f32,
    pub probability: f32,
}

/// CLAHE applied with a probability.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaheAug {
    #[serde(flatten)]
    pub clahe: Clahe,
    pub probability: f32,
}

/// The smallest zoom scale accepted (a 16th of the image: anything smaller is a dot).
pub const MIN_ZOOM: f32 = 1.0 / 16.0;
/// The largest zoom scale accepted (a 16th of the image fills the output).
pub const MAX_ZOOM: f32 = 16.0;

/// Train-time augmentations, each with its probability or range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Probability of a horizontal (lateral) flip.
    pub hflip: f32,
    /// Probability of a vertical flip.
    pub vflip: f32,
    /// Rotation uniform in ±`rotation` degrees (bilinear, black fill); 180 or more means any angle.
    pub rotation: f32,
    /// Scale uniform in this range: above 1 zooms in, below 1 zooms out (black border).
    pub zoom: (f32, f32),
    /// Shift uniform in ±`translate` × the output size, per axis.
    pub translate: f32,
    /// Additive brightness uniform in ±`brightness` (pixel values in [0, 1]).
    pub brightness: f32,
    /// Contrast factor uniform in 1 ± `contrast`, around mid-gray.
    pub contrast: f32,
    pub window: Option<WindowAug>,
    pub clahe: Option<ClaheAug>,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self::none()
    }
}

impl AugmentConfig {
    /// No augmentation: the `eval` preset.
    pub fn none() -> Self {
        Self {
            hflip: 0.0,
            vflip: 0.0,
            rotation: 0.0,
            zoom: (1.0, 1.0),
            translate: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            window: None,
            clahe: None,
        }
    }

    /// The augmentations that always apply (windowing and CLAHE at probability 1): they are part
    /// of the preprocessing, so evaluation applies them too.
    pub fn always(&self) -> Self {
        Self {
            window: self.window.filter(|w| w.probability >= 1.0),
            clahe: self.clahe.filter(|c| c.probability >= 1.0),
            ..Self::none()
        }
    }

    /// True when no random draw can change a pixel: an image comes out the same at every epoch.
    pub fn is_deterministic(&self) -> bool {
        *self == self.always()
    }

    /// The MURA paper's training augmentation: random lateral flips and rotations up to 30°.
    pub fn mura_paper() -> Self {
        Self {
            hflip: 0.5,
            rotation: 30.0,
            ..Self::none()
        }
    }

    /// Checks every probability and range; NaN anywhere is an error naming the field.
    pub fn check(&self) -> Result<(), AugmentError> {
        let bad = |what: &'static str, reason: String| AugmentError::BadConfig { what, reason };
        let prob = |what: &'static str, p: f32| {
            if (0.0..=1.0).contains(&p) {
                Ok(())
            } else {
                Err(bad(what, format!("probability {p} is outside [0, 1]")))
            }
        };
        prob("hflip", self.hflip)?;
        prob("vflip", self.vflip)?;
        if !(self.rotation.is_finite() && self.rotation >= 0.0) {
            return Err(bad(
                "rotation",
                format!("{} is not a finite angle ≥ 0", self.rotation),
            ));
        }
        let (lo, hi) = self.zoom;
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
            return Err(bad(
                "zoom",
                format!("({lo}, {hi}) is not a range of positive scales"),
            ));
        }
        if lo < MIN_ZOOM || hi > MAX_ZOOM {
            return Err(bad(
                "zoom",
                format!("({lo}, {hi}) leaves [{MIN_ZOOM}, {MAX_ZOOM}]"),
            ));
        }
        if !(0.0..1.0).contains(&self.translate) {
            return Err(bad(
                "translate",
                format!("{} is outside [0, 1)", self.translate),
            ));
        }
        if !(0.0..=1.0).contains(&self.brightness) {
            return Err(bad(
                "brightness",
                format!("{} is outside [0, 1]", self.brightness),
            ));
        }
        if !(0.0..1.0).contains(&self.contrast) {
            return Err(bad(
                "contrast",
                format!("{} is outside [0, 1)", self.contrast),
            ));
        }
        if let Some(w) = self.window {
            prob("window probability", w.probability)?;
            percentile_window(&mut [], w.p_low, w.p_high)?;
        }
        if let Some(c) = self.clahe {
            prob("CLAHE probability", c.probability)?;
            c.clahe.check()?;
        }
        Ok(())
    }
}

/// The named augmentation presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The MURA paper's flips and ±30° rotation.
    Train,
    /// Deterministic resize only.
    Eval,
}

impl Preset {
    pub fn config(self) -> AugmentConfig {
        match self {
            Preset::Train => AugmentConfig::mura_paper(),
            Preset::Eval => AugmentConfig::none(),
        }
    }
}

/// What happens before augmentation: output size, resize mode and filter, channels, normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    pub width: u32,
    pub height: u32,
    pub mode: ResizeMode,
    pub filter: Filter,
    /// 1, or 3 with the gray channel replicated (ImageNet backbones).
    pub channels: usize,
    pub normalize: Normalize,
}

impl Preprocess {
    /// A square ImageNet-normalised 3-channel input, letterboxed.
    pub fn imagenet(size: u32) -> Self {
        Self {
            width: size,
            height: size,
            mode: ResizeMode::Letterbox { pad: 0 },
            filter: Filter::Bilinear,
            channels: 3,
            normalize: Normalize::IMAGENET,
        }
    }
}

/// The random choices made for one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub hflip: bool,
    pub vflip: bool,
    pub angle_degrees: f32,
    pub scale: f32,
    /// Shift in output pixels.
    pub shift: (f32, f32),
    pub brightness: f32,
    pub contrast: f32,
    pub window: bool,
    pub clahe: bool,
}

impl Params {
    fn is_geometric_identity(&self) -> bool {
        self.angle_degrees == 0.0 && self.scale == 1.0 && self.shift == (0.0, 0.0)
    }
}

/// Draws the parameters for image `index` of `epoch`. The draws are made in a fixed order whatever
/// the config, from a stream that depends only on `(seed, epoch, index)`.
pub fn sample_params(
    config: &AugmentConfig,
    size: (u32, u32),
    seed: u64,
    epoch: u64,
    index: u64,
) -> Params {
    let mut rng = stream_rng(seed, &[0x4155_474d, epoch, index]); // "AUGM"
    let mut u = || unit(&mut rng) as f32;
    let (hflip_u, vflip_u, angle_u, zoom_u, tx_u, ty_u, b_u, c_u, w_u, c2_u) =
        (u(), u(), u(), u(), u(), u(), u(), u(), u(), u());
    let rotation = config.rotation.min(180.0);
    let lerp = |lo: f32, hi: f32, t: f32| lo + (hi - lo) * t;
    Params {
        hflip: hflip_u < config.hflip,
        vflip: vflip_u < config.vflip,
        angle_degrees: lerp(-rotation, rotation, angle_u),
        scale: lerp(config.zoom.0, config.zoom.1, zoom_u),
        shift: (
            lerp(-config.translate, config.translate, tx_u) * size.0 as f32,
            lerp(-config.translate, config.translate, ty_u) * size.1 as f32,
        ),
        brightness: lerp(-config.brightness, config.brightness, b_u),
        contrast: lerp(1.0 - config.contrast, 1.0 + config.contrast, c_u),
        window: config.window.is_some_and(|w| w_u < w.probability),
        clahe: config.clahe.is_some_and(|c| c2_u < c.probability),
    }
}

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

/// A fixed transformation applied on top of the sampled one: a view of test-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct View {
    /// Flip horizontally (after any sampled flip: two flips cancel).
    pub hflip: bool,
    /// Degrees added to the sampled rotation (counter-clockwise), bilinear with black fill.
    pub angle_degrees: f32,
}

impl View {
    /// The image as it is.
    pub const IDENTITY: View = View {
        hflip: false,
        angle_degrees: 0.0,
    };

    fn apply(self, params: &mut Params) {
        params.hflip ^= self.hflip;
        params.angle_degrees += self.angle_degrees;
    }
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

/// Writes the geometric transform of `plane` (flips, then rotation, scale and shift about the
/// centre) into `out` as values in [0, 1]. Bilinear sampling; outside the image is black. The
/// straightforward reference the fused pass is tested against.
#[cfg(test)]
fn render(plane: &[u8], w: usize, h: usize, params: &Params, out: &mut [f32]) {
    const INV: f32 = 1.0 / 255.0;
    if params.is_geometric_identity() {
        for y in 0..h {
            let sy = if params.vflip { h - 1 - y } else { y };
            let src = &plane[sy * w..(sy + 1) * w];
            let dst = &mut out[y * w..(y + 1) * w];
            if params.hflip {
                for (o, &v) in dst.iter_mut().zip(src.iter().rev()) {
                    *o = f32::from(v) * INV;
                }
            } else {
                for (o, &v) in dst.iter_mut().zip(src) {
                    *o = f32::from(v) * INV;
                }
            }
        }
        return;
    }
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let (sin, cos) = params.angle_degrees.to_radians().sin_cos();
    let inv_scale = 1.0 / params.scale;
    let fx = if params.hflip { -1.0 } else { 1.0 };
    let fy = if params.vflip { -1.0 } else { 1.0 };
    // Source position (centre-relative) of destination offset (dx, dy):
    // flip( R(-θ) (d - shift) / s ).
    let (m00, m01) = (fx * cos * inv_scale, fx * sin * inv_scale);
    let (m10, m11) = (-fy * sin * inv_scale, fy * cos * inv_scale);
    let sample = |x: isize, y: isize| -> f32 {
        if x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h {
            f32::from(plane[y as usize * w + x as usize])
        } else {
            0.0
        }
    };
    for y in 0..h {
        let dy = y as f32 + 0.5 - cy - params.shift.1;
        for x in 0..w {
            let dx = x as f32 + 0.5 - cx - params.shift.0;
            // Continuous source coordinates, pixel centres at k + 0.5.
            let sx = m00 * dx + m01 * dy + cx - 0.5;
            let sy = m10 * dx + m11 * dy + cy - 0.5;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (ax, ay) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            let top = sample(x0, y0) * (1.0 - ax) + sample(x0 + 1, y0) * ax;
            let bottom = sample(x0, y0 + 1) * (1.0 - ax) + sample(x0 + 1, y0 + 1) * ax;
            out[y * w + x] = (top * (1.0 - ay) + bottom * ay) * INV;
        }
    }
}

/// A grid of augmented samples for a person to look at: one row per image, `columns` draws
/// (epochs) per row, channel 0 mapped back to 8-bit gray. Returns `(width, height, pixels)`.
pub fn preview_grid(
    pipeline: &Pipeline,
    images: &[DecodedImage],
    columns: usize,
) -> Result<(u32, u32, Vec<u8>), AugmentError> {
    let p = &pipeline.preprocess;
    let (w, h) = (p.width as usize, p.height as usize);
    let gap = 2;
    let grid_w = columns * (w + gap) + gap;
    let grid_h = images.len() * (h + gap) + gap;
    let mut grid = vec![255u8; grid_w * grid_h];
    let mut slot = vec![0.0f32; pipeline.output_len()];
    let (m, s) = (p.normalize.mean[0], p.normalize.std[0]);
    for (row, image) in images.iter().enumerate() {
        for col in 0..columns {
            pipeline.process_into(image, col as u64, row as u64, &mut slot)?;
            for y in 0..h {
                for x in 0..w {
                    let v = (slot[y * w + x] * s + m).clamp(0.0, 1.0);
                    let gy = gap + row * (h + gap) + y;
                    let gx = gap + col * (w + gap) + x;
                    grid[gy * grid_w + gx] = (v * 255.0).round() as u8;
                }
            }
        }
    }
    Ok((grid_w as u32, grid_h as u32, grid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn gray(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> DecodedImage {
        DecodedImage {
            width: w,
            height: h,
            color: ColorMode::Gray,
            pixels: (0..h)
                .flat_map(|y| (0..w).map(move |x| (x, y)))
                .map(|(x, y)| f(x, y))
                .collect(),
        }
    }

    fn pre(w: u32, h: u32, channels: usize) -> Preprocess {
        Preprocess {
            width: w,
            height: h,
            mode: ResizeMode::Stretch,
            filter: Filter::Bilinear,
            channels,
            normalize: Normalize {
                mean: [0.0; 3],
                std: [1.0; 3],
            },
        }
    }

    fn params() -> Params {
        Params {
            hflip: false,
            vflip: false,
            angle_degrees: 0.0,
            scale: 1.0,
            shift: (0.0, 0.0),
            brightness: 0.0,
            contrast: 1.0,
            window: false,
            clahe: false,
        }
    }

    #[test]
    fn warp_with_identity_parameters_reproduces_the_image() {
        let img = gray(13, 9, |x, y| (x * 17 + y * 5) as u8);
        let mut direct = vec![0.0; 13 * 9];
        let p = params();
        render(&img.pixels, 13, 9, &p, &mut direct);
        // Force the general (bilinear) path with a tiny-but-zero-effect shift.
        let mut warped = vec![0.0; 13 * 9];
        let q = Params {
            shift: (1e-7, 0.0),
            ..p
        };
        render(&img.pixels, 13, 9, &q, &mut warped);
        for (a, b) in direct.iter().zip(&warped) {
            assert!((a - b).abs() < 1e-5);
        }
        for (a, &b) in direct.iter().zip(&img.pixels) {
            assert!((a - f32::from(b) / 255.0).abs() < 1e-7);
        }
    }

    #[test]
    fn views_flip_and_rotate_on_top_of_the_sampled_parameters() {
        let img = gray(16, 12, |x, y| (x * 13 + y * 7) as u8);
        let plain = Pipeline::new(pre(16, 12, 1), AugmentConfig::none(), 3).unwrap();
        let base = plain.process(&img, 0, 0).unwrap();
        let flipped = plain
            .with_view(View {
                hflip: true,
                angle_degrees: 0.0,
            })
            .unwrap();
        let out = flipped.process(&img, 0, 0).unwrap();
        for y in 0..12 {
            for x in 0..16 {
                assert_eq!(out[y * 16 + x], base[y * 16 + 15 - x]);
            }
        }
        // A rotation view equals sampling that angle; a flip view undoes a sampled flip.
        let turned = plain
            .with_view(View {
                hflip: false,
                angle_degrees: 10.0,
            })
            .unwrap();
        let mut expected = vec![0.0; 16 * 12];
        let p = Params {
            angle_degrees: 10.0,
            ..params()
        };
        render(&img.pixels, 16, 12, &p, &mut expected);
        // The fast warp uses 8-bit bilinear weights: within 0.01 of the float reference.
        let got = turned.process(&img, 0, 0).unwrap();
        assert!(got.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 0.01));
        assert_ne!(got, base);
        let always = AugmentConfig {
            hflip: 1.0,
            ..AugmentConfig::none()
        };
        let undone = Pipeline::new(pre(16, 12, 1), always, 3)
            .unwrap()
            .with_view(View {
                hflip: true,
                angle_degrees: 0.0,
            })
            .unwrap();
        assert_eq!(undone.process(&img, 0, 0).unwrap(), base);
        assert!(
            plain
                .with_view(View {
                    hflip: false,
                    angle_degrees: f32::NAN,
                })
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn fused_pass_equals_reference(
            w in 1usize..40, h in 1usize..40, angle in -180.0f32..180.0, scale in 0.5f32..2.0,
            tx in -5.0f32..5.0, ty in -5.0f32..5.0, hflip in any::<bool>(), vflip in any::<bool>(),
            brightness in -0.3f32..0.3, contrast in 0.6f32..1.4, identity in any::<bool>(),
        ) {
            let img = gray(w as u32, h as u32, |x, y| ((x * 37 + y * 11) % 256) as u8);
            let p = if identity {
                Params { hflip, vflip, brightness, contrast, ..params() }
            } else {
                Params { hflip, vflip, angle_degrees: angle, scale, shift: (tx, ty), brightness, contrast, window: false, clahe: false }
            };
            let mut reference = vec![0.0; w * h];
            render(&img.pixels, w, h, &p, &mut reference);
            let norm = Normalize::IMAGENET;
            let mut values = vec![0.0; w * h];
            render_values(&img.pixels, (w, h), &p, &mut values);
            let mut fused = vec![0.0; 3 * w * h];
            write_channels(&values, &norm, 3, Out::Slot(&mut fused));
            let mut appended = Vec::new();
            write_channels(&values, &norm, 3, Out::Append(&mut appended));
            prop_assert_eq!(&appended, &fused);
            for c in 0..3 {
                for i in 0..w * h {
                    let v = ((reference[i] - 0.5) * contrast + 0.5 + brightness).clamp(0.0, 1.0);
                    let expect = (v - norm.mean[c]) / norm.std[c];
                    // 8-bit bilinear weights truncate by under 1/256 per axis: at most one gray level per
                    // axis on a 255-level edge, so 2 levels, plus < 0.3 from 16.16 coordinate steps
                    // over a 64-pixel block; the contrast factor scales the error.
                    let tol = 2.5 * contrast.max(1.0) / 255.0 / norm.std[c] + 1e-4;
                    prop_assert!((fused[c * w * h + i] - expect).abs() <= tol, "c {c} i {i}: {} vs {expect}", fused[c * w * h + i]);
                }
            }
        }
    }

    #[test]
    fn rotation_by_180_equals_both_flips() {
        let img = gray(10, 8, |x, y| (x * 23 + y * 7) as u8);
        let mut rotated = vec![0.0; 80];
        render(
            &img.pixels,
            10,
            8,
            &Params {
                angle_degrees: 180.0,
                ..params()
            },
            &mut rotated,
        );
        let mut flipped = vec![0.0; 80];
        render(
            &img.pixels,
            10,
            8,
            &Params {
                hflip: true,
                vflip: true,
                ..params()
            },
            &mut flipped,
        );
        for (a, b) in rotated.iter().zip(&flipped) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn rotation_of_90_degrees_moves_a_bright_corner() {
        // Bright top-left quadrant of a square image; rotating +90° (clockwise in image coordinates,
        // y down) moves it to the top-right.
        let img = gray(8, 8, |x, y| if x < 4 && y < 4 { 255 } else { 0 });
        let mut out = vec![0.0; 64];
        render(
            &img.pixels,
            8,
            8,
            &Params {
                angle_degrees: 90.0,
                ..params()
            },
            &mut out,
        );
        assert!(out[7] > 0.99 && out[0] < 0.01, "{out:?}");
    }

    #[test]
    fn zoom_out_leaves_a_black_border_and_zoom_in_fills() {
        let img = gray(20, 20, |_, _| 200);
        let mut out = vec![0.0; 400];
        render(
            &img.pixels,
            20,
            20,
            &Params {
                scale: 0.5,
                ..params()
            },
            &mut out,
        );
        assert!(out[0] == 0.0 && (out[210] - 200.0 / 255.0).abs() < 1e-6);
        render(
            &img.pixels,
            20,
            20,
            &Params {
                scale: 1.5,
                ..params()
            },
            &mut out,
        );
        assert!(out.iter().all(|&v| (v - 200.0 / 255.0).abs() < 1e-6));
    }

    #[test]
    fn same_seed_epoch_index_same_pixels_whatever_the_thread() {
        let cfg = AugmentConfig {
            vflip: 0.5,
            zoom: (0.8, 1.2),
            translate: 0.1,
            brightness: 0.1,
            contrast: 0.2,
            window: Some(WindowAug {
                p_low: 5.0,
                p_high: 95.0,
                probability: 0.5,
            }),
            clahe: Some(ClaheAug {
                clahe: Clahe::default(),
                probability: 0.5,
            }),
            ..AugmentConfig::mura_paper()
        };
        let pipeline = Pipeline::new(Preprocess::imagenet(32), cfg, 9).unwrap();
        let images: Vec<DecodedImage> = (0..24)
            .map(|i| gray(40 + i, 50, |x, y| ((x * y + i) % 251) as u8))
            .collect();
        let serial: Vec<Vec<f32>> = images
            .iter()
            .enumerate()
            .map(|(i, im)| pipeline.process(im, 3, i as u64).unwrap())
            .collect();
        for threads in [2, 4] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let parallel: Vec<Vec<f32>> = pool.install(|| {
                use rayon::prelude::*;
                images
                    .par_iter()
                    .enumerate()
                    .rev()
                    .map(|(i, im)| pipeline.process(im, 3, i as u64).unwrap())
                    .collect::<Vec<_>>()
            });
            let mut parallel = parallel;
            parallel.reverse();
            assert_eq!(parallel, serial, "{threads} threads");
        }
        let other_epoch = pipeline.process(&images[0], 4, 0).unwrap();
        assert_ne!(other_epoch, serial[0]);
    }

    #[test]
    fn bad_configs_are_clear_errors_and_720_degrees_is_defined() {
        let ok = AugmentConfig::mura_paper();
        for (bad, field) in [
            (
                AugmentConfig {
                    hflip: f32::NAN,
                    ..ok
                },
                "hflip",
            ),
            (
                AugmentConfig {
                    rotation: f32::NAN,
                    ..ok
                },
                "rotation",
            ),
            (
                AugmentConfig {
                    zoom: (1.2, 0.8),
                    ..ok
                },
                "zoom",
            ),
            (
                AugmentConfig {
                    zoom: (0.0, 1.0),
                    ..ok
                },
                "zoom",
            ),
            (
                // Found by fuzzing: a positive but tiny scale overflowed the warp.
                AugmentConfig {
                    zoom: (1.9e-24, 5.7e-16),
                    ..ok
                },
                "zoom",
            ),
            (
                AugmentConfig {
                    zoom: (1.0, 17.0),
                    ..ok
                },
                "zoom",
            ),
            (
                AugmentConfig {
                    translate: 1.0,
                    ..ok
                },
                "translate",
            ),
            (
                AugmentConfig {
                    brightness: f32::INFINITY,
                    ..ok
                },
                "brightness",
            ),
            (
                AugmentConfig {
                    window: Some(WindowAug {
                        p_low: 95.0,
                        p_high: 5.0,
                        probability: 1.0,
                    }),
                    ..ok
                },
                "percentile window",
            ),
        ] {
            let err = Pipeline::new(Preprocess::imagenet(8), bad, 0).unwrap_err();
            assert!(
                matches!(&err, AugmentError::BadConfig { what, .. } if *what == field),
                "{err:?}"
            );
        }
        let spin = Pipeline::new(
            Preprocess::imagenet(8),
            AugmentConfig {
                rotation: 720.0,
                ..ok
            },
            0,
        )
        .unwrap();
        let out = spin
            .process(&gray(9, 9, |x, _| x as u8 * 20), 0, 0)
            .unwrap();
        assert!(out.iter().all(|v| v.is_finite()));
        let crop = Preprocess {
            mode: ResizeMode::CenterCrop { crop_fraction: 0.0 },
            ..Preprocess::imagenet(8)
        };
        assert!(Pipeline::new(crop, ok, 0).is_err());
        assert!(
            Pipeline::new(
                Preprocess {
                    channels: 2,
                    ..Preprocess::imagenet(8)
                },
                ok,
                0
            )
            .is_err()
        );
        let p = Pipeline::new(Preprocess::imagenet(8), ok, 0).unwrap();
        assert!(matches!(
            p.process(&gray(0, 0, |_, _| 0), 0, 0),
            Err(AugmentError::EmptyImage { .. })
        ));
        let one = p.process(&gray(1, 1, |_, _| 77), 0, 0).unwrap();
        assert_eq!(one.len(), 3 * 64);
    }

    #[test]
    fn always_on_intensity_steps_are_preprocessing_and_deterministic() {
        let window = WindowAug {
            p_low: 5.0,
            p_high: 95.0,
            probability: 1.0,
        };
        let cfg = AugmentConfig {
            window: Some(window),
            clahe: Some(ClaheAug {
                clahe: Clahe::default(),
                probability: 0.5,
            }),
            ..AugmentConfig::mura_paper()
        };
        let always = cfg.always();
        assert_eq!(always.window, Some(window));
        assert_eq!(always.clahe, None);
        assert_eq!(always.hflip, 0.0);
        assert!(always.is_deterministic());
        assert!(!cfg.is_deterministic());
        assert!(AugmentConfig::none().is_deterministic());
        // A deterministic pipeline gives the same pixels at every epoch.
        let p = Pipeline::new(pre(12, 12, 1), always, 9).unwrap();
        let img = gray(20, 16, |x, y| ((x * 11 + y * 5) % 256) as u8);
        let a = p.process(&img, 0, 3).unwrap();
        assert_eq!(a, p.process(&img, 7, 3).unwrap());
        assert_ne!(
            a,
            Pipeline::new(pre(12, 12, 1), AugmentConfig::none(), 9)
                .unwrap()
                .process(&img, 0, 3)
                .unwrap()
        );
    }

    proptest! {
        #[test]
        fn outputs_have_the_shape_and_stay_in_range(
            sw in 1u32..60, sh in 1u32..60, ow in 1u32..24, oh in 1u32..24,
            seed in any::<u64>(), index in 0u64..1000, three in any::<bool>(),
        ) {
            let cfg = AugmentConfig { vflip: 0.5, zoom: (0.7, 1.3), translate: 0.2, brightness: 0.3, contrast: 0.5, ..AugmentConfig::mura_paper() };
            let norm = Normalize::IMAGENET;
            let pre = Preprocess { width: ow, height: oh, mode: ResizeMode::Letterbox { pad: 0 }, filter: Filter::Bicubic, channels: if three { 3 } else { 1 }, normalize: norm };
            let pipeline = Pipeline::new(pre, cfg, seed).unwrap();
            let img = gray(sw, sh, |x, y| ((x * 31 + y * 17) % 256) as u8);
            let out = pipeline.process(&img, 0, index).unwrap();
            prop_assert_eq!(out.len(), pre.channels * (ow * oh) as usize);
            for (c, plane) in out.chunks((ow * oh) as usize).enumerate() {
                let lo = (0.0 - norm.mean[c]) / norm.std[c] - 1e-4;
                let hi = (1.0 - norm.mean[c]) / norm.std[c] + 1e-4;
                prop_assert!(plane.iter().all(|&v| v >= lo && v <= hi));
            }
        }

        #[test]
        fn zoom_one_rotation_zero_is_identity(w in 1u32..30, h in 1u32..30) {
            let pipeline = Pipeline::new(pre(w, h, 1), AugmentConfig::none(), 1).unwrap();
            let img = gray(w, h, |x, y| ((x * 7 + y * 13) % 256) as u8);
            let out = pipeline.process(&img, 0, 0).unwrap();
            for (o, &p) in out.iter().zip(&img.pixels) {
                prop_assert!((o - f32::from(p) / 255.0).abs() < 1e-6);
            }
        }
    }
}

//! `mura explain`: Grad-CAM heat maps of a trained run over the radiographs it is shown.
//!
//! Each image goes through the run's evaluation pipeline (exactly what the model sees), then
//! [`mura_models::grad_cam`] reads the model's last convolutional feature map. The PNG written
//! shows, under a title line with the file name and the probability, the model's input on the left
//! and the same input with the heat map (jet colours, blended where the map is warm) on the right,
//! the peak marked with a ring.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use mura_data::ColorMode;
use mura_models::{GradCam, grad_cam};
use plotters::prelude::*;
use serde::Serialize;

use crate::TrainError;
use crate::io::write_durable;
use crate::plot::{FONT, plot_error, register_font};
use crate::run::pipelines;
use crate::trained::TrainedRun;

/// Side of each of the two panels, at least: small model inputs are scaled up to it.
const MIN_PANEL: u32 = 320;
/// Height of the title strip.
const TITLE: u32 = 44;

/// What `explain` found for one image.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub image: PathBuf,
    /// The PNG written.
    pub out: PathBuf,
    pub probability: f64,
    /// The layer the map was read from.
    pub layer: String,
    /// The map's peak, as fractions (x, y) of the model input's width and height.
    pub peak: (f64, f64),
}

/// Grad-CAM of the run's model for one image file, and the gray input the model saw (in [0, 1]).
pub fn cam_of(run: &TrainedRun, image: &Path) -> Result<(GradCam, Vec<f32>, usize), TrainError> {
    let decoded = mura_data::decode_file_with(image, ColorMode::Gray, run.config.data.voi)?;
    cam_of_image(run, &decoded)
}

/// [`cam_of`] for a decoded image.
pub fn cam_of_image(
    run: &TrainedRun,
    decoded: &mura_data::DecodedImage,
) -> Result<(GradCam, Vec<f32>, usize), TrainError> {
    let (_, eval) = pipelines(&run.config, &run.model)?;
    let input = eval.process(decoded, 0, 0)?;
    let pre = eval.preprocess;
    let (w, h) = (pre.width as usize, pre.height as usize);
    let x = Tensor::from_vec(input.clone(), (1, pre.channels, h, w), &run.device)?;
    let cam = grad_cam(&run.model, &x, 0)?;
    // Undo the normalisation of the first channel: the gray image in [0, 1].
    let (mean, std) = (pre.normalize.mean[0], pre.normalize.std[0]);
    let gray = input[..w * h]
        .iter()
        .map(|v| (v * std + mean).clamp(0.0, 1.0))
        .collect();
    Ok((cam, gray, w))
}

/// Writes the heat-map PNG of each image into the folder `out` (created if needed), named
/// `<image name>.gradcam.png`, numbered `001-`, `002-`, ... when there are several (the images of
/// different studies are often all called `image1.png`).
pub fn explain_images(
    run: &TrainedRun,
    images: &[PathBuf],
    out: &Path,
) -> Result<Vec<Explanation>, TrainError> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::Unwritable {
        path: out.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut views = Vec::with_capacity(images.len());
    for image in images {
        let (file, _) = mura_data::dicom::split_frame(image);
        if !file.is_file() {
            return Err(TrainError::Input {
                path: image.clone(),
                reason: "no such image file".into(),
            });
        }
        // A multi-frame DICOM file: each frame.
        match file == *image {
            true => views.extend(crate::predict::image_views(image)?),
            false => views.push(image.clone()),
        }
    }
    let images = &views;
    let mut results = Vec::with_capacity(images.len());
    for (i, image) in images.iter().enumerate() {
        let (file, frame) = mura_data::dicom::split_frame(image);
        let stem = file
            .file_stem()
            .map_or_else(|| format!("image{i}"), |s| s.to_string_lossy().into_owned());
        let stem = match frame {
            Some(f) => format!("{stem}-frame{}", f + 1),
            None => stem,
        };
        let name = if images.len() > 1 {
            format!("{:03}-{stem}.gradcam.png", i + 1)
        } else {
            format!("{stem}.gradcam.png")
        };
        results.push(explain(run, image, &out.join(name))?);
    }
    Ok(results)
}

/// Writes the heat-map PNG of `image` to `out` and returns what it shows.
pub fn explain(run: &TrainedRun, image: &Path, out: &Path) -> Result<Explanation, TrainError> {
    let (cam, gray, w) = cam_of(run, image)?;
    let name = image.file_name().map_or_else(
        || image.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let (png, e) = panels(run, (&cam, &gray, w), &name)?;
    write_durable(out, &png)?;
    Ok(Explanation {
        image: image.to_path_buf(),
        out: out.to_path_buf(),
        ..e
    })
}

/// The heat-map PNG of a decoded image called `name`, in memory, and what it shows (`image`
/// and `out` left empty).
pub fn explain_image(
    run: &TrainedRun,
    image: &mura_data::DecodedImage,
    name: &str,
) -> Result<(Vec<u8>, Explanation), TrainError> {
    let (cam, gray, w) = cam_of_image(run, image)?;
    panels(run, (&cam, &gray, w), name)
}

/// The two panels of a Grad-CAM (`cam` of the `w`-wide gray input) titled with `name`.
fn panels(
    run: &TrainedRun,
    (cam, gray, w): (&GradCam, &[f32], usize),
    name: &str,
) -> Result<(Vec<u8>, Explanation), TrainError> {
    let h = gray.len() / w.max(1);
    let scale = MIN_PANEL.div_ceil(w.max(h) as u32).max(1);
    let (pw, ph) = (w as u32 * scale, h as u32 * scale);
    let heat = cam.upsampled(pw as usize, ph as usize);
    let layer = run.model.last_feature_map();
    let empty = cam.peak <= 0.0;
    // The probability `predict` gives: the model's, through the run's temperature.
    let probability = run.calibrate(f64::from(cam.probability));
    let title = format!(
        "{name}   p(abnormal) = {:.3}   Grad-CAM of {} at {layer}{}",
        probability,
        run.model.arch(),
        if empty {
            "   (empty: no region raises the score)"
        } else {
            ""
        }
    );
    let png = render(gray, (w, h), &heat, (pw, ph), &title, scale, !empty)?;
    let (py, px) = cam.argmax();
    let e = Explanation {
        image: PathBuf::new(),
        out: PathBuf::new(),
        probability,
        layer,
        peak: (
            (px as f64 + 0.5) / cam.width as f64,
            (py as f64 + 0.5) / cam.height as f64,
        ),
    };
    Ok((png, e))
}

/// Matplotlib's `jet`: blue → cyan → yellow → red, for `t` in [0, 1].
pub fn jet(t: f32) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0);
    let channel = |centre: f32| ((1.5 - (4.0 * t - centre).abs()).clamp(0.0, 1.0) * 255.0) as u8;
    [channel(3.0), channel(2.0), channel(1.0)]
}

/// Two panels side by side under a title: the input, and the input with the heat map.
fn render(
    gray: &[f32],
    (w, h): (usize, usize),
    heat: &[f32],
    (pw, ph): (u32, u32),
    title: &str,
    scale: u32,
    mark_peak: bool,
) -> Result<Vec<u8>, TrainError> {
    register_font()?;
    let (width, height) = (2 * pw, ph + TITLE);
    let mut buf = vec![255u8; (width * height * 3) as usize];
    for y in 0..ph {
        for x in 0..pw {
            let g = gray[(y / scale) as usize * w + (x / scale) as usize];
            let g8 = (g * 255.0).round() as u8;
            let left = (((y + TITLE) * width + x) * 3) as usize;
            buf[left..left + 3].copy_from_slice(&[g8; 3]);
            // Blend the colour map in proportion to the heat, so cold regions keep the radiograph.
            let t = heat[(y * pw + x) as usize];
            let a = 0.6 * t.clamp(0.0, 1.0).sqrt();
            let c = jet(t);
            let right = left + (pw * 3) as usize;
            for k in 0..3 {
                buf[right + k] = (f32::from(g8) * (1.0 - a) + f32::from(c[k]) * a).round() as u8;
            }
        }
    }
    debug_assert_eq!(gray.len(), w * h);
    let peak = heat
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i) as u32;
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.draw(&Text::new(
            title,
            (8, 12),
            (FONT, 16).into_font().color(&BLACK),
        ))
        .map_err(plot_error)?;
        let centre = ((pw + peak % pw) as i32, (TITLE + peak / pw) as i32);
        let ring = (pw.min(ph) / 16).max(4) as i32;
        if mark_peak {
            root.draw(&Circle::new(centre, ring, WHITE.stroke_width(2)))
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    let img = image::RgbImage::from_raw(width, height, buf)
        .ok_or_else(|| TrainError::Plot("the image buffer has the wrong size".into()))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(plot_error)?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_runs_from_blue_through_green_to_red() {
        assert_eq!(jet(0.0), [0, 0, 127]);
        assert_eq!(jet(0.5), [127, 255, 127]);
        assert_eq!(jet(1.0), [127, 0, 0]);
    }
}

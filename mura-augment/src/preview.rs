//! A grid of augmented samples for a person to look at.

use mura_data::{ColorMode, Dataset, DecodedImage, decode_file};

use crate::{AugmentConfig, AugmentError, Normalize, Pipeline, Preprocess};

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

/// What [`preview_dataset`] draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreviewOptions {
    /// Images (rows), spread evenly over the data set.
    pub rows: usize,
    /// Draws (columns) per image.
    pub columns: usize,
    /// The square side of each sample.
    pub size: u32,
    pub augment: AugmentConfig,
    pub seed: u64,
}

/// A preview grid of a data set, 8-bit gray.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviewGrid {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
    /// Images shown (rows).
    pub images: usize,
}

/// The preview grid of `options.rows` images spread over `dataset`, each drawn `columns`
/// times through the augmentation on one gray channel.
pub fn preview_dataset(
    dataset: &Dataset,
    options: &PreviewOptions,
) -> Result<PreviewGrid, AugmentError> {
    if dataset.is_empty() {
        return Err(AugmentError::Data(format!(
            "{}: no images to preview",
            dataset.base().display()
        )));
    }
    let step = (dataset.len() / options.rows.max(1)).max(1);
    let images = dataset
        .images()
        .iter()
        .step_by(step)
        .take(options.rows)
        .map(|r| decode_file(&r.file(dataset.base()), ColorMode::Gray))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AugmentError::Data(e.to_string()))?;
    let pipeline = Pipeline::new(
        Preprocess {
            normalize: Normalize::INCEPTION,
            channels: 1,
            ..Preprocess::imagenet(options.size)
        },
        options.augment,
        options.seed,
    )?;
    let (width, height, pixels) = preview_grid(&pipeline, &images, options.columns)?;
    Ok(PreviewGrid {
        width,
        height,
        pixels,
        images: images.len(),
    })
}

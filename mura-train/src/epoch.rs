//! One epoch of training and one pass of prediction: images stream through the loader and the
//! augmentation pipeline on worker threads, are stacked into N×C×H×W batches, and meet the model.
//! Dropout is reseeded per step from (seed, epoch, step), so a run is reproducible.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use mura_augment::Pipeline;
use mura_data::loader::Epoch;
use mura_data::{DataError, Loader, LoaderConfig};
use mura_models::Model;

use crate::TrainError;
use crate::loss::bce_with_logits;
use crate::optim::Optim;
use crate::parallel::Workers;

/// One labelled image.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub path: PathBuf,
    pub label: bool,
    /// Weight of this image's loss (its class weight; 1 for none).
    pub weight: f32,
}

/// A stacked batch: inputs N×C×H×W, targets and weights N×1, and the examples' indices.
#[derive(Debug, Clone)]
pub struct Batch {
    pub x: Tensor,
    pub y: Tensor,
    pub w: Tensor,
    pub indices: Vec<usize>,
    /// `x` holds backbone features (from a `cache::FeatureCache`), not images: only the
    /// head runs.
    pub features: bool,
}

impl Batch {
    /// The model's logits for this batch.
    pub fn logits(&self, model: &Model, train: bool) -> Result<Tensor, TrainError> {
        Ok(if self.features {
            model.forward_head(&self.x, train)?
        } else {
            model.forward(&self.x, train)?
        })
    }
}

/// The batches of one epoch, in the loader's seeded order.
pub struct Batches {
    epoch: Epoch<Vec<f32>>,
    examples: Arc<Vec<Example>>,
    shape: (usize, usize, usize),
    batch_size: usize,
    device: Device,
}

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches")
            .field("images", &self.epoch.len())
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

/// Streams `examples` for `epoch` through `pipeline` (augmented with the pipeline's seed per
/// (epoch, image)), `batch_size` at a time, onto `device`.
pub fn batches(
    examples: &Arc<Vec<Example>>,
    pipeline: &Pipeline,
    loader: LoaderConfig,
    epoch: u64,
    batch_size: usize,
    device: &Device,
) -> Result<Batches, TrainError> {
    batches_from(examples, pipeline, loader, epoch, 0, batch_size, device)
}

/// Like [`batches`], skipping the first `start` images of the epoch's order (the part of an
/// interrupted epoch already trained on); the batches that follow are the ones the uninterrupted
/// epoch would have formed when `start` is a multiple of `batch_size`.
pub fn batches_from(
    examples: &Arc<Vec<Example>>,
    pipeline: &Pipeline,
    loader: LoaderConfig,
    epoch: u64,
    start: usize,
    batch_size: usize,
    device: &Device,
) -> Result<Batches, TrainError> {
    if batch_size == 0 {
        return Err(TrainError::BadParameter {
            what: "batch size",
            expected: "positive",
            value: 0.0,
        });
    }
    let files = examples.iter().map(|e| e.path.clone()).collect();
    let loader = Loader::new(files, loader)?;
    let p = *pipeline;
    let paths = Arc::clone(examples);
    let stream = loader.epoch_from(epoch, start, move |i, image| {
        p.process(&image, epoch, i as u64)
            .map_err(|e| DataError::Decode {
                path: paths.get(i).map(|x| x.path.clone()).unwrap_or_default(),
                message: e.to_string(),
            })
    });
    let pre = pipeline.preprocess;
    Ok(Batches {
        epoch: stream,
        examples: Arc::clone(examples),
        shape: (pre.channels, pre.height as usize, pre.width as usize),
        batch_size,
        device: device.clone(),
    })
}

impl Batches {
    /// Images this epoch visits.
    pub fn len(&self) -> usize {
        self.epoch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.epoch.is_empty()
    }
}

impl Iterator for Batches {
    type Item = Result<Batch, TrainError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (c, h, w) = self.shape;
        let mut pixels = Vec::with_capacity(self.batch_size * c * h * w);
        let (mut ys, mut ws, mut indices) = (vec![], vec![], vec![]);
        for sample in self.epoch.by_ref() {
            let sample = match sample {
                Ok(s) => s,
                Err(e) => return Some(Err(e.into())),
            };
            let Some(ex) = self.examples.get(sample.index) else {
                continue;
            };
            if sample.value.iter().any(|v| !v.is_finite()) {
                return Some(Err(TrainError::NonFiniteInput {
                    path: ex.path.clone(),
                }));
            }
            pixels.extend_from_slice(&sample.value);
            ys.push(if ex.label { 1f32 } else { 0f32 });
            ws.push(ex.weight);
            indices.push(sample.index);
            if indices.len() == self.batch_size {
                break;
            }
        }
        if indices.is_empty() {
            return None;
        }
        let n = indices.len();
        let make = || -> Result<Batch, TrainError> {
            Ok(Batch {
                x: Tensor::from_vec(pixels, (n, c, h, w), &self.device)?,
                y: Tensor::from_vec(ys, (n, 1), &self.device)?,
                w: Tensor::from_vec(ws, (n, 1), &self.device)?,
                indices,
                features: false,
            })
        };
        Some(make())
    }
}

/// What one training epoch did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochStats {
    /// Mean weighted loss over the images.
    pub loss: f64,
    pub images: usize,
    pub seconds: f64,
}

impl EpochStats {
    pub fn images_per_sec(&self) -> f64 {
        self.images as f64 / self.seconds.max(1e-9)
    }
}

/// Where a training epoch stands: enough to report on it and to continue it after an interrupt.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochProgress {
    /// Optimiser steps (batches) done.
    pub steps: u64,
    /// Images trained on.
    pub images: usize,
    /// Sum over images of the weighted loss.
    pub loss_sum: f64,
    /// Seconds spent so far (across interruptions).
    pub seconds: f64,
    /// (example index, training-time probability) of every image seen, for train AUC and kappa as
    /// Keras reports them (computed on the fly, under augmentation and dropout).
    pub predictions: Vec<(usize, f64)>,
}

impl EpochProgress {
    pub fn stats(&self) -> EpochStats {
        EpochStats {
            loss: self.loss_sum / self.images.max(1) as f64,
            images: self.images,
            seconds: self.seconds,
        }
    }
}

/// How an epoch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochEnd {
    Completed,
    /// `stop` returned true at a batch boundary; the progress holds what was done.
    Interrupted,
}

/// The sum of every element of `t` in f32: finite exactly when every element is (barring an
/// overflow of the sum itself, which a batch of normalised pixels or a gradient cannot reach
/// without being broken anyway).
pub(crate) fn finite_sum(t: &Tensor) -> Result<f64, TrainError> {
    Ok(f64::from(
        t.to_dtype(candle_core::DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?,
    ))
}

/// The dropout seed of `step` of `epoch` in a run seeded with `seed`.
pub fn step_seed(seed: u64, epoch: u64, step: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (epoch << 32) ^ step
}

/// Trains `model` for one epoch: forward in train mode, weighted BCE on logits, backward, optimiser
/// step. Non-finite cached features, loss or gradients stop with [`TrainError::NonFinite`] before
/// the step is applied (a non-finite image stops [`Batches`] naming its file).
pub fn train_epoch(
    model: &Model,
    optim: &mut Optim,
    batches: impl Iterator<Item = Result<Batch, TrainError>>,
    seed: u64,
    epoch: u64,
) -> Result<EpochStats, TrainError> {
    let mut progress = EpochProgress::default();
    train_epoch_with(
        model,
        optim,
        batches,
        seed,
        epoch,
        &mut progress,
        &mut |_| false,
    )?;
    Ok(progress.stats())
}

/// [`train_epoch`], continuing `progress` (the batches must start where it stopped), calling
/// `stop(&progress)` after every step: when it answers true the epoch ends early with
/// [`EpochEnd::Interrupted`] at that batch boundary.
pub fn train_epoch_with(
    model: &Model,
    optim: &mut Optim,
    batches: impl Iterator<Item = Result<Batch, TrainError>>,
    seed: u64,
    epoch: u64,
    progress: &mut EpochProgress,
    stop: &mut dyn FnMut(&EpochProgress) -> bool,
) -> Result<EpochEnd, TrainError> {
    let at = (seed, epoch);
    train_ranks(model, optim, None, batches, at, progress, stop)
}

/// [`train_epoch_with`] with `model` and `optim` as rank 0 of a data-parallel run whose other
/// ranks are `workers` (one process when `None`); `(seed, epoch)` seed dropout.
pub fn train_ranks(
    model: &Model,
    optim: &mut Optim,
    workers: Option<&Workers>,
    batches: impl Iterator<Item = Result<Batch, TrainError>>,
    (seed, epoch): (u64, u64),
    progress: &mut EpochProgress,
    stop: &mut dyn FnMut(&EpochProgress) -> bool,
) -> Result<EpochEnd, TrainError> {
    let mut t = Instant::now();
    for batch in batches {
        let b = batch?;
        let step = progress.steps;
        model.set_seed(step_seed(seed, epoch, step));
        let non_finite = |what: String, value: f64| TrainError::NonFinite {
            what,
            epoch: epoch + 1,
            batch: step + 1,
            value,
        };
        // Image batches from `Batches` were checked image by image (naming the file); cached
        // features come from the model and are checked here.
        if b.features {
            let input = finite_sum(&b.x)?;
            if !input.is_finite() {
                return Err(non_finite(
                    "the cached backbone features of a batch".into(),
                    input,
                ));
            }
        }
        let (value, p) = match workers {
            Some(w) => {
                let r = w.step(model, optim, &b, (seed, epoch, step))?;
                (r.loss, r.probabilities)
            }
            None => one_step(model, optim, &b, &non_finite)?,
        };
        let n = b.indices.len();
        progress.steps += 1;
        progress.loss_sum += value * n as f64;
        progress.images += n;
        progress.predictions.extend(
            b.indices
                .iter()
                .copied()
                .zip(p.iter().map(|&v| f64::from(v))),
        );
        progress.seconds += t.elapsed().as_secs_f64();
        t = Instant::now();
        if stop(progress) {
            return Ok(EpochEnd::Interrupted);
        }
    }
    progress.seconds += t.elapsed().as_secs_f64();
    Ok(EpochEnd::Completed)
}

/// One optimiser step on `b` in this process: the loss and the batch's probabilities. A
/// non-finite loss or gradient is an error (made by `non_finite`) before the step is applied.
fn one_step(
    model: &Model,
    optim: &mut Optim,
    b: &Batch,
    non_finite: &dyn Fn(String, f64) -> TrainError,
) -> Result<(f64, Vec<f32>), TrainError> {
    let logits = b.logits(model, true)?;
    let loss = optim.regularize(bce_with_logits(&logits, &b.y, Some(&b.w))?)?;
    let grads = loss.backward()?;
    // One read-back per step, whatever the device: the loss, each gradient's sum (NaN or
    // infinity in a gradient shows in its sum) and the batch's probabilities.
    let (names, sums) = optim.gradient_sums(&grads)?;
    let probs = candle_nn::ops::sigmoid(&logits.narrow(1, 0, 1)?.detach())?.flatten_all()?;
    let f32 = candle_core::DType::F32;
    let mut parts = vec![loss.detach().to_dtype(f32)?.reshape(1)?];
    parts.extend(sums);
    parts.push(probs.to_dtype(f32)?);
    let mut host: Vec<f32> = Tensor::cat(&parts, 0)?.to_vec1()?;
    let value = f64::from(host.first().copied().unwrap_or(f32::NAN));
    if !value.is_finite() {
        return Err(non_finite("the loss".into(), value));
    }
    let probs = host.split_off((1 + names.len()).min(host.len()));
    if let Some((name, s)) = names.iter().zip(&host[1..]).find(|(_, s)| !s.is_finite()) {
        return Err(non_finite(format!("the gradient of {name}"), f64::from(*s)));
    }
    optim.step(&grads)?;
    Ok((value, probs))
}

/// Eval-mode abnormality probabilities (sigmoid of the first logit), as (example index,
/// probability), in the batches' order.
pub fn predict(
    model: &Model,
    batches: impl Iterator<Item = Result<Batch, TrainError>>,
) -> Result<Vec<(usize, f64)>, TrainError> {
    let mut out = Vec::new();
    for batch in batches {
        let b = batch?;
        let logits = b.logits(model, false)?.narrow(1, 0, 1)?;
        let p: Vec<f32> = candle_nn::ops::sigmoid(&logits)?.flatten_all()?.to_vec1()?;
        out.extend(b.indices.iter().copied().zip(p.into_iter().map(f64::from)));
    }
    Ok(out)
}

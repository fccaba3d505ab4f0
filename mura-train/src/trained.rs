//! A trained run opened to predict: its config, the chosen checkpoint folded for inference, its
//! decision threshold; and test-time augmentation, the views whose probabilities are averaged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use candle_nn::VarMap;
use mura_augment::View;
use mura_metrics::Threshold;
use mura_models::Model;
use mura_models::checkpoint::{self, LoadOptions};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::config::RunConfig;
use crate::epoch::{Example, batches, predict};
use crate::run::{
    Calibration, Weights, check_run_dir, device, files, load_calibration, load_threshold, loader,
    pipelines,
};
use crate::state::OPTIM_PREFIX;

/// Test-time augmentation: each image is predicted through several views and the probabilities
/// averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tta {
    /// The image as it is.
    #[default]
    None,
    /// The image and its mirror image.
    Hflip,
    /// The image rotated by each of [`TTA_ANGLES`] and not at all.
    Rot,
    /// Every combination of the two: six views.
    HflipRot,
}

/// The rotations of [`Tta::Rot`], in degrees.
pub const TTA_ANGLES: [f32; 2] = [-10.0, 10.0];

impl Tta {
    /// `none`, `hflip`, `rot` or `hflip+rot`.
    pub fn parse(text: &str) -> Result<Self, TrainError> {
        match text {
            "none" => Ok(Tta::None),
            "hflip" => Ok(Tta::Hflip),
            "rot" => Ok(Tta::Rot),
            "hflip+rot" | "rot+hflip" => Ok(Tta::HflipRot),
            other => Err(TrainError::Config {
                path: PathBuf::new(),
                reason: format!(
                    "unknown test-time augmentation `{other}` (none, hflip, rot, hflip+rot)"
                ),
            }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tta::None => "none",
            Tta::Hflip => "hflip",
            Tta::Rot => "rot",
            Tta::HflipRot => "hflip+rot",
        }
    }

    /// The views whose probabilities are averaged; the first is the identity.
    pub fn views(self) -> Vec<View> {
        let flips: &[bool] = match self {
            Tta::Hflip | Tta::HflipRot => &[false, true],
            _ => &[false],
        };
        let angles: Vec<f32> = match self {
            Tta::Rot | Tta::HflipRot => std::iter::once(0.0).chain(TTA_ANGLES).collect(),
            _ => vec![0.0],
        };
        flips
            .iter()
            .flat_map(|&hflip| {
                angles.iter().map(move |&angle_degrees| View {
                    hflip,
                    angle_degrees,
                })
            })
            .collect()
    }
}

/// A trained run, ready to predict.
pub struct TrainedRun {
    pub dir: PathBuf,
    pub config: RunConfig,
    pub model: Model,
    pub varmap: VarMap,
    pub device: Device,
    /// The decision threshold chosen on validation (`threshold.json`), when there is one.
    pub threshold: Option<Threshold>,
    /// The checkpoint loaded: `Best` or `Last`.
    pub weights: Weights,
    /// The temperature its probabilities are rescaled by (`calibration.json`), when one was
    /// fitted and the run calibrates.
    pub calibration: Option<Calibration>,
}

impl std::fmt::Debug for TrainedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainedRun")
            .field("dir", &self.dir)
            .field("arch", &self.model.arch())
            .finish_non_exhaustive()
    }
}

impl TrainedRun {
    /// Opens a run directory: its `config.toml` and the chosen checkpoint.
    pub fn open(
        dir: &Path,
        weights: Weights,
        device_spec: Option<&str>,
    ) -> Result<Self, TrainError> {
        check_run_dir(dir)?;
        let config = RunConfig::load(&dir.join(files::CONFIG))?;
        let dev = device(device_spec.unwrap_or(&config.device))?;
        crate::run::set_tf32(config.tf32);
        let (model, varmap) = Model::with_seed(&config.model, config.seed, &dev)?;
        let path = dir.join(weights.file(&config));
        if !path.exists() {
            return Err(TrainError::BadCheckpoint {
                path,
                reason: "missing: the run has not finished an epoch".into(),
            });
        }
        checkpoint::load(
            &model,
            &varmap,
            &path,
            LoadOptions {
                ignore_prefix: Some(OPTIM_PREFIX),
                ..LoadOptions::default()
            },
        )?;
        // A trained run only predicts: no autograd graph, BatchNorm folded where it can be (see
        // `Model::for_inference`).
        let model = model.for_inference(&varmap)?;
        let calibration = match config.train.calibrate {
            true => load_calibration(dir)?,
            false => None,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            threshold: load_threshold(dir)?,
            calibration,
            weights: weights.resolve(&config),
            config,
            model,
            varmap,
            device: dev,
        })
    }

    /// `p` calibrated: rescaled by the run's temperature, or as it is without one.
    pub fn calibrate(&self, p: f64) -> f64 {
        match &self.calibration {
            Some(c) => mura_metrics::apply_temperature(p, c.temperature.temperature),
            None => p,
        }
    }

    /// Eval-mode probabilities of decoded images as the model gives them (before calibration),
    /// through the run's evaluation preprocessing, in their order.
    pub fn predict_images(
        &self,
        images: &[&mura_data::DecodedImage],
    ) -> Result<Vec<f64>, TrainError> {
        let (_, eval) = pipelines(&self.config, &self.model)?;
        let pre = eval.preprocess;
        let shape = (pre.channels, pre.height as usize, pre.width as usize);
        let bs = self
            .config
            .train
            .eval_batch_size
            .unwrap_or(self.config.train.batch_size)
            .max(1);
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(bs) {
            let mut pixels = Vec::with_capacity(chunk.len() * shape.0 * shape.1 * shape.2);
            for image in chunk {
                pixels.extend(eval.process(image, 0, 0)?);
            }
            let x = candle_core::Tensor::from_vec(
                pixels,
                (chunk.len(), shape.0, shape.1, shape.2),
                &self.device,
            )?;
            let logits = self.model.forward(&x, false)?.narrow(1, 0, 1)?;
            let p: Vec<f32> = candle_nn::ops::sigmoid(&logits)?.flatten_all()?.to_vec1()?;
            out.extend(p.into_iter().map(f64::from));
        }
        Ok(out)
    }

    /// Eval-mode probabilities of `paths` as the model gives them (before calibration), in
    /// their order, averaged over the views of `tta`.
    pub fn predict_paths(
        &self,
        paths: &[PathBuf],
        threads: usize,
        tta: Tta,
    ) -> Result<Vec<f64>, TrainError> {
        let views = tta.views();
        let mut sum = vec![0.0; paths.len()];
        for view in &views {
            for (s, p) in sum
                .iter_mut()
                .zip(self.predict_view(paths, threads, *view)?)
            {
                *s += p;
            }
        }
        Ok(sum.into_iter().map(|s| s / views.len() as f64).collect())
    }

    fn predict_view(
        &self,
        paths: &[PathBuf],
        threads: usize,
        view: View,
    ) -> Result<Vec<f64>, TrainError> {
        let examples: Arc<Vec<Example>> = Arc::new(
            paths
                .iter()
                .map(|p| Example {
                    path: p.clone(),
                    label: false,
                    weight: 1.0,
                })
                .collect(),
        );
        let (_, eval) = pipelines(&self.config, &self.model)?;
        let eval = eval.with_view(view)?;
        let mut lc = loader(&self.config, false);
        lc.threads = threads.max(1);
        let bs = self
            .config
            .train
            .eval_batch_size
            .unwrap_or(self.config.train.batch_size);
        let mut out = vec![f64::NAN; paths.len()];
        for (i, p) in predict(
            &self.model,
            batches(&examples, &eval, lc, 0, bs, &self.device)?,
        )? {
            out[i] = p;
        }
        Ok(out)
    }
}

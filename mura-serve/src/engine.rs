//! The inference engine: one thread owns the model (off the async threads), fed through a
//! bounded queue; a full queue is refused at once (the API answers 429). Each request's files
//! are decoded in memory (PNG, JPEG, DICOM with every frame a view), scored together as one
//! study, and, when asked, each view's Grad-CAM is drawn as a PNG.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use base64::Engine as _;
use mura_data::{BodyPart, ColorMode, DecodedImage, Voi, dicom};
use mura_metrics::DEFAULT_THRESHOLD;
use mura_train::history;
use mura_train::run::{Weights, files};
use mura_train::{Predictor, TrainError};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::ApiError;

/// One uploaded file.
#[derive(Debug, Clone)]
pub struct Upload {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// One study to score.
#[derive(Debug, Clone)]
pub struct Request {
    pub uploads: Vec<Upload>,
    /// Its body part, which a per-part ensemble routes by.
    pub part: Option<BodyPart>,
    /// Draw each view's Grad-CAM.
    pub cam: bool,
}

/// One view's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewResult {
    /// The uploaded file's name.
    pub name: String,
    /// The frame (from 1) of a multi-frame DICOM file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame: Option<u32>,
    pub width: u32,
    pub height: u32,
    pub probability: f64,
    /// The Grad-CAM panels as a `data:image/png;base64,` URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay: Option<String>,
}

/// A study's result: its views and their mean, decided at the model's threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StudyResult {
    pub images: Vec<ViewResult>,
    pub probability: f64,
    pub abnormal: bool,
    pub threshold: f64,
}

/// What `GET /api/model` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    pub name: String,
    /// `run` or `ensemble`.
    pub kind: &'static str,
    pub architectures: Vec<String>,
    pub threshold: f64,
    pub criterion: String,
    /// The best validation epoch of each run: (run, epoch, val AUC, val kappa, val loss).
    pub validation: Vec<Validation>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Validation {
    pub run: String,
    pub epoch: u32,
    pub val_auc: Option<f64>,
    pub val_kappa: Option<f64>,
    pub val_loss: f64,
}

/// How the engine runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineOptions {
    pub weights: Weights,
    /// Requests waiting beyond the one being scored; more are refused.
    pub queue: usize,
    /// Most pixels of one decoded view.
    pub max_pixels: u64,
    /// DICOM display values; each run's `data.voi` when `None`.
    pub voi: Option<Voi>,
}

struct Job {
    request: Request,
    reply: oneshot::Sender<Result<StudyResult, ApiError>>,
}

/// The model's thread and its queue.
#[derive(Debug)]
pub struct Engine {
    jobs: Option<SyncSender<Job>>,
    handle: Option<JoinHandle<()>>,
    pub info: ModelInfo,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl Engine {
    /// Opens the run or ensemble in `dir` on the engine's thread; its errors come back here.
    pub fn start(dir: &Path, options: EngineOptions) -> Result<Self, TrainError> {
        let (jobs, rx) = sync_channel::<Job>(options.queue);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let dir = dir.to_path_buf();
        let handle = std::thread::Builder::new()
            .name("mura-serve-model".into())
            .spawn(move || {
                let opened = Predictor::open(&dir, options.weights, None).map(|mut p| {
                    if let Some(voi) = options.voi {
                        p.set_voi(voi);
                    }
                    p
                });
                let opened = opened.and_then(|p| same_voi(&dir, &p, options.voi).map(|()| p));
                match opened.and_then(|p| Ok((model_info(&dir, &p)?, p))) {
                    Ok((info, p)) => {
                        let _ = ready_tx.send(Ok(info));
                        work(&p, &rx, options);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| TrainError::Input {
                path: PathBuf::new(),
                reason: format!("cannot start the model's thread: {e}"),
            })?;
        let info = ready_rx.recv().map_err(|_| TrainError::Input {
            path: PathBuf::new(),
            reason: "the model's thread ended before it was ready".into(),
        })??;
        Ok(Self {
            jobs: Some(jobs),
            handle: Some(handle),
            info,
        })
    }

    /// Queues `request`; refused at once with [`ApiError::Busy`] when the queue is full.
    pub fn submit(
        &self,
        request: Request,
    ) -> Result<oneshot::Receiver<Result<StudyResult, ApiError>>, ApiError> {
        let (reply, rx) = oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or(ApiError::Busy)?;
        match jobs.try_send(Job { request, reply }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(ApiError::Busy),
            Err(TrySendError::Disconnected(_)) => {
                Err(ApiError::Internal("the model's thread has stopped".into()))
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn work(p: &Predictor, jobs: &Receiver<Job>, options: EngineOptions) {
    for job in jobs {
        let result = score(p, &job.request, options);
        let _ = job.reply.send(result);
    }
}

/// The most views (images and DICOM frames) one request may hold.
pub const MAX_VIEWS: u64 = 64;

/// The views of one upload: its frames for DICOM, else the image.
fn decode(u: &Upload, options: EngineOptions, voi: Voi) -> Result<Vec<DecodedImage>, ApiError> {
    let name = Path::new(&u.name);
    let bad = |e: mura_data::DataError| ApiError::BadUpload {
        file: u.name.clone(),
        reason: e.to_string(),
    };
    let views = if dicom::is_dicom_bytes(&u.bytes) {
        // The header first: a compressed file may claim far more pixels than it carries.
        let info = dicom::info_bytes(&u.bytes, name).map_err(bad)?;
        let frame = u64::from(info.rows) * u64::from(info.columns);
        let all = frame * u64::from(info.frames);
        let too_many = u64::from(info.frames) > MAX_VIEWS;
        if too_many
            || frame > options.max_pixels
            || all > MAX_VIEWS.saturating_mul(options.max_pixels)
        {
            return Err(ApiError::TooLarge(format!(
                "{}: {} frame(s) of {}×{} pixels, more than allowed ({} pixels per view, {} views per request)",
                u.name, info.frames, info.columns, info.rows, options.max_pixels, MAX_VIEWS
            )));
        }
        dicom::decode_bytes(&u.bytes, name, voi, ColorMode::Gray).map_err(bad)?
    } else {
        vec![mura_data::decode_bytes(&u.bytes, name, ColorMode::Gray).map_err(bad)?]
    };
    for v in &views {
        let pixels = u64::from(v.width) * u64::from(v.height);
        if pixels > options.max_pixels {
            return Err(ApiError::TooLarge(format!(
                "{}: {}×{} pixels, more than the {} a view may have",
                u.name, v.width, v.height, options.max_pixels
            )));
        }
    }
    Ok(views)
}

fn score(p: &Predictor, r: &Request, options: EngineOptions) -> Result<StudyResult, ApiError> {
    let runs = p.runs();
    let voi = options
        .voi
        .or_else(|| runs.first().map(|r| r.config.data.voi))
        .unwrap_or_default();
    // Each view's (file name, frame) beside its image.
    let (mut labels, mut images): (Vec<(String, Option<u32>)>, Vec<DecodedImage>) =
        (vec![], vec![]);
    for u in &r.uploads {
        let frames = decode(u, options, voi)?;
        if (images.len() + frames.len()) as u64 > MAX_VIEWS {
            return Err(ApiError::TooLarge(format!(
                "{}: more than {MAX_VIEWS} views (images and frames) in one request",
                u.name
            )));
        }
        let multi = frames.len() > 1;
        for (i, f) in frames.into_iter().enumerate() {
            labels.push((u.name.clone(), multi.then_some(i as u32 + 1)));
            images.push(f);
        }
    }
    let internal = |e: TrainError| ApiError::Internal(e.to_string());
    let probs = p.predict_images(&images, r.part).map_err(|e| match e {
        TrainError::Config { reason, .. } => ApiError::BadUpload {
            file: String::new(),
            reason,
        },
        other => internal(other),
    })?;
    let explainer = p.explaining_run(r.part);
    let mut out = Vec::with_capacity(images.len());
    for (((name, frame), image), probability) in
        labels.into_iter().zip(&images).zip(probs.calibrated)
    {
        let overlay = match (r.cam, explainer) {
            (true, Some(run)) => {
                let title = frame.map_or_else(|| name.clone(), |f| format!("{name} frame {f}"));
                let (png, _) =
                    mura_train::explain::explain_image(run, image, &title).map_err(internal)?;
                let b64 = base64::engine::general_purpose::STANDARD.encode(png);
                Some(format!("data:image/png;base64,{b64}"))
            }
            _ => None,
        };
        out.push(ViewResult {
            name,
            frame,
            width: image.width,
            height: image.height,
            probability,
            overlay,
        });
    }
    let probability = out.iter().map(|v| v.probability).sum::<f64>() / out.len().max(1) as f64;
    let threshold = p.threshold().map_or(DEFAULT_THRESHOLD, |t| t.value);
    Ok(StudyResult {
        images: out,
        probability,
        abnormal: probability > threshold,
        threshold,
    })
}

/// An ensemble whose members read DICOM frames differently (`data.voi`) cannot share one decode
/// of an upload: refused unless `voi` overrides them all.
fn same_voi(dir: &Path, p: &Predictor, voi: Option<Voi>) -> Result<(), TrainError> {
    let runs = p.runs();
    let differ = runs
        .windows(2)
        .any(|w| w[0].config.data.voi != w[1].config.data.voi);
    if voi.is_none() && differ {
        return Err(TrainError::Input {
            path: dir.to_path_buf(),
            reason: "the ensemble's members read DICOM frames with different `data.voi`; give one with --voi".into(),
        });
    }
    Ok(())
}

/// The model's name, architectures, threshold and each run's best validation epoch.
fn model_info(dir: &Path, p: &Predictor) -> Result<ModelInfo, TrainError> {
    let name = dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let runs = p.runs();
    let mut validation = Vec::new();
    for r in &runs {
        let rows = history::read(&r.dir.join(files::HISTORY)).unwrap_or_default();
        let best = rows.iter().filter(|h| h.val_auc.is_some()).max_by(|a, b| {
            a.val_auc
                .partial_cmp(&b.val_auc)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        if let Some(h) = best {
            validation.push(Validation {
                run: r
                    .dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                epoch: h.epoch,
                val_auc: h.val_auc,
                val_kappa: h.val_kappa,
                val_loss: h.val_loss,
            });
        }
    }
    Ok(ModelInfo {
        name,
        kind: if runs.len() > 1 { "ensemble" } else { "run" },
        architectures: runs.iter().map(|r| r.model.arch().to_string()).collect(),
        threshold: p.threshold().map_or(DEFAULT_THRESHOLD, |t| t.value),
        criterion: format!("{:?}", p.criterion()).to_lowercase(),
        validation,
    })
}

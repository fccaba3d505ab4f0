//! Arguments of `mura train`, `mura evaluate`, `mura predict` and `mura demo`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use mura_data::Role;
use mura_models::Arch;
use mura_train::demo::DemoOptions;
use mura_train::predict::PredictOptions;
use mura_train::{EvaluateOptions, Overrides};

use super::{CriterionArg, OutputArgs, TtaArg, WeightsArg};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A TOML run configuration (see `configs/`); the flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the interrupted run in this directory (its config.toml and last.safetensors).
    #[arg(long, conflicts_with = "config")]
    pub resume: Option<PathBuf>,
    /// MURA root (the folder holding MURA-v1.1/).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A saved split manifest (split.csv); its paths are relative to --data.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Architecture (custom-cnn, densenet169, resnet50, inception_v3, ...).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub image_size: Option<usize>,
    #[arg(long)]
    pub epochs: Option<u32>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate of the optimiser.
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Folder that holds run directories.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// The run's name (its folder under --out).
    #[arg(long)]
    pub name: Option<String>,
    /// Weights to start from: a .safetensors file with timm names, or a tag fetched with
    /// `cargo xtask fetch-weights` (`densenet169.tv_in1k`), read from the local hub cache.
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// `cpu` or `cuda:N` (needs a build with `--features cuda`).
    #[arg(long)]
    pub device: Option<String>,
    /// Also write the per-epoch scalars as TensorBoard event files under RUN/tensorboard/.
    #[arg(long)]
    pub tensorboard: bool,
    /// How the decision threshold is chosen on the validation studies at the end.
    #[arg(long, value_enum)]
    pub threshold: Option<CriterionArg>,
    /// Data-parallel replicas, each taking its shard of every batch (train.data_parallel); on
    /// `cuda:N` rank r runs on `cuda:(N+r)`.
    #[arg(long, conflicts_with = "resume")]
    pub ranks: Option<usize>,
    /// With --ranks: BatchNorm statistics over every rank's shard together (PyTorch's
    /// SyncBatchNorm), so the run trains as one process reading each batch whole.
    #[arg(long, conflicts_with = "resume")]
    pub sync_batch_norm: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl TrainArgs {
    /// The architecture `--model` names, when given.
    pub fn arch(&self) -> Result<Option<Arch>, mura_models::ModelError> {
        self.model.as_deref().map(Arch::from_name).transpose()
    }

    /// The flags that override the run configuration.
    pub fn overrides(&self) -> Result<Overrides, mura_models::ModelError> {
        Ok(Overrides {
            data: self.data.clone(),
            manifest: self.manifest.clone(),
            model: self.arch()?,
            image_size: self.image_size,
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            seed: self.seed,
            name: self.name.clone(),
            pretrained: self.pretrained.clone(),
            device: self.device.clone(),
            tensorboard: self.tensorboard,
            threshold: self.threshold.map(Into::into),
            ranks: self.ranks,
            sync_batch_norm: self.sync_batch_norm,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    Test,
    Val,
}

impl SplitArg {
    pub fn role(self) -> Role {
        match self {
            SplitArg::Test => Role::Test,
            SplitArg::Val => Role::Val,
        }
    }
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// A run directory, or an ensemble directory (`mura ensemble`).
    pub run: PathBuf,
    /// Which part of the run's split to score: test (the official valid set) or val.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    pub split: SplitArg,
    #[arg(long, value_enum, default_value_t = WeightsArg::Final)]
    pub weights: WeightsArg,
    /// Bootstrap resamples for the 95% intervals (0: none).
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Test-time augmentation: average the probabilities of these views of each image.
    #[arg(long, value_enum, default_value_t = TtaArg::None)]
    pub tta: TtaArg,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl EvaluateArgs {
    pub fn options(&self) -> EvaluateOptions {
        EvaluateOptions {
            role: self.split.role(),
            weights: self.weights.into(),
            resamples: self.bootstrap,
            threads: self.threads,
            tta: self.tta.into(),
        }
    }
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A run directory, or an ensemble directory (`mura ensemble`).
    pub run: PathBuf,
    /// Images (PNG, JPEG, DICOM; `FILE#N` for frame N of a multi-frame DICOM file), or study
    /// folders (every image inside is predicted and averaged into the study; DICOM files of
    /// several studies make one study per StudyInstanceUID).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = WeightsArg::Final)]
    pub weights: WeightsArg,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Test-time augmentation: average the probabilities of these views of each image.
    #[arg(long, value_enum, default_value_t = TtaArg::None)]
    pub tta: TtaArg,
    /// DICOM display values: auto (the file's VOI LUT, else its window, else min–max), none
    /// (min–max) or CENTER,WIDTH; the run's `data.voi` when absent.
    #[arg(long)]
    pub voi: Option<mura_data::Voi>,
    /// Also print the patient name, ID, study date and StudyInstanceUID of DICOM inputs (never
    /// shown otherwise).
    #[arg(long)]
    pub show_identifiers: bool,
    #[arg(long)]
    pub json: bool,
}

impl PredictArgs {
    pub fn options(&self) -> PredictOptions {
        PredictOptions {
            threads: self.threads,
            tta: self.tta.into(),
            voi: self.voi,
            show_identifiers: self.show_identifiers,
        }
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Working folder: the synthetic data goes to OUT/data, the run to OUT/run.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Number of synthetic studies (generated once; delete OUT/data to change it).
    #[arg(long, default_value_t = 1000)]
    pub studies: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Loader threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Most epochs (early stopping may end sooner).
    #[arg(long, default_value_t = 8)]
    pub epochs: u32,
    /// Input side of the CNN.
    #[arg(long, default_value_t = 96)]
    pub image_size: usize,
    /// No progress bars or epoch lines.
    #[arg(long)]
    pub quiet: bool,
}

impl DemoArgs {
    pub fn options(&self) -> DemoOptions {
        DemoOptions {
            out: self.out.clone(),
            studies: self.studies,
            seed: self.seed,
            epochs: self.epochs,
            image_size: self.image_size,
            threads: self.threads,
        }
    }
}

//! The command line as clap parses it: the commands, and the arguments each group of commands
//! takes (`data.rs`, `model.rs`, `train.rs`, `compare.rs`), each turned into the library's own
//! options before a command runs.

mod compare;
mod data;
mod model;
mod train;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mura_data::{IndexOptions, Indexed};
use mura_train::{Tta, Weights};

pub use compare::{
    CompareArgs, CvArgs, EnsembleArgs, ExplainArgs, ReportArgs, SweepArgs, ThresholdArgs,
};
pub use data::{CheckArgs, PreviewArgs, SplitArgs, StatsArgs, SynthArgs};
pub use model::{
    BenchCommand, BenchModelArgs, BenchPipelineArgs, ExportArgs, ExportFormat, ModeArg, ModelArgs,
};
pub use train::{DemoArgs, EvaluateArgs, PredictArgs, SplitArg, TrainArgs};

/// mura: train, evaluate and explain abnormality classifiers for musculoskeletal radiographs (MURA).
#[derive(Debug, Parser)]
#[command(name = "mura", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the inspection table of a MURA copy: images per body part × label, studies, views
    /// per study, and (with --sizes) image sizes read from file headers.
    Stats(StatsArgs),
    /// Split a MURA copy into train/val (patient-grouped, stratified by body part × label) with the
    /// official valid set as test, or into k folds; write the manifest CSV.
    Split(SplitArgs),
    /// Decode every image of a MURA copy and report the ones that cannot be read (truncated or
    /// corrupt files); exits with status 2 if there is any.
    Check(CheckArgs),
    /// Write a synthetic MURA-v1.1 tree (CSVs and PNGs) with learnable abnormalities.
    Synth(SynthArgs),
    /// Write a PNG grid of augmented samples (one row per image, one column per draw) to look at.
    AugmentPreview(PreviewArgs),
    /// Benchmarks: `mura bench pipeline ROOT` measures decode + resize + train augmentations +
    /// normalise, beside decoding alone, in images/s.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The main job on the built-in synthetic data: generate it if absent, inspect and split it,
    /// train a small CNN (class weights, flips and rotations, early stopping, plateau decay),
    /// evaluate it on the held-out test split and print the study-level table.
    Demo(DemoArgs),
    /// Train a model: `--config run.toml` and/or flags; `--resume RUN_DIR` continues an interrupted run.
    Train(TrainArgs),
    /// Score a run on its test (or val) split: image- and study-level metrics per body part with
    /// bootstrap 95% intervals; writes predictions.csv, study_predictions.csv, metrics.json.
    Evaluate(EvaluateArgs),
    /// Abnormality probability of images, and of study folders (mean over their images).
    Predict(PredictArgs),
    /// The model zoo: `mura model list`; `mura model ARCH --summary`; `--weights FILE --check`
    /// (does the checkpoint fit?); `--weights FILE --forward IN.safetensors --out OUT.safetensors`
    /// (eval-mode logits of the tensor `input`, written as `logits`).
    Model(ModelArgs),
    /// A run as an ONNX file for any runtime: the eval-mode network (BatchNorm folded), its
    /// logits and calibrated probability (and with --with-features its last feature map), the
    /// preprocessing, threshold and temperature in the file's metadata.
    Export(ExportArgs),
    /// Grad-CAM heat maps: one PNG per image, the radiograph with the map of the model's last
    /// convolutional feature map overlaid and the probability printed.
    Explain(ExplainArgs),
    /// An HTML page comparing runs and ensembles: table ordered by a metric, training curves, ROC
    /// curves, per-body-part kappa beside the MURA paper, confusion matrices.
    Report(ReportArgs),
    /// Combine runs: mean of probabilities, majority vote, or routing by body part; writes an
    /// ensemble directory that `evaluate` and `predict` accept.
    Ensemble(EnsembleArgs),
    /// K-fold cross-validation on patient-grouped stratified folds: K runs, each metric as
    /// mean ± std over the folds.
    Cv(CvArgs),
    /// A grid (or list) of config overrides as named runs: all in turn, one per array task
    /// (`--index`), ranked by a validation metric (`--collect`); `--emit slurm|k8s` prints the
    /// job array.
    Sweep(SweepArgs),
    /// Is run A better than run B? On the studies both score: DeLong's test of the study-level
    /// AUCs, and paired bootstrap intervals (resampling patients) of the kappa and accuracy
    /// differences, overall and per body part.
    Compare(CompareArgs),
    /// Choose (again) a run's decision threshold on its validation studies: maximum kappa or
    /// Youden's J; stored in threshold.json.
    Threshold(ThresholdArgs),
    /// A local web page and JSON API for a run or ensemble: drop a study's images (PNG, JPEG,
    /// DICOM), see each view's probability and Grad-CAM and the study's decision.
    #[cfg(feature = "serve")]
    Serve(ServeArgs),
}

/// Arguments of `mura serve`.
#[cfg(feature = "serve")]
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A run or ensemble directory.
    pub run: PathBuf,
    /// Address to listen on (another host than 127.0.0.1 exposes the model to the network).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    #[arg(long, value_enum, default_value_t = WeightsArg::Final)]
    pub weights: WeightsArg,
    /// Requests that may wait for the model; more get 429 with Retry-After.
    #[arg(long, default_value_t = 8)]
    pub queue: usize,
    /// Largest request body, in MB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    pub max_body_mb: u32,
    /// Most pixels of one view, in megapixels.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub max_megapixels: u64,
    /// DICOM display values: auto, none or CENTER,WIDTH; the run's `data.voi` when absent.
    #[arg(long)]
    pub voi: Option<mura_data::Voi>,
}

#[cfg(feature = "serve")]
impl ServeArgs {
    pub fn options(&self) -> mura_serve::ServeOptions {
        let d = mura_serve::ServeOptions::default();
        mura_serve::ServeOptions {
            addr: self.addr,
            engine: mura_serve::EngineOptions {
                weights: self.weights.into(),
                queue: self.queue,
                max_pixels: self.max_megapixels << 20,
                voi: self.voi,
            },
            max_body_bytes: (self.max_body_mb as usize) << 20,
            ..d
        }
    }
}

/// The data set a data command reads.
#[derive(Debug, Args)]
pub struct IndexArgs {
    /// The folder holding MURA-v1.1/ (or MURA-v1.1/ itself).
    pub root: PathBuf,
    /// Fail on any skipped entry (macOS ._ side files, .DS_Store, stray files) instead of counting it.
    #[arg(long)]
    pub strict: bool,
    /// Trust the CSVs without checking that every listed image exists (for CSV-only copies).
    #[arg(long)]
    pub csv_only: bool,
}

impl IndexArgs {
    /// Indexes the data set as the flags say.
    pub fn index(&self) -> Result<Indexed, mura_data::DataError> {
        let options = IndexOptions {
            strict: self.strict,
            check_files: !self.csv_only,
        };
        mura_data::index(&self.root, &options)
    }
}

/// `--quiet` and `--json` of the commands that show progress.
#[derive(Debug, Args, Clone, Copy)]
pub struct OutputArgs {
    /// No progress bars or epoch lines; errors only.
    #[arg(long)]
    pub quiet: bool,
    /// Machine-readable output on stdout: one JSON object per epoch, then the result.
    #[arg(long)]
    pub json: bool,
}

/// `--threshold` / `--criterion`: how a decision threshold is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CriterionArg {
    /// Maximum Cohen's kappa.
    Kappa,
    /// Maximum Youden's J (sensitivity + specificity - 1).
    Youden,
}

impl From<CriterionArg> for mura_metrics::Criterion {
    fn from(c: CriterionArg) -> Self {
        match c {
            CriterionArg::Kappa => mura_metrics::Criterion::Kappa,
            CriterionArg::Youden => mura_metrics::Criterion::Youden,
        }
    }
}

/// `--tta`: test-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TtaArg {
    None,
    /// The image and its mirror image.
    Hflip,
    /// The image, and rotated by -10° and +10°.
    Rot,
    /// Both: six views.
    #[value(name = "hflip+rot")]
    HflipRot,
}

impl From<TtaArg> for Tta {
    fn from(t: TtaArg) -> Self {
        match t {
            TtaArg::None => Tta::None,
            TtaArg::Hflip => Tta::Hflip,
            TtaArg::Rot => Tta::Rot,
            TtaArg::HflipRot => Tta::HflipRot,
        }
    }
}

/// `--weights`: which checkpoint of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WeightsArg {
    /// What the run ended with: best, or last when early stopping does not restore the best.
    Final,
    Best,
    Last,
}

impl From<WeightsArg> for Weights {
    fn from(w: WeightsArg) -> Self {
        match w {
            WeightsArg::Final => Weights::Final,
            WeightsArg::Best => Weights::Best,
            WeightsArg::Last => Weights::Last,
        }
    }
}

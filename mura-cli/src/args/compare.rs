//! Arguments of `mura explain`, `report`, `ensemble`, `cv` and `threshold`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use mura_train::compare::CompareOptions;
use mura_train::ensemble::EnsembleMode;

use super::{CriterionArg, OutputArgs, SplitArg, WeightsArg};

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// A run directory.
    pub run: PathBuf,
    /// Images to explain.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Folder for the PNGs (one per image: `<image name>.gradcam.png`).
    #[arg(long)]
    pub out: PathBuf,
    /// DICOM display values: auto, none or CENTER,WIDTH; the run's `data.voi` when absent.
    #[arg(long)]
    pub voi: Option<mura_data::Voi>,
    #[arg(long, value_enum, default_value_t = WeightsArg::Final)]
    pub weights: WeightsArg,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run and ensemble directories to compare (evaluated on their test split first when they
    /// have not been).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Folder for index.html and its PNGs.
    #[arg(long)]
    pub out: PathBuf,
    /// The comparison table's order, best first: study_auc, study_kappa, kappa_at_threshold,
    /// study_accuracy, study_f1, study_sensitivity, study_specificity, image_auc.
    #[arg(long, default_value = "study_auc")]
    pub sort_by: String,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Mean of the members' probabilities.
    Mean,
    /// Share of members calling the image abnormal (each at its own chosen threshold).
    Vote,
    /// Each image to the member trained on its body part (or one trained on all parts).
    PerPart,
}

impl From<ModeArg> for EnsembleMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Mean => EnsembleMode::Mean,
            ModeArg::Vote => EnsembleMode::Vote,
            ModeArg::PerPart => EnsembleMode::PerPart,
        }
    }
}

#[derive(Debug, Args)]
pub struct EnsembleArgs {
    /// Member run directories (at least two).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = ModeArg::Mean)]
    pub mode: ModeArg,
    /// The ensemble's directory: ensemble.toml is written there, and `evaluate`/`predict`
    /// accept it like a run directory.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = WeightsArg::Final)]
    pub weights: WeightsArg,
}

#[derive(Debug, Args)]
pub struct CvArgs {
    /// The run configuration each fold trains with.
    #[arg(long)]
    pub config: PathBuf,
    /// Number of folds.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Folder that receives `<name>-cv<K>/` with one run per fold.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// Run one fold only (1 to K); without a value, the fold of this array task:
    /// SLURM_ARRAY_TASK_ID, else JOB_COMPLETION_INDEX, 0-based (task i runs fold i+1).
    #[arg(long, num_args = 0..=1, conflicts_with_all = ["collect", "emit"])]
    pub fold: Option<Option<usize>>,
    /// Gather the folds run one by one into cv.csv and cv.json, naming any missing or unfinished.
    #[arg(long, conflicts_with = "emit")]
    pub collect: bool,
    #[command(flatten)]
    pub jobs: EmitArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `--emit` and `--image`: a job array for a cluster instead of running.
#[derive(Debug, Args)]
pub struct EmitArgs {
    /// Print a job array that runs the tasks on a cluster: an sbatch script, or a Kubernetes
    /// Indexed Job manifest.
    #[arg(long, value_enum)]
    pub emit: Option<SchedulerArg>,
    /// The container image for --emit k8s.
    #[arg(long, default_value = "mura:latest")]
    pub image: String,
}

/// `--emit`: which scheduler a job array is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchedulerArg {
    Slurm,
    K8s,
}

impl From<SchedulerArg> for mura_train::cv::Scheduler {
    fn from(s: SchedulerArg) -> Self {
        match s {
            SchedulerArg::Slurm => Self::Slurm,
            SchedulerArg::K8s => Self::K8s,
        }
    }
}

#[derive(Debug, Args)]
pub struct ThresholdArgs {
    /// A run or ensemble directory.
    pub run: PathBuf,
    #[arg(long, value_enum, default_value_t = CriterionArg::Kappa)]
    pub criterion: CriterionArg,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The first run or ensemble directory.
    pub a: PathBuf,
    /// The second, trained on the same split.
    pub b: PathBuf,
    /// Which part of the split to compare on: test (the official valid set) or val.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    pub split: SplitArg,
    #[arg(long, value_enum, default_value_t = WeightsArg::Final)]
    pub weights: WeightsArg,
    /// Bootstrap resamples of the kappa and accuracy differences.
    #[arg(long, default_value_t = 2000)]
    pub bootstrap: usize,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl CompareArgs {
    pub fn options(&self) -> CompareOptions {
        CompareOptions {
            role: self.split.role(),
            weights: self.weights.into(),
            resamples: self.bootstrap,
            threads: self.threads,
        }
    }
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The sweep file: a base config, an output folder, a metric, a [grid] and/or [[runs]] of
    /// config overrides (docs/usage.md).
    pub file: PathBuf,
    /// Run one point only (0 to N-1); without a value, the point of this array task
    /// (SLURM_ARRAY_TASK_ID, else JOB_COMPLETION_INDEX).
    #[arg(long, num_args = 0..=1, conflicts_with_all = ["collect", "emit", "list"])]
    pub index: Option<Option<usize>>,
    /// Rank the finished points by the sweep's metric into sweep.csv and sweep.json.
    #[arg(long, conflicts_with_all = ["emit", "list"])]
    pub collect: bool,
    /// List the points (index, name, overrides) without running anything.
    #[arg(long, conflicts_with = "emit")]
    pub list: bool,
    #[command(flatten)]
    pub jobs: EmitArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

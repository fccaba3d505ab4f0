//! Arguments of `mura model` and `mura bench`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use mura_models::{Arch, HeadConfig, ModelConfig};

use super::{IndexArgs, WeightsArg};

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// An architecture (custom-cnn, alexnet-style, vgg-style, densenet121/169/201, resnet18/34/50,
    /// inception_v3), or `list` for all of them.
    pub arch: String,
    /// Outputs of the classifier (1 = one abnormality logit; 1000 loads an ImageNet checkpoint).
    #[arg(long, default_value_t = 1)]
    pub num_classes: usize,
    /// Input channels (3 = the gray image replicated for ImageNet backbones, 1 = gray).
    #[arg(long)]
    pub in_channels: Option<usize>,
    /// Square input side; the architecture's default when absent.
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Head of a zoo backbone.
    #[arg(long, value_enum, default_value_t = HeadArg::Linear)]
    pub head: HeadArg,
    /// Freeze the stages before this one (`features.denseblock4`, `layer4`, `Mixed_7a`) in the
    /// summary.
    #[arg(long)]
    pub trainable_from: Option<String>,
    /// Print the layer table: output shapes, parameters, MACs and GFLOPs.
    #[arg(long)]
    pub summary: bool,
    /// A `.safetensors` checkpoint (timm's `model.safetensors` or one of ours).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Check that --weights fits the architecture; list every mismatched tensor.
    #[arg(long)]
    pub check: bool,
    /// Run the model (eval mode) on the tensor `input` (N×C×H×W, f32) of this file, with the
    /// weights of --weights, or those seeded from 0 (as `mura export --arch` writes them).
    #[arg(long)]
    pub forward: Option<PathBuf>,
    /// Where --forward writes the tensor `logits`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print JSON (list and summary).
    #[arg(long)]
    pub json: bool,
}

impl ModelArgs {
    /// The model these flags describe for `arch`.
    pub fn config(&self, arch: Arch) -> ModelConfig {
        let base = ModelConfig::new(arch);
        ModelConfig {
            num_classes: self.num_classes,
            in_channels: self.in_channels.unwrap_or(base.in_channels),
            input_size: self.image_size,
            head: if arch.cnn_preset().is_some() {
                HeadConfig::default()
            } else {
                self.head.config()
            },
            ..base
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum HeadArg {
    /// Global average pooling and one dense layer (timm's head).
    Linear,
    /// The seed-000 report's MLP (docs/recipes.md): 512 → 512, dropout 0.25.
    MlpSeed000,
    /// The seed-003 report's MLP: 1024 → 512, dropout 0.5.
    MlpSeed003,
    /// The seed-002 report's add-gate head on global max pooling.
    AddGate,
}

impl HeadArg {
    fn config(self) -> HeadConfig {
        match self {
            Self::Linear => HeadConfig::default(),
            Self::MlpSeed000 => HeadConfig::mlp_seed000(),
            Self::MlpSeed003 => HeadConfig::mlp_seed003(),
            Self::AddGate => HeadConfig::add_gate_seed002(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Images/s of decode + resize + train augmentations + normalise through the loader.
    Pipeline(BenchPipelineArgs),
    /// Images/s of a zoo model with random weights: inference, or whole training steps (the
    /// workloads of `../shared/peers/models.py`, for side-by-side ratios).
    Model(BenchModelArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Infer,
    Train,
}

#[derive(Debug, Args)]
pub struct BenchModelArgs {
    /// Architecture (`mura model list`).
    pub arch: String,
    #[arg(long, value_enum, default_value_t = ModeArg::Infer)]
    pub mode: ModeArg,
    /// Batch size [default: 16 to infer, 8 to train].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Input side [default: 256 for custom-cnn, 299 for inception_v3, 224 otherwise].
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Compute threads (candle's pool is sized once per process: the command restarts itself
    /// with RAYON_NUM_THREADS set when it differs).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed steps after 2 warm-up steps; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// `cpu` or `cuda:N` (a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Full f32 products on a GPU instead of TF32 (the peer's default is TF32).
    #[arg(long)]
    pub no_tf32: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchPipelineArgs {
    #[command(flatten)]
    pub index: IndexArgs,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Output side (square, stretched like the Python peer's Resize((size, size))).
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    /// Use at most this many images (the peer's default is 2000).
    #[arg(long, default_value_t = 2000)]
    pub limit: usize,
    /// Passes over the images; the best is reported.
    #[arg(long, default_value_t = 2)]
    pub epochs: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `--format`: what `mura export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// An ONNX model (ONNX Runtime, TensorRT, OpenVINO, tract...).
    Onnx,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run directory (an ensemble is refused: export each member).
    #[arg(required_unless_present = "arch")]
    pub run: Option<PathBuf>,
    /// Export an architecture of the zoo instead of a run: with --model-weights FILE, or seeded
    /// weights (to benchmark or check a runtime).
    #[arg(long, conflicts_with = "run")]
    pub arch: Option<String>,
    /// A `.safetensors` checkpoint for --arch (timm's or ours).
    #[arg(long, requires = "arch")]
    pub model_weights: Option<PathBuf>,
    /// Square input side for --arch; the architecture's default when absent.
    #[arg(long, requires = "arch")]
    pub image_size: Option<usize>,
    /// Input channels for --arch.
    #[arg(long, requires = "arch")]
    pub in_channels: Option<usize>,
    /// Seed of the weights for --arch without --model-weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = ExportFormat::Onnx)]
    pub format: ExportFormat,
    /// The file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// ONNX operator set (13 to 21).
    #[arg(long, default_value_t = mura_models::onnx::DEFAULT_OPSET)]
    pub opset: i64,
    /// Also output the last feature map (`features`), from which a runtime draws the CAM.
    #[arg(long)]
    pub with_features: bool,
    /// Which checkpoint of the run.
    #[arg(long, value_enum, default_value_t = WeightsArg::Final)]
    pub weights: WeightsArg,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl ExportArgs {
    /// The model --arch and its flags describe.
    pub fn config(&self, arch: Arch) -> ModelConfig {
        let base = ModelConfig::new(arch);
        ModelConfig {
            in_channels: self.in_channels.unwrap_or(base.in_channels),
            input_size: self.image_size,
            ..base
        }
    }
}

//! Arguments of the data commands: `stats`, `split`, `check`, `synth`, `augment-preview`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use mura_augment::{Preset, PreviewOptions};
use mura_data::BodyPart;
use mura_data::synth::{Difficulty, SynthConfig};

use super::IndexArgs;

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub index: IndexArgs,
    /// Also read every image's size from its header (no pixel decoding).
    #[arg(long)]
    pub sizes: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SplitArgs {
    #[command(flatten)]
    pub index: IndexArgs,
    /// Where to write the manifest CSV.
    #[arg(long)]
    pub out: PathBuf,
    /// Share of the official train images that go to validation (0.2 = 80/20, 0.1 = 90/10).
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Seed of the split: the same seed and data give the same manifest.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a stratified group k-fold assignment of the official train set instead.
    #[arg(long)]
    pub folds: Option<usize>,
    /// Keep only these body parts (elbow, finger, forearm, hand, humerus, shoulder, wrist); repeatable.
    #[arg(long = "body-part")]
    pub body_parts: Vec<BodyPart>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub index: IndexArgs,
    /// Decoding threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Folder to create MURA-v1.1/ in.
    pub out: PathBuf,
    /// Number of studies (train and valid together).
    #[arg(long, default_value_t = 2000)]
    pub studies: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Longer side of the images in pixels (MURA's is 512).
    #[arg(long, default_value_t = 512)]
    pub size: u32,
    /// Share of patients in the official valid split.
    #[arg(long, default_value_t = 0.12)]
    pub valid_fraction: f64,
    /// How visible the findings are: standard (calibrated) or easy (strong, in every view).
    #[arg(long, value_enum, default_value_t = DifficultyArg::Standard)]
    pub difficulty: DifficultyArg,
}

impl SynthArgs {
    pub fn config(&self) -> SynthConfig {
        SynthConfig {
            studies: self.studies,
            seed: self.seed,
            max_side: self.size,
            valid_fraction: self.valid_fraction,
            difficulty: match self.difficulty {
                DifficultyArg::Standard => Difficulty::Standard,
                DifficultyArg::Easy => Difficulty::Easy,
            },
            ..SynthConfig::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DifficultyArg {
    Standard,
    Easy,
}

#[derive(Debug, Args)]
pub struct PreviewArgs {
    #[command(flatten)]
    pub index: IndexArgs,
    /// The PNG to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Augmentation preset.
    #[arg(long, value_enum, default_value_t = PresetArg::Train)]
    pub preset: PresetArg,
    /// Images (rows) and draws per image (columns).
    #[arg(long, default_value_t = 4)]
    pub rows: usize,
    #[arg(long, default_value_t = 6)]
    pub columns: usize,
    /// Output side in pixels.
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl PreviewArgs {
    pub fn options(&self) -> PreviewOptions {
        let preset = match self.preset {
            PresetArg::Train => Preset::Train,
            PresetArg::Eval => Preset::Eval,
        };
        PreviewOptions {
            rows: self.rows,
            columns: self.columns,
            size: self.size,
            augment: preset.config(),
            seed: self.seed,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PresetArg {
    Train,
    Eval,
}

#![doc = include_str!("../README.md")]

mod bench;
mod config;
mod flip;
mod intensity;
mod normalize;
mod params;
mod pipeline;
mod preview;
mod resize;
mod warp;

pub use bench::{PipelineBench, bench_pipeline};
pub use config::{AugmentConfig, ClaheAug, MAX_ZOOM, MIN_ZOOM, Preprocess, Preset, WindowAug};
pub use flip::{hflip_in_place, vflip_in_place};
pub use intensity::{Clahe, percentile_window};
pub use normalize::{Normalize, to_chw_into};
pub use params::{Params, View, sample_params};
pub use pipeline::{Pipeline, Worker};
pub use preview::{PreviewGrid, PreviewOptions, preview_dataset, preview_grid};
pub use resize::{Filter, GrayResizer, ResizeMode, letterbox_rect};

/// The one error type of `mura-augment`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AugmentError {
    #[error(
        "destination holds {found} floats but a {channels}×{height}×{width} image needs {needed}"
    )]
    DestinationSize {
        channels: usize,
        height: u32,
        width: u32,
        needed: usize,
        found: usize,
    },
    #[error("image is {width}×{height} with {found} bytes; {expected} expected")]
    PixelCount {
        width: u32,
        height: u32,
        expected: usize,
        found: usize,
    },
    #[error("image is {width}×{height}: it has no pixels")]
    EmptyImage { width: u32, height: u32 },
    #[error("channel {channel} has standard deviation {std}: it must be positive and finite")]
    BadStd { channel: usize, std: f32 },
    #[error("channel {channel} has mean {mean}: it must be finite")]
    BadMean { channel: usize, mean: f32 },
    #[error("invalid {what}: {reason}")]
    BadConfig { what: &'static str, reason: String },
    #[error("resize failed: {0}")]
    Resize(String),
    /// Reading the images failed (the data error's message).
    #[error("{0}")]
    Data(String),
}

//! The random draws of one image's augmentation (`Params`), each from `(seed, epoch, image
//! index)`, and the fixed views of test-time augmentation laid on top of them (`View`).

use mura_data::rng::{stream_rng, unit};
use serde::{Deserialize, Serialize};

use crate::AugmentConfig;

/// The random choices made for one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub hflip: bool,
    pub vflip: bool,
    pub angle_degrees: f32,
    pub scale: f32,
    /// Shift in output pixels.
    pub shift: (f32, f32),
    pub brightness: f32,
    pub contrast: f32,
    pub window: bool,
    pub clahe: bool,
}

impl Params {
    pub(crate) fn is_geometric_identity(&self) -> bool {
        self.angle_degrees == 0.0 && self.scale == 1.0 && self.shift == (0.0, 0.0)
    }
}

/// Draws the parameters for image `index` of `epoch`. The draws are made in a fixed order whatever
/// the config, from a stream that depends only on `(seed, epoch, index)`.
pub fn sample_params(
    config: &AugmentConfig,
    size: (u32, u32),
    seed: u64,
    epoch: u64,
    index: u64,
) -> Params {
    let mut rng = stream_rng(seed, &[0x4155_474d, epoch, index]); // "AUGM"
    let mut u = || unit(&mut rng) as f32;
    let (hflip_u, vflip_u, angle_u, zoom_u, tx_u, ty_u, b_u, c_u, w_u, c2_u) =
        (u(), u(), u(), u(), u(), u(), u(), u(), u(), u());
    let rotation = config.rotation.min(180.0);
    let lerp = |lo: f32, hi: f32, t: f32| lo + (hi - lo) * t;
    Params {
        hflip: hflip_u < config.hflip,
        vflip: vflip_u < config.vflip,
        angle_degrees: lerp(-rotation, rotation, angle_u),
        scale: lerp(config.zoom.0, config.zoom.1, zoom_u),
        shift: (
            lerp(-config.translate, config.translate, tx_u) * size.0 as f32,
            lerp(-config.translate, config.translate, ty_u) * size.1 as f32,
        ),
        brightness: lerp(-config.brightness, config.brightness, b_u),
        contrast: lerp(1.0 - config.contrast, 1.0 + config.contrast, c_u),
        window: config.window.is_some_and(|w| w_u < w.probability),
        clahe: config.clahe.is_some_and(|c| c2_u < c.probability),
    }
}

/// A fixed transformation applied on top of the sampled one: a view of test-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct View {
    /// Flip horizontally (after any sampled flip: two flips cancel).
    pub hflip: bool,
    /// Degrees added to the sampled rotation (counter-clockwise), bilinear with black fill.
    pub angle_degrees: f32,
}

impl View {
    /// The image as it is.
    pub const IDENTITY: View = View {
        hflip: false,
        angle_degrees: 0.0,
    };

    pub(crate) fn apply(self, params: &mut Params) {
        params.hflip ^= self.hflip;
        params.angle_degrees += self.angle_degrees;
    }
}

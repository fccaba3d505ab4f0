//! What the pipeline does to an image: the preprocessing a model expects (`Preprocess`: size,
//! resize mode and filter, channels, normalisation) and the train-time augmentations
//! (`AugmentConfig`, with named presets).

use serde::{Deserialize, Serialize};

use crate::intensity::{Clahe, percentile_window};
use crate::resize::{Filter, ResizeMode};
use crate::{AugmentError, Normalize};

/// Percentile windowing applied with a probability.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowAug {
    pub p_low: f32,
    pub p_high: f32,
    pub probability: f32,
}

/// CLAHE applied with a probability.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaheAug {
    #[serde(flatten)]
    pub clahe: Clahe,
    pub probability: f32,
}

/// The smallest zoom scale accepted (a 16th of the image: anything smaller is a dot).
pub const MIN_ZOOM: f32 = 1.0 / 16.0;

/// The largest zoom scale accepted (a 16th of the image fills the output).
pub const MAX_ZOOM: f32 = 16.0;

/// Train-time augmentations, each with its probability or range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Probability of a horizontal (lateral) flip.
    pub hflip: f32,
    /// Probability of a vertical flip.
    pub vflip: f32,
    /// Rotation uniform in ±`rotation` degrees (bilinear, black fill); 180 or more means any angle.
    pub rotation: f32,
    /// Scale uniform in this range: above 1 zooms in, below 1 zooms out (black border).
    pub zoom: (f32, f32),
    /// Shift uniform in ±`translate` × the output size, per axis.
    pub translate: f32,
    /// Additive brightness uniform in ±`brightness` (pixel values in [0, 1]).
    pub brightness: f32,
    /// Contrast factor uniform in 1 ± `contrast`, around mid-gray.
    pub contrast: f32,
    pub window: Option<WindowAug>,
    pub clahe: Option<ClaheAug>,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self::none()
    }
}

impl AugmentConfig {
    /// No augmentation: the `eval` preset.
    pub fn none() -> Self {
        Self {
            hflip: 0.0,
            vflip: 0.0,
            rotation: 0.0,
            zoom: (1.0, 1.0),
            translate: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            window: None,
            clahe: None,
        }
    }

    /// The augmentations that always apply (windowing and CLAHE at probability 1): they are part
    /// of the preprocessing, so evaluation applies them too.
    pub fn always(&self) -> Self {
        Self {
            window: self.window.filter(|w| w.probability >= 1.0),
            clahe: self.clahe.filter(|c| c.probability >= 1.0),
            ..Self::none()
        }
    }

    /// True when no random draw can change a pixel: an image comes out the same at every epoch.
    pub fn is_deterministic(&self) -> bool {
        *self == self.always()
    }

    /// The MURA paper's training augmentation: random lateral flips and rotations up to 30°.
    pub fn mura_paper() -> Self {
        Self {
            hflip: 0.5,
            rotation: 30.0,
            ..Self::none()
        }
    }

    /// Checks every probability and range; NaN anywhere is an error naming the field.
    pub fn check(&self) -> Result<(), AugmentError> {
        let bad = |what: &'static str, reason: String| AugmentError::BadConfig { what, reason };
        let prob = |what: &'static str, p: f32| {
            if (0.0..=1.0).contains(&p) {
                Ok(())
            } else {
                Err(bad(what, format!("probability {p} is outside [0, 1]")))
            }
        };
        prob("hflip", self.hflip)?;
        prob("vflip", self.vflip)?;
        if !(self.rotation.is_finite() && self.rotation >= 0.0) {
            return Err(bad(
                "rotation",
                format!("{} is not a finite angle ≥ 0", self.rotation),
            ));
        }
        let (lo, hi) = self.zoom;
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
            return Err(bad(
                "zoom",
                format!("({lo}, {hi}) is not a range of positive scales"),
            ));
        }
        if lo < MIN_ZOOM || hi > MAX_ZOOM {
            return Err(bad(
                "zoom",
                format!("({lo}, {hi}) leaves [{MIN_ZOOM}, {MAX_ZOOM}]"),
            ));
        }
        if !(0.0..1.0).contains(&self.translate) {
            return Err(bad(
                "translate",
                format!("{} is outside [0, 1)", self.translate),
            ));
        }
        if !(0.0..=1.0).contains(&self.brightness) {
            return Err(bad(
                "brightness",
                format!("{} is outside [0, 1]", self.brightness),
            ));
        }
        if !(0.0..1.0).contains(&self.contrast) {
            return Err(bad(
                "contrast",
                format!("{} is outside [0, 1)", self.contrast),
            ));
        }
        if let Some(w) = self.window {
            prob("window probability", w.probability)?;
            percentile_window(&mut [], w.p_low, w.p_high)?;
        }
        if let Some(c) = self.clahe {
            prob("CLAHE probability", c.probability)?;
            c.clahe.check()?;
        }
        Ok(())
    }
}

/// The named augmentation presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The MURA paper's flips and ±30° rotation.
    Train,
    /// Deterministic resize only.
    Eval,
}

impl Preset {
    pub fn config(self) -> AugmentConfig {
        match self {
            Preset::Train => AugmentConfig::mura_paper(),
            Preset::Eval => AugmentConfig::none(),
        }
    }
}

/// What happens before augmentation: output size, resize mode and filter, channels, normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    pub width: u32,
    pub height: u32,
    pub mode: ResizeMode,
    pub filter: Filter,
    /// 1, or 3 with the gray channel replicated (ImageNet backbones).
    pub channels: usize,
    pub normalize: Normalize,
}

impl Preprocess {
    /// A square ImageNet-normalised 3-channel input, letterboxed.
    pub fn imagenet(size: u32) -> Self {
        Self {
            width: size,
            height: size,
            mode: ResizeMode::Letterbox { pad: 0 },
            filter: Filter::Bilinear,
            channels: 3,
            normalize: Normalize::IMAGENET,
        }
    }
}

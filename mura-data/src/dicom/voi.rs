//! The pixel pipeline of a monochrome DICOM frame, in the order radiology viewers apply it:
//! the modality rescale (slope, intercept), the VOI transform (a VOI LUT, a window, or the
//! frame's own range), MONOCHROME1 inverted, then 8 bits.

use std::fmt;
use std::str::FromStr;

/// How a DICOM frame's values become display values (`--voi`, `data.voi`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Voi {
    /// The file's first VOI LUT, else its first window, else the frame's min–max.
    #[default]
    Auto,
    /// The frame's min–max, whatever the file says.
    None,
    /// This window (centre, width), in modality units, with the DICOM linear function.
    Window { center: f64, width: f64 },
}

impl FromStr for Voi {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(Voi::Auto),
            "none" => Ok(Voi::None),
            other => {
                let bad = || format!("{other:?}: expected `auto`, `none` or CENTER,WIDTH (40,400)");
                let (c, w) = other.split_once(',').ok_or_else(bad)?;
                let center: f64 = c.trim().parse().map_err(|_| bad())?;
                let width: f64 = w.trim().parse().map_err(|_| bad())?;
                if !(center.is_finite() && width.is_finite() && width >= 1.0) {
                    return Err(format!("{other:?}: the window width must be at least 1"));
                }
                Ok(Voi::Window { center, width })
            }
        }
    }
}

impl fmt::Display for Voi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Voi::Auto => write!(f, "auto"),
            Voi::None => write!(f, "none"),
            Voi::Window { center, width } => write!(f, "{center},{width}"),
        }
    }
}

impl serde::Serialize for Voi {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Voi {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The VOI LUT Function of a window (DICOM PS3.3 C.11.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WindowFunction {
    #[default]
    Linear,
    LinearExact,
    Sigmoid,
}

/// An explicit VOI LUT: values at or below `first` map to `table[0]`, and on, the last entry
/// for everything past the table; entries have `bits` bits.
#[derive(Debug, Clone, PartialEq)]
pub struct Lut {
    pub first: i32,
    pub bits: u8,
    pub table: Vec<u16>,
}

/// The VOI transform chosen for one frame, mapping a modality value to [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Transform {
    Lut(Lut),
    Window {
        center: f64,
        width: f64,
        function: WindowFunction,
    },
    Range {
        min: f64,
        max: f64,
    },
}

impl Transform {
    /// `x` (a modality value) as a display value in [0, 1].
    pub(crate) fn apply(&self, x: f64) -> f64 {
        match self {
            Transform::Lut(l) => {
                let top = ((1u32 << l.bits.clamp(1, 16)) - 1) as f64;
                let i = (x.round() - f64::from(l.first)).clamp(0.0, (l.table.len() - 1) as f64);
                f64::from(l.table[i as usize]) / top
            }
            Transform::Window {
                center: c,
                width: w,
                function,
            } => match function {
                WindowFunction::Linear => {
                    let (c, w) = (c - 0.5, w - 1.0);
                    if w <= 0.0 {
                        return if x <= c { 0.0 } else { 1.0 };
                    }
                    ((x - c) / w + 0.5).clamp(0.0, 1.0)
                }
                WindowFunction::LinearExact => ((x - c) / w + 0.5).clamp(0.0, 1.0),
                WindowFunction::Sigmoid => 1.0 / (1.0 + (-4.0 * (x - c) / w).exp()),
            },
            Transform::Range { min, max } => {
                if max > min {
                    (x - min) / (max - min)
                } else {
                    0.0
                }
            }
        }
    }
}

/// A frame's stored values through the pipeline: rescaled (`slope`, `intercept`), through
/// `transform`, inverted for MONOCHROME1, as 8-bit gray.
pub(crate) fn to_gray8(
    stored: &[f32],
    (slope, intercept): (f64, f64),
    transform: &Transform,
    monochrome1: bool,
) -> Vec<u8> {
    stored
        .iter()
        .map(|&v| {
            let y = transform.apply(f64::from(v) * slope + intercept);
            let y = if monochrome1 { 1.0 - y } else { y };
            (y * 255.0).round().clamp(0.0, 255.0) as u8
        })
        .collect()
}

/// The min and max of `stored` after the rescale.
pub(crate) fn range(stored: &[f32], (slope, intercept): (f64, f64)) -> Transform {
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    for &v in stored {
        let x = f64::from(v) * slope + intercept;
        min = min.min(x);
        max = max.max(x);
    }
    Transform::Range { min, max }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linear_window_follows_the_standard() {
        // PS3.3 C.11.2.1.2.1 with c = 100, w = 11: 0 at or below 94.5, 1 above 104.5.
        let t = Transform::Window {
            center: 100.0,
            width: 11.0,
            function: WindowFunction::Linear,
        };
        assert_eq!(t.apply(94.0), 0.0);
        assert_eq!(t.apply(105.0), 1.0);
        assert!((t.apply(99.5) - 0.5).abs() < 1e-12);
        assert!((t.apply(102.0) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn a_lut_clamps_at_both_ends() {
        let t = Transform::Lut(Lut {
            first: 10,
            bits: 8,
            table: vec![0, 100, 255],
        });
        assert_eq!(t.apply(-5.0), 0.0);
        assert!((t.apply(11.0) - 100.0 / 255.0).abs() < 1e-12);
        assert_eq!(t.apply(500.0), 1.0);
    }

    #[test]
    fn voi_settings_parse_and_print_back() {
        for s in ["auto", "none", "40,400", "-600.5,1500"] {
            let v: Voi = s.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(v.to_string(), s);
        }
        for bad in ["", "40", "a,b", "40,0", "40,inf"] {
            assert!(bad.parse::<Voi>().is_err(), "{bad}");
        }
    }
}

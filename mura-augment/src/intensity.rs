//! Intensity transforms on 8-bit gray planes: percentile windowing and CLAHE.

use crate::AugmentError;

fn histogram(pixels: &[u8]) -> [u32; 256] {
    let mut h = [0u32; 256];
    for &p in pixels {
        h[usize::from(p)] += 1;
    }
    h
}

/// The smallest value `v` with at least `q` of the pixels at or below it (`q` in [0, 1]).
fn quantile(hist: &[u32; 256], total: u32, q: f32) -> u8 {
    let target = (f64::from(q) * f64::from(total)).ceil().max(1.0);
    let mut acc = 0f64;
    for (v, &n) in hist.iter().enumerate() {
        acc += f64::from(n);
        if acc >= target {
            return v as u8;
        }
    }
    255
}

/// Clips to the `p_low` / `p_high` percentiles (0–100) and stretches that window to the full range,
/// in place (one seed report uses 5/95). A flat image, or a window of one level, is left unchanged.
pub fn percentile_window(pixels: &mut [u8], p_low: f32, p_high: f32) -> Result<(), AugmentError> {
    if !(p_low.is_finite()
        && p_high.is_finite()
        && 0.0 <= p_low
        && p_low < p_high
        && p_high <= 100.0)
    {
        return Err(AugmentError::BadConfig {
            what: "percentile window",
            reason: format!("{p_low}/{p_high}: need 0 ≤ low < high ≤ 100"),
        });
    }
    if pixels.is_empty() {
        return Ok(());
    }
    let hist = histogram(pixels);
    let total = pixels.len() as u32;
    let lo = quantile(&hist, total, p_low / 100.0);
    let hi = quantile(&hist, total, p_high / 100.0);
    if hi <= lo {
        return Ok(());
    }
    let span = f32::from(hi - lo);
    let mut lut = [0u8; 256];
    for (v, out) in lut.iter_mut().enumerate() {
        let x = ((v as f32 - f32::from(lo)) / span).clamp(0.0, 1.0);
        *out = (x * 255.0).round() as u8;
    }
    for p in pixels.iter_mut() {
        *p = lut[usize::from(*p)];
    }
    Ok(())
}

/// Contrast-limited adaptive histogram equalisation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clahe {
    /// Histogram bins are clipped at `clip_limit` × the mean bin count (OpenCV's default is 2–4).
    pub clip_limit: f32,
    /// Tiles across and down (OpenCV's default 8).
    pub tiles: u32,
}

impl Default for Clahe {
    fn default() -> Self {
        Self {
            clip_limit: 2.0,
            tiles: 8,
        }
    }
}

impl Clahe {
    pub fn check(&self) -> Result<(), AugmentError> {
        if !(self.clip_limit.is_finite() && self.clip_limit >= 1.0) {
            return Err(AugmentError::BadConfig {
                what: "CLAHE clip limit",
                reason: format!("{} is not a finite number ≥ 1", self.clip_limit),
            });
        }
        if !(1..=64).contains(&self.tiles) {
            return Err(AugmentError::BadConfig {
                what: "CLAHE tiles",
                reason: format!("{} is outside 1..=64", self.tiles),
            });
        }
        Ok(())
    }

    /// Equalises `pixels` (`width`×`height`) in place: per tile, a clipped histogram's CDF becomes
    /// a mapping; each pixel blends the mappings of the four nearest tile centres bilinearly.
    pub fn apply(
        &self,
        pixels: &mut [u8],
        width: usize,
        height: usize,
    ) -> Result<(), AugmentError> {
        self.check()?;
        if pixels.len() != width * height {
            return Err(AugmentError::PixelCount {
                width: width as u32,
                height: height as u32,
                expected: width * height,
                found: pixels.len(),
            });
        }
        if width == 0 || height == 0 {
            return Ok(());
        }
        let tx = (self.tiles as usize).min(width);
        let ty = (self.tiles as usize).min(height);
        let bounds = |n: usize, tiles: usize, i: usize| (i * n / tiles, (i + 1) * n / tiles);
        let mut luts = vec![[0u8; 256]; tx * ty];
        for j in 0..ty {
            let (y0, y1) = bounds(height, ty, j);
            for i in 0..tx {
                let (x0, x1) = bounds(width, tx, i);
                let mut hist = [0u32; 256];
                for y in y0..y1 {
                    for &p in &pixels[y * width + x0..y * width + x1] {
                        hist[usize::from(p)] += 1;
                    }
                }
                let area = ((y1 - y0) * (x1 - x0)) as u32;
                // OpenCV's arithmetic: the clip limit truncates, the excess is spread evenly and
                // its remainder one count per `step` bins, the CDF is scaled by 255 / area and
                // rounded.
                let limit = ((self.clip_limit * area as f32 / 256.0) as u32).max(1);
                let mut excess = 0u32;
                for h in hist.iter_mut() {
                    if *h > limit {
                        excess += *h - limit;
                        *h = limit;
                    }
                }
                let bonus = excess / 256;
                let mut residual = excess % 256;
                for h in hist.iter_mut() {
                    *h += bonus;
                }
                if let Some(step) = 256u32.checked_div(residual) {
                    let step = step.max(1) as usize;
                    let mut i = 0;
                    while i < 256 && residual > 0 {
                        hist[i] += 1;
                        residual -= 1;
                        i += step;
                    }
                }
                let scale = 255.0 / area.max(1) as f32;
                let mut acc = 0u32;
                let lut = &mut luts[j * tx + i];
                for (v, h) in hist.iter().enumerate() {
                    acc += h;
                    lut[v] = (acc as f32 * scale).round_ties_even().min(255.0) as u8;
                }
            }
        }
        // Each pixel blends the four nearest tile mappings (OpenCV: position / tile size - 0.5).
        let locate = |pos: usize, n: usize, tiles: usize| -> (usize, usize, f32) {
            let f = pos as f32 * tiles as f32 / n as f32 - 0.5;
            let t1 = f.floor();
            let a = f - t1;
            let t1 = t1 as isize;
            let lo = t1.max(0) as usize;
            let hi = ((t1 + 1) as usize).min(tiles - 1);
            (lo, hi, a)
        };
        let columns: Vec<(usize, usize, f32)> = (0..width).map(|x| locate(x, width, tx)).collect();
        for y in 0..height {
            let (j0, j1, fy) = locate(y, height, ty);
            let row = &mut pixels[y * width..(y + 1) * width];
            for (p, &(i0, i1, fx)) in row.iter_mut().zip(&columns) {
                let v = usize::from(*p);
                let a = f32::from(luts[j0 * tx + i0][v]);
                let b = f32::from(luts[j0 * tx + i1][v]);
                let c = f32::from(luts[j1 * tx + i0][v]);
                let d = f32::from(luts[j1 * tx + i1][v]);
                let top = a * (1.0 - fx) + b * fx;
                let bottom = c * (1.0 - fx) + d * fx;
                *p = (top * (1.0 - fy) + bottom * fy)
                    .round_ties_even()
                    .clamp(0.0, 255.0) as u8;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn std_dev(p: &[u8]) -> f64 {
        let m = p.iter().map(|&v| f64::from(v)).sum::<f64>() / p.len() as f64;
        (p.iter().map(|&v| (f64::from(v) - m).powi(2)).sum::<f64>() / p.len() as f64).sqrt()
    }

    #[test]
    fn window_stretches_the_middle_and_clips_the_tails() {
        let mut p: Vec<u8> = (0..=100).collect();
        percentile_window(&mut p, 5.0, 95.0).unwrap();
        assert_eq!(p[0], 0);
        assert_eq!(p[5], 0);
        assert_eq!(p[100], 255);
        assert_eq!(p[95], 255);
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "monotone");
        let mut flat = vec![9u8; 10];
        percentile_window(&mut flat, 5.0, 95.0).unwrap();
        assert_eq!(flat, vec![9u8; 10]);
        for (lo, hi) in [(95.0, 5.0), (f32::NAN, 5.0), (-1.0, 50.0), (5.0, 101.0)] {
            assert!(percentile_window(&mut flat, lo, hi).is_err());
        }
    }

    #[test]
    fn clahe_raises_local_contrast_and_keeps_flat_images_flat() {
        let (w, h) = (256, 192);
        // Low contrast: values 100..=115 in a gradient, with a faint (+5) square.
        let inside = |x: usize, y: usize| (96..160).contains(&x) && (64..128).contains(&y);
        let mut p: Vec<u8> = (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                100 + (x * 15 / w) as u8 + if inside(x, y) { 5 } else { 0 }
            })
            .collect();
        // Local contrast: the square's edge against the band just left of it.
        let edge = |p: &[u8]| {
            let mean = |x0: usize, x1: usize| {
                let mut s = 0.0;
                for y in 64..128 {
                    for x in x0..x1 {
                        s += f64::from(p[y * w + x]);
                    }
                }
                s / (64.0 * (x1 - x0) as f64)
            };
            mean(96, 104) - mean(88, 96)
        };
        let before = edge(&p);
        let spread_before = std_dev(&p);
        Clahe {
            clip_limit: 4.0,
            tiles: 8,
        }
        .apply(&mut p, w, h)
        .unwrap();
        // OpenCV 4 gives 6.41 on this image (from 5.125).
        assert!(edge(&p) > 1.2 * before, "edge {} vs {before}", edge(&p));
        assert!(std_dev(&p) > spread_before);
        let mut flat = vec![80u8; w * h];
        Clahe::default().apply(&mut flat, w, h).unwrap();
        let first = flat[0];
        assert!(flat.iter().all(|&v| v == first));
        // Tiny images and bad settings.
        let mut one = vec![5u8];
        Clahe::default().apply(&mut one, 1, 1).unwrap();
        assert!(
            Clahe {
                clip_limit: f32::NAN,
                tiles: 8
            }
            .apply(&mut one, 1, 1)
            .is_err()
        );
        assert!(
            Clahe {
                clip_limit: 2.0,
                tiles: 0
            }
            .apply(&mut one, 1, 1)
            .is_err()
        );
        assert!(Clahe::default().apply(&mut one, 2, 2).is_err());
    }
}

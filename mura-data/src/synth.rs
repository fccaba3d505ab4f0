//! A synthetic MURA: a complete MURA-v1.1-format tree (four CSVs and PNG radiographs) with learnable,
//! not trivial, abnormalities. The built-in data set of `mura demo` and of the tests.
//!
//! What it draws, per image: soft tissue and bones as attenuating capsules arranged per body part
//! (one long bone for the humerus, two for the forearm, rays of phalanges for the hand, ...), a random
//! pose, exposure and noise, a laterality marker ("L" or "R") on every image of both classes, and in
//! about a third of all studies (both classes) growth plates: thin dark lines near bone ends that look
//! like fractures. Abnormal studies carry one finding, visible in each view with probability 0.85
//! (and in at least one): a displaced, angulated shaft fracture, metal hardware (a plate with
//! screws, pure white), or a lytic or sclerotic lesion, at a random strength. Body parts have MURA's
//! abnormal rates. Everything follows from the seed: the same seed gives the same bytes.
//!
//! Calibration (`tools/synth_learnability.py`, PyTorch, a 5-layer CNN with global max pooling at
//! 96 px on 2,000 studies): study AUC 0.67 after 5 epochs, 0.77 after 10, 0.90–0.96 after 20–30:
//! learnable, not trivial.

use std::path::{Path, PathBuf};

use rand::RngCore;
use rayon::prelude::*;

use crate::rng::{below, stream_rng, uniform, unit};
use crate::{BodyPart, DATASET_DIR, DataError, Split};

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthConfig {
    /// Number of studies, train and valid together.
    pub studies: usize,
    pub seed: u64,
    /// Longer side of every image, in pixels (MURA's is 512). The shorter side is 55–100% of it.
    pub max_side: u32,
    /// Share of patients placed in the official `valid` split.
    pub valid_fraction: f64,
    /// Share of images written as RGB, and again as 16-bit gray, instead of 8-bit gray.
    pub odd_format_fraction: f64,
    pub difficulty: Difficulty,
}

/// How hard the abnormalities are to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Difficulty {
    /// Findings at strength 0.4–1.0, shown in 85% of views; growth plates (fracture look-alikes)
    /// in a third of patients. The calibrated setting (see the module docs).
    #[default]
    Standard,
    /// Findings twice the size, at strength 0.85–1.0, shown in every view; no growth plates. The same studies,
    /// patients and labels as `Standard` for the same seed. Small CPU budgets (`mura demo`) learn it
    /// in a few epochs.
    Easy,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            studies: 2000,
            seed: 0,
            max_side: 512,
            valid_fraction: 0.12,
            odd_format_fraction: 0.02,
            difficulty: Difficulty::Standard,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthSummary {
    /// The folder holding `MURA-v1.1/`.
    pub base: PathBuf,
    pub patients: usize,
    pub studies: usize,
    pub abnormal_studies: usize,
    pub images: usize,
    pub rgb_images: usize,
    pub sixteen_bit_images: usize,
}

/// Official study counts per body part (train + valid), for the body-part mix, and abnormal rates.
const PART_MIX: [(BodyPart, u32, f64); 7] = [
    (BodyPart::Elbow, 1912, 726.0 / 1912.0),
    (BodyPart::Finger, 2110, 738.0 / 2110.0),
    (BodyPart::Forearm, 1010, 351.0 / 1010.0),
    (BodyPart::Hand, 2185, 587.0 / 2185.0),
    (BodyPart::Humerus, 727, 338.0 / 727.0),
    (BodyPart::Shoulder, 3015, 1552.0 / 3015.0),
    (BodyPart::Wrist, 3697, 1423.0 / 3697.0),
];

/// The abnormal study rate the generator uses for a body part (MURA's, train and valid together).
pub fn abnormal_rate(part: BodyPart) -> f64 {
    PART_MIX.iter().find(|m| m.0 == part).map_or(0.0, |m| m.2)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileFormat {
    Gray8,
    Rgb8,
    Gray16,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Finding {
    Fracture,
    Hardware,
    Lesion { lytic: bool },
}

#[derive(Debug, Clone)]
struct PlannedStudy {
    split: Split,
    part: BodyPart,
    patient: u32,
    number: u32,
    abnormal: bool,
    views: u32,
    /// Per study so that its views agree: the finding, where it is (bone index share, position
    /// along it, angle), its contrast, and whether the patient has growth plates.
    finding: Option<(Finding, f64, f64, f64, f64)>,
    growth_plates: bool,
    /// Which views show the finding.
    shown: Vec<bool>,
    /// Size multiplier of the finding (2 in `Easy`).
    scale: f32,
}

impl PlannedStudy {
    fn folder(&self) -> String {
        format!(
            "{DATASET_DIR}/{}/{}/patient{:05}/study{}_{}",
            self.split,
            self.part.folder(),
            self.patient,
            self.number,
            if self.abnormal {
                "positive"
            } else {
                "negative"
            }
        )
    }
}

fn weighted_choice(rng: &mut impl RngCore, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = unit(rng) * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

fn plan(config: &SynthConfig) -> Vec<PlannedStudy> {
    let mut rng = stream_rng(config.seed, &[0x504c_414e]); // "PLAN"
    let part_weights: Vec<f64> = PART_MIX.iter().map(|m| f64::from(m.1)).collect();
    let mut studies = Vec::with_capacity(config.studies);
    let mut patient = 0u32;
    while studies.len() < config.studies {
        patient += 1;
        let (part, _, rate) = PART_MIX[weighted_choice(&mut rng, &part_weights)];
        let split = if unit(&mut rng) < config.valid_fraction {
            Split::Valid
        } else {
            Split::Train
        };
        let n_studies = 1 + weighted_choice(&mut rng, &[0.6, 0.3, 0.1]) as u32;
        let growth_plates = unit(&mut rng) < 0.33 && config.difficulty == Difficulty::Standard;
        for number in 1..=n_studies {
            if studies.len() == config.studies {
                break;
            }
            let abnormal = unit(&mut rng) < rate;
            let views = 1 + weighted_choice(&mut rng, &[0.15, 0.35, 0.35, 0.15]) as u32;
            let finding = abnormal.then(|| {
                let kind = match weighted_choice(&mut rng, &[0.5, 0.2, 0.3]) {
                    0 => Finding::Fracture,
                    1 => Finding::Hardware,
                    _ => Finding::Lesion {
                        lytic: unit(&mut rng) < 0.6,
                    },
                };
                (
                    kind,
                    unit(&mut rng),
                    uniform(&mut rng, 0.25, 0.75),
                    uniform(&mut rng, -0.5, 0.5),
                    uniform(&mut rng, 0.4, 1.0),
                )
            });
            let mut shown: Vec<bool> = (0..views).map(|_| unit(&mut rng) < 0.85).collect();
            if abnormal && !shown.iter().any(|&s| s) {
                let k = below(&mut rng, views as usize);
                shown[k] = true;
            }
            // Easy: the same draws (so the same studies follow), then every view shows a strong finding.
            let (finding, shown) = match config.difficulty {
                Difficulty::Standard => (finding, shown),
                Difficulty::Easy => (
                    finding.map(|(k, w, t, tilt, s)| (k, w, t, tilt, 0.85 + 0.25 * (s - 0.4))),
                    vec![true; views as usize],
                ),
            };
            studies.push(PlannedStudy {
                split,
                part,
                patient,
                number,
                abnormal,
                views,
                finding,
                growth_plates,
                shown,
                scale: match config.difficulty {
                    Difficulty::Standard => 1.0,
                    Difficulty::Easy => 2.0,
                },
            });
        }
    }
    studies
}

/// A bone (or soft-tissue column) as a capsule: a segment with a radius, in image units where the
/// longer side is 1 and the centre is (0, 0).
#[derive(Debug, Clone, Copy)]
struct Capsule {
    a: (f32, f32),
    b: (f32, f32),
    r: f32,
    density: f32,
}

fn cap(a: (f32, f32), b: (f32, f32), r: f32) -> Capsule {
    Capsule {
        a,
        b,
        r,
        density: 1.0,
    }
}

/// A chain of phalanges from `start` along `angle` (radians from straight up).
fn digit(bones: &mut Vec<Capsule>, start: (f32, f32), angle: f32, lengths: &[f32], r: f32) {
    let (s, c) = angle.sin_cos();
    let mut p = start;
    for (i, &len) in lengths.iter().enumerate() {
        let q = (p.0 + s * len, p.1 - c * len);
        let shrink = 1.0 - 0.12 * i as f32;
        bones.push(cap(p, q, r * shrink));
        p = (q.0 + s * 0.012, q.1 - c * 0.012);
    }
}

/// The bones of a body part in its canonical pose.
fn anatomy(part: BodyPart) -> Vec<Capsule> {
    let mut bones = Vec::new();
    match part {
        BodyPart::Humerus => {
            bones.push(cap((0.0, -0.36), (0.0, 0.36), 0.065));
            bones.push(Capsule {
                r: 0.11,
                ..cap((0.02, -0.4), (0.02, -0.4), 0.11)
            });
        }
        BodyPart::Forearm => {
            bones.push(cap((-0.06, -0.42), (-0.07, 0.42), 0.04));
            bones.push(cap((0.06, -0.42), (0.08, 0.42), 0.035));
        }
        BodyPart::Elbow => {
            bones.push(cap((0.0, -0.5), (0.0, -0.04), 0.06));
            bones.push(cap((-0.04, 0.03), (-0.14, 0.5), 0.04));
            bones.push(cap((0.05, 0.03), (0.09, 0.5), 0.038));
            bones.push(Capsule {
                density: 0.8,
                ..cap((0.0, -0.03), (0.0, -0.03), 0.085)
            });
        }
        BodyPart::Wrist => {
            bones.push(cap((-0.07, 0.5), (-0.07, 0.12), 0.05));
            bones.push(cap((0.07, 0.5), (0.07, 0.14), 0.035));
            for (i, x) in [-0.09f32, -0.03, 0.03, 0.09].iter().enumerate() {
                let y = 0.05 - 0.02 * (i % 2) as f32;
                bones.push(cap((*x, y), (*x, y - 0.03), 0.028));
                bones.push(cap((*x * 0.9, y - 0.08), (*x * 0.9, y - 0.1), 0.026));
            }
            for i in 0..5 {
                let x = -0.12 + 0.06 * i as f32;
                bones.push(cap((x, -0.15), (x * 1.2, -0.42), 0.022));
            }
        }
        BodyPart::Hand => {
            for i in 0..4 {
                let x = -0.1 + 0.065 * i as f32;
                let angle = (i as f32 - 1.5) * 0.08;
                bones.push(cap((x * 0.8, 0.3), (x, 0.02), 0.024));
                digit(&mut bones, (x, -0.01), angle, &[0.14, 0.09, 0.06], 0.02);
            }
            bones.push(cap((-0.15, 0.3), (-0.24, 0.12), 0.026));
            digit(&mut bones, (-0.25, 0.1), -0.7, &[0.11, 0.08], 0.022);
            bones.push(cap((-0.06, 0.45), (-0.06, 0.33), 0.05));
            bones.push(cap((0.06, 0.45), (0.06, 0.34), 0.04));
        }
        BodyPart::Finger => {
            digit(&mut bones, (0.0, 0.5), 0.0, &[0.34, 0.24, 0.18], 0.06);
        }
        BodyPart::Shoulder => {
            bones.push(Capsule {
                density: 1.1,
                ..cap((0.02, -0.12), (0.02, -0.12), 0.15)
            });
            bones.push(cap((0.04, -0.02), (0.06, 0.55), 0.08));
            bones.push(cap((-0.5, -0.32), (0.35, -0.38), 0.04));
            bones.push(Capsule {
                density: 0.7,
                ..cap((-0.22, -0.25), (-0.2, 0.1), 0.07)
            });
        }
    }
    bones
}

/// A pose: rotation, scale, translation, mirror (laterality), in image units.
#[derive(Debug, Clone, Copy)]
struct Pose {
    cos: f32,
    sin: f32,
    scale: f32,
    shift: (f32, f32),
    mirror: bool,
}

impl Pose {
    fn apply(&self, p: (f32, f32)) -> (f32, f32) {
        let x = if self.mirror { -p.0 } else { p.0 };
        let (x, y) = (x * self.scale, p.1 * self.scale);
        (
            self.cos * x - self.sin * y + self.shift.0,
            self.sin * x + self.cos * y + self.shift.1,
        )
    }
}

/// Calls `f(index, distance to segment in pixels, position along it in 0..1)` for every pixel of a
/// `w`×`h` image within `reach` pixels of the segment a–b (pixel coordinates).
fn for_near(
    (w, h): (usize, usize),
    a: (f32, f32),
    b: (f32, f32),
    reach: f32,
    mut f: impl FnMut(usize, f32, f32),
) {
    let x0 = (a.0.min(b.0) - reach).floor().max(0.0) as usize;
    let x1 = ((a.0.max(b.0) + reach).ceil().max(0.0) as usize).min(w);
    let y0 = (a.1.min(b.1) - reach).floor().max(0.0) as usize;
    let y1 = ((a.1.max(b.1) + reach).ceil().max(0.0) as usize).min(h);
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    for y in y0..y1 {
        for x in x0..x1 {
            let (px, py) = (x as f32 + 0.5 - a.0, y as f32 + 0.5 - a.1);
            let t = if len2 > 0.0 {
                ((px * dx + py * dy) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let (ex, ey) = (px - t * dx, py - t * dy);
            let d = (ex * ex + ey * ey).sqrt();
            if d < reach {
                f(y * w + x, d, t);
            }
        }
    }
}

/// Float image buffers of one radiograph: soft tissue, bone and metal attenuation.
struct Canvas {
    w: usize,
    h: usize,
    /// Pixels per image unit (the longer side).
    unit: f32,
    tissue: Vec<f32>,
    bone: Vec<f32>,
    metal: Vec<f32>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            unit: w.max(h) as f32,
            tissue: vec![0.0; w * h],
            bone: vec![0.0; w * h],
            metal: vec![0.0; w * h],
        }
    }

    fn to_px(&self, p: (f32, f32)) -> (f32, f32) {
        (
            self.w as f32 / 2.0 + p.0 * self.unit,
            self.h as f32 / 2.0 + p.1 * self.unit,
        )
    }

    fn size(&self) -> (usize, usize) {
        (self.w, self.h)
    }

    fn draw_bone(&mut self, c: &Capsule) {
        let (a, b) = (self.to_px(c.a), self.to_px(c.b));
        let r = c.r * self.unit;
        let soft = r * 2.4;
        let size = self.size();
        let (tissue, bone) = (&mut self.tissue, &mut self.bone);
        let mut visit = |i: usize, d: f32, _t: f32| {
            let q = d / soft;
            tissue[i] = tissue[i].max(0.22 * (1.0 - q * q).max(0.0).sqrt());
            let cover = (r + 0.5 - d).clamp(0.0, 1.0);
            if cover > 0.0 {
                let e = (d / r).min(1.0);
                // Cortex (edge) denser than marrow (centre).
                bone[i] += c.density * cover * (0.55 + 0.45 * e * e);
            }
        };
        for_near(size, a, b, soft, &mut visit);
    }

    /// Multiplies bone attenuation by `1 - depth` along a jagged line across a bone.
    fn crack(
        &mut self,
        center: (f32, f32),
        dir: (f32, f32),
        half_len: f32,
        width: f32,
        depth: f32,
        wobble: f32,
    ) {
        let a = (center.0 - dir.0 * half_len, center.1 - dir.1 * half_len);
        let b = (center.0 + dir.0 * half_len, center.1 + dir.1 * half_len);
        let size = self.size();
        let bone = &mut self.bone;
        let reach = width + wobble + 1.0;
        for_near(size, a, b, reach, |i, d, t| {
            // A zig-zag: the crack's centre line wanders by `wobble` pixels.
            let offset = wobble * (t * 23.0).sin() * (t * 7.0).cos();
            let dd = (d - offset.abs()).abs();
            let k = (width + 0.5 - dd).clamp(0.0, 1.0);
            bone[i] *= 1.0 - depth * k;
        });
    }

    /// Scales bone attenuation inside a soft-edged disc by `factor`.
    fn blob(&mut self, center: (f32, f32), radius: f32, factor: f32) {
        let size = self.size();
        let bone = &mut self.bone;
        for_near(size, center, center, radius + 1.0, |i, d, _| {
            let k = ((radius - d) / radius.max(1.0) * 2.0).clamp(0.0, 1.0);
            bone[i] *= 1.0 + (factor - 1.0) * k;
        });
    }

    fn metal_bar(&mut self, a: (f32, f32), b: (f32, f32), half_width: f32) {
        let size = self.size();
        let metal = &mut self.metal;
        for_near(size, a, b, half_width + 1.0, |i, d, _| {
            let cover = (half_width + 0.5 - d).clamp(0.0, 1.0);
            metal[i] = metal[i].max(cover);
        });
    }
}

/// 5×7 bitmaps of the laterality letters.
const LETTER_L: [u8; 7] = [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f];
const LETTER_R: [u8; 7] = [0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11];

fn render(
    study: &PlannedStudy,
    view: u32,
    seed: u64,
    max_side: u32,
    image_id: u64,
) -> (usize, usize, Vec<f32>) {
    let mut rng = stream_rng(seed, &[0x0049_4d47, image_id]); // "IMG"
    let long = max_side.max(16) as usize;
    let short = ((long as f64) * uniform(&mut rng, 0.55, 1.0))
        .round()
        .max(8.0) as usize;
    let portrait = unit(&mut rng) < 0.8;
    let (w, h) = if portrait {
        (short, long)
    } else {
        (long, short)
    };
    let mut canvas = Canvas::new(w, h);

    // Pose: views of one study differ in angle; the patient's laterality is fixed per study.
    let mut study_rng = stream_rng(
        seed,
        &[
            0x5354_5544,
            u64::from(study.patient),
            u64::from(study.number),
        ],
    );
    let mirror = unit(&mut study_rng) < 0.5;
    let base_angle = if portrait {
        0.0
    } else {
        std::f32::consts::FRAC_PI_2
    };
    let angle = base_angle
        + uniform(&mut rng, -0.45, 0.45) as f32
        + 0.25 * view as f32 * if mirror { -1.0 } else { 1.0 };
    let pose = Pose {
        cos: angle.cos(),
        sin: angle.sin(),
        scale: uniform(&mut rng, 0.8, 1.15) as f32,
        shift: (
            uniform(&mut rng, -0.08, 0.08) as f32,
            uniform(&mut rng, -0.08, 0.08) as f32,
        ),
        mirror,
    };
    let mut bones: Vec<Capsule> = anatomy(study.part)
        .into_iter()
        .map(|c| Capsule {
            a: pose.apply(c.a),
            b: pose.apply(c.b),
            r: c.r * pose.scale * uniform(&mut rng, 0.92, 1.08) as f32,
            density: c.density * uniform(&mut rng, 0.85, 1.15) as f32,
        })
        .collect();

    // Long bones (segments longer than 3 radii) are where fractures, hardware and growth plates go.
    let is_long = |c: &Capsule| {
        let (dx, dy) = (c.b.0 - c.a.0, c.b.1 - c.a.1);
        (dx * dx + dy * dy).sqrt() > 3.0 * c.r
    };
    let long_bones: Vec<usize> = (0..bones.len()).filter(|&i| is_long(&bones[i])).collect();
    let on_bone = |c: &Capsule, t: f32| -> ((f32, f32), (f32, f32), f32) {
        let p = (c.a.0 + (c.b.0 - c.a.0) * t, c.a.1 + (c.b.1 - c.a.1) * t);
        let (dx, dy) = (c.b.0 - c.a.0, c.b.1 - c.a.1);
        let len = (dx * dx + dy * dy).sqrt().max(1e-6);
        (p, (dx / len, dy / len), len)
    };
    // The finding of this view, if it shows one: kind, target bone, position, tilt, strength.
    let target = match study.finding {
        Some((finding, which, t, tilt, strength))
            if study.shown[view as usize - 1] && !long_bones.is_empty() =>
        {
            let k = ((which * long_bones.len() as f64) as usize).min(long_bones.len() - 1);
            Some((
                finding,
                long_bones[k],
                t as f32,
                tilt as f32,
                strength as f32,
            ))
        }
        _ => None,
    };
    let original = bones.clone();
    if let Some((Finding::Fracture, k, t, tilt, strength)) = target {
        // A fractured shaft: two fragments with a gap, shifted sideways and angulated.
        let c = bones[k];
        let (p, axis, _) = on_bone(&c, t);
        let across = (-axis.1, axis.0);
        // Sizes have a floor relative to the image, so findings on thin bones stay visible when
        // the image is downscaled for training.
        let gap = (c.r * (0.5 + 0.5 * strength)).max(0.02) * study.scale;
        let shift = (c.r * (0.5 + 0.5 * strength)).max(0.025) * tilt.signum() * study.scale;
        let (sin, cos) = (tilt * 0.5).sin_cos();
        let (ex, ey) = (c.b.0 - p.0, c.b.1 - p.1);
        let end = (p.0 + cos * ex - sin * ey, p.1 + sin * ex + cos * ey);
        let start = (p.0 + axis.0 * gap / 2.0, p.1 + axis.1 * gap / 2.0);
        bones[k] = Capsule {
            b: (p.0 - axis.0 * gap / 2.0, p.1 - axis.1 * gap / 2.0),
            ..c
        };
        bones.push(Capsule {
            a: (start.0 + across.0 * shift, start.1 + across.1 * shift),
            b: (end.0 + across.0 * shift, end.1 + across.1 * shift),
            ..c
        });
    }
    for b in &bones {
        canvas.draw_bone(b);
    }

    if study.growth_plates {
        for &k in &long_bones {
            let c = &original[k];
            if unit(&mut rng) < 0.6 {
                let t = if unit(&mut rng) < 0.5 {
                    uniform(&mut rng, 0.04, 0.12)
                } else {
                    uniform(&mut rng, 0.88, 0.96)
                } as f32;
                let (p, axis, _) = on_bone(c, t);
                let center = canvas.to_px(p);
                let across = (-axis.1, axis.0);
                let r = c.r * canvas.unit;
                canvas.crack(center, across, r * 1.05, (r * 0.06).max(0.6), 0.45, 0.0);
            }
        }
    }

    if let Some((finding, k, t, _, strength)) = target {
        let c = &original[k];
        let (p, axis, len) = on_bone(c, t);
        let center = canvas.to_px(p);
        let r = c.r * canvas.unit;
        match finding {
            Finding::Fracture => {}
            Finding::Hardware => {
                let half = len * canvas.unit * 0.25;
                let a = (center.0 - axis.0 * half, center.1 - axis.1 * half);
                let b = (center.0 + axis.0 * half, center.1 + axis.1 * half);
                let side = (-axis.1 * r * 0.8, axis.0 * r * 0.8);
                canvas.metal_bar(
                    (a.0 + side.0, a.1 + side.1),
                    (b.0 + side.0, b.1 + side.1),
                    (r * 0.3).max(0.008 * canvas.unit) * study.scale,
                );
                for q in [-0.75f32, -0.25, 0.25, 0.75] {
                    let m = (center.0 + axis.0 * half * q, center.1 + axis.1 * half * q);
                    canvas.metal_bar(
                        (m.0 + side.0 * 1.3, m.1 + side.1 * 1.3),
                        (m.0 - side.0 * 1.1, m.1 - side.1 * 1.1),
                        (r * 0.12).max(0.004 * canvas.unit),
                    );
                }
            }
            Finding::Lesion { lytic } => {
                let radius = (r * (0.7 + 0.3 * strength)).max(0.035 * canvas.unit) * study.scale;
                let factor = if lytic {
                    0.35 - 0.3 * strength
                } else {
                    1.8 + 0.6 * strength
                };
                canvas.blob(center, radius, factor);
            }
        }
    }

    // Expose: attenuation to brightness, then background, gradient and noise.
    let gain = uniform(&mut rng, 1.2, 1.8) as f32;
    let background = uniform(&mut rng, 0.02, 0.1) as f32;
    let gradient = uniform(&mut rng, -0.04, 0.04) as f32;
    let noise = uniform(&mut rng, 0.01, 0.035) as f32;
    let mut out = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let att = canvas.tissue[i] + canvas.bone[i];
            let n = ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 2.0 * noise;
            let v = background
                + gradient * (y as f32 / h as f32)
                + (1.0 - (-gain * att).exp()) * 0.85
                + n;
            // Metal stops the beam: pure white, above anything bone reaches.
            let m = canvas.metal[i];
            out[i] = (v * (1.0 - m) + m).clamp(0.0, 1.0);
        }
    }

    // Laterality marker, on every image of both classes.
    let letter = if mirror { &LETTER_R } else { &LETTER_L };
    let cell = (long / 90).max(1);
    let (mx, my) = match below(&mut rng, 4) {
        0 => (cell * 2, cell * 2),
        1 => (w.saturating_sub(cell * 8), cell * 2),
        2 => (cell * 2, h.saturating_sub(cell * 10)),
        _ => (w.saturating_sub(cell * 8), h.saturating_sub(cell * 10)),
    };
    for (row, bits) in letter.iter().enumerate() {
        for col in 0..5 {
            if bits & (0x10 >> col) != 0 {
                for yy in 0..cell {
                    for xx in 0..cell {
                        let (x, y) = (mx + col * cell + xx, my + row * cell + yy);
                        if x < w && y < h {
                            out[y * w + x] = 0.97;
                        }
                    }
                }
            }
        }
    }
    (w, h, out)
}

fn write_png(
    path: &Path,
    w: usize,
    h: usize,
    values: &[f32],
    format: FileFormat,
) -> Result<(), DataError> {
    use image::ImageEncoder;
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let file = std::fs::File::create(path).map_err(|e| DataError::Write {
        path: path.to_path_buf(),
        source: e,
    })?;
    let writer = std::io::BufWriter::new(file);
    let encoder =
        PngEncoder::new_with_quality(writer, CompressionType::Default, FilterType::Adaptive);
    let (bytes, color): (Vec<u8>, image::ExtendedColorType) = match format {
        FileFormat::Gray8 => (
            values.iter().map(|v| (v * 255.0).round() as u8).collect(),
            image::ExtendedColorType::L8,
        ),
        FileFormat::Rgb8 => (
            values
                .iter()
                .flat_map(|v| {
                    let g = (v * 255.0).round() as u8;
                    [g, g, g]
                })
                .collect(),
            image::ExtendedColorType::Rgb8,
        ),
        FileFormat::Gray16 => (
            values
                .iter()
                .flat_map(|v| ((v * 65535.0).round() as u16).to_ne_bytes())
                .collect(),
            image::ExtendedColorType::L16,
        ),
    };
    encoder
        .write_image(&bytes, w as u32, h as u32, color)
        .map_err(|e| DataError::Encode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

fn check(config: &SynthConfig) -> Result<(), DataError> {
    if config.studies == 0 {
        return Err(DataError::InvalidConfig {
            what: "synthetic studies",
            reason: "0 studies: at least 1 is needed".into(),
        });
    }
    if !(16..=4096).contains(&config.max_side) {
        return Err(DataError::InvalidConfig {
            what: "synthetic image size",
            reason: format!("longer side {} is outside 16..=4096", config.max_side),
        });
    }
    for (what, f) in [
        ("synthetic valid fraction", config.valid_fraction),
        ("synthetic odd-format fraction", config.odd_format_fraction),
    ] {
        if !(0.0..=1.0).contains(&f) {
            return Err(DataError::InvalidConfig {
                what,
                reason: format!("{f} is outside [0, 1]"),
            });
        }
    }
    Ok(())
}

/// Writes a synthetic MURA-v1.1 tree under `out` (which gets a `MURA-v1.1/` folder).
///
/// Refuses to write over an existing `MURA-v1.1/`. Images are rendered and encoded in parallel; the
/// result depends only on the config.
pub fn generate(out: &Path, config: &SynthConfig) -> Result<SynthSummary, DataError> {
    check(config)?;
    let root = out.join(DATASET_DIR);
    if root.exists() {
        return Err(DataError::InvalidConfig {
            what: "synthetic output",
            reason: format!("{} already exists; choose an empty folder", root.display()),
        });
    }
    let studies = plan(config);
    let mut jobs: Vec<(usize, u32, u64, FileFormat)> = Vec::new();
    let mut format_rng = stream_rng(config.seed, &[0x0046_4d54]); // "FMT"
    for (s, study) in studies.iter().enumerate() {
        for view in 1..=study.views {
            let x = unit(&mut format_rng);
            let f = config.odd_format_fraction;
            let format = if x < f {
                FileFormat::Rgb8
            } else if x < 2.0 * f {
                FileFormat::Gray16
            } else {
                FileFormat::Gray8
            };
            jobs.push((s, view, jobs.len() as u64, format));
        }
    }
    for study in &studies {
        let dir = out.join(study.folder());
        std::fs::create_dir_all(&dir).map_err(|e| DataError::Write {
            path: dir,
            source: e,
        })?;
    }
    jobs.par_iter().try_for_each(|&(s, view, id, format)| {
        let study = &studies[s];
        let (w, h, pixels) = render(study, view, config.seed, config.max_side, id);
        let path = out.join(format!("{}/image{view}.png", study.folder()));
        write_png(&path, w, h, &pixels, format)
    })?;

    for split in [Split::Train, Split::Valid] {
        let mut images = String::new();
        let mut labels = String::new();
        for (s, study) in studies
            .iter()
            .enumerate()
            .filter(|(_, st)| st.split == split)
        {
            let _ = s;
            labels.push_str(&format!(
                "{}/,{}\n",
                study.folder(),
                u8::from(study.abnormal)
            ));
            for view in 1..=study.views {
                images.push_str(&format!("{}/image{view}.png\n", study.folder()));
            }
        }
        crate::write_atomic(
            &root.join(format!("{split}_image_paths.csv")),
            images.as_bytes(),
        )?;
        crate::write_atomic(
            &root.join(format!("{split}_labeled_studies.csv")),
            labels.as_bytes(),
        )?;
    }
    let patients = studies.last().map_or(0, |s| s.patient as usize);
    Ok(SynthSummary {
        base: out.to_path_buf(),
        patients,
        studies: studies.len(),
        abnormal_studies: studies.iter().filter(|s| s.abnormal).count(),
        images: jobs.len(),
        rgb_images: jobs.iter().filter(|j| j.3 == FileFormat::Rgb8).count(),
        sixteen_bit_images: jobs.iter().filter(|j| j.3 == FileFormat::Gray16).count(),
    })
}

/// Official MURA-v1.1 counts: (part, split, normal studies, abnormal studies, normal images,
/// abnormal images), from the MURA paper and the data set's CSVs.
pub const OFFICIAL_COUNTS: [(BodyPart, Split, usize, usize, usize, usize); 14] = [
    (BodyPart::Elbow, Split::Train, 1094, 660, 2925, 2006),
    (BodyPart::Finger, Split::Train, 1280, 655, 3138, 1968),
    (BodyPart::Forearm, Split::Train, 590, 287, 1164, 661),
    (BodyPart::Hand, Split::Train, 1497, 521, 4059, 1484),
    (BodyPart::Humerus, Split::Train, 321, 271, 673, 599),
    (BodyPart::Shoulder, Split::Train, 1364, 1457, 4211, 4168),
    (BodyPart::Wrist, Split::Train, 2134, 1326, 5765, 3987),
    (BodyPart::Elbow, Split::Valid, 92, 66, 235, 230),
    (BodyPart::Finger, Split::Valid, 92, 83, 214, 247),
    (BodyPart::Forearm, Split::Valid, 69, 64, 150, 151),
    (BodyPart::Hand, Split::Valid, 101, 66, 271, 189),
    (BodyPart::Humerus, Split::Valid, 68, 67, 148, 140),
    (BodyPart::Shoulder, Split::Valid, 99, 95, 285, 278),
    (BodyPart::Wrist, Split::Valid, 140, 97, 364, 295),
];

/// Writes only the four CSVs of a MURA-v1.1 copy whose study and image counts per body part, label
/// and split equal the official ones ([`OFFICIAL_COUNTS`]): 40,005 image entries, no image files.
///
/// Views are spread as evenly as the counts allow; patients have one or two studies. Useful to check
/// statistics and splits at full scale without the data set (index it with `check_files: false`).
pub fn write_official_csvs(out: &Path) -> Result<(), DataError> {
    let root = out.join(DATASET_DIR);
    std::fs::create_dir_all(&root).map_err(|e| DataError::Write {
        path: root.clone(),
        source: e,
    })?;
    let mut patient = 0u32;
    for split in [Split::Train, Split::Valid] {
        let mut images = String::new();
        let mut labels = String::new();
        for &(part, _, normal_studies, abnormal_studies, normal_images, abnormal_images) in
            OFFICIAL_COUNTS.iter().filter(|c| c.1 == split)
        {
            for (abnormal, studies, views) in [
                (false, normal_studies, normal_images),
                (true, abnormal_studies, abnormal_images),
            ] {
                let (base, extra) = (views / studies, views % studies);
                for s in 0..studies {
                    // Two studies per patient, numbered 1 and 2.
                    if s % 2 == 0 {
                        patient += 1;
                    }
                    let folder = format!(
                        "{DATASET_DIR}/{split}/{}/patient{patient:05}/study{}_{}",
                        part.folder(),
                        s % 2 + 1,
                        if abnormal { "positive" } else { "negative" }
                    );
                    labels.push_str(&format!("{folder}/,{}\n", u8::from(abnormal)));
                    for v in 1..=base + usize::from(s < extra) {
                        images.push_str(&format!("{folder}/image{v}.png\n"));
                    }
                }
            }
        }
        crate::write_atomic(
            &root.join(format!("{split}_image_paths.csv")),
            images.as_bytes(),
        )?;
        crate::write_atomic(
            &root.join(format!("{split}_labeled_studies.csv")),
            labels.as_bytes(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_follows_mura_rates_and_shapes() {
        let config = SynthConfig {
            studies: 30_000,
            seed: 1,
            ..SynthConfig::default()
        };
        let studies = plan(&config);
        assert_eq!(studies.len(), 30_000);
        for (part, _, rate) in PART_MIX {
            let of_part: Vec<_> = studies.iter().filter(|s| s.part == part).collect();
            let abnormal = of_part.iter().filter(|s| s.abnormal).count() as f64;
            let observed = abnormal / of_part.len() as f64;
            assert!(
                (observed - rate).abs() < 0.035,
                "{part}: {observed} vs {rate}"
            );
        }
        let hand = abnormal_rate(BodyPart::Hand);
        assert!((0.26..0.28).contains(&hand));
        assert!((0.5..0.53).contains(&abnormal_rate(BodyPart::Shoulder)));
        // Patients have 1–3 studies, studies 1–4 views, abnormal studies show their finding.
        let mut per_patient: std::collections::BTreeMap<u32, u32> = Default::default();
        for s in &studies {
            *per_patient.entry(s.patient).or_default() += 1;
            assert!((1..=4).contains(&s.views));
            assert_eq!(s.finding.is_some(), s.abnormal);
            assert!(!s.abnormal || s.shown.iter().any(|&v| v));
        }
        assert!(per_patient.values().all(|&n| (1..=3).contains(&n)));
        let valid = studies.iter().filter(|s| s.split == Split::Valid).count() as f64;
        assert!((valid / 30_000.0 - config.valid_fraction).abs() < 0.02);
    }

    #[test]
    fn bad_configs_are_refused() {
        let ok = SynthConfig::default();
        for bad in [
            SynthConfig { studies: 0, ..ok },
            SynthConfig { max_side: 8, ..ok },
            SynthConfig {
                max_side: 100_000,
                ..ok
            },
            SynthConfig {
                valid_fraction: f64::NAN,
                ..ok
            },
            SynthConfig {
                odd_format_fraction: 2.0,
                ..ok
            },
        ] {
            assert!(
                matches!(check(&bad), Err(DataError::InvalidConfig { .. })),
                "{bad:?}"
            );
        }
    }
}

//! Rendering one synthetic radiograph: bones as attenuating capsules per body part in a random
//! pose, growth plates, the study's finding where the view shows it, exposure and noise, and a
//! laterality marker.

use rand::RngCore;

use super::plan::{Finding, PlannedStudy};
use crate::BodyPart;
use crate::rng::{below, stream_rng, uniform, unit};

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

/// What a view shows of its study's finding: the kind, the long bone it is on (an index into
/// the posed bones), where along it, the tilt and the strength.
type Target = (Finding, usize, f32, f32, f32);

/// Image `image_id` (view `view` of `study`): its width, height and brightness in [0, 1]. The
/// draws are made in a fixed order from the image's own stream and the study's.
pub(super) fn render(
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
    let pose = pose(study, view, seed, portrait, &mut rng);
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
    let long_bones: Vec<usize> = (0..bones.len()).filter(|&i| is_long(&bones[i])).collect();
    let target = target(study, view, &long_bones);
    let original = bones.clone();
    if let Some((Finding::Fracture, k, t, tilt, strength)) = target {
        fracture(&mut bones, k, (t, tilt, strength), study.scale);
    }
    for b in &bones {
        canvas.draw_bone(b);
    }
    if study.growth_plates {
        growth_plates(&mut canvas, &original, &long_bones, &mut rng);
    }
    if let Some(target) = target {
        draw_finding(&mut canvas, &original, target, study.scale);
    }
    let mut out = expose(&canvas, &mut rng);
    mark_laterality(&mut out, (w, h), long, pose.mirror, &mut rng);
    (w, h, out)
}

/// The pose of a view: views of one study differ in angle; the patient's laterality is fixed
/// per study.
fn pose(
    study: &PlannedStudy,
    view: u32,
    seed: u64,
    portrait: bool,
    rng: &mut impl RngCore,
) -> Pose {
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
        + uniform(rng, -0.45, 0.45) as f32
        + 0.25 * view as f32 * if mirror { -1.0 } else { 1.0 };
    Pose {
        cos: angle.cos(),
        sin: angle.sin(),
        scale: uniform(rng, 0.8, 1.15) as f32,
        shift: (
            uniform(rng, -0.08, 0.08) as f32,
            uniform(rng, -0.08, 0.08) as f32,
        ),
        mirror,
    }
}

fn is_long(c: &Capsule) -> bool {
    let (dx, dy) = (c.b.0 - c.a.0, c.b.1 - c.a.1);
    (dx * dx + dy * dy).sqrt() > 3.0 * c.r
}

/// The point at `t` along a bone, its unit axis and its length.
fn on_bone(c: &Capsule, t: f32) -> ((f32, f32), (f32, f32), f32) {
    let p = (c.a.0 + (c.b.0 - c.a.0) * t, c.a.1 + (c.b.1 - c.a.1) * t);
    let (dx, dy) = (c.b.0 - c.a.0, c.b.1 - c.a.1);
    let len = (dx * dx + dy * dy).sqrt().max(1e-6);
    (p, (dx / len, dy / len), len)
}

/// The finding this view shows, if it shows one, placed on one of the long bones.
fn target(study: &PlannedStudy, view: u32, long_bones: &[usize]) -> Option<Target> {
    match study.finding {
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
    }
}

/// A fractured shaft: bone `k` cut at `t` into two fragments with a gap, the far one shifted
/// sideways and angulated by the tilt.
fn fracture(bones: &mut Vec<Capsule>, k: usize, (t, tilt, strength): (f32, f32, f32), scale: f32) {
    let c = bones[k];
    let (p, axis, _) = on_bone(&c, t);
    let across = (-axis.1, axis.0);
    // Sizes have a floor relative to the image, so findings on thin bones stay visible when
    // the image is downscaled for training.
    let gap = (c.r * (0.5 + 0.5 * strength)).max(0.02) * scale;
    let shift = (c.r * (0.5 + 0.5 * strength)).max(0.025) * tilt.signum() * scale;
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

/// Growth plates: thin dark lines across some long bones near an end, which look like
/// fractures.
fn growth_plates(
    canvas: &mut Canvas,
    bones: &[Capsule],
    long_bones: &[usize],
    rng: &mut impl RngCore,
) {
    for &k in long_bones {
        let c = &bones[k];
        if unit(rng) < 0.6 {
            let t = if unit(rng) < 0.5 {
                uniform(rng, 0.04, 0.12)
            } else {
                uniform(rng, 0.88, 0.96)
            } as f32;
            let (p, axis, _) = on_bone(c, t);
            let center = canvas.to_px(p);
            let across = (-axis.1, axis.0);
            let r = c.r * canvas.unit;
            canvas.crack(center, across, r * 1.05, (r * 0.06).max(0.6), 0.45, 0.0);
        }
    }
}

/// Hardware (a plate with four screws) or a lytic or sclerotic lesion on the target bone; a
/// fracture is drawn with the bones.
fn draw_finding(canvas: &mut Canvas, bones: &[Capsule], target: Target, scale: f32) {
    let (finding, k, t, _, strength) = target;
    let c = &bones[k];
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
                (r * 0.3).max(0.008 * canvas.unit) * scale,
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
            let radius = (r * (0.7 + 0.3 * strength)).max(0.035 * canvas.unit) * scale;
            let factor = if lytic {
                0.35 - 0.3 * strength
            } else {
                1.8 + 0.6 * strength
            };
            canvas.blob(center, radius, factor);
        }
    }
}

/// Exposure: attenuation to brightness, then background, gradient and noise.
fn expose(canvas: &Canvas, rng: &mut impl RngCore) -> Vec<f32> {
    let (w, h) = canvas.size();
    let gain = uniform(rng, 1.2, 1.8) as f32;
    let background = uniform(rng, 0.02, 0.1) as f32;
    let gradient = uniform(rng, -0.04, 0.04) as f32;
    let noise = uniform(rng, 0.01, 0.035) as f32;
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
    out
}

/// The laterality marker ("L" or "R") in a random corner, on every image of both classes.
fn mark_laterality(
    out: &mut [f32],
    (w, h): (usize, usize),
    long: usize,
    mirror: bool,
    rng: &mut impl RngCore,
) {
    let letter = if mirror { &LETTER_R } else { &LETTER_L };
    let cell = (long / 90).max(1);
    let (mx, my) = match below(rng, 4) {
        0 => (cell * 2, cell * 2),
        1 => (w.saturating_sub(cell * 8), cell * 2),
        2 => (cell * 2, h.saturating_sub(cell * 10)),
        _ => (w.saturating_sub(cell * 8), h.saturating_sub(cell * 10)),
    };
    for (row, bits) in letter.iter().enumerate() {
        for col in (0..5).filter(|col| bits & (0x10 >> col) != 0) {
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

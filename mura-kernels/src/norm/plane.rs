//! The loops over one channel plane: moments, the ReLU mask of the gradient, the gradient sums
//! and the input gradient.

use std::mem::MaybeUninit;

/// Two per-channel values (scale and shift, or mean and inverse deviation).
pub(crate) type Pair = (f32, f32);

/// (Σ f(a, b).0, Σ f(a, b).1) over two equally long slices: eight f32 lanes within blocks of 512
/// elements (so the loop vectorises), blocks added in f64.
#[inline(always)]
pub(crate) fn sum_pairs(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f64, f64) {
    let (mut s0, mut s1) = (0f64, 0f64);
    for (ba, bb) in a.chunks(512).zip(b.chunks(512)) {
        let (mut l0, mut l1) = ([0f32; 8], [0f32; 8]);
        let (mut ca, mut cb) = (ba.chunks_exact(8), bb.chunks_exact(8));
        for (xa, xb) in (&mut ca).zip(&mut cb) {
            for k in 0..8 {
                let (u, v) = f(xa[k], xb[k]);
                l0[k] += u;
                l1[k] += v;
            }
        }
        for (xa, xb) in ca.remainder().iter().zip(cb.remainder()) {
            let (u, v) = f(*xa, *xb);
            l0[0] += u;
            l1[0] += v;
        }
        s0 += l0.iter().map(|v| f64::from(*v)).sum::<f64>();
        s1 += l1.iter().map(|v| f64::from(*v)).sum::<f64>();
    }
    (s0, s1)
}

/// One plane's mean and sum of squared deviations from it: two passes over a plane that stays
/// in cache, the deviations taken from the mean rounded to f32 and the sum corrected for it.
#[inline(always)]
pub(crate) fn plane_moments(plane: &[f32]) -> (f64, f64) {
    let pm = sum_pairs(
        plane,
        plane,
        #[inline(always)]
        |v, _| (v, 0.0),
    )
    .0 / plane.len() as f64;
    let pmf = pm as f32;
    let m2 = sum_pairs(
        plane,
        plane,
        #[inline(always)]
        |v, _| ((v - pmf) * (v - pmf), 0.0),
    )
    .0;
    let shift = pm - f64::from(pmf);
    (pm, m2 - plane.len() as f64 * shift * shift)
}

/// `g` = the gradient `dy` reaching a BatchNorm's affine output (scale, shift) through its
/// ReLU: zero where the ReLU was off. A plain loop the compiler vectorises with a select (with
/// the sums below in the same loop, it would branch lane by lane around each load of `dy`).
#[inline(always)]
pub(crate) fn mask<const RELU: bool>(g: &mut [f32], x: &[f32], dy: &[f32], (scale, shift): Pair) {
    for ((o, v), d) in g.iter_mut().zip(x).zip(dy) {
        *o = if RELU && v * scale + shift <= 0.0 {
            0.0
        } else {
            *d
        };
    }
}

/// (Σg, Σg·x̂) over one plane, x̂ = (x − mean)·inv.
#[inline(always)]
pub(crate) fn grad_sums(g: &[f32], x: &[f32], (mean, inv): Pair) -> (f64, f64) {
    sum_pairs(
        g,
        x,
        #[inline(always)]
        |gv, v| (gv, gv * ((v - mean) * inv)),
    )
}

/// One plane of an input gradient: written into fresh storage, or added to a gradient
/// buffer (DenseNet's block, where every layer that reads a channel adds its part).
pub(crate) enum DxPlane<'a> {
    Write(&'a mut [MaybeUninit<f32>]),
    Add(&'a mut [f32]),
}

/// One plane of the input gradient from `g` (see [`mask`]): in training
/// dx = γ·inv/M · (M·g − Σg − x̂·Σg·x̂) = scale · (g − a − x̂·b) with a = Σg/M, b = Σg·x̂/M;
/// in evaluation dx = g·scale.
#[inline(always)]
pub(crate) fn plane_dx<const TRAIN: bool>(
    dx: &mut DxPlane<'_>,
    x: &[f32],
    g: &[f32],
    (scale, (mean, inv), (a, b)): (f32, Pair, Pair),
) {
    let value = |v: f32, gv: f32| {
        if TRAIN {
            let xhat = (v - mean) * inv;
            scale * (gv - a - xhat * b)
        } else {
            gv * scale
        }
    };
    match dx {
        DxPlane::Write(dx) => {
            for ((o, v), gv) in dx.iter_mut().zip(x).zip(g) {
                o.write(value(*v, *gv));
            }
        }
        DxPlane::Add(dx) => {
            for ((o, v), gv) in dx.iter_mut().zip(x).zip(g) {
                *o += value(*v, *gv);
            }
        }
    }
}

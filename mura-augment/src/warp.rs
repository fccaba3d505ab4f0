//! The geometric transform's sampler: bilinear, black outside the image, in 16.16 fixed point
//! with 8-bit weights (Pillow's affine transform). A portable path, and on x86-64 CPUs with AVX2
//! one that samples eight pixels per step with two gathers; both give the same bits.

use crate::params::Params;

/// The inverse affine map of a [`Params`]: destination pixel (x, y) samples the source at
/// `(x0 + m00 x + m01 y, y0 + m10 x + m11 y)` (continuous coordinates, pixel centres at k + 0.5
/// shifted to k).
#[derive(Debug, Clone, Copy)]
pub(crate) struct InverseMap {
    m00: f32,
    m01: f32,
    m10: f32,
    m11: f32,
    x0: f32,
    y0: f32,
}

impl InverseMap {
    /// Flips, then rotation by θ, scale s and shift t about the centre c, inverted:
    /// src = flip(R(-θ) (dst - c - t) / s) + c.
    pub(crate) fn new(w: usize, h: usize, params: &Params) -> Self {
        let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
        let (sin, cos) = params.angle_degrees.to_radians().sin_cos();
        let inv = 1.0 / params.scale;
        let fx = if params.hflip { -1.0 } else { 1.0 };
        let fy = if params.vflip { -1.0 } else { 1.0 };
        let (m00, m01) = (fx * cos * inv, fx * sin * inv);
        let (m10, m11) = (-fy * sin * inv, fy * cos * inv);
        // Destination pixel centre (x + 0.5, y + 0.5), relative to c + t.
        let (dx, dy) = (0.5 - cx - params.shift.0, 0.5 - cy - params.shift.1);
        Self {
            m00,
            m01,
            m10,
            m11,
            x0: m00 * dx + m01 * dy + cx - 0.5,
            y0: m10 * dx + m11 * dy + cy - 0.5,
        }
    }
}

/// Fixed-point source positions along one destination row: 16.16, stepping by `(dx, dy)` per pixel.
#[derive(Debug, Clone, Copy)]
struct RowSteps {
    rx: f32,
    ry: f32,
    dx: i64,
    dy: i64,
}

impl RowSteps {
    const ONE: f32 = 65536.0;
    /// Pixels per block: each block's start is recomputed from the float map, so rounding in the
    /// steps never drifts by more than a block's worth.
    const BLOCK: usize = 64;

    fn new(map: &InverseMap, y: usize) -> Self {
        Self {
            rx: map.x0 + map.m01 * y as f32,
            ry: map.y0 + map.m11 * y as f32,
            dx: (map.m00 * Self::ONE) as i64,
            dy: (map.m10 * Self::ONE) as i64,
        }
    }

    /// The fixed-point source position of the first pixel of block `block`.
    fn block_start(&self, map: &InverseMap, block: usize) -> (i64, i64) {
        let x = (block * Self::BLOCK) as f32;
        (
            ((self.rx + map.m00 * x) * Self::ONE).floor() as i64,
            ((self.ry + map.m10 * x) * Self::ONE).floor() as i64,
        )
    }
}

/// 1 / (255 · 256²): an 8-bit value blended with two 8-bit weights, back to [0, 1].
const BLEND_TO_UNIT: f32 = 1.0 / (255.0 * 65536.0);

/// One pixel at fixed-point source position `(sx, sy)`, anywhere (black outside the image).
#[inline(always)]
fn sample(plane: &[u8], w: usize, h: usize, sx: i64, sy: i64) -> f32 {
    let (wi, hi) = (w as i32, h as i32);
    let (x0, y0) = ((sx >> 16) as i32, (sy >> 16) as i32);
    let (ax, ay) = (((sx >> 8) & 0xff) as u32, ((sy >> 8) & 0xff) as u32);
    // No overflow whatever the map: `x0 < wi - 1` rather than `x0 + 1 < wi`, saturating
    // neighbours (the decode_augment fuzz target's regression `zoom-1e-24-overflow`).
    let (a, b, c, d) = if x0 >= 0 && y0 >= 0 && x0 < wi - 1 && y0 < hi - 1 {
        let i = y0 as usize * w + x0 as usize;
        let (top, bottom) = (&plane[i..i + 2], &plane[i + w..i + w + 2]);
        (
            u32::from(top[0]),
            u32::from(top[1]),
            u32::from(bottom[0]),
            u32::from(bottom[1]),
        )
    } else {
        let at = |x: i32, y: i32| -> u32 {
            if x >= 0 && y >= 0 && x < wi && y < hi {
                u32::from(plane[y as usize * w + x as usize])
            } else {
                0
            }
        };
        let (x1, y1) = (x0.saturating_add(1), y0.saturating_add(1));
        (at(x0, y0), at(x1, y0), at(x0, y1), at(x1, y1))
    };
    let top = a * (256 - ax) + b * ax;
    let bottom = c * (256 - ax) + d * ax;
    (top * (256 - ay) + bottom * ay) as f32 * BLEND_TO_UNIT
}

/// One destination row of the geometric transform of `plane` (`w`×`h`, row-major), as values in
/// [0, 1] (black outside).
pub(crate) fn sample_row(
    plane: &[u8],
    (w, h): (usize, usize),
    map: &InverseMap,
    y: usize,
    row: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if avx2::usable(plane, w, h) {
        // SAFETY: `usable` checked that the CPU has AVX2 and that `plane` holds `w`×`h` pixels
        // with both sides in [2, 2¹⁵), what `avx2::sample_row` requires.
        #[allow(unsafe_code)]
        unsafe {
            avx2::sample_row(plane, w, h, map, y, row);
        }
        return;
    }
    sample_row_portable(plane, w, h, map, y, row);
}

/// [`sample_row`] one pixel at a time.
fn sample_row_portable(
    plane: &[u8],
    w: usize,
    h: usize,
    map: &InverseMap,
    y: usize,
    row: &mut [f32],
) {
    let steps = RowSteps::new(map, y);
    for (block, chunk) in row.chunks_mut(RowSteps::BLOCK).enumerate() {
        let (mut sx, mut sy) = steps.block_start(map, block);
        for out in chunk {
            *out = sample(plane, w, h, sx, sy);
            sx = sx.wrapping_add(steps.dx);
            sy = sy.wrapping_add(steps.dy);
        }
    }
}

/// Eight pixels per step, with two gathers and no per-pixel branches; the one-pixel path only
/// where positions leave the i32 range (zooms far beyond any augmentation's).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLEND_TO_UNIT, InverseMap, RowSteps, sample};

    const LANES: usize = 8;

    /// True when [`sample_row`] may run: AVX2 present, `plane` exactly `w`×`h`, sides in
    /// [2, 2¹⁵).
    pub(super) fn usable(plane: &[u8], w: usize, h: usize) -> bool {
        (2..1 << 15).contains(&w)
            && (2..1 << 15).contains(&h)
            && plane.len() == w * h
            && std::arch::is_x86_feature_detected!("avx2")
    }

    /// # Safety
    /// The CPU must have AVX2 and [`usable`] must hold for `plane`, `w`, `h`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sample_row(
        plane: &[u8],
        w: usize,
        h: usize,
        map: &InverseMap,
        y: usize,
        row: &mut [f32],
    ) {
        let steps = RowSteps::new(map, y);
        let (dx, dy) = (steps.dx, steps.dy);
        // Eight wrapping steps at once, as the one-pixel path takes them.
        let (dx8, dy8) = (dx.wrapping_mul(LANES as i64), dy.wrapping_mul(LANES as i64));
        let fits = |p: i64, d: i64| {
            let last = d
                .checked_mul(LANES as i64 - 1)
                .and_then(|s| p.checked_add(s));
            i32::try_from(p).is_ok() && last.is_some_and(|e| i32::try_from(e).is_ok())
        };
        for (block, chunk) in row.chunks_mut(RowSteps::BLOCK).enumerate() {
            let (mut sx, mut sy) = steps.block_start(map, block);
            for lanes in chunk.chunks_mut(LANES) {
                // The positions lie on a segment: both ends in i32 puts all eight there.
                if lanes.len() == LANES && fits(sx, dx) && fits(sy, dy) {
                    // SAFETY: AVX2 is present and `plane` is `w`×`h` with both sides at least
                    // 2 (this function's contract); `lanes` holds eight floats.
                    unsafe { sample_eight(plane, (w, h), (sx, sy), (dx, dy), lanes) };
                    (sx, sy) = (sx.wrapping_add(dx8), sy.wrapping_add(dy8));
                } else {
                    for out in lanes.iter_mut() {
                        *out = sample(plane, w, h, sx, sy);
                        sx = sx.wrapping_add(dx);
                        sy = sy.wrapping_add(dy);
                    }
                }
            }
        }
    }

    /// The pixels at `(sx + k·dx, sy + k·dy)`, k = 0..8, into `out`: [`sample`]'s arithmetic
    /// lane by lane. The two gathers read the 2×2 block at the top-left neighbour clamped into
    /// the image; neighbours outside the image, or outside that block, read as black.
    ///
    /// # Safety
    /// AVX2 present; `out.len() >= 8`; `plane.len() == w·h` with `2 <= w, h < 2¹⁵`; every
    /// position fits i32.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sample_eight(
        plane: &[u8],
        (w, h): (usize, usize),
        (sx, sy): (i64, i64),
        (dx, dy): (i64, i64),
        out: &mut [f32],
    ) {
        let k = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let x = _mm256_add_epi32(
            _mm256_set1_epi32(sx as i32),
            _mm256_mullo_epi32(k, _mm256_set1_epi32(dx as i32)),
        );
        let y = _mm256_add_epi32(
            _mm256_set1_epi32(sy as i32),
            _mm256_mullo_epi32(k, _mm256_set1_epi32(dy as i32)),
        );
        let one = _mm256_set1_epi32(1);
        let (x0, y0) = (_mm256_srai_epi32::<16>(x), _mm256_srai_epi32::<16>(y));
        let (x1, y1) = (_mm256_add_epi32(x0, one), _mm256_add_epi32(y0, one));
        let zero = _mm256_setzero_si256();
        let clamp = |v: __m256i, hi: usize| {
            _mm256_min_epi32(_mm256_max_epi32(v, zero), _mm256_set1_epi32(hi as i32))
        };
        let (xc, yc) = (clamp(x0, w - 2), clamp(y0, h - 2));
        let corner = _mm256_add_epi32(_mm256_mullo_epi32(yc, _mm256_set1_epi32(w as i32)), xc);
        let base = plane.as_ptr().cast::<i32>();
        // Row yc in bytes 0 and 1 of the word at i = yc·w + xc; row yc + 1 in bytes 2 and 3 of
        // the word at i + w - 2 (reading backwards keeps the last row's read inside the plane).
        // SAFETY: 0 <= xc <= w - 2 and 0 <= yc <= h - 2, so i + 4 <= (h - 1)·w + 2 <= w·h
        // (w >= 2) and 0 <= i + w - 2 with i + w + 2 <= w·h: every 4-byte read lies inside
        // `plane`; the gather reads unaligned with scale 1.
        let (upper, lower) = unsafe {
            (
                _mm256_i32gather_epi32::<1>(base, corner),
                _mm256_srli_epi32::<16>(_mm256_i32gather_epi32::<1>(
                    base,
                    _mm256_add_epi32(corner, _mm256_set1_epi32(w as i32 - 2)),
                )),
            )
        };
        // A source row's two bytes (columns xc, xc + 1): rows yc and yc + 1 are in the block,
        // any other (outside the image) is black.
        let row = |r: __m256i| {
            let is_upper = _mm256_cmpeq_epi32(r, yc);
            let is_lower = _mm256_cmpeq_epi32(r, _mm256_add_epi32(yc, one));
            _mm256_or_si256(
                _mm256_and_si256(is_upper, upper),
                _mm256_and_si256(is_lower, lower),
            )
        };
        // A column's byte in a row's two: offset 0 or 1 from xc, black otherwise.
        let byte = _mm256_set1_epi32(0xff);
        let column = |pair: __m256i, c: __m256i| {
            let offset = _mm256_sub_epi32(c, xc);
            let in_block = _mm256_or_si256(
                _mm256_cmpeq_epi32(offset, zero),
                _mm256_cmpeq_epi32(offset, one),
            );
            let shifted = _mm256_srlv_epi32(pair, _mm256_slli_epi32::<3>(offset));
            _mm256_and_si256(_mm256_and_si256(shifted, byte), in_block)
        };
        let (top, bottom) = (row(y0), row(y1));
        let (a, b) = (column(top, x0), column(top, x1));
        let (c, d) = (column(bottom, x0), column(bottom, x1));
        let ax = _mm256_and_si256(_mm256_srai_epi32::<8>(x), byte);
        let ay = _mm256_and_si256(_mm256_srai_epi32::<8>(y), byte);
        let full = _mm256_set1_epi32(256);
        let (nx, ny) = (_mm256_sub_epi32(full, ax), _mm256_sub_epi32(full, ay));
        let upper = _mm256_add_epi32(_mm256_mullo_epi32(a, nx), _mm256_mullo_epi32(b, ax));
        let lower = _mm256_add_epi32(_mm256_mullo_epi32(c, nx), _mm256_mullo_epi32(d, ax));
        let blended =
            _mm256_add_epi32(_mm256_mullo_epi32(upper, ny), _mm256_mullo_epi32(lower, ay));
        let values = _mm256_mul_ps(_mm256_cvtepi32_ps(blended), _mm256_set1_ps(BLEND_TO_UNIT));
        // SAFETY: `out` holds at least eight floats (the caller's contract).
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), values) };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use proptest::prelude::*;

    use super::*;

    fn plane(w: usize, h: usize) -> Vec<u8> {
        (0..w * h)
            .map(|i| ((i % w * 53 + i / w * 29 + (i % w) * (i / w)) % 256) as u8)
            .collect()
    }

    proptest! {
        /// Every path (the AVX2 one where the CPU has it) gives the portable path's bits, over
        /// maps that cross every edge, zoom in and out 16×, and step backwards.
        #[test]
        fn rows_equal_the_portable_path_bit_for_bit(
            w in 1usize..300, h in 1usize..80, angle in -180.0f32..180.0, scale in 0.0625f32..16.0,
            tx in -50.0f32..50.0, ty in -50.0f32..50.0, hflip in any::<bool>(), vflip in any::<bool>(),
        ) {
            let img = plane(w, h);
            let p = Params {
                hflip, vflip, angle_degrees: angle, scale, shift: (tx, ty),
                brightness: 0.0, contrast: 1.0, window: false, clahe: false,
            };
            let map = InverseMap::new(w, h, &p);
            let (mut row, mut expect) = (vec![f32::NAN; w], vec![f32::NAN; w]);
            for y in 0..h {
                sample_row(&img, (w, h), &map, y, &mut row);
                sample_row_portable(&img, w, h, &map, y, &mut expect);
                for (x, (a, b)) in row.iter().zip(&expect).enumerate() {
                    prop_assert_eq!(a.to_bits(), b.to_bits(), "pixel ({}, {})", x, y);
                }
            }
        }
    }

    /// The eight-lane path on its own, right at the last row and column (where a read past the
    /// plane would show) and across the edges, against the one-pixel sampler.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn eight_lanes_reach_the_edges_and_beyond_exactly() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: the portable path is the only one");
            return;
        }
        for (w, h) in [(2, 2), (9, 3), (64, 64), (300, 7)] {
            let img = plane(w, h);
            let (x_last, y_last) = (((w as i64 - 1) << 16) - 1, ((h as i64 - 1) << 16) - 1);
            let (wf, hf) = ((w as i64) << 16, (h as i64) << 16);
            // From the origin to the far corner, back along the last row and column, and across
            // the image from outside to outside (neighbours that must read as black).
            for ((sx, sy), (ex, ey)) in [
                ((0, 0), (x_last, y_last)),
                ((x_last, y_last), (0, y_last)),
                ((x_last, 0), (x_last, y_last)),
                ((-3 << 16, -(2 << 16) - 77), (wf + (2 << 16), hf + 9)),
                ((wf + 5, 3), (-(1 << 16) - 1, hf - 1)),
            ] {
                let (dx, dy) = ((ex - sx) / 7, (ey - sy) / 7);
                let mut out = [f32::NAN; 8];
                assert!(avx2::usable(&img, w, h));
                // SAFETY (test): AVX2 and the plane checked by `usable`; positions fit i32.
                #[allow(unsafe_code)]
                unsafe {
                    avx2::sample_eight(&img, (w, h), (sx, sy), (dx, dy), &mut out)
                };
                for (k, v) in out.iter().enumerate() {
                    let (x, y) = (sx + k as i64 * dx, sy + k as i64 * dy);
                    assert_eq!(
                        v.to_bits(),
                        sample(&img, w, h, x, y).to_bits(),
                        "{w}x{h} lane {k}"
                    );
                    assert!(v.is_finite());
                }
            }
        }
    }
}

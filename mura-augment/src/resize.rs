//! Resizing gray radiographs with `fast_image_resize` (SIMD) into a caller-owned buffer: stretch,
//! letterbox, or shorter side then centre crop.

use fast_image_resize as fir;
use fir::images::{Image, ImageRef};

use crate::AugmentError;

/// How the source's aspect ratio meets the target's.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum ResizeMode {
    /// Scale each axis independently (as the Keras generators of the seed reports resize).
    Stretch,
    /// Keep the aspect ratio, fit inside the target, pad the rest with `pad` (centred).
    Letterbox { pad: u8 },
    /// timm's eval preset: scale so the target covers `crop_fraction` of the source's shorter side,
    /// centred (`crop_fraction` 0.875 = resize to size/0.875 then centre-crop size).
    CenterCrop { crop_fraction: f32 },
}

impl Default for ResizeMode {
    fn default() -> Self {
        ResizeMode::Letterbox { pad: 0 }
    }
}

/// The interpolation filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    #[default]
    Bilinear,
    /// Catmull-Rom, what PIL and torchvision call bicubic.
    Bicubic,
    Lanczos3,
}

impl Filter {
    fn fir(self) -> fir::FilterType {
        match self {
            Filter::Bilinear => fir::FilterType::Bilinear,
            Filter::Bicubic => fir::FilterType::CatmullRom,
            Filter::Lanczos3 => fir::FilterType::Lanczos3,
        }
    }
}

/// The part of the target an image occupies after a letterbox resize: `(x, y, width, height)`.
pub fn letterbox_rect(src: (u32, u32), dst: (u32, u32)) -> (u32, u32, u32, u32) {
    let k = (f64::from(dst.0) / f64::from(src.0)).min(f64::from(dst.1) / f64::from(src.1));
    let w = ((f64::from(src.0) * k).round() as u32).clamp(1, dst.0);
    let h = ((f64::from(src.1) * k).round() as u32).clamp(1, dst.1);
    ((dst.0 - w) / 2, (dst.1 - h) / 2, w, h)
}

/// A reusable resizer (one per worker thread): owns `fast_image_resize`'s scratch buffers and a
/// letterbox buffer, so steady-state resizing allocates nothing.
#[derive(Debug)]
pub struct GrayResizer {
    inner: fir::Resizer,
    inner_buffer: Vec<u8>,
    /// The two-pass resize's intermediates: after the vertical pass (and later the second pass's
    /// output), and transposed.
    pass: Vec<u8>,
    turned: Vec<u8>,
}

impl Default for GrayResizer {
    fn default() -> Self {
        Self::new()
    }
}

impl GrayResizer {
    /// Uses the best SIMD extension the CPU has.
    pub fn new() -> Self {
        Self {
            inner: fir::Resizer::new(),
            inner_buffer: Vec::new(),
            pass: Vec::new(),
            turned: Vec::new(),
        }
    }

    /// Uses no SIMD: the scalar reference every SIMD path is tested against.
    pub fn scalar() -> Self {
        Self::with_extensions(fir::CpuExtensions::None).unwrap_or_default()
    }

    /// Uses the given extension if this CPU supports it, `None` otherwise.
    pub fn with_extensions(ext: fir::CpuExtensions) -> Option<Self> {
        if !ext.is_supported() {
            return None;
        }
        let mut r = Self::new();
        // SAFETY: `set_cpu_extensions` is unsafe only because an extension the CPU lacks would
        // execute illegal instructions; support was checked just above.
        #[allow(unsafe_code)]
        unsafe {
            r.inner.set_cpu_extensions(ext)
        };
        Some(r)
    }

    /// The SIMD extension in use.
    pub fn extensions(&self) -> fir::CpuExtensions {
        self.inner.cpu_extensions()
    }

    /// Resizes the 8-bit gray `src` (`src_w`×`src_h`, row-major) into `dst` (`dst_w`×`dst_h`).
    #[allow(clippy::too_many_arguments)]
    pub fn resize(
        &mut self,
        src: &[u8],
        (src_w, src_h): (u32, u32),
        dst: &mut [u8],
        (dst_w, dst_h): (u32, u32),
        mode: ResizeMode,
        filter: Filter,
    ) -> Result<(), AugmentError> {
        if src_w == 0 || src_h == 0 {
            return Err(AugmentError::EmptyImage {
                width: src_w,
                height: src_h,
            });
        }
        if dst_w == 0 || dst_h == 0 {
            return Err(AugmentError::BadConfig {
                what: "output size",
                reason: format!("{dst_w}×{dst_h} has no pixels"),
            });
        }
        let needed = src_w as usize * src_h as usize;
        if src.len() != needed {
            return Err(AugmentError::PixelCount {
                width: src_w,
                height: src_h,
                expected: needed,
                found: src.len(),
            });
        }
        let out_len = dst_w as usize * dst_h as usize;
        if dst.len() != out_len {
            return Err(AugmentError::DestinationSize {
                channels: 1,
                height: dst_h,
                width: dst_w,
                needed: out_len,
                found: dst.len(),
            });
        }
        let whole = (0.0, 0.0, f64::from(src_w), f64::from(src_h));
        let src = (src, (src_w, src_h));
        match mode {
            ResizeMode::Stretch => self.convolve(src, whole, dst, (dst_w, dst_h), filter),
            ResizeMode::CenterCrop { crop_fraction } => {
                if !(crop_fraction.is_finite() && crop_fraction > 0.0 && crop_fraction <= 1.0) {
                    return Err(AugmentError::BadConfig {
                        what: "crop fraction",
                        reason: format!("{crop_fraction} is not in (0, 1]"),
                    });
                }
                // Scale at which the target covers the source, then shrink the covered box.
                let k = (f64::from(dst_w) / f64::from(src_w))
                    .max(f64::from(dst_h) / f64::from(src_h))
                    / f64::from(crop_fraction);
                // At least one source pixel: a tiny fraction (or a tiny image) must not ask the
                // resizer for an empty crop, which it indexes out of bounds (the fuzz regression
                // `crop-1e-24-empty-crop`).
                let bw = (f64::from(dst_w) / k).max(1.0).min(f64::from(src_w));
                let bh = (f64::from(dst_h) / k).max(1.0).min(f64::from(src_h));
                let left = (f64::from(src_w) - bw) / 2.0;
                let top = (f64::from(src_h) - bh) / 2.0;
                self.convolve(src, (left, top, bw, bh), dst, (dst_w, dst_h), filter)
            }
            ResizeMode::Letterbox { pad } => {
                let (x, y, w, h) = letterbox_rect((src_w, src_h), (dst_w, dst_h));
                let mut inner = std::mem::take(&mut self.inner_buffer);
                inner.clear();
                inner.resize(w as usize * h as usize, 0);
                let done = self.convolve(src, whole, &mut inner, (w, h), filter);
                self.inner_buffer = inner;
                done?;
                dst.fill(pad);
                let (x, y, w) = (x as usize, y as usize, w as usize);
                for (row, line) in self.inner_buffer.chunks_exact(w).enumerate() {
                    let start = (y + row) * dst_w as usize + x;
                    dst[start..start + w].copy_from_slice(line);
                }
                Ok(())
            }
        }
    }
}

impl GrayResizer {
    /// The box `(left, top, width, height)` of `src` resized into `dst` by fast_image_resize's
    /// convolution, as two vertical passes: rows first, then, on the transposed result, columns,
    /// transposed back. For 8-bit gray its horizontal kernel works on one output pixel at a time,
    /// much slower than its vertical one, and both kernels round the same way, so the pixels
    /// equal those of its one-call resize (tested). Without column scaling it is that one call.
    fn convolve(
        &mut self,
        (src, (src_w, src_h)): (&[u8], (u32, u32)),
        (left, top, width, height): (f64, f64, f64, f64),
        dst: &mut [u8],
        (dst_w, dst_h): (u32, u32),
        filter: Filter,
    ) -> Result<(), AugmentError> {
        let options = |top: f64, width: f64, height: f64| {
            fir::ResizeOptions::new()
                .resize_alg(fir::ResizeAlg::Convolution(filter.fir()))
                .crop(0.0, top, width, height)
        };
        // No column scaling (the box as wide as the target, on whole pixels): fir's one call
        // runs only the vertical pass.
        if width == f64::from(dst_w) && left.fract() == 0.0 {
            let src_view = ImageRef::new(src_w, src_h, src, fir::PixelType::U8).map_err(fir_err)?;
            let mut view =
                Image::from_slice_u8(dst_w, dst_h, dst, fir::PixelType::U8).map_err(fir_err)?;
            let options = fir::ResizeOptions::new()
                .resize_alg(fir::ResizeAlg::Convolution(filter.fir()))
                .crop(left, top, width, height);
            return self
                .inner
                .resize(&src_view, &mut view, &options)
                .map_err(fir_err);
        }
        // Rows: src_w × dst_h, every column kept.
        let (src_w_us, dst_w_us, dst_h_us) = (src_w as usize, dst_w as usize, dst_h as usize);
        self.pass.resize(src_w_us * dst_h_us, 0);
        {
            let src_view = ImageRef::new(src_w, src_h, src, fir::PixelType::U8).map_err(fir_err)?;
            let mut view = Image::from_slice_u8(src_w, dst_h, &mut self.pass, fir::PixelType::U8)
                .map_err(fir_err)?;
            self.inner
                .resize(
                    &src_view,
                    &mut view,
                    &options(top, f64::from(src_w), height),
                )
                .map_err(fir_err)?;
        }
        // Columns, as rows of the transpose (dst_h wide, src_w high): dst_h × dst_w.
        self.turned.resize(src_w_us * dst_h_us, 0);
        transpose(&self.pass, src_w_us, dst_h_us, &mut self.turned);
        self.pass.resize(dst_w_us * dst_h_us, 0);
        {
            let src_view =
                ImageRef::new(dst_h, src_w, &self.turned, fir::PixelType::U8).map_err(fir_err)?;
            let mut view = Image::from_slice_u8(dst_h, dst_w, &mut self.pass, fir::PixelType::U8)
                .map_err(fir_err)?;
            self.inner
                .resize(
                    &src_view,
                    &mut view,
                    &options(left, f64::from(dst_h), width),
                )
                .map_err(fir_err)?;
        }
        transpose(&self.pass, dst_h_us, dst_w_us, dst);
        Ok(())
    }
}

/// `dst` (`h` wide, `w` high) = the transpose of `src` (`w` wide, `h` high), in 8×8 blocks of
/// bytes transposed inside u64 registers (three rounds of masked swaps), the ragged edges one
/// byte at a time.
pub(crate) fn transpose(src: &[u8], w: usize, h: usize, dst: &mut [u8]) {
    debug_assert!(src.len() >= w * h && dst.len() >= w * h);
    let word = |bytes: &[u8]| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[..8]);
        u64::from_le_bytes(b)
    };
    let (w8, h8) = (w - w % 8, h - h % 8);
    for by in (0..h8).step_by(8) {
        for bx in (0..w8).step_by(8) {
            let mut r: [u64; 8] = std::array::from_fn(|i| word(&src[(by + i) * w + bx..]));
            // Swap the off-diagonal 4×4, then 2×2, then 1×1 blocks.
            for (shift, mask, pairs) in [
                (
                    32,
                    0x0000_0000_ffff_ffff_u64,
                    [(0, 4), (1, 5), (2, 6), (3, 7)],
                ),
                (16, 0x0000_ffff_0000_ffff, [(0, 2), (1, 3), (4, 6), (5, 7)]),
                (8, 0x00ff_00ff_00ff_00ff, [(0, 1), (2, 3), (4, 5), (6, 7)]),
            ] {
                for (i, j) in pairs {
                    let t = ((r[i] >> shift) ^ r[j]) & mask;
                    r[i] ^= t << shift;
                    r[j] ^= t;
                }
            }
            for (i, v) in r.iter().enumerate() {
                let at = (bx + i) * h + by;
                dst[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
    }
    for y in 0..h {
        let from = if y < h8 { w8 } else { 0 };
        for x in from..w {
            dst[x * h + y] = src[y * w + x];
        }
    }
}

fn fir_err(e: impl std::fmt::Display) -> AugmentError {
    AugmentError::Resize(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ramp(w: u32, h: u32) -> Vec<u8> {
        (0..w * h)
            .map(|i| ((i % w) * 255 / w.max(1)) as u8 ^ ((i / w) as u8))
            .collect()
    }

    /// A tiny crop fraction (or source) must not ask fast_image_resize for an empty crop, which
    /// panics inside it (a case fuzzing found): the crop is at least one source pixel.
    #[test]
    fn tiny_crops_are_one_source_pixel_not_a_panic() {
        let mut r = GrayResizer::new();
        let src: Vec<u8> = (0..48u32 * 40).map(|i| (i % 251) as u8).collect();
        for (src_w, src_h, fraction) in [(48, 40, 1.65e-24f32), (1, 1, 0.875), (48, 1, 0.5)] {
            for filter in [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos3] {
                let mut dst = vec![0u8; 20 * 18];
                let n = (src_w * src_h) as usize;
                r.resize(
                    &src[..n],
                    (src_w, src_h),
                    &mut dst,
                    (20, 18),
                    ResizeMode::CenterCrop {
                        crop_fraction: fraction,
                    },
                    filter,
                )
                .unwrap();
                if src_w == 1 && src_h == 1 {
                    assert!(dst.iter().all(|&v| v == src[0]), "{dst:?}");
                }
            }
        }
    }

    #[test]
    fn simd_paths_agree_with_scalar() {
        let exts = [
            fast_image_resize::CpuExtensions::None,
            #[cfg(target_arch = "x86_64")]
            fast_image_resize::CpuExtensions::Sse4_1,
            #[cfg(target_arch = "x86_64")]
            fast_image_resize::CpuExtensions::Avx2,
            #[cfg(target_arch = "aarch64")]
            fast_image_resize::CpuExtensions::Neon,
        ];
        let src = ramp(97, 131);
        let modes = [
            ResizeMode::Stretch,
            ResizeMode::Letterbox { pad: 7 },
            ResizeMode::CenterCrop {
                crop_fraction: 0.875,
            },
        ];
        for mode in modes {
            for filter in [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos3] {
                let mut reference = vec![0u8; 64 * 48];
                GrayResizer::scalar()
                    .resize(&src, (97, 131), &mut reference, (64, 48), mode, filter)
                    .unwrap();
                for ext in exts {
                    let Some(mut r) = GrayResizer::with_extensions(ext) else {
                        continue;
                    };
                    let mut out = vec![0u8; 64 * 48];
                    r.resize(&src, (97, 131), &mut out, (64, 48), mode, filter)
                        .unwrap();
                    let worst = out
                        .iter()
                        .zip(&reference)
                        .map(|(a, b)| (i16::from(*a) - i16::from(*b)).abs())
                        .max()
                        .unwrap_or(0);
                    // Fixed-point SIMD kernels may round differently by one level.
                    assert!(worst <= 1, "{ext:?} {mode:?} {filter:?}: off by {worst}");
                }
            }
        }
    }

    #[test]
    fn degenerate_inputs() {
        let mut r = GrayResizer::new();
        let mut out = vec![0u8; 16];
        assert!(matches!(
            r.resize(
                &[],
                (0, 5),
                &mut out,
                (4, 4),
                ResizeMode::Stretch,
                Filter::Bilinear
            ),
            Err(AugmentError::EmptyImage { .. })
        ));
        // One pixel: a defined, constant result.
        r.resize(
            &[200],
            (1, 1),
            &mut out,
            (4, 4),
            ResizeMode::Stretch,
            Filter::Lanczos3,
        )
        .unwrap();
        assert!(out.iter().all(|&v| v == 200), "{out:?}");
        r.resize(
            &[200],
            (1, 1),
            &mut out,
            (4, 4),
            ResizeMode::Letterbox { pad: 0 },
            Filter::Bilinear,
        )
        .unwrap();
        assert!(out.iter().all(|&v| v == 200));
        for crop_fraction in [0.0, -1.0, f32::NAN, 1.5] {
            assert!(matches!(
                r.resize(
                    &[1; 4],
                    (2, 2),
                    &mut out,
                    (4, 4),
                    ResizeMode::CenterCrop { crop_fraction },
                    Filter::Bilinear
                ),
                Err(AugmentError::BadConfig { .. })
            ));
        }
        assert!(matches!(
            r.resize(
                &[1; 3],
                (2, 2),
                &mut out,
                (4, 4),
                ResizeMode::Stretch,
                Filter::Bilinear
            ),
            Err(AugmentError::PixelCount { .. })
        ));
    }

    /// fast_image_resize's one-call resize of the box of `src`: what the two passes must equal.
    fn one_call(
        r: &mut GrayResizer,
        src: &[u8],
        (sw, sh): (u32, u32),
        (left, top, width, height): (f64, f64, f64, f64),
        (dw, dh): (u32, u32),
        filter: Filter,
    ) -> Vec<u8> {
        let mut out = vec![0u8; (dw * dh) as usize];
        let src_view = ImageRef::new(sw, sh, src, fir::PixelType::U8).unwrap();
        let mut view = Image::from_slice_u8(dw, dh, &mut out, fir::PixelType::U8).unwrap();
        let options = fir::ResizeOptions::new()
            .resize_alg(fir::ResizeAlg::Convolution(filter.fir()))
            .crop(left, top, width, height);
        r.inner.resize(&src_view, &mut view, &options).unwrap();
        out
    }

    proptest! {
        #[test]
        fn transpose_moves_every_byte(w in 1usize..40, h in 1usize..40) {
            let src: Vec<u8> = (0..w * h).map(|i| (i * 7 % 251) as u8).collect();
            let mut dst = vec![0u8; w * h];
            transpose(&src, w, h, &mut dst);
            for y in 0..h {
                for x in 0..w {
                    prop_assert_eq!(dst[x * h + y], src[y * w + x], "({}, {}) of {}x{}", x, y, w, h);
                }
            }
        }

        /// The two vertical passes give fast_image_resize's one-call pixels exactly, for every
        /// filter, SIMD extension, scale up or down, and fractional crop box.
        #[test]
        fn two_passes_equal_the_one_call_resize(
            sw in 1u32..90, sh in 1u32..90, dw in 1u32..70, dh in 1u32..70,
            crop in prop::array::uniform4(0.0f64..1.0), f in 0usize..3, e in 0usize..3,
        ) {
            let filter = [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos3][f];
            let ext = [
                fir::CpuExtensions::None,
                #[cfg(target_arch = "x86_64")]
                fir::CpuExtensions::Sse4_1,
                #[cfg(target_arch = "x86_64")]
                fir::CpuExtensions::Avx2,
                #[cfg(not(target_arch = "x86_64"))]
                fir::CpuExtensions::None,
                #[cfg(not(target_arch = "x86_64"))]
                fir::CpuExtensions::None,
            ][e];
            let Some(mut r) = GrayResizer::with_extensions(ext) else { return Ok(()) };
            let src: Vec<u8> = (0..sw * sh).map(|i| ((i * 37 + i / sw * 11) % 256) as u8).collect();
            // A box of at least one pixel anywhere inside the image.
            let width = (f64::from(sw) * crop[0]).max(1.0);
            let height = (f64::from(sh) * crop[1]).max(1.0);
            let left = (f64::from(sw) - width) * crop[2];
            let top = (f64::from(sh) - height) * crop[3];
            let boxed = (left, top, width, height);
            let expect = one_call(&mut r, &src, (sw, sh), boxed, (dw, dh), filter);
            let mut out = vec![0u8; (dw * dh) as usize];
            r.convolve((&src, (sw, sh)), boxed, &mut out, (dw, dh), filter).unwrap();
            prop_assert_eq!(out, expect);
        }

        #[test]
        fn letterbox_keeps_aspect_ratio(sw in 1u32..600, sh in 1u32..600, dw in 1u32..300, dh in 1u32..300) {
            let (x, y, w, h) = letterbox_rect((sw, sh), (dw, dh));
            prop_assert!(x + w <= dw && y + h <= dh);
            prop_assert!(w == dw || h == dh, "touches two sides");
            // Aspect ratio within one pixel: w/h vs sw/sh.
            let expect_w = f64::from(h) * f64::from(sw) / f64::from(sh);
            let expect_h = f64::from(w) * f64::from(sh) / f64::from(sw);
            prop_assert!((f64::from(w) - expect_w).abs() <= 1.0 || (f64::from(h) - expect_h).abs() <= 1.0,
                "{sw}×{sh} → {w}×{h} in {dw}×{dh}");
        }

        /// Every mode fills the whole requested size: a flat image stays flat where the image
        /// lands (all of it when stretched or cropped), and a letterbox pads the rest with its
        /// value; a destination of another size is refused.
        #[test]
        fn output_fills_the_requested_shape(sw in 1u32..80, sh in 1u32..80, dw in 1u32..40, dh in 1u32..40, m in 0usize..3) {
            let src = vec![200u8; (sw * sh) as usize];
            let mode = [ResizeMode::Stretch, ResizeMode::Letterbox { pad: 7 }, ResizeMode::CenterCrop { crop_fraction: 0.9 }][m];
            let mut out = vec![0u8; (dw * dh) as usize];
            let mut resizer = GrayResizer::new();
            resizer.resize(&src, (sw, sh), &mut out, (dw, dh), mode, Filter::Bilinear).unwrap();
            let (x0, y0, w, h) = match mode {
                ResizeMode::Letterbox { .. } => letterbox_rect((sw, sh), (dw, dh)),
                _ => (0, 0, dw, dh),
            };
            for (i, &v) in out.iter().enumerate() {
                let (x, y) = (i as u32 % dw, i as u32 / dw);
                let inside = (x0..x0 + w).contains(&x) && (y0..y0 + h).contains(&y);
                prop_assert_eq!(v, if inside { 200 } else { 7 }, "({}, {}) in {:?}", x, y, mode);
            }
            let mut short = vec![0u8; (dw * dh) as usize - 1];
            prop_assert!(resizer.resize(&src, (sw, sh), &mut short, (dw, dh), mode, Filter::Bilinear).is_err());
        }
    }
}

//! Horizontal and vertical flips of decoded images, in place.

use mura_data::DecodedImage;

/// Mirrors an image left to right, in place.
pub fn hflip_in_place(image: &mut DecodedImage) {
    let c = image.color.channels();
    let row = image.width as usize * c;
    if row == 0 {
        return;
    }
    for line in image.pixels.chunks_exact_mut(row) {
        let w = image.width as usize;
        for x in 0..w / 2 {
            for k in 0..c {
                line.swap(x * c + k, (w - 1 - x) * c + k);
            }
        }
    }
}

/// Mirrors an image top to bottom, in place.
pub fn vflip_in_place(image: &mut DecodedImage) {
    let row = image.width as usize * image.color.channels();
    let h = image.height as usize;
    if row == 0 {
        return;
    }
    for y in 0..h / 2 {
        let (top, bottom) = image.pixels.split_at_mut((h - 1 - y) * row);
        top[y * row..(y + 1) * row].swap_with_slice(&mut bottom[..row]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mura_data::ColorMode;
    use proptest::prelude::*;

    fn image(width: u32, height: u32, color: ColorMode, pixels: Vec<u8>) -> DecodedImage {
        DecodedImage {
            width,
            height,
            color,
            pixels,
        }
    }

    proptest! {
        #[test]
        fn flipping_twice_is_identity(w in 0u32..9, h in 0u32..9, rgb in any::<bool>(), seed in any::<u64>()) {
            let color = if rgb { ColorMode::Rgb } else { ColorMode::Gray };
            let n = (w * h) as usize * color.channels();
            let pixels: Vec<u8> = (0..n).map(|i| (seed.wrapping_mul(i as u64 + 1) >> 7) as u8).collect();
            let original = image(w, h, color, pixels);
            let mut img = original.clone();
            hflip_in_place(&mut img);
            hflip_in_place(&mut img);
            prop_assert_eq!(&img, &original);
            vflip_in_place(&mut img);
            vflip_in_place(&mut img);
            prop_assert_eq!(&img, &original);
        }
    }

    #[test]
    fn hflip_mirrors_rows() {
        let mut img = image(3, 2, ColorMode::Gray, vec![1, 2, 3, 4, 5, 6]);
        hflip_in_place(&mut img);
        assert_eq!(img.pixels, vec![3, 2, 1, 6, 5, 4]);
        vflip_in_place(&mut img);
        assert_eq!(img.pixels, vec![6, 5, 4, 3, 2, 1]);
    }
}

//! The sizes of one convolution ([`Geom`]) and the route each of its passes takes: im2col,
//! shifted products, Winograd, or one product over the batch for the weight gradient. Each
//! threshold was chosen from per-shape measurements (`cargo bench -p mura-kernels`,
//! docs/benchmarks.md); the tests pin which zoo layers take which route.

use super::Conv2dParams;
use super::out_len;
use crate::winograd::Winograd;

/// The output channels up to which the backward passes of a stride-1 convolution run by
/// shifted products (see [`Geom::grad_input_shifted`]).
const FEW_OUTPUTS: usize = 32;

/// The fewest input and output channels a convolution runs by Winograd with
/// ([`Geom::winograd`]).
const WINOGRAD_CHANNELS: usize = 32;

/// The fewest 4×4 output tiles per image a convolution runs by Winograd with (a 28×28 map has
/// 49).
const WINOGRAD_TILES: usize = 49;

/// The fewest 4×4 output tiles per image the weight gradient runs by Winograd with (a 64×64
/// map has 256).
const WINOGRAD_WEIGHT_GRAD_TILES: usize = 256;

/// The most floats the batch's column matrix of [`Geom::weight_grad_batched`] may take (64 MB).
const BATCHED_COLUMNS: usize = 16 << 20;

/// The sizes of one convolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geom {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
    pub(super) p: Conv2dParams,
}

impl Geom {
    pub(super) fn new(x: &[usize], weight: &[usize], p: Conv2dParams) -> candle_core::Result<Self> {
        let (&[n, c, h, w], &[o, ci, kh, kw]) = (x, weight) else {
            candle_core::bail!("conv2d: input {x:?} and weight {weight:?} must both be 4-D")
        };
        if ci != c {
            candle_core::bail!("conv2d: input has {c} channels, the weight {weight:?} expects {ci}")
        }
        let (sh, sw) = p.stride;
        let (dh, dw) = p.dilation;
        if sh == 0 || sw == 0 || dh == 0 || dw == 0 || kh == 0 || kw == 0 {
            candle_core::bail!("conv2d: kernel, stride and dilation must be positive ({p:?})")
        }
        let ho = out_len(h, p.padding.0, kh, sh, dh);
        let wo = out_len(w, p.padding.1, kw, sw, dw);
        let (Some(ho), Some(wo)) = (ho, wo) else {
            candle_core::bail!(
                "conv2d: input {h}×{w} with padding {:?} is smaller than the kernel {kh}×{kw} at dilation {:?}",
                p.padding,
                p.dilation
            )
        };
        Ok(Self {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            ho,
            wo,
            p,
        })
    }

    /// Rows of the column matrix (C·kh·kw).
    pub(super) fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output positions per image.
    pub(super) fn l(&self) -> usize {
        self.ho * self.wo
    }

    pub(super) fn image(&self) -> usize {
        self.c * self.h * self.w
    }

    /// The image is its own column matrix.
    pub(super) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.p.stride == (1, 1) && self.p.padding == (0, 0)
    }

    /// Whether the forward runs by shifted products ([`Geom::forward_shifted`]): stride 1, no
    /// dilation, a kernel larger than 1×1, and at most a quarter more output columns computed
    /// than kept (a 3×3 kernel on a 7×7 image computes 9 columns per row for 7). Empty
    /// channel counts take im2col, which handles them.
    pub(super) fn shifted(&self) -> bool {
        let (_, wp) = self.padded();
        self.c > 0
            && self.o > 0
            && self.p.stride == (1, 1)
            && self.p.dilation == (1, 1)
            && !self.pointwise()
            && 4 * wp <= 5 * self.wo
    }

    /// The input gradient of a stride-1 convolution is itself a stride-1 convolution: of the
    /// output gradient (O×ho×wo) padded by (kh-1-ph, kw-1-pw), with the kernel flipped and its
    /// channels swapped ([`Geom::flipped`]), giving C×h×w. Its geometry; `None` for a stride or
    /// a dilation, or padding as wide as the kernel.
    pub(super) fn grad_input_conv(&self) -> Option<Geom> {
        let (ph, pw) = self.p.padding;
        if self.p.stride != (1, 1) || self.p.dilation != (1, 1) || ph >= self.kh || pw >= self.kw {
            return None;
        }
        Some(Geom {
            c: self.o,
            h: self.ho,
            w: self.wo,
            o: self.c,
            ho: self.h,
            wo: self.w,
            p: Conv2dParams {
                padding: (self.kh - 1 - ph, self.kw - 1 - pw),
                ..self.p
            },
            ..*self
        })
    }

    /// [`Geom::grad_input_conv`] where it runs by shifted products ([`Geom::shifted`]) and
    /// pays, sparing the K×L column matrix Wᵀ·dY and its col2im; `None` where col2im stays:
    /// no such convolution, too many columns wasted, or more than [`FEW_OUTPUTS`] output
    /// channels or fewer input channels. The column matrix costs its memory traffic, C·kh·kw·L,
    /// against a product of depth O: with O = 32 it dominates (DenseNet's 128 → 32 growth
    /// convolution, at 56×56 and at 14×14), with O = 64 the two ways cost the same, and with
    /// O ≥ 128 the taps' products cost more than the column matrix they spare.
    pub(super) fn grad_input_shifted(&self) -> Option<Geom> {
        if self.o > FEW_OUTPUTS || self.c < FEW_OUTPUTS {
            return None;
        }
        self.grad_input_conv().filter(Geom::shifted)
    }

    /// The Winograd tiling of [`Geom::grad_input_conv`] where that runs by Winograd
    /// ([`Geom::winograd`]).
    pub(super) fn grad_input_winograd(&self) -> Option<Winograd> {
        self.grad_input_conv()?.winograd()
    }

    /// The Winograd tiling ([`Winograd`]) where the forward runs by it: a 3×3 kernel at stride
    /// 1 without dilation, at least [`WINOGRAD_CHANNELS`] channels in and out, and at least
    /// [`WINOGRAD_TILES`] tiles per image. Winograd pays from 28×28 maps with 32 or more channels
    /// each way, most with 64 or more (Inception-v3's 80 → 192 at 73×73); it does not on 16 → 16,
    /// nor on 16×16 maps and smaller (256 → 256 at 14×14), where 16 tiles or fewer make each of
    /// the 36 products too small. The thresholds were chosen from per-shape measurements at
    /// batch 16 against the other routes (`cargo bench -p mura-kernels`, docs/benchmarks.md).
    pub(super) fn winograd(&self) -> Option<Winograd> {
        if (self.kh, self.kw) != (3, 3)
            || self.p.stride != (1, 1)
            || self.p.dilation != (1, 1)
            || self.c < WINOGRAD_CHANNELS
            || self.o < WINOGRAD_CHANNELS
        {
            return None;
        }
        Winograd::new(self.c, self.o, (self.h, self.w), self.p.padding)
            .filter(|t| t.tiles() >= WINOGRAD_TILES)
    }

    /// The Winograd tiling where the weight gradient runs by it ([`Winograd::weight_grad`]):
    /// where the forward does, with at least [`WINOGRAD_WEIGHT_GRAD_TILES`] tiles per image.
    pub(super) fn weight_grad_winograd(&self) -> Option<Winograd> {
        self.winograd()
            .filter(|t| t.tiles() >= WINOGRAD_WEIGHT_GRAD_TILES)
    }

    /// Whether the weight gradient runs as one product over the whole batch
    /// ([`Geom::weight_grad_batched`]): where an image's K×O part outweighs its operands by
    /// half again (K·O > 1.5·L·(K + O): deep layers on small maps, as ResNet-50's 7×7 stage
    /// and the custom CNN's last two blocks) and the batch's column matrix stays within
    /// [`BATCHED_COLUMNS`] floats. The one product pays most where K·O is many times
    /// L·(K + O) (ResNet-50's 7×7 layers: 8–9 times), less at 1.6 times (the custom CNN's
    /// 256 → 512 at 16×16), and not at about 1.1 times (ResNet-50's 14×14 layers), hence the
    /// factor 1.5, chosen from measurements at batch 8 against the per-image products
    /// (`cargo bench -p mura-kernels`, docs/benchmarks.md).
    pub(super) fn weight_grad_batched_pays(&self) -> bool {
        let (k, l, o) = (self.k(), self.l(), self.o);
        self.n > 1 && 2 * k * o > 3 * l * (k + o) && k * l * self.n <= BATCHED_COLUMNS
    }

    /// Whether the weight gradient runs by shifted products ([`Geom::weight_grad_shifted`]):
    /// where the forward does, with at most [`FEW_OUTPUTS`] output channels and at least four
    /// times as many input channels. There im2col's column matrix outweighs the product
    /// (DenseNet's 128 → 32); with 32 → 32 (Inception-v3's stem) the taps' O×C products, deep
    /// and narrow, are slower than im2col, and more so with more outputs or fewer inputs.
    pub(super) fn weight_grad_shifted_pays(&self) -> bool {
        self.shifted() && self.o <= FEW_OUTPUTS && self.c >= 4 * self.o
    }

    pub(super) fn check_grad(&self, grad: &[usize]) -> candle_core::Result<()> {
        if grad != [self.n, self.o, self.ho, self.wo] {
            candle_core::bail!(
                "conv2d backward: gradient {grad:?} does not match the output {:?}",
                [self.n, self.o, self.ho, self.wo]
            )
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::params;

    #[test]
    fn the_forward_takes_shifted_products_where_few_columns_are_wasted() {
        let geom = |x: [usize; 4], w: [usize; 4], p| Geom::new(&x, &w, p).unwrap();
        let (same, one) = (params((1, 1), (1, 1), (1, 1)), (1, 1));
        // Cases of `forward_and_both_gradients_match_direct_loops` that take this path.
        for (x, w, p) in [
            ([1, 2, 23, 19], [3, 2, 3, 3], same),
            ([1, 2, 17, 17], [2, 2, 7, 1], params(one, (3, 0), one)),
            ([1, 2, 20, 17], [2, 2, 7, 1], params(one, (3, 0), one)),
            ([2, 3, 20, 18], [3, 3, 3, 2], params(one, (1, 0), one)),
            ([2, 2, 12, 16], [3, 2, 5, 5], params(one, (2, 2), one)),
            // DenseNet's growth convolution at 14×14, Inception-v3's stem.
            ([8, 128, 14, 14], [32, 128, 3, 3], same),
            ([8, 32, 149, 149], [32, 32, 3, 3], params(one, (0, 0), one)),
        ] {
            assert!(geom(x, w, p).shifted(), "{x:?} {w:?} should be shifted");
        }
        for (x, w, p) in [
            // More than a quarter of the columns wasted (7 of 9, 17 of 23), a stride, a
            // dilation, a pointwise kernel.
            ([8, 128, 7, 7], [32, 128, 3, 3], same),
            ([1, 2, 17, 17], [2, 2, 1, 7], params(one, (0, 3), one)),
            ([1, 2, 16, 16], [2, 2, 3, 3], params((2, 2), (1, 1), one)),
            ([1, 2, 16, 16], [2, 2, 3, 3], params(one, (2, 2), (2, 2))),
            ([1, 2, 16, 16], [2, 2, 1, 1], params(one, (0, 0), one)),
            ([1, 0, 16, 16], [2, 0, 3, 3], same),
            ([1, 2, 16, 16], [0, 2, 3, 3], same),
        ] {
            assert!(!geom(x, w, p).shifted(), "{x:?} {w:?} should use im2col");
        }
    }

    /// Both gradients of a stride-1 convolution with few outputs from many inputs run by
    /// shifted products (the input gradient as a convolution of the output gradient).
    #[test]
    fn gradients_take_shifted_products_with_few_outputs_from_many_inputs() {
        let geom = |x: [usize; 4], w: [usize; 4], p| Geom::new(&x, &w, p).unwrap();
        let (same, one) = (params((1, 1), (1, 1), (1, 1)), (1, 1));
        // The input gradient as the convolution of the output gradient by the flipped kernel:
        // DenseNet's growth convolution at 14×14, Inception-v3's unpadded stem (padded by 2 in
        // the gradient), a 3×2 kernel padded on one axis (by 1 on both in the gradient).
        let stem = ([8, 32, 149, 149], [32, 32, 3, 3], params(one, (0, 0), one));
        let narrow = ([2, 32, 20, 18], [3, 32, 3, 2], params(one, (1, 0), one));
        for (x, w, p, pad) in [
            ([8, 128, 14, 14], [32, 128, 3, 3], same, (1, 1)),
            (stem.0, stem.1, stem.2, (2, 2)),
            (narrow.0, narrow.1, narrow.2, (1, 1)),
        ] {
            let g = geom(x, w, p);
            let t = g.grad_input_shifted().expect("a shifted input gradient");
            assert_eq!((t.c, t.h, t.w), (g.o, g.ho, g.wo), "{x:?} {w:?}");
            assert_eq!(
                (t.o, t.ho, t.wo, t.p.padding),
                (g.c, g.h, g.w, pad),
                "{x:?} {w:?}"
            );
        }
        for (x, w, p) in [
            // Padding as wide as the kernel, a stride, 7 of 9 columns kept, a pointwise kernel.
            ([1, 2, 6, 7], [2, 2, 3, 3], params(one, (3, 3), one)),
            ([2, 2, 9, 12], [3, 2, 3, 1], same),
            ([1, 2, 16, 16], [2, 2, 3, 3], params((2, 2), (1, 1), one)),
            ([8, 128, 7, 7], [32, 128, 3, 3], same),
            ([1, 2, 16, 16], [2, 2, 1, 1], params(one, (0, 0), one)),
            // More than 32 outputs (ResNet-50's 3×3 at 56×56), fewer than 32 inputs.
            ([8, 64, 56, 56], [64, 64, 3, 3], same),
            ([8, 16, 64, 64], [32, 16, 3, 3], same),
        ] {
            assert!(geom(x, w, p).grad_input_shifted().is_none(), "{x:?} {w:?}");
        }
        // The weight gradient: few outputs from four times as many inputs.
        for (x, w, p, pays) in [
            ([8, 128, 56, 56], [32, 128, 3, 3], same, true),
            (narrow.0, narrow.1, narrow.2, true),
            (stem.0, stem.1, stem.2, false),
            ([8, 64, 56, 56], [64, 64, 3, 3], same, false),
            ([8, 128, 7, 7], [32, 128, 3, 3], same, false),
            (
                [8, 128, 56, 56],
                [32, 128, 3, 3],
                params((2, 2), (1, 1), one),
                false,
            ),
        ] {
            assert_eq!(
                geom(x, w, p).weight_grad_shifted_pays(),
                pays,
                "{x:?} {w:?}"
            );
        }
    }

    /// The forward runs by Winograd for 3×3 stride-1 convolutions with at least 32 channels
    /// each way and 49 tiles (a 28×28 output), by the other routes elsewhere; the input
    /// gradient where its own convolution would, the weight gradient from 256 tiles.
    #[test]
    fn winograd_is_chosen_where_it_pays() {
        let geom = |x: [usize; 4], w: [usize; 4], p| Geom::new(&x, &w, p).unwrap();
        let (same, one) = (params((1, 1), (1, 1), (1, 1)), (1, 1));
        let valid = params(one, (0, 0), one);
        for (x, w, p) in [
            // ResNet-50's first two stages, DenseNet's growth convolution at 56×56,
            // Inception-v3's stem and 35×35 blocks, the custom CNN's 64 → 128 at 64×64.
            ([16, 64, 56, 56], [64, 64, 3, 3], same),
            ([16, 128, 28, 28], [128, 128, 3, 3], same),
            ([16, 128, 56, 56], [32, 128, 3, 3], same),
            ([16, 32, 149, 149], [32, 32, 3, 3], valid),
            ([16, 80, 73, 73], [192, 80, 3, 3], valid),
            ([16, 64, 35, 35], [96, 64, 3, 3], same),
            ([16, 64, 64, 64], [128, 64, 3, 3], same),
        ] {
            assert!(geom(x, w, p).winograd().is_some(), "{x:?} {w:?}");
        }
        for (x, w, p) in [
            // 14×14 (16 tiles), 16 channels, the RGB input, a stride, a dilation, 5×5, 3×1.
            ([16, 256, 14, 14], [256, 256, 3, 3], same),
            ([16, 16, 128, 128], [16, 16, 3, 3], same),
            ([16, 3, 256, 256], [32, 3, 3, 3], same),
            (
                [16, 64, 56, 56],
                [64, 64, 3, 3],
                params((2, 2), (1, 1), one),
            ),
            (
                [16, 64, 56, 56],
                [64, 64, 3, 3],
                params(one, (2, 2), (2, 2)),
            ),
            ([16, 64, 56, 56], [64, 64, 5, 5], params(one, (2, 2), one)),
            ([16, 64, 56, 56], [64, 64, 3, 1], params(one, (1, 0), one)),
        ] {
            assert!(geom(x, w, p).winograd().is_none(), "{x:?} {w:?}");
        }
        // The input gradient where its own convolution (O → C at the input's size) does:
        // ResNet-50's, the custom CNN's 64 → 128 at 64×64 (128 → 64 in the gradient),
        // DenseNet's 128 → 32 at 56×56 (32 → 128), Inception-v3's unpadded stem (padded by 2
        // in the gradient); not at 14×14, nor where the stride or the padding (3, as wide as
        // the kernel) leaves no stride-1 convolution.
        for (x, w, p, routed) in [
            ([8, 64, 56, 56], [64, 64, 3, 3], same, true),
            ([8, 64, 64, 64], [128, 64, 3, 3], same, true),
            ([8, 128, 56, 56], [32, 128, 3, 3], same, true),
            ([8, 32, 149, 149], [32, 32, 3, 3], valid, true),
            ([8, 256, 14, 14], [256, 256, 3, 3], same, false),
            (
                [8, 64, 56, 56],
                [64, 64, 3, 3],
                params((2, 2), (1, 1), one),
                false,
            ),
            (
                [8, 64, 56, 56],
                [64, 64, 3, 3],
                params(one, (3, 3), one),
                false,
            ),
        ] {
            let g = geom(x, w, p);
            assert_eq!(g.grad_input_winograd().is_some(), routed, "{x:?} {w:?}");
        }
        // The weight gradient from 256 tiles (a 64×64 output) up: the custom CNN's 32 → 64 at
        // 128×128 and 64 → 128 at 64×64, Inception-v3's stem; not ResNet-50's 56×56 (196
        // tiles), nor where the forward takes another route.
        for (x, w, p, routed) in [
            ([8, 32, 128, 128], [64, 32, 3, 3], same, true),
            ([8, 64, 64, 64], [128, 64, 3, 3], same, true),
            ([8, 32, 149, 149], [32, 32, 3, 3], valid, true),
            ([8, 80, 73, 73], [192, 80, 3, 3], valid, true),
            ([8, 128, 32, 32], [256, 128, 3, 3], same, false),
            ([8, 64, 56, 56], [64, 64, 3, 3], same, false),
            ([8, 16, 128, 128], [16, 16, 3, 3], same, false),
        ] {
            let g = geom(x, w, p);
            assert_eq!(g.weight_grad_winograd().is_some(), routed, "{x:?} {w:?}");
        }
    }

    /// The weight gradient runs as one product over the batch where an image's K×O part
    /// outweighs its operands by half again: ResNet-50's 7×7 stage and the custom CNN's last
    /// two blocks at batch 8, not ResNet-50's 14×14 or 28×28 stages, a single image or a
    /// batch whose column matrix would pass 16 M floats.
    #[test]
    fn weight_grad_batched_is_chosen_for_deep_layers_on_small_maps() {
        let geom = |x: [usize; 4], w: [usize; 4], p| Geom::new(&x, &w, p).unwrap();
        let (same, one) = (params((1, 1), (1, 1), (1, 1)), (1, 1));
        let point = params(one, (0, 0), one);
        for (x, w, p, batched) in [
            ([8, 2048, 7, 7], [512, 2048, 1, 1], point, true),
            ([8, 512, 7, 7], [512, 512, 3, 3], same, true),
            ([8, 1024, 14, 14], [256, 1024, 1, 1], point, false),
            ([8, 256, 14, 14], [256, 256, 3, 3], same, false),
            ([8, 512, 8, 8], [1024, 512, 3, 3], same, true),
            ([8, 256, 16, 16], [512, 256, 3, 3], same, true),
            ([8, 512, 28, 28], [128, 512, 1, 1], point, false),
            ([8, 128, 28, 28], [128, 128, 3, 3], same, false),
            ([1, 512, 7, 7], [512, 512, 3, 3], same, false),
            ([512, 512, 7, 7], [512, 512, 3, 3], same, false),
        ] {
            assert_eq!(
                geom(x, w, p).weight_grad_batched_pays(),
                batched,
                "{x:?} {w:?}"
            );
        }
    }
}

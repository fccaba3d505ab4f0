//! The weight gradient dW = Σ_i dY_i·cols_iᵀ over the images of a batch, per image (by
//! im2col, shifted products or Winograd's adjoint) and summed in index order, or as one
//! product over the whole batch where that pays.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape};
use rayon::prelude::*;

use super::route::Geom;
use super::{Conv2dParams, for_each_image, place_columns};
use crate::gemm::{Out, Stored, fresh, init_from, sgemm_transposed_out, transpose, zeroed};
use crate::winograd::Winograd;
use crate::{f32_slice, per_image_parallel, room, with_scratch};

impl Geom {
    /// The weight gradient of the whole batch, dWᵀ (K×O) = cols·dYᵀ over the N·L columns of
    /// all the images side by side (image i's in columns i·L..(i+1)·L of both operands),
    /// written into `dwt`. Per image, each product writes a K×O part that the sum then reads
    /// back, N parts per step (ResNet-50's 23.5 M weights: 188 M floats at batch 8), each with a
    /// depth of L alone (49 on a 7×7 map); gathering the operands for one product costs
    /// (K + O)·N·L.
    pub(super) fn weight_grad_batched(
        &self,
        (x, dy): (&[f32], &[f32]),
        dwt: &mut [MaybeUninit<f32>],
    ) -> candle_core::Result<()> {
        let (k, l, o, nl) = (self.k(), self.l(), self.o, self.n * self.l());
        with_scratch(|scratch| {
            let (cols, dys) = room(scratch, (k + o) * nl).split_at_mut(k * nl);
            let mut image_cols = Vec::new();
            for i in 0..self.n {
                let (xi, dyi) = self.image_and_grad((x, dy), i);
                place_columns(
                    self.columns(xi, &mut image_cols, true),
                    l,
                    cols,
                    (nl, i * l),
                );
                place_columns(dyi, l, dys, (nl, i * l));
            }
            let (sa, sb) = (Stored::AsIs, Stored::Transposed);
            sgemm_transposed_out((o, k, nl), dys, sa, cols, sb, Out::Fresh(dwt), true)?;
            Ok(())
        })
    }

    /// Image `i`'s output gradient (O×L) and column matrix (K×L): the operands of its weight
    /// gradient dY·colsᵀ.
    pub(super) fn weight_grad_operands<'a>(
        &self,
        (x, dy): (&'a [f32], &'a [f32]),
        i: usize,
        cols: &'a mut Vec<f32>,
        parallel: bool,
    ) -> (&'a [f32], &'a [f32]) {
        let (xi, dyi) = self.image_and_grad((x, dy), i);
        (dyi, self.columns(xi, cols, parallel))
    }

    /// Image `i` (C×H×W) of the batch `x` and its output gradient (O×L) in `dy`.
    pub(super) fn image_and_grad<'a>(
        &self,
        (x, dy): (&'a [f32], &'a [f32]),
        i: usize,
    ) -> (&'a [f32], &'a [f32]) {
        let (image, ol) = (self.image(), self.o * self.l());
        (&x[i * image..(i + 1) * image], &dy[i * ol..(i + 1) * ol])
    }
}

/// How one image's part of the weight gradient is computed.
#[derive(Clone, Copy)]
enum PartRoute {
    /// Winograd's adjoint ([`Winograd::weight_grad`]).
    Winograd(Winograd),
    /// Shifted products ([`Geom::weight_grad_shifted`]).
    Shifted,
    /// dY·colsᵀ against the image's column matrix.
    Columns,
}

impl Geom {
    fn part_route(&self) -> PartRoute {
        match self.weight_grad_winograd() {
            Some(t) => PartRoute::Winograd(t),
            None if self.weight_grad_shifted_pays() => PartRoute::Shifted,
            None => PartRoute::Columns,
        }
    }

    /// dWᵀ (K×O) = Σ_i cols_i (K×L) · dY_iᵀ (L×O), summed over the images in index order (the
    /// GEMM writes the transposed output fastest, see `sgemm_transposed_out`), written into
    /// `dwt` whole.
    fn weight_grad_into(
        &self,
        (x, dy): (&[f32], &[f32]),
        dwt: &mut [MaybeUninit<f32>],
    ) -> candle_core::Result<()> {
        if self.n == 0 {
            zeroed(dwt);
            Ok(())
        } else if self.weight_grad_batched_pays() {
            self.weight_grad_batched((x, dy), dwt)
        } else if per_image_parallel(self.n) && self.n > 1 {
            self.weight_grad_parts_summed((x, dy), dwt)
        } else {
            self.weight_grad_serial((x, dy), dwt)
        }
    }

    /// Each image's part on a thread of its own (each product serial), then the parts summed
    /// image by image in index order, vectorised across the elements.
    fn weight_grad_parts_summed(
        &self,
        (x, dy): (&[f32], &[f32]),
        dwt: &mut [MaybeUninit<f32>],
    ) -> candle_core::Result<()> {
        let (ok, route) = (self.o * self.k(), self.part_route());
        let dims = (self.o, self.k(), self.l());
        let part = |i: usize, part: &mut [MaybeUninit<f32>], cols: &mut Vec<f32>, _| match route {
            PartRoute::Winograd(t) => {
                let (xi, dyi) = self.image_and_grad((x, dy), i);
                t.weight_grad(xi, dyi, zeroed(part), cols, false)
            }
            PartRoute::Shifted => {
                self.weight_grad_shifted((x, dy), i, zeroed(part), false, cols, false)
            }
            PartRoute::Columns => {
                let (a, b) = self.weight_grad_operands((x, dy), i, cols, false);
                let (sa, sb) = (Stored::AsIs, Stored::Transposed);
                sgemm_transposed_out(dims, a, sa, b, sb, Out::Fresh(part), false).map(|_| ())
            }
        };
        // SAFETY: the images' slots partition `parts`, and a fresh product writes all of its
        // slot's k·o elements (Winograd and the shifted products write a zeroed slot).
        #[allow(unsafe_code)]
        let parts = unsafe { fresh(self.n * ok, |p| for_each_image(p, ok, self.n, part))? };
        dwt.par_chunks_mut(4096).enumerate().for_each(|(j, chunk)| {
            let (at, len) = (j * 4096, chunk.len());
            let chunk = init_from(chunk, &parts[at..at + len]);
            for i in 1..self.n {
                let part = &parts[i * ok + at..i * ok + at + len];
                chunk.iter_mut().zip(part).for_each(|(d, v)| *d += *v);
            }
        });
        Ok(())
    }

    /// Image by image, each product parallel: each image's product apart, then added to the sum
    /// in index order, the sums of [`Geom::weight_grad_parts_summed`], so the result does not
    /// depend on the thread count. (Added by the GEMM itself, each image would join the sum
    /// block by block of its depth, L: other bits once L passes the GEMM's depth block, as at
    /// 28×28.)
    fn weight_grad_serial(
        &self,
        (x, dy): (&[f32], &[f32]),
        dwt: &mut [MaybeUninit<f32>],
    ) -> candle_core::Result<()> {
        let (ok, route) = (self.o * self.k(), self.part_route());
        let dims = (self.o, self.k(), self.l());
        with_scratch(|cols| {
            let d = zeroed(dwt);
            let mut part = vec![0f32; if self.n > 1 { ok } else { 0 }];
            for i in 0..self.n {
                let dst = if i == 0 { &mut *d } else { &mut part[..] };
                match route {
                    PartRoute::Winograd(t) => {
                        let (xi, dyi) = self.image_and_grad((x, dy), i);
                        t.weight_grad(xi, dyi, dst, cols, true)?;
                    }
                    PartRoute::Shifted => {
                        self.weight_grad_shifted((x, dy), i, dst, false, cols, true)?;
                    }
                    PartRoute::Columns => {
                        if i > 0 {
                            // The product adds into its output: the last image's part goes.
                            dst.fill(0.0);
                        }
                        let (a, b) = self.weight_grad_operands((x, dy), i, cols, true);
                        let (sa, sb) = (Stored::AsIs, Stored::Transposed);
                        sgemm_transposed_out(dims, a, sa, b, sb, Out::Add(dst), true)?;
                    }
                }
                if i > 0 {
                    d.iter_mut().zip(&part).for_each(|(s, v)| *s += *v);
                }
            }
            Ok(())
        })
    }
}

/// (input, output gradient) → weight gradient, for a kernel of the given height and width.
pub(super) struct ConvGradWeight(pub(super) Conv2dParams, pub(super) (usize, usize));

impl CustomOp2 for ConvGradWeight {
    fn name(&self) -> &'static str {
        "mura-conv2d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (&[_, c, _, _], &[_, o, _, _]) = (l1.dims(), l2.dims()) else {
            candle_core::bail!(
                "conv2d backward: input {:?}, gradient {:?}",
                l1.dims(),
                l2.dims()
            )
        };
        let (kh, kw) = self.1;
        let g = Geom::new(l1.dims(), &[o, c, kh, kw], self.0)?;
        g.check_grad(l2.dims())?;
        let x = f32_slice(s1, l1, "conv2d backward")?;
        let dy = f32_slice(s2, l2, "conv2d backward")?;
        let (k, ok) = (g.k(), g.o * g.k());
        // SAFETY: `weight_grad_into` writes all k·o elements on every route.
        #[allow(unsafe_code)]
        let dwt = unsafe { fresh(ok, |d| g.weight_grad_into((x, dy), d))? };
        let mut dw = vec![0f32; ok];
        transpose(&dwt, k, o, &mut dw);
        Ok((CpuStorage::F32(dw), Shape::from((g.o, g.c, kh, kw))))
    }
}

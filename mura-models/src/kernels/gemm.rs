//! The crate's calls into `unsafe` code: a bounds-checked wrapper over the `gemm` crate (the
//! pure-Rust GEMM candle itself uses on CPU), and output buffers handed out before they are
//! written ([`fresh`]), which spares every op the zero-fill of `vec![0.0; n]`.

#![allow(unsafe_code)]

use std::mem::MaybeUninit;

/// How an operand of [`sgemm`] is stored: row-major as itself, or row-major as its transpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    AsIs,
    Transposed,
}

/// `c = a·b` (or `c += a·b` with `accumulate`) for row-major `c` (m×n), `a` (m×k) and `b` (k×n),
/// each operand stored as itself or as its transpose; `parallel` lets the product use the rayon
/// pool. Slices shorter than their matrices are refused, so the unsafe call below never reads or
/// writes out of bounds.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    dims: (usize, usize, usize),
    a: &[f32],
    sa: Stored,
    b: &[f32],
    sb: Stored,
    c: &mut [f32],
    accumulate: bool,
    parallel: bool,
) -> candle_core::Result<()> {
    check(dims, a, b, c.len())?;
    // SAFETY: `check` proved `c` holds m·n elements, all initialised; `c` is borrowed mutably,
    // so it aliases neither operand.
    unsafe { product(dims, a, sa, b, sb, c.as_mut_ptr(), accumulate, parallel) };
    Ok(())
}

/// `c = a·b` into storage that was never written (a fresh output buffer, spared its zero-fill),
/// as [`sgemm`]; returns the first m·n elements of `c`, all written.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm_fresh<'c>(
    dims: (usize, usize, usize),
    a: &[f32],
    sa: Stored,
    b: &[f32],
    sb: Stored,
    c: &'c mut [MaybeUninit<f32>],
    parallel: bool,
) -> candle_core::Result<&'c mut [f32]> {
    let (m, n, _) = dims;
    check(dims, a, b, c.len())?;
    let c = &mut c[..m * n];
    // SAFETY: as in `sgemm`; without `accumulate` `product` reads nothing of `c` and writes all
    // of its m·n elements (the GEMM stores every output, a zero-depth product stores zeros), so
    // afterwards they are initialised f32 values and the slice may be viewed as `[f32]`
    // (`MaybeUninit<f32>` has the layout of `f32`).
    unsafe {
        product(dims, a, sa, b, sb, c.as_mut_ptr().cast(), false, parallel);
        Ok(std::slice::from_raw_parts_mut(c.as_mut_ptr().cast(), m * n))
    }
}

/// A vector of `len` f32 that `init` writes in full, without the zero-fill of `vec![0.0; len]`
/// (a memset of every op output that was up to 14% of an inference profile). `init` gets the
/// unwritten storage; on `Err` the storage is dropped unread.
///
/// # Safety
/// When it returns `Ok`, `init` must have written every element of the slice it was given.
pub(crate) unsafe fn fresh<E>(
    len: usize,
    init: impl FnOnce(&mut [MaybeUninit<f32>]) -> Result<(), E>,
) -> Result<Vec<f32>, E> {
    let mut v = Vec::with_capacity(len);
    init(&mut v.spare_capacity_mut()[..len])?;
    // SAFETY: the capacity is at least `len`, and the caller's contract says `init` wrote all of
    // the first `len` elements.
    unsafe { v.set_len(len) };
    Ok(v)
}

/// Refuses operands shorter than their matrices.
fn check(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    c_len: usize,
) -> candle_core::Result<()> {
    let (mk, kn, mn) = (m * k, k * n, m * n);
    if a.len() < mk || b.len() < kn || c_len < mn {
        candle_core::bail!(
            "gemm: {m}×{k} · {k}×{n} needs slices of {mk}, {kn} and {mn} elements, got {}, {} and {c_len}",
            a.len(),
            b.len(),
        )
    }
    Ok(())
}

/// The product itself.
///
/// # Safety
/// `a` and `b` hold at least m·k and k·n elements (checked by [`check`]), `c` points to m·n
/// writable elements that alias neither, initialised when `accumulate`.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    sa: Stored,
    b: &[f32],
    sb: Stored,
    c: *mut f32,
    accumulate: bool,
    parallel: bool,
) {
    if m * n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            // SAFETY: m·n writable elements (the caller's contract).
            unsafe { std::ptr::write_bytes(c, 0, m * n) };
        }
        return;
    }
    let (m_i, n_i, k_i) = (m as isize, n as isize, k as isize);
    // (column stride, row stride) of each logical operand.
    let (a_cs, a_rs) = match sa {
        Stored::AsIs => (1, k_i),
        Stored::Transposed => (m_i, 1),
    };
    let (b_cs, b_rs) = match sb {
        Stored::AsIs => (1, n_i),
        Stored::Transposed => (k_i, 1),
    };
    let threads = rayon::current_num_threads();
    let parallelism = if parallel && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: with the strides above, the largest offset `gemm` touches is (m-1)·k + (k-1) < m·k
    // in `a` (either storage), (k-1)·n + (n-1) < k·n in `b` and (m-1)·n + (n-1) < m·n in `c`,
    // within the lengths of the caller's contract. `gemm` computes c := 1·c + 1·(a·b) when
    // `read_dst`, c := a·b otherwise (then reading nothing of `c`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            n_i,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        ta: bool,
        b: &[f32],
        tb: bool,
    ) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    s += f64::from(av) * f64::from(bv);
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn every_storage_combination_matches_the_reference_and_accumulates() {
        let (m, n, k) = (7, 5, 11);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 23 % 13) as f32 - 6.0) / 6.0)
            .collect();
        for (ta, sa) in [(false, Stored::AsIs), (true, Stored::Transposed)] {
            for (tb, sb) in [(false, Stored::AsIs), (true, Stored::Transposed)] {
                let want = reference(m, n, k, &a, ta, &b, tb);
                for parallel in [false, true] {
                    let mut c = vec![f32::NAN; m * n];
                    sgemm((m, n, k), &a, sa, &b, sb, &mut c, false, parallel).unwrap();
                    for (x, y) in c.iter().zip(&want) {
                        assert!((x - y).abs() < 1e-5, "{ta} {tb}: {x} vs {y}");
                    }
                    sgemm((m, n, k), &a, sa, &b, sb, &mut c, true, parallel).unwrap();
                    for (x, y) in c.iter().zip(&want) {
                        assert!((x - 2.0 * y).abs() < 1e-5);
                    }
                }
            }
        }
    }

    /// Into storage holding garbage (NaN), the fresh product writes every element, as `sgemm`;
    /// `fresh` hands the storage back as a vector of those values.
    #[test]
    fn fresh_product_writes_every_element() {
        let (m, n, k) = (9, 13, 6);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.5).collect();
        for parallel in [false, true] {
            for depth in [k, 0] {
                let mut want = vec![f32::NAN; m * n];
                sgemm(
                    (m, n, depth),
                    &a,
                    Stored::AsIs,
                    &b,
                    Stored::Transposed,
                    &mut want,
                    false,
                    parallel,
                )
                .unwrap();
                let mut c = vec![MaybeUninit::new(f32::NAN); m * n + 3];
                let got = sgemm_fresh(
                    (m, n, depth),
                    &a,
                    Stored::AsIs,
                    &b,
                    Stored::Transposed,
                    &mut c,
                    parallel,
                )
                .unwrap();
                assert_eq!(got, &want[..]);
            }
        }
        // SAFETY: the closure writes all 5 elements.
        let v = unsafe {
            fresh(5, |s| {
                s.iter_mut().enumerate().for_each(|(i, e)| {
                    e.write(i as f32);
                });
                Ok::<(), ()>(())
            })
        };
        assert_eq!(v, Ok(vec![0.0, 1.0, 2.0, 3.0, 4.0]));
        // SAFETY: on `Err` nothing is read.
        let e = unsafe { fresh(5, |_| Err::<(), _>("refused")) };
        assert_eq!(e, Err("refused"));
    }

    #[test]
    fn short_slices_are_refused_and_empty_products_are_zero() {
        let mut c = vec![1f32; 4];
        let err = sgemm(
            (2, 2, 3),
            &[0.0; 5],
            Stored::AsIs,
            &[0.0; 6],
            Stored::AsIs,
            &mut c,
            false,
            false,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("needs slices of 6, 6 and 4"),
            "{err}"
        );
        assert_eq!(c, [1.0; 4], "nothing written");
        sgemm(
            (2, 2, 0),
            &[],
            Stored::AsIs,
            &[],
            Stored::AsIs,
            &mut c,
            false,
            false,
        )
        .unwrap();
        assert_eq!(c, [0.0; 4]);
    }
}

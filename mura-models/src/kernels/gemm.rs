//! The crate's one call into `unsafe` code: a bounds-checked wrapper over the `gemm` crate (the
//! pure-Rust GEMM candle itself uses on CPU).

#![allow(unsafe_code)]

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
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    sa: Stored,
    b: &[f32],
    sb: Stored,
    c: &mut [f32],
    accumulate: bool,
    parallel: bool,
) -> candle_core::Result<()> {
    let (mk, kn, mn) = (m * k, k * n, m * n);
    if a.len() < mk || b.len() < kn || c.len() < mn {
        candle_core::bail!(
            "gemm: {m}×{k} · {k}×{n} needs slices of {mk}, {kn} and {mn} elements, got {}, {} and {}",
            a.len(),
            b.len(),
            c.len()
        )
    }
    if mn == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            c[..mn].fill(0.0);
        }
        return Ok(());
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
    // in `a` (either storage), (k-1)·n + (n-1) < k·n in `b` and (m-1)·n + (n-1) < m·n in `c`, all
    // checked against the slice lengths above; `c` is borrowed mutably, so it aliases neither
    // operand. `gemm` computes c := 1·c + 1·(a·b) when `read_dst`, c := a·b otherwise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
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
    Ok(())
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

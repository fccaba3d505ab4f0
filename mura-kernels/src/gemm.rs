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
    unsafe {
        product(
            dims,
            (a, strides(sa, dims.0, dims.2)),
            (b, strides(sb, dims.2, dims.1)),
            (c.as_mut_ptr(), dims.1, 1),
            accumulate,
            parallel,
        )
    };
    Ok(())
}

/// `c (+)= a·b` where `a` is row-major m×k, `b`'s rows start `b_rs` elements apart (its
/// columns adjacent: a window of a wider matrix, or rows that overlap) and `c`'s rows
/// `c_rs` apart. What the convolution by shifted products needs: each kernel tap's operand is
/// the padded image itself, shifted.
pub(crate) fn sgemm_strided(
    dims: (usize, usize, usize),
    a: &[f32],
    (b, b_rs): (&[f32], usize),
    (c, c_rs): (&mut [f32], usize),
    accumulate: bool,
    parallel: bool,
) -> candle_core::Result<()> {
    let strides = ((b_rs, 1), (c_rs, 1));
    strided_product(dims, (a, dims.2), (b, c), strides, accumulate, parallel)
}

/// `c (+)= a·b` where `a` is row-major m×k, `b`'s columns are contiguous runs of k elements
/// starting `b_cs` apart (column j at `b[j·b_cs..]`: they may overlap) and `c`'s element (i, j)
/// sits at `i + j·c_cs` (columns of m adjacent elements, `c_cs` ≥ m apart). What the weight
/// gradient by shifted products needs: dW_t = dY·shift_t(P)ᵀ, whose second operand is the
/// padded image read from the tap's offset, written as tap t's elements of dWᵀ.
pub(crate) fn sgemm_columns_strided(
    dims: (usize, usize, usize),
    a: &[f32],
    (b, b_cs): (&[f32], usize),
    (c, c_cs): (&mut [f32], usize),
    accumulate: bool,
    parallel: bool,
) -> candle_core::Result<()> {
    let strides = ((1, b_cs), (1, c_cs));
    strided_product(dims, (a, dims.2), (b, c), strides, accumulate, parallel)
}

/// `c (+)= a·b` where `a`'s rows start `a_rs` elements apart (its columns adjacent), `b`'s
/// columns are contiguous runs of k elements starting `b_cs` apart and `c` is row-major with
/// rows `c_rs` apart. What the weight gradient by Winograd needs: the products of two
/// transformed tiles' runs, V_ξ·dM_ξᵀ, each operand one run per channel in a channel-major
/// buffer.
pub(crate) fn sgemm_rows_by_columns(
    dims: (usize, usize, usize),
    (a, a_rs): (&[f32], usize),
    (b, b_cs): (&[f32], usize),
    (c, c_rs): (&mut [f32], usize),
    accumulate: bool,
    parallel: bool,
) -> candle_core::Result<()> {
    let strides = ((1, b_cs), (c_rs, 1));
    strided_product(dims, (a, a_rs), (b, c), strides, accumulate, parallel)
}

/// The checked core of [`sgemm_strided`], [`sgemm_columns_strided`] and
/// [`sgemm_rows_by_columns`]: `a`'s element (i, p) at i·a_rs + p, `b`'s element (p, j) at
/// p·b_rs + j·b_cs, `c`'s element (i, j) at i·c_rs + j·c_cs, where one of `c`'s strides is 1
/// and the other spans the extent along it, so that no two elements of `c` share a place.
#[allow(clippy::type_complexity)]
fn strided_product(
    (m, n, k): (usize, usize, usize),
    (a, a_rs): (&[f32], usize),
    (b, c): (&[f32], &mut [f32]),
    ((b_rs, b_cs), (c_rs, c_cs)): ((usize, usize), (usize, usize)),
    accumulate: bool,
    parallel: bool,
) -> candle_core::Result<()> {
    let reach = |(rows, rs): (usize, usize), (cols, cs): (usize, usize)| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    let a_reach = reach((m, a_rs), (k, 1));
    let b_reach = reach((k, b_rs), (n, b_cs));
    let c_reach = reach((m, c_rs), (n, c_cs));
    let disjoint = (c_cs == 1 && c_rs >= n) || (c_rs == 1 && c_cs >= m);
    if a_rs < k || a.len() < a_reach || b.len() < b_reach || c.len() < c_reach || !disjoint {
        candle_core::bail!(
            "gemm: {m}×{k} · {k}×{n} with a's row stride {a_rs}, b's strides ({b_rs}, {b_cs}) and c's ({c_rs}, {c_cs}) needs a's rows apart, slices of {a_reach}, {b_reach} and {c_reach} elements and c's elements apart, got {}, {} and {}",
            a.len(),
            b.len(),
            c.len()
        )
    }
    // SAFETY: the checks above bound every offset `product` touches: (m-1)·a_rs + (k-1) in
    // `a`, (k-1)·b_rs + (n-1)·b_cs in `b`, (m-1)·c_rs + (n-1)·c_cs in `c`, whose elements do
    // not overlap (`disjoint`); `c` is initialised and borrowed mutably, so it aliases neither
    // operand.
    unsafe {
        product(
            (m, n, k),
            (a, (1, a_rs as isize)),
            (b, (b_cs as isize, b_rs as isize)),
            (c.as_mut_ptr(), c_rs, c_cs),
            accumulate,
            parallel,
        )
    };
    Ok(())
}

/// Where a product goes: written into unwritten storage, or added to initialised values.
pub(crate) enum Out<'c> {
    Fresh(&'c mut [MaybeUninit<f32>]),
    Add(&'c mut [f32]),
}

/// `cᵀ = a·b` (fresh) or `cᵀ += a·b` (add): as [`sgemm`], but the m×n product is stored
/// transposed, `ct` being row-major n×m. The GEMM writes its output fastest this way when `b`
/// is stored transposed (the weight gradient dY·colsᵀ of a 32 × 1152 × 3136 DenseNet
/// convolution: 126 GFLOP/s against 45 into a row-major output). Returns the m·n elements of
/// `ct`, all written.
pub(crate) fn sgemm_transposed_out<'c>(
    dims: (usize, usize, usize),
    a: &[f32],
    sa: Stored,
    b: &[f32],
    sb: Stored,
    ct: Out<'c>,
    parallel: bool,
) -> candle_core::Result<&'c mut [f32]> {
    let (m, n, _) = dims;
    let (ptr, len, accumulate) = match ct {
        Out::Fresh(c) => (c.as_mut_ptr().cast::<f32>(), c.len(), false),
        Out::Add(c) => (c.as_mut_ptr(), c.len(), true),
    };
    check(dims, a, b, len)?;
    // SAFETY: `check` proved the storage holds m·n elements, initialised when adding; element
    // (i, j) of the product lies at j·m + i < m·n. The storage is borrowed mutably, so it aliases
    // neither operand; a fresh product reads nothing of it and writes all m·n elements (a
    // zero-depth one writes zeros), after which they are initialised f32 values.
    unsafe {
        let b = (b, strides(sb, dims.2, n));
        let a = (a, strides(sa, m, dims.2));
        product(dims, a, b, (ptr, 1, m), accumulate, parallel);
        Ok(std::slice::from_raw_parts_mut(ptr, m * n))
    }
}

/// Zeros written over unwritten storage, handed back as initialised.
pub(crate) fn zeroed(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    s.iter_mut().for_each(|e| {
        e.write(0.0);
    });
    // SAFETY: every element was just written.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), s.len()) }
}

/// `src` copied over unwritten storage of the same length, handed back as initialised.
///
/// # Panics
/// When the lengths differ (a caller's bug, never the data's).
pub(crate) fn init_from<'d>(dst: &'d mut [MaybeUninit<f32>], src: &[f32]) -> &'d mut [f32] {
    assert_eq!(dst.len(), src.len(), "init_from: lengths differ");
    dst.iter_mut().zip(src).for_each(|(d, v)| {
        d.write(*v);
    });
    // SAFETY: all `dst.len()` elements were just written.
    unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast(), dst.len()) }
}

/// Rows of `width` elements, `stride` apart in `src`, copied over unwritten storage one after
/// another (`dst.len() / width` of them), handed back as initialised.
///
/// # Panics
/// When `dst` is not whole rows or `src` is too short for them (a caller's bug, never the data's).
pub(crate) fn init_from_rows<'d>(
    dst: &'d mut [MaybeUninit<f32>],
    (src, stride): (&[f32], usize),
    width: usize,
) -> &'d mut [f32] {
    if width == 0 {
        assert!(dst.is_empty(), "init_from_rows: rows of no elements");
        return &mut [];
    }
    assert_eq!(dst.len() % width, 0, "init_from_rows: not whole rows");
    for (r, row) in dst.chunks_mut(width).enumerate() {
        init_from(row, &src[r * stride..r * stride + width]);
    }
    // SAFETY: the rows partition `dst` and each was written in full.
    unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast(), dst.len()) }
}

/// Row-major `src` (rows × cols) into `dst` as its transpose (cols × rows), tile by tile.
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
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
        product(
            dims,
            (a, strides(sa, m, dims.2)),
            (b, strides(sb, dims.2, n)),
            (c.as_mut_ptr().cast(), n, 1),
            false,
            parallel,
        );
        Ok(std::slice::from_raw_parts_mut(c.as_mut_ptr().cast(), m * n))
    }
}

/// Columns per block of [`sgemm_fresh_blocked`]: a multiple of the 16 lanes of an AVX-512
/// register. Measured on DenseNet's 32 × 3136 × 1152 growth convolution: one product over all
/// columns ran at 62 GFLOP/s (its right operand's rows 12.5 KB apart, a new page every step of
/// the depth loop), blocks of 256 columns at 121–127.
pub(crate) const COLUMN_BLOCK: usize = 256;

/// The columns of the next block when `rest` remain: `block`, or all of them when that leaves
/// less than a quarter block behind (Inception-v3's 17×17 maps, 289 columns, as one block
/// instead of 256 and 33: each block's product packs the whole left operand again).
pub(crate) fn block_len(block: usize, rest: usize) -> usize {
    if rest < block + block / 4 {
        rest
    } else {
        block
    }
}

/// `c = a·b` for row-major `c` (m×n) and `a` (m×k) into unwritten storage, as [`sgemm_fresh`],
/// where `b` (k×n) is never whole: `fill_b(j0, nb, block)` writes its columns `j0..j0 + nb` as a
/// row-major k×nb `block` (from `scratch`), and each block's product lands in its columns of `c`.
/// The operand's rows are then `nb` elements apart instead of `n`, which keeps the GEMM's reads
/// in few pages and the block in cache. Returns the first m·n elements of `c`, all written.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm_fresh_blocked<'c>(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    block: usize,
    scratch: &mut Vec<f32>,
    mut fill_b: impl FnMut(usize, usize, &mut [f32]),
    c: &'c mut [MaybeUninit<f32>],
    parallel: bool,
) -> candle_core::Result<&'c mut [f32]> {
    if a.len() < m * k || c.len() < m * n || block == 0 {
        candle_core::bail!(
            "gemm: {m}×{k} · {k}×{n} in blocks of {block} needs slices of {} and {} elements and a positive block, got {} and {}",
            m * k,
            m * n,
            a.len(),
            c.len()
        )
    }
    let c = &mut c[..m * n];
    let mut j0 = 0;
    while j0 < n {
        let nb = block_len(block, n - j0);
        let scratch = super::room(scratch, k * nb);
        fill_b(j0, nb, scratch);
        // SAFETY: `a` holds m·k elements (checked above) and `scratch` k·nb; the block of `c`
        // is m rows of nb elements n apart from element j0, the last at (m-1)·n + j0 + nb - 1
        // < m·n = `c.len()`; `c` is borrowed mutably, so it aliases neither operand. Without
        // `accumulate` `product` reads nothing of it.
        unsafe {
            product(
                (m, nb, k),
                (a, strides(Stored::AsIs, m, k)),
                (scratch, strides(Stored::AsIs, k, nb)),
                (c.as_mut_ptr().add(j0).cast(), n, 1),
                false,
                parallel,
            );
        }
        j0 += nb;
    }
    // SAFETY: the blocks j0..j0 + nb tile 0..n, and each product wrote its m × nb block (a
    // zero-depth product writes zeros), so all m·n elements are initialised f32 values.
    Ok(unsafe { std::slice::from_raw_parts_mut(c.as_mut_ptr().cast(), m * n) })
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

/// (column stride, row stride) of a rows×cols operand stored as `s`.
fn strides(s: Stored, rows: usize, cols: usize) -> (isize, isize) {
    match s {
        Stored::AsIs => (1, cols as isize),
        Stored::Transposed => (rows as isize, 1),
    }
}

/// The product itself: `a`'s element (i, l) at i·a_rs + l·a_cs, `b`'s element (l, j) at
/// l·b_rs + j·b_cs, `c`'s element (i, j) at i·c_rs + j·c_cs.
///
/// # Safety
/// `a` reaches (m-1)·a_rs + (k-1)·a_cs and `b` (k-1)·b_rs + (n-1)·b_cs (checked by [`check`]
/// for the stored layouts, by [`strided_product`] for strided ones); the m×n elements of `c`
/// at those offsets are writable, alias neither operand and are initialised when `accumulate`.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    (a, (a_cs, a_rs)): (&[f32], (isize, isize)),
    (b, (b_cs, b_rs)): (&[f32], (isize, isize)),
    (c, c_rs, c_cs): (*mut f32, usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    if m * n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: element (i, j) of `c` is writable (the caller's contract).
                    unsafe { c.add(i * c_rs + j * c_cs).write(0.0) };
                }
            }
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = if parallel && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: with the given strides, the largest offset `gemm` touches is (m-1)·a_rs +
    // (k-1)·a_cs in `a`, (k-1)·b_rs + (n-1)·b_cs in `b` and (m-1)·c_rs + (n-1)·c_cs in `c`,
    // within the lengths and elements of the caller's contract. `gemm` computes c := 1·c + 1·(a·b) when
    // `read_dst`, c := a·b otherwise (then reading nothing of `c`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            c_cs as isize,
            c_rs as isize,
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
    fn strided_rows_overlap_and_accumulate_into_a_window_of_c() {
        // b's rows 3 apart but 5 wide: they overlap, as a tap's shifted image does.
        let (m, n, k, b_rs, c_rs) = (4, 5, 6, 3, 9);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..(k - 1) * b_rs + n)
            .map(|i| (i as f32 * 0.11).cos())
            .collect();
        let dense: Vec<f32> = (0..k * n).map(|i| b[(i / n) * b_rs + i % n]).collect();
        let want = reference(m, n, k, &a, false, &dense, false);
        let mut c = vec![7f32; (m - 1) * c_rs + n];
        sgemm_strided((m, n, k), &a, (&b, b_rs), (&mut c, c_rs), false, true).unwrap();
        for i in 0..m {
            for j in 0..n {
                assert!(
                    (c[i * c_rs + j] - want[i * n + j]).abs() < 1e-5,
                    "({i}, {j})"
                );
            }
            // Between the rows of the window nothing is touched.
            if i + 1 < m {
                assert!(c[i * c_rs + n..(i + 1) * c_rs].iter().all(|&v| v == 7.0));
            }
        }
        sgemm_strided((m, n, k), &a, (&b, b_rs), (&mut c, c_rs), true, false).unwrap();
        for i in 0..m {
            for j in 0..n {
                let twice = 2.0 * want[i * n + j];
                assert!(
                    (c[i * c_rs + j] - twice).abs() < 1e-5,
                    "({i}, {j}) accumulated"
                );
            }
        }
        // One element short of b's last row, of c's last row, rows of c closer than n.
        let short_b = &b[..b.len() - 1];
        assert!(
            sgemm_strided((m, n, k), &a, (short_b, b_rs), (&mut c, c_rs), false, false).is_err()
        );
        let short_c = &mut vec![0f32; (m - 1) * c_rs + n - 1];
        assert!(sgemm_strided((m, n, k), &a, (&b, b_rs), (short_c, c_rs), false, false).is_err());
        assert!(sgemm_strided((m, n, k), &a, (&b, b_rs), (&mut c, n - 1), false, false).is_err());
    }

    #[test]
    fn strided_columns_overlap_and_accumulate_into_a_window_of_c() {
        // b's columns 4 apart but 7 long: they overlap, as a tap's shifted image does in the
        // weight gradient; c's columns 6 apart, 3 long.
        let (m, n, k, b_cs, c_cs) = (3, 5, 7, 4, 6);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.29).sin()).collect();
        let b: Vec<f32> = (0..(n - 1) * b_cs + k)
            .map(|i| (i as f32 * 0.13).cos())
            .collect();
        let dense: Vec<f32> = (0..k * n).map(|i| b[(i % n) * b_cs + i / n]).collect();
        let want = reference(m, n, k, &a, false, &dense, false);
        let mut c = vec![7f32; (n - 1) * c_cs + m];
        for (accumulate, times) in [(false, 1.0), (true, 2.0)] {
            sgemm_columns_strided((m, n, k), &a, (&b, b_cs), (&mut c, c_cs), accumulate, true)
                .unwrap();
            for j in 0..n {
                for i in 0..m {
                    let (got, want) = (c[i + j * c_cs], times * want[i * n + j]);
                    assert!((got - want).abs() < 1e-5, "({i}, {j}) {accumulate}");
                }
                // Between the columns of the window nothing is touched.
                if j + 1 < n {
                    assert!(c[j * c_cs + m..(j + 1) * c_cs].iter().all(|&v| v == 7.0));
                }
            }
        }
        // One element short of b's last column, of c's last column, columns of c closer than m.
        let f = |b: &[f32], c: &mut [f32], c_cs| {
            sgemm_columns_strided((m, n, k), &a, (b, b_cs), (c, c_cs), false, false).is_err()
        };
        assert!(f(&b[..b.len() - 1], &mut c, c_cs));
        assert!(f(&b, &mut vec![0f32; (n - 1) * c_cs + m - 1], c_cs));
        assert!(f(&b, &mut c, m - 1));
    }

    #[test]
    fn strided_rows_by_strided_columns_accumulate_into_a_window_of_c() {
        // a's rows 9 apart, 6 long; b's columns 8 apart, 6 long; c's rows 7 apart, 5 long: runs
        // of channel-major buffers, as the Winograd weight gradient reads them.
        let (m, n, k, a_rs, b_cs, c_rs) = (4, 5, 6, 9, 8, 7);
        let a: Vec<f32> = (0..(m - 1) * a_rs + k)
            .map(|i| (i as f32 * 0.31).sin())
            .collect();
        let b: Vec<f32> = (0..(n - 1) * b_cs + k)
            .map(|i| (i as f32 * 0.17).cos())
            .collect();
        let dense_a: Vec<f32> = (0..m * k).map(|i| a[(i / k) * a_rs + i % k]).collect();
        let dense_b: Vec<f32> = (0..k * n).map(|i| b[(i % n) * b_cs + i / n]).collect();
        let want = reference(m, n, k, &dense_a, false, &dense_b, false);
        let mut c = vec![7f32; (m - 1) * c_rs + n];
        for (accumulate, times) in [(false, 1.0), (true, 2.0)] {
            let (ao, bo) = ((&a[..], a_rs), (&b[..], b_cs));
            sgemm_rows_by_columns((m, n, k), ao, bo, (&mut c, c_rs), accumulate, true).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let (got, want) = (c[i * c_rs + j], times * want[i * n + j]);
                    assert!((got - want).abs() < 1e-5, "({i}, {j}) {accumulate}");
                }
                if i + 1 < m {
                    assert!(c[i * c_rs + n..(i + 1) * c_rs].iter().all(|&v| v == 7.0));
                }
            }
        }
        // One element short of a's last row or b's last column, a's rows closer than k, c's
        // rows closer than n.
        let f = |a: &[f32], a_rs, b: &[f32], c: &mut [f32], c_rs| {
            sgemm_rows_by_columns((m, n, k), (a, a_rs), (b, b_cs), (c, c_rs), false, false).is_err()
        };
        assert!(f(&a[..a.len() - 1], a_rs, &b, &mut c, c_rs));
        assert!(f(&a, k - 1, &b, &mut c, c_rs));
        assert!(f(&a, a_rs, &b[..b.len() - 1], &mut c, c_rs));
        assert!(f(&a, a_rs, &b, &mut c, n - 1));
    }

    #[test]
    fn a_tail_under_a_quarter_block_joins_the_last_block() {
        let blocks = |n: usize| {
            let (mut j0, mut out) = (0, vec![]);
            while j0 < n {
                out.push(block_len(256, n - j0));
                j0 += out[out.len() - 1];
            }
            out
        };
        assert_eq!(blocks(289), [289]);
        assert_eq!(blocks(319), [319]);
        assert_eq!(blocks(320), [256, 64]);
        assert_eq!(blocks(1225), [256, 256, 256, 256, 201]);
        assert_eq!(blocks(1295), [256, 256, 256, 256, 271]);
        assert_eq!(blocks(49), [49]);
        assert_eq!(blocks(0), Vec::<usize>::new());
    }

    #[test]
    fn rows_are_gathered_into_unwritten_storage() {
        let src: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let mut dst = vec![MaybeUninit::<f32>::uninit(); 6];
        let got = init_from_rows(&mut dst, (&src, 5), 3);
        assert_eq!(got, &[0.0, 1.0, 2.0, 5.0, 6.0, 7.0]);
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

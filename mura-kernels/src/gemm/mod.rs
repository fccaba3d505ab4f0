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
/// is stored transposed, as in a convolution's weight gradient dY·colsᵀ. Returns the m·n
/// elements of `ct`, all written.
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
/// register. One product over all the columns of a large map reads its right operand's rows far
/// apart (12.5 KB on DenseNet's 56×56 growth convolution), a new page every step of the depth
/// loop; blocks of 256 columns keep those reads in few pages. The size was chosen from
/// per-shape measurements (`cargo bench -p mura-kernels`, docs/benchmarks.md).
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
/// (a memset of every op output: an extra pass over memory that the op then overwrites). `init`
/// gets the unwritten storage; on `Err` the storage is dropped unread.
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
    // within the lengths and elements of the caller's contract. `gemm` computes
    // c := 1·c + 1·(a·b) when `read_dst`, c := a·b otherwise (then reading nothing of `c`).
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
mod tests;

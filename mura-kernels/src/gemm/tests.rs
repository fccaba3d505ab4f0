//! The GEMM glue against a reference product for every storage, stride and accumulation.

use super::*;

fn reference(m: usize, n: usize, k: usize, a: &[f32], ta: bool, b: &[f32], tb: bool) -> Vec<f32> {
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
    assert!(sgemm_strided((m, n, k), &a, (short_b, b_rs), (&mut c, c_rs), false, false).is_err());
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
        sgemm_columns_strided((m, n, k), &a, (&b, b_cs), (&mut c, c_cs), accumulate, true).unwrap();
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

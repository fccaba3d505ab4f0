//! DeLong's variance of the ROC-AUC and his test for two correlated AUCs on the same samples
//! (DeLong, DeLong & Clarke-Pearson, 1988), in the O(n log n) form of Sun & Xu (2014): the
//! structural components come from mid-ranks, so no n_pos × n_neg matrix is built.

use serde::Serialize;

use crate::{MetricsError, check_pairs};

/// An AUC with DeLong's estimate of its variance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AucVariance {
    pub auc: f64,
    pub variance: f64,
}

/// DeLong's test of AUC(a) = AUC(b) for two scorings of the same samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DelongTest {
    pub auc_a: f64,
    pub auc_b: f64,
    /// `auc_a − auc_b`.
    pub difference: f64,
    /// The standard error of the difference.
    pub std_error: f64,
    pub z: f64,
    /// Two-sided.
    pub p_value: f64,
    /// The normal interval of the difference at `level`.
    pub lower: f64,
    pub upper: f64,
    pub level: f64,
}

/// Average ranks (1-based) of `values`, ties sharing the mean of the ranks they span.
fn midranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// One scoring's AUC and structural components: V10 per positive, V01 per negative.
struct Components {
    auc: f64,
    v10: Vec<f64>,
    v01: Vec<f64>,
}

fn components(labels: &[bool], scores: &[f64]) -> Components {
    let pos: Vec<f64> = labels
        .iter()
        .zip(scores)
        .filter(|(y, _)| **y)
        .map(|(_, &s)| s)
        .collect();
    let neg: Vec<f64> = labels
        .iter()
        .zip(scores)
        .filter(|(y, _)| !**y)
        .map(|(_, &s)| s)
        .collect();
    let (m, n) = (pos.len() as f64, neg.len() as f64);
    let (tx, ty) = (midranks(&pos), midranks(&neg));
    let all: Vec<f64> = pos.iter().chain(&neg).copied().collect();
    let tz = midranks(&all);
    let (tz_pos, tz_neg) = tz.split_at(pos.len());
    let auc = (tz_pos.iter().sum::<f64>() - m * (m + 1.0) / 2.0) / (m * n);
    Components {
        auc,
        v10: tz_pos.iter().zip(&tx).map(|(z, x)| (z - x) / n).collect(),
        v01: tz_neg
            .iter()
            .zip(&ty)
            .map(|(z, y)| 1.0 - (z - y) / m)
            .collect(),
    }
}

/// Sample covariance (n − 1 denominator) of two equally long series.
fn covariance(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    if a.len() < 2 {
        return 0.0;
    }
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - ma) * (y - mb))
        .sum::<f64>()
        / (n - 1.0)
}

fn class_counts(labels: &[bool]) -> (usize, usize) {
    let pos = labels.iter().filter(|&&y| y).count();
    (pos, labels.len() - pos)
}

/// The AUC and DeLong's variance of it. `Ok(None)` when only one class is present.
pub fn delong_variance(
    labels: &[bool],
    scores: &[f64],
) -> Result<Option<AucVariance>, MetricsError> {
    check_pairs(labels, scores)?;
    let (m, n) = class_counts(labels);
    if m == 0 || n == 0 {
        return Ok(None);
    }
    let c = components(labels, scores);
    let variance = covariance(&c.v10, &c.v10) / m as f64 + covariance(&c.v01, &c.v01) / n as f64;
    Ok(Some(AucVariance {
        auc: c.auc,
        variance,
    }))
}

/// DeLong's paired test of two scorings `a` and `b` of the same samples, with the normal
/// interval of the difference at `level` (0.95 for a 95% interval). `Ok(None)` when only one
/// class is present or the difference has no variance (the scorings rank every pair alike).
pub fn delong_test(
    labels: &[bool],
    a: &[f64],
    b: &[f64],
    level: f64,
) -> Result<Option<DelongTest>, MetricsError> {
    check_pairs(labels, a)?;
    check_pairs(labels, b)?;
    if !(level > 0.0 && level < 1.0) {
        return Err(MetricsError::BadParameter {
            what: "interval level",
            expected: "in (0, 1)",
            value: level,
        });
    }
    let (m, n) = class_counts(labels);
    if m == 0 || n == 0 {
        return Ok(None);
    }
    let (ca, cb) = (components(labels, a), components(labels, b));
    let (m, n) = (m as f64, n as f64);
    let s = |x: &Components, y: &Components| {
        covariance(&x.v10, &y.v10) / m + covariance(&x.v01, &y.v01) / n
    };
    let variance = s(&ca, &ca) + s(&cb, &cb) - 2.0 * s(&ca, &cb);
    if variance.is_nan() || variance <= 0.0 {
        return Ok(None);
    }
    let std_error = variance.sqrt();
    let difference = ca.auc - cb.auc;
    let z = difference / std_error;
    let q = normal_quantile(0.5 + level / 2.0);
    Ok(Some(DelongTest {
        auc_a: ca.auc,
        auc_b: cb.auc,
        difference,
        std_error,
        z,
        p_value: libm::erfc(z.abs() / std::f64::consts::SQRT_2),
        lower: difference - q * std_error,
        upper: difference + q * std_error,
        level,
    }))
}

/// The standard normal's cumulative distribution function.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// The standard normal's quantile function, `p` in (0, 1): Acklam's rational approximation
/// refined by one Halley step on [`normal_cdf`], to full double precision.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    let x = if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    };
    let e = normal_cdf(x) - p;
    let u = e * (2.0 * std::f64::consts::PI).sqrt() * (x * x / 2.0).exp();
    x - u / (1.0 + x * u / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roc_auc;

    #[test]
    fn the_auc_equals_the_rank_sum_auc_with_ties() {
        let y = [true, false, true, true, false, false, true, false];
        let s = [0.9, 0.3, 0.5, 0.5, 0.5, 0.1, 0.8, 0.7];
        let v = delong_variance(&y, &s).unwrap().unwrap();
        assert!((v.auc - roc_auc(&y, &s).unwrap().unwrap()).abs() < 1e-15);
        assert!(v.variance > 0.0);
        assert_eq!(delong_variance(&[true, true], &[0.1, 0.2]), Ok(None));
    }

    #[test]
    fn a_scoring_against_itself_has_no_test_and_a_better_one_a_small_p() {
        let y: Vec<bool> = (0..200).map(|i| i % 2 == 0).collect();
        let good: Vec<f64> = (0..200)
            .map(|i| if i % 2 == 0 { 0.7 } else { 0.3 } + (i % 7) as f64 / 20.0)
            .collect();
        let poor: Vec<f64> = (0..200).map(|i| ((i * 37) % 101) as f64 / 101.0).collect();
        assert_eq!(delong_test(&y, &good, &good, 0.95), Ok(None));
        let t = delong_test(&y, &good, &poor, 0.95).unwrap().unwrap();
        assert!(
            t.difference > 0.2 && t.p_value < 1e-6 && t.lower > 0.0,
            "{t:?}"
        );
        let back = delong_test(&y, &poor, &good, 0.95).unwrap().unwrap();
        assert!((back.z + t.z).abs() < 1e-12 && (back.p_value - t.p_value).abs() < 1e-15);
        assert!(delong_test(&y, &good, &poor, 1.0).is_err());
    }

    #[test]
    fn normal_quantiles_and_cdf_invert_each_other() {
        assert!((normal_quantile(0.975) - 1.959_963_984_540_054).abs() < 1e-14);
        assert!((normal_quantile(0.5)).abs() < 1e-15);
        for p in [1e-10, 0.001, 0.02, 0.3, 0.7, 0.99, 1.0 - 1e-9] {
            assert!(
                (normal_cdf(normal_quantile(p)) - p).abs() < 1e-15 * p.max(1e-3) * 1e3,
                "{p}"
            );
        }
    }
}

//! Golden values from scikit-learn (`tools/sklearn_golden.py`, output committed under `fixtures/`).
//! Every value must agree to 1e-9 absolute.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mura_metrics::{binary_cross_entropy, evaluate, roc_curve};
use serde::Deserialize;

const TOLERANCE: f64 = 1e-9;

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    labels: Vec<u8>,
    probs: Vec<f64>,
    threshold: f64,
    weights: Option<Vec<f64>>,
    log_loss: f64,
    roc_auc: f64,
    accuracy: f64,
    precision: f64,
    recall: f64,
    specificity: f64,
    f1: f64,
    kappa: f64,
    confusion: [u64; 4],
    roc_fpr: Vec<f64>,
    roc_tpr: Vec<f64>,
    roc_thresholds: Vec<f64>,
}

fn close(name: &str, what: &str, ours: Option<f64>, theirs: f64) {
    let ours =
        ours.unwrap_or_else(|| panic!("{name}: {what} is undefined, scikit-learn has {theirs}"));
    assert!(
        (ours - theirs).abs() <= TOLERANCE,
        "{name}: {what} = {ours}, scikit-learn {theirs}"
    );
}

fn cases() -> Vec<Case> {
    let text = include_str!("fixtures/sklearn_golden.json");
    let golden: Golden = serde_json::from_str(text).expect("fixture parses");
    assert_eq!(golden.cases.len(), 4);
    golden.cases
}

#[test]
fn report_matches_scikit_learn() {
    for c in cases() {
        let y: Vec<bool> = c.labels.iter().map(|&l| l == 1).collect();
        let r = evaluate(&y, &c.probs, c.threshold).unwrap();
        let n = &c.name;
        close(n, "auc", r.auc, c.roc_auc);
        close(n, "accuracy", r.accuracy, c.accuracy);
        close(n, "precision", r.precision, c.precision);
        close(n, "recall", r.recall, c.recall);
        close(n, "specificity", r.specificity, c.specificity);
        close(n, "f1", r.f1, c.f1);
        close(n, "kappa", r.kappa, c.kappa);
        let m = r.confusion;
        assert_eq!(
            [
                m.true_negative,
                m.false_positive,
                m.false_negative,
                m.true_positive
            ],
            c.confusion,
            "{n}: confusion matrix"
        );
        let loss = binary_cross_entropy(&y, &c.probs, c.weights.as_deref()).unwrap();
        close(n, "log_loss", Some(loss), c.log_loss);
    }
}

#[test]
fn roc_curve_matches_scikit_learn() {
    for c in cases() {
        let y: Vec<bool> = c.labels.iter().map(|&l| l == 1).collect();
        let curve = roc_curve(&y, &c.probs).unwrap().unwrap();
        assert_eq!(curve.len(), c.roc_fpr.len(), "{}: number of points", c.name);
        assert!(curve[0].threshold.is_infinite());
        for (k, p) in curve.iter().enumerate() {
            close(&c.name, "fpr", Some(p.false_positive_rate), c.roc_fpr[k]);
            close(&c.name, "tpr", Some(p.true_positive_rate), c.roc_tpr[k]);
        }
        for (p, &t) in curve[1..].iter().zip(&c.roc_thresholds) {
            close(&c.name, "threshold", Some(p.threshold), t);
        }
    }
}

/// Calibration (scikit-learn) and DeLong (R's pROC) reference values of
/// `tools/metrics_golden.py`, to 1e-9 absolute.
mod calibration_and_delong {
    use mura_metrics::{
        Binning, brier_score, calibration_error, delong_test, delong_variance, reliability,
    };
    use serde::Deserialize;

    use super::TOLERANCE;

    #[derive(Deserialize)]
    struct Golden {
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Case {
        labels: Vec<bool>,
        a: Vec<f64>,
        b: Vec<f64>,
        brier_a: f64,
        reliability_a: Vec<Diagram>,
        delong: Delong,
    }

    #[derive(Deserialize)]
    struct Diagram {
        bins: usize,
        binning: Binning,
        fraction_positive: Vec<f64>,
        mean_probability: Vec<f64>,
        count: Vec<usize>,
        ece: f64,
        mce: f64,
    }

    #[derive(Deserialize)]
    struct Delong {
        auc_a: f64,
        var_a: f64,
        auc_b: f64,
        var_b: f64,
        z: f64,
        p_value: f64,
        lower: f64,
        upper: f64,
        level: f64,
    }

    fn close(what: &str, ours: f64, theirs: f64) {
        assert!(
            (ours - theirs).abs() <= TOLERANCE,
            "{what}: ours {ours}, reference {theirs}"
        );
    }

    fn golden() -> Golden {
        let text = include_str!("fixtures/calibration_delong.json");
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn brier_and_reliability_match_scikit_learn() {
        for (k, c) in golden().cases.iter().enumerate() {
            close(
                &format!("case {k} brier"),
                brier_score(&c.labels, &c.a).unwrap(),
                c.brier_a,
            );
            for d in &c.reliability_a {
                let what = format!("case {k}, {} {:?} bins", d.bins, d.binning);
                let ours = reliability(&c.labels, &c.a, d.bins, d.binning).unwrap();
                let counts: Vec<usize> = ours.iter().map(|b| b.count).collect();
                assert_eq!(counts, d.count, "{what}: counts");
                for (i, b) in ours.iter().enumerate() {
                    close(
                        &format!("{what}[{i}] y"),
                        b.fraction_positive,
                        d.fraction_positive[i],
                    );
                    close(
                        &format!("{what}[{i}] p"),
                        b.mean_probability,
                        d.mean_probability[i],
                    );
                }
                let e = calibration_error(&c.labels, &c.a, d.bins, d.binning).unwrap();
                close(&format!("{what} ece"), e.expected, d.ece);
                close(&format!("{what} mce"), e.maximum, d.mce);
            }
        }
    }

    #[test]
    fn delong_matches_proc() {
        for (k, c) in golden().cases.iter().enumerate() {
            let r = &c.delong;
            let va = delong_variance(&c.labels, &c.a).unwrap().unwrap();
            let vb = delong_variance(&c.labels, &c.b).unwrap().unwrap();
            close(&format!("case {k} auc a"), va.auc, r.auc_a);
            close(&format!("case {k} var a"), va.variance, r.var_a);
            close(&format!("case {k} auc b"), vb.auc, r.auc_b);
            close(&format!("case {k} var b"), vb.variance, r.var_b);
            let t = delong_test(&c.labels, &c.a, &c.b, r.level)
                .unwrap()
                .unwrap();
            close(&format!("case {k} z"), t.z, r.z);
            close(&format!("case {k} p"), t.p_value, r.p_value);
            close(&format!("case {k} lower"), t.lower, r.lower);
            close(&format!("case {k} upper"), t.upper, r.upper);
        }
    }
}

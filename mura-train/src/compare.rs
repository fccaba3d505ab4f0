//! Is run A better than run B? Both score the same studies of one split; the study-level AUCs
//! are compared by DeLong's test for correlated AUCs, and kappa and accuracy (each run at its
//! own stored threshold) by a paired bootstrap that resamples patients. Overall and per body
//! part.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mura_data::{BodyPart, PatientKey, Role};
use mura_metrics::{BootstrapConfig, DelongTest, PairedInterval, delong_test, paired_bootstrap};
use serde::Serialize;

use crate::TrainError;
use crate::ensemble::{Predictor, inputs};
use crate::run::Weights;
use crate::trained::Tta;

/// How to compare.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompareOptions {
    pub role: Role,
    pub weights: Weights,
    /// Bootstrap resamples of the kappa and accuracy differences.
    pub resamples: usize,
    pub threads: usize,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            role: Role::Test,
            weights: Weights::Final,
            resamples: 2000,
            threads: 2,
        }
    }
}

/// The comparison of two runs on one set of studies.
#[derive(Debug, Clone, Serialize)]
pub struct PartComparison {
    pub studies: usize,
    /// DeLong's test of the study-level AUCs (absent when only one class is present or the two
    /// rank every pair of studies alike).
    #[serde(flatten)]
    pub auc: Option<DelongTest>,
    /// Cohen's kappa of each run at its own threshold, and the paired bootstrap of the difference.
    pub kappa: Option<PairedInterval>,
    pub accuracy: Option<PairedInterval>,
}

/// What `mura compare` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub a: PathBuf,
    pub b: PathBuf,
    pub split: String,
    /// The thresholds kappa and accuracy are taken at (each run's stored one, else 0.5).
    pub threshold_a: f64,
    pub threshold_b: f64,
    pub overall: PartComparison,
    /// Keyed by the body part's short name.
    pub parts: BTreeMap<String, PartComparison>,
}

/// One run's study-level predictions on a split: study key → (label, probability, part,
/// patient).
type Studies = BTreeMap<String, (bool, f64, BodyPart, PatientKey)>;

fn studies(p: &Predictor, options: CompareOptions) -> Result<Studies, TrainError> {
    let items = p.records(options.role)?;
    let probs = p.predict(&inputs(&items), options.threads, Tta::None)?;
    let mut sums: BTreeMap<String, (bool, f64, usize, BodyPart, PatientKey)> = BTreeMap::new();
    for (item, prob) in items.iter().zip(probs) {
        let r = &item.record;
        let e = sums.entry(r.study_key().to_string()).or_insert((
            r.label,
            0.0,
            0,
            r.body_part,
            r.patient_key(),
        ));
        e.1 += prob;
        e.2 += 1;
    }
    Ok(sums
        .into_iter()
        .map(|(k, (y, s, n, part, patient))| (k, (y, s / n as f64, part, patient)))
        .collect())
}

/// The comparison of the studies at `idx` of the aligned series.
fn compare_part(
    (labels, a, b, patients): (&[bool], &[f64], &[f64], &[PatientKey]),
    (ta, tb): (f64, f64),
    config: BootstrapConfig,
) -> Result<PartComparison, TrainError> {
    let auc = delong_test(labels, a, b, 0.95)?;
    // Each run called at its own threshold, then both scored at 0.5 on the calls.
    let call =
        |p: &[f64], t: f64| -> Vec<f64> { p.iter().map(|&x| f64::from(u8::from(x > t))).collect() };
    let (ca, cb) = (call(a, ta), call(b, tb));
    let half = mura_metrics::DEFAULT_THRESHOLD;
    let kappa = paired_bootstrap(labels, (&ca, &cb), Some(patients), config, |l, p| {
        mura_metrics::cohen_kappa(l, p, half)
    })?;
    let accuracy = paired_bootstrap(labels, (&ca, &cb), Some(patients), config, |l, p| {
        mura_metrics::accuracy(l, p, half).map(Some)
    })?;
    Ok(PartComparison {
        studies: labels.len(),
        auc,
        kappa,
        accuracy,
    })
}

/// Compares the runs (or ensembles) in `a` and `b` on the studies of `options.role` that both
/// score; a study labelled differently by the two is an error, and so is a pair of runs that
/// share no study.
pub fn compare(a: &Path, b: &Path, options: CompareOptions) -> Result<Comparison, TrainError> {
    let (pa, pb) = (
        Predictor::open(a, options.weights, None)?,
        Predictor::open(b, options.weights, None)?,
    );
    let (sa, sb) = (studies(&pa, options)?, studies(&pb, options)?);
    let mut aligned = Vec::new();
    for (key, &(label, p, part, patient)) in &sa {
        if let Some(&(other, q, _, _)) = sb.get(key) {
            if other != label {
                return Err(TrainError::Input {
                    path: b.to_path_buf(),
                    reason: format!("study {key} has another label than in {}", a.display()),
                });
            }
            aligned.push((label, p, q, part, patient));
        }
    }
    if aligned.is_empty() {
        return Err(TrainError::Input {
            path: b.to_path_buf(),
            reason: format!(
                "shares no {} study with {}: compare runs on the same split",
                options.role.as_str(),
                a.display()
            ),
        });
    }
    let threshold = |p: &Predictor| {
        p.threshold()
            .map_or(mura_metrics::DEFAULT_THRESHOLD, |t| t.value)
    };
    let (ta, tb) = (threshold(&pa), threshold(&pb));
    let config = BootstrapConfig {
        resamples: options.resamples.max(1),
        level: 0.95,
        seed: pa.seed(),
    };
    let columns = |rows: &[&(bool, f64, f64, BodyPart, PatientKey)]| {
        (
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            rows.iter().map(|r| r.4).collect::<Vec<_>>(),
        )
    };
    let all: Vec<_> = aligned.iter().collect();
    let (y, p, q, pat) = columns(&all);
    let overall = compare_part((&y, &p, &q, &pat), (ta, tb), config)?;
    let mut parts = BTreeMap::new();
    for part in BodyPart::ALL {
        let rows: Vec<_> = aligned.iter().filter(|r| r.3 == part).collect();
        if rows.is_empty() {
            continue;
        }
        let (y, p, q, pat) = columns(&rows);
        let config = BootstrapConfig {
            seed: config.seed ^ part.index() as u64,
            ..config
        };
        parts.insert(
            part.short().to_string(),
            compare_part((&y, &p, &q, &pat), (ta, tb), config)?,
        );
    }
    Ok(Comparison {
        a: a.to_path_buf(),
        b: b.to_path_buf(),
        split: options.role.as_str().to_string(),
        threshold_a: ta,
        threshold_b: tb,
        overall,
        parts,
    })
}

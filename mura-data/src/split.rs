//! Patient-grouped, stratified splits and k-fold assignments, and the manifest that records them.
//!
//! Strata are body part × label; groups are patients. No patient is ever in two parts of a split,
//! and each stratum's share of every part is as close to its target fraction as the patients allow.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::rng::{shuffle, stream_rng};
use crate::{DataError, Dataset, ImageRecord, Manifest, ManifestEntry, PatientKey, Split};

/// The role an image plays in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Train,
    Val,
    Test,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Train => "train",
            Role::Val => "val",
            Role::Test => "test",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" => Ok(Role::Train),
            "val" => Ok(Role::Val),
            "test" => Ok(Role::Test),
            other => Err(format!("role {other:?} is not train, val or test")),
        }
    }
}

/// How to split the official train set into train and validation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitConfig {
    /// Fraction of the official train set's images that go to validation (0.2 for 80/20, 0.1 for
    /// 90/10), balanced per body part × label.
    pub val_fraction: f64,
    pub seed: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            val_fraction: 0.2,
            seed: 0,
        }
    }
}

/// Number of strata: 7 body parts × 2 labels.
const STRATA: usize = 14;

fn stratum_index(r: &ImageRecord) -> usize {
    r.body_part.index() * 2 + usize::from(r.label)
}

/// Patients with their image counts per stratum, in a canonical order.
fn patient_groups(images: &[&ImageRecord]) -> Vec<(PatientKey, [u32; STRATA])> {
    let mut groups: BTreeMap<PatientKey, [u32; STRATA]> = BTreeMap::new();
    for r in images {
        groups.entry(r.patient_key()).or_insert([0; STRATA])[stratum_index(r)] += 1;
    }
    groups.into_iter().collect()
}

/// Assigns each group to one of `targets.len()` bins so that every stratum's share of each bin is
/// close to that bin's target fraction.
///
/// Greedy placement of the groups (shuffled by `seed`, then largest first), followed by local moves
/// of single groups while they reduce the squared deviation of the per-stratum fractions. Fully
/// determined by the inputs and the seed.
pub(crate) fn assign_groups(groups: &[[u32; STRATA]], targets: &[f64], seed: u64) -> Vec<usize> {
    let bins = targets.len();
    let mut totals = [0f64; STRATA];
    for g in groups {
        for (t, &c) in totals.iter_mut().zip(g) {
            *t += f64::from(c);
        }
    }
    // Weight 1/T² makes the cost the squared deviation of *fractions*, so small strata count fully.
    let weight: Vec<f64> = totals
        .iter()
        .map(|&t| if t > 0.0 { 1.0 / (t * t) } else { 0.0 })
        .collect();
    // Deviation d[k][s] = n_ks - f_k T_s.
    let mut dev: Vec<[f64; STRATA]> = targets
        .iter()
        .map(|&f| {
            let mut d = [0.0; STRATA];
            for (ds, &t) in d.iter_mut().zip(&totals) {
                *ds = -f * t;
            }
            d
        })
        .collect();
    let add_cost = |d: &[f64; STRATA], g: &[u32; STRATA], sign: f64| -> f64 {
        // Change of sum_s w_s d_s² when adding (sign=1) or removing (sign=-1) g.
        g.iter()
            .zip(d)
            .zip(&weight)
            .map(|((&c, &ds), &w)| {
                let c = sign * f64::from(c);
                w * c * (2.0 * ds + c)
            })
            .sum()
    };

    let mut order: Vec<usize> = (0..groups.len()).collect();
    shuffle(&mut stream_rng(seed, &[0x0053_504c_4954]), &mut order); // "SPLIT"
    order.sort_by_key(|&i| std::cmp::Reverse(groups[i].iter().sum::<u32>()));

    let mut bin_of = vec![0usize; groups.len()];
    for &i in &order {
        let g = &groups[i];
        let best = (0..bins)
            .filter(|&k| targets[k] > 0.0)
            .min_by(|&a, &b| add_cost(&dev[a], g, 1.0).total_cmp(&add_cost(&dev[b], g, 1.0)))
            .unwrap_or(0);
        bin_of[i] = best;
        for (ds, &c) in dev[best].iter_mut().zip(g) {
            *ds += f64::from(c);
        }
    }

    for _pass in 0..100 {
        let mut improved = false;
        for &i in &order {
            let g = &groups[i];
            let from = bin_of[i];
            let remove = add_cost(&dev[from], g, -1.0);
            let mut best: Option<(usize, f64)> = None;
            for to in (0..bins).filter(|&k| k != from && targets[k] > 0.0) {
                let delta = remove + add_cost(&dev[to], g, 1.0);
                if delta < -1e-12 && best.is_none_or(|(_, d)| delta < d) {
                    best = Some((to, delta));
                }
            }
            if let Some((to, _)) = best {
                for (s, &c) in g.iter().enumerate() {
                    dev[from][s] -= f64::from(c);
                    dev[to][s] += f64::from(c);
                }
                bin_of[i] = to;
                improved = true;
            }
        }
        if !improved {
            break;
        }
    }
    bin_of
}

fn check_fraction(what: &'static str, f: f64) -> Result<(), DataError> {
    if !(f.is_finite() && f > 0.0 && f < 1.0) {
        return Err(DataError::InvalidConfig {
            what,
            reason: format!("{f} is not strictly between 0 and 1"),
        });
    }
    Ok(())
}

/// Splits a data set for a run: the official `valid` images become the test set, the official
/// `train` images are split into train and validation by patient, stratified by body part × label.
pub fn train_val_test(dataset: &Dataset, config: &SplitConfig) -> Result<Manifest, DataError> {
    check_fraction("validation fraction", config.val_fraction)?;
    let train: Vec<&ImageRecord> = dataset
        .images()
        .iter()
        .filter(|r| r.split == Split::Train)
        .collect();
    let groups = patient_groups(&train);
    let counts: Vec<[u32; STRATA]> = groups.iter().map(|g| g.1).collect();
    let bins = assign_groups(
        &counts,
        &[1.0 - config.val_fraction, config.val_fraction],
        config.seed,
    );
    let role_of: BTreeMap<PatientKey, Role> = groups
        .iter()
        .zip(&bins)
        .map(|(g, &b)| (g.0, if b == 1 { Role::Val } else { Role::Train }))
        .collect();
    let entries = dataset
        .images()
        .iter()
        .map(|r| ManifestEntry {
            role: match r.split {
                Split::Valid => Role::Test,
                Split::Train => role_of
                    .get(&r.patient_key())
                    .copied()
                    .unwrap_or(Role::Train),
            },
            fold: None,
            record: r.clone(),
        })
        .collect();
    Ok(Manifest { entries })
}

/// Stratified group k-fold over the official train images: every train image gets a fold in
/// `0..k`, each patient wholly in one fold. Official `valid` images stay the test set.
pub fn k_fold(dataset: &Dataset, k: usize, seed: u64) -> Result<Manifest, DataError> {
    if k < 2 {
        return Err(DataError::InvalidConfig {
            what: "number of folds",
            reason: format!("{k} folds: k-fold needs at least 2"),
        });
    }
    let train: Vec<&ImageRecord> = dataset
        .images()
        .iter()
        .filter(|r| r.split == Split::Train)
        .collect();
    let groups = patient_groups(&train);
    if groups.len() < k {
        return Err(DataError::InvalidConfig {
            what: "number of folds",
            reason: format!("{k} folds but only {} patients", groups.len()),
        });
    }
    let counts: Vec<[u32; STRATA]> = groups.iter().map(|g| g.1).collect();
    let bins = assign_groups(&counts, &vec![1.0 / k as f64; k], seed);
    let fold_of: BTreeMap<PatientKey, usize> =
        groups.iter().zip(&bins).map(|(g, &b)| (g.0, b)).collect();
    let entries = dataset
        .images()
        .iter()
        .map(|r| ManifestEntry {
            role: if r.split == Split::Valid {
                Role::Test
            } else {
                Role::Train
            },
            fold: match r.split {
                Split::Train => fold_of.get(&r.patient_key()).map(|&f| f as u32),
                Split::Valid => None,
            },
            record: r.clone(),
        })
        .collect();
    Ok(Manifest { entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_land_near_targets() {
        // 300 patients with 1–6 images in one of three strata.
        let groups: Vec<[u32; STRATA]> = (0..300)
            .map(|i| {
                let mut g = [0; STRATA];
                g[i % 3] = 1 + (i as u32 * 7) % 6;
                g
            })
            .collect();
        let bins = assign_groups(&groups, &[0.8, 0.2], 3);
        for s in 0..3 {
            let total: u32 = groups.iter().map(|g| g[s]).sum();
            let val: u32 = groups
                .iter()
                .zip(&bins)
                .filter(|(_, b)| **b == 1)
                .map(|(g, _)| g[s])
                .sum();
            let f = f64::from(val) / f64::from(total);
            assert!((f - 0.2).abs() < 0.01, "stratum {s}: {f}");
        }
        assert_eq!(bins, assign_groups(&groups, &[0.8, 0.2], 3));
        assert_ne!(bins, assign_groups(&groups, &[0.8, 0.2], 4));
    }

    #[test]
    fn bad_fractions_are_refused() {
        let d = Dataset::new(".".into(), vec![]);
        for f in [0.0, 1.0, -0.1, f64::NAN] {
            let cfg = SplitConfig {
                val_fraction: f,
                seed: 0,
            };
            assert!(matches!(
                train_val_test(&d, &cfg),
                Err(DataError::InvalidConfig { .. })
            ));
        }
        assert!(k_fold(&d, 1, 0).is_err());
        assert!(k_fold(&d, 3, 0).is_err(), "no patients for 3 folds");
    }
}

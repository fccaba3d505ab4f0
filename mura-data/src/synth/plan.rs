//! The plan of a synthetic data set: its patients and studies, each study's body part, label,
//! views, finding and where the finding shows, all drawn from the seed before any image is
//! rendered.

use rand::RngCore;

use super::{Difficulty, SynthConfig};
use crate::rng::{below, stream_rng, uniform, unit};
use crate::{BodyPart, DATASET_DIR, Split};

/// Official study counts per body part (train + valid), for the body-part mix, and abnormal rates.
pub(super) const PART_MIX: [(BodyPart, u32, f64); 7] = [
    (BodyPart::Elbow, 1912, 726.0 / 1912.0),
    (BodyPart::Finger, 2110, 738.0 / 2110.0),
    (BodyPart::Forearm, 1010, 351.0 / 1010.0),
    (BodyPart::Hand, 2185, 587.0 / 2185.0),
    (BodyPart::Humerus, 727, 338.0 / 727.0),
    (BodyPart::Shoulder, 3015, 1552.0 / 3015.0),
    (BodyPart::Wrist, 3697, 1423.0 / 3697.0),
];

/// The abnormal study rate the generator uses for a body part (MURA's, train and valid together).
pub fn abnormal_rate(part: BodyPart) -> f64 {
    PART_MIX.iter().find(|m| m.0 == part).map_or(0.0, |m| m.2)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileFormat {
    Gray8,
    Rgb8,
    Gray16,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Finding {
    Fracture,
    Hardware,
    Lesion { lytic: bool },
}

#[derive(Debug, Clone)]
pub(super) struct PlannedStudy {
    pub(super) split: Split,
    pub(super) part: BodyPart,
    pub(super) patient: u32,
    pub(super) number: u32,
    pub(super) abnormal: bool,
    pub(super) views: u32,
    /// Per study so that its views agree: the finding, where it is (bone index share, position
    /// along it, angle), its contrast, and whether the patient has growth plates.
    pub(super) finding: Option<(Finding, f64, f64, f64, f64)>,
    pub(super) growth_plates: bool,
    /// Which views show the finding.
    pub(super) shown: Vec<bool>,
    /// Size multiplier of the finding (2 in `Easy`).
    pub(super) scale: f32,
}

impl PlannedStudy {
    pub(super) fn folder(&self) -> String {
        format!(
            "{DATASET_DIR}/{}/{}/patient{:05}/study{}_{}",
            self.split,
            self.part.folder(),
            self.patient,
            self.number,
            if self.abnormal {
                "positive"
            } else {
                "negative"
            }
        )
    }
}

pub(super) fn weighted_choice(rng: &mut impl RngCore, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = unit(rng) * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

pub(super) fn plan(config: &SynthConfig) -> Vec<PlannedStudy> {
    let mut rng = stream_rng(config.seed, &[0x504c_414e]); // "PLAN"
    let part_weights: Vec<f64> = PART_MIX.iter().map(|m| f64::from(m.1)).collect();
    let mut studies = Vec::with_capacity(config.studies);
    let mut patient = 0u32;
    while studies.len() < config.studies {
        patient += 1;
        let (part, _, rate) = PART_MIX[weighted_choice(&mut rng, &part_weights)];
        let split = if unit(&mut rng) < config.valid_fraction {
            Split::Valid
        } else {
            Split::Train
        };
        let n_studies = 1 + weighted_choice(&mut rng, &[0.6, 0.3, 0.1]) as u32;
        let growth_plates = unit(&mut rng) < 0.33 && config.difficulty == Difficulty::Standard;
        for number in 1..=n_studies {
            if studies.len() == config.studies {
                break;
            }
            let abnormal = unit(&mut rng) < rate;
            let views = 1 + weighted_choice(&mut rng, &[0.15, 0.35, 0.35, 0.15]) as u32;
            let finding = abnormal.then(|| {
                let kind = match weighted_choice(&mut rng, &[0.5, 0.2, 0.3]) {
                    0 => Finding::Fracture,
                    1 => Finding::Hardware,
                    _ => Finding::Lesion {
                        lytic: unit(&mut rng) < 0.6,
                    },
                };
                (
                    kind,
                    unit(&mut rng),
                    uniform(&mut rng, 0.25, 0.75),
                    uniform(&mut rng, -0.5, 0.5),
                    uniform(&mut rng, 0.4, 1.0),
                )
            });
            let mut shown: Vec<bool> = (0..views).map(|_| unit(&mut rng) < 0.85).collect();
            if abnormal && !shown.iter().any(|&s| s) {
                let k = below(&mut rng, views as usize);
                shown[k] = true;
            }
            // Easy: the same draws (so the same studies follow), then every view shows a strong finding.
            let (finding, shown) = match config.difficulty {
                Difficulty::Standard => (finding, shown),
                Difficulty::Easy => (
                    finding.map(|(k, w, t, tilt, s)| (k, w, t, tilt, 0.85 + 0.25 * (s - 0.4))),
                    vec![true; views as usize],
                ),
            };
            studies.push(PlannedStudy {
                split,
                part,
                patient,
                number,
                abnormal,
                views,
                finding,
                growth_plates,
                shown,
                scale: match config.difficulty {
                    Difficulty::Standard => 1.0,
                    Difficulty::Easy => 2.0,
                },
            });
        }
    }
    studies
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_follows_mura_rates_and_shapes() {
        let config = SynthConfig {
            studies: 30_000,
            seed: 1,
            ..SynthConfig::default()
        };
        let studies = plan(&config);
        assert_eq!(studies.len(), 30_000);
        for (part, _, rate) in PART_MIX {
            let of_part: Vec<_> = studies.iter().filter(|s| s.part == part).collect();
            let abnormal = of_part.iter().filter(|s| s.abnormal).count() as f64;
            let observed = abnormal / of_part.len() as f64;
            assert!(
                (observed - rate).abs() < 0.035,
                "{part}: {observed} vs {rate}"
            );
        }
        let hand = abnormal_rate(BodyPart::Hand);
        assert!((0.26..0.28).contains(&hand));
        assert!((0.5..0.53).contains(&abnormal_rate(BodyPart::Shoulder)));
        // Patients have 1–3 studies, studies 1–4 views, abnormal studies show their finding.
        let mut per_patient: std::collections::BTreeMap<u32, u32> = Default::default();
        for s in &studies {
            *per_patient.entry(s.patient).or_default() += 1;
            assert!((1..=4).contains(&s.views));
            assert_eq!(s.finding.is_some(), s.abnormal);
            assert!(!s.abnormal || s.shown.iter().any(|&v| v));
        }
        assert!(per_patient.values().all(|&n| (1..=3).contains(&n)));
        let valid = studies.iter().filter(|s| s.split == Split::Valid).count() as f64;
        assert!((valid / 30_000.0 - config.valid_fraction).abs() < 0.02);
    }
}

//! Class weights: balanced `N / (2 N_c)`, and the MURA paper's per-body-part weights.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{BodyPart, DataError, ImageRecord};

/// The loss weight of each class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassWeights {
    pub normal: f64,
    pub abnormal: f64,
}

impl ClassWeights {
    pub const UNIFORM: ClassWeights = ClassWeights {
        normal: 1.0,
        abnormal: 1.0,
    };

    pub fn for_label(&self, abnormal: bool) -> f64 {
        if abnormal { self.abnormal } else { self.normal }
    }
}

fn counts<'a>(images: impl IntoIterator<Item = &'a ImageRecord>) -> (usize, usize) {
    images.into_iter().fold(
        (0, 0),
        |(n, a), r| {
            if r.label { (n, a + 1) } else { (n + 1, a) }
        },
    )
}

fn missing_class(normal: usize, abnormal: usize) -> DataError {
    DataError::InvalidConfig {
        what: "class weights",
        reason: format!(
            "{normal} normal and {abnormal} abnormal images: weights need both classes"
        ),
    }
}

/// Balanced weights `w_c = N / (2 N_c)` over the images (Keras' and scikit-learn's "balanced").
/// On MURA's official train images: 0.8390 normal, 1.2374 abnormal.
pub fn balanced<'a>(
    images: impl IntoIterator<Item = &'a ImageRecord>,
) -> Result<ClassWeights, DataError> {
    let (normal, abnormal) = counts(images);
    if normal == 0 || abnormal == 0 {
        return Err(missing_class(normal, abnormal));
    }
    let n = (normal + abnormal) as f64;
    Ok(ClassWeights {
        normal: n / (2.0 * normal as f64),
        abnormal: n / (2.0 * abnormal as f64),
    })
}

/// The MURA paper's weights per study type T: abnormal `w1 = |N_T| / (|A_T| + |N_T|)`, normal
/// `w0 = |A_T| / (|A_T| + |N_T|)`, from the abnormal (A) and normal (N) images of type T.
pub fn paper<'a>(
    images: impl IntoIterator<Item = &'a ImageRecord>,
) -> Result<BTreeMap<BodyPart, ClassWeights>, DataError> {
    let mut per_part: BTreeMap<BodyPart, (usize, usize)> = BTreeMap::new();
    for r in images {
        let c = per_part.entry(r.body_part).or_default();
        if r.label {
            c.1 += 1;
        } else {
            c.0 += 1;
        }
    }
    per_part
        .into_iter()
        .map(|(part, (normal, abnormal))| {
            if normal == 0 || abnormal == 0 {
                return Err(DataError::InvalidConfig {
                    what: "paper class weights",
                    reason: format!(
                        "{part} has {normal} normal and {abnormal} abnormal images: weights need both classes"
                    ),
                });
            }
            let total = (normal + abnormal) as f64;
            Ok((
                part,
                ClassWeights {
                    normal: abnormal as f64 / total,
                    abnormal: normal as f64 / total,
                },
            ))
        })
        .collect()
}

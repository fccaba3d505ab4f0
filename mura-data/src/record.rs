//! What one image of MURA is: its split, body part, patient, study, view, label and path.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The seven study types of MURA, in the order the data set lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BodyPart {
    #[serde(rename = "XR_ELBOW")]
    Elbow,
    #[serde(rename = "XR_FINGER")]
    Finger,
    #[serde(rename = "XR_FOREARM")]
    Forearm,
    #[serde(rename = "XR_HAND")]
    Hand,
    #[serde(rename = "XR_HUMERUS")]
    Humerus,
    #[serde(rename = "XR_SHOULDER")]
    Shoulder,
    #[serde(rename = "XR_WRIST")]
    Wrist,
}

impl BodyPart {
    pub const ALL: [BodyPart; 7] = [
        BodyPart::Elbow,
        BodyPart::Finger,
        BodyPart::Forearm,
        BodyPart::Hand,
        BodyPart::Humerus,
        BodyPart::Shoulder,
        BodyPart::Wrist,
    ];

    /// The folder name, e.g. `XR_ELBOW`.
    pub fn folder(self) -> &'static str {
        match self {
            BodyPart::Elbow => "XR_ELBOW",
            BodyPart::Finger => "XR_FINGER",
            BodyPart::Forearm => "XR_FOREARM",
            BodyPart::Hand => "XR_HAND",
            BodyPart::Humerus => "XR_HUMERUS",
            BodyPart::Shoulder => "XR_SHOULDER",
            BodyPart::Wrist => "XR_WRIST",
        }
    }

    /// Lower-case short name, e.g. `elbow` (what the CLI accepts beside `XR_ELBOW`).
    pub fn short(self) -> &'static str {
        match self {
            BodyPart::Elbow => "elbow",
            BodyPart::Finger => "finger",
            BodyPart::Forearm => "forearm",
            BodyPart::Hand => "hand",
            BodyPart::Humerus => "humerus",
            BodyPart::Shoulder => "shoulder",
            BodyPart::Wrist => "wrist",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl BodyPart {
    /// The body part named by the last `XR_*` folder in `path`, as MURA lays its files out
    /// (`.../XR_WRIST/patient00001/study1_positive/image1.png`).
    pub fn in_path(path: &std::path::Path) -> Option<BodyPart> {
        path.components().rev().find_map(|c| {
            let name = c.as_os_str().to_str()?;
            if name.len() > 3 && name[..3].eq_ignore_ascii_case("XR_") {
                name.parse().ok()
            } else {
                None
            }
        })
    }
}

impl fmt::Display for BodyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.folder())
    }
}

/// The text was not one of the seven body parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown body part {0:?} (expected one of elbow, finger, forearm, hand, humerus, shoulder, wrist)"
)]
pub struct UnknownBodyPart(pub String);

impl FromStr for BodyPart {
    type Err = UnknownBodyPart;

    /// Accepts the folder name (`XR_WRIST`) or the short name (`wrist`), in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.to_ascii_uppercase();
        let bare = upper.strip_prefix("XR_").unwrap_or(&upper);
        BodyPart::ALL
            .into_iter()
            .find(|p| p.folder()[3..] == *bare)
            .ok_or_else(|| UnknownBodyPart(s.to_string()))
    }
}

/// The official partition an image comes from. MURA's `valid` is our test set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Valid,
}

impl Split {
    pub fn folder(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.folder())
    }
}

/// One radiograph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub split: Split,
    pub body_part: BodyPart,
    /// The patient number (`patient00042` → 42).
    pub patient: u32,
    /// The study number within the patient (`study2_negative` → 2).
    pub study: u32,
    /// The view number within the study (`image3.png` → 3).
    pub view: u32,
    /// Abnormal (positive) study.
    pub label: bool,
    /// Path relative to the folder that contains `MURA-v1.1/`, with `/` separators, exactly as the
    /// CSVs write it.
    pub path: String,
}

impl ImageRecord {
    /// The study's identity: its folder path relative to the data base, with a trailing `/`, as
    /// `*_labeled_studies.csv` writes it.
    pub fn study_key(&self) -> &str {
        match self.path.rfind('/') {
            Some(i) => &self.path[..=i],
            None => &self.path,
        }
    }

    /// The patient's identity across splits and body parts.
    pub fn patient_key(&self) -> PatientKey {
        PatientKey {
            split: self.split,
            patient: self.patient,
        }
    }

    /// `(body part, label)`: the stratum splits are balanced over.
    pub fn stratum(&self) -> (BodyPart, bool) {
        (self.body_part, self.label)
    }

    /// The image's file on disk under `base` (the folder holding `MURA-v1.1/`).
    pub fn file(&self, base: &std::path::Path) -> PathBuf {
        base.join(&self.path)
    }
}

/// A patient. MURA numbers patients across the whole data set, so the number alone identifies one
/// within a split; train and valid never share patients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PatientKey {
    pub split: Split,
    pub patient: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_part_is_read_from_the_xr_folder_of_a_path() {
        use std::path::Path;
        let p = Path::new("MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/image1.png");
        assert_eq!(BodyPart::in_path(p), Some(BodyPart::Wrist));
        assert_eq!(
            BodyPart::in_path(Path::new("x/xr_hand/a.png")),
            Some(BodyPart::Hand)
        );
        assert_eq!(BodyPart::in_path(Path::new("wrist/a.png")), None);
        assert_eq!(BodyPart::in_path(Path::new("XR_KNEE/a.png")), None);
    }

    #[test]
    fn body_part_names_round_trip() {
        for p in BodyPart::ALL {
            assert_eq!(p.folder().parse::<BodyPart>(), Ok(p));
            assert_eq!(p.short().parse::<BodyPart>(), Ok(p));
        }
        assert_eq!("xr_hand".parse::<BodyPart>(), Ok(BodyPart::Hand));
        assert!("XR_KNEE".parse::<BodyPart>().is_err());
        assert!("".parse::<BodyPart>().is_err());
    }

    #[test]
    fn study_key_keeps_trailing_slash() {
        let r = ImageRecord {
            split: Split::Train,
            body_part: BodyPart::Hand,
            patient: 1,
            study: 1,
            view: 1,
            label: true,
            path: "MURA-v1.1/train/XR_HAND/patient00001/study1_positive/image1.png".into(),
        };
        assert_eq!(
            r.study_key(),
            "MURA-v1.1/train/XR_HAND/patient00001/study1_positive/"
        );
    }
}

//! Prediction on new images: each input is an image file (PNG, JPEG or DICOM; each frame of a
//! multi-frame DICOM file a view), or a study folder whose images are predicted one by one and
//! averaged into the study's probability (as MURA scores studies), then called abnormal above the
//! run's stored threshold (0.5 when none was chosen). A folder of DICOM files from several
//! studies is scored as one study per StudyInstanceUID.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mura_data::dicom::{self, Identifiers};
use serde::Serialize;

use crate::TrainError;
use crate::ensemble::{Input, Predictor};
use crate::trained::Tta;

/// One input's prediction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The image file or study folder as given.
    pub input: PathBuf,
    /// Whether the input is a study folder.
    #[serde(skip)]
    pub study: bool,
    /// The DICOM StudyInstanceUID of the study, only when asked for (it can identify a patient's
    /// visit, and de-identification replaces it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub study_uid: Option<String>,
    /// The image's probability, or the mean of the study's images'.
    pub probability: f64,
    pub abnormal: bool,
    /// The threshold `abnormal` was decided at.
    pub threshold: f64,
    /// Each image's probability, in file-name order.
    pub images: Vec<ImageProbability>,
    /// The patient identifiers of the study's first DICOM file, only when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identifiers: Option<PatientIdentifiers>,
}

/// Patient identifiers as [`Prediction`] shows them (`--show-identifiers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatientIdentifiers {
    pub patient_name: Option<String>,
    pub patient_id: Option<String>,
    pub study_date: Option<String>,
}

impl From<Identifiers> for PatientIdentifiers {
    fn from(i: Identifiers) -> Self {
        PatientIdentifiers {
            patient_name: i.patient_name,
            patient_id: i.patient_id,
            study_date: i.study_date,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageProbability {
    pub path: PathBuf,
    pub probability: f64,
}

/// How [`predict_inputs`] runs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PredictOptions {
    pub threads: usize,
    pub tta: Tta,
    /// Read DICOM frames through this VOI instead of the run's `data.voi`.
    pub voi: Option<mura_data::Voi>,
    /// Report the patient identifiers and StudyInstanceUID of DICOM inputs (never shown
    /// otherwise).
    pub show_identifiers: bool,
}

/// Whether `path` is an image mura reads: a PNG or JPEG file by its extension, or a DICOM file
/// (by extension or by its magic).
pub fn is_image(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str());
    ext.is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        || (path.file_name().is_some_and(|n| n != "DICOMDIR") && dicom::is_dicom(path))
}

/// The images of one study: what was given, its StudyInstanceUID, its views (a DICOM frame
/// `FILE#N`, or a file) and the identifiers of its first DICOM file.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyImages {
    pub input: PathBuf,
    pub study_uid: Option<String>,
    pub views: Vec<PathBuf>,
    pub identifiers: Option<Identifiers>,
}

/// The file `file` as a study of its views: itself, or each frame of a multi-frame DICOM file;
/// its study UID and identifiers when it is DICOM.
fn views(file: &Path) -> Result<StudyImages, TrainError> {
    let mut out = StudyImages {
        input: file.to_path_buf(),
        study_uid: None,
        views: vec![file.to_path_buf()],
        identifiers: None,
    };
    if dicom::is_dicom(file) {
        let info = dicom::info(file)?;
        if info.frames > 1 {
            out.views = (0..info.frames)
                .map(|f| dicom::frame_path(file, f))
                .collect();
        }
        out.study_uid = info.study_uid;
        out.identifiers = Some(info.identifiers);
    }
    Ok(out)
}

/// The views of the image file `file`: itself, or each frame (`FILE#N`) of a multi-frame DICOM
/// file.
pub fn image_views(file: &Path) -> Result<Vec<PathBuf>, TrainError> {
    Ok(views(file)?.views)
}

/// The studies of each input: a file stands for itself (its frames, for a multi-frame DICOM
/// file), a folder for its images in name order, one study per StudyInstanceUID when its DICOM
/// files name several. A missing input or a folder without images is an error naming it.
pub fn study_images(inputs: &[PathBuf]) -> Result<Vec<StudyImages>, TrainError> {
    let bad = |path: &Path, reason: String| TrainError::Input {
        path: path.to_path_buf(),
        reason,
    };
    let mut groups = Vec::with_capacity(inputs.len());
    for input in inputs {
        if input.is_dir() {
            let entries = std::fs::read_dir(input).map_err(|e| bad(input, e.to_string()))?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(bad(
                    input,
                    "no PNG, JPEG or DICOM images in this folder".into(),
                ));
            }
            let mut studies: BTreeMap<Option<String>, StudyImages> = BTreeMap::new();
            for file in files {
                let one = views(&file)?;
                let study = studies
                    .entry(one.study_uid.clone())
                    .or_insert_with(|| StudyImages {
                        input: input.clone(),
                        views: Vec::new(),
                        ..one.clone()
                    });
                study.views.extend(one.views);
            }
            groups.extend(studies.into_values());
        } else if input.is_file() {
            groups.push(views(input)?);
        } else if let (file, Some(_)) = dicom::split_frame(input) {
            // `FILE#N`: that frame alone (its number is checked when it is decoded).
            groups.push(StudyImages {
                views: vec![input.clone()],
                input: input.clone(),
                ..views(&file)?
            });
        } else {
            return Err(bad(input, "no such file or folder".into()));
        }
    }
    Ok(groups)
}

/// The predictions of `inputs` (images or study folders) by a run or ensemble.
pub fn predict_inputs(
    predictor: &mut Predictor,
    inputs: &[PathBuf],
    options: &PredictOptions,
) -> Result<Vec<Prediction>, TrainError> {
    if let Some(voi) = options.voi {
        predictor.set_voi(voi);
    }
    let groups = study_images(inputs)?;
    let threshold = predictor
        .threshold()
        .map_or(mura_metrics::DEFAULT_THRESHOLD, |t| t.value);
    let all: Vec<Input> = groups
        .iter()
        .flat_map(|g| g.views.iter().cloned().map(Input::file))
        .collect();
    let threads = options.threads.max(1);
    let mut probs = predictor.predict(&all, threads, options.tta)?.into_iter();
    Ok(groups
        .into_iter()
        .map(|g| {
            let images: Vec<ImageProbability> = g
                .views
                .into_iter()
                .zip(probs.by_ref())
                .map(|(path, probability)| ImageProbability { path, probability })
                .collect();
            let probability =
                images.iter().map(|i| i.probability).sum::<f64>() / images.len() as f64;
            Prediction {
                study: g.input.is_dir(),
                input: g.input,
                study_uid: g.study_uid.filter(|_| options.show_identifiers),
                probability,
                abnormal: probability > threshold,
                threshold,
                images,
                identifiers: g
                    .identifiers
                    .filter(|_| options.show_identifiers)
                    .map(Into::into),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn folders_become_studies_of_their_images_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let study = dir.path().join("study1_positive");
        std::fs::create_dir(&study).unwrap();
        for name in ["image2.png", "image1.PNG", "notes.txt", "image3.jpeg"] {
            std::fs::write(study.join(name), b"x").unwrap();
        }
        let single = dir.path().join("one.jpg");
        std::fs::write(&single, b"x").unwrap();
        let groups = study_images(&[study.clone(), single.clone()]).unwrap();
        assert_eq!(groups[0].input, study);
        let names: Vec<_> = groups[0]
            .views
            .iter()
            .map(|p| p.file_name().unwrap())
            .collect();
        assert_eq!(names, ["image1.PNG", "image2.png", "image3.jpeg"]);
        assert_eq!(
            (&groups[1].input, &groups[1].views),
            (&single, &vec![single.clone()])
        );

        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = study_images(&[empty]).unwrap_err().to_string();
        assert!(err.contains("empty: no PNG, JPEG or DICOM images"), "{err}");
        let err = study_images(&[dir.path().join("absent.png")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent.png: no such file or folder"), "{err}");
    }

    #[test]
    fn dicom_folders_become_one_study_per_study_uid_with_every_frame_a_view() {
        use mura_data::dicom::{Pixels, WriteSpec, write};
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("export");
        std::fs::create_dir(&folder).unwrap();
        let one = |name: &str, uid: &str| {
            let spec = WriteSpec {
                patient_id: Some(format!("PID-{uid}")),
                ..WriteSpec::gray8(2, 2, vec![0, 1, 2, 3], uid)
            };
            write(&folder.join(name), &spec).unwrap();
        };
        one("IM0001", "1.2.40");
        one("IM0003.dcm", "1.2.30");
        let multi = WriteSpec {
            frames: 3,
            pixels: Pixels::U8(vec![9; 12]),
            ..WriteSpec::gray8(2, 2, vec![], "1.2.40")
        };
        write(&folder.join("IM0002.dcm"), &multi).unwrap();
        std::fs::write(folder.join("DICOMDIR"), b"not an image").unwrap();
        let groups = study_images(std::slice::from_ref(&folder)).unwrap();
        let uids: Vec<_> = groups.iter().map(|g| g.study_uid.as_deref()).collect();
        assert_eq!(uids, [Some("1.2.30"), Some("1.2.40")]);
        assert!(groups.iter().all(|g| g.input == folder));
        let names = |g: &StudyImages| -> Vec<String> {
            g.views
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(names(&groups[0]), ["IM0003.dcm"]);
        assert_eq!(
            names(&groups[1]),
            ["IM0001", "IM0002.dcm#1", "IM0002.dcm#2", "IM0002.dcm#3"]
        );
        let ids = groups[1].identifiers.clone().unwrap();
        assert_eq!(ids.patient_id.as_deref(), Some("PID-1.2.40"));
        assert_eq!(image_views(&folder.join("IM0002.dcm")).unwrap().len(), 3);
    }
}

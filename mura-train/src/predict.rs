//! Prediction on new images: each input is an image file, or a study folder whose images are
//! predicted one by one and averaged into the study's probability (as MURA scores studies), then
//! called abnormal above the run's stored threshold (0.5 when none was chosen).

use std::path::{Path, PathBuf};

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
    /// The image's probability, or the mean of the study's images'.
    pub probability: f64,
    pub abnormal: bool,
    /// The threshold `abnormal` was decided at.
    pub threshold: f64,
    /// Each image's probability, in file-name order.
    pub images: Vec<ImageProbability>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageProbability {
    pub path: PathBuf,
    pub probability: f64,
}

/// Whether `path` names a PNG or JPEG file by its extension.
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// The images of each input: a file stands for itself, a folder for its PNG and JPEG files in
/// name order. A missing input or a folder without images is an error naming it.
pub fn study_images(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, Vec<PathBuf>)>, TrainError> {
    let bad = |path: &Path, reason: String| TrainError::Input {
        path: path.to_path_buf(),
        reason,
    };
    let mut groups = Vec::with_capacity(inputs.len());
    for input in inputs {
        if input.is_dir() {
            let entries = std::fs::read_dir(input).map_err(|e| bad(input, e.to_string()))?;
            let mut images: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            images.sort();
            if images.is_empty() {
                return Err(bad(input, "no PNG or JPEG images in this folder".into()));
            }
            groups.push((input.clone(), images));
        } else if input.is_file() {
            groups.push((input.clone(), vec![input.clone()]));
        } else {
            return Err(bad(input, "no such file or folder".into()));
        }
    }
    Ok(groups)
}

/// The predictions of `inputs` (images or study folders) by a run or ensemble.
pub fn predict_inputs(
    predictor: &Predictor,
    inputs: &[PathBuf],
    threads: usize,
    tta: Tta,
) -> Result<Vec<Prediction>, TrainError> {
    let groups = study_images(inputs)?;
    let threshold = predictor
        .threshold()
        .map_or(mura_metrics::DEFAULT_THRESHOLD, |t| t.value);
    let all: Vec<Input> = groups
        .iter()
        .flat_map(|(_, g)| g.iter().cloned().map(Input::file))
        .collect();
    let mut probs = predictor.predict(&all, threads, tta)?.into_iter();
    Ok(groups
        .into_iter()
        .map(|(input, images)| {
            let images: Vec<ImageProbability> = images
                .into_iter()
                .zip(probs.by_ref())
                .map(|(path, probability)| ImageProbability { path, probability })
                .collect();
            let probability =
                images.iter().map(|i| i.probability).sum::<f64>() / images.len() as f64;
            Prediction {
                study: input.is_dir(),
                input,
                probability,
                abnormal: probability > threshold,
                threshold,
                images,
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
        assert_eq!(groups[0].0, study);
        let names: Vec<_> = groups[0].1.iter().map(|p| p.file_name().unwrap()).collect();
        assert_eq!(names, ["image1.PNG", "image2.png", "image3.jpeg"]);
        assert_eq!(groups[1], (single.clone(), vec![single]));

        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = study_images(&[empty]).unwrap_err().to_string();
        assert!(err.contains("empty: no PNG or JPEG images"), "{err}");
        let err = study_images(&[dir.path().join("absent.png")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent.png: no such file or folder"), "{err}");
    }
}

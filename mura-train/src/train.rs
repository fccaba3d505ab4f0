//! Training a run from end to end: [`fit`], then, with the run's final weights, the temperature
//! that calibrates its probabilities (fitted on the validation images) and the decision threshold
//! (chosen on the calibrated validation studies).

use std::path::Path;

use crate::TrainError;
use crate::config::RunConfig;
use mura_data::Role;
use mura_metrics::{Binning, apply_temperature, calibration_error, fit_temperature, logit};

use crate::ensemble::{Predictor, inputs};
use crate::evaluate::choose_threshold;
use crate::fit::{FitEnd, FitOptions, FitSummary, fit};
use crate::observer::Observer;
use crate::run::{Calibration, Weights, files, store_calibration};
use crate::trained::{TrainedRun, Tta};

/// Trains the run in `dir` ([`fit`]) and, once it has finished, fits its temperature
/// (`train.calibrate`, stored in `calibration.json`) and chooses its decision threshold
/// (`train.threshold`: maximum kappa or Youden's J on the validation studies, stored in
/// `threshold.json`). An interrupted run gets both when it finishes.
pub fn train(
    config: &RunConfig,
    dir: &Path,
    options: &FitOptions,
    observer: &mut dyn Observer,
) -> Result<FitSummary, TrainError> {
    let summary = fit(config, dir, options, observer)?;
    if matches!(summary.end, FitEnd::Finished(_)) {
        let calibration = match config.train.calibrate {
            true => calibrate(dir, config)?,
            false => None,
        };
        store_calibration(dir, calibration.as_ref())?;
        if let Some(c) = &calibration {
            observer.message(&format!(
                "temperature {:.3} fitted on {} validation images: expected calibration error {:.4} → {:.4}; stored in {}",
                c.temperature.temperature,
                c.images,
                c.ece_before,
                c.ece_after,
                files::CALIBRATION
            ));
        }
        let run = Predictor::open(dir, Weights::Final, Some(&config.device))?;
        let criterion = config.train.threshold;
        if let Some(t) = choose_threshold(&run, criterion, config.data.threads)? {
            observer.message(&format!(
                "threshold {:.4} (maximum {} on the validation studies: {:.4}) stored in {}",
                t.value,
                t.criterion.as_str(),
                t.score,
                files::THRESHOLD
            ));
        }
    }
    Ok(summary)
}

/// The temperature of the run in `dir`, fitted on its validation images' logits with the final
/// weights; `None` when the validation images hold one class only.
fn calibrate(dir: &Path, config: &RunConfig) -> Result<Option<Calibration>, TrainError> {
    let run = TrainedRun::open(dir, Weights::Final, Some(&config.device))?;
    let predictor = Predictor::Run(Box::new(run));
    let items = predictor.records(Role::Val)?;
    let raw = predictor
        .predict_both(&inputs(&items), config.data.threads, Tta::None)?
        .raw;
    let labels: Vec<bool> = items.iter().map(|i| i.record.label).collect();
    let logits: Vec<f64> = raw.iter().map(|&p| logit(p)).collect();
    let Some(temperature) = fit_temperature(&labels, &logits)? else {
        return Ok(None);
    };
    let scaled: Vec<f64> = raw
        .iter()
        .map(|&p| apply_temperature(p, temperature.temperature))
        .collect();
    let ece =
        |p: &[f64]| calibration_error(&labels, p, 10, Binning::EqualWidth).map(|e| e.expected);
    Ok(Some(Calibration {
        temperature,
        images: labels.len(),
        ece_before: ece(&raw)?,
        ece_after: ece(&scaled)?,
    }))
}

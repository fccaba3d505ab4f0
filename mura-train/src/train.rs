//! Training a run from end to end: [`fit`], then the decision threshold chosen on the
//! validation studies with the run's final weights.

use std::path::Path;

use crate::TrainError;
use crate::config::RunConfig;
use crate::ensemble::Predictor;
use crate::evaluate::choose_threshold;
use crate::fit::{FitEnd, FitOptions, FitSummary, fit};
use crate::observer::Observer;
use crate::run::{Weights, files};

/// Trains the run in `dir` ([`fit`]) and, once it has finished, chooses and stores its decision
/// threshold (`train.threshold`: maximum kappa or Youden's J on the validation studies) in
/// `threshold.json`. An interrupted run gets its threshold when it finishes.
pub fn train(
    config: &RunConfig,
    dir: &Path,
    options: &FitOptions,
    observer: &mut dyn Observer,
) -> Result<FitSummary, TrainError> {
    let summary = fit(config, dir, options, observer)?;
    if matches!(summary.end, FitEnd::Finished(_)) {
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

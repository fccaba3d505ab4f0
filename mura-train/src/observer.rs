//! What happens during a run, told to whoever watches it (the CLI's progress bars, a log, a
//! test): the library itself prints nothing.

use crate::epoch::EpochProgress;
use crate::history::HistoryRow;

/// What happens during a run, for progress bars and logs. Every method has an empty default.
pub trait Observer {
    /// A message about a step of the run (data split, model, resume).
    fn message(&mut self, _text: &str) {}
    /// An epoch's training starts: `images` to go, `done` already done (a resumed epoch).
    fn epoch_start(&mut self, _epoch: u32, _epochs: u32, _images: usize, _done: usize) {}
    /// A training step ended.
    fn batch(&mut self, _progress: &EpochProgress) {}
    /// Validation of an epoch starts.
    fn eval_start(&mut self, _images: usize) {}
    /// An epoch ended.
    fn epoch_end(&mut self, _row: &HistoryRow, _improved: bool) {}
}

/// An observer that says nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Observer for Silent {}

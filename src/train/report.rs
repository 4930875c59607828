//! What a finished (or stopped) run reports.

use super::Evaluation;
use crate::adapter::TrainingInputs;

/// What a run did.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainReport {
    /// Optimizer steps taken (including those of a resumed run).
    pub steps: usize,
    /// The steps this call took: 0 when it resumed a run already complete.
    pub steps_this_call: usize,
    /// Seconds spent in this process's training steps (evaluation excluded).
    pub train_seconds: f64,
    /// Training examples per second.
    pub samples_per_s: f64,
    /// Real (non-padding) training tokens per second.
    pub tokens_per_s: f64,
    /// Mean training loss of the last logging window, or, where the run stopped before that
    /// window closed (an observer, `stop_after_steps`, early stopping), of the steps it took
    /// after the last one logged (a resumed run counts the steps before its interruption);
    /// NaN where no step was taken or logged.
    pub last_loss: f64,
    /// The best evaluation and its step; the model ends with those weights.
    pub best: Option<(usize, Evaluation)>,
    /// The tokens per example the texts were cut to (the tokenizer's `max_len`).
    pub max_len: usize,
    /// Whether the training examples were text pairs.
    pub text_pairs: bool,
    /// Whether early stopping ended the run before its last step
    /// ([`TrainConfig::early_stopping_patience`](super::TrainConfig::early_stopping_patience)).
    pub early_stopped: bool,
    /// What the run had to tell: a resume that found no saved state, a run already complete,
    /// a change of device, a step limit the epochs reach first, a learning rate of 0, a
    /// micro-batch size that splits no batch.
    pub notices: Vec<String>,
    /// Whether the observer ([`Trainer::observe`](super::Trainer::observe)) stopped the run before its last step;
    /// with an output directory, its state at that step is in `last/` to resume from.
    pub stopped_by_observer: bool,
}

impl TrainReport {
    /// What [`save_adapter`](crate::adapter::save_adapter) records of the training inputs, as this run saw them: a program
    /// that saves the trained model itself passes this instead of restating it.
    pub fn training_inputs(&self) -> TrainingInputs {
        TrainingInputs {
            text_pairs: Some(self.text_pairs),
            max_len: Some(self.max_len),
        }
    }
}

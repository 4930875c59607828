//! What a run tells a program that trains in-process, as it happens, and how that program
//! stops it: [`crate::train::Trainer::observe`].

use std::ops::ControlFlow;

use super::Evaluation;

/// One optimizer step, as it was taken.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StepReport {
    /// The step just taken, counted from 1 over the whole run (a resumed run goes on counting).
    pub step: usize,
    /// The steps the run takes in all.
    pub total_steps: usize,
    /// The epoch the step belongs to, counted from 1.
    pub epoch: usize,
    /// This step's mean training loss over its batch (`metrics.jsonl` logs means over
    /// `log_every` steps).
    pub loss: f64,
    /// The learning rate the step used.
    pub lr: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// Examples in the step's batch.
    pub examples: usize,
    /// Real (non-padding) tokens in the step's batch.
    pub tokens: usize,
}

/// Something a run did, passed to its observer.
#[derive(Debug)]
#[non_exhaustive]
pub enum TrainEvent<'e> {
    /// The data is tokenized and any saved state loaded: the run is about to take its
    /// first step of this call, step `step + 1` of `total_steps` (stopping here takes none).
    Started {
        /// Steps already taken (those of a resumed run).
        step: usize,
        /// The steps the run takes in all.
        total_steps: usize,
    },
    /// An optimizer step was taken.
    Step(&'e StepReport),
    /// The dev split was evaluated after `step`.
    #[non_exhaustive]
    Evaluation {
        /// The step the evaluation followed.
        step: usize,
        /// What it measured.
        evaluation: &'e Evaluation,
        /// Whether it is the best so far (its weights are the ones the run keeps).
        best: bool,
    },
    /// The resumable state of the run after `step` was published in the output directory's
    /// `last/`: a resume continues from there. A state saved when the step's evaluation ran
    /// out of device memory is saved again, at the same step, once a resume has run that
    /// evaluation.
    #[non_exhaustive]
    Saved {
        /// The step the state was saved after.
        step: usize,
    },
}

/// Whether the run goes on after an event: [`ControlFlow::Break`] stops it once the step's
/// due evaluation and saves are done, so the run stops where an uninterrupted one would have
/// been, and a resume of it reproduces that run.
pub type Control = ControlFlow<()>;

/// The callback of [`crate::train::Trainer::observe`], borrowed: a boxed one would give the
/// trainer a destructor that holds its borrows to the end of the caller's statement.
/// `Send`, so that a trainer moves into the thread that runs it, as it did without one.
pub type Observer<'a> = &'a mut (dyn FnMut(&TrainEvent<'_>) -> Control + Send);

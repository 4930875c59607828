//! The trainer: `fit` tells a run's story — plan it, start or resume it, take its steps,
//! evaluate and keep the best, finish — and each part lives in a file of its own.

mod best;
mod plan;
mod saved_state;
mod step;

use std::io::Write;
use std::path::Path;

use self::best::Best;
use self::plan::{evaluations, RunPlan};
use super::observer::{Observer, StepReport, TrainEvent};
use super::run_lock::{lock_run_dirs_around, RunLock};
use super::run_state;
use super::{AdamW, BatchLog, Progress, TrainConfig, TrainReport};
use crate::backend::Backend;
use crate::checkpoint::WeightsFile;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::BertClassifier;
use crate::peft::PeftPlan;
use crate::text::TextTokenizer;

/// Time, throughput and the loss window of this process's steps.
#[derive(Default)]
struct Meter {
    seconds: f64,
    samples: usize,
    tokens: usize,
    steps: usize,
    window_loss: f64,
    window_steps: usize,
    last_logged_loss: Option<f64>,
}

impl Meter {
    fn samples_per_s(&self) -> f64 {
        self.samples as f64 / self.seconds.max(1e-9)
    }

    fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }

    fn window_mean(&self) -> f64 {
        self.window_loss / self.window_steps.max(1) as f64
    }
}

/// A run in progress: where it is, its optimizer, its best evaluation.
struct Run<B: Backend> {
    step: usize,
    epoch: usize,
    next_batch: usize,
    optimizer: AdamW<B>,
    best: Option<Best>,
    meter: Meter,
    /// The step of the resumable state in `last/`, where one was saved or resumed from.
    saved_step: Option<usize>,
    /// Evaluations since the best one (early stopping counts them).
    evaluations_since_best: usize,
    /// Whether the observer asked the run to stop.
    stop_requested: bool,
    /// Whether the evaluation due at `step` ran out of device memory and is still to run.
    evaluation_due: bool,
}

impl<B: Backend> Run<B> {
    /// Moves past the batch just trained on, into the next epoch after its last batch.
    fn advance(&mut self, batches_in_epoch: usize) {
        self.step += 1;
        self.next_batch += 1;
        if self.next_batch >= batches_in_epoch {
            self.epoch += 1;
            self.next_batch = 0;
        }
    }
}

/// Fine-tunes a model with AdamW under a PEFT plan.
pub struct Trainer<'a, B: Backend> {
    backend: B,
    model: &'a mut BertClassifier<B>,
    plan: &'a PeftPlan,
    base: &'a WeightsFile,
    config: TrainConfig,
    /// Locks the caller already holds ([`Trainer::holding`]).
    held: &'a mut [RunLock],
    observer: Option<Observer<'a>>,
}

impl<B: Backend> std::fmt::Debug for Trainer<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("model", &self.model)
            .field("plan", &self.plan)
            .field("base", &self.base)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<'a, B: Backend> Trainer<'a, B> {
    /// A trainer for `model` (already under `plan`), whose base checkpoint has weights `base`.
    pub fn new(
        backend: &B,
        model: &'a mut BertClassifier<B>,
        plan: &'a PeftPlan,
        base: &'a WeightsFile,
        config: TrainConfig,
    ) -> Self {
        Trainer {
            backend: backend.clone(),
            model,
            plan,
            base,
            config,
            held: &mut [],
            observer: None,
        }
    }

    /// Trains under locks the caller holds already ([`crate::train::lock_run_dir`], say over
    /// its output directory and a PEFT export it writes after training): `fit` takes no lock
    /// of its own on a directory one of them covers. A directory is locked once: a second
    /// lock of it, from any thread, is refused as another run's. Borrowed mutably, so one
    /// held lock serves one trainer at a time.
    pub fn holding(mut self, locks: &'a mut [RunLock]) -> Self {
        self.held = locks;
        self
    }

    /// Calls `observer` before the first step of [`Trainer::fit`] and after each optimizer
    /// step, evaluation and state save (in that order within a step), in the thread that
    /// trains. Returning
    /// [`std::ops::ControlFlow::Break`] stops the run after the step's due evaluation and
    /// saves; with an output directory the state at that step is then saved in `last/`, so a
    /// `resume` continues from there and ends as the uninterrupted run would have, bit for
    /// bit. The model ends with the best weights so far, as after a whole run.
    ///
    /// To stop a run from another thread, share a flag:
    ///
    /// ```no_run
    /// # use std::sync::{atomic::{AtomicBool, Ordering}, Arc};
    /// # use std::ops::ControlFlow;
    /// # use spafit::train::TrainEvent;
    /// let cancel = Arc::new(AtomicBool::new(false));
    /// let flag = Arc::clone(&cancel);
    /// let mut observer = move |event: &TrainEvent<'_>| {
    ///     if let TrainEvent::Step(step) = event {
    ///         eprintln!("step {} of {}: loss {:.4}", step.step, step.total_steps, step.loss);
    ///     }
    ///     match flag.load(Ordering::Relaxed) {
    ///         true => ControlFlow::Break(()),
    ///         false => ControlFlow::Continue(()),
    ///     }
    /// };
    /// // trainer.observe(&mut observer).fit(&tokenizer, &train, dev)?; another thread sets
    /// // `cancel`.
    /// # let _ = &mut observer;
    /// ```
    pub fn observe(mut self, observer: Observer<'a>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Passes `event` to the observer: whether it asked the run to stop.
    fn tell(&mut self, event: TrainEvent<'_>) -> bool {
        self.observer
            .as_mut()
            .is_some_and(|observe| observe(&event).is_break())
    }

    /// Trains on `train`, evaluating on `dev` at each epoch end (and every `eval_every`
    /// steps). With an output directory: `metrics.jsonl`, the best adapter in `best/`, and
    /// the resumable state in `last/`. The model ends with the best evaluated weights. On an
    /// error (a diverged step, a full disk) the model keeps the weights it had when the run
    /// stopped, which may be unusable: the best ones are in `best/` of the output directory,
    /// and without one they are lost with the run. Each call is a run of its own: a second
    /// call trains on from the model's present weights with a fresh optimizer and schedule
    /// (or resumes the state saved in the output directory, with `resume`).
    pub fn fit(
        &mut self,
        tokenizer: &TextTokenizer,
        train: &Dataset,
        dev: Option<&Dataset>,
    ) -> Result<TrainReport> {
        self.model.check_plan(self.plan)?;
        self.model.check_base(self.base)?;
        // Before the lock as well as under it: taking the lock writes its file, which must
        // not land in a model's folder.
        if let Some(problem) = self.config.foreign_output_dir() {
            return Err(Error::invalid("train", problem));
        }
        let output = self
            .config
            .output_dir
            .clone()
            .filter(|dir| !self.held.iter().any(|lock| lock.covers(dir)));
        let _locks = lock_run_dirs_around(output.as_deref().as_slice(), || {
            self.check_settings(train, dev)
        })?;
        self.model.store_frozen_weights(&self.backend)?;
        // The head trains for the data's kind of target, and predicts as it trained.
        self.model.set_multi_label(train.kind.is_multi_label());
        let progress = Progress::new(
            self.config.progress,
            self.config.notices_on_stderr,
            self.config.log_every,
        );
        let plan = self.plan_run(tokenizer, train, dev, &progress)?;
        let mut run = self.start_or_resume(&plan, &progress)?;
        let first_step = run.step;
        let mut batch_log = match &self.config.batch_log {
            Some(path) if self.config.resume => {
                let mut log = BatchLog::resume_at(path, run.step)?;
                self.log_batches_again(&mut log, &plan, run.step)?;
                Some(log)
            }
            Some(path) => Some(BatchLog::create(path)?),
            None => None,
        };
        if !self.is_over(&plan, run.step, run.evaluations_since_best) {
            self.announce(train.len(), run.step, run.epoch, &progress);
            run.stop_requested = self.tell(TrainEvent::Started {
                step: run.step,
                total_steps: plan.total_steps,
            });
        }
        let evaluated_on_resume = std::mem::take(&mut run.evaluation_due);
        if evaluated_on_resume {
            // As the uninterrupted run did at that step: evaluate, then save. The step ended
            // an epoch when the next batch is the first of one.
            let epoch = match run.next_batch {
                0 => run.epoch.saturating_sub(1),
                _ => run.epoch,
            };
            self.evaluate_and_save_when_due(&plan, &mut run, epoch, true, &progress)?;
        }
        while run.epoch < self.config.epochs && !self.must_stop(&plan, &run) {
            let epoch = run.epoch;
            let batches = self.epoch_batches(&plan, epoch);
            while run.epoch == epoch && !self.must_stop(&plan, &run) {
                let rows = &batches[run.next_batch];
                let lr = plan.schedule.lr(run.step);
                let outcome = self.step(&plan, &mut run, rows, lr)?;
                run.advance(batches.len());
                if let Some(log) = &mut batch_log {
                    log.write(run.step, epoch, rows, &plan.train)?;
                }
                let epoch_done = run.epoch != epoch || run.step == plan.total_steps;
                self.record(&plan, &mut run, &outcome, rows.len(), epoch, lr, &progress)?;
                let report = StepReport {
                    step: run.step,
                    total_steps: plan.total_steps,
                    epoch: epoch + 1,
                    loss: outcome.loss,
                    lr,
                    grad_norm: outcome.grad_norm,
                    examples: rows.len(),
                    tokens: outcome.tokens,
                };
                run.stop_requested |= self.tell(TrainEvent::Step(&report));
                self.evaluate_and_save_when_due(&plan, &mut run, epoch, epoch_done, &progress)?;
            }
        }
        let stopped_by_observer =
            run.stop_requested && !self.is_over(&plan, run.step, run.evaluations_since_best);
        if stopped_by_observer {
            self.save_where_stopped(&plan, &mut run)?;
        }
        if let Some(log) = batch_log {
            log.finish(self.is_over(&plan, run.step, run.evaluations_since_best))?;
        }
        if stopped_by_observer {
            progress.notice(&self.stopped_early(&run, plan.total_steps, "on request"));
        } else if self.ended_early(&plan, &run) {
            // A resume of a run stopped before this call said so when it read the state.
            if run.step > first_step || evaluated_on_resume {
                let best = run.best.as_ref().map_or(0, |b| b.step);
                progress.notice(&format!(
                    "early stopping at step {} of {}: {} in a row did not improve on step \
                     {best}'s, whose weights best/ keeps",
                    run.step,
                    plan.total_steps,
                    evaluations(run.evaluations_since_best)
                ));
            }
        } else if run.step < plan.total_steps {
            progress.notice(&self.stopped_early(&run, plan.total_steps, "stop_after_steps"));
        }
        self.finish(&plan, run, first_step, progress, stopped_by_observer)
    }

    /// What a run stopped early by `why` leaves to resume from: the state saved last, which
    /// for `stop_after_steps` need not be the step it stopped at (states are saved at
    /// evaluations and every `save_every` steps).
    fn stopped_early(&self, run: &Run<B>, total_steps: usize, why: &str) -> String {
        let stopped = format!("stopped at step {} of {total_steps} ({why})", run.step);
        match (&self.config.output_dir, run.saved_step) {
            (None, _) => {
                format!("{stopped}: without an output directory nothing is kept to resume")
            }
            (Some(_), Some(saved)) if saved == run.step => {
                format!("{stopped}: a resume continues from here")
            }
            (Some(_), Some(saved)) => format!(
                "{stopped}: a resume continues from step {saved}, the state saved last \
                 (evaluations and save_every save it), and takes the steps after it again"
            ),
            (Some(_), None) => {
                format!("{stopped}: no state was saved yet, so a resume starts from step 0")
            }
        }
    }

    /// Whether this process's run ends before another step.
    fn must_stop(&self, plan: &RunPlan, run: &Run<B>) -> bool {
        self.is_over(plan, run.step, run.evaluations_since_best)
            || run.stop_requested
            || self
                .config
                .stop_after_steps
                .is_some_and(|n| run.meter.steps >= n)
    }

    /// Leaves the model with the best weights (or the last ones without a dev split, which
    /// then become `best/`) and reports.
    fn finish(
        &mut self,
        plan: &RunPlan,
        run: Run<B>,
        first_step: usize,
        progress: Progress,
        stopped_by_observer: bool,
    ) -> Result<TrainReport> {
        // After the last step: what is left to write, and what a resume has for it.
        let has_output = self.config.output_dir.is_some();
        let context = || {
            let doing = match (plan.dev.is_some(), has_output) {
                (true, _) => {
                    "the best weights going back onto the device for the report (best/ was \
                     written when they were evaluated)"
                }
                (false, true) => {
                    "best/ being written (a forward pass of the first training batch checks \
                     the weights first)"
                }
                (false, false) => {
                    "the final weights being checked (a forward pass of the first training \
                     batch)"
                }
            };
            let left = match (has_output, run.saved_step) {
                (true, Some(saved)) if saved == run.step => format!(
                    "last/ holds the state after step {saved}: a --resume with more memory \
                     ends the run as it would have"
                ),
                (true, saved) => saved_state::what_a_resume_has(saved),
                (false, _) => "without an output directory nothing is kept to resume".into(),
            };
            format!(
                "This was the end of the run after step {}: {doing}; {left}",
                run.step
            )
        };
        if let Some(best) = &run.best {
            self.restore(&best.weights, Path::new("the best weights"))
                .map_err(|e| e.in_memory_context(context))?;
        }
        if plan.dev.is_none() {
            self.check_weights_finite(plan, run.step)
                .and_then(|()| self.save_best(plan))
                .map_err(|e| e.in_memory_context(context))?;
        }
        let early_stopped = self.ended_early(plan, &run);
        let m = &run.meter;
        Ok(TrainReport {
            steps: run.step,
            steps_this_call: run.step - first_step,
            train_seconds: m.seconds,
            samples_per_s: m.samples_per_s(),
            tokens_per_s: m.tokens_per_s(),
            // A run stopped before its window closed (an observer, `stop_after_steps`,
            // early stopping) reports the steps it took since, not an older window.
            last_loss: match m.window_steps {
                0 => m.last_logged_loss.unwrap_or(f64::NAN),
                _ => m.window_mean(),
            },
            best: run.best.map(|b| (b.step, b.evaluation)),
            max_len: plan.max_len,
            text_pairs: plan.text_pairs,
            early_stopped,
            notices: progress.into_notices(),
            stopped_by_observer,
        })
    }

    fn log(&self, line: serde_json::Value) -> Result<()> {
        let Some(dir) = &self.config.output_dir else {
            return Ok(());
        };
        let path = run_state::metrics_path(dir);
        let io = |source| Error::Io {
            path: path.clone(),
            error: source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        // One write per line, so an interrupted run leaves no torn line; a write the disk
        // could take only part of (full, or over `ulimit -f`) is cut off again, so the file
        // stays whole lines that any JSON-lines reader takes.
        let before = f.metadata().map_err(io)?.len();
        f.write_all(format!("{line}\n").as_bytes())
            .inspect_err(|_| {
                let _ = f.set_len(before);
            })
            .map_err(io)
    }
}

//! Evaluations, the best weights so far and `best/`, and early stopping.

use std::path::Path;

use serde_json::json;

use super::plan::RunPlan;
use super::{Run, Trainer};
use crate::adapter::{save_adapter, TrainingInputs};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::memory_alternatives;
use crate::tensor::{copy_all, HostTensors};
use crate::train::evaluate::{evaluate_with_logit_check, never, unstopped};
use crate::train::observer::TrainEvent;
use crate::train::run_state::NamedTensors;
use crate::train::{Evaluation, Progress};

/// The best evaluation so far and the weights that gave it, on the host: on a device they
/// would hold a second copy of every trained tensor there from the next update on.
pub(super) struct Best {
    pub(super) step: usize,
    pub(super) evaluation: Evaluation,
    pub(super) weights: HostTensors,
}

impl<B: Backend> Trainer<'_, B> {
    /// Evaluates at epoch ends and every `eval_every` steps, and saves the resumable state
    /// then and every `save_every` steps.
    pub(super) fn evaluate_and_save_when_due(
        &mut self,
        plan: &RunPlan,
        run: &mut Run<B>,
        epoch: usize,
        epoch_done: bool,
        progress: &Progress,
    ) -> Result<()> {
        let every = |n: Option<usize>| n.is_some_and(|n| run.step.is_multiple_of(n));
        let evaluate_now = epoch_done || every(self.config.eval_every);
        let save_now = evaluate_now || every(self.config.save_every);
        if evaluate_now {
            self.evaluate_and_keep_best(plan, run, epoch, progress)?;
        }
        if save_now && self.config.output_dir.is_some() {
            let (step, saved_before) = (run.step, run.saved_step);
            run.stop_requested |= self.save_and_tell(plan, run).map_err(|e| {
                e.in_memory_context(|| {
                    format!(
                        "This was saving the state after step {step} in last/ (a forward pass \
                         of the first training batch checks the weights, then the trained \
                         tensors and AdamW's moments are copied to host memory): {}",
                        super::saved_state::what_a_resume_has(saved_before)
                    )
                })
            })?;
        }
        Ok(())
    }

    /// Evaluates on the dev split (when there is one), logs it, and keeps the weights and
    /// `best/` adapter when the main metric improved.
    fn evaluate_and_keep_best(
        &mut self,
        plan: &RunPlan,
        run: &mut Run<B>,
        epoch: usize,
        progress: &Progress,
    ) -> Result<()> {
        let Some((dev, split)) = &plan.dev else {
            return Ok(());
        };
        let c = &self.config;
        let (eval, non_finite) = match evaluate_with_logit_check(
            &self.backend,
            self.model,
            dev,
            c.eval_batch_size,
            c.task,
            &never,
        )
        .and_then(unstopped)
        {
            Ok(evaluated) => evaluated,
            Err(Error::OutOfMemory { op, detail }) => {
                let largest = c.eval_batch_size.min(dev.len());
                let detail = self.keep_step_without_evaluation(plan, run, split, largest, detail);
                return Err(Error::OutOfMemory { op, detail });
            }
            Err(e) => return Err(e),
        };
        let mut line = json!({"type": "eval", "step": run.step, "epoch": epoch + 1, "split": split, "loss": eval.loss});
        for (k, v) in &eval.metrics {
            line[k] = json!(v);
        }
        self.log(line)?;
        // The metric that picks best/, as the run is watched.
        progress.message(&match self.config.best_metric.as_deref() {
            Some("loss") => format!("step {}: dev loss {:.4}", run.step, eval.loss),
            chosen => {
                let name = chosen.unwrap_or(eval.main_metric);
                let value = eval.metrics.get(name).copied().unwrap_or(f64::NAN);
                format!(
                    "step {}: dev {name} {value:.4} (loss {:.4})",
                    run.step, eval.loss
                )
            }
        });
        if !eval.loss.is_finite() {
            return Err(Error::Diverged {
                step: run.step,
                what: format!("the loss on {split} is {}", eval.loss),
            });
        }
        if let Some(why) = non_finite {
            return Err(Error::Diverged {
                step: run.step,
                what: format!("on {split}, {why}"),
            });
        }
        let value = self.selection_score(&eval);
        let improved = value.is_finite()
            && run
                .best
                .as_ref()
                .is_none_or(|b| value > self.selection_score(&b.evaluation));
        run.evaluations_since_best = match improved {
            true => 0,
            false => run.evaluations_since_best + 1,
        };
        if improved {
            let (step, saved_before) = (run.step, run.saved_step);
            let context = || {
                format!(
                    "This was keeping step {step}'s weights as the best (copied to host \
                     memory, then written to best/): {}",
                    super::saved_state::what_a_resume_has(saved_before)
                )
            };
            let weights = copy_all(&self.backend, self.trainable().iter().map(|(n, t)| (n, t)))
                .map_err(|e| e.in_memory_context(context))?;
            run.best = Some(Best {
                step: run.step,
                evaluation: eval.clone(),
                weights,
            });
            self.save_best(plan)
                .map_err(|e| e.in_memory_context(context))?;
        }
        run.stop_requested |= self.tell(TrainEvent::Evaluation {
            step: run.step,
            evaluation: &eval,
            best: improved,
        });
        Ok(())
    }

    /// Saves the state at `run`'s step with its evaluation still due, so that a resume with
    /// a smaller evaluation batch loses no step, and says so after the device's `detail`;
    /// `largest` is the evaluation's largest batch (the split may hold fewer examples than
    /// `eval_batch_size`, so a size between them would change nothing).
    fn keep_step_without_evaluation(
        &mut self,
        plan: &RunPlan,
        run: &mut Run<B>,
        split: &str,
        largest: usize,
        detail: String,
    ) -> String {
        // Not the training batch's memory: the evaluation's batch is the one to make smaller.
        let smaller = match largest {
            0 | 1 => "even one example at a time does not fit: this evaluation needs a device \
                      with more memory"
                .to_string(),
            n => format!("an --eval-batch-size (eval_batch_size) below {n} needs less"),
        };
        let what = format!(
            "{detail}. This was the evaluation on {split} after step {}, in batches of up to \
             {largest} examples: {smaller}",
            run.step
        );
        let kept = format!(
            "The state after step {} is saved in last/ with this evaluation still to run: \
             --resume with a smaller --eval-batch-size runs it first and continues as the run \
             would have",
            run.step
        );
        run.evaluation_due = true;
        let told = self.save_after_out_of_memory(plan, run, what, &kept);
        run.evaluation_due = false;
        let frozen = self.model.has_frozen_linear_weights();
        match memory_alternatives(&self.backend, &[], frozen).filter(|_| largest > 1) {
            Some(less) => format!("{told}. A new run needs less with {less}"),
            None => told,
        }
    }

    /// What the best evaluation maximises: the task's main metric, the one
    /// [`TrainConfig::best_metric`] names, or the negated loss for `loss`.
    fn selection_score(&self, e: &Evaluation) -> f64 {
        match self.config.best_metric.as_deref() {
            None => e.main_value(),
            Some("loss") => -e.loss,
            Some(name) => e.metrics.get(name).copied().unwrap_or(f64::NAN),
        }
    }

    /// Whether a run at `step` with `evaluations_since_best` has nothing left to train: its
    /// last step taken, or its patience run out.
    pub(super) fn is_over(
        &self,
        plan: &RunPlan,
        step: usize,
        evaluations_since_best: usize,
    ) -> bool {
        step >= plan.total_steps || self.patience_ran_out(evaluations_since_best)
    }

    /// Whether early stopping ended the run before its last step (patience running out at
    /// the last step ends nothing early).
    pub(super) fn ended_early(&self, plan: &RunPlan, run: &Run<B>) -> bool {
        run.step < plan.total_steps && self.patience_ran_out(run.evaluations_since_best)
    }

    /// Whether `evaluations` in a row without improvement end the run (early stopping).
    pub(super) fn patience_ran_out(&self, evaluations: usize) -> bool {
        self.config
            .early_stopping_patience
            .is_some_and(|n| evaluations >= n)
    }

    /// Writes the current trainable tensors as the best adapter, when there is an output
    /// directory.
    pub(super) fn save_best(&self, plan: &RunPlan) -> Result<()> {
        match &self.config.output_dir {
            Some(dir) => save_adapter(
                &dir.join("best"),
                &self.backend,
                self.model,
                self.plan,
                self.base,
                plan.labels.as_deref(),
                TrainingInputs {
                    text_pairs: Some(plan.text_pairs),
                    max_len: Some(plan.max_len),
                },
            ),
            None => Ok(()),
        }
    }

    /// Writes `best/` from the run's best weights, keeping the model's current ones.
    pub(super) fn rewrite_best_adapter(
        &mut self,
        run: &Run<B>,
        plan: &RunPlan,
        source: &Path,
    ) -> Result<()> {
        let Some(best) = &run.best else {
            return Ok(());
        };
        let current: NamedTensors<B> = self.trainable().into_iter().collect();
        self.restore(&best.weights, source)?;
        self.save_best(plan)?;
        self.restore(&current, source)
    }
}

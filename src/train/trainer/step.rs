//! One optimizer step: its batch's gradients (whole or in micro-batches), the update, what
//! it logs, and a step that runs out of device memory.

use std::time::Instant;

use serde_json::json;

use super::plan::RunPlan;
use super::{Run, Trainer};
use crate::autograd::Tape;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::memory_alternatives;
use crate::nn::DropoutPlan;
use crate::rng;
use crate::tensor::Tensor;
use crate::train::micro_batches;
use crate::train::Progress;

/// The part of a step that ran out of device memory: its batch's forward and backward, or
/// the optimizer's update after them. Neither changes the model or the run when it fails.
#[derive(Clone, Copy)]
enum StepPhase {
    Batch,
    Update,
}

/// What one optimizer step measured.
pub(super) struct StepOutcome {
    pub(super) loss: f64,
    pub(super) grad_norm: f64,
    pub(super) tokens: usize,
}

impl<B: Backend> Trainer<'_, B> {
    /// One optimizer step on examples `rows`: forward, loss and backward (per micro-batch,
    /// their gradients summed), global-norm clipping, AdamW.
    pub(super) fn step(
        &mut self,
        plan: &RunPlan,
        run: &mut Run<B>,
        rows: &[usize],
        lr: f64,
    ) -> Result<StepOutcome> {
        let started = Instant::now();
        let (grads, outcome) = match self.gradients(plan, run, rows) {
            Ok(computed) => computed,
            // Nothing of the run has changed yet: the steps before this one can be kept.
            Err(Error::OutOfMemory { op, detail }) => {
                let detail = self.keep_steps_before(plan, run, rows, detail, StepPhase::Batch);
                return Err(Error::OutOfMemory { op, detail });
            }
            Err(e) => return Err(e),
        };
        // An update that runs out of device memory (the first step's new moments, or a
        // parameter's own copy where an embedder's clone shares its buffer) changes no value,
        // moment or count.
        match run
            .optimizer
            .update(&self.backend, self.model.params_mut(), &grads, lr)
        {
            Ok(()) => {}
            Err(Error::OutOfMemory { op, detail }) => {
                drop(grads);
                let detail = self.keep_steps_before(plan, run, rows, detail, StepPhase::Update);
                return Err(Error::OutOfMemory { op, detail });
            }
            Err(e) => return Err(e),
        }
        run.meter.seconds += started.elapsed().as_secs_f64();
        Ok(outcome)
    }

    /// The step's gradients (summed over its micro-batches, clipped), its loss, gradient
    /// norm and tokens. Changes nothing of the model or the run.
    pub(super) fn gradients(
        &self,
        plan: &RunPlan,
        run: &Run<B>,
        rows: &[usize],
    ) -> Result<(crate::autograd::Gradients<B>, StepOutcome)> {
        let step_number = run.step + 1;
        let step_seed = rng::mix(self.config.seed ^ 0xd5, run.step as u64);
        let mut sums = None;
        let (mut loss_value, mut tokens) = (0.0, 0);
        for (index, part) in micro_batches::split(rows, self.config.micro_batch_size).enumerate() {
            let (input, labels, part_tokens) =
                plan.train
                    .tensors(&self.backend, part, self.model.config())?;
            let labels =
                labels.ok_or_else(|| Error::invalid("train", "an unlabeled training batch"))?;
            let mut dropouts = DropoutPlan::train(
                plan.dropout.hidden,
                plan.dropout.attention,
                plan.dropout.lora,
                micro_batches::dropout_seed(step_seed, index),
            )
            .with_classifier(plan.dropout.classifier)
            .with_pooler_input(plan.dropout.pooler_input);
            let mut tape = Tape::new(self.backend.clone());
            let logits = self.model.forward(&mut tape, &input, &mut dropouts)?;
            let loss = self.model.loss(&mut tape, &logits, &labels)?;
            let part_loss = self.backend.to_f64(loss.value())?[0];
            if !part_loss.is_finite() {
                return Err(Error::NonFiniteLoss {
                    step: step_number,
                    value: part_loss,
                });
            }
            let weight = micro_batches::weight(part.len(), rows.len());
            loss_value += weight * part_loss;
            tokens += part_tokens;
            micro_batches::backward(&mut tape, &loss, weight, &mut sums)?;
        }
        let mut grads = sums
            .ok_or_else(|| Error::invalid("train", "an empty training batch"))?
            .into_map();
        let all: Vec<&Tensor<B>> = grads.values().collect();
        let norm_sq: f64 = self.backend.sum_squares_each(&all)?.into_iter().sum();
        let grad_norm = norm_sq.sqrt();
        if !grad_norm.is_finite() {
            return Err(Error::NonFiniteGradient {
                step: step_number,
                norm: grad_norm,
            });
        }
        // torch.nn.utils.clip_grad_norm_: scale by max / (norm + 1e-6) when that is below 1.
        if let Some(max) = self.config.max_grad_norm {
            let coef = max / (grad_norm + 1e-6);
            if coef < 1.0 {
                let mut all: Vec<&mut Tensor<B>> = grads.values_mut().collect();
                self.backend.scale_each(&mut all, coef)?;
            }
        }
        let outcome = StepOutcome {
            loss: loss_value,
            grad_norm,
            tokens,
        };
        Ok((crate::autograd::Gradients::from_map(grads), outcome))
    }

    /// Saves the state after the last step completed (unless it is saved), so that a resume
    /// on a larger device, or in smaller micro-batches, loses no step to a step's batch that
    /// ran out of device memory, and says so after the device's `detail`.
    fn keep_steps_before(
        &mut self,
        plan: &RunPlan,
        run: &mut Run<B>,
        rows: &[usize],
        detail: String,
        phase: StepPhase,
    ) -> String {
        let longest = rows.iter().map(|&i| plan.lengths[i]).max().unwrap_or(0);
        // In micro-batches the part, not the batch, is what the activations scale with.
        let micro = self.config.micro_batch_size;
        let part = micro.map_or(rows.len(), |m| m.min(rows.len()));
        let parts = match micro {
            Some(m) if m < rows.len() => format!(" in micro-batches of {m}"),
            _ => String::new(),
        };
        let batch = format!(
            "batch of {} examples of up to {longest} tokens{parts}",
            rows.len()
        );
        let more_memory = "--resume on a device of the same kind with more memory continues as \
                           the run would have";
        let shorter = format!("shorter sequences (a --max-len below {longest})");
        let smaller = match micro {
            Some(_) => "a smaller --micro-batch-size",
            None => "a smaller --batch-size",
        };
        let gradient_bytes: usize = self
            .model
            .params()
            .iter()
            .filter(|p| p.trainable)
            .map(|p| p.value.size_in_bytes())
            .sum();
        let (what, resume, changes) =
            match phase {
                StepPhase::Batch => {
                    (
                        format!(
                    "{detail}. This was step {}'s {batch}: its activations shrink with the \
                     sequences and the {}, its gradients ({:.1} MiB, the trained tensors' \
                     size) do not",
                    run.step + 1,
                    if part < rows.len() { "micro-batches" } else { "batch" },
                    gradient_bytes as f64 / 1048576.0
                ),
                        match part > 1 {
                            true => format!(
                        "{more_memory}; --resume with a smaller --micro-batch-size (the same \
                         batches in smaller parts) continues with the same data and schedule"
                    ),
                            false => more_memory.to_string(),
                        },
                        [
                            (longest > 1).then_some(shorter.as_str()),
                            (part > 1).then_some(smaller),
                        ]
                        .into_iter()
                        .flatten()
                        .collect(),
                    )
                }
                // AdamW's moments and the gradients it reads are the trainable tensors' size,
                // whatever the batch: neither a smaller batch nor micro-batches make room.
                StepPhase::Update => (
                    format!(
                        "{detail}. This was step {}'s optimizer update, after its {batch}: an \
                     update needs room for the trainable tensors, their gradients and AdamW's \
                     two moments, whatever the batch or micro-batch size",
                        run.step + 1
                    ),
                    more_memory.to_string(),
                    Vec::new(),
                ),
            };
        let kept = format!(
            "The state after step {}, the last step completed, is saved in last/: {resume}",
            run.step
        );
        let told = if run.step == 0 && self.config.output_dir.is_some() {
            format!("{what}. It was the run's first step: there is no state to keep")
        } else if run.saved_step == Some(run.step) {
            format!("{what}. {kept}")
        } else {
            self.save_after_out_of_memory(plan, run, what, &kept)
        };
        let frozen = self.model.has_frozen_linear_weights();
        match memory_alternatives(&self.backend, &changes, frozen) {
            Some(less) => format!("{told}. A new run needs less with {less}"),
            None => told,
        }
    }

    /// Saves the state at `run`'s step after the device ran out of memory (`what` says
    /// where), and says what a resume has: `kept` words the saved state.
    pub(super) fn save_after_out_of_memory(
        &mut self,
        plan: &RunPlan,
        run: &mut Run<B>,
        what: String,
        kept: &str,
    ) -> String {
        if self.config.output_dir.is_none() {
            return format!("{what}; without an output directory nothing is kept to resume");
        }
        let saved_before = run.saved_step;
        match self.save_and_tell(plan, run) {
            Ok(_) => format!("{what}. {kept}"),
            Err(e) => {
                // The device's advice is said once, above.
                let why = match e {
                    // Saving copies the state to the host, which may be what ran out.
                    Error::OutOfMemory { detail, .. } if detail.starts_with("host:") => {
                        "it ran out of host memory".to_string()
                    }
                    Error::OutOfMemory { .. } => "it ran out of device memory too".to_string(),
                    e => e.to_string(),
                };
                let left = super::saved_state::state_left(saved_before);
                format!(
                    "{what}. Saving the state after step {} failed as well ({why}): {left}",
                    run.step
                )
            }
        }
    }

    /// Adds a step to the meter, the progress display and, every `log_every` steps, the log.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record(
        &self,
        plan: &RunPlan,
        run: &mut Run<B>,
        outcome: &StepOutcome,
        examples: usize,
        epoch: usize,
        lr: f64,
        progress: &Progress,
    ) -> Result<()> {
        let m = &mut run.meter;
        m.steps += 1;
        m.samples += examples;
        m.tokens += outcome.tokens;
        m.window_loss += outcome.loss;
        m.window_steps += 1;
        progress.step(
            run.step,
            plan.total_steps,
            epoch + 1,
            m.window_mean(),
            m.samples_per_s(),
        );
        if !run.step.is_multiple_of(self.config.log_every.max(1)) && run.step != plan.total_steps {
            return Ok(());
        }
        let loss = m.window_mean();
        m.last_logged_loss = Some(loss);
        m.window_loss = 0.0;
        m.window_steps = 0;
        self.log(json!({
            "type": "train", "step": run.step, "epoch": epoch + 1, "loss": loss, "lr": lr,
            "grad_norm": outcome.grad_norm, "samples_per_s": m.samples_per_s(), "tokens_per_s": m.tokens_per_s(),
        }))
    }

    /// Refuses to save weights a diverged step left with NaN or infinite values, or with
    /// values finite but so large that the model's outputs overflow: a run without a dev
    /// split would otherwise never run them through the model before saving them.
    pub(super) fn check_weights_finite(&self, plan: &RunPlan, step: usize) -> Result<()> {
        if let Some((name, sum)) = self.model.non_finite_trainable(&self.backend)? {
            return Err(Error::Diverged {
                step,
                what: format!(
                    "trainable tensor `{name}` holds NaN, infinite or overflowing values \
                     (sum of squares {sum})"
                ),
            });
        }
        // The first training batch, as evaluation sees it (no dropout), in the step's
        // micro-batches: one forward pass.
        let rows: Vec<usize> = (0..self.config.batch_size.min(plan.lengths.len())).collect();
        for part in micro_batches::split(&rows, self.config.micro_batch_size) {
            let (input, _, _) = plan
                .train
                .tensors(&self.backend, part, self.model.config())?;
            let mut tape = Tape::inference(self.backend.clone());
            let logits = self
                .model
                .forward(&mut tape, &input, &mut DropoutPlan::eval())?;
            let values = self.backend.to_f64(logits.value())?;
            if let Some(why) =
                crate::train::prediction::non_finite_logit(&values, self.model.num_labels())
            {
                return Err(Error::Diverged {
                    step,
                    what: format!("on the first training batch, {why}"),
                });
            }
        }
        Ok(())
    }
}

//! The resumable state in `last/`: a run started or resumed from it, saved to it, and the
//! batch log written again on a resume.

use std::collections::BTreeMap;
use std::path::Path;

use super::best::Best;
use super::plan::{evaluations, RunPlan};
use super::{Meter, Run, Trainer};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::{HostTensor, Shape, Tensor};
use crate::train::observer::TrainEvent;
use crate::train::run_state::{self, LossWindow, RunPosition, SavedBest, STATE_FILE};
use crate::train::{AdamW, BatchLog, Progress};

/// What `last/` holds after a save that did not happen, the state saved last having been
/// `saved_before`'s step.
pub(super) fn state_left(saved_before: Option<usize>) -> String {
    match saved_before {
        Some(step) => format!("the state saved last, after step {step}, stays in last/"),
        None => "no state was saved before, so a resume starts from step 0".into(),
    }
}

/// [`state_left`], and what a resume with more memory does from it.
pub(super) fn what_a_resume_has(saved_before: Option<usize>) -> String {
    match saved_before {
        Some(_) => format!(
            "{}: a --resume with more memory takes the steps after it again and ends as the \
             run would have",
            state_left(saved_before)
        ),
        None => state_left(saved_before),
    }
}

impl<B: Backend> Trainer<'_, B> {
    /// A fresh run, or the one saved in `last/` with `resume`. Without a saved state the
    /// metrics of an earlier attempt are cleared; with one, the lines after it are.
    pub(super) fn start_or_resume(
        &mut self,
        plan: &RunPlan,
        progress: &Progress,
    ) -> Result<Run<B>> {
        let mut run = Run {
            step: 0,
            epoch: 0,
            next_batch: 0,
            optimizer: AdamW::new(self.config.weight_decay),
            best: None,
            meter: Meter::default(),
            saved_step: None,
            evaluations_since_best: 0,
            stop_requested: false,
            evaluation_due: false,
        };
        let Some(dir) = self.config.output_dir.clone() else {
            return Ok(run);
        };
        run_state::remove_interrupted_writes(&dir)?;
        let saved = match self.config.resume {
            true => run_state::load_run(&self.backend, &dir)?,
            false => None,
        };
        let Some(saved) = saved else {
            if self.config.resume {
                progress.notice(&format!(
                    "no saved state in {}: starting from step 0 (the metrics of an earlier \
                     attempt there are cleared, and its best/ replaced at the first evaluation)",
                    dir.join("last").display()
                ));
            }
            run_state::truncate_step_log(&run_state::metrics_path(&dir), 0)?;
            return Ok(run);
        };
        let state_path = dir.join("last").join(STATE_FILE);
        if saved.position.settings.is_empty() {
            return Err(Error::Format {
                path: state_path,
                detail: "this state was written by an older spafit, which recorded its settings \
                         only as a hash; finish the run with that version, or start another run"
                    .into(),
            });
        }
        let changed = run_state::changed_settings(&saved.position.settings, &plan.settings);
        if !changed.is_empty() {
            return Err(Error::Mismatch {
                path: state_path,
                detail: format!(
                    "the saved run used other settings ({}); resume with the same ones or use another output directory",
                    changed.join("; ")
                ),
            });
        }
        // Settings a run may change when it resumes (its losses then differ from those of a
        // run that kept them): the saved and the present value where they differ and steps
        // are left to train (a run already complete trains nothing more: nothing to warn of).
        let steps_left = !self.is_over(
            plan,
            saved.position.step,
            saved.position.evaluations_since_best,
        );
        let changed = |key: &str, unrecorded: Option<&str>| {
            let setting = |s: &run_state::RunSettings| {
                s.get(key)
                    .cloned()
                    .or_else(|| unrecorded.map(str::to_string))
            };
            match (setting(&saved.position.settings), setting(&plan.settings)) {
                (Some(then), Some(now)) if then != now && steps_left => Some((then, now)),
                _ => None,
            }
        };
        // A state saved before the device was recorded has none to compare.
        if let Some((then, now)) = changed(run_state::DEVICE_SETTING, None) {
            progress.notice(&format!(
                "the saved run trained on {then} and resumes on {now}: it continues from the \
                 same state, but its losses will not be bit for bit those of a run kept on one \
                 device"
            ));
        }
        // A state saved before the micro-batches were recorded ran whole batches.
        let micro_batches = Some(run_state::MICRO_BATCH_OFF);
        if let Some((then, now)) = changed(run_state::MICRO_BATCH_SETTING, micro_batches) {
            let micro = |v: String| match v.as_str() {
                run_state::MICRO_BATCH_OFF => "whole batches".to_string(),
                _ => format!("micro-batches of {v}"),
            };
            progress.notice(&format!(
                "the saved run ran {} and resumes with {}: it continues from the same state, \
                 but its steps now add their gradients in another order and draw other dropout \
                 masks, so its losses will differ from those of a run that kept one micro-batch \
                 size",
                micro(then),
                micro(now)
            ));
        }
        if let Some((then, now)) = changed(run_state::LOG_EVERY_SETTING, None) {
            progress.notice(&format!(
                "the saved run logged its training loss every {then} steps and resumes logging \
                 every {now}: metrics.jsonl's train lines change pace after step {}",
                saved.position.step
            ));
        }
        let position = saved.position;
        let batches_per_epoch = self.batches_per_epoch(plan.lengths.len());
        if position.step > plan.total_steps || position.next_batch >= batches_per_epoch {
            return Err(Error::Format {
                path: state_path,
                detail: format!(
                    "step {} / batch {} lies outside this run ({} steps, {batches_per_epoch} batches per epoch)",
                    position.step, position.next_batch, plan.total_steps
                ),
            });
        }
        if position.evaluation_due {
            // The split may hold fewer examples than a batch: the largest batch is what ran.
            let examples = plan.dev.as_ref().map_or(0, |(dev, _)| dev.len());
            progress.notice(&format!(
                "step {}'s evaluation ran out of device memory in the run in {}: it runs \
                 first, in batches of up to {} examples (--eval-batch-size {})",
                position.step,
                dir.display(),
                self.config.eval_batch_size.min(examples),
                self.config.eval_batch_size
            ));
        } else if position.step == plan.total_steps {
            progress.notice(&format!(
                "the run in {} is already complete ({} of {} steps): nothing left to train",
                dir.display(),
                position.step,
                plan.total_steps
            ));
        } else if self.patience_ran_out(position.evaluations_since_best) {
            progress.notice(&format!(
                "the run in {} stopped early at step {} of {} ({} without improvement): \
                 nothing left to train",
                dir.display(),
                position.step,
                plan.total_steps,
                evaluations(position.evaluations_since_best)
            ));
        }
        self.restore(&saved.trainable, &state_path)?;
        run.optimizer
            .set_moments(position.step as u64, saved.moments);
        (run.step, run.epoch, run.next_batch) =
            (position.step, position.epoch, position.next_batch);
        run.evaluations_since_best = position.evaluations_since_best;
        run.evaluation_due = position.evaluation_due;
        let window = &position.loss_window;
        run.meter.window_loss = f64::from_bits(window.sum_bits);
        run.meter.window_steps = window.steps;
        run.meter.last_logged_loss = window.last_logged_bits.map(f64::from_bits);
        if let (Some(best), Some(weights)) = (&position.best, saved.best_weights) {
            run.best = Some(Best {
                step: best.step,
                evaluation: best.evaluation(),
                weights,
            });
            // A kill between writing `best/` and the state can leave `best/` ahead of the
            // state; the state is the truth.
            self.rewrite_best_adapter(&run, plan, &state_path)?;
        }
        run_state::truncate_step_log(&run_state::metrics_path(&dir), run.step)?;
        run.saved_step = Some(run.step);
        Ok(run)
    }

    /// Saves the state of a run its observer stopped, unless it was saved at that step.
    pub(super) fn save_where_stopped(&mut self, plan: &RunPlan, run: &mut Run<B>) -> Result<()> {
        if self.config.output_dir.is_none() || run.saved_step == Some(run.step) {
            return Ok(());
        }
        // The run ends here: what the observer answers changes nothing.
        self.save_and_tell(plan, run).map(|_| ())
    }

    /// Saves the resumable state at `run`'s step and tells the observer: whether it asked
    /// the run to stop.
    pub(super) fn save_and_tell(&mut self, plan: &RunPlan, run: &mut Run<B>) -> Result<bool> {
        self.save_run(plan, run)?;
        run.saved_step = Some(run.step);
        Ok(self.tell(TrainEvent::Saved { step: run.step }))
    }

    /// Publishes the resumable state in `last/`, when there is an output directory.
    pub(super) fn save_run(&self, plan: &RunPlan, run: &Run<B>) -> Result<()> {
        let Some(dir) = &self.config.output_dir else {
            return Ok(());
        };
        self.check_weights_finite(plan, run.step)?;
        let position = RunPosition {
            step: run.step,
            epoch: run.epoch,
            next_batch: run.next_batch,
            total_steps: plan.total_steps,
            best: run
                .best
                .as_ref()
                .map(|b| SavedBest::new(b.step, &b.evaluation)),
            settings: plan.settings.clone(),
            evaluations_since_best: run.evaluations_since_best,
            evaluation_due: run.evaluation_due,
            loss_window: LossWindow {
                sum_bits: run.meter.window_loss.to_bits(),
                steps: run.meter.window_steps,
                last_logged_bits: run.meter.last_logged_loss.map(f64::to_bits),
            },
        };
        run_state::save_run(
            &self.backend,
            dir,
            &position,
            &self.trainable(),
            run.optimizer.moments(),
            run.best.as_ref().map(|b| &b.weights),
        )
    }

    /// Sets every trainable tensor from `saved` (read from `source`, named in errors).
    pub(super) fn restore<T: SavedValue<B>>(
        &mut self,
        saved: &BTreeMap<String, T>,
        source: &Path,
    ) -> Result<()> {
        let backend = &self.backend;
        for p in self.model.params_mut().into_iter().filter(|p| p.trainable) {
            let t = saved.get(&p.name).ok_or_else(|| Error::Mismatch {
                path: source.to_path_buf(),
                detail: format!("no saved value for trainable tensor `{}`", p.name),
            })?;
            if t.saved_shape() != p.value.shape() {
                return Err(Error::Mismatch {
                    path: source.to_path_buf(),
                    detail: format!(
                        "`{}` was saved as {} but the model has {}",
                        p.name,
                        t.saved_shape(),
                        p.value.shape()
                    ),
                });
            }
            p.value = t.on(backend)?;
        }
        Ok(())
    }

    /// SHA-256 of the trainable tensors' names and values, tensor by tensor. The values as
    /// f32, what every backend but the f64 reference stores: a run may resume on another
    /// device or precision, and its draws and files round the same there. DoRA's magnitudes
    /// are left out: they start as the norms of the base's rows (which the base's hash
    /// covers), and in bf16 those are the norms of the rows rounded to bf16, so they would
    /// refuse a resume in another precision that the rest allows.
    pub(super) fn trainable_digest(&self) -> Result<String> {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        let trainable = self.trainable().into_iter();
        for (name, t) in trainable.filter(|(n, _)| !n.ends_with(".lora_magnitude_vector")) {
            hash.update((name.len() as u64).to_le_bytes());
            hash.update(name.as_bytes());
            for chunk in self.backend.to_f64(&t)?.chunks(4096) {
                let bytes: Vec<u8> = chunk
                    .iter()
                    .flat_map(|&v| (v as f32).to_le_bytes())
                    .collect();
                hash.update(&bytes);
            }
        }
        Ok(crate::adapter::hex(&hash.finalize())[..16].to_string())
    }

    pub(super) fn trainable(&self) -> Vec<(String, Tensor<B>)> {
        self.model
            .params()
            .into_iter()
            .filter(|p| p.trainable)
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect()
    }

    /// Writes the steps up to `step` that a resumed run's log does not hold (a file starts
    /// empty): the batches follow from the seed and the settings a resume keeps, so the log
    /// becomes the one an uninterrupted run writes, whatever the first attempt logged.
    pub(super) fn log_batches_again(
        &self,
        log: &mut BatchLog,
        plan: &RunPlan,
        step: usize,
    ) -> Result<()> {
        let per_epoch = self.batches_per_epoch(plan.lengths.len());
        let mut epoch_batches: Option<(usize, Vec<Vec<usize>>)> = None;
        for s in log.steps_logged() + 1..=step {
            let (epoch, index) = ((s - 1) / per_epoch, (s - 1) % per_epoch);
            if epoch_batches.as_ref().is_none_or(|(e, _)| *e != epoch) {
                epoch_batches = Some((epoch, self.epoch_batches(plan, epoch)));
            }
            if let Some((_, batches)) = &epoch_batches {
                log.write(s, epoch, &batches[index], &plan.train)?;
            }
        }
        Ok(())
    }
}

/// A trainable tensor's saved value, which the trainer restores: on the
/// backend (the state a run resumes from, the weights it trains now) or on the host (its
/// best weights).
pub(crate) trait SavedValue<B: Backend> {
    /// The shape it was saved with.
    fn saved_shape(&self) -> &Shape;
    /// The value as a tensor on `backend`.
    fn on(&self, backend: &B) -> Result<Tensor<B>>;
}

impl<B: Backend> SavedValue<B> for Tensor<B> {
    fn saved_shape(&self) -> &Shape {
        self.shape()
    }

    fn on(&self, _: &B) -> Result<Tensor<B>> {
        Ok(self.clone())
    }
}

impl<B: Backend> SavedValue<B> for HostTensor {
    fn saved_shape(&self) -> &Shape {
        self.shape()
    }

    fn on(&self, backend: &B) -> Result<Tensor<B>> {
        self.upload(backend)
    }
}

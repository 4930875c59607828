use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use super::evaluate::evaluate_with_logit_check;
use super::micro_batches;
use super::observer::{Observer, StepReport, TrainEvent};
use super::run_lock::{lock_run_dirs_around, RunLock};
use super::run_state::{
    self, LossWindow, NamedTensors, RunInputs, RunPosition, RunSettings, SavedBest, STATE_FILE,
};
use super::schedule::warmup_steps;
use super::{AdamW, BatchLog, EncodedDataset, Evaluation, LrSchedule, Progress, ScheduleKind};
use crate::adapter::{save_adapter, TrainingInputs};
use crate::autograd::Tape;
use crate::backend::Backend;
use crate::checkpoint::WeightsFile;
use crate::data::{training_batches, Dataset, GlueTask};
use crate::error::{Error, Result};
use crate::model::{check_batch_memory, BertClassifier, Pass};
use crate::nn::DropoutPlan;
use crate::peft::PeftPlan;
use crate::rng;
use crate::tensor::Tensor;
use crate::text::TextTokenizer;

/// Hyper-parameters and bookkeeping of a training run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Gradient accumulation: run each step's `batch_size` examples through the model in
    /// micro-batches of at most this many, and sum their gradients (each weighted by its
    /// share of the batch) before clipping and the optimizer step. The step is the batch's
    /// step with the activations of one micro-batch at a time; only the order of the
    /// floating-point sums and the dropout masks (each micro-batch draws its own) differ.
    /// A micro-batch's gradients join the sums as its backward produces them
    /// ([`crate::autograd::Tape::backward_scaled_into`]), never all held beside them.
    /// `None` (or `batch_size`) runs each batch whole. A resumed run may change it (noted).
    pub micro_batch_size: Option<usize>,
    /// Examples per evaluation batch.
    pub eval_batch_size: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// AdamW decoupled weight decay (none on biases and LayerNorm).
    pub weight_decay: f64,
    /// Fraction of the steps spent warming up (rounded up to whole steps).
    pub warmup_ratio: f64,
    /// Warmup steps; given, they replace `warmup_ratio`'s.
    pub warmup_steps: Option<usize>,
    /// What the learning rate does after warmup (linear decay to 0 by default).
    pub lr_schedule: ScheduleKind,
    /// Early stopping: the run ends once this many evaluations in a row have not improved
    /// on the best one (which `best/` keeps). Needs a dev set; `None` trains every step.
    pub early_stopping_patience: Option<usize>,
    /// The dev metric that picks the best evaluation (`best/`, early stopping): `loss`
    /// (lowest), or one the task reports (`accuracy`, `f1`, `matthews_correlation`,
    /// `pearson`, `spearman`, and for multi-label tasks `micro_f1`, `macro_f1`,
    /// `subset_accuracy`: highest). `None`: the task's main metric.
    pub best_metric: Option<String>,
    /// Global gradient-norm clip; `None` disables clipping.
    pub max_grad_norm: Option<f64>,
    /// Seed of batch order, dropout and fresh weights.
    pub seed: u64,
    /// Hidden-state dropout; `None` takes the checkpoint's `hidden_dropout_prob`. The pooled
    /// output before the classifier drops with this rate too, unless config.json sets
    /// `classifier_dropout` (as in transformers).
    pub hidden_dropout: Option<f64>,
    /// Attention dropout; `None` takes the checkpoint's `attention_probs_dropout_prob`.
    pub attention_dropout: Option<f64>,
    /// Also evaluate every this many steps (always at each epoch end). Without an evaluation
    /// set these steps only save the state in the output directory, as `save_every` does
    /// (refused without one).
    pub eval_every: Option<usize>,
    /// Also save the resumable state every this many steps (it is always saved after an
    /// evaluation); a run killed between saves repeats the steps since the last one.
    pub save_every: Option<usize>,
    /// Write a `metrics.jsonl` train line every this many steps.
    pub log_every: usize,
    /// Length buckets span this many batches.
    pub bucket_batches: usize,
    /// Train for at most this many steps in total (the schedule spans them).
    pub max_steps: Option<usize>,
    /// Stop after this many steps of this call (counted from where a resumed run starts), as
    /// if interrupted; a later call with `resume` continues.
    pub stop_after_steps: Option<usize>,
    /// Where `metrics.jsonl`, `best/` and `last/` go; nothing is written without it. The
    /// run holds a lock there ([`crate::train::lock_run_dir`]) while it trains; a caller that
    /// holds it already passes it with [`Trainer::holding`] (locked again, it is refused as
    /// another run's).
    pub output_dir: Option<PathBuf>,
    /// Continue the run saved in `output_dir/last`.
    pub resume: bool,
    /// Show a progress bar on stderr, with a line per evaluation.
    pub progress: bool,
    /// Also print notices on stderr as they happen, without a progress bar (they are always
    /// in [`TrainReport::notices`], which a run that ends in an error does not return).
    /// Under either flag the run opens with a line on what trains (the method, its
    /// trainable parameters, the batches, and the step a resume starts at), printed once the
    /// settings and any saved state are accepted and not kept among the notices.
    pub notices_on_stderr: bool,
    /// GLUE task, for its metrics.
    pub task: Option<GlueTask>,
    /// Write each step's examples here (see [`BatchLog`]), so another trainer can replay them.
    pub batch_log: Option<PathBuf>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 1,
            batch_size: 32,
            micro_batch_size: None,
            eval_batch_size: 64,
            learning_rate: 5e-4,
            weight_decay: 0.01,
            warmup_ratio: 0.06,
            warmup_steps: None,
            lr_schedule: ScheduleKind::Linear,
            early_stopping_patience: None,
            best_metric: None,
            max_grad_norm: Some(1.0),
            seed: 42,
            hidden_dropout: None,
            attention_dropout: None,
            eval_every: None,
            save_every: None,
            log_every: 10,
            bucket_batches: 50,
            max_steps: None,
            stop_after_steps: None,
            output_dir: None,
            resume: false,
            progress: false,
            notices_on_stderr: false,
            task: None,
            batch_log: None,
        }
    }
}

impl TrainConfig {
    /// Why `output_dir` is not a run's to write in: it holds a model or an adapter.
    fn foreign_output_dir(&self) -> Option<String> {
        let dir = self.output_dir.as_deref()?;
        let found = crate::adapter::model_or_adapter_file_in(dir)?;
        Some(format!(
            "the output directory {} holds a model or an adapter ({}): a run writes best/, \
             last/ and metrics.jsonl; give it a folder of its own",
            dir.display(),
            found.display()
        ))
    }

    /// Refuses settings that cannot give a meaningful run, whatever the data: what a caller
    /// can check before loading anything (the trainer checks them again).
    pub fn check(&self) -> Result<()> {
        let c = self;
        let refuse = |detail: String| Err(Error::invalid("train", detail));
        if c.batch_size == 0 || c.epochs == 0 || c.eval_batch_size == 0 {
            return refuse("batch sizes and epochs must be positive".into());
        }
        if let Some(size) = c.micro_batch_size {
            micro_batches::check_size("train", size, c.batch_size)?;
        }
        if c.log_every == 0 || c.bucket_batches == 0 || c.stop_after_steps == Some(0) {
            return refuse(
                "log_every (--log-every), bucket_batches and stop_after_steps count steps or \
                 batches: give at least 1"
                    .into(),
            );
        }
        if c.early_stopping_patience == Some(0) {
            return refuse(
                "early stopping after 0 evaluations without improvement \
                 (--early-stopping-patience): give at least 1"
                    .into(),
            );
        }
        if c.eval_every == Some(0) || c.save_every == Some(0) {
            return refuse(
                "evaluating or saving every 0 steps (--eval-every / --save-every): give a positive interval"
                    .into(),
            );
        }
        if !(c.learning_rate >= 0.0 && c.learning_rate.is_finite()) {
            return refuse(format!(
                "learning rate {} (--lr) must be finite and ≥ 0",
                c.learning_rate
            ));
        }
        if !(0.0..=1.0).contains(&c.warmup_ratio) {
            return refuse(format!(
                "warmup ratio {} (--warmup-ratio) must be in [0, 1]",
                c.warmup_ratio
            ));
        }
        if c.max_steps == Some(0) {
            return refuse("max_steps 0 (--max-steps): give a positive number of steps".into());
        }
        if let Some(norm) = c.max_grad_norm.filter(|n| !(n.is_finite() && *n > 0.0)) {
            return refuse(format!(
                "gradient clipping at norm {norm} (--max-grad-norm): give a positive finite \
                 norm, or none for no clipping (--max-grad-norm 0)"
            ));
        }
        if !(c.weight_decay.is_finite() && c.weight_decay >= 0.0) {
            return refuse(format!(
                "weight decay {} (--weight-decay) must be finite and ≥ 0",
                c.weight_decay
            ));
        }
        for (name, rate) in [
            ("hidden dropout", c.hidden_dropout),
            ("attention dropout", c.attention_dropout),
        ] {
            // Checked here, not at the first step: by then the output folder is locked and
            // a batch log started.
            if let Some(p) = rate.filter(|p| !(0.0..1.0).contains(p)) {
                return refuse(format!("{name} {p} must be in [0, 1)"));
            }
        }
        if c.save_every.is_some() && c.output_dir.is_none() {
            return refuse(
                "saving every N steps (--save-every) needs an output directory (--output): \
                 nothing is saved without one"
                    .into(),
            );
        }
        if let Some(problem) = c.foreign_output_dir() {
            return refuse(problem);
        }
        match &c.output_dir {
            None if c.resume => return refuse("--resume needs an output directory".into()),
            Some(dir) if dir.exists() && !dir.is_dir() => {
                return refuse(format!("the output directory {} is a file", dir.display()))
            }
            Some(dir) if !c.resume => {
                let earlier = run_state::run_outputs(dir);
                let has_state = earlier.iter().any(|name| name.starts_with("last/"));
                if !earlier.is_empty() {
                    return refuse(match has_state {
                        true => format!(
                            "{} holds an earlier run ({}): resume it with --resume, or use \
                             another output directory",
                            dir.display(),
                            earlier.join(", ")
                        ),
                        // A run killed before its first state save, or one whose state was removed:
                        // nothing to resume from, so --resume would start over in its place.
                        false => format!(
                            "{} holds an earlier run ({}) without a saved state (last/): \
                             --resume would start it over from step 0 and replace them; use \
                             another output directory (or --resume to start over there)",
                            dir.display(),
                            earlier.join(", ")
                        ),
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }
}

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
    /// Mean training loss of the last logging window.
    pub last_loss: f64,
    /// The best evaluation and its step; the model ends with those weights.
    pub best: Option<(usize, Evaluation)>,
    /// The tokens per example the texts were cut to (the tokenizer's `max_len`).
    pub max_len: usize,
    /// Whether the training examples were text pairs.
    pub text_pairs: bool,
    /// Whether early stopping ended the run before its last step
    /// ([`TrainConfig::early_stopping_patience`]).
    pub early_stopped: bool,
    /// What the run had to tell: a resume that found no saved state, a run already complete,
    /// a change of device, a step limit the epochs reach first, a learning rate of 0, a
    /// micro-batch size that splits no batch.
    pub notices: Vec<String>,
    /// Whether the observer ([`Trainer::observe`]) stopped the run before its last step;
    /// with an output directory, its state at that step is in `last/` to resume from.
    pub stopped_by_observer: bool,
}

impl TrainReport {
    /// What [`save_adapter`] records of the training inputs, as this run saw them: a program
    /// that saves the trained model itself passes this instead of restating it.
    pub fn training_inputs(&self) -> TrainingInputs {
        TrainingInputs {
            text_pairs: Some(self.text_pairs),
            max_len: Some(self.max_len),
        }
    }
}

/// How many evaluations a run of `total` steps takes: at each epoch's end (every
/// `per_epoch` steps), every `eval_every` steps, and at the last step, each step once.
fn evaluations_in(total: usize, per_epoch: usize, eval_every: Option<usize>) -> usize {
    let multiples = |n: usize| total.checked_div(n).unwrap_or(0);
    let epoch_ends = multiples(per_epoch);
    let (every, both) = match eval_every {
        Some(e) => {
            let lcm = per_epoch
                .checked_div(gcd(per_epoch, e))
                .and_then(|q| q.checked_mul(e));
            (multiples(e), lcm.map_or(0, multiples))
        }
        None => (0, 0),
    };
    let last_counted = (per_epoch > 0 && total.is_multiple_of(per_epoch))
        || eval_every.is_some_and(|e| e > 0 && total.is_multiple_of(e));
    epoch_ends + every - both + usize::from(total > 0 && !last_counted)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `n evaluations`, in the singular for one.
fn evaluations(n: usize) -> String {
    match n {
        1 => "1 evaluation".into(),
        n => format!("{n} evaluations"),
    }
}

/// Dropout probabilities of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct DropoutRates {
    pub hidden: f64,
    pub attention: f64,
    pub lora: f64,
    pub classifier: f64,
}

/// What stays fixed for a whole run.
struct RunPlan {
    train: EncodedDataset,
    /// The evaluation split and its name.
    dev: Option<(EncodedDataset, String)>,
    lengths: Vec<usize>,
    total_steps: usize,
    schedule: LrSchedule,
    dropout: DropoutRates,
    settings: RunSettings,
    labels: Option<Vec<String>>,
    /// Whether the examples are text pairs (recorded with the adapter).
    text_pairs: bool,
    /// The tokenizer's cut (recorded with the adapter).
    max_len: usize,
}

/// The best evaluation so far and the weights that gave it.
struct Best<B: Backend> {
    step: usize,
    evaluation: Evaluation,
    weights: NamedTensors<B>,
}

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
    best: Option<Best<B>>,
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

/// The part of a step that ran out of device memory: its batch's forward and backward, or
/// the optimizer's update after them. Neither changes the model or the run when it fails.
#[derive(Clone, Copy)]
enum StepPhase {
    Batch,
    Update,
}

/// What one optimizer step measured.
struct StepOutcome {
    loss: f64,
    grad_norm: f64,
    tokens: usize,
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

    /// Writes the steps up to `step` that a resumed run's log does not hold (a file starts
    /// empty): the batches follow from the seed and the settings a resume keeps, so the log
    /// becomes the one an uninterrupted run writes, whatever the first attempt logged.
    fn log_batches_again(&self, log: &mut BatchLog, plan: &RunPlan, step: usize) -> Result<()> {
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

    /// The batches of epoch `epoch`, from the seed: what the run trains on, and what a
    /// resumed run's batch log writes again.
    fn epoch_batches(&self, plan: &RunPlan, epoch: usize) -> Vec<Vec<usize>> {
        let c = &self.config;
        training_batches(
            &plan.lengths,
            c.batch_size,
            c.bucket_batches,
            rng::mix(c.seed, epoch as u64),
        )
    }

    /// Optimizer steps in an epoch of `examples` training examples.
    fn batches_per_epoch(&self, examples: usize) -> usize {
        examples.div_ceil(self.config.batch_size)
    }

    /// Refuses settings that cannot give a meaningful run, before any work.
    fn check_settings(&self, train: &Dataset, dev: Option<&Dataset>) -> Result<()> {
        self.config.check()?;
        let refuse = |detail: String| Err(Error::invalid("train", detail));
        if let Some(d) = dev.filter(|d| d.kind != train.kind) {
            return refuse(format!(
                "{} and {} have different label spaces",
                train.name, d.name
            ));
        }
        if let Some(d) = dev.filter(|d| d.is_empty()) {
            return refuse(format!("the evaluation set {} has no examples", d.name));
        }
        if let Some(name) = self.config.best_metric.as_deref() {
            let Some(dev) = dev else {
                return Err(Error::invalid(
                    "--best-metric",
                    format!("`{name}`: there is no dev set to evaluate (give --dev-file)"),
                ));
            };
            crate::metrics::check_best_metric(name, self.config.task, &dev.kind, &dev.name)?;
        }
        if let (Some(n), None) = (self.config.early_stopping_patience, dev) {
            return refuse(format!(
                "early stopping after {n} evaluations without improvement \
                 (--early-stopping-patience) needs a dev set to evaluate (--dev-file)"
            ));
        }
        if train.is_empty() {
            return refuse(format!("the training set {} has no examples", train.name));
        }
        if let Some((count, first)) = train.unlabeled() {
            return refuse(format!(
                "the training set {} has {count} example(s) without a label, the first at \
                 {first}",
                train.name
            ));
        }
        // The data's own problems first: they are named by example, and a one-class task
        // would otherwise be reported as a mismatch with the head.
        train.check_targets("train")?;
        if let Some(mixed) = [Some(train), dev]
            .into_iter()
            .flatten()
            .find_map(Dataset::mixed_inputs)
        {
            return refuse(mixed);
        }
        if let Some(d) = dev.filter(|d| d.has_text_pairs() != train.has_text_pairs()) {
            let kind = |d: &Dataset| match d.has_text_pairs() {
                true => "text pairs",
                false => "single texts",
            };
            return refuse(format!(
                "the evaluation set {} holds {}, the training set {} {}: the model would be \
                 evaluated on inputs of another kind than it learns from",
                d.name,
                kind(d),
                train.name,
                kind(train)
            ));
        }
        if let Some(mismatch) = self
            .config
            .task
            .and_then(|t| t.label_space_mismatch(&train.kind, &train.name))
        {
            return refuse(format!(
                "{mismatch}: the task's metrics, which pick best/, do not apply (give the data \
                 the task's label space, in its order, or no task)"
            ));
        }
        if dev.is_none() && self.config.eval_every.is_some() && self.config.output_dir.is_none() {
            return refuse(
                "eval_every without an evaluation set only saves the state, and there is no \
                 output directory to save it in"
                    .into(),
            );
        }
        if train.kind.num_labels() != self.model.num_labels() {
            return refuse(format!(
                "the training data needs a head of {} output(s) (one per class, one for a \
                 regression) but the model's has {}",
                train.kind.num_labels(),
                self.model.num_labels()
            ));
        }
        if let Some((d, (count, first))) = dev.and_then(|d| Some((d, d.unlabeled()?))) {
            return refuse(format!(
                "the evaluation set {} has {count} example(s) without a label, the first at \
                 {first}",
                d.name
            ));
        }
        dev.map_or(Ok(()), |d| d.check_targets("train"))
    }

    /// Tokenizes the data and fixes the schedule, dropout and the run's fingerprint.
    fn plan_run(
        &self,
        tokenizer: &TextTokenizer,
        train: &Dataset,
        dev: Option<&Dataset>,
        progress: &Progress,
    ) -> Result<RunPlan> {
        let c = &self.config;
        let train_data = EncodedDataset::new(tokenizer, train)?;
        let dev = match dev {
            Some(d) => Some((EncodedDataset::new(tokenizer, d)?, d.name.clone())),
            None => None,
        };
        let lengths = train_data.lengths();
        let longest = lengths.iter().copied().max().unwrap_or(0);
        // A step holds the activations of one micro-batch at a time.
        let widest = c
            .micro_batch_size
            .unwrap_or(c.batch_size)
            .min(lengths.len());
        let cfg = self.model.config();
        let pass = Pass::Training {
            layers_on_tape: self.model.layers_on_tape(),
        };
        check_batch_memory(&self.backend, cfg, widest, longest, pass, "train")?;
        // The dev set too, now: a dev example too long for the model would otherwise stop
        // the run at its first evaluation, after an epoch of training.
        if let Some((dev_data, _)) = &dev {
            let dev_lengths = dev_data.lengths();
            let dev_longest = dev_lengths.iter().copied().max().unwrap_or(0);
            let dev_widest = c.eval_batch_size.min(dev_lengths.len());
            check_batch_memory(
                &self.backend,
                cfg,
                dev_widest,
                dev_longest,
                Pass::Inference,
                "train",
            )?;
        }
        let per_epoch = self.batches_per_epoch(lengths.len());
        let total_steps = match (per_epoch.checked_mul(c.epochs), c.max_steps) {
            (Some(steps), Some(m)) if steps < m => {
                progress.notice(&format!(
                    "the run ends after {steps} step{}, before the step limit of {m} \
                     (--max-steps): {} epoch(s) of {per_epoch} batches; give more epochs \
                     (--epochs) to reach it",
                    if steps == 1 { "" } else { "s" },
                    c.epochs
                ));
                steps
            }
            (Some(_), Some(m)) => m,
            (Some(steps), None) => steps,
            (None, Some(m)) => m,
            (None, None) => {
                return Err(Error::invalid(
                    "train",
                    format!(
                        "{} epochs of {per_epoch} steps are more steps than can be counted; \
                         give fewer epochs or a step limit (--max-steps)",
                        c.epochs
                    ),
                ))
            }
        };
        if c.learning_rate == 0.0 {
            progress.notice(
                "the learning rate is 0 (--lr): the run evaluates and saves, but no weight \
                 changes",
            );
        }
        let hidden = c.hidden_dropout.unwrap_or(cfg.hidden_dropout_prob);
        let dropout = DropoutRates {
            hidden,
            attention: c
                .attention_dropout
                .unwrap_or(cfg.attention_probs_dropout_prob),
            lora: self.plan.lora_dropout(),
            classifier: cfg.classifier_dropout_or(hidden),
        };
        let shapes: Vec<(String, Vec<usize>)> = self
            .trainable()
            .into_iter()
            .map(|(name, t)| (name, t.dims().to_vec()))
            .collect();
        let schedule = LrSchedule {
            kind: c.lr_schedule,
            peak: c.learning_rate,
            warmup: c
                .warmup_steps
                .unwrap_or_else(|| warmup_steps(c.warmup_ratio, total_steps)),
            total: total_steps,
        };
        if schedule.warmup >= total_steps && c.learning_rate > 0.0 {
            progress.notice(&format!(
                "the warmup of {} spans the whole run of {total_steps}: the learning rate \
                 never reaches {:e} (--lr); give fewer warmup steps (--warmup-steps, \
                 --warmup-ratio)",
                match schedule.warmup {
                    1 => "1 step".to_string(),
                    n => format!("{n} steps"),
                },
                c.learning_rate
            ));
        }
        if let Some(patience) = c.early_stopping_patience.filter(|_| dev.is_some()) {
            let evaluations = evaluations_in(total_steps, per_epoch, c.eval_every);
            if evaluations <= patience {
                progress.notice(&format!(
                    "early stopping after {} without improvement cannot happen: the run \
                     evaluates {evaluations} time{} (at epoch ends and every --eval-every \
                     steps); evaluate more often or lower --early-stopping-patience",
                    self::evaluations(patience),
                    if evaluations == 1 { "" } else { "s" }
                ));
            }
        }
        let settings = run_state::run_settings(
            c,
            &RunInputs {
                total_steps,
                dropout,
                trainable_shapes: &shapes,
                lora_alpha: self.plan.lora.as_ref().map(|l| l.alpha),
                plan: run_state::describe_plan(self.plan),
                base_sha256: self.base.sha256(),
                // Only a run that saves its state is ever compared with it.
                starting_weights: match c.output_dir {
                    Some(_) => self.trainable_digest()?,
                    None => "not saved".into(),
                },
                train: &train_data,
                dev: dev.as_ref().map(|(d, _)| d),
                max_len: tokenizer.max_len(),
                device: self.backend.name(),
                best_metric: {
                    let name = self.config.best_metric.clone().unwrap_or_else(|| {
                        crate::metrics::main_metric_name(c.task, &train.kind).to_string()
                    });
                    // Another threshold scores other sets, and may pick another best: a
                    // setting of its own where it is not the default.
                    match self.model.decision_threshold() {
                        t if train.kind.is_multi_label() && t != 0.5 => {
                            format!("{name} (decision threshold {t})")
                        }
                        _ => name,
                    }
                },
            },
        );
        Ok(RunPlan {
            train: train_data,
            dev,
            lengths,
            total_steps,
            schedule,
            dropout,
            settings,
            labels: train.kind.class_names().map(<[String]>::to_vec),
            text_pairs: train.has_text_pairs(),
            max_len: tokenizer.max_len(),
        })
    }

    /// Says what is about to train, once the settings and any saved state have been
    /// accepted (a refused resume prints only its refusal), and notes a micro-batch size
    /// that splits no batch.
    fn announce(&self, examples: usize, step: usize, epoch: usize, progress: &Progress) {
        let c = &self.config;
        let in_use = micro_batches::in_use(c.micro_batch_size, c.batch_size, examples);
        if let (Some(size), None) = (c.micro_batch_size, in_use) {
            let whole = match size >= c.batch_size {
                true => format!("the batch of {}", c.batch_size),
                false => format!("the {examples} training examples"),
            };
            progress.notice(&format!(
                "--micro-batch-size {size} is not below {whole}: every step runs its batch whole"
            ));
        }
        let micro = in_use.map_or_else(String::new, |m| format!(" in micro-batches of {m}"));
        let resuming = match step {
            0 => String::new(),
            _ => format!(", resuming at step {step} (epoch {})", epoch + 1),
        };
        // Fractions of the depth resolve to layers by rounding: the line says which.
        let method = match self.plan.boundaries {
            Some((n1, n2)) => format!(
                "{} with N1 = {n1}, N2 = {n2} of {} layers",
                self.plan.method,
                self.plan.strata.len()
            ),
            None => self.plan.method.to_string(),
        };
        progress.headline(&format!(
            "training {method} ({} trainable parameters) on {examples} examples, {} epoch(s), \
             batch {}{micro}, lr {:e}{resuming}",
            self.model.trainable_parameter_count(),
            c.epochs,
            c.batch_size,
            c.learning_rate
        ));
    }

    /// A fresh run, or the one saved in `last/` with `resume`. Without a saved state the
    /// metrics of an earlier attempt are cleared; with one, the lines after it are.
    fn start_or_resume(&mut self, plan: &RunPlan, progress: &Progress) -> Result<Run<B>> {
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
            progress.notice(&format!(
                "step {}'s evaluation ran out of device memory in the run in {}: it runs \
                 first, in batches of up to {} examples (--eval-batch-size)",
                position.step,
                dir.display(),
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
    fn save_where_stopped(&mut self, plan: &RunPlan, run: &mut Run<B>) -> Result<()> {
        if self.config.output_dir.is_none() || run.saved_step == Some(run.step) {
            return Ok(());
        }
        // The run ends here: what the observer answers changes nothing.
        self.save_and_tell(plan, run).map(|_| ())
    }

    /// Saves the resumable state at `run`'s step and tells the observer: whether it asked
    /// the run to stop.
    fn save_and_tell(&mut self, plan: &RunPlan, run: &mut Run<B>) -> Result<bool> {
        self.save_run(plan, run)?;
        run.saved_step = Some(run.step);
        Ok(self.tell(TrainEvent::Saved { step: run.step }))
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
    fn is_over(&self, plan: &RunPlan, step: usize, evaluations_since_best: usize) -> bool {
        step >= plan.total_steps || self.patience_ran_out(evaluations_since_best)
    }

    /// Whether early stopping ended the run before its last step (patience running out at
    /// the last step ends nothing early).
    fn ended_early(&self, plan: &RunPlan, run: &Run<B>) -> bool {
        run.step < plan.total_steps && self.patience_ran_out(run.evaluations_since_best)
    }

    /// Whether `evaluations` in a row without improvement end the run (early stopping).
    fn patience_ran_out(&self, evaluations: usize) -> bool {
        self.config
            .early_stopping_patience
            .is_some_and(|n| evaluations >= n)
    }

    /// One optimizer step on examples `rows`: forward, loss and backward (per micro-batch,
    /// their gradients summed), global-norm clipping, AdamW.
    fn step(
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
        // An update that runs out of device memory (new moments, or a parameter's own copy
        // where the kept best weights share its buffer) changes no value, moment or count.
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
    fn gradients(
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
            .with_classifier(plan.dropout.classifier);
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
        let batch = format!("batch of {} examples of up to {longest} tokens", rows.len());
        let what = match phase {
            StepPhase::Batch => format!("{detail}. This was step {}'s {batch}", run.step + 1),
            StepPhase::Update => format!(
                "{detail}. This was step {}'s optimizer update, after its {batch}",
                run.step + 1
            ),
        };
        let resume = "--resume on a device of the same kind with more memory continues as the \
                      run would have; \
                      --resume with a smaller --micro-batch-size (the same batches in smaller \
                      parts) continues with the same data and schedule";
        let kept = format!(
            "The state after step {}, the last step completed, is saved in last/: {resume}",
            run.step
        );
        if run.step == 0 && self.config.output_dir.is_some() {
            return format!("{what}, the first: there is no step to keep");
        }
        if run.saved_step == Some(run.step) {
            return format!("{what}. {kept}");
        }
        self.save_after_out_of_memory(plan, run, what, &kept)
    }

    /// Saves the state at `run`'s step after the device ran out of memory (`what` says
    /// where), and says what a resume has: `kept` words the saved state.
    fn save_after_out_of_memory(
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
                    Error::OutOfMemory { .. } => "it ran out of device memory too".to_string(),
                    e => e.to_string(),
                };
                let left = match saved_before {
                    Some(step) => {
                        format!("the state saved last, after step {step}, stays in last/")
                    }
                    None => "no state was saved before, so a resume starts from step 0".into(),
                };
                format!(
                    "{what}. Saving the state after step {} failed as well ({why}): {left}",
                    run.step
                )
            }
        }
    }

    /// Adds a step to the meter, the progress display and, every `log_every` steps, the log.
    #[allow(clippy::too_many_arguments)]
    fn record(
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

    /// Evaluates at epoch ends and every `eval_every` steps, and saves the resumable state
    /// then and every `save_every` steps.
    fn evaluate_and_save_when_due(
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
            run.stop_requested |= self.save_and_tell(plan, run)?;
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
        ) {
            Ok(evaluated) => evaluated,
            Err(Error::OutOfMemory { op, detail }) => {
                let detail = self.keep_step_without_evaluation(plan, run, split, detail);
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
            run.best = Some(Best {
                step: run.step,
                evaluation: eval.clone(),
                weights: self.trainable().into_iter().collect(),
            });
            self.save_best(plan)?;
        }
        run.stop_requested |= self.tell(TrainEvent::Evaluation {
            step: run.step,
            evaluation: &eval,
            best: improved,
        });
        Ok(())
    }

    /// Saves the state at `run`'s step with its evaluation still due, so that a resume with
    /// a smaller evaluation batch loses no step, and says so after the device's `detail`.
    fn keep_step_without_evaluation(
        &mut self,
        plan: &RunPlan,
        run: &mut Run<B>,
        split: &str,
        detail: String,
    ) -> String {
        // Not the training batch's memory: the evaluation's batch is the one to make smaller.
        let what = format!(
            "{detail}. This was the evaluation on {split} after step {}, in batches of up to {} \
             examples: a smaller --eval-batch-size (eval_batch_size) needs less",
            run.step, self.config.eval_batch_size
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
        told
    }

    /// Refuses to save weights a diverged step left with NaN or infinite values, or with
    /// values finite but so large that the model's outputs overflow: a run without a dev
    /// split would otherwise never run them through the model before saving them.
    fn check_weights_finite(&self, plan: &RunPlan, step: usize) -> Result<()> {
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
            if let Some(why) = super::prediction::non_finite_logit(&values, self.model.num_labels())
            {
                return Err(Error::Diverged {
                    step,
                    what: format!("on the first training batch, {why}"),
                });
            }
        }
        Ok(())
    }

    /// Publishes the resumable state in `last/`, when there is an output directory.
    fn save_run(&self, plan: &RunPlan, run: &Run<B>) -> Result<()> {
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
        if let Some(best) = &run.best {
            self.restore(&best.weights, Path::new("the best weights"))?;
        }
        if plan.dev.is_none() {
            self.check_weights_finite(plan, run.step)?;
            self.save_best(plan)?;
        }
        let early_stopped = self.ended_early(plan, &run);
        let m = &run.meter;
        Ok(TrainReport {
            steps: run.step,
            steps_this_call: run.step - first_step,
            train_seconds: m.seconds,
            samples_per_s: m.samples_per_s(),
            tokens_per_s: m.tokens_per_s(),
            last_loss: m.last_logged_loss.unwrap_or(f64::NAN),
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

    /// SHA-256 of the trainable tensors' names and values, tensor by tensor. The values as
    /// f32, what every backend but the f64 reference stores: a run may resume on another
    /// device or precision, and its draws and files round the same there.
    fn trainable_digest(&self) -> Result<String> {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        for (name, t) in self.trainable() {
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

    fn trainable(&self) -> Vec<(String, Tensor<B>)> {
        self.model
            .params()
            .into_iter()
            .filter(|p| p.trainable)
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect()
    }

    /// Sets every trainable tensor from `saved` (read from `source`, named in errors).
    fn restore(&mut self, saved: &NamedTensors<B>, source: &Path) -> Result<()> {
        for p in self.model.params_mut().into_iter().filter(|p| p.trainable) {
            let t = saved.get(&p.name).ok_or_else(|| Error::Mismatch {
                path: source.to_path_buf(),
                detail: format!("no saved value for trainable tensor `{}`", p.name),
            })?;
            if t.shape() != p.value.shape() {
                return Err(Error::Mismatch {
                    path: source.to_path_buf(),
                    detail: format!(
                        "`{}` was saved as {} but the model has {}",
                        p.name,
                        t.shape(),
                        p.value.shape()
                    ),
                });
            }
            p.value = t.clone();
        }
        Ok(())
    }

    /// Writes the current trainable tensors as the best adapter, when there is an output
    /// directory.
    fn save_best(&self, plan: &RunPlan) -> Result<()> {
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
    fn rewrite_best_adapter(&mut self, run: &Run<B>, plan: &RunPlan, source: &Path) -> Result<()> {
        let Some(best) = &run.best else {
            return Ok(());
        };
        let current: NamedTensors<B> = self.trainable().into_iter().collect();
        self.restore(&best.weights, source)?;
        self.save_best(plan)?;
        self.restore(&current, source)
    }
}

#[cfg(test)]
mod tests {
    use super::evaluations_in;

    /// The count against the steps walked one by one, as the training loop evaluates.
    #[test]
    fn evaluations_are_counted_as_the_loop_takes_them() {
        for total in 0..40 {
            for per_epoch in 1..12 {
                for eval_every in [None, Some(1), Some(2), Some(3), Some(5), Some(7), Some(50)] {
                    let walked = (1..=total)
                        .filter(|&s| {
                            s % per_epoch == 0
                                || eval_every.is_some_and(|e| s % e == 0)
                                || s == total
                        })
                        .count();
                    assert_eq!(
                        evaluations_in(total, per_epoch, eval_every),
                        walked,
                        "{total} steps, {per_epoch} per epoch, every {eval_every:?}"
                    );
                }
            }
        }
    }
}

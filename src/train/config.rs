//! A training run's settings: hyper-parameters and bookkeeping, and what a caller can check
//! before loading anything.

use std::path::PathBuf;

use super::micro_batches;
use super::run_state;
use super::ScheduleKind;
use crate::data::GlueTask;
use crate::error::{Error, Result};

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
    /// Peak learning rate (default 5e-4; `spafit train` takes the method's own,
    /// [`crate::peft::Method::default_learning_rate`]).
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
    /// Seed of the batch order and the dropout masks. The weights a run starts from are
    /// drawn before it, with the seeds given to
    /// [`crate::model::BertClassifier::from_checkpoint`] (a fresh head) and
    /// [`crate::peft::peft_lora_init`] (the adapters): `spafit train --seed S` gives S to all
    /// three, so a program does the same to get its run.
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
    /// holds it already passes it with [`Trainer::holding`](super::Trainer::holding) (locked again, it is refused as
    /// another run's).
    pub output_dir: Option<PathBuf>,
    /// Continue the run saved in `output_dir/last`.
    pub resume: bool,
    /// Show a progress bar on stderr, with a line per evaluation.
    pub progress: bool,
    /// Also print notices on stderr as they happen, without a progress bar (they are always
    /// in [`TrainReport::notices`](super::TrainReport::notices), which a run that ends in an error does not return).
    /// Under either flag the run opens with a line on what trains (the method, its
    /// trainable parameters, the batches, and the step a resume starts at), printed once the
    /// settings and any saved state are accepted and not kept among the notices.
    pub notices_on_stderr: bool,
    /// GLUE task, for its metrics.
    pub task: Option<GlueTask>,
    /// Write each step's examples here (see [`BatchLog`](super::BatchLog)), so another trainer can replay them.
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

/// What `value` must be where it breaks `rule` (a finite number that `holds`), for the
/// `*_problem` checks below.
fn finite_where(value: f64, holds: bool, rule: &str) -> Option<String> {
    (!(value.is_finite() && holds)).then(|| rule.to_string())
}

/// Why `lr` cannot be a peak learning rate, if it cannot: one rule for
/// [`TrainConfig::check`] and the command line's `--lr`.
pub fn learning_rate_problem(lr: f64) -> Option<String> {
    finite_where(
        lr,
        lr >= 0.0,
        "a learning rate is a number ≥ 0, such as 5e-4",
    )
}

/// Why `ratio` cannot be [`TrainConfig::warmup_ratio`], if it cannot.
pub fn warmup_ratio_problem(ratio: f64) -> Option<String> {
    finite_where(
        ratio,
        (0.0..=1.0).contains(&ratio),
        "a share of the steps, in [0, 1]",
    )
}

/// Why `decay` cannot be [`TrainConfig::weight_decay`], if it cannot.
pub fn weight_decay_problem(decay: f64) -> Option<String> {
    finite_where(
        decay,
        decay >= 0.0,
        "a weight decay is a number ≥ 0, such as 0.01",
    )
}

/// Why `norm` cannot be [`TrainConfig::max_grad_norm`]'s clipping norm, if it cannot (no
/// clipping is `None`, which the command line spells 0).
pub fn max_grad_norm_problem(norm: f64) -> Option<String> {
    finite_where(norm, norm > 0.0, "a clipping norm is a number > 0")
}

impl TrainConfig {
    /// Why `output_dir` is not a run's to write in: it holds a model or an adapter.
    pub(super) fn foreign_output_dir(&self) -> Option<String> {
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
        if let Some(why) = learning_rate_problem(c.learning_rate) {
            return refuse(format!("learning rate {} (--lr): {why}", c.learning_rate));
        }
        if let Some(why) = warmup_ratio_problem(c.warmup_ratio) {
            return refuse(format!(
                "warmup ratio {} (--warmup-ratio): {why}",
                c.warmup_ratio
            ));
        }
        if c.max_steps == Some(0) {
            return refuse("max_steps 0 (--max-steps): give a positive number of steps".into());
        }
        if let Some((norm, why)) = c
            .max_grad_norm
            .and_then(|n| max_grad_norm_problem(n).map(|why| (n, why)))
        {
            return refuse(format!(
                "gradient clipping at norm {norm} (--max-grad-norm): {why}, or none for no \
                 clipping (--max-grad-norm 0)"
            ));
        }
        if let Some(why) = weight_decay_problem(c.weight_decay) {
            return refuse(format!(
                "weight decay {} (--weight-decay): {why}",
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

/// Dropout probabilities of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct DropoutRates {
    pub hidden: f64,
    pub attention: f64,
    pub lora: f64,
    pub classifier: f64,
    /// On the head's input before its dense map (the classifier's but for DeBERTa-v2).
    pub pooler_input: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `check` refuses each number by the rule the command line's parser applies, in its
    /// words (a program that embeds the library sets the fields itself), and the rules take
    /// their edges and refuse NaN and infinities.
    #[test]
    fn check_refuses_each_number_by_its_rule() {
        type Set = fn(&mut TrainConfig);
        let cases: [(Set, Option<String>); 4] = [
            (|c| c.learning_rate = -1e-9, learning_rate_problem(-1e-9)),
            (|c| c.warmup_ratio = 1.5, warmup_ratio_problem(1.5)),
            (
                |c| c.weight_decay = f64::INFINITY,
                weight_decay_problem(f64::INFINITY),
            ),
            (|c| c.max_grad_norm = Some(0.0), max_grad_norm_problem(0.0)),
        ];
        for (set, rule) in cases {
            let rule = rule.expect("a refused value");
            let mut c = TrainConfig::default();
            set(&mut c);
            let e = c.check().unwrap_err().to_string();
            assert!(e.contains(&rule), "{e}");
        }
        assert!(TrainConfig::default().check().is_ok());
        let rules: [fn(f64) -> Option<String>; 4] = [
            learning_rate_problem,
            warmup_ratio_problem,
            weight_decay_problem,
            max_grad_norm_problem,
        ];
        for rule in rules {
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0] {
                assert!(rule(bad).is_some(), "{bad}");
            }
        }
        assert!(learning_rate_problem(0.0).is_none() && weight_decay_problem(0.0).is_none());
        assert!(warmup_ratio_problem(0.0).is_none() && warmup_ratio_problem(1.0).is_none());
        assert!(max_grad_norm_problem(1e-12).is_none());
    }
}

//! What stays fixed for a run: its settings checked against the data, the encoded splits,
//! the schedule, each epoch's batches, the evaluations it will take.

use super::Trainer;
use crate::backend::Backend;
use crate::data::{training_batches, Dataset};
use crate::error::{Error, Result};
use crate::model::{check_batch_memory, Pass};
use crate::rng;
use crate::text::TextTokenizer;
use crate::train::config::DropoutRates;
use crate::train::micro_batches;
use crate::train::run_state::{self, RunInputs, RunSettings};
use crate::train::schedule::warmup_steps;
use crate::train::{EncodedDataset, LrSchedule, Progress};

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

/// The LoRA scale times the peak learning rate above which a notice warns: AdamW moves each
/// adapter weight by about the learning rate a step whatever its gradient's size, so the
/// adapters' output moves by about the scale times that. On all-MiniLM-L6-v2 (32 short
/// texts, batch 8) runs at 0.05 and 0.1 learned; at 0.2, 0.5 and above they stalled at
/// chance, attention and LayerNorm saturated, with no NaN to stop them.
const LORA_STEP_LIMIT: f64 = 0.1;

/// The notice for a LoRA `scale` (α / r) that makes steps of `learning_rate` too large for
/// training to go anywhere (see [`LORA_STEP_LIMIT`]); `None` below it.
fn lora_step_notice(scale: f64, learning_rate: f64) -> Option<String> {
    let step = scale * learning_rate;
    (step > LORA_STEP_LIMIT).then(|| {
        format!(
            "the LoRA scale α / r = {scale} (--lora-alpha over --lora-r, or over √r with --rslora) times the learning \
             rate {learning_rate:e} is {step:.3}: each step moves the adapters' outputs by \
             about that share of their inputs, and above {LORA_STEP_LIMIT} runs were seen to \
             stall at chance (attention and LayerNorm saturate, with no NaN to stop them); a \
             lower --lora-alpha or --lr keeps it below"
        )
    })
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `n evaluations`, in the singular for one.
pub(super) fn evaluations(n: usize) -> String {
    match n {
        1 => "1 evaluation".into(),
        n => format!("{n} evaluations"),
    }
}

/// What stays fixed for a whole run.
pub(super) struct RunPlan {
    pub(super) train: EncodedDataset,
    /// The evaluation split and its name.
    pub(super) dev: Option<(EncodedDataset, String)>,
    pub(super) lengths: Vec<usize>,
    pub(super) total_steps: usize,
    pub(super) schedule: LrSchedule,
    pub(super) dropout: DropoutRates,
    pub(super) settings: RunSettings,
    pub(super) labels: Option<Vec<String>>,
    /// Whether the examples are text pairs (recorded with the adapter).
    pub(super) text_pairs: bool,
    /// The tokenizer's cut (recorded with the adapter).
    pub(super) max_len: usize,
}

impl<B: Backend> Trainer<'_, B> {
    /// The batches of epoch `epoch`, from the seed: what the run trains on, and what a
    /// resumed run's batch log writes again.
    pub(super) fn epoch_batches(&self, plan: &RunPlan, epoch: usize) -> Vec<Vec<usize>> {
        let c = &self.config;
        training_batches(
            &plan.lengths,
            c.batch_size,
            c.bucket_batches,
            rng::mix(c.seed, epoch as u64),
        )
    }

    /// Optimizer steps in an epoch of `examples` training examples.
    pub(super) fn batches_per_epoch(&self, examples: usize) -> usize {
        examples.div_ceil(self.config.batch_size)
    }

    /// Refuses settings that cannot give a meaningful run, before any work.
    pub(super) fn check_settings(&self, train: &Dataset, dev: Option<&Dataset>) -> Result<()> {
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
    pub(super) fn plan_run(
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
        if let Some(notice) = self
            .plan
            .lora
            .as_ref()
            .and_then(|lora| lora_step_notice(lora.largest_scale(), c.learning_rate))
        {
            progress.notice(&notice);
        }
        let hidden = c.hidden_dropout.unwrap_or(cfg.hidden_dropout_prob);
        let dropout = DropoutRates {
            hidden,
            attention: c
                .attention_dropout
                .unwrap_or(cfg.attention_probs_dropout_prob),
            lora: self.plan.lora_dropout(),
            classifier: cfg.classifier_dropout_or(hidden),
            pooler_input: cfg.pooler_input_dropout_or(hidden),
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
        // The flag that made the warmup is the one to change.
        let warmup_flag = match c.warmup_steps {
            Some(_) => "--warmup-steps",
            None => "--warmup-ratio",
        };
        if schedule.warmup >= 1 && total_steps == 1 && c.learning_rate > 0.0 {
            // transformers' warmup starts at 0: a run of one step in it changes nothing.
            progress.notice(&format!(
                "the run's only step is in its warmup, which starts at learning rate 0 (as \
                 transformers' schedules do): nothing trains; give {warmup_flag} 0, or more \
                 steps (more data, --epochs, --max-steps)"
            ));
        } else if schedule.warmup >= total_steps && c.learning_rate > 0.0 {
            progress.notice(&format!(
                "the warmup of {} steps spans the whole run of {total_steps}: the learning \
                 rate never reaches {:e} (--lr); give fewer warmup steps ({warmup_flag})",
                schedule.warmup, c.learning_rate
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
                base_sha256: self.base.sha256()?,
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
    pub(super) fn announce(&self, examples: usize, step: usize, epoch: usize, progress: &Progress) {
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
        let method = match self.plan.lora.as_ref().is_some_and(|l| l.dora) {
            true => format!("{method}, DoRA adapters"),
            false => method,
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
}

#[cfg(test)]
mod tests {
    use super::{evaluations_in, lora_step_notice};

    /// The notice comes above the limit only, whichever of the two factors is large.
    #[test]
    fn a_lora_scale_that_leaps_is_noted() {
        assert!(lora_step_notice(2.0, 5e-4).is_none());
        assert!(lora_step_notice(100.0, 1e-3).is_none());
        assert!(lora_step_notice(1000.0, 5e-4).is_some());
        assert!(lora_step_notice(2.0, 0.06).is_some());
        assert!(lora_step_notice(1.25e29, 0.0).is_none());
    }

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

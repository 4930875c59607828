use std::collections::BTreeMap;
use std::time::Instant;

use super::EncodedDataset;
use crate::autograd::Tape;
use crate::backend::Backend;
use crate::data::{evaluation_batches, GlueTask, Target, TaskKind};
use crate::error::{Error, Result};
use crate::metrics::{main_metric, report, Predictions};
use crate::model::{check_batch_memory, BertClassifier, Pass};
use crate::nn::DropoutPlan;

/// Model outputs on a split, in the split's order.
#[derive(Debug)]
pub struct ModelOutputs {
    /// `[n, num_labels]` row-major.
    pub logits: Vec<f64>,
    /// Mean loss over the split when it is labeled.
    pub loss: Option<f64>,
}

/// Metrics on a labeled split.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Metric name → value (`accuracy`, `f1`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// The metric model selection uses.
    pub main_metric: &'static str,
    /// Mean loss.
    pub loss: f64,
    /// Seconds taken.
    pub seconds: f64,
}

impl Evaluation {
    /// The value of [`Evaluation::main_metric`] (NaN when `metrics` lacks it).
    pub fn main_value(&self) -> f64 {
        self.metrics
            .get(self.main_metric)
            .copied()
            .unwrap_or(f64::NAN)
    }
}

/// Runs the model in evaluation mode (no dropout, no tape nodes) over `data`. The logits come
/// back as the model computes them, non-finite ones included (a diverged model's);
/// [`evaluate`] and [`crate::train::scored_predictions`] refuse those.
pub fn infer<B: Backend>(
    backend: &B,
    model: &BertClassifier<B>,
    data: &EncodedDataset,
    batch_size: usize,
) -> Result<ModelOutputs> {
    unstopped(infer_until(backend, model, data, batch_size, &never)?)
}

/// A `stop` that never asks to stop.
pub(crate) fn never() -> bool {
    false
}

/// What a run with [`never`] for `stop` gave: always there.
pub(crate) fn unstopped<T>(done: Option<T>) -> Result<T> {
    done.ok_or_else(|| {
        crate::Error::invalid("evaluate", "stopped, though nothing asked it to stop")
    })
}

/// [`infer`], asking `stop` before each batch: `None` once it says to stop.
fn infer_until<B: Backend>(
    backend: &B,
    model: &BertClassifier<B>,
    data: &EncodedDataset,
    batch_size: usize,
    stop: &dyn Fn() -> bool,
) -> Result<Option<ModelOutputs>> {
    let n = data.texts.len();
    let k = model.num_labels();
    if batch_size == 0 {
        return Err(crate::Error::invalid(
            "evaluate",
            "the batch size must be positive",
        ));
    }
    if data.kind.num_labels() != k {
        return Err(crate::Error::invalid(
            "evaluate",
            format!(
                "the data needs a head of {} output(s) (one per class, one for a regression) \
                 but the model's has {k}",
                data.kind.num_labels()
            ),
        ));
    }
    let lengths = data.lengths();
    let batches = evaluation_batches(&lengths, batch_size);
    // Sorted by length, the last batch holds the longest rows but may hold few of them: the
    // batch of most padded tokens is the one to check.
    let padded = |rows: &Vec<usize>| {
        let longest = rows.iter().map(|&i| lengths[i]).max().unwrap_or(0);
        (rows.len(), longest)
    };
    if let Some((rows, longest)) = batches
        .iter()
        .map(padded)
        .max_by_key(|&(rows, longest)| rows.saturating_mul(longest))
    {
        let config = model.config();
        check_batch_memory(backend, config, rows, longest, Pass::Inference, "evaluate")?;
    }
    let mut logits = vec![0.0; n * k];
    let mut loss_sum = 0.0;
    let mut labeled = true;
    for rows in batches {
        if stop() {
            return Ok(None);
        }
        let (input, labels, _) = data.tensors(backend, &rows, model.config())?;
        let mut tape = Tape::inference(backend.clone());
        let out = model.forward(&mut tape, &input, &mut DropoutPlan::eval())?;
        let values = backend.to_f64(out.value())?;
        for (j, &i) in rows.iter().enumerate() {
            logits[i * k..(i + 1) * k].copy_from_slice(&values[j * k..(j + 1) * k]);
        }
        match labels {
            Some(l) => {
                let loss = model.loss(&mut tape, &out, &l)?;
                loss_sum += backend.to_f64(loss.value())?[0] * rows.len() as f64;
            }
            None => labeled = false,
        }
    }
    Ok(Some(ModelOutputs {
        logits,
        loss: (labeled && n > 0).then(|| loss_sum / n as f64),
    }))
}

/// Class ids (argmax), sets of class ids (positive logits: probability above one half) or
/// scores from logits, `num_labels` per example. A NaN or infinite logit is refused, naming
/// its example, as [`crate::train::scored_predictions`] refuses it (an argmax over NaN
/// would name a class).
pub fn predictions(kind: &TaskKind, logits: &[f64], num_labels: usize) -> Result<Vec<Target>> {
    let targets = predictions_at(kind, logits, num_labels, 0.5)?;
    if let Some(why) = super::prediction::non_finite_logit(logits, num_labels) {
        return Err(Error::invalid("predictions", why));
    }
    Ok(targets)
}

/// [`predictions`], a set holding the classes of probability above `threshold`.
fn predictions_at(
    kind: &TaskKind,
    logits: &[f64],
    num_labels: usize,
    threshold: f64,
) -> Result<Vec<Target>> {
    super::prediction::check_logits(kind, logits, num_labels)?;
    Ok(logits
        .chunks_exact(num_labels)
        .map(|row| match kind {
            TaskKind::Regression => Target::Score(row[0]),
            TaskKind::MultiLabel { .. } => Target::LabelSet(
                super::prediction::predicted_set(row, threshold)
                    .into_iter()
                    .map(|c| c as u32)
                    .collect(),
            ),
            TaskKind::Classification { .. } => {
                let best = row
                    .iter()
                    .enumerate()
                    .fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
                Target::Class(best as u32)
            }
        })
        .collect())
}

/// Metrics of the model on a labeled split (GLUE's metrics for `task`). NaN or infinite
/// logits are refused, naming the first example with one: metrics over them would look
/// like a result.
pub fn evaluate<B: Backend>(
    backend: &B,
    model: &BertClassifier<B>,
    data: &EncodedDataset,
    batch_size: usize,
    task: Option<GlueTask>,
) -> Result<Evaluation> {
    unstopped(evaluate_until(
        backend, model, data, batch_size, task, &never,
    )?)
}

/// [`evaluate`], asking `stop` before each batch (a signal handler's flag, say): `None` once
/// it says to stop, which a long evaluation (MNLI's 10,000 pairs on a CPU) otherwise keeps
/// waiting for its end.
pub fn evaluate_until<B: Backend>(
    backend: &B,
    model: &BertClassifier<B>,
    data: &EncodedDataset,
    batch_size: usize,
    task: Option<GlueTask>,
    stop: &dyn Fn() -> bool,
) -> Result<Option<Evaluation>> {
    let Some((evaluation, non_finite)) =
        evaluate_with_logit_check(backend, model, data, batch_size, task, stop)?
    else {
        return Ok(None);
    };
    match non_finite {
        // Metrics of NaN or infinite outputs would look like a result.
        Some(why) => Err(crate::Error::invalid(
            "evaluate",
            format!("{why}; its metrics would mean nothing"),
        )),
        None => Ok(Some(evaluation)),
    }
}

/// [`evaluate`], with its first NaN or infinite logit described beside the evaluation
/// instead of refused (the trainer reports it as a diverged run, at its step), asking `stop`
/// before each batch.
pub(crate) fn evaluate_with_logit_check<B: Backend>(
    backend: &B,
    model: &BertClassifier<B>,
    data: &EncodedDataset,
    batch_size: usize,
    task: Option<GlueTask>,
    stop: &dyn Fn() -> bool,
) -> Result<Option<(Evaluation, Option<String>)>> {
    let start = Instant::now();
    if data.texts.is_empty() {
        return Err(crate::Error::invalid(
            "evaluate",
            "the split has no examples",
        ));
    }
    if let Some(first) = data.targets.iter().position(Option::is_none) {
        let count = data.targets.iter().filter(|t| t.is_none()).count();
        return Err(crate::Error::invalid(
            "evaluate",
            match count == data.targets.len() {
                true => "the split is unlabeled".to_string(),
                false => format!(
                    "{count} example(s) of the split have no label, the first is example \
                     {first} (counting from 0)"
                ),
            },
        ));
    }
    let gold: Vec<&Target> = data.targets.iter().flatten().collect();
    // Checked as training checks its data, so a bad target is named by example, not by
    // its place in a length-sorted batch (or turned into a NaN metric).
    if let Some((i, problem)) = gold
        .iter()
        .enumerate()
        .find_map(|(i, t)| crate::data::target_problem(t, &data.kind).map(|p| (i, p)))
    {
        return Err(crate::Error::invalid(
            "evaluate",
            format!("example {i}: {problem}"),
        ));
    }
    // A GLUE task's metrics assume its label space (MRPC's F1 of class 1 of two).
    if let Some(mismatch) = task.and_then(|t| t.label_space_mismatch(&data.kind, "the data")) {
        return Err(crate::Error::invalid(
            "evaluate",
            format!("{mismatch}: its metrics do not apply"),
        ));
    }
    let Some(out) = infer_until(backend, model, data, batch_size, stop)? else {
        return Ok(None);
    };
    let threshold = model.decision_threshold();
    let pred = predictions_at(&data.kind, &out.logits, model.num_labels(), threshold)?;
    let preds = match data.kind {
        TaskKind::Regression => Predictions::Scores {
            pred: pred.iter().map(score).collect(),
            gold: gold.iter().copied().map(score).collect(),
        },
        TaskKind::Classification { .. } => Predictions::Classes {
            pred: pred.iter().map(class).collect(),
            gold: gold.iter().copied().map(class).collect(),
        },
        TaskKind::MultiLabel { .. } => Predictions::LabelSets {
            pred: pred.iter().map(label_set).collect(),
            gold: gold.iter().copied().map(label_set).collect(),
            classes: model.num_labels(),
        },
    };
    let non_finite = super::prediction::non_finite_logit(&out.logits, model.num_labels());
    let evaluation = Evaluation {
        metrics: report(task, &preds, model.num_labels()),
        main_metric: main_metric(task, &preds),
        loss: out.loss.unwrap_or(f64::NAN),
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok(Some((evaluation, non_finite)))
}

// Targets were checked against the task's kind above, so each helper sees its own kind.
fn score(t: &Target) -> f64 {
    match t {
        Target::Score(s) => *s,
        Target::Class(c) => f64::from(*c),
        Target::LabelSet(_) => f64::NAN,
    }
}

fn class(t: &Target) -> u32 {
    match t {
        Target::Class(c) => *c,
        Target::Score(s) => *s as u32,
        Target::LabelSet(_) => u32::MAX,
    }
}

fn label_set(t: &Target) -> Vec<u32> {
    match t {
        Target::LabelSet(ids) => ids.clone(),
        Target::Class(c) => vec![*c],
        Target::Score(_) => Vec::new(),
    }
}

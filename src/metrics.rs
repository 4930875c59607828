//! Evaluation metrics as GLUE reports them.

use std::collections::BTreeMap;

use crate::data::GlueTask;

/// Every metric name [`report`] gives, for any task: what a saved evaluation's main metric
/// is looked up among when a run resumes.
pub const METRIC_NAMES: [&str; 8] = [
    "accuracy",
    "f1",
    "matthews_correlation",
    "pearson",
    "spearman",
    "micro_f1",
    "macro_f1",
    "subset_accuracy",
];

/// Fraction of equal predictions; NaN when the slices differ in length (no pairing).
pub fn accuracy(pred: &[u32], gold: &[u32]) -> f64 {
    fraction_equal(pred, gold)
}

/// Fraction of predictions equal to their gold value; NaN when the slices differ in length,
/// 0 when empty.
fn fraction_equal<T: PartialEq>(pred: &[T], gold: &[T]) -> f64 {
    if pred.len() != gold.len() {
        return f64::NAN;
    }
    if gold.is_empty() {
        return 0.0;
    }
    pred.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / gold.len() as f64
}

fn confusion(pred: &[u32], gold: &[u32]) -> (f64, f64, f64, f64) {
    let (mut tp, mut tn, mut fp, mut fn_) = (0.0, 0.0, 0.0, 0.0);
    for (&p, &g) in pred.iter().zip(gold) {
        match (p == 1, g == 1) {
            (true, true) => tp += 1.0,
            (false, false) => tn += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fn_ += 1.0,
        }
    }
    (tp, tn, fp, fn_)
}

/// F1 of the positive class (label 1), 0 when there is no positive prediction or gold label;
/// NaN when the slices differ in length.
pub fn f1(pred: &[u32], gold: &[u32]) -> f64 {
    if pred.len() != gold.len() {
        return f64::NAN;
    }
    let (tp, _, fp, fn_) = confusion(pred, gold);
    if tp == 0.0 {
        0.0
    } else {
        2.0 * tp / (2.0 * tp + fp + fn_)
    }
}

/// Matthews correlation of binary labels; 0 when a margin is empty (as scikit-learn); NaN
/// when the slices differ in length.
pub fn matthews_correlation(pred: &[u32], gold: &[u32]) -> f64 {
    if pred.len() != gold.len() {
        return f64::NAN;
    }
    let (tp, tn, fp, fn_) = confusion(pred, gold);
    let denom = ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();
    if denom == 0.0 {
        0.0
    } else {
        (tp * tn - fp * fn_) / denom
    }
}

/// Pearson correlation; 0 when either side is constant; NaN when the slices differ in
/// length or hold a NaN.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    if x.len() != y.len() || x.iter().chain(y).any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let n = x.len();
    if n == 0 {
        return 0.0;
    }
    // A constant side is found by its values, not by its variance: the mean of equal values
    // (0.1 three times) need not equal them, which left a spread of rounding noise and a
    // correlation like -3.5e-15 instead of the documented 0.
    let constant = |v: &[f64]| v.iter().all(|&e| e == v[0]);
    if constant(x) || constant(y) {
        return 0.0;
    }
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// 1-based ranks, ties sharing the average of their ranks.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = rank;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman correlation: Pearson of average ranks (ties handled); NaN when the slices differ
/// in length or hold a NaN (which has no rank).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    if x.len() != y.len() || x.iter().chain(y).any(|v| v.is_nan()) {
        return f64::NAN;
    }
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Micro-averaged F1 of multi-label predictions: `2·TP / (2·TP + FP + FN)` over every
/// (example, class) decision, 0 when no class is predicted or true anywhere; NaN when the
/// slices differ in length.
pub fn micro_f1(pred: &[Vec<u32>], gold: &[Vec<u32>]) -> f64 {
    if pred.len() != gold.len() {
        return f64::NAN;
    }
    let (mut tp, mut wrong) = (0.0, 0.0);
    for (p, g) in pred.iter().zip(gold) {
        let hits = p.iter().filter(|c| g.contains(c)).count() as f64;
        tp += hits;
        wrong += (p.len() + g.len()) as f64 - 2.0 * hits;
    }
    match tp == 0.0 {
        true => 0.0,
        false => 2.0 * tp / (2.0 * tp + wrong),
    }
}

/// Macro-averaged F1 of multi-label predictions over `classes` classes: the mean of each
/// class's F1, a class never predicted nor true counting 0 (as scikit-learn's default);
/// NaN when the slices differ in length or there is no class.
pub fn macro_f1(pred: &[Vec<u32>], gold: &[Vec<u32>], classes: usize) -> f64 {
    if pred.len() != gold.len() || classes == 0 {
        return f64::NAN;
    }
    let mut per_class = vec![(0.0f64, 0.0f64); classes];
    for (p, g) in pred.iter().zip(gold) {
        for &c in p.iter().chain(g) {
            if let Some(counts) = per_class.get_mut(c as usize) {
                counts.1 += 1.0;
            }
        }
        for &c in p.iter().filter(|c| g.contains(c)) {
            if let Some(counts) = per_class.get_mut(c as usize) {
                counts.0 += 2.0;
            }
        }
    }
    // Per class: 2·TP over (predicted + true), where the hits were counted in both.
    per_class
        .iter()
        .map(|&(twice_tp, sizes)| match twice_tp == 0.0 {
            true => 0.0,
            false => twice_tp / sizes,
        })
        .sum::<f64>()
        / classes as f64
}

/// Fraction of examples whose predicted set of classes is exactly the true one (scikit-
/// learn's `accuracy_score` on multi-label data); NaN when the slices differ in length.
pub fn subset_accuracy(pred: &[Vec<u32>], gold: &[Vec<u32>]) -> f64 {
    fraction_equal(pred, gold)
}

/// Predictions of a model on a labeled split.
#[derive(Clone, Debug, PartialEq)]
pub enum Predictions {
    /// Predicted and gold class ids.
    Classes {
        /// Argmax of the logits.
        pred: Vec<u32>,
        /// Targets.
        gold: Vec<u32>,
    },
    /// Predicted and gold sets of class ids, each ascending (multi-label).
    LabelSets {
        /// The classes of positive logits.
        pred: Vec<Vec<u32>>,
        /// Targets.
        gold: Vec<Vec<u32>>,
        /// The head's class count.
        classes: usize,
    },
    /// Predicted and gold scores.
    Scores {
        /// Model outputs.
        pred: Vec<f64>,
        /// Targets.
        gold: Vec<f64>,
    },
}

/// The metrics GLUE reports for `task` (or, for a custom task, accuracy, and F1 of class 1
/// when the head has `classes` = 2, for classification; micro- and macro-averaged F1 and
/// subset accuracy for multi-label classification; Pearson / Spearman for regression),
/// by name. The keys depend on the task and head only, never on which classes a split holds.
pub fn report(
    task: Option<GlueTask>,
    predictions: &Predictions,
    classes: usize,
) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    match predictions {
        Predictions::Classes { pred, gold } => {
            m.insert("accuracy".into(), accuracy(pred, gold));
            match task {
                Some(GlueTask::Cola) => {
                    m.insert(
                        "matthews_correlation".into(),
                        matthews_correlation(pred, gold),
                    );
                }
                Some(GlueTask::Mrpc | GlueTask::Qqp) => {
                    m.insert("f1".into(), f1(pred, gold));
                }
                None if classes == 2 => {
                    m.insert("f1".into(), f1(pred, gold));
                }
                _ => {}
            }
        }
        Predictions::Scores { pred, gold } => {
            m.insert("pearson".into(), pearson(pred, gold));
            m.insert("spearman".into(), spearman(pred, gold));
        }
        Predictions::LabelSets {
            pred,
            gold,
            classes,
        } => {
            m.insert("micro_f1".into(), micro_f1(pred, gold));
            m.insert("macro_f1".into(), macro_f1(pred, gold, *classes));
            m.insert("subset_accuracy".into(), subset_accuracy(pred, gold));
        }
    }
    m
}

/// No predictions of `kind`: the metrics' names depend on the task and the head alone.
fn no_predictions(kind: &crate::data::TaskKind) -> Predictions {
    match kind {
        crate::data::TaskKind::Regression => Predictions::Scores {
            pred: vec![],
            gold: vec![],
        },
        crate::data::TaskKind::Classification { .. } => Predictions::Classes {
            pred: vec![],
            gold: vec![],
        },
        crate::data::TaskKind::MultiLabel { labels } => Predictions::LabelSets {
            pred: vec![],
            gold: vec![],
            classes: labels.len(),
        },
    }
}

/// The names of the metrics [`report`] gives for `task` on data of `kind`.
pub fn reported_names(task: Option<GlueTask>, kind: &crate::data::TaskKind) -> Vec<String> {
    report(task, &no_predictions(kind), kind.num_labels())
        .into_keys()
        .collect()
}

/// [`main_metric`] of `task` on data of `kind`.
pub fn main_metric_name(task: Option<GlueTask>, kind: &crate::data::TaskKind) -> &'static str {
    main_metric(task, &no_predictions(kind))
}

/// Refuses `--best-metric name` for `task` on the evaluation split `data` of `kind` where
/// its evaluations do not report it: `loss` or one of [`reported_names`].
pub fn check_best_metric(
    name: &str,
    task: Option<GlueTask>,
    kind: &crate::data::TaskKind,
    data: &str,
) -> crate::error::Result<()> {
    let reported = reported_names(task, kind);
    if name == "loss" || reported.iter().any(|m| m == name) {
        return Ok(());
    }
    Err(crate::error::Error::invalid(
        "--best-metric",
        format!(
            "`{name}`: evaluations of {data} report {} (or give `loss`)",
            reported.join(", ")
        ),
    ))
}

/// The metric model selection maximises for `task`.
pub fn main_metric(task: Option<GlueTask>, predictions: &Predictions) -> &'static str {
    match (task, predictions) {
        (_, Predictions::Scores { .. }) => "pearson",
        (_, Predictions::LabelSets { .. }) => "micro_f1",
        (Some(GlueTask::Cola), _) => "matthews_correlation",
        (Some(GlueTask::Mrpc | GlueTask::Qqp), _) => "f1",
        _ => "accuracy",
    }
}

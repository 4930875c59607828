//! Evaluation metrics as GLUE reports them.

use std::collections::BTreeMap;

use crate::data::GlueTask;

/// Fraction of equal predictions; NaN when the slices differ in length (no pairing).
pub fn accuracy(pred: &[u32], gold: &[u32]) -> f64 {
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
/// length.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    if x.len() != y.len() {
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
/// in length.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    if x.len() != y.len() {
        return f64::NAN;
    }
    pearson(&average_ranks(x), &average_ranks(y))
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
    /// Predicted and gold scores.
    Scores {
        /// Model outputs.
        pred: Vec<f64>,
        /// Targets.
        gold: Vec<f64>,
    },
}

/// The metrics GLUE reports for `task` (or, for a custom task, accuracy, and F1 of class 1
/// when the head has `classes` = 2, for classification; Pearson / Spearman for regression),
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
        (Some(GlueTask::Cola), _) => "matthews_correlation",
        (Some(GlueTask::Mrpc | GlueTask::Qqp), _) => "f1",
        _ => "accuracy",
    }
}

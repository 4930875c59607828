//! What a model answers for each example: the class with its probability and every class's
//! probability, the set of classes that apply with every class's probability, or a score.

use crate::data::TaskKind;
use crate::error::{Error, Result};

/// A model's answer for one example.
#[derive(Clone, Debug, PartialEq)]
pub enum Prediction {
    /// Classification: the most probable class (the first one on a tie) and the softmax of
    /// the logits over every class, in class-id order.
    Class {
        /// The predicted class id.
        class: usize,
        /// Its probability.
        probability: f64,
        /// Every class's probability.
        probabilities: Vec<f64>,
    },
    /// Multi-label classification: the classes whose sigmoid is above the decision threshold
    /// (one half, a positive logit, unless set), ascending, none included, and every class's
    /// sigmoid, in class-id order.
    LabelSet {
        /// The predicted class ids.
        classes: Vec<usize>,
        /// Every class's probability.
        probabilities: Vec<f64>,
    },
    /// Regression: the predicted score.
    Score(f64),
}

/// The classes a multi-label head predicts from one row of logits: those whose sigmoid is
/// above `threshold`, which is a logit above `ln(t / (1 − t))` (compared as such, not
/// through a rounded sigmoid: one half is a positive logit).
pub(crate) fn predicted_set(row: &[f64], threshold: f64) -> Vec<usize> {
    let cutoff = (threshold / (1.0 - threshold)).ln();
    (0..row.len()).filter(|&c| row[c] > cutoff).collect()
}

/// Why `threshold` cannot be a multi-label head's decision threshold, if it cannot: it must
/// lie strictly between 0 and 1.
pub fn threshold_problem(threshold: f64) -> Option<String> {
    (!(threshold > 0.0 && threshold < 1.0))
        .then(|| format!("{threshold} is not a probability strictly between 0 and 1"))
}

/// Refuses logits that are not whole rows of a head that fits `kind`: `num_labels` outputs,
/// one for regression, one per class otherwise (at least two for one class per example).
pub fn check_logits(kind: &TaskKind, logits: &[f64], num_labels: usize) -> Result<()> {
    let problem = if num_labels == 0 || !logits.len().is_multiple_of(num_labels) {
        Some(format!(
            "{} logits are not whole rows of {num_labels}",
            logits.len()
        ))
    } else if kind.num_labels() != num_labels {
        Some(format!(
            "a head of {num_labels} outputs for a task of {} labels",
            kind.num_labels()
        ))
    } else if matches!(kind, TaskKind::Classification { .. }) && num_labels < 2 {
        Some("a classification task needs at least two classes".into())
    } else {
        None
    };
    match problem {
        Some(p) => Err(Error::invalid("predictions", p)),
        None => Ok(()),
    }
}

/// The first NaN or infinite logit, described: a model that diverged, or whose outputs
/// overflow (an adapter scaled far too high).
pub(crate) fn non_finite_logit(logits: &[f64], num_labels: usize) -> Option<String> {
    let i = logits.iter().position(|v| !v.is_finite())?;
    Some(format!(
        "example {} has the logit {} (output {}): a model that diverged, or whose outputs \
         overflow",
        i / num_labels.max(1),
        logits[i],
        i % num_labels.max(1)
    ))
}

/// One prediction per row of `logits` (`[n, num_labels]`, row-major); a multi-label task's
/// sets hold the classes of probability above one half.
pub fn scored_predictions(
    kind: &TaskKind,
    logits: &[f64],
    num_labels: usize,
) -> Result<Vec<Prediction>> {
    scored_predictions_at(kind, logits, num_labels, 0.5)
}

/// [`scored_predictions`], a multi-label task's sets holding the classes of probability
/// above `threshold` (a model's [`BertClassifier::decision_threshold`]).
///
/// [`BertClassifier::decision_threshold`]: crate::model::BertClassifier::decision_threshold
pub fn scored_predictions_at(
    kind: &TaskKind,
    logits: &[f64],
    num_labels: usize,
    threshold: f64,
) -> Result<Vec<Prediction>> {
    if let Some(problem) = threshold_problem(threshold) {
        return Err(Error::invalid("threshold", problem));
    }
    check_logits(kind, logits, num_labels)?;
    // Probabilities from an infinite or NaN logit would be NaN: named instead.
    if let Some(why) = non_finite_logit(logits, num_labels) {
        return Err(Error::invalid("predictions", why));
    }
    Ok(logits
        .chunks_exact(num_labels.max(1))
        .map(|row| match kind {
            TaskKind::Regression => Prediction::Score(row[0]),
            TaskKind::MultiLabel { .. } => Prediction::LabelSet {
                classes: predicted_set(row, threshold),
                probabilities: row
                    .iter()
                    .map(|&z| crate::backend::cpu::loss::sigmoid(z))
                    .collect(),
            },
            TaskKind::Classification { .. } => {
                let class = row
                    .iter()
                    .enumerate()
                    .fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
                // Shifting by the largest logit keeps exp() finite for any finite logits.
                let exps: Vec<f64> = row.iter().map(|&v| (v - row[class]).exp()).collect();
                let total: f64 = exps.iter().sum();
                let probabilities: Vec<f64> = exps.iter().map(|e| e / total).collect();
                Prediction::Class {
                    class,
                    probability: probabilities[class],
                    probabilities,
                }
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_are_the_softmax_and_the_class_its_argmax() {
        let kind = TaskKind::Classification {
            labels: vec!["a".into(), "b".into(), "c".into()],
        };
        let p = scored_predictions(&kind, &[1.0, 3.0, 2.0, 1000.0, 0.0, 1000.0], 3).unwrap();
        let Prediction::Class {
            class,
            probability,
            probabilities,
        } = &p[0]
        else {
            panic!("{p:?}")
        };
        let z = 1f64.exp() + 3f64.exp() + 2f64.exp();
        assert_eq!(*class, 1);
        for (got, want) in
            probabilities
                .iter()
                .zip([1f64.exp() / z, 3f64.exp() / z, 2f64.exp() / z])
        {
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
        assert_eq!(*probability, probabilities[1]);
        // Huge logits stay finite; a tie goes to the first class.
        assert_eq!(
            p[1],
            Prediction::Class {
                class: 0,
                probability: 0.5,
                probabilities: vec![0.5, 0.0, 0.5]
            }
        );
        assert_eq!(
            scored_predictions(&TaskKind::Regression, &[2.5, -1.0], 1).unwrap(),
            vec![Prediction::Score(2.5), Prediction::Score(-1.0)]
        );
        // Logits that are not whole rows of a head fitting the task are refused, not cut.
        assert!(scored_predictions(&kind, &[1.0, 2.0, 3.0, 4.0], 3).is_err());
        assert!(scored_predictions(&kind, &[1.0, 2.0], 2).is_err());
        assert!(scored_predictions(&kind, &[], 0).is_err());
        assert!(scored_predictions(&TaskKind::Regression, &[1.0, 2.0], 2).is_err());
        // A one-class head is a regression head's shape, not a classifier.
        let one = TaskKind::Classification {
            labels: vec!["a".into()],
        };
        assert!(scored_predictions(&one, &[1.0, 2.0], 1).is_err());
        // Multi-label: a sigmoid each, the classes of positive logits (zero is not one).
        let multi = TaskKind::MultiLabel {
            labels: vec!["a".into(), "b".into(), "c".into()],
        };
        let p = scored_predictions(&multi, &[2.0, -1.0, 0.0, -800.0, 800.0, 1e-300], 3).unwrap();
        let Prediction::LabelSet {
            classes,
            probabilities,
        } = &p[0]
        else {
            panic!("{p:?}")
        };
        assert_eq!(classes, &[0]);
        let want = [1.0 / (1.0 + (-2f64).exp()), 1.0 / (1.0 + 1f64.exp()), 0.5];
        for (got, want) in probabilities.iter().zip(want) {
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
        let Prediction::LabelSet {
            classes,
            probabilities,
        } = &p[1]
        else {
            panic!("{p:?}")
        };
        assert_eq!(classes, &[1, 2]);
        assert_eq!(probabilities[..2], [0.0, 1.0]);
        // Another threshold: the classes above it, compared in logits (σ(2) ≈ 0.881).
        let p = scored_predictions_at(&multi, &[2.0, -1.0, 0.0], 3, 0.88).unwrap();
        assert!(matches!(&p[0], Prediction::LabelSet { classes, .. } if classes == &[0]));
        let p = scored_predictions_at(&multi, &[2.0, -1.0, 0.0], 3, 0.89).unwrap();
        assert!(matches!(&p[0], Prediction::LabelSet { classes, .. } if classes.is_empty()));
        let p = scored_predictions_at(&multi, &[2.0, -1.0, 0.0], 3, 0.25).unwrap();
        assert!(matches!(&p[0], Prediction::LabelSet { classes, .. } if classes == &[0, 1, 2]));
        for bad in [0.0, 1.0, f64::NAN, -0.5] {
            assert!(scored_predictions_at(&multi, &[2.0, -1.0, 0.0], 3, bad).is_err());
        }
        // Non-finite logits have no probabilities: named, not NaN.
        let e = scored_predictions(&kind, &[1.0, 2.0, 3.0, f64::INFINITY, 0.0, 1.0], 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("example 1 has the logit inf (output 0)"), "{e}");
    }
}

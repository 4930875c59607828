//! Metrics against values worked out by hand.

use spafit::data::GlueTask;
use spafit::metrics::*;

#[test]
fn classification_metrics_by_hand() {
    // gold: 1 1 1 0 0 0 0 1 ; pred: 1 0 1 0 1 0 0 1 → tp 3, fn 1, fp 1, tn 3.
    let gold = [1, 1, 1, 0, 0, 0, 0, 1];
    let pred = [1, 0, 1, 0, 1, 0, 0, 1];
    assert_eq!(accuracy(&pred, &gold), 6.0 / 8.0);
    // F1 = 2·3 / (2·3 + 1 + 1) = 0.75
    assert!((f1(&pred, &gold) - 0.75).abs() < 1e-15);
    // MCC = (3·3 − 1·1) / sqrt(4·4·4·4) = 8 / 16 = 0.5
    assert!((matthews_correlation(&pred, &gold) - 0.5).abs() < 1e-15);
    // All one class predicted: MCC is 0 by convention, F1 of no positives is 0.
    assert_eq!(matthews_correlation(&[0; 8], &gold), 0.0);
    assert_eq!(f1(&[0; 8], &gold), 0.0);
    // Perfectly wrong: MCC = −1.
    let flipped: Vec<u32> = gold.iter().map(|g| 1 - g).collect();
    assert!((matthews_correlation(&flipped, &gold) + 1.0).abs() < 1e-15);
}

#[test]
fn correlations_by_hand_with_ties() {
    // x = 1 2 3 4, y = 2 4 5 9: means 2.5, 5; sxy = 1.5·3 + 0.5·1 + 0.5·0 + 1.5·4 = 11,
    // sxx = 5, syy = 9 + 1 + 0 + 16 = 26 → r = 11 / sqrt(130).
    let (x, y) = ([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 9.0]);
    assert!((pearson(&x, &y) - 11.0 / 130f64.sqrt()).abs() < 1e-15);
    assert!((spearman(&x, &y) - 1.0).abs() < 1e-15);
    // Ties: y = 1 2 2 3 has ranks 1 2.5 2.5 4.
    assert_eq!(
        average_ranks(&[1.0, 2.0, 2.0, 3.0]),
        vec![1.0, 2.5, 2.5, 4.0]
    );
    assert_eq!(average_ranks(&[5.0, 5.0, 5.0]), vec![2.0, 2.0, 2.0]);
    // Spearman with ties = Pearson of (1,2,3,4) and (1,2.5,2.5,4):
    // means 2.5, 2.5; sxy = 2.25 + 0 + 0 + 2.25 = 4.5; sxx = 5; syy = 2.25+0+0+2.25 = 4.5.
    let s = spearman(&x, &[1.0, 2.0, 2.0, 3.0]);
    assert!((s - 4.5 / (5.0f64 * 4.5).sqrt()).abs() < 1e-15, "{s}");
    assert_eq!(pearson(&x, &[3.0; 4]), 0.0);
    // Three equal scores whose mean is not exactly theirs (0.1 * 3 / 3 rounds up): still
    // constant, so 0, not rounding noise (this used to give -3.5e-15 on an STS-B dev set).
    let tenths = [0.1; 3];
    assert_ne!(tenths.iter().sum::<f64>() / 3.0, 0.1);
    assert_eq!(pearson(&[0.3, 0.1, 0.2], &tenths), 0.0);
    assert_eq!(pearson(&tenths, &[0.3, 0.1, 0.2]), 0.0);
    assert_eq!(spearman(&[0.3, 0.1, 0.2], &tenths), 0.0);
}

#[test]
fn glue_reports_the_right_metrics() {
    let classes = Predictions::Classes {
        pred: vec![1, 0, 1],
        gold: vec![1, 1, 1],
    };
    let keys = |t| report(Some(t), &classes, 2).into_keys().collect::<Vec<_>>();
    assert_eq!(keys(GlueTask::Cola), ["accuracy", "matthews_correlation"]);
    assert_eq!(keys(GlueTask::Mrpc), ["accuracy", "f1"]);
    assert_eq!(keys(GlueTask::Qqp), ["accuracy", "f1"]);
    assert_eq!(keys(GlueTask::Sst2), ["accuracy"]);
    // A custom task: F1 for a two-class head, whatever classes a split happens to hold.
    let custom = |n| report(None, &classes, n).into_keys().collect::<Vec<_>>();
    assert_eq!(custom(2), ["accuracy", "f1"]);
    assert_eq!(custom(3), ["accuracy"]);
    assert_eq!(
        main_metric(Some(GlueTask::Cola), &classes),
        "matthews_correlation"
    );
    let scores = Predictions::Scores {
        pred: vec![1.0, 2.0, 3.5],
        gold: vec![1.5, 2.0, 3.0],
    };
    assert_eq!(
        report(Some(GlueTask::Stsb), &scores, 1)
            .into_keys()
            .collect::<Vec<_>>(),
        ["pearson", "spearman"]
    );
}

/// Slices of different lengths cannot be paired, and a NaN has no rank: NaN, never a value
/// from a prefix or from NaN's place in a sort.
#[test]
fn unpaired_slices_and_nan_give_nan() {
    let (short, long) = ([1u32, 0], [1u32, 0, 1]);
    for value in [
        accuracy(&short, &long),
        f1(&long, &short),
        matthews_correlation(&short, &long),
        pearson(&[1.0, 2.0], &[1.0, 2.0, 3.0]),
        spearman(&[1.0, 2.0, 3.0], &[2.0, 1.0]),
        spearman(&[1.0, f64::NAN, 3.0], &[1.0, 2.0, 3.0]),
        pearson(&[1.0, 2.0, 3.0], &[1.0, f64::NAN, 3.0]),
    ] {
        assert!(value.is_nan(), "{value}");
    }
    assert_eq!(accuracy(&long, &long), 1.0);
}

/// The metric names a task reports, which `--best-metric` may name: GLUE's per task, and
/// for custom data accuracy (+ F1 with two classes) or Pearson and Spearman.
#[test]
fn reported_metric_names_follow_the_task_and_the_head() {
    use spafit::data::TaskKind;
    let classes = |n: usize| TaskKind::Classification {
        labels: (0..n).map(|i| i.to_string()).collect(),
    };
    let names = |task, kind: &TaskKind| reported_names(task, kind);
    assert_eq!(names(None, &classes(2)), ["accuracy", "f1"]);
    assert_eq!(names(None, &classes(3)), ["accuracy"]);
    assert_eq!(names(None, &TaskKind::Regression), ["pearson", "spearman"]);
    assert_eq!(
        names(Some(GlueTask::Cola), &classes(2)),
        ["accuracy", "matthews_correlation"]
    );
    assert_eq!(names(Some(GlueTask::Qqp), &classes(2)), ["accuracy", "f1"]);
    assert_eq!(names(Some(GlueTask::Rte), &classes(2)), ["accuracy"]);
    assert_eq!(
        names(Some(GlueTask::Stsb), &TaskKind::Regression),
        ["pearson", "spearman"]
    );
}

#[test]
fn multi_label_metrics_by_hand() {
    // Three classes, four examples:
    //   gold {0, 2}  pred {0}     → class 0 tp; class 2 fn
    //   gold {}      pred {1}     → class 1 fp
    //   gold {1}     pred {1, 2}  → class 1 tp; class 2 fp
    //   gold {0, 1}  pred {0, 1}  → class 0 tp; class 1 tp (exact)
    let gold = vec![vec![0, 2], vec![], vec![1], vec![0, 1]];
    let pred = vec![vec![0], vec![1], vec![1, 2], vec![0, 1]];
    // Micro: tp 4, fp 2, fn 1 → 8 / 11.
    assert!((micro_f1(&pred, &gold) - 8.0 / 11.0).abs() < 1e-15);
    // Per class: 0 → tp 2, fp 0, fn 0: 1; 1 → tp 2, fp 1, fn 0: 4/5; 2 → tp 0: 0.
    assert!((macro_f1(&pred, &gold, 3) - (1.0 + 0.8 + 0.0) / 3.0).abs() < 1e-15);
    // A fourth class nobody has or predicts counts 0 in the mean.
    assert!((macro_f1(&pred, &gold, 4) - 1.8 / 4.0).abs() < 1e-15);
    assert_eq!(subset_accuracy(&pred, &gold), 0.25);
    // Predicting nothing: no true positive, F1 0; exact only where the gold set is empty.
    let nothing = vec![Vec::new(); 4];
    assert_eq!(micro_f1(&nothing, &gold), 0.0);
    assert_eq!(subset_accuracy(&nothing, &gold), 0.25);
    assert!(micro_f1(&pred[..3], &gold).is_nan() && subset_accuracy(&pred[..2], &gold).is_nan());

    let preds = Predictions::LabelSets {
        pred,
        gold,
        classes: 3,
    };
    let m = report(None, &preds, 3);
    assert_eq!(
        m.keys().collect::<Vec<_>>(),
        ["macro_f1", "micro_f1", "subset_accuracy"]
    );
    assert_eq!(main_metric(None, &preds), "micro_f1");
    let kind = spafit::data::TaskKind::MultiLabel {
        labels: vec!["a".into(), "b".into()],
    };
    assert_eq!(
        reported_names(None, &kind),
        ["macro_f1", "micro_f1", "subset_accuracy"]
    );
    assert_eq!(main_metric_name(None, &kind), "micro_f1");
}

/// Every name a report gives is among `METRIC_NAMES`, which a resumed run looks its best
/// evaluation's main metric up in.
#[test]
fn every_reported_metric_is_a_known_name() {
    use spafit::data::TaskKind;
    let names = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>();
    let kinds = [
        TaskKind::Classification { labels: names(2) },
        TaskKind::Classification { labels: names(3) },
        TaskKind::MultiLabel { labels: names(3) },
        TaskKind::Regression,
    ];
    let tasks = GlueTask::ALL.into_iter().map(Some).chain([None]);
    for task in tasks {
        for kind in &kinds {
            for name in reported_names(task, kind) {
                assert!(METRIC_NAMES.contains(&name.as_str()), "{name}");
            }
            assert!(METRIC_NAMES.contains(&main_metric_name(task, kind)));
        }
    }
}

/// Predictions from a NaN or infinite logit are refused, naming the example, as scored
/// predictions are (an argmax over NaN named a class).
#[test]
fn predictions_from_non_finite_logits_are_refused() {
    use spafit::data::{Target, TaskKind};
    use spafit::train::predictions;
    let kind = TaskKind::Classification {
        labels: vec!["a".into(), "b".into()],
    };
    let e = predictions(&kind, &[0.1, 0.2, f64::NAN, 0.2], 2).unwrap_err();
    assert!(e.to_string().contains("example 1 has the logit NaN"), "{e}");
    let e = predictions(&TaskKind::Regression, &[f64::INFINITY], 1).unwrap_err();
    assert!(e.to_string().contains("example 0 has the logit inf"), "{e}");
    assert_eq!(
        predictions(&kind, &[0.1, 0.2], 2).unwrap(),
        vec![Target::Class(1)]
    );
}

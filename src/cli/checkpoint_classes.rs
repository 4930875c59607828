//! A head's class names against the data's: a fine-tuned checkpoint's own (config.json's
//! `id2label`) and those an adapter records.

use spafit::adapter::AdapterHead;
use spafit::backend::Backend;
use spafit::checkpoint::Checkpoint;
use spafit::data::TaskKind;
use spafit::model::{BertClassifier, ClassAlignment};
use spafit::Result;

/// The classes a fine-tuned checkpoint's own head names (config.json's `id2label`), as the
/// label space custom data is read with when the user names none. `None` without a head of
/// two or more outputs with distinct, non-placeholder names.
pub fn checkpoint_head_kind(checkpoint: &Checkpoint) -> Option<TaskKind> {
    let n = checkpoint.classifier_outputs()?;
    let regression = n == 1 || checkpoint.config.problem_type.as_deref() == Some("regression");
    if let Some(problem) = checkpoint
        .config
        .class_names_problem(n)
        .filter(|_| !regression)
    {
        note!(
            "config.json's id2label names no classes ({problem}): the classes are 0 to {}",
            n - 1
        );
    }
    let labels = checkpoint.config.class_names(n).filter(|_| n > 1)?;
    Some(match checkpoint.is_multi_label() {
        true => TaskKind::MultiLabel { labels },
        false => TaskKind::Classification { labels },
    })
}

/// Whether the checkpoint's own head is a regressor: one output, which transformers reads as
/// a regression unless `problem_type` says it is a (one-class) classifier.
pub fn has_regressor_head(checkpoint: &Checkpoint) -> bool {
    checkpoint.classifier_outputs() == Some(1)
        && !checkpoint.is_multi_label()
        && checkpoint.config.problem_type.as_deref() != Some("single_label_classification")
}

/// Says which head a run from a checkpoint with one starts from: its own, or a fresh one
/// when it has another number of outputs than the data's classes (transformers would
/// refuse the load unless told to ignore the mismatch).
pub fn note_replaced_head(checkpoint: &Checkpoint, outputs: usize) {
    if let Some(kind) = checkpoint.other_kind_of_head() {
        note!("{kind}: training starts from a fresh head");
        return;
    }
    match checkpoint.classifier_outputs() {
        Some(n) if n != outputs => note!(
            "the checkpoint's classifier head has {n} output(s) and the data needs {outputs}: \
             training starts from a fresh head"
        ),
        Some(_) => note!("training starts from the checkpoint's own classifier head"),
        None => {}
    }
}

/// [`AdapterHead::check`] for an adapter on `checkpoint`: a refused head that names no
/// classes (a PEFT adapter's) is told by the names its model takes, the base's `id2label`.
pub fn check_adapter_head(
    head: &AdapterHead,
    checkpoint: &Checkpoint,
    kind: &TaskKind,
    data_name: &str,
    dir: &std::path::Path,
) -> Result<()> {
    head.check(kind, data_name, dir).map_err(|e| {
        let base_names = head
            .labels
            .is_none()
            .then(|| checkpoint.config.class_names(head.outputs))
            .flatten();
        match (e, base_names) {
            (spafit::Error::Mismatch { path, detail }, Some(names)) => spafit::Error::Mismatch {
                path,
                detail: format!(
                    "{detail}; its model takes the base's classes {names:?} (config.json's \
                     id2label), as transformers gives a PEFT adapter's model"
                ),
            },
            (e, _) => e,
        }
    })
}

/// Lines a fine-tuned checkpoint's own head up with the data's classes by name
/// ([`BertClassifier::align_classes`]), saying what it did.
pub fn match_checkpoint_classes<B: Backend>(
    checkpoint: &Checkpoint,
    classifier: &mut BertClassifier<B>,
    backend: &B,
    kind: &TaskKind,
) -> Result<()> {
    let done = classifier.align_classes(checkpoint, backend, kind)?;
    let source = match checkpoint.config.class_names(classifier.num_labels()) {
        Some(_) => " (config.json id2label)".to_string(),
        None => unnamed_outputs(classifier.num_labels()),
    };
    say_alignment(done, "the checkpoint's", &source, kind);
    Ok(())
}

/// Where the class names of a head whose outputs have none come from.
fn unnamed_outputs(n: usize) -> String {
    format!(
        " (its outputs are unnamed, as transformers' LABEL_0, LABEL_1, …, so output i is class \
         i, 0 to {})",
        n - 1
    )
}

/// Says how `whose` head (`source` saying where its class names come from) was lined up with
/// `kind`'s classes, where it was reordered or matched by position.
fn say_alignment(done: ClassAlignment, whose: &str, source: &str, kind: &TaskKind) {
    let Some(labels) = kind.class_names() else {
        return;
    };
    match done {
        ClassAlignment::NotNeeded | ClassAlignment::SameOrder => {}
        ClassAlignment::Reordered { head_classes } => note!(
            "{whose} classes {head_classes:?}{source} are the data's {labels:?} in another \
             order: its head is reordered to the data's"
        ),
        ClassAlignment::ByPosition { head_classes } => note!(
            "{whose} classes {head_classes:?}{source} are not the data's {labels:?}: matched by \
             position"
        ),
    }
}

/// Lines an adapter's head up with the data's classes when the adapter records the same
/// names in another order (an MNLI adapter trained on custom data, whose classes were sorted,
/// used with `--task mnli`), so its outputs, predictions and further training follow the
/// data's order; a PEFT adapter, which records none, by its base's `id2label` names. For
/// adapters only: a checkpoint's own head is [`match_checkpoint_classes`]'s.
pub fn match_adapter_classes<B: Backend>(
    head: &AdapterHead,
    checkpoint: &Checkpoint,
    classifier: &mut BertClassifier<B>,
    backend: &B,
    kind: &TaskKind,
) -> Result<()> {
    // A PEFT adapter records no class names: its model takes the base's id2label, as
    // transformers gives it, so the base's names line its head up (GLUE's MNLI names in
    // another order than a base fine-tuned on it).
    if head.labels.is_none() {
        // Whether or not the base has a head of its own: transformers names the outputs by
        // id2label either way.
        let (done, source) = match checkpoint.config.class_names(head.outputs) {
            Some(names) => (
                classifier.align_classes_named(names, backend, kind)?,
                " (the base's config.json id2label, which a PEFT adapter's model takes)"
                    .to_string(),
            ),
            None => (
                classifier.align_numbered_classes(backend, kind)?,
                unnamed_outputs(head.outputs),
            ),
        };
        say_alignment(done, "the adapter's", &source, kind);
        return Ok(());
    }
    // An adapter that records its names refuses other ones (`AdapterHead::check`): it is
    // reordered, never matched by position.
    let done = head.align(classifier, backend, kind)?;
    say_alignment(done, "the adapter's", "", kind);
    Ok(())
}

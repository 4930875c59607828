//! A fine-tuned checkpoint's own classes (config.json's `id2label`) against the data's.

use spafit::backend::Backend;
use spafit::checkpoint::Checkpoint;
use spafit::data::TaskKind;
use spafit::model::BertClassifier;
use spafit::Result;

/// Lines a fine-tuned checkpoint's own head up with the data's classes by name, as transformers'
/// run_glue does: the same names in another order (an MNLI model trained as contradiction,
/// neutral, entailment against GLUE's entailment, neutral, contradiction) reorder the head;
/// other names leave the classes matched by position, with a notice.
pub fn match_checkpoint_classes<B: Backend>(
    checkpoint: &Checkpoint,
    classifier: &mut BertClassifier<B>,
    backend: &B,
    kind: &TaskKind,
) -> Result<()> {
    let TaskKind::Classification { labels } = kind else {
        return Ok(());
    };
    let (n, hidden) = (classifier.num_labels, checkpoint.config.hidden_size);
    // A head drawn fresh (the checkpoint has none of this size) has no classes to match.
    let weights = &checkpoint.weights;
    if weights.shape("classifier.weight") != Some(vec![n, hidden])
        || weights.shape("classifier.bias") != Some(vec![n])
    {
        return Ok(());
    }
    let Some(names) = checkpoint.config.class_names(n) else {
        return Ok(());
    };
    if &names == labels {
        return Ok(());
    }
    let lower = |v: &[String]| v.iter().map(|s| s.to_lowercase()).collect::<Vec<_>>();
    let (names_lower, labels_lower) = (lower(&names), lower(labels));
    let order: Option<Vec<usize>> = labels_lower
        .iter()
        .map(|l| names_lower.iter().position(|n| n == l))
        .collect();
    let mut sorted = (names_lower.clone(), labels_lower.clone());
    sorted.0.sort();
    sorted.1.sort();
    let identity = |o: &Vec<usize>| o.iter().enumerate().all(|(j, &i)| i == j);
    match order.filter(|_| sorted.0 == sorted.1) {
        Some(order) if identity(&order) => Ok(()),
        Some(order) => {
            eprintln!(
                "the checkpoint's classes {names:?} (config.json id2label) are the data's \
                 {labels:?} in another order: its head is reordered to the data's"
            );
            classifier.reorder_classes(backend, &order)
        }
        None => {
            eprintln!(
                "the checkpoint's classes {names:?} (config.json id2label) are not the data's \
                 {labels:?}: matched by position"
            );
            Ok(())
        }
    }
}

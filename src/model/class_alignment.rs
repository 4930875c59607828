//! A fine-tuned checkpoint's head against the data's classes: the head's outputs follow the
//! checkpoint's `id2label` order, which need not be the data's (an MNLI model trained as
//! contradiction, neutral, entailment against GLUE's entailment, neutral, contradiction).

use super::BertClassifier;
use crate::backend::Backend;
use crate::checkpoint::Checkpoint;
use crate::data::{class_order, numbered_classes, TaskKind};
use crate::error::Result;

/// What [`BertClassifier::align_classes`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassAlignment {
    /// Nothing to line up: regression, a head not taken from the checkpoint (another number
    /// of outputs, or drawn fresh), or an `id2label` that names no classes (placeholders
    /// such as `LABEL_0`, or none at all) against data whose classes are not the numbers 0
    /// to n-1 ([`BertClassifier::align_numbered_classes`]).
    NotNeeded,
    /// The checkpoint (or adapter) names the data's classes in the data's order.
    SameOrder,
    /// The checkpoint (or adapter) names the data's classes in another order: the head
    /// was reordered to the data's.
    Reordered {
        /// The head's class names, in its original order.
        head_classes: Vec<String>,
    },
    /// The checkpoint names other classes than the data: outputs stay matched by position
    /// (an adapter's head refuses such data instead).
    ByPosition {
        /// The head's class names, in its order.
        head_classes: Vec<String>,
    },
}

impl<B: Backend> BertClassifier<B> {
    /// Lines a head taken from `checkpoint` ([`BertClassifier::from_checkpoint`] or
    /// [`BertClassifier::from_fine_tuned`]) up with the data's classes by name, as
    /// transformers' run_glue does: the same names in another order reorder the head; other
    /// names leave it as it is. Call it before training or evaluating on `kind`'s data.
    pub fn align_classes(
        &mut self,
        checkpoint: &Checkpoint,
        backend: &B,
        kind: &TaskKind,
    ) -> Result<ClassAlignment> {
        let n = self.num_labels();
        // A head drawn fresh (the checkpoint has none of this size) has no classes to match.
        if checkpoint.classifier_outputs() != Some(n) {
            return Ok(ClassAlignment::NotNeeded);
        }
        match checkpoint.config.class_names(n) {
            Some(names) => self.align_classes_named(names, backend, kind),
            None => self.align_numbered_classes(backend, kind),
        }
    }

    /// Lines up a head whose outputs have no names (transformers' placeholders `LABEL_0`,
    /// `LABEL_1`, …, or no `id2label`) with data whose classes are the numbers 0 to n-1 in
    /// some order: output `i` is class `i`, as transformers trained it from such data
    /// (run_glue's label ids are the sorted labels, so `2` is id 2). Data with other classes
    /// is left matched by position: nothing else says which output is which.
    pub fn align_numbered_classes(
        &mut self,
        backend: &B,
        kind: &TaskKind,
    ) -> Result<ClassAlignment> {
        let numbers = kind
            .class_names()
            .filter(|labels| labels.len() == self.num_labels())
            .and_then(numbered_classes);
        match numbers {
            Some(numbers) => self.align_classes_named(numbers, backend, kind),
            None => Ok(ClassAlignment::NotNeeded),
        }
    }

    /// Lines the head up with the data's classes by `names`, the head's outputs' class names
    /// in order (a PEFT adapter's, which its base's `id2label` gives, head or none): the same
    /// names in another order reorder the head; other names leave it as it is.
    pub fn align_classes_named(
        &mut self,
        names: Vec<String>,
        backend: &B,
        kind: &TaskKind,
    ) -> Result<ClassAlignment> {
        let Some(labels) = kind.class_names() else {
            return Ok(ClassAlignment::NotNeeded);
        };
        match class_order(labels, &names) {
            Some(order) if order.iter().enumerate().all(|(j, &i)| i == j) => {
                Ok(ClassAlignment::SameOrder)
            }
            Some(order) => {
                self.reorder_classes(backend, &order)?;
                Ok(ClassAlignment::Reordered {
                    head_classes: names,
                })
            }
            None => Ok(ClassAlignment::ByPosition {
                head_classes: names,
            }),
        }
    }
}

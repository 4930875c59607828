//! Predictions for texts held in memory, the shortest way from strings to answers for a
//! program that embeds a trained model.

use super::{infer, scored_predictions_at, EncodedDataset, Prediction};
use crate::backend::Backend;
use crate::data::{Dataset, Example, TaskKind};
use crate::error::Result;
use crate::model::BertClassifier;
use crate::text::TextTokenizer;

/// The model's answer for each text, in order: tokenized by `tokenizer` (cut to its
/// `max_len`, as training cut its examples), run in evaluation mode `batch_size` texts at a
/// time. A head of one output gives scores, a wider one classes with their probabilities
/// (sets of classes for a multi-label head: [`BertClassifier::is_multi_label`]).
/// A model trained on text pairs wants [`predict_text_pairs`].
pub fn predict_texts<B: Backend, S: AsRef<str>>(
    backend: &B,
    model: &BertClassifier<B>,
    tokenizer: &TextTokenizer,
    texts: &[S],
    batch_size: usize,
) -> Result<Vec<Prediction>> {
    let examples = texts.iter().map(|t| unlabeled(t.as_ref(), None)).collect();
    predict_examples(backend, model, tokenizer, examples, batch_size)
}

/// [`predict_texts`] for pairs of texts (sentence pairs, question and passage), each pair
/// read as one input, `[CLS] first [SEP] second [SEP]`, as training read its pairs.
pub fn predict_text_pairs<B: Backend, S: AsRef<str>>(
    backend: &B,
    model: &BertClassifier<B>,
    tokenizer: &TextTokenizer,
    pairs: &[(S, S)],
    batch_size: usize,
) -> Result<Vec<Prediction>> {
    let examples = pairs
        .iter()
        .map(|(a, b)| unlabeled(a.as_ref(), Some(b.as_ref())))
        .collect();
    predict_examples(backend, model, tokenizer, examples, batch_size)
}

fn unlabeled(text_a: &str, text_b: Option<&str>) -> Example {
    Example {
        text_a: text_a.to_string(),
        text_b: text_b.map(str::to_string),
        target: None,
    }
}

fn predict_examples<B: Backend>(
    backend: &B,
    model: &BertClassifier<B>,
    tokenizer: &TextTokenizer,
    examples: Vec<Example>,
    batch_size: usize,
) -> Result<Vec<Prediction>> {
    let k = model.num_labels();
    // The head's width and kind say the task; class names play no part in the answers.
    let labels = || (0..k).map(|c| c.to_string()).collect();
    let kind = match (k, model.is_multi_label()) {
        (1, false) => TaskKind::Regression,
        (_, true) => TaskKind::MultiLabel { labels: labels() },
        (_, false) => TaskKind::Classification { labels: labels() },
    };
    let data = Dataset::from_examples("texts", kind, examples);
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let encoded = EncodedDataset::new(tokenizer, &data)?;
    let outputs = infer(backend, model, &encoded, batch_size)?;
    scored_predictions_at(
        &encoded.kind,
        &outputs.logits,
        k,
        model.decision_threshold(),
    )
}

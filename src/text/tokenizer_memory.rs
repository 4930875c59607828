//! The memory tokenizers takes for a long text, checked before it is taken. Its normalized
//! strings keep an alignment per byte and its pre-tokenizers and models copies of each piece:
//! about 200 bytes per byte of text under byte-level BPE and SentencePiece (an 8 MB word took
//! 1.6 GB under RoBERTa's and XLM-R's pipelines, 0.47 GB of non-ASCII letters under BERT's).
//! A cell of tens of megabytes that no cut shortens (one word, or a pair of texts) then ended
//! the process: an allocation failed and aborted it, or tokenizers' regex engine panicked.

use tokenizers::models::ModelWrapper;

/// Texts shorter than this are tokenized unchecked: at most a few hundred megabytes.
const CHECKED_FROM_BYTES: usize = 1 << 20;

/// Bytes of memory tokenizing a byte of text takes at its peak, by model (measured, with a
/// margin; WordPiece's pieces are few where its words are long).
fn bytes_per_text_byte(model: &ModelWrapper) -> usize {
    match model {
        ModelWrapper::WordPiece(_) => 64,
        _ => 224,
    }
}

/// Why `text_bytes` of text cannot be tokenized by `model` in the memory this process can
/// still take, if it cannot (lenient where the room is unknown).
pub(super) fn too_long_for_memory(model: &ModelWrapper, text_bytes: usize) -> Option<String> {
    if text_bytes < CHECKED_FROM_BYTES {
        return None;
    }
    let needed = text_bytes.saturating_mul(bytes_per_text_byte(model));
    let (room, under) = crate::model::available_host_memory()?;
    let mb = |bytes: usize| bytes.div_ceil(1 << 20);
    (needed > room).then(|| {
        format!(
            "tokenizing {} MB of text takes about {} MB, more than the {} MB this process can \
             still take{under}; only its first tokens are kept: shorten it, or split the word \
             it cannot cut",
            mb(text_bytes),
            mb(needed),
            mb(room)
        )
    })
}

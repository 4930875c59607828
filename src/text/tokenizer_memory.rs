//! The memory tokenizers takes for a long text, checked before it is taken. Its normalized
//! strings keep an alignment per byte and its pre-tokenizers and models copies of each piece:
//! about 200 bytes per byte of text under byte-level BPE and SentencePiece (an 8 MB word took
//! 1.6 GB under RoBERTa's and XLM-R's pipelines; 8 MiB of ordinary text 1.59 GB under
//! RoBERTa's), about 120 under WordPiece (8 MiB of ordinary text 0.98 GB under MiniLM's; 8 MB
//! of one non-ASCII word 0.47 GB). A cell of tens of megabytes that no cut shortens (one word,
//! or a pair of texts) then ended the process: an allocation failed and aborted it, or
//! tokenizers' regex engine panicked.

use tokenizers::models::ModelWrapper;

/// Texts shorter than this are tokenized unchecked: at most a few hundred megabytes.
const CHECKED_FROM_BYTES: usize = 1 << 20;

/// Bytes of memory tokenizing a byte of text takes at its peak, by model (measured, with a
/// margin of about a sixth).
fn bytes_per_text_byte(model: &ModelWrapper) -> usize {
    match model {
        ModelWrapper::WordPiece(_) => 136,
        _ => 224,
    }
}

/// A text refused for the memory it would take, as tokenizers' error type carries it, so that
/// the encoder reports it as out of memory rather than as a malformed text.
#[derive(Debug)]
pub(super) struct TooLongForMemory(pub(super) String);

impl std::fmt::Display for TooLongForMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TooLongForMemory {}

/// Why `text_bytes` of text cannot be tokenized by `model` in the memory this process can
/// still take, if it cannot (lenient where the room is unknown); `max_len` is the tokens
/// the text's encoding keeps.
pub(super) fn too_long_for_memory(
    model: &ModelWrapper,
    text_bytes: usize,
    max_len: usize,
) -> Option<String> {
    if text_bytes < CHECKED_FROM_BYTES {
        return None;
    }
    let needed = text_bytes.saturating_mul(bytes_per_text_byte(model));
    let (room, under) = crate::model::available_host_memory()?;
    let mb = |bytes: usize| bytes.div_ceil(1 << 20);
    (needed > room).then(|| {
        format!(
            "tokenizing {} MB of text takes about {} MB, more than the {} MB this process can \
             still take{under}, though only its first {max_len} tokens are used: shorten it \
             (a word this long cannot be cut before tokenizing)",
            mb(text_bytes),
            mb(needed),
            mb(room)
        )
    })
}

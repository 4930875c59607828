//! Texts far longer than the truncation length, tokenized only as far as the truncation
//! keeps: a 15 MB text cut to 64 tokens cost seconds and gigabytes, tokenized whole. (A
//! pair's texts are tokenized whole, its truncated tokens dropped: `TextTokenizer`.)
//!
//! Where the pipeline is BERT's (its normalizer, which maps each character on its own, and
//! its pre-tokenizer, which splits at whitespace), or RoBERTa's (no normalizer, and GPT-2's
//! byte-level split, whose words, numbers and punctuation runs all stop at whitespace), the
//! tokens of a prefix that ends before an ASCII whitespace character, after a character that
//! is not whitespace, are the first tokens of the whole text. (After whitespace the rule
//! would fail RoBERTa: GPT-2's split gives a run of spaces followed by a word one piece less
//! than a run that ends the text.) So a prefix holding at least `max_len` tokens encodes,
//! after truncation from the right, to the very ids of the whole text. Other pipelines
//! (SentencePiece's normalizers, custom splits) tokenize whole.

use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{Tokenizer, TruncationDirection};

/// Texts shorter than this many bytes per token kept are tokenized whole: cutting them saves
/// little, and most texts are.
const BYTES_PER_TOKEN_BEFORE_CUTTING: usize = 32;

/// Where the first try cuts, in bytes per token kept: English WordPiece averages 4–5.
const FIRST_CUT_BYTES_PER_TOKEN: usize = 8;

/// Whether `tokenizer`'s pipeline allows cutting long texts (see the module's doc) when it
/// truncates from `direction`.
pub(super) fn can_cut(tokenizer: &Tokenizer, direction: TruncationDirection) -> bool {
    let bert_normalizer = matches!(
        tokenizer.get_normalizer(),
        None | Some(NormalizerWrapper::BertNormalizer(_))
    );
    let bert_pre_tokenizer = matches!(
        tokenizer.get_pre_tokenizer(),
        Some(PreTokenizerWrapper::BertPreTokenizer(_))
    );
    let byte_level = match (tokenizer.get_normalizer(), tokenizer.get_pre_tokenizer()) {
        (None, Some(PreTokenizerWrapper::ByteLevel(b))) => b.use_regex,
        _ => false,
    };
    // An added token that holds whitespace could straddle a cut.
    let added_tokens_whole = tokenizer
        .get_added_tokens_decoder()
        .values()
        .all(|t| !t.content.contains(|c: char| c.is_whitespace()));
    direction == TruncationDirection::Right
        && ((bert_normalizer && bert_pre_tokenizer) || byte_level)
        && added_tokens_whole
}

/// A prefix of `text` holding at least `max_len` tokens, when `text` is long enough to be
/// worth cutting and one exists; `truncating` truncates to `max_len` from the right, so its
/// count of a prefix's tokens (no special tokens) is at most `max_len`.
pub(super) fn prefix_with_tokens<'t>(
    truncating: &Tokenizer,
    text: &'t str,
    max_len: usize,
) -> Option<&'t str> {
    if text.len() < BYTES_PER_TOKEN_BEFORE_CUTTING * max_len.max(64) {
        return None;
    }
    // Padding would make every count `max_len`: `TextTokenizer` removes the file's.
    debug_assert!(truncating.get_padding().is_none());
    let mut budget = FIRST_CUT_BYTES_PER_TOKEN * max_len.max(64);
    loop {
        // An ASCII byte is a character boundary; the first one after a character that is
        // not whitespace.
        let bytes = text.as_bytes();
        let cut = (budget..bytes.len()).find(|&i| {
            b" \t\n\r".contains(&bytes[i])
                && text[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| !c.is_whitespace())
        })?;
        // Past half the text, the rest costs less than another try.
        if cut >= text.len() / 2 {
            return None;
        }
        let prefix = &text[..cut];
        let tokens = truncating.encode(prefix, false).ok()?.len();
        if tokens >= max_len {
            return Some(prefix);
        }
        // Never the same cut twice: past this one, four times as far.
        budget = (budget * 4).max(cut + 1);
    }
}

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
//! than a run that ends the text.) Where it is SentencePiece's as XLM-R's class builds it (a
//! normalization table applied grapheme by grapheme, then a split at whitespace, each word
//! tokenized on its own), the same holds for a prefix that ends after an ASCII character
//! that is not whitespace: a grapheme cluster always ends there, which a character such as
//! U+0600 (it joins the space after it into one cluster) would not promise. So a prefix
//! holding at least `max_len` tokens encodes, after truncation from the right, to the very
//! ids of the whole text. Other pipelines (custom normalizers and splits) tokenize whole.

use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{NormalizedString, Normalizer, Tokenizer, TruncationDirection};

/// Texts shorter than this many bytes per token kept are tokenized whole: cutting them saves
/// little, and most texts are.
const BYTES_PER_TOKEN_BEFORE_CUTTING: usize = 32;

/// Where the first try cuts, in bytes per token kept: English WordPiece averages 4–5.
const FIRST_CUT_BYTES_PER_TOKEN: usize = 8;

/// The ASCII whitespace a cut falls before.
const CUT_BEFORE: [u8; 4] = *b" \t\n\r";

/// Where a long text may be cut (see the module's doc).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum CutRule {
    /// Before ASCII whitespace that follows a character that is not whitespace: BERT's and
    /// RoBERTa's pipelines.
    AfterNonSpace,
    /// Before ASCII whitespace that follows an ASCII character that is not whitespace:
    /// SentencePiece's pipeline, whose table maps grapheme clusters.
    AfterAsciiNonSpace,
}

/// Where `tokenizer`'s pipeline allows cutting long texts (see the module's doc) when it
/// truncates from `direction`, if it does.
pub(super) fn cut_rule(tokenizer: &Tokenizer, direction: TruncationDirection) -> Option<CutRule> {
    // An added token that holds whitespace could straddle a cut.
    let added_tokens_whole = tokenizer
        .get_added_tokens_decoder()
        .values()
        .all(|t| !t.content.contains(|c: char| c.is_whitespace()));
    if direction != TruncationDirection::Right || !added_tokens_whole {
        return None;
    }
    let normalizer = tokenizer.get_normalizer();
    let bert_normalizer = matches!(
        normalizer,
        None | Some(NormalizerWrapper::BertNormalizer(_))
    );
    match tokenizer.get_pre_tokenizer() {
        Some(PreTokenizerWrapper::BertPreTokenizer(_)) if bert_normalizer => {
            Some(CutRule::AfterNonSpace)
        }
        Some(PreTokenizerWrapper::ByteLevel(b)) if normalizer.is_none() && b.use_regex => {
            Some(CutRule::AfterNonSpace)
        }
        Some(PreTokenizerWrapper::Sequence(s))
            if splits_at_whitespace_first(s.as_ref()) && keeps_whitespace_apart(normalizer) =>
        {
            Some(CutRule::AfterAsciiNonSpace)
        }
        _ => None,
    }
}

/// A split at whitespace, then Metaspace (which only marks the words it is given).
fn splits_at_whitespace_first(steps: &[PreTokenizerWrapper]) -> bool {
    matches!(
        steps,
        [
            PreTokenizerWrapper::WhitespaceSplit(_),
            PreTokenizerWrapper::Metaspace(_)
        ]
    )
}

/// No normalizer, or a SentencePiece table that maps each whitespace character a cut falls
/// before to whitespace (a table that dropped one, or mapped it to a letter, would join the
/// words on either side of a cut).
fn keeps_whitespace_apart(normalizer: Option<&NormalizerWrapper>) -> bool {
    let table = match normalizer {
        None => return true,
        Some(table @ NormalizerWrapper::Precompiled(_)) => table,
        Some(_) => return false,
    };
    CUT_BEFORE.iter().all(|&b| {
        let mut text = NormalizedString::from((b as char).to_string());
        table.normalize(&mut text).is_ok()
            && !text.get().is_empty()
            && text.get().chars().all(char::is_whitespace)
    })
}

/// A prefix of `text` holding at least `max_len` tokens of `tokenizer` (which neither
/// truncates nor pads), when `text` is long enough to be worth cutting and one exists.
pub(super) fn prefix_with_tokens<'t>(
    tokenizer: &Tokenizer,
    rule: CutRule,
    text: &'t str,
    max_len: usize,
) -> Option<&'t str> {
    if text.len() < BYTES_PER_TOKEN_BEFORE_CUTTING * max_len.max(64) {
        return None;
    }
    // Padding or truncation would change the counts: `TextTokenizer` removes the file's.
    debug_assert!(tokenizer.get_padding().is_none() && tokenizer.get_truncation().is_none());
    let mut budget = FIRST_CUT_BYTES_PER_TOKEN * max_len.max(64);
    loop {
        // An ASCII byte is a character boundary; the first one after a character the rule
        // allows.
        let bytes = text.as_bytes();
        let cut = (budget..bytes.len()).find(|&i| {
            CUT_BEFORE.contains(&bytes[i])
                && text[..i].chars().next_back().is_some_and(|c| match rule {
                    CutRule::AfterNonSpace => !c.is_whitespace(),
                    CutRule::AfterAsciiNonSpace => c.is_ascii() && !c.is_ascii_whitespace(),
                })
        })?;
        // Past half the text, the rest costs less than another try.
        if cut >= text.len() / 2 {
            return None;
        }
        let prefix = &text[..cut];
        let tokens = tokenizer.encode(prefix, false).ok()?.len();
        if tokens >= max_len {
            return Some(prefix);
        }
        // Never the same cut twice: past this one, four times as far.
        budget = (budget * 4).max(cut + 1);
    }
}

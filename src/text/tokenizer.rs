//! Hugging Face `tokenizer.json` through the `tokenizers` crate, with spafit's own
//! truncation (longest-first to a max length, from the side the checkpoint names) and dynamic
//! padding to the longest row, whatever padding or truncation length the file has baked in.

use std::path::{Path, PathBuf};

use tokenizers::{
    PaddingParams, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use super::tokenizer_config::TokenizerConfig;
use super::tokenizer_memory::TooLongForMemory;
use crate::error::{Error, Result};

/// One example's text: a sentence or a sentence pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextInput<'a> {
    /// A single sentence.
    Single(&'a str),
    /// A sentence pair (`[CLS] a [SEP] b [SEP]`, token types 0 then 1 where the checkpoint's
    /// tokenizer gives segment ids).
    Pair(&'a str, &'a str),
}

/// Token ids of a batch padded to its longest row, row-major `[batch, seq]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedBatch {
    /// Token ids (padding uses the tokenizer's pad id).
    pub input_ids: Vec<u32>,
    /// Segment ids (0 for the first sentence, 1 for the second; all 0 where the checkpoint's
    /// tokenizer gives none, as transformers' BERT then assumes).
    pub token_type_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Rows.
    pub batch: usize,
    /// Tokens per row after padding.
    pub seq: usize,
}

/// One encoded input before padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedText {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Segment ids.
    pub type_ids: Vec<u32>,
}

impl EncodedBatch {
    /// Pads `rows` to the longest one with `pad_id` (mask 0, segment 0). Fails on a row
    /// whose segment ids are not one per token.
    pub fn pad(rows: &[&EncodedText], pad_id: u32) -> Result<Self> {
        if let Some((i, r)) = rows
            .iter()
            .enumerate()
            .find(|(_, r)| r.type_ids.len() != r.ids.len())
        {
            return Err(Error::shape(
                "pad",
                format!(
                    "row {i} has {} token ids but {} segment ids",
                    r.ids.len(),
                    r.type_ids.len()
                ),
            ));
        }
        let seq = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
        let batch = rows.len();
        let mut out = EncodedBatch {
            input_ids: vec![pad_id; batch * seq],
            token_type_ids: vec![0; batch * seq],
            attention_mask: vec![0; batch * seq],
            batch,
            seq,
        };
        for (i, r) in rows.iter().enumerate() {
            let (n, at) = (r.ids.len(), i * seq);
            out.input_ids[at..at + n].copy_from_slice(&r.ids);
            out.token_type_ids[at..at + n].copy_from_slice(&r.type_ids);
            out.attention_mask[at..at + n].fill(1);
        }
        Ok(out)
    }

    /// Row `i` of a `[batch, seq]` field. Panics when `i` is not below `batch`, as slice
    /// indexing does.
    pub fn row<'a>(&self, field: &'a [u32], i: usize) -> &'a [u32] {
        &field[i * self.seq..(i + 1) * self.seq]
    }
}

/// A tokenizer loaded from `tokenizer.json`.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    pad_id: u32,
    max_len: usize,
    /// The side long inputs lose tokens from.
    direction: TruncationDirection,
    /// Whether the model gets the tokenizer's segment ids (else all 0), as transformers'
    /// `model_input_names` decides.
    segment_ids: bool,
    /// Why sentence pairs cannot be encoded for the model this tokenizer feeds, if they
    /// cannot (single sentences still can).
    pairs_refused: Option<String>,
    /// Where a single text far longer than the truncation keeps may be cut, to be tokenized
    /// only as far as it keeps (`long_text`): BERT's, RoBERTa's and XLM-R's pipelines,
    /// truncated from the right.
    cut_rule: Option<super::long_text::CutRule>,
    /// The length runs of ASCII letters and digits past WordPiece's word limit are cut to
    /// before tokenizing (`long_words`), where that keeps the ids: BERT's pipeline.
    shortened_run_length: Option<usize>,
}

/// The settings that decide the encoding (the vocabulary and its rules stay out of it).
impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("max_len", &self.max_len)
            .field("pad_id", &self.pad_id)
            .field("truncation", &self.direction)
            .field("segment_ids", &self.segment_ids)
            .field("pairs_refused", &self.pairs_refused)
            .finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Loads `path`, truncating encodings longest-first to `max_len` tokens (special tokens
    /// included), from the side its own truncation settings name (else the right).
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        let (inner, pad_id, direction) = Self::parse(path)?;
        Self::from_parts(inner, path, pad_id, max_len, direction, true)
    }

    /// Loads `path`, a BERT checkpoint's `tokenizer.json`, as transformers does beside
    /// `config` (the checkpoint's `tokenizer_config.json`, if any): unless that names another
    /// class, `BertTokenizer`'s own pipeline from the config's settings (or the class's
    /// defaults) over `path`'s vocabulary and added tokens, even where `path` says otherwise
    /// (a `tokenizer.json` that lower-cases beside `do_lower_case: false` gives cased ids in
    /// transformers, so here too); and with the tokens the config adds
    /// (`added_tokens_decoder`, `extra_special_tokens`). `special_tokens_map.json` beside
    /// `path` overrides the config's named special tokens where transformers reads it (a
    /// config without `added_tokens_decoder`). Truncates as [`TextTokenizer::from_file`],
    /// from the side the config's `truncation_side` names, if it does; gives segment ids
    /// where transformers' tokenizer returns them (`model_input_names`, else the class).
    pub fn from_files(path: &Path, config: Option<&Path>, max_len: usize) -> Result<Self> {
        Self::from_files_of_class(path, config, max_len, None)
    }

    /// [`TextTokenizer::from_files`] for a checkpoint whose model family implies a
    /// tokenizer class where `tokenizer_config.json` names none (transformers' AutoTokenizer
    /// then picks the class from `config.json`'s `model_type`: `RobertaTokenizer` for
    /// RoBERTa).
    pub(crate) fn from_files_of_class(
        path: &Path,
        config: Option<&Path>,
        max_len: usize,
        implied_class: Option<&str>,
    ) -> Result<Self> {
        let mut settings = TokenizerConfig::read(config, folder_of(path))?;
        settings.imply_class(implied_class);
        let (inner, pad_id, baked) = Self::parse(path)?;
        let (mut inner, pad_id) =
            super::tokenizer_class::as_transformers_loads(inner, pad_id, path, &settings)?;
        inner.set_encode_special_tokens(settings.split_special_tokens()?);
        let direction = settings.truncation_side()?.unwrap_or(baked);
        let segment_ids =
            settings.segment_ids(super::tokenizer_class::class_gives_segment_ids(&settings))?;
        Self::from_parts(inner, path, pad_id, max_len, direction, segment_ids)
    }

    /// The tokenizer in `path` without its padding, the padding id it names and the side
    /// its truncation settings cut from (the right without any).
    fn parse(path: &Path) -> Result<(Tokenizer, u32, TruncationDirection)> {
        let format = |detail: String| Error::Format {
            path: path.to_path_buf(),
            detail,
        };
        if path.is_dir() {
            return Err(format(
                "is a folder, where the tokenizer's file belongs".into(),
            ));
        }
        if !path.exists() {
            return Err(Error::Io {
                path: path.to_path_buf(),
                error: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "tokenizer file not found",
                ),
            });
        }
        if !path.is_file() {
            return Err(format(
                "is not a regular file (a named pipe?): the tokenizer is read from one".into(),
            ));
        }
        let text = crate::text_file::read_utf8(path)?;
        check_sentencepiece_tables(&text).map_err(format)?;
        let mut inner: Tokenizer = text
            .parse()
            .map_err(|e| format(format!("invalid tokenizer: {e}")))?;
        let pad_id = match inner.get_padding() {
            Some(PaddingParams { pad_id, .. }) => *pad_id,
            None => inner.token_to_id("[PAD]").unwrap_or(0),
        };
        inner.with_padding(None);
        let direction = inner
            .get_truncation()
            .map_or(TruncationDirection::Right, |t| t.direction);
        Ok((inner, pad_id, direction))
    }

    /// BERT's WordPiece tokenizer built from `vocab` (`vocab.txt`) and, when given, its
    /// `tokenizer_config.json` (with `special_tokens_map.json` beside it as in
    /// [`TextTokenizer::from_files`]), as transformers converts them for `BertTokenizerFast`:
    /// for checkpoints without a `tokenizer.json`. Truncates as [`TextTokenizer::from_file`].
    pub fn from_vocab(vocab: &Path, config: Option<&Path>, max_len: usize) -> Result<Self> {
        Self::from_vocab_of_class(vocab, config, max_len, None)
    }

    /// [`TextTokenizer::from_vocab`] with `implied_class` taken where the config names no
    /// class, as AutoTokenizer takes config.json's or the model type's (`MPNetTokenizer`:
    /// BERT's pipeline with MPNet's template and special tokens).
    pub(crate) fn from_vocab_of_class(
        vocab: &Path,
        config: Option<&Path>,
        max_len: usize,
        implied_class: Option<&str>,
    ) -> Result<Self> {
        let mut settings = TokenizerConfig::read(config, folder_of(vocab))?;
        settings.imply_class(implied_class);
        let (mut inner, pad_id) =
            super::wordpiece_vocab::bert_tokenizer_from_vocab(vocab, &settings)?;
        inner.set_encode_special_tokens(settings.split_special_tokens()?);
        let direction = settings
            .truncation_side()?
            .unwrap_or(TruncationDirection::Right);
        let class_default = super::tokenizer_class::class_gives_segment_ids(&settings);
        let segment_ids = settings.segment_ids(class_default)?;
        Self::from_parts(inner, vocab, pad_id, max_len, direction, segment_ids)
    }

    /// RoBERTa's byte-level BPE tokenizer built from `vocab` (`vocab.json`), `merges`
    /// (`merges.txt`) and, when given, its `tokenizer_config.json`, as transformers builds
    /// `RobertaTokenizer` from them: for RoBERTa checkpoints without a `tokenizer.json`.
    /// Truncates as [`TextTokenizer::from_file`]; gives no segment ids unless the config's
    /// `model_input_names` asks for them.
    pub fn from_bpe_vocab(
        vocab: &Path,
        merges: &Path,
        config: Option<&Path>,
        max_len: usize,
    ) -> Result<Self> {
        let settings = TokenizerConfig::read(config, folder_of(vocab))?;
        let (mut inner, pad_id) =
            super::roberta_tokenizer::roberta_tokenizer_from_vocab(vocab, merges, &settings)?;
        inner.set_encode_special_tokens(settings.split_special_tokens()?);
        let direction = settings
            .truncation_side()?
            .unwrap_or(TruncationDirection::Right);
        let segment_ids = settings.segment_ids(false)?;
        Self::from_parts(inner, vocab, pad_id, max_len, direction, segment_ids)
    }

    fn from_parts(
        inner: Tokenizer,
        path: &Path,
        pad_id: u32,
        max_len: usize,
        direction: TruncationDirection,
        segment_ids: bool,
    ) -> Result<Self> {
        // The added tokens as the input meets them, for both shortcuts (neither where one
        // matches everywhere).
        let added = super::added_tokens::matched_tokens(&inner);
        let cut_rule = added
            .as_deref()
            .and_then(|added| super::long_text::cut_rule(&inner, direction, added));
        let shortened_run_length = added
            .as_deref()
            .and_then(|added| super::long_words::shortened_run_length(&inner, added));
        let mut inner = inner;
        inner
            .with_truncation(None)
            .map_err(|e| Error::invalid("tokenizer", e.to_string()))?;
        let mut tok = TextTokenizer {
            inner,
            path: path.to_path_buf(),
            pad_id,
            max_len: 0,
            direction,
            segment_ids,
            pairs_refused: None,
            cut_rule,
            shortened_run_length,
        };
        tok.set_max_len(max_len)?;
        Ok(tok)
    }

    /// Changes the truncation length.
    pub fn set_max_len(&mut self, max_len: usize) -> Result<()> {
        let min = self.special_tokens(false);
        if max_len <= min {
            return Err(Error::invalid(
                "tokenizer",
                format!("max length {max_len} leaves no room next to {min} special tokens"),
            ));
        }
        self.max_len = max_len;
        Ok(())
    }

    /// Special tokens the post-processor adds to one sentence, or to a pair.
    pub(crate) fn special_tokens(&self, pair: bool) -> usize {
        self.inner
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, pair))
    }

    /// Makes every sentence pair an error saying `reason`: for a model that cannot take
    /// what the tokenizer makes of a pair (segment ids beyond its `type_vocab_size`), which
    /// single sentences need not share.
    pub fn refuse_pairs(&mut self, reason: impl Into<String>) {
        self.pairs_refused = Some(reason.into());
    }

    /// Whether sentence pairs can be encoded: refused for a model that cannot take them
    /// ([`TextTokenizer::refuse_pairs`]) or a max length without room for their special
    /// tokens. Lets a caller refuse pair data before any work.
    pub fn check_pairs(&self) -> Result<()> {
        if let Some(reason) = &self.pairs_refused {
            return Err(Error::invalid("sentence pairs", reason.clone()));
        }
        let min = self.special_tokens(true);
        if self.max_len <= min {
            return Err(Error::invalid(
                "sentence pairs",
                format!(
                    "max length {} leaves no room for a sentence pair next to its {min} special \
                     tokens: raise the max length (--max-len in the CLI)",
                    self.max_len
                ),
            ));
        }
        Ok(())
    }

    /// The truncation length.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The largest token id the tokenizer can produce (added tokens included), with its
    /// token: ids need not be contiguous, so this, not the count, must fit the embeddings.
    pub fn largest_id(&self) -> Option<(u32, String)> {
        self.inner
            .get_vocab(true)
            .into_iter()
            .max_by_key(|(_, id)| *id)
            .map(|(token, id)| (id, token))
    }

    /// Whether a single text far longer than the truncation keeps is tokenized only as far
    /// as it keeps, where the pipeline makes that exact (BERT's, RoBERTa's and XLM-R's,
    /// truncated from the right); other pipelines tokenize long texts whole.
    pub fn cuts_long_texts(&self) -> bool {
        self.cut_rule.is_some()
    }

    /// The added tokens (named, listed or otherwise added beyond the model's pieces) whose
    /// ids are `first` or above, in id order.
    pub(crate) fn added_tokens_from(&self, first: usize) -> Vec<(u32, String)> {
        let mut tokens: Vec<(u32, String)> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(id, _)| *id as usize >= first)
            .map(|(id, token)| (id, token.content))
            .collect();
        tokens.sort();
        tokens
    }

    /// The id used for padding.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Token ids and segment ids of one input, truncated to the max length.
    pub fn encode(&self, input: TextInput<'_>) -> Result<EncodedText> {
        if let TextInput::Pair(..) = input {
            self.check_pairs()?;
        }
        let encode = || match input {
            TextInput::Single(a) => {
                let a = self.shortened(a);
                // A prefix the cut found was checked, and tokenized, before.
                let text = match self.cut(&a, self.max_len) {
                    Some(prefix) => prefix,
                    None => {
                        self.room_for(a.len())?;
                        &a
                    }
                };
                self.encode_dropping_overflow(text)
            }
            TextInput::Pair(a, b) => self.encode_pair(&self.shortened(a), &self.shortened(b)),
        };
        // tokenizers' regex engine panics where it cannot get memory (a word of 100 MB under
        // a byte-level BPE, in a process held to a few GB): an error naming the input, not a
        // crashed process. Nothing the closure touches outlives a failed encoding.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(encode))
            .unwrap_or_else(|panic| Err(tokenizer_failure(panic).into()));
        let e = r.map_err(|e| match e.downcast_ref::<TooLongForMemory>() {
            Some(_) => Error::OutOfMemory {
                op: "tokenize",
                detail: format!("{}: {e}", excerpt_of(input)),
            },
            None => Error::Format {
                path: self.path.clone(),
                detail: format!("cannot encode {}: {e}", excerpt_of(input)),
            },
        })?;
        let type_ids = match self.segment_ids {
            true => e.get_type_ids().to_vec(),
            false => vec![0; e.len()],
        };
        Ok(EncodedText {
            ids: e.get_ids().to_vec(),
            type_ids,
        })
    }

    /// `text` with the runs of letters and digits past WordPiece's word limit shortened,
    /// which encodes as `text` does (`long_words`).
    fn shortened<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        match self.shortened_run_length {
            Some(keep) => super::long_words::shorten_runs(text, keep),
            None => std::borrow::Cow::Borrowed(text),
        }
    }

    /// A prefix of a long `text`, of `tokens` tokens or more, that encodes as the whole text
    /// does (`long_text`).
    fn cut<'t>(&self, text: &'t str, tokens: usize) -> Option<&'t str> {
        let rule = self.cut_rule.as_ref()?;
        super::long_text::prefix_with_tokens(&self.inner, rule, text, tokens.max(1))
    }

    /// An error where tokenizing `bytes` of text needs more memory than is left
    /// (`tokenizer_memory`).
    fn room_for(&self, bytes: usize) -> tokenizers::Result<()> {
        let model = self.inner.get_model();
        match super::tokenizer_memory::too_long_for_memory(model, bytes, self.max_len) {
            Some(problem) => Err(Box::new(TooLongForMemory(problem))),
            None => Ok(()),
        }
    }

    /// The tokens truncation leaves to the text (or the pair's two texts together): the max
    /// length less the special tokens.
    fn budget(&self, pair: bool) -> usize {
        self.max_len.saturating_sub(self.special_tokens(pair))
    }

    /// A pair encoded as [`Self::truncate_encodings`] encodes it whole, each long text cut
    /// first (`long_text`) where that gives the same tokens. Longest-first truncation to a
    /// budget of M tokens keeps at most M of either text and depends on their lengths only
    /// through the shorter one's (where below M) and which is longer; with both at M or more
    /// each keeps M / 2, the longer (the second, where equal) one more when M is odd. So a text
    /// cut to a prefix of M tokens or more keeps its tokens when M is even. When M is odd (BERT's
    /// 128 tokens less a pair's 3 special ones), one text (the one not worth cutting, else the
    /// one of fewer bytes) is counted whole, and the other cut to a prefix of M tokens or more
    /// that is as long (the second) or longer (the first), which truncation then weighs as it
    /// weighs the whole text: a question beside a long passage tokenizes the question and the
    /// passage's start. Where no such prefix is found, the other text is tokenized whole too,
    /// as much as the memory left takes.
    fn encode_pair(&self, a: &str, b: &str) -> tokenizers::Result<tokenizers::Encoding> {
        let budget = self.budget(true);
        let encode = |text: &str| -> tokenizers::Result<tokenizers::Encoding> {
            self.room_for(text.len())?;
            self.inner.encode(text, false)
        };
        // A prefix of `text` of `tokens` tokens or more, or the whole text; `cut` has
        // `budget` or more.
        let at_least = |text, cut: Option<&str>, tokens: usize| match cut {
            Some(cut) if tokens <= budget => encode(cut),
            Some(_) => encode(self.cut(text, tokens).unwrap_or(text)),
            None => encode(text),
        };
        let (first, second) = match (self.cut(a, budget), self.cut(b, budget)) {
            (None, None) => {
                // The first text's encoding is held while the second is tokenized.
                self.room_for(a.len() + b.len())?;
                (self.inner.encode(a, false)?, self.inner.encode(b, false)?)
            }
            (a_cut, b_cut) if budget.is_multiple_of(2) => {
                (encode(a_cut.unwrap_or(a))?, encode(b_cut.unwrap_or(b))?)
            }
            (a_cut, b_cut) if a_cut.is_none() || (b_cut.is_some() && a.len() <= b.len()) => {
                let first = encode(a)?;
                let second = at_least(b, b_cut, first.len())?;
                (first, second)
            }
            (a_cut, _) => {
                let second = encode(b)?;
                let first = at_least(a, a_cut, second.len() + 1)?;
                (first, second)
            }
        };
        self.truncate_encodings(first, Some(second))
    }

    /// A text encoded as `Tokenizer::encode` encodes it under truncation to the max length
    /// ([`Self::truncate_encodings`]).
    fn encode_dropping_overflow(&self, text: &str) -> tokenizers::Result<tokenizers::Encoding> {
        self.truncate_encodings(self.inner.encode(text, false)?, None)
    }

    /// `first` and `second` (a pair's second text, in segment 1), each tokenized whole, as
    /// `Tokenizer::encode` gives them under longest-first truncation to the max length, without
    /// the tokens it truncates away: those it keeps as overflow windows, and for a pair every
    /// window of one text's dropped tokens beside every window of the other's, a product of the
    /// two lengths (two 50 KB texts at 64 tokens took more than 6 GB). They are truncated by
    /// tokenizers' own rule less the special tokens, the overflow dropped, and post-processed.
    fn truncate_encodings(
        &self,
        first: tokenizers::Encoding,
        mut second: Option<tokenizers::Encoding>,
    ) -> tokenizers::Result<tokenizers::Encoding> {
        let pair = second.is_some();
        if let Some(second) = second.as_mut() {
            second.set_type_ids(vec![1; second.len()]);
        }
        let params = TruncationParams {
            max_length: self.budget(pair),
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: self.direction,
        };
        let (mut first, mut second) =
            tokenizers::utils::truncation::truncate_encodings(first, second, &params)?;
        first.take_overflowing();
        if let Some(second) = second.as_mut() {
            second.take_overflowing();
        }
        self.inner.post_process(first, second, true)
    }

    /// Encodes a batch, truncated and padded to its longest row.
    pub fn encode_batch(&self, inputs: &[TextInput<'_>]) -> Result<EncodedBatch> {
        let rows = inputs
            .iter()
            .map(|&input| self.encode(input))
            .collect::<Result<Vec<_>>>()?;
        EncodedBatch::pad(&rows.iter().collect::<Vec<_>>(), self.pad_id)
    }
}

/// What a panic inside tokenizers said, as an error's words.
fn tokenizer_failure(panic: Box<dyn std::any::Any + Send>) -> String {
    let said = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("no message");
    format!("the tokenizer failed: {said}")
}

/// `input` as a message shows it: each text whole when short, else its start and its length.
fn excerpt_of(input: TextInput<'_>) -> String {
    let excerpt = |text: &str| crate::data::shown_briefly(text, 80, |start| format!("{start:?}"));
    match input {
        TextInput::Single(a) => excerpt(a),
        TextInput::Pair(a, b) => format!("the pair {} and {}", excerpt(a), excerpt(b)),
    }
}

/// Refuses a SentencePiece normalization table (`Precompiled`) that cannot be read, which
/// tokenizers' own reader meets with a panic rather than an error. Only files that hold one
/// are read twice, and then only their normalizer.
fn check_sentencepiece_tables(text: &str) -> std::result::Result<(), String> {
    if !text.contains("precompiled_charsmap") {
        return Ok(());
    }
    #[derive(serde::Deserialize)]
    struct NormalizerOnly {
        normalizer: Option<serde_json::Value>,
    }
    fn check(normalizer: &serde_json::Value) -> std::result::Result<(), String> {
        if normalizer["type"] == "Precompiled" {
            let table: std::result::Result<tokenizers::normalizers::Precompiled, _> =
                serde_json::from_str(&normalizer.to_string());
            table
                .map_err(|e| format!("its normalizer's precompiled_charsmap is unreadable: {e}"))?;
        }
        for inner in normalizer["normalizers"].as_array().into_iter().flatten() {
            check(inner)?;
        }
        Ok(())
    }
    match serde_json::from_str::<NormalizerOnly>(text) {
        Ok(NormalizerOnly {
            normalizer: Some(normalizer),
        }) => check(&normalizer),
        // Anything else is for tokenizers' reader to refuse.
        _ => Ok(()),
    }
}

/// The folder a checkpoint file lies in (`.` for a bare file name).
fn folder_of(file: &Path) -> &Path {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::test_texts::{random_texts, MINILM};
    use super::{TextInput, TextTokenizer};

    const ROBERTA: &str = "tests/fixtures/tiny-roberta/model/tokenizer.json";
    const XLM_ROBERTA: &str = "tests/fixtures/tiny-xlm-roberta/model/tokenizer.json";

    /// Pairs with long texts give the ids they give tokenized whole (BERT's, RoBERTa's and
    /// XLM-R's pipelines): one text cut or both,
    /// budgets odd and even, the whole text shorter and longer than the other's cut prefix,
    /// two long texts of one token's difference (which keeps the odd token) and of many.
    #[test]
    fn pairs_with_long_texts_encode_as_whole_pairs() {
        let pieces = [
            "the ",
            "film ",
            "was ",
            "fine",
            ", ",
            ". ",
            "and ",
            "dull",
            "; ",
            "quite ",
            "(really) ",
            "ok? ",
        ];
        let long = random_texts(&pieces, 2, 4000, 7);
        let medium = random_texts(&pieces, 1, 300, 8).remove(0);
        let mid = random_texts(&pieces, 1, 700, 9).remove(0);
        let very_long = random_texts(&pieces, 1, 40_000, 10).remove(0);
        let texts = [
            "a fine film".to_string(),
            medium,
            mid,
            long[0].clone(),
            long[1].clone(),
            format!("{} film", long[0]),
            very_long,
        ];
        for relative in [MINILM, ROBERTA, XLM_ROBERTA] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
            // Budgets (the max length less a pair's special tokens, 3 or 4) odd and even.
            for max_len in [16, 17, 64, 65] {
                let tokenizer = TextTokenizer::from_file(&path, max_len).unwrap();
                let budget = max_len - tokenizer.special_tokens(true);
                let rule = tokenizer.cut_rule.as_ref().expect("a pipeline that cuts");
                let cut = |t: &str| {
                    super::super::long_text::prefix_with_tokens(&tokenizer.inner, rule, t, budget)
                        .is_some()
                };
                assert!(!cut(&texts[0]) && !cut(&texts[1]));
                assert!(texts[2..].iter().all(|t| cut(t)));
                let mut whole = tokenizer.clone();
                whole.cut_rule = None;
                // The longest text beside the two it is cut against (its whole tokenization
                // is the test's cost), every other pair both ways.
                let (others, longest) = texts.split_at(texts.len() - 1);
                let pairs = others
                    .iter()
                    .flat_map(|a| others.iter().map(move |b| (a, b)));
                let beside_longest = [&texts[2], &texts[3]]
                    .into_iter()
                    .flat_map(|t| [(t, &longest[0]), (&longest[0], t)]);
                for (a, b) in pairs.chain(beside_longest) {
                    let pair = TextInput::Pair(a, b);
                    assert_eq!(
                        tokenizer.encode(pair).unwrap(),
                        whole.encode(pair).unwrap(),
                        "{relative} at {max_len}: {} and {} bytes",
                        a.len(),
                        b.len()
                    );
                }
            }
        }
    }

    /// Under an odd budget, a pair of a text and a passage far longer than it tokenizes the
    /// text and the passage's start, not the passage whole (which held tens of MiB here),
    /// in either order, and gives the ids of the pair tokenized whole.
    #[test]
    fn a_long_passage_beside_a_shorter_text_is_not_tokenized_whole() {
        let pieces = [
            "the ", "film ", "was ", "fine", ", ", ". ", "quite ", "dull",
        ];
        let question = random_texts(&pieces, 1, 700, 11).remove(0);
        let passage = random_texts(&pieces, 1, 400_000, 12).remove(0);
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(MINILM);
        let tokenizer = TextTokenizer::from_file(&path, 64).unwrap();
        assert_eq!(
            (64 - tokenizer.special_tokens(true)) % 2,
            1,
            "an odd budget"
        );
        let mut whole = tokenizer.clone();
        whole.cut_rule = None;
        for (a, b) in [(&question, &passage), (&passage, &question)] {
            let pair = TextInput::Pair(a, b);
            let (encoded, peak) =
                crate::allocation_peak::peak_allocation_of(|| tokenizer.encode(pair));
            assert!(
                peak < passage.len(),
                "{peak} bytes held at once for a {}-byte passage",
                passage.len()
            );
            assert_eq!(encoded.unwrap(), whole.encode(pair).unwrap());
        }
    }

    /// Under an odd budget, the first text keeps the odd token only where it is longer than
    /// the second: a prefix of it as long as the second would tie, and give the token to
    /// the second. Here the first text's first cut (at eight bytes a token, before
    /// whitespace) holds exactly as many tokens as it is asked for, so a prefix asked for as
    /// many tokens as the second text holds would tie.
    #[test]
    fn a_cut_first_text_outnumbers_the_second_to_keep_the_odd_token() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(MINILM);
        let tokenizer = TextTokenizer::from_file(&path, 64).unwrap();
        let budget = 64 - tokenizer.special_tokens(true);
        assert_eq!(budget % 2, 1, "an odd budget");
        let tokens = |text: &str| tokenizer.inner.encode(text, false).unwrap().len();
        // Eight bytes a token with its space: the first cut past 8 × 100 bytes ends after
        // "probably", the 100th token.
        let second = "film ".repeat(100);
        assert_eq!(tokens(&second), 100);
        let first = format!(
            "{}probably {}",
            "between ".repeat(99),
            "between ".repeat(2000)
        );
        assert_eq!(tokens(&first), 2100);
        let mut whole = tokenizer.clone();
        whole.cut_rule = None;
        let pair = TextInput::Pair(&first, &second);
        assert_eq!(tokenizer.encode(pair).unwrap(), whole.encode(pair).unwrap());
    }
}

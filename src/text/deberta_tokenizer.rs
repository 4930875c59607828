//! DeBERTa-v2's SentencePiece tokenizer as transformers 5.24 builds `DebertaV2Tokenizer`
//! from a checkpoint's `tokenizer.json`: the file's Unigram pieces and scores under the
//! class's own pipeline, whatever else the file says — no byte fallback; the unknown id the
//! position of `(unk_token, 0.0)` among the pieces, else the config's `unk_id` (1 by
//! default); a normalizer of its own (`Lowercase` where `do_lower_case`, runs of whitespace
//! and tabs or line breaks to one space, NFC, trailing spaces stripped: the file's
//! SentencePiece table is dropped); `Punctuation` isolated where `split_by_punct`, then
//! Metaspace (`▁` before every word, or the first alone where `add_prefix_space` is false);
//! `[CLS] A [SEP]` and `[CLS] A [SEP] B [SEP]` with segment 1 on the second text and its
//! `[SEP]`; the added tokens transformers gives it.

use std::path::Path;

use serde_json::Value;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, Strip, NFC};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    ModelWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use super::added_tokens::add_class_tokens;
use super::tokenizer_config::TokenizerConfig;
use crate::error::{Error, Result};

/// `DebertaV2Tokenizer`'s named tokens where the config names none.
const DEBERTA_TOKENS: [(&str, &str); 7] = [
    ("bos_token", "[CLS]"),
    ("eos_token", "[SEP]"),
    ("sep_token", "[SEP]"),
    ("cls_token", "[CLS]"),
    ("unk_token", "[UNK]"),
    ("pad_token", "[PAD]"),
    ("mask_token", "[MASK]"),
];

/// The class's unknown id where the pieces hold no `(unk_token, 0.0)` and the config no
/// `unk_id`.
const DEFAULT_UNKNOWN_ID: usize = 1;

/// `from` (read from `source`) rebuilt as `DebertaV2Tokenizer`, and its padding id.
pub(crate) fn as_deberta_tokenizer(
    mut from: Tokenizer,
    source: &Path,
    config: &TokenizerConfig,
) -> Result<(Tokenizer, u32)> {
    let format = |detail: String| Error::Format {
        path: source.to_path_buf(),
        detail,
    };
    let ModelWrapper::Unigram(existing) = from.get_model() else {
        return Err(super::tokenizer_class::model_disagrees(
            source,
            config,
            "Unigram",
            "DebertaV2Tokenizer",
            "SentencePiece's Unigram",
        ));
    };
    let pieces: Vec<(String, f64)> = existing.iter().cloned().collect();
    let unk = match config.is_null("unk_token") {
        true => "None".to_string(),
        false => config
            .token("unk_token")?
            .map_or_else(|| "[UNK]".to_string(), |t| t.content),
    };
    let unknown_id = match pieces.iter().position(|(p, s)| *p == unk && *s == 0.0) {
        Some(at) => at,
        None => match config.json.get("unk_id") {
            None => DEFAULT_UNKNOWN_ID,
            // transformers then builds a Unigram without an unknown id, which fails on the
            // first character it has no piece for.
            Some(Value::Null) => {
                return Err(config.error(
                    "unk_id",
                    format!(
                        "`unk_id` is null and no piece is `{unk}` with score 0: \
                         DebertaV2Tokenizer then has no unknown id (transformers fails on the \
                         first unknown character); give `unk_id`"
                    ),
                ))
            }
            Some(v) => v
                .as_u64()
                .map(|id| id as usize)
                .ok_or_else(|| config.error("unk_id", format!("is {v}, not a piece's id")))?,
        },
    };
    if unknown_id >= pieces.len() {
        return Err(format(format!(
            "its Unigram vocabulary has {} pieces, and DebertaV2Tokenizer's unknown id is \
             {unknown_id} (`unk_id`, where no piece is `{unk}` with score 0)",
            pieces.len()
        )));
    }
    let model = Unigram::from(pieces, Some(unknown_id), false)
        .map_err(|e| format(format!("cannot rebuild its Unigram vocabulary: {e}")))?;
    from.with_model(model);

    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if config.flag("do_lower_case", false)? {
        normalizers.push(Lowercase.into());
    }
    let spaces = Replace::new(
        tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s{2,}|[\n\r\t]".into()),
        " ",
    )
    .map_err(|e| format(format!("cannot build the class's normalizer: {e}")))?;
    normalizers.extend([spaces.into(), NFC.into(), Strip::new(false, true).into()]);
    from.with_normalizer(Some(NormalizerSequence::new(normalizers)));

    let mut pre_tokenizers: Vec<PreTokenizerWrapper> = Vec::new();
    if config.flag("split_by_punct", false)? {
        pre_tokenizers.push(Punctuation::new(SplitDelimiterBehavior::Isolated).into());
    }
    // Absent, the class's default (true); null reaches the class as None, which it reads
    // as false: the mark then goes before the first word alone.
    let add_prefix_space =
        !config.is_null("add_prefix_space") && config.flag("add_prefix_space", true)?;
    let prepend = match add_prefix_space {
        true => PrependScheme::Always,
        false => PrependScheme::First,
    };
    pre_tokenizers.push(Metaspace::new('▁', prepend, true).into());
    from.with_pre_tokenizer(Some(Sequence::new(pre_tokenizers)));

    let named = add_class_tokens(&mut from, config, &DEBERTA_TOKENS, &[])?;
    let id_of = |key| named.id_of(&from, key, config, "DeBERTa-v2's");
    let (cls, sep, (_, pad)) = (
        id_of("cls_token")?,
        id_of("sep_token")?,
        id_of("pad_token")?,
    );
    let processor = around_texts(&cls, &sep)
        .map_err(|e| format(format!("cannot build the class's post-processor: {e}")))?;
    from.with_post_processor(Some(processor));
    Ok((from, pad))
}

/// `cls A sep` and `cls A sep B sep`, the second text and its `sep` in segment 1: through
/// serde, as tokenizer.json spells it, since a template's pieces are built only from text
/// otherwise, which a token holding `:` or a space would break.
fn around_texts(
    (cls, cls_id): &(String, u32),
    (sep, sep_id): &(String, u32),
) -> serde_json::Result<TemplateProcessing> {
    let special = |token: &String, segment: u32| serde_json::json!({"SpecialToken": {"id": token, "type_id": segment}});
    let text =
        |id: &str, segment: u32| serde_json::json!({"Sequence": {"id": id, "type_id": segment}});
    let entry =
        |token: &String, id: u32| serde_json::json!({"id": token, "ids": [id], "tokens": [token]});
    let mut special_tokens = serde_json::Map::new();
    special_tokens.insert(cls.clone(), entry(cls, *cls_id));
    special_tokens.insert(sep.clone(), entry(sep, *sep_id));
    let processor = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [special(cls, 0), text("A", 0), special(sep, 0)],
        "pair": [special(cls, 0), text("A", 0), special(sep, 0), text("B", 1), special(sep, 1)],
        "special_tokens": special_tokens,
    });
    // From text: the deserializer borrows its tag, which a `Value` cannot lend.
    serde_json::from_str(&processor.to_string())
}

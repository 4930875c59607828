//! RoBERTa's byte-level BPE tokenizer as transformers 5.24 builds `RobertaTokenizer` from a
//! checkpoint: the vocabulary and merges of `tokenizer.json`, but the class's own pipeline
//! (no normalizer, a byte-level pre-tokenizer, `<s> A </s></s> B </s>` around the texts,
//! no segment ids) with the settings of `tokenizer_config.json` and the added tokens
//! transformers gives it (`added_tokens`), whatever else `tokenizer.json` says.

use std::path::Path;

use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{ModelWrapper, Tokenizer};

use super::added_tokens::add_class_tokens;
use super::tokenizer_config::TokenizerConfig;
use crate::error::{Error, Result};

/// The special tokens `RobertaTokenizer` (and `XLMRobertaTokenizer`) names, with the
/// classes' defaults.
pub(crate) const ROBERTA_TOKENS: [(&str, &str); 7] = [
    ("bos_token", "<s>"),
    ("eos_token", "</s>"),
    ("sep_token", "</s>"),
    ("cls_token", "<s>"),
    ("unk_token", "<unk>"),
    ("pad_token", "<pad>"),
    ("mask_token", "<mask>"),
];

/// RoBERTa's tokenizer from `vocab.json` and `merges.txt`, for checkpoints without a
/// `tokenizer.json`, as transformers builds `RobertaTokenizer` from them; and its padding id.
pub(crate) fn roberta_tokenizer_from_vocab(
    vocab: &Path,
    merges: &Path,
    config: &TokenizerConfig,
) -> Result<(Tokenizer, u32)> {
    // The reader names neither file in its errors: both are named here.
    let model = BPE::from_file(as_text(vocab)?, as_text(merges)?)
        .build()
        .map_err(|e| Error::Format {
            path: vocab.to_path_buf(),
            detail: format!(
                "cannot build a BPE model from it and {}: {e}",
                merges.display()
            ),
        })?;
    as_roberta_tokenizer(Tokenizer::new(model), vocab, config)
}

fn as_text(path: &Path) -> Result<&str> {
    path.to_str().ok_or_else(|| Error::Format {
        path: path.to_path_buf(),
        detail: "the path is not UTF-8, which the BPE reader needs".into(),
    })
}

/// `from` (read from `source`) rebuilt as `RobertaTokenizer`, and its padding id.
pub(crate) fn as_roberta_tokenizer(
    from: Tokenizer,
    source: &Path,
    config: &TokenizerConfig,
) -> Result<(Tokenizer, u32)> {
    let format = |detail: String| Error::Format {
        path: source.to_path_buf(),
        detail,
    };
    let ModelWrapper::BPE(existing) = from.get_model() else {
        return Err(super::tokenizer_class::model_disagrees(
            source,
            config,
            "BPE",
            "RobertaTokenizer",
            "byte-level BPE",
        ));
    };
    // The class keeps the vocabulary and merges only: no dropout, unknown token or word
    // affixes. Through serde, since the merges are not public otherwise; from text, since
    // BPE's deserializer borrows its tag, which a `Value` cannot lend.
    let mut model = serde_json::to_value(existing)
        .map_err(|e| format(format!("cannot read its BPE model: {e}")))?;
    for (key, value) in [
        ("dropout", Value::Null),
        ("unk_token", Value::Null),
        ("continuing_subword_prefix", Value::String(String::new())),
        ("end_of_word_suffix", Value::String(String::new())),
        ("fuse_unk", Value::Bool(false)),
        ("byte_fallback", Value::Bool(false)),
        ("ignore_merges", Value::Bool(false)),
    ] {
        model[key] = value;
    }
    let model: BPE = serde_json::from_str(&model.to_string())
        .map_err(|e| format(format!("cannot rebuild its BPE model: {e}")))?;
    let flag = |key: &str, default: bool| -> Result<bool> {
        match config.json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(config.error(key, format!("`{key}` is {other}, not true or false"))),
        }
    };
    let add_prefix_space = flag("add_prefix_space", false)?;
    let trim_offsets = flag("trim_offsets", true)?;
    let mut rebuilt = Tokenizer::new(model);
    rebuilt.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)));
    let named = add_class_tokens(&mut rebuilt, &from, config, &ROBERTA_TOKENS)?;
    let id_of = |key| named.id_of(&rebuilt, key, config, "RoBERTa's");
    let (sep, cls, (_, pad)) = (
        id_of("sep_token")?,
        id_of("cls_token")?,
        id_of("pad_token")?,
    );
    rebuilt.with_post_processor(Some(
        RobertaProcessing::new(sep, cls)
            .trim_offsets(trim_offsets)
            .add_prefix_space(add_prefix_space),
    ));
    Ok((rebuilt, pad))
}

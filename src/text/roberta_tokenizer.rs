//! RoBERTa's byte-level BPE tokenizer as transformers 5.24 builds `RobertaTokenizer` from a
//! checkpoint: the vocabulary and merges of `tokenizer.json`, but the class's own pipeline
//! (no normalizer, a byte-level pre-tokenizer, `<s> A </s></s> B </s>` around the texts,
//! no segment ids) with the settings of `tokenizer_config.json`, whatever else
//! `tokenizer.json` says.

use std::path::Path;

use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, ModelWrapper, Tokenizer};

use super::tokenizer_config::TokenizerConfig;
use crate::error::{Error, Result};

/// The special tokens `RobertaTokenizer` (and `XLMRobertaTokenizer`) names, with the
/// classes' defaults.
const ROBERTA_TOKENS: [(&str, &str); 7] = [
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
    mut from: Tokenizer,
    source: &Path,
    config: &TokenizerConfig,
) -> Result<(Tokenizer, u32)> {
    let format = |detail: String| Error::Format {
        path: source.to_path_buf(),
        detail,
    };
    let ModelWrapper::BPE(existing) = from.get_model() else {
        return Err(format(format!(
            "its model is not BPE, yet {} names `RobertaTokenizer`, which transformers builds \
             as byte-level BPE: the two files disagree",
            config
                .file_of("tokenizer_class")
                .unwrap_or(source)
                .display()
        )));
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
    from.with_model(model);
    from.with_normalizer(None::<NormalizerWrapper>);
    from.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)));
    let named = add_named_tokens(&mut from, config)?;
    let id_of = |key| named.id_of(&from, key, source, config, "RoBERTa's");
    let (sep, cls, (_, pad)) = (
        id_of("sep_token")?,
        id_of("cls_token")?,
        id_of("pad_token")?,
    );
    from.with_post_processor(Some(
        RobertaProcessing::new(sep, cls)
            .trim_offsets(trim_offsets)
            .add_prefix_space(add_prefix_space),
    ));
    Ok((from, pad))
}

/// The special tokens a RoBERTa class names (`ROBERTA_TOKENS`, as the config sets them).
pub(super) struct NamedTokens(Vec<(&'static str, AddedToken)>);

/// Adds the tokens the class names (unless the config makes one null) as whole special
/// tokens, as the class adds them, and the tokens the config adds.
pub(super) fn add_named_tokens(
    from: &mut Tokenizer,
    config: &TokenizerConfig,
) -> Result<NamedTokens> {
    let mut named = Vec::new();
    for (key, default) in ROBERTA_TOKENS {
        if config.is_null(key) {
            continue;
        }
        let token = config
            .token(key)?
            .unwrap_or_else(|| AddedToken::from(default.to_string(), true));
        named.push((key, token));
    }
    let tokens: Vec<AddedToken> = named.iter().map(|(_, t)| t.clone()).collect();
    from.add_special_tokens(&tokens);
    from.add_tokens(&super::wordpiece_vocab::config_added_tokens(config)?);
    Ok(NamedTokens(named))
}

impl NamedTokens {
    /// The token named `key` and its id in `from` (read from `source`), which `pipeline`
    /// needs.
    pub(super) fn id_of(
        &self,
        from: &Tokenizer,
        key: &str,
        source: &Path,
        config: &TokenizerConfig,
        pipeline: &str,
    ) -> Result<(String, u32)> {
        let (_, token) = self.0.iter().find(|(k, _)| *k == key).ok_or_else(|| {
            config.error(
                key,
                format!("`{key}` is null, and {pipeline} pipeline needs it"),
            )
        })?;
        let id = from
            .token_to_id(&token.content)
            .ok_or_else(|| Error::Format {
                path: source.to_path_buf(),
                detail: format!("`{key}` `{}` is not in the vocabulary", token.content),
            })?;
        Ok((token.content.clone(), id))
    }
}

//! RoBERTa's byte-level BPE tokenizer as transformers 5.24 builds `RobertaTokenizer` from a
//! checkpoint: the vocabulary and merges of `tokenizer.json`, but the class's own pipeline
//! (no normalizer, a byte-level pre-tokenizer, `<s> A </s></s> B </s>` around the texts,
//! no segment ids) with the settings of `tokenizer_config.json` and the added tokens
//! transformers gives it (`added_tokens`), whatever else `tokenizer.json` says.

use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NormalizerWrapper;
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
    mut from: Tokenizer,
    source: &Path,
    config: &TokenizerConfig,
) -> Result<(Tokenizer, u32)> {
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
    // affixes. Copied only where the file sets one (a copy of a large vocabulary costs).
    let as_class = |m: &BPE| {
        m.dropout.is_none()
            && m.unk_token.is_none()
            && m.continuing_subword_prefix
                .as_deref()
                .unwrap_or("")
                .is_empty()
            && m.end_of_word_suffix.as_deref().unwrap_or("").is_empty()
            && !m.fuse_unk
            && !m.byte_fallback
            && !m.ignore_merges
    };
    let model = (!as_class(existing)).then(|| {
        let mut model = existing.clone();
        model.dropout = None;
        model.unk_token = None;
        model.continuing_subword_prefix = None;
        model.end_of_word_suffix = None;
        model.fuse_unk = false;
        model.byte_fallback = false;
        model.ignore_merges = false;
        model
    });
    let add_prefix_space = config.flag("add_prefix_space", false)?;
    let trim_offsets = config.flag("trim_offsets", true)?;
    if let Some(model) = model {
        from.with_model(model);
    }
    from.with_normalizer(None::<NormalizerWrapper>)
        .with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)));
    let named = add_class_tokens(&mut from, config, &ROBERTA_TOKENS, &[])?;
    let id_of = |key| named.id_of(&from, key, config, "RoBERTa's");
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

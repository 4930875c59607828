//! XLM-RoBERTa's SentencePiece tokenizer as transformers 5.24 builds `XLMRobertaTokenizer`
//! from a checkpoint's `tokenizer.json`: the Unigram vocabulary (pieces and scores) and the
//! SentencePiece normalization table (`Precompiled`) of the file, under the class's own
//! pipeline — unknown id 3, no byte fallback, a split at whitespace then Metaspace (`▁`
//! before every word unless `add_prefix_space` is false), `<s> A </s></s> B </s>` around the
//! texts, no segment ids — with the added tokens transformers gives it (`added_tokens`),
//! whatever else `tokenizer.json` says. Multilingual checkpoints of
//! both families use it (XLM-R itself, and BERT-shaped ones such as multilingual MiniLM).
//!
//! `CamembertTokenizer` is the same pipeline with two differences in transformers 5.24 that
//! change ids: the unknown id is the position of the unknown token (`unk_token`) among the
//! pieces (CamemBERT's vocabulary starts `<s>NOTUSED <pad> </s>NOTUSED <unk> <unk>NOTUSED <s>
//! </s>`), and where the config names no extra special tokens the class adds `<s>NOTUSED`,
//! `</s>NOTUSED` and `<unk>NOTUSED`. (Its plain `mask_token` strips the space before it,
//! which changes no id here: the whitespace split drops that space anyway.)

use std::path::Path;

use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{Model, ModelWrapper, Tokenizer};

use super::added_tokens::add_class_tokens;
use super::roberta_tokenizer::ROBERTA_TOKENS;
use super::tokenizer_config::TokenizerConfig;
use crate::error::{Error, Result};

/// The id `XLMRobertaTokenizer` gives unknown pieces, whatever the file names: the fourth
/// entry of XLM-R's vocabulary (`<s> <pad> </s> <unk>`), as transformers' converter lays it
/// out.
const UNKNOWN_ID: usize = 3;

/// The SentencePiece classes of RoBERTa-shaped checkpoints, which transformers builds alike.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum SentencePieceClass {
    /// `XLMRobertaTokenizer`.
    XlmRoberta,
    /// `CamembertTokenizer`.
    Camembert,
}

impl SentencePieceClass {
    fn name(self) -> &'static str {
        match self {
            SentencePieceClass::XlmRoberta => "XLMRobertaTokenizer",
            SentencePieceClass::Camembert => "CamembertTokenizer",
        }
    }

    fn pipeline(self) -> &'static str {
        match self {
            SentencePieceClass::XlmRoberta => "XLM-RoBERTa's",
            SentencePieceClass::Camembert => "CamemBERT's",
        }
    }
}

/// `from` (read from `source`) rebuilt as `class`, and its padding id.
pub(crate) fn as_sentencepiece_tokenizer(
    mut from: Tokenizer,
    source: &Path,
    config: &TokenizerConfig,
    class: SentencePieceClass,
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
            class.name(),
            "SentencePiece's Unigram",
        ));
    };
    let unknown_id = match class {
        SentencePieceClass::XlmRoberta => UNKNOWN_ID,
        // The unknown token's place among the pieces, the first piece where it has none.
        // A null `unk_token` reaches the class as None, whose text `None` is no piece.
        SentencePieceClass::Camembert => {
            let unk = match config.is_null("unk_token") {
                true => "None".to_string(),
                false => config
                    .token("unk_token")?
                    .map_or_else(|| "<unk>".to_string(), |t| t.content),
            };
            existing
                .iter()
                .position(|(piece, _)| *piece == unk)
                .unwrap_or(0)
        }
    };
    if class == SentencePieceClass::XlmRoberta && existing.get_vocab_size() <= UNKNOWN_ID {
        return Err(format(format!(
            "its Unigram vocabulary has {} pieces; XLMRobertaTokenizer takes the fourth as the \
             unknown piece",
            existing.get_vocab_size()
        )));
    }
    // Rebuilt only where the file's unknown id or byte fallback differ from the class's:
    // building a vocabulary of 250,000 pieces takes most of a second. Its unknown id is
    // private; a character it holds no piece for shows it.
    let probe = "\u{e000}";
    let unknown = match existing.token_to_id(probe) {
        Some(_) => None,
        None => existing
            .tokenize(probe)
            .ok()
            .and_then(|t| match t.as_slice() {
                [only] => Some(only.id as usize),
                _ => None,
            }),
    };
    let model = match (existing.byte_fallback(), unknown) {
        (false, Some(id)) if id == unknown_id => None,
        _ => {
            let pieces: Vec<(String, f64)> = existing.iter().cloned().collect();
            Some(
                Unigram::from(pieces, Some(unknown_id), false)
                    .map_err(|e| format(format!("cannot rebuild its Unigram vocabulary: {e}")))?,
            )
        }
    };
    // Absent, the class's default (true); null reaches the class as None, which it reads
    // as false.
    let add_prefix_space =
        !config.is_null("add_prefix_space") && config.flag("add_prefix_space", true)?;
    let prepend = match add_prefix_space {
        true => PrependScheme::Always,
        false => PrependScheme::Never,
    };
    if let Some(model) = model {
        from.with_model(model);
    }
    let normalizer = spm_normalizer(from.get_normalizer());
    from.with_normalizer(normalizer)
        .with_pre_tokenizer(Some(Sequence::new(vec![
            WhitespaceSplit.into(),
            Metaspace::new('▁', prepend, true).into(),
        ])));
    let named = match class {
        SentencePieceClass::XlmRoberta => {
            add_class_tokens(&mut from, config, &ROBERTA_TOKENS, &[])?
        }
        SentencePieceClass::Camembert => {
            add_class_tokens(&mut from, config, &ROBERTA_TOKENS, &CAMEMBERT_EXTRAS)?
        }
    };
    let id_of = |key| named.id_of(&from, key, config, class.pipeline());
    let (bos, eos, (_, pad)) = (
        id_of("bos_token")?,
        id_of("eos_token")?,
        id_of("pad_token")?,
    );
    let processor = around_texts(&bos, &eos)
        .map_err(|e| format(format!("cannot build the class's post-processor: {e}")))?;
    from.with_post_processor(Some(processor));
    Ok((from, pad))
}

/// `CamembertTokenizer`'s extra special tokens where the config names none.
const CAMEMBERT_EXTRAS: [&str; 3] = ["<s>NOTUSED", "</s>NOTUSED", "<unk>NOTUSED"];

/// The SentencePiece table among the file's normalizers (alone or in a sequence): the one
/// normalizer the class keeps. None without one.
fn spm_normalizer(normalizer: Option<&NormalizerWrapper>) -> Option<NormalizerWrapper> {
    match normalizer? {
        table @ NormalizerWrapper::Precompiled(_) => Some(table.clone()),
        NormalizerWrapper::Sequence(sequence) => sequence
            .as_ref()
            .iter()
            .find(|n| matches!(n, NormalizerWrapper::Precompiled(_)))
            .cloned(),
        _ => None,
    }
}

/// `bos A eos` and `bos A eos eos B eos`, every segment id 0: through serde, as
/// tokenizer.json spells it, since a template's pieces are built only from text otherwise,
/// which a token holding `:` or a space would break.
fn around_texts(
    (bos, bos_id): &(String, u32),
    (eos, eos_id): &(String, u32),
) -> serde_json::Result<TemplateProcessing> {
    let special = |token: &String| serde_json::json!({"SpecialToken": {"id": token, "type_id": 0}});
    let text = |id: &str| serde_json::json!({"Sequence": {"id": id, "type_id": 0}});
    let entry =
        |token: &String, id: u32| serde_json::json!({"id": token, "ids": [id], "tokens": [token]});
    let mut special_tokens = serde_json::Map::new();
    special_tokens.insert(bos.clone(), entry(bos, *bos_id));
    special_tokens.insert(eos.clone(), entry(eos, *eos_id));
    let processor = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [special(bos), text("A"), special(eos)],
        "pair": [special(bos), text("A"), special(eos), special(eos), text("B"), special(eos)],
        "special_tokens": special_tokens,
    });
    // From text: the deserializer borrows its tag, which a `Value` cannot lend.
    serde_json::from_str(&processor.to_string())
}

//! Which tokenizer transformers 5.24's AutoTokenizer builds from a checkpoint's
//! tokenizer.json, by the class `tokenizer_config.json` names (or the model type implies):
//! BERT's, MPNet's, RoBERTa's, XLM-R's and CamemBERT's classes rebuild their own pipelines
//! around the file's vocabulary (`wordpiece_vocab`, `roberta_tokenizer`,
//! `xlm_roberta_tokenizer`);
//! `PreTrainedTokenizerFast` / `TokenizersBackend` take the file as it is; any other class is
//! refused by name rather than guessed.

use std::path::Path;

use serde_json::Value;
use tokenizers::Tokenizer;

use super::added_tokens::{add_missing, config_token_list, extra_tokens, NAMED_TOKENS};
use super::tokenizer_config::TokenizerConfig;
use super::wordpiece_vocab::WordPieceClass;
use super::xlm_roberta_tokenizer::SentencePieceClass;
use crate::error::{Error, Result};

/// The tokenizer transformers loads for a checkpoint holding `from` (its `tokenizer.json`,
/// read from `source`, with padding id `pad`) and `config` (its `tokenizer_config.json` and
/// `special_tokens_map.json`, with any class the model type implies already in it): the
/// class `config` names, or `BertTokenizer` where it names none (AutoTokenizer falls back to
/// the model type's class). Returns it with its padding id.
pub(crate) fn as_transformers_loads(
    from: Tokenizer,
    pad: u32,
    source: &Path,
    config: &TokenizerConfig,
) -> Result<(Tokenizer, u32)> {
    let config_name = config.file_of("tokenizer_class").unwrap_or(source);
    let named = match config.json.get("tokenizer_class") {
        None | Some(Value::Null) => false,
        Some(Value::String(class)) => match class_rule(class) {
            ClassRule::Bert => true,
            ClassRule::Mpnet => {
                return super::wordpiece_vocab::as_bert_tokenizer(
                    from,
                    source,
                    config,
                    true,
                    WordPieceClass::Mpnet,
                )
            }
            ClassRule::AsItIs => return as_it_is(from, pad, config),
            ClassRule::Roberta => {
                return super::roberta_tokenizer::as_roberta_tokenizer(from, source, config)
            }
            ClassRule::XlmRoberta => {
                return super::xlm_roberta_tokenizer::as_sentencepiece_tokenizer(
                    from,
                    source,
                    config,
                    SentencePieceClass::XlmRoberta,
                )
            }
            ClassRule::DebertaV2 => {
                return super::deberta_tokenizer::as_deberta_tokenizer(from, source, config)
            }
            ClassRule::Camembert => {
                return super::xlm_roberta_tokenizer::as_sentencepiece_tokenizer(
                    from,
                    source,
                    config,
                    SentencePieceClass::Camembert,
                )
            }
            ClassRule::Unsupported => {
                return Err(Error::Format {
                    path: config_name.to_path_buf(),
                    detail: format!(
                        "`tokenizer_class` is `{class}`, which transformers builds by its own \
                         rules from tokenizer.json, and spafit does not reproduce them; name \
                         `BertTokenizer` to read it as BERT's WordPiece tokenizer, \
                         `RobertaTokenizer` as RoBERTa's byte-level BPE, \
                         `XLMRobertaTokenizer` as XLM-R's SentencePiece Unigram, or \
                         `PreTrainedTokenizerFast` to use tokenizer.json as it is"
                    ),
                })
            }
        },
        Some(other) => {
            return Err(Error::Format {
                path: config_name.to_path_buf(),
                detail: format!("`tokenizer_class` is {other}, not a class name"),
            })
        }
    };
    super::wordpiece_vocab::as_bert_tokenizer(from, source, config, named, WordPieceClass::Bert)
}

/// tokenizer.json's own pipeline (`PreTrainedTokenizerFast`), with the config's token list
/// over the file's (a listed token with other flags replaces the file's), then the named and
/// extra tokens it lacks; padding with the config's `pad_token` where it names one, as
/// transformers pads.
fn as_it_is(mut from: Tokenizer, pad: u32, config: &TokenizerConfig) -> Result<(Tokenizer, u32)> {
    if let Some(list) = config_token_list(config)? {
        from.add_tokens(&list);
    }
    let mut tokens = Vec::new();
    for key in NAMED_TOKENS {
        tokens.extend(config.token(key)?);
    }
    tokens.extend(config.other_named_tokens()?);
    tokens.extend(extra_tokens(config)?);
    add_missing(&mut from, &tokens);
    let pad = match config.token("pad_token")? {
        Some(token) => from.token_to_id(&token.content).unwrap_or(pad),
        None => pad,
    };
    Ok((from, pad))
}

/// The error for a tokenizer.json (`source`) whose model is not `model`, which the class
/// `class` that `config` names builds (as `builds`).
pub(crate) fn model_disagrees(
    source: &Path,
    config: &TokenizerConfig,
    model: &str,
    class: &str,
    builds: &str,
) -> Error {
    Error::Format {
        path: source.to_path_buf(),
        detail: format!(
            "its model is not {model}, yet {} names `{class}`, which transformers builds as \
             {builds}: the two files disagree",
            config
                .file_of("tokenizer_class")
                .unwrap_or(source)
                .display()
        ),
    }
}

/// Whether transformers' tokenizer for `config` returns segment ids unless
/// `model_input_names` says otherwise: BERT's classes do (so does the class transformers
/// picks when none is named) but `DistilBertTokenizer`, `PreTrainedTokenizerFast` /
/// `TokenizersBackend` do not.
pub(crate) fn class_gives_segment_ids(config: &TokenizerConfig) -> bool {
    match config.json.get("tokenizer_class").and_then(Value::as_str) {
        Some(class) if is_distilbert_tokenizer(class) => false,
        Some(class) => !matches!(
            class_rule(class),
            ClassRule::AsItIs
                | ClassRule::Roberta
                | ClassRule::XlmRoberta
                | ClassRule::Camembert
                | ClassRule::Mpnet
        ),
        None => true,
    }
}

/// `DistilBertTokenizer` is `BertTokenizer` whose `model_input_names` leave out
/// `token_type_ids`.
fn is_distilbert_tokenizer(class: &str) -> bool {
    class.strip_suffix("Fast").unwrap_or(class) == "DistilBertTokenizer"
}

/// How transformers 5.24 reads a checkpoint whose `tokenizer_config.json` names a class.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ClassRule {
    /// It builds `BertTokenizer` (the class itself, or one transformers maps to it).
    Bert,
    /// It uses tokenizer.json as it is.
    AsItIs,
    /// It builds `RobertaTokenizer` (see `roberta_tokenizer`), which gives no segment ids.
    Roberta,
    /// It builds `XLMRobertaTokenizer` (see `xlm_roberta_tokenizer`), which gives no
    /// segment ids.
    XlmRoberta,
    /// It builds `CamembertTokenizer` (XLM-R's pipeline with CamemBERT's unknown id and extra
    /// tokens: see `xlm_roberta_tokenizer`), which gives no segment ids.
    Camembert,
    /// It builds `MPNetTokenizer`: BERT's pipeline with RoBERTa's template and its own
    /// special tokens (see `wordpiece_vocab`), which gives no segment ids.
    Mpnet,
    /// It builds `DebertaV2Tokenizer` (see `deberta_tokenizer`), which gives segment ids.
    DebertaV2,
    /// It builds a tokenizer of that class by rules of its own (Funnel's, ...),
    /// which give other ids than any of the above.
    Unsupported,
}

/// The rule for `class`, as measured against transformers 5.24's AutoTokenizer: these
/// names build a `BertTokenizer` (`DistilBertTokenizer` without segment ids:
/// [`class_gives_segment_ids`]); `PreTrainedTokenizerFast` and `TokenizersBackend` keep
/// tokenizer.json; `RobertaTokenizer` and `XLMRobertaTokenizer` rebuild their classes'
/// pipelines; every other class is refused rather than guessed.
pub(crate) fn class_rule(class: &str) -> ClassRule {
    let base = class.strip_suffix("Fast").unwrap_or(class);
    match base {
        "BertTokenizer"
        | "ElectraTokenizer"
        | "DistilBertTokenizer"
        | "SqueezeBertTokenizer"
        | "LayoutLMTokenizer"
        | "MobileBertTokenizer"
        | "LxmertTokenizer" => ClassRule::Bert,
        "PreTrainedTokenizer" if class == "PreTrainedTokenizerFast" => ClassRule::AsItIs,
        "TokenizersBackend" => ClassRule::AsItIs,
        "RobertaTokenizer" => ClassRule::Roberta,
        "XLMRobertaTokenizer" => ClassRule::XlmRoberta,
        "CamembertTokenizer" => ClassRule::Camembert,
        "MPNetTokenizer" => ClassRule::Mpnet,
        "DebertaV2Tokenizer" => ClassRule::DebertaV2,
        _ => ClassRule::Unsupported,
    }
}

//! A BERT tokenizer built from `vocab.txt` (+ `tokenizer_config.json`) for checkpoints
//! saved before `tokenizer.json` existed: the same pipeline transformers' converter builds
//! for `BertTokenizerFast` (BERT normalizer, BERT pre-tokenizer, WordPiece with `##`
//! continuations, `[CLS] A [SEP] B [SEP]` with segment ids 0 then 1). The same pipeline
//! around a tokenizer.json's vocabulary is what transformers' `BertTokenizer` rebuilds, and,
//! with RoBERTa's template and its own special tokens, `MPNetTokenizer`.

use std::path::Path;

use serde_json::Value;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Model, ModelWrapper, Tokenizer};

use super::added_tokens::{add_missing, config_added_tokens, token_list};
use super::tokenizer_class::{class_rule, ClassRule};
use super::tokenizer_config::{read_json, TokenizerConfig};
use crate::error::{Error, Result};

/// The transformers classes that rebuild a WordPiece pipeline around the vocabulary.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum WordPieceClass {
    /// `BertTokenizer`: `[CLS] A [SEP] B [SEP]`.
    Bert,
    /// `MPNetTokenizer`: RoBERTa's `<s> A </s></s> B </s>`, with `<s>`, `</s>`, `<pad>`,
    /// `<mask>` (which takes the space before it) and BERT's `[UNK]` by default.
    Mpnet,
}

impl WordPieceClass {
    fn name(self) -> &'static str {
        match self {
            WordPieceClass::Bert => "BERT's",
            WordPieceClass::Mpnet => "MPNet's",
        }
    }
}

/// The settings of `tokenizer_config.json` that change the ids, with `BertTokenizer`'s
/// defaults (`MPNetTokenizer`'s for MPNet).
struct BertTokenizerSettings {
    lowercase: bool,
    strip_accents: Option<bool>,
    chinese_chars: bool,
    class: WordPieceClass,
    unk: String,
    sep: String,
    pad: String,
    cls: String,
    mask: String,
    /// The named special tokens, kept whole: the five above (as the config writes them)
    /// and any others it names (`bos_token`, ...).
    specials: Vec<AddedToken>,
    /// Tokens the config adds besides (`added_tokens_decoder`, `extra_special_tokens`).
    extra: Vec<AddedToken>,
}

impl BertTokenizerSettings {
    /// The settings `config` gives, refused for a class other than BERT's or MPNet's: without
    /// a tokenizer.json only their WordPiece pipelines can be built.
    fn read(config: &TokenizerConfig) -> Result<Self> {
        let class = match config.json.get("tokenizer_class").and_then(Value::as_str) {
            None => WordPieceClass::Bert,
            Some(class) => match class_rule(class) {
                ClassRule::Bert => WordPieceClass::Bert,
                ClassRule::Mpnet => WordPieceClass::Mpnet,
                _ => {
                    return Err(config.error(
                        "tokenizer_class",
                        format!(
                            "`tokenizer_class` is `{class}`; without a tokenizer.json spafit \
                             builds only BERT's and MPNet's WordPiece tokenizers \
                             (`BertTokenizer`, `MPNetTokenizer`) from vocab.txt"
                        ),
                    ))
                }
            },
        };
        Self::from_json(config, class)
    }

    /// The id-changing settings in `config`, with `class`'s defaults for what it leaves
    /// out.
    fn from_json(config: &TokenizerConfig, class: WordPieceClass) -> Result<Self> {
        let json = &config.json;
        // The five, with the class's defaults; without its unknown, separator or
        // classifier token transformers' BertTokenizer makes ids of the word `None`.
        let token = |key: &str, default: &str| -> Result<AddedToken> {
            if config.is_null(key) && matches!(key, "unk_token" | "sep_token" | "cls_token") {
                return Err(config.error(
                    key,
                    format!("`{key}` is null: {} tokenizer needs one", class.name()),
                ));
            }
            Ok(config
                .token(key)?
                .unwrap_or_else(|| AddedToken::from(default.to_string(), true)))
        };
        let defaults = match class {
            WordPieceClass::Bert => ["[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"],
            WordPieceClass::Mpnet => ["[UNK]", "</s>", "<pad>", "<s>", "<mask>"],
        };
        let [unk, sep, pad, cls, mask] = [
            "unk_token",
            "sep_token",
            "pad_token",
            "cls_token",
            "mask_token",
        ]
        .iter()
        .zip(defaults)
        .map(|(key, default)| token(key, default))
        .collect::<Result<Vec<_>>>()?
        .try_into()
        .expect("five keys");
        // MPNetTokenizer makes a mask token given as a string take the space before it.
        let mask = match (class, json.get("mask_token")) {
            (WordPieceClass::Mpnet, None | Some(Value::String(_))) => mask.lstrip(true),
            _ => mask,
        };
        let mut specials = vec![
            pad.clone(),
            unk.clone(),
            cls.clone(),
            sep.clone(),
            mask.clone(),
        ];
        specials.extend(config.other_named_tokens()?);
        Ok(BertTokenizerSettings {
            lowercase: config.flag("do_lower_case", true)?,
            strip_accents: match json.get("strip_accents") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(other) => {
                    return Err(config.error(
                        "strip_accents",
                        format!("`strip_accents` is {other}, not true, false or null"),
                    ))
                }
            },
            chinese_chars: config.flag("tokenize_chinese_chars", true)?,
            class,
            unk: unk.content,
            sep: sep.content,
            pad: pad.content,
            cls: cls.content,
            mask: mask.content,
            specials,
            extra: config_added_tokens(config)?,
        })
    }
}

/// BERT's tokenizer from `vocab` (one token per line, the line number is the id) and the
/// settings beside it (lower-casing, accents, Chinese characters, special tokens;
/// `BertTokenizer`'s defaults for what `config` leaves out). Returns it with its padding id.
pub(crate) fn bert_tokenizer_from_vocab(
    vocab: &Path,
    config: &TokenizerConfig,
) -> Result<(Tokenizer, u32)> {
    let settings = BertTokenizerSettings::read(config)?;
    let format = |detail: String| Error::Format {
        path: vocab.to_path_buf(),
        detail,
    };
    let added_file = vocab.with_file_name("added_tokens.json");
    if added_file.is_file() {
        let added = read_json(&added_file)?;
        if added.as_object().is_some_and(|m| !m.is_empty()) {
            return Err(Error::Format {
                path: added_file,
                detail: "adds tokens beyond the vocabulary; without a tokenizer.json spafit \
                         builds only BERT's plain WordPiece tokenizer: save the tokenizer with \
                         transformers to get one"
                    .into(),
            });
        }
    }
    let text = crate::text_file::read_utf8(vocab)?;
    let ids = WordPiece::read_bytes(text.as_bytes())
        .map_err(|e| format(format!("cannot read the vocabulary: {e}")))?;
    let model = bert_wordpiece(WordPiece::builder().vocab(ids), &settings, vocab)?;
    // Tokens added beyond the vocabulary (entity markers, ...) would need ids that only a
    // tokenizer.json records; those in it (`[unused1]`) just match whole.
    let beyond: Vec<&str> = settings
        .extra
        .iter()
        .map(|t| t.content.as_str())
        .filter(|t| model.token_to_id(t).is_none())
        .collect();
    if !beyond.is_empty() {
        return Err(Error::Format {
            path: config
                .file_of("extra_special_tokens")
                .or(config.file_of("added_tokens_decoder"))
                .unwrap_or(vocab)
                .to_path_buf(),
            detail: format!(
                "adds tokens beyond the vocabulary ({}); without a tokenizer.json spafit builds \
                 only BERT's plain WordPiece tokenizer: save the tokenizer with transformers to \
                 get one",
                beyond.join(", ")
            ),
        });
    }
    let (mut tokenizer, pad) = bert_pipeline(model, &settings, vocab, config)?;
    add_config_tokens(&mut tokenizer, &token_list(config, None)?, &settings);
    Ok((tokenizer, pad))
}

/// `BertTokenizer`'s WordPiece over the vocabulary in `builder`: its unknown token, `##`
/// continuations, words of at most 100 characters. `source` names the file in messages.
fn bert_wordpiece(
    builder: tokenizers::models::wordpiece::WordPieceBuilder,
    settings: &BertTokenizerSettings,
    source: &Path,
) -> Result<WordPiece> {
    builder
        .unk_token(settings.unk.clone())
        .continuing_subword_prefix("##".into())
        .max_input_chars_per_word(100)
        .build()
        .map_err(|e| Error::Format {
            path: source.to_path_buf(),
            detail: format!("cannot build WordPiece: {e}"),
        })
}

/// The added tokens (`super::added_tokens`): `list`, then the named special tokens (they
/// match as written, before normalization, as in transformers) and the config's others, where
/// `list` lacks them.
fn add_config_tokens(
    tokenizer: &mut Tokenizer,
    list: &[AddedToken],
    settings: &BertTokenizerSettings,
) {
    tokenizer.add_tokens(list);
    add_missing(tokenizer, &settings.specials);
    add_missing(tokenizer, &settings.extra);
}

/// transformers' `BertTokenizer` pipeline around `model` (WordPiece with `##` continuations
/// and 100-character words): BERT normalizer and pre-tokenizer, `[CLS] A [SEP] B [SEP]`.
/// Returns it with its padding id; `source` and `config` name the files in messages.
fn bert_pipeline(
    model: WordPiece,
    settings: &BertTokenizerSettings,
    source: &Path,
    config: &TokenizerConfig,
) -> Result<(Tokenizer, u32)> {
    let format = |detail: String| Error::Format {
        path: source.to_path_buf(),
        detail,
    };
    let id_of = |token: &str, key: &str| {
        model.token_to_id(token).ok_or_else(|| {
            format(format!(
                "the {key} `{token}` is not in the vocabulary{}",
                config
                    .file_of(key)
                    .map_or(String::new(), |c| format!(" ({})", c.display()))
            ))
        })
    };
    let (cls, sep) = (
        id_of(&settings.cls, "cls_token")?,
        id_of(&settings.sep, "sep_token")?,
    );
    let pad = id_of(&settings.pad, "pad_token")?;
    id_of(&settings.unk, "unk_token")?;
    id_of(&settings.mask, "mask_token")?;
    let (c, s) = (settings.cls.as_str(), settings.sep.as_str());
    let template: PostProcessorWrapper = match settings.class {
        WordPieceClass::Bert => TemplateProcessing::builder()
            .try_single(format!("{c}:0 $A:0 {s}:0"))
            .and_then(|b| b.try_pair(format!("{c}:0 $A:0 {s}:0 $B:1 {s}:1")))
            .map_err(|e| format(format!("special tokens `{c}`, `{s}`: {e}")))?
            .special_tokens(vec![(c, cls), (s, sep)])
            .build()
            .map_err(|e| format(format!("special tokens `{c}`, `{s}`: {e}")))?
            .into(),
        // As MPNetTokenizer sets it: offsets trimmed, no prefix space.
        WordPieceClass::Mpnet => RobertaProcessing::new((s.to_string(), sep), (c.to_string(), cls))
            .trim_offsets(true)
            .add_prefix_space(false)
            .into(),
    };
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(
            true,
            settings.chinese_chars,
            settings.strip_accents,
            settings.lowercase,
        )))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(template))
        .with_decoder(Some(WordPieceDecoder::default()));
    Ok((tokenizer, pad))
}

/// `from` (tokenizer.json, read from `source`) as transformers' `BertTokenizer` rebuilds
/// it: the class's own pipeline from the config's settings (`do_lower_case`,
/// `strip_accents`, `tokenize_chinese_chars`, special tokens, with the class's defaults for
/// what the config leaves out) over tokenizer.json's WordPiece vocabulary and added tokens.
/// `named`: whether the config names the class (else transformers falls back to it by the
/// model type). Returns it with its padding id.
pub(crate) fn as_bert_tokenizer(
    from: Tokenizer,
    source: &Path,
    config: &TokenizerConfig,
    named: bool,
    class: WordPieceClass,
) -> Result<(Tokenizer, u32)> {
    let settings = BertTokenizerSettings::from_json(config, class)?;
    let ModelWrapper::WordPiece(existing) = from.get_model() else {
        if named {
            let class = match class {
                WordPieceClass::Bert => "BertTokenizer",
                WordPieceClass::Mpnet => "MPNetTokenizer",
            };
            return Err(super::tokenizer_class::model_disagrees(
                source,
                config,
                "WordPiece",
                class,
                "WordPiece",
            ));
        }
        // transformers would read the pieces of another model as WordPiece's vocabulary and
        // give ids of little sense; the class the tokenizer was made for is not known here.
        return Err(Error::Format {
            path: source.to_path_buf(),
            detail: format!(
                "its model is not WordPiece, and {} names no `tokenizer_class`, so transformers \
                 reads this BERT checkpoint's tokenizer as `BertTokenizer` (WordPiece) and \
                 garbles it; name the class it was made for in `tokenizer_class` \
                 (`XLMRobertaTokenizer` for a SentencePiece Unigram tokenizer, \
                 `PreTrainedTokenizerFast` to use tokenizer.json as it is)",
                config
                    .file_of("tokenizer_class")
                    .unwrap_or(&config.path)
                    .display()
            ),
        });
    };
    // The class keeps only the vocabulary: its own unknown token, prefix and word limit, as
    // `bert_wordpiece` sets them. Through serde, not the builder: the builder takes only
    // ahash's map, which tokenizers does not export, and WordPiece's deserializer borrows
    // its tag, which a `Value` cannot lend, hence `from_str`.
    let model: WordPiece = serde_json::from_str(
        &serde_json::json!({
            "type": "WordPiece",
            "unk_token": settings.unk,
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
            "vocab": existing.get_vocab(),
        })
        .to_string(),
    )
    .map_err(|e| Error::Format {
        path: source.to_path_buf(),
        detail: format!("cannot rebuild its WordPiece vocabulary: {e}"),
    })?;
    let (mut tokenizer, pad) =
        bert_pipeline(model, &settings, source, config).map_err(|e| match (named, e) {
            (false, Error::Format { path, detail }) => Error::Format {
                path,
                detail: format!(
                    "{detail}: transformers reads a BERT checkpoint's tokenizer.json through \
                     BertTokenizer when no tokenizer_config.json names another \
                     `tokenizer_class` (name one, e.g. PreTrainedTokenizerFast, to use \
                     tokenizer.json as it is)"
                ),
            },
            (_, e) => e,
        })?;
    let list = token_list(config, Some(&from))?;
    add_config_tokens(&mut tokenizer, &list, &settings);
    Ok((tokenizer, pad))
}

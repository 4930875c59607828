//! The tokens transformers 5.24 adds to a tokenizer beyond its model's pieces, in its order
//! and with its precedence: first the list of added tokens (tokenizer_config.json's
//! `added_tokens_decoder`, else tokenizer.json's `added_tokens`), each with its own flags;
//! then the special tokens the config or class names (`bos_token` … `mask_token`, then
//! model-specific ones); then `extra_special_tokens`. A named or extra token is added only
//! where no added token has its text yet, so the list's version wins (roberta-base's
//! `<mask>` strips the space before it because its tokenizer.json says so, whatever the
//! config's plain `"<mask>"` says).

use serde_json::Value;
use tokenizers::{AddedToken, AddedVocabulary, NormalizedString, Normalizer, Tokenizer};

use super::tokenizer_config::TokenizerConfig;
use crate::error::Result;

/// The named special tokens, in the order transformers adds them
/// (`SPECIAL_TOKENS_ATTRIBUTES`).
pub(crate) const NAMED_TOKENS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// tokenizer_config.json's `added_tokens_decoder` in id order, each token with its flags;
/// None where the config has no such list (tokenizer.json's `added_tokens` then count).
pub(crate) fn config_token_list(config: &TokenizerConfig) -> Result<Option<Vec<AddedToken>>> {
    let Some(decoder) = config.json.get("added_tokens_decoder") else {
        return Ok(None);
    };
    let Some(decoder) = decoder.as_object() else {
        return Err(config.error(
            "added_tokens_decoder",
            format!("`added_tokens_decoder` is {decoder}, not a map of token ids to tokens"),
        ));
    };
    let mut entries: Vec<(u64, &Value)> = Vec::new();
    for (id, entry) in decoder {
        let id = id.parse::<u64>().map_err(|_| {
            config.error(
                "added_tokens_decoder",
                format!("`added_tokens_decoder` key `{id}` is not a token id"),
            )
        })?;
        entries.push((id, entry));
    }
    entries.sort_by_key(|(id, _)| *id);
    let mut tokens = Vec::new();
    for (id, entry) in entries {
        entry
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                config.error(
                    "added_tokens_decoder",
                    format!("`added_tokens_decoder` entry {id} has no `content` string"),
                )
            })?;
        // transformers' AddedToken defaults: not special, normalized unless special.
        tokens.push(config.parse_token("added_tokens_decoder", entry, false)?);
    }
    Ok(Some(tokens))
}

/// The list of added tokens a class starts from: the config's, else `file`'s (tokenizer.json
/// as read, in id order, each token with its flags), else none.
pub(crate) fn token_list(
    config: &TokenizerConfig,
    file: Option<&Tokenizer>,
) -> Result<Vec<AddedToken>> {
    if let Some(list) = config_token_list(config)? {
        return Ok(list);
    }
    let mut listed: Vec<(u32, AddedToken)> = file
        .map(|f| f.get_added_tokens_decoder().into_iter().collect())
        .unwrap_or_default();
    listed.sort_by_key(|(id, _)| *id);
    Ok(listed.into_iter().map(|(_, token)| token).collect())
}

/// `extra_special_tokens` given as a list (a map of named tokens is the config's
/// `other_named_tokens`).
pub(crate) fn extra_tokens(config: &TokenizerConfig) -> Result<Vec<AddedToken>> {
    let extra = match config.json.get("extra_special_tokens") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(list)) => list.as_slice(),
        Some(other) => {
            return Err(config.error(
                "extra_special_tokens",
                format!(
                    "`extra_special_tokens` (or `additional_special_tokens`) is {other}, not a \
                     list of tokens"
                ),
            ))
        }
    };
    extra
        .iter()
        .map(|entry| config.parse_token("extra_special_tokens", entry, true))
        .collect()
}

/// The tokens `config` adds besides the named special tokens: its token list, then
/// `extra_special_tokens`, each text once.
pub(crate) fn config_added_tokens(config: &TokenizerConfig) -> Result<Vec<AddedToken>> {
    let mut tokens = config_token_list(config)?.unwrap_or_default();
    tokens.extend(extra_tokens(config)?);
    let mut seen = std::collections::HashSet::new();
    tokens.retain(|t| seen.insert(t.content.clone()));
    Ok(tokens)
}

/// `tokenizer`'s added tokens as the input meets them: where the token is normalized and
/// there is a normalizer, the normalized content, which tokenizers looks for in the
/// normalized text; else the content as written, which it looks for in the text as given.
/// None where one cannot be normalized or normalizes to nothing (an empty token matches
/// between every two characters).
pub(crate) fn matched_tokens(tokenizer: &Tokenizer) -> Option<Vec<MatchedToken>> {
    let normalizer = tokenizer.get_normalizer();
    let mut tokens: Vec<MatchedToken> = tokenizer
        .get_added_tokens_decoder()
        .values()
        .map(|token| match (token.normalized, normalizer) {
            (true, Some(normalizer)) => {
                let mut content = NormalizedString::from(token.content.as_str());
                normalizer.normalize(&mut content).ok()?;
                Some(MatchedToken {
                    content: content.get().to_string(),
                    in_normalized_text: true,
                    single_word: token.single_word,
                })
            }
            _ => Some(MatchedToken {
                content: token.content.clone(),
                in_normalized_text: false,
                single_word: token.single_word,
            }),
        })
        .collect::<Option<_>>()?;
    if tokens.iter().any(|t| t.content.is_empty()) {
        return None;
    }
    // The decoder is a hash map: a fixed order for whoever keeps the list.
    tokens.sort_by(|a, b| a.content.cmp(&b.content));
    Some(tokens)
}

/// An added token as [`matched_tokens`] gives it.
pub(crate) struct MatchedToken {
    pub content: String,
    /// Whether `content` is looked for in the normalized text (it is then normalized).
    pub in_normalized_text: bool,
    /// Whether a match counts only between characters that are not `\w` (or the text's
    /// ends).
    pub single_word: bool,
}

/// Adds those of `tokens` whose text no added token of `to` (nor an earlier one of
/// `tokens`) has.
pub(crate) fn add_missing(to: &mut Tokenizer, tokens: &[AddedToken]) {
    let present = to.get_added_vocabulary().get_vocab();
    let mut seen = std::collections::HashSet::new();
    let missing: Vec<AddedToken> = tokens
        .iter()
        .filter(|t| !present.contains_key(&t.content) && seen.insert(t.content.clone()))
        .cloned()
        .collect();
    to.add_tokens(&missing);
}

/// The text of each named special token a class uses, as its config (or the class's
/// default) gives it.
pub(crate) struct NamedTokens(Vec<(&'static str, String)>);

/// The added tokens of a class that rebuilds its pipeline around tokenizer.json's pieces
/// (RoBERTa's, XLM-R's): `to` is tokenizer.json as read, its pipeline already the class's;
/// its own added tokens give way to the list transformers starts from, `defaults` are the
/// class's named tokens and `default_extras` its extra special tokens where the config names
/// none (CamemBERT's).
pub(crate) fn add_class_tokens(
    to: &mut Tokenizer,
    config: &TokenizerConfig,
    defaults: &[(&'static str, &'static str)],
    default_extras: &[&str],
) -> Result<NamedTokens> {
    let list = token_list(config, Some(to))?;
    to.with_added_vocabulary(AddedVocabulary::new());
    to.add_tokens(&list);
    let mut named = Vec::new();
    let mut tokens = Vec::new();
    for key in NAMED_TOKENS {
        if config.is_null(key) {
            continue;
        }
        let default = defaults.iter().find(|(k, _)| *k == key);
        let token = match (config.token(key)?, default) {
            (Some(token), _) => token,
            (None, Some((_, text))) => AddedToken::from(text.to_string(), true),
            (None, None) => continue,
        };
        named.push((key, token.content.clone()));
        tokens.push(token);
    }
    tokens.extend(config.other_named_tokens()?);
    tokens.extend(extra_tokens(config)?);
    // Absent (read already folds `additional_special_tokens` in): the class's default; a
    // null reaches the class as no extra tokens at all.
    if config.json.get("extra_special_tokens").is_none() {
        tokens.extend(
            default_extras
                .iter()
                .map(|text| AddedToken::from(text.to_string(), true)),
        );
    }
    add_missing(to, &tokens);
    Ok(NamedTokens(named))
}

impl NamedTokens {
    /// The token named `key` and its id in `tokenizer`, which `pipeline` needs.
    pub(crate) fn id_of(
        &self,
        tokenizer: &Tokenizer,
        key: &str,
        config: &TokenizerConfig,
        pipeline: &str,
    ) -> Result<(String, u32)> {
        let missing = || {
            config.error(
                key,
                format!("`{key}` is null, and {pipeline} pipeline needs it"),
            )
        };
        let (_, text) = self.0.iter().find(|(k, _)| *k == key).ok_or_else(missing)?;
        // Every named token was added, so it has an id.
        let id = tokenizer.token_to_id(text).ok_or_else(missing)?;
        Ok((text.clone(), id))
    }
}

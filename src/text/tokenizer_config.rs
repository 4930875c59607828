//! A checkpoint's `tokenizer_config.json` as transformers 5.24 reads it: with
//! `special_tokens_map.json` beside it overriding the named special tokens, the settings that
//! decide which inputs the model gets (`model_input_names`) and from which side long texts
//! are cut (`truncation_side`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::{AddedToken, TruncationDirection};

use crate::error::{Error, Result};

/// BERT's named special tokens, which its tokenizer uses (the others are only kept whole).
pub(crate) const BERT_TOKENS: [&str; 5] = [
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// `tokenizer_config.json` merged with `special_tokens_map.json`.
pub(crate) struct TokenizerConfig {
    /// The settings, the map's applied.
    pub json: Value,
    /// `tokenizer_config.json` (it need not exist): messages name it.
    pub path: PathBuf,
    /// Whether the checkpoint has that file.
    exists: bool,
    /// `special_tokens_map.json`, when transformers reads it.
    map_path: Option<PathBuf>,
    /// The keys whose value came from the map.
    from_map: BTreeSet<String>,
    /// `extra_special_tokens` given as a map (name → token): transformers keeps these as
    /// model-specific named special tokens.
    model_specific: Vec<(String, Value)>,
}

impl TokenizerConfig {
    /// The settings of the checkpoint folder `dir`: `config` (its `tokenizer_config.json`,
    /// if any, else an empty one), then `special_tokens_map.json` in `dir`, following
    /// transformers 5.24's `from_pretrained`: the map is read only when the config has no
    /// `added_tokens_decoder` (it is legacy, for configs saved without one); each of its
    /// entries replaces the config's, except an `extra_special_tokens` list, which joins the
    /// config's; the old name `additional_special_tokens` counts where no
    /// `extra_special_tokens` is given.
    pub fn read(config: Option<&Path>, dir: &Path) -> Result<Self> {
        let path = config.map_or_else(|| dir.join("tokenizer_config.json"), Path::to_path_buf);
        let mut json = match config {
            Some(config) => read_json(config)?,
            None => Value::Object(serde_json::Map::new()),
        };
        let Some(settings) = json.as_object_mut() else {
            return Err(Error::Format {
                path,
                detail: "not a JSON object".into(),
            });
        };
        // transformers 5 renamed `additional_special_tokens` to `extra_special_tokens`,
        // reading the old name unless the new one has tokens.
        let has_extra = |s: &serde_json::Map<String, Value>| match s.get("extra_special_tokens") {
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(Value::String(t)) => !t.is_empty(),
            _ => false,
        };
        if !has_extra(settings) {
            if let Some(old) = settings.remove("additional_special_tokens") {
                settings.insert("extra_special_tokens".into(), old);
            }
        }
        let mut model_specific = Vec::new();
        let mut take_model_specific = |s: &mut serde_json::Map<String, Value>| {
            if let Some(Value::Object(named)) = s.get("extra_special_tokens") {
                model_specific.extend(named.iter().map(|(k, v)| (k.clone(), v.clone())));
                s.remove("extra_special_tokens");
            }
        };
        take_model_specific(settings);
        let map_file = dir.join("special_tokens_map.json");
        let mut from_map = BTreeSet::new();
        let mut map_path = None;
        if !settings.contains_key("added_tokens_decoder") && map_file.is_file() {
            let Value::Object(map) = read_json(&map_file)? else {
                return Err(Error::Format {
                    path: map_file,
                    detail: "not a JSON object".into(),
                });
            };
            for (key, value) in map {
                match (key.as_str(), value) {
                    // The class is chosen from the config before the map is read, and the
                    // map's own list of added tokens is replaced by the one collected here.
                    ("tokenizer_class" | "added_tokens_decoder", _) => continue,
                    ("extra_special_tokens", Value::Array(tokens)) => {
                        let mut list = match settings.remove(&key) {
                            Some(Value::Array(existing)) => existing,
                            _ => Vec::new(),
                        };
                        for token in tokens {
                            if !list.contains(&token) {
                                list.push(token);
                            }
                        }
                        settings.insert(key.clone(), Value::Array(list));
                    }
                    (_, value) => {
                        settings.insert(key.clone(), value);
                    }
                }
                from_map.insert(key);
            }
            take_model_specific(settings);
            map_path = Some(map_file);
        }
        // The tokenizer's own constructor reads the old name only without the new one.
        if !settings.contains_key("extra_special_tokens") {
            if let Some(old) = settings.remove("additional_special_tokens") {
                settings.insert("extra_special_tokens".into(), old);
                if from_map.contains("additional_special_tokens") {
                    from_map.insert("extra_special_tokens".into());
                }
            }
        }
        Ok(TokenizerConfig {
            json,
            path,
            exists: config.is_some(),
            map_path,
            from_map,
            model_specific,
        })
    }

    /// The special token `key` names (`cls_token`, ...): `Ok(None)` when not set,
    /// `Err` for a value that is no token. A null counts as not set; callers that cannot do
    /// without the token check [`TokenizerConfig::is_null`].
    pub fn token(&self, key: &str) -> Result<Option<AddedToken>> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => self.parse_token(key, value, true).map(Some),
        }
    }

    /// Whether `key` is set to null (transformers then has no such token).
    pub fn is_null(&self, key: &str) -> bool {
        matches!(self.json.get(key), Some(Value::Null))
    }

    /// A token written as a string or as transformers' AddedToken object (its `content` and
    /// flags), `special` unless the object says otherwise.
    pub fn parse_token(&self, key: &str, value: &Value, special: bool) -> Result<AddedToken> {
        let content = match value {
            Value::String(s) => s.as_str(),
            Value::Object(o) => o.get("content").and_then(Value::as_str).ok_or_else(|| {
                self.error(
                    key,
                    format!("`{key}` holds {value}, which has no `content` string"),
                )
            })?,
            other => return Err(self.error(key, format!("`{key}` holds {other}, not a token"))),
        };
        let flag =
            |name: &str, default: bool| value.get(name).and_then(Value::as_bool).unwrap_or(default);
        let special = flag("special", special);
        Ok(AddedToken::from(content.to_string(), special)
            .single_word(flag("single_word", false))
            .lstrip(flag("lstrip", false))
            .rstrip(flag("rstrip", false))
            .normalized(flag("normalized", !special)))
    }

    /// The special tokens transformers adds by name beyond BERT's five: `bos_token`,
    /// `eos_token`, any other `*_token` setting, and `extra_special_tokens` given as a map.
    pub fn other_named_tokens(&self) -> Result<Vec<AddedToken>> {
        let mut tokens = Vec::new();
        for (key, value) in self.json.as_object().into_iter().flatten() {
            let named = key.ends_with("_token")
                && !BERT_TOKENS.contains(&key.as_str())
                && (value.is_string() || value.get("content").is_some());
            if named {
                tokens.push(self.parse_token(key, value, true)?);
            }
        }
        for (name, value) in &self.model_specific {
            tokens.push(self.parse_token(&format!("extra_special_tokens.{name}"), value, true)?);
        }
        Ok(tokens)
    }

    /// The file that gave `key`'s value, if a file did (else the value is the class's
    /// default), for messages.
    pub fn file_of(&self, key: &str) -> Option<&Path> {
        match &self.map_path {
            Some(map) if self.from_map.contains(key) => Some(map),
            _ => self.exists.then_some(self.path.as_path()),
        }
    }

    /// Takes `class` as `tokenizer_class` where the files name none (null or absent).
    pub fn imply_class(&mut self, class: Option<&str>) {
        let Some(class) = class else { return };
        let named = matches!(self.json.get("tokenizer_class"), Some(v) if !v.is_null());
        if let (false, Some(settings)) = (named, self.json.as_object_mut()) {
            settings.insert("tokenizer_class".into(), Value::String(class.into()));
        }
    }

    /// A format error in the file that gave `key`.
    pub fn error(&self, key: &str, detail: String) -> Error {
        Error::Format {
            path: self.file_of(key).unwrap_or(&self.path).to_path_buf(),
            detail,
        }
    }

    /// The true-or-false setting `key`, `default` where it is absent or null.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.error(key, format!("`{key}` is {other}, not true or false"))),
        }
    }

    /// `split_special_tokens`: whether special tokens written in a text are tokenized as
    /// text rather than matched (transformers' default: matched).
    pub fn split_special_tokens(&self) -> Result<bool> {
        self.flag("split_special_tokens", false)
    }

    /// `truncation_side`, if the config sets it.
    pub fn truncation_side(&self) -> Result<Option<TruncationDirection>> {
        match self.json.get("truncation_side") {
            None => Ok(None),
            Some(Value::String(s)) if s == "right" => Ok(Some(TruncationDirection::Right)),
            Some(Value::String(s)) if s == "left" => Ok(Some(TruncationDirection::Left)),
            Some(other) => Err(self.error(
                "truncation_side",
                format!("`truncation_side` is {other}, not \"left\" or \"right\""),
            )),
        }
    }

    /// Whether the model gets segment ids: `model_input_names` names `token_type_ids`; without
    /// that setting, whether the tokenizer class returns them (`class_default`). A model
    /// given none uses segment 0 throughout, as transformers' BERT does.
    pub fn segment_ids(&self, class_default: bool) -> Result<bool> {
        match self.json.get("model_input_names") {
            None => Ok(class_default),
            Some(Value::Array(names)) if names.iter().all(Value::is_string) => {
                Ok(names.iter().any(|n| n == "token_type_ids"))
            }
            Some(other) => Err(self.error(
                "model_input_names",
                format!("`model_input_names` is {other}, not a list of names"),
            )),
        }
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    serde_json::from_str(&crate::text_file::read_utf8(path)?).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        detail: format!("invalid JSON: {e}"),
    })
}

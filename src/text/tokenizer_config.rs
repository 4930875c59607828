//! A checkpoint's `tokenizer_config.json` as transformers 5.24 reads it: with
//! `special_tokens_map.json` beside it overriding the named special tokens, the settings that
//! decide which inputs the model gets (`model_input_names`) and from which side long texts
//! are cut (`truncation_side`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::TruncationDirection;

use crate::error::{Error, Result};

/// The special tokens transformers keeps under their own names.
const NAMED_TOKENS: [&str; 7] = [
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
    "bos_token",
    "eos_token",
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
}

impl TokenizerConfig {
    /// The settings of the checkpoint folder `dir`: `config` (its `tokenizer_config.json`,
    /// if any, else an empty one), then `special_tokens_map.json` in `dir` as transformers
    /// applies it: only when the config has no `added_tokens_decoder` (the map is legacy, read
    /// for configs saved without one), each named token it gives replacing the config's, its
    /// `extra_special_tokens` joining the config's, its `additional_special_tokens` taken only
    /// when the config lists neither.
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
        let has_extra = |s: &serde_json::Map<String, Value>| {
            s.get("extra_special_tokens")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        };
        if !has_extra(settings) {
            if let Some(old) = settings.remove("additional_special_tokens") {
                settings.insert("extra_special_tokens".into(), old);
            }
        }
        let map_file = dir.join("special_tokens_map.json");
        let mut from_map = BTreeSet::new();
        let mut map_path = None;
        if !settings.contains_key("added_tokens_decoder") && map_file.is_file() {
            let map = read_json(&map_file)?;
            let Value::Object(map) = map else {
                return Err(Error::Format {
                    path: map_file,
                    detail: "not a JSON object".into(),
                });
            };
            for (key, value) in map {
                if NAMED_TOKENS.contains(&key.as_str()) {
                    settings.insert(key.clone(), value);
                    from_map.insert(key);
                } else if key == "extra_special_tokens" {
                    if let Value::Array(tokens) = value {
                        let mut list = match settings.remove("extra_special_tokens") {
                            Some(Value::Array(existing)) => existing,
                            _ => Vec::new(),
                        };
                        for token in tokens {
                            if !list.contains(&token) {
                                list.push(token);
                            }
                        }
                        settings.insert(key.clone(), Value::Array(list));
                        from_map.insert(key);
                    }
                } else if key == "additional_special_tokens"
                    && !settings.contains_key("extra_special_tokens")
                {
                    settings.insert("extra_special_tokens".into(), value);
                    from_map.insert("extra_special_tokens".into());
                }
            }
            map_path = Some(map_file);
        }
        Ok(TokenizerConfig {
            json,
            path,
            exists: config.is_some(),
            map_path,
            from_map,
        })
    }

    /// The file that gave `key`'s value, if a file did (else the value is the class's
    /// default), for messages.
    pub fn file_of(&self, key: &str) -> Option<&Path> {
        match &self.map_path {
            Some(map) if self.from_map.contains(key) => Some(map),
            _ => self.exists.then_some(self.path.as_path()),
        }
    }

    /// A format error in the file that gave `key`.
    pub fn error(&self, key: &str, detail: String) -> Error {
        Error::Format {
            path: self.file_of(key).unwrap_or(&self.path).to_path_buf(),
            detail,
        }
    }

    /// `truncation_side`, if the config sets it.
    pub fn truncation_side(&self) -> Result<Option<TruncationDirection>> {
        match self.json.get("truncation_side") {
            None | Some(Value::Null) => Ok(None),
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
            None | Some(Value::Null) => Ok(class_default),
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

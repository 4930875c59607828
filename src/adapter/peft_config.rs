//! `adapter_config.json` as Python PEFT writes it for LoRA: what spafit can represent, and a
//! clear refusal, naming the field, for anything else.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::python_regex::compile_python_pattern;
use crate::error::{Error, Result};

/// Fields whose value never changes what the adapter computes.
const INFORMATIONAL: &[&str] = &[
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "peft_version",
    "megatron_core",
    "qalora_group_size",
    "ensure_weight_tying",
    "auto_mapping",
    "bias",
    // PEFT resets it to false for `nn.Linear` (with a warning): BERT's maps are all linear.
    "fan_in_fan_out",
    // How EVA computed the initial A (the ranks it chose are in `rank_pattern`); PEFT does
    // not redo it on load.
    "eva_config",
];

/// Fields spafit reads.
const READ: &[&str] = &[
    "peft_type",
    "task_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "exclude_modules",
    "layers_to_transform",
    "layers_pattern",
    "modules_to_save",
    "use_dora",
    "use_rslora",
    "rank_pattern",
    "alpha_pattern",
    "layer_replication",
    "lora_bias",
    "init_lora_weights",
];

/// `init_lora_weights` values that only choose how A and B started. Every other one (PiSSA,
/// OLoRA, CorDA, LoftQ, EVA, ...) also rewrites the base weights, and PEFT repeats that when
/// it loads the adapter, so the stored A and B on the unchanged base would compute something
/// else.
const PLAIN_INITS: &[&str] = &["gaussian", "orthogonal", "eva"];
/// `init_lora_weights` values that also keep B frozen in PEFT's training (MiCA: B from the
/// base's minor singular vectors, A from zero; the base untouched): plain LoRA to compute
/// with, but a continued spafit run would train B.
const FROZEN_B_INITS: &[&str] = &["mica"];
/// The initialisations PEFT can convert to a plain LoRA adapter.
const CONVERTIBLE_INITS: &[&str] = &["pissa", "olora"];

/// Which modules a list or regex selects, as PEFT decides it.
#[derive(Clone, Debug)]
pub(crate) enum ModuleSelector {
    /// A module matches when its name is an entry or ends with `.` + an entry.
    Suffixes(Vec<String>),
    /// A module matches when the whole name matches.
    FullMatch(Regex),
    /// Every linear layer but the output head (`"all-linear"`).
    AllLinear,
}

impl ModuleSelector {
    fn parse(value: &Value, field: &str, path: &Path) -> Result<Option<Self>> {
        let bad = |detail: String| field_error(path, field, detail);
        match value {
            Value::Null => Ok(None),
            Value::String(s) if s == "all-linear" => Ok(Some(ModuleSelector::AllLinear)),
            Value::String(s) => compile_python_pattern(s, "^(?:{})$")
                .map(|r| Some(ModuleSelector::FullMatch(r)))
                .map_err(|why| bad(format!("the regular expression {why}"))),
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("{v} is not a module name")))
                })
                .collect::<Result<Vec<_>>>()
                .map(|v| Some(ModuleSelector::Suffixes(v))),
            other => Err(bad(format!(
                "{other} is neither a list nor a regular expression"
            ))),
        }
    }

    /// Whether `module` matches as a name in the list exactly (which PEFT lets bypass
    /// `layers_to_transform`) or by suffix / regex.
    fn matches(&self, module: &str, is_linear: bool, is_head: bool) -> Match {
        match self {
            ModuleSelector::Suffixes(list) => {
                if list.iter().any(|t| t == module) {
                    Match::Exact
                } else if list.iter().any(|t| module.ends_with(&format!(".{t}"))) {
                    Match::Suffix
                } else {
                    Match::No
                }
            }
            ModuleSelector::FullMatch(r) if r.is_match(module) => Match::Exact,
            ModuleSelector::AllLinear if is_linear && !is_head => Match::Exact,
            _ => Match::No,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Match {
    No,
    Exact,
    Suffix,
}

/// The LoRA settings of a PEFT adapter that spafit represents.
#[derive(Clone, Debug)]
pub(crate) struct PeftLoraSettings {
    pub rank: usize,
    /// `lora_alpha` as the file gives it (the patterns' alphas are compared with it).
    pub alpha: f64,
    /// `use_rslora`: the scale is `alpha / √r` (rank-stabilized LoRA), not `alpha / r`.
    pub rank_stabilized: bool,
    /// `use_dora`: each adapted map's output rows are scaled to the file's magnitudes
    /// (weight-decomposed LoRA).
    pub dora: bool,
    pub dropout: f64,
    targets: ModuleSelector,
    exclude: Option<ModuleSelector>,
    layers_to_transform: Option<Vec<usize>>,
    pub modules_to_save: Vec<String>,
    /// `rank_pattern` and `alpha_pattern` entries, in the file's order: PEFT gives a module
    /// the value of the FIRST pattern that matches it.
    pub rank_pattern: Vec<ModulePattern>,
    pub alpha_pattern: Vec<ModulePattern>,
    pub base_model_name_or_path: Option<String>,
    /// The `init_lora_weights` that keeps B frozen in PEFT's training, if it is one
    /// ([`FROZEN_B_INITS`]).
    pub frozen_b_init: Option<String>,
}

/// A `rank_pattern` or `alpha_pattern` entry: a key and its value, with the key compiled as
/// PEFT's `get_pattern_key` matches it against a module's full name.
#[derive(Clone, Debug)]
pub(crate) struct ModulePattern {
    pub key: String,
    matches_end: Regex,
    pub value: f64,
}

impl ModulePattern {
    fn new(field: &str, key: &str, value: f64, path: &Path) -> Result<Self> {
        let matches_end = compile_python_pattern(key, "^(?:.*\\.)?(?:{})$")
            .map_err(|why| field_error(path, field, format!("the pattern {why}")))?;
        Ok(ModulePattern {
            key: key.to_string(),
            matches_end,
            value,
        })
    }

    /// Whether the key matches the end of `module` (a whole run of its dotted parts).
    pub fn matches(&self, module: &str) -> bool {
        self.matches_end.is_match(module)
    }
}

/// The value of the first of `patterns` that matches `module`.
fn first_match(patterns: &[ModulePattern], module: &str) -> Option<f64> {
    patterns.iter().find(|p| p.matches(module)).map(|p| p.value)
}

fn field_error(path: &Path, field: &str, detail: String) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        detail: format!("`{field}`: {detail}"),
    }
}

/// Whether a JSON value means "unset" (null, false, 0, "", [] or {}).
fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(_) => false,
    }
}

impl PeftLoraSettings {
    /// Reads `adapter_config.json`.
    pub fn read(path: &Path) -> Result<Self> {
        Self::from_json(&crate::text_file::read_utf8(path)?, path)
    }

    /// Parses and validates the text of a config; `path` names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let json: Map<String, Value> = serde_json::from_str(text).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            detail: format!("not a PEFT adapter config: {e}"),
        })?;
        // serde_json's map sorts the keys; PEFT walks the patterns in the file's order.
        let file_order = serde_json::from_str::<PatternKeyOrder>(text).ok();
        let path = PathBuf::from(path);
        let bad = |field: &str, detail: String| field_error(&path, field, detail);
        let get = |field: &str| json.get(field).unwrap_or(&Value::Null);
        match get("peft_type").as_str() {
            Some("LORA") => {}
            Some(other) => {
                return Err(bad(
                    "peft_type",
                    format!("`{other}`: spafit imports LoRA adapters only (peft_type LORA)"),
                ))
            }
            None => {
                return Err(bad(
                    "peft_type",
                    "missing: not a PEFT adapter config".into(),
                ))
            }
        }
        if let Some(task) = get("task_type").as_str().filter(|t| *t != "SEQ_CLS") {
            return Err(bad(
                "task_type",
                format!("`{task}`: spafit needs a sequence-classification adapter (SEQ_CLS) with its classifier"),
            ));
        }
        // PEFT's switches are booleans; any other value is refused as such, not read as set.
        let switch = |field: &str| match get(field) {
            Value::Null => Ok(false),
            Value::Bool(b) => Ok(*b),
            other => Err(bad(field, format!("{other} is not true or false"))),
        };
        let dora = switch("use_dora")?;
        if !is_unset(get("layer_replication")) {
            return Err(bad(
                "layer_replication",
                format!(
                    "{} — replicated layers are not supported",
                    get("layer_replication")
                ),
            ));
        }
        if !is_unset(get("lora_bias")) {
            return Err(bad(
                "lora_bias",
                "a bias on LoRA's B matrix is not supported".into(),
            ));
        }
        for (field, value) in &json {
            let known = READ.contains(&field.as_str()) || INFORMATIONAL.contains(&field.as_str());
            if !known && !is_unset(value) {
                return Err(bad(
                    field,
                    format!(
                        "{value}: spafit does not support this PEFT option (or does not know \
                         it), which may change what the adapter computes"
                    ),
                ));
            }
        }
        // Which biases PEFT trained and saved; the tensors in the file say which layers'.
        match get("bias") {
            Value::Null => {}
            Value::String(s) if ["none", "all", "lora_only"].contains(&s.as_str()) => {}
            other => {
                return Err(bad(
                    "bias",
                    format!("{other}: PEFT knows \"none\", \"all\" and \"lora_only\""),
                ))
            }
        }
        let mut frozen_b_init = None;
        match get("init_lora_weights") {
            Value::Null | Value::Bool(_) => {}
            Value::String(s) if PLAIN_INITS.contains(&s.to_ascii_lowercase().as_str()) => {}
            Value::String(s) if FROZEN_B_INITS.contains(&s.to_ascii_lowercase().as_str()) => {
                frozen_b_init = Some(s.clone());
            }
            other => {
                let name = other.as_str().unwrap_or_default().to_ascii_lowercase();
                let remedy = match CONVERTIBLE_INITS.iter().any(|c| name.starts_with(c)) {
                    true => {
                        " (PEFT's `path_initial_model_for_weight_conversion` turns it into \
                              one that does not)"
                    }
                    false => "",
                };
                return Err(bad(
                    "init_lora_weights",
                    format!(
                        "{other}: this initialisation also changes the base weights, which PEFT \
                         recomputes when it loads the adapter; spafit loads A and B onto the \
                         unchanged base model, so it would compute something else{remedy}"
                    ),
                ));
            }
        }
        // PEFT finds the layer index after this name; BERT's is `...encoder.layer.N`,
        // DistilBERT's `...transformer.layer.N`.
        let names_bert_layers = |v: &Value| {
            v.as_str()
                .is_some_and(|s| s == "layer" || s == "encoder.layer" || s == "transformer.layer")
        };
        // PEFT tries a list's names in turn (`.*\.{name}\.(\d+)\.`): a plain word other
        // than those above finds no numbered module in these models, so it is passed over.
        let plain_word = |v: &Value| {
            v.as_str().is_some_and(|s| {
                !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
        };
        match get("layers_pattern") {
            Value::Null => {}
            v if names_bert_layers(v) => {}
            Value::Array(a)
                if a.iter().any(names_bert_layers)
                    && a.iter().all(|v| names_bert_layers(v) || plain_word(v)) => {}
            other => {
                return Err(bad(
                    "layers_pattern",
                    format!("{other}: BERT's layers are `layer`"),
                ))
            }
        }
        let rank = get("r")
            .as_u64()
            .filter(|&r| r > 0)
            .ok_or_else(|| bad("r", format!("{} is not a positive rank", get("r"))))?
            as usize;
        let alpha = match get("lora_alpha") {
            // PEFT's default when the field is absent; written as null, PEFT cannot load it.
            Value::Null if json.get("lora_alpha").is_none() => 8.0,
            v => v
                .as_f64()
                .filter(|a| a.is_finite())
                .ok_or_else(|| bad("lora_alpha", format!("{v} is not a number")))?,
        };
        let rank_stabilized = switch("use_rslora")?;
        let dropout = match get("lora_dropout") {
            Value::Null => 0.0,
            v => v
                .as_f64()
                .filter(|p| (0.0..1.0).contains(p))
                .ok_or_else(|| bad("lora_dropout", format!("{v} is not in [0, 1)")))?,
        };
        let targets = ModuleSelector::parse(get("target_modules"), "target_modules", &path)?
            .ok_or_else(|| {
                bad(
                    "target_modules",
                    "missing: which modules carry adapters?".into(),
                )
            })?;
        let exclude = ModuleSelector::parse(get("exclude_modules"), "exclude_modules", &path)?;
        let layers_to_transform = match get("layers_to_transform") {
            // PEFT reads an empty list as "every layer".
            Value::Null => None,
            Value::Array(a) if a.is_empty() => None,
            Value::Number(n) => Some(vec![n
                .as_u64()
                .ok_or_else(|| bad("layers_to_transform", format!("{n} is not a layer index")))?
                as usize]),
            Value::Array(a) => Some(
                a.iter()
                    .map(|v| {
                        v.as_u64().map(|v| v as usize).ok_or_else(|| {
                            bad("layers_to_transform", format!("{v} is not a layer index"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            other => {
                return Err(bad(
                    "layers_to_transform",
                    format!("{other} is not a list of layer indices"),
                ))
            }
        };
        let modules_to_save = match get("modules_to_save") {
            Value::Null => Vec::new(),
            Value::Array(a) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad("modules_to_save", format!("{v} is not a module name")))
                })
                .collect::<Result<Vec<_>>>()?,
            other => return Err(bad("modules_to_save", format!("{other} is not a list"))),
        };
        // Each value is checked as `r` and `lora_alpha` are, matched or not: PEFT would fail
        // on a rank of 2.5 where it applies.
        let pattern = |field: &str,
                       order: Option<KeysInFileOrder>,
                       value_of: &dyn Fn(&Value) -> std::result::Result<f64, String>|
         -> Result<Vec<ModulePattern>> {
            match get(field) {
                Value::Null => Ok(Vec::new()),
                Value::Object(map) => {
                    let mut entries = map
                        .iter()
                        .map(|(k, v)| {
                            value_of(v)
                                .map(|v| (k.clone(), v))
                                .map_err(|why| bad(field, format!("`{k}`: {v} {why}")))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    in_key_order(&mut entries, order);
                    entries
                        .into_iter()
                        .map(|(k, v)| ModulePattern::new(field, &k, v, &path))
                        .collect()
                }
                other => Err(bad(field, format!("{other} is not a map of patterns"))),
            }
        };
        let positive_rank = |v: &Value| match v.as_u64() {
            Some(r) if r > 0 && r <= u64::from(u32::MAX) => Ok(r as f64),
            _ => Err("is not a positive rank".to_string()),
        };
        let usable_alpha = |v: &Value| match v.as_f64() {
            None => Err("is not a number".to_string()),
            Some(a) => match crate::nn::LoraConfig::alpha_problem(a) {
                Some(why) => Err(format!("is no adapter's alpha: {why}")),
                None => Ok(a),
            },
        };
        let (rank_order, alpha_order) =
            file_order.map_or((None, None), |o| (o.rank_pattern, o.alpha_pattern));
        let rank_pattern = pattern("rank_pattern", rank_order, &positive_rank)?;
        let alpha_pattern = pattern("alpha_pattern", alpha_order, &usable_alpha)?;
        Ok(PeftLoraSettings {
            rank_pattern,
            alpha_pattern,
            rank,
            alpha,
            rank_stabilized,
            dora,
            dropout,
            targets,
            exclude,
            layers_to_transform,
            modules_to_save,
            base_model_name_or_path: get("base_model_name_or_path").as_str().map(str::to_string),
            frozen_b_init,
        })
    }

    /// The alpha that gives this adapter's scale as spafit computes every LoRA scale,
    /// `alpha / r`: `lora_alpha` itself, or `lora_alpha · √r` for rank-stabilized LoRA (its
    /// scale `lora_alpha / √r` is that alpha over r).
    pub fn spafit_alpha(&self) -> f64 {
        self.held_alpha(self.alpha, self.rank)
    }

    /// `alpha` of an adapter of `rank` as spafit holds it: itself, or rank-stabilized.
    fn held_alpha(&self, alpha: f64, rank: usize) -> f64 {
        match self.rank_stabilized {
            true => crate::nn::LoraConfig::rank_stabilized_alpha(alpha, rank),
            false => alpha,
        }
    }

    /// The layers `layers_to_transform` names, when given (empty: every layer).
    pub fn layers_to_transform(&self) -> Option<&[usize]> {
        self.layers_to_transform.as_deref()
    }

    /// The config's fields that select modules, as the subject of "… select": `target_modules`
    /// (with "does"), or it with `exclude_modules` and `layers_to_transform` where the config
    /// gives them ("… together", with "do").
    pub fn selection_fields(&self) -> (String, &'static str) {
        let mut fields = vec!["`target_modules`".to_string()];
        if self.exclude.is_some() {
            fields.push("`exclude_modules`".into());
        }
        if let Some(layers) = self.layers_to_transform().filter(|l| !l.is_empty()) {
            fields.push(format!("`layers_to_transform` {layers:?}"));
        }
        match fields.len() {
            1 => (fields.remove(0), "does"),
            _ => (format!("{} together", fields.join(", ")), "do"),
        }
    }

    /// Whether `module` is one `modules_to_save` names, or lies inside one: PEFT saves such
    /// a module whole and never puts an adapter on it (an entry matches a whole run of dotted
    /// name parts: `key` matches `...attention.self.key`, `layer.5` everything in layer 5).
    pub fn saved_whole(&self, module: &str) -> bool {
        let dotted = format!(".{module}.");
        self.modules_to_save
            .iter()
            .any(|m| dotted.contains(&format!(".{m}.")))
    }

    /// Two modules `modules_to_save` matches, one inside the other, each with the entry that
    /// matches it (`pooler` and `dense` in `bert.pooler.dense`; `embeddings` alone matches
    /// `bert.embeddings` and its `word_embeddings`, for PEFT matches by the end of a module's
    /// name, dots or not). PEFT wraps both, each keeping its own copy, and the saved file
    /// cannot say which one the model ran with. `modules` are the model's module names.
    pub fn nested_saved_modules<'m>(
        &'m self,
        modules: &'m BTreeSet<String>,
    ) -> Option<[&'m str; 4]> {
        let matched: Vec<(&str, &str)> = modules
            .iter()
            .flat_map(|module| {
                self.modules_to_save
                    .iter()
                    .filter(move |entry| module.ends_with(entry.as_str()))
                    .map(move |entry| (entry.as_str(), module.as_str()))
            })
            .collect();
        matched.iter().find_map(|&(outer_entry, outer)| {
            matched.iter().find_map(|&(inner_entry, inner)| {
                let inside = inner
                    .strip_prefix(outer)
                    .is_some_and(|rest| rest.starts_with('.'));
                inside.then_some([outer_entry, outer, inner_entry, inner])
            })
        })
    }

    /// The rank and alpha of the adapter on `module` (its full name in the base model), the
    /// alpha as [`Self::spafit_alpha`] gives it: for each of `rank_pattern` and
    /// `alpha_pattern`, the value of the first pattern matching the end of the name, as in
    /// PEFT's `get_pattern_key`, else `r` or `lora_alpha`.
    pub fn module_rank_and_alpha(&self, module: &str) -> (usize, f64) {
        // Parsing let only whole ranks from 1 to u32::MAX through.
        let rank = first_match(&self.rank_pattern, module).map_or(self.rank, |r| r as usize);
        let alpha = first_match(&self.alpha_pattern, module).unwrap_or(self.alpha);
        (rank, self.held_alpha(alpha, rank))
    }

    /// The `rank_pattern` and `alpha_pattern` keys (with their field) that match none of
    /// `modules`, each matched as PEFT matches it (which warns of them too).
    pub fn unmatched_patterns<'s>(&'s self, modules: &[String]) -> Vec<(&'static str, &'s str)> {
        [
            ("rank_pattern", &self.rank_pattern),
            ("alpha_pattern", &self.alpha_pattern),
        ]
        .into_iter()
        .flat_map(|(field, patterns)| {
            patterns
                .iter()
                .filter(|p| !modules.iter().any(|m| p.matches(m)))
                .map(move |p| (field, p.key.as_str()))
        })
        .collect()
    }

    /// Whether PEFT would put an adapter on `module` (in encoder layer `layer`, if any).
    pub fn targets(
        &self,
        module: &str,
        layer: Option<usize>,
        is_linear: bool,
        is_head: bool,
    ) -> bool {
        if self.saved_whole(module) {
            return false;
        }
        if let Some(ex) = &self.exclude {
            if ex.matches(module, is_linear, is_head) != Match::No {
                return false;
            }
        }
        match self.targets.matches(module, is_linear, is_head) {
            Match::No => false,
            Match::Exact => true,
            Match::Suffix => match (&self.layers_to_transform, layer) {
                (None, _) => true,
                (Some(list), Some(l)) => list.contains(&l),
                (Some(_), None) => false,
            },
        }
    }
}

/// The keys of `rank_pattern` and `alpha_pattern` as the file writes them.
#[derive(Deserialize)]
struct PatternKeyOrder {
    #[serde(default)]
    rank_pattern: Option<KeysInFileOrder>,
    #[serde(default)]
    alpha_pattern: Option<KeysInFileOrder>,
}

struct KeysInFileOrder(Vec<String>);

impl<'de> Deserialize<'de> for KeysInFileOrder {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = KeysInFileOrder;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut keys = Vec::new();
                while let Some((key, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                    keys.push(key);
                }
                Ok(KeysInFileOrder(keys))
            }
        }
        deserializer.deserialize_map(Keys)
    }
}

/// Reorders `entries` as `order` lists their keys (a key written twice counts where it
/// first appears, as in a Python dict).
fn in_key_order(entries: &mut [(String, f64)], order: Option<KeysInFileOrder>) {
    let Some(KeysInFileOrder(keys)) = order else {
        return;
    };
    let position = |k: &str| keys.iter().position(|o| o == k).unwrap_or(usize::MAX);
    entries.sort_by_key(|(k, _)| position(k));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rank-stabilized LoRA with patterns: each adapter's scale is its own alpha over the
    /// square root of its own rank (PEFT 0.21.2's `LoraLayer.update_layer`), which spafit
    /// holds as alpha·√r over r.
    #[test]
    fn rank_stabilized_patterns_scale_by_each_adapters_own_rank() {
        let path = Path::new("adapter_config.json");
        let settings = PeftLoraSettings::from_json(
            r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 2, "use_rslora": true,
                "target_modules": ["query", "value"],
                "rank_pattern": {"layer.1.attention.self.query": 9},
                "alpha_pattern": {"value": 6}}"#,
            path,
        )
        .unwrap();
        let scale = |module: &str| {
            let (rank, alpha) = settings.module_rank_and_alpha(module);
            (rank, alpha / rank as f64)
        };
        // 2 / √9, 2 / √4, 6 / √4.
        let close = |(rank, s): (usize, f64), (want_rank, want): (usize, f64)| {
            rank == want_rank && (s - want).abs() < 1e-15
        };
        assert!(close(
            scale("bert.encoder.layer.1.attention.self.query"),
            (9, 2.0 / 3.0)
        ));
        assert!(close(
            scale("bert.encoder.layer.0.attention.self.query"),
            (4, 1.0)
        ));
        assert!(close(
            scale("bert.encoder.layer.1.attention.self.value"),
            (4, 3.0)
        ));
    }
}

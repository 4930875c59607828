//! `config.json` of a Hugging Face BERT (or RoBERTa, ELECTRA, DistilBERT) checkpoint.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::deberta::{DebertaKeys, DebertaSettings};
use super::EncoderFamily;
use crate::error::{Error, Result};

/// The architecture settings spafit reads from `config.json`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct BertConfig {
    /// Rows of the word-embedding table.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// ELECTRA's embedding width, where it differs from the hidden size (a linear map,
    /// `embeddings_project`, widens the embeddings); transformers' default when absent is 128.
    /// Other families ignore it, as transformers does. See [`BertConfig::embedding_width`].
    #[serde(default)]
    pub embedding_size: Option<usize>,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// FFN inner size.
    pub intermediate_size: usize,
    /// Rows of the position-embedding table.
    pub max_position_embeddings: usize,
    /// Rows of the token-type table.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// The feed-forward's activation: the exact (erf) GELU (`gelu`, or its Python spelling
    /// `gelu_python`) or `relu` ([`BertConfig::feed_forward_activation`]).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Dropout on hidden states during training.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities during training.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Dropout on the pooled output before the classifier; `None` uses
    /// `hidden_dropout_prob`, as `BertForSequenceClassification` does.
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    /// Standard deviation of the normal draws that initialise weights the checkpoint lacks
    /// (a fresh classifier head).
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// Must be `absolute` when present.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    /// `bert`, `roberta`, `xlm-roberta`, `camembert`, `electra`, `distilbert`, `mpnet` or
    /// `ernie` when present ([`BertConfig::family`]): the other families that share BERT's
    /// tensor names (ALBERT, ...) differ in their positions, embeddings or layers.
    #[serde(default)]
    pub model_type: Option<String>,
    /// The tokenizer class, where config.json names one: transformers' AutoTokenizer takes it
    /// when `tokenizer_config.json` names none, before the model type's own class.
    #[serde(default)]
    pub tokenizer_class: Option<String>,
    /// The padding token's id: `None` where config.json has no `pad_token_id`, `Some(None)`
    /// where it is null (transformers then gives the word embeddings no padding row; RoBERTa
    /// cannot count its positions without one). RoBERTa's position ids count from the one
    /// after it (transformers' default there: 1). See [`BertConfig::padding_id`].
    #[serde(default, deserialize_with = "present")]
    pub pad_token_id: Option<Option<usize>>,
    /// Rows of MPNet's relative position table (`relative_attention_num_buckets`,
    /// transformers' default 32 when absent); other families ignore it. transformers buckets
    /// distances into 32 whatever the table's size: see [`BertConfig::relative_position_rows`].
    #[serde(default)]
    pub relative_attention_num_buckets: Option<usize>,
    /// ERNIE's `use_task_id`: the embeddings add row 0 of a task-type table
    /// (`embeddings.task_type_embeddings`) to every token. Other families ignore it, as
    /// transformers does.
    #[serde(default)]
    pub use_task_id: bool,
    /// Rows of ERNIE's task-type table (transformers' default 3 when absent).
    #[serde(default)]
    pub task_type_vocab_size: Option<usize>,
    /// Must be false: a decoder's attention is causal.
    #[serde(default)]
    pub is_decoder: bool,
    /// `single_label_classification`, `multi_label_classification` or `regression` when
    /// present. A head that is not one of spafit's (multi-label: independent sigmoids; or a
    /// regression of several targets) is set aside: see `Checkpoint::other_kind_of_head`.
    #[serde(default)]
    pub problem_type: Option<String>,
    /// Class names of a fine-tuned classifier head, by id (`"0"`, `"1"`, ...); transformers
    /// accepts any JSON value here, so only strings count as names. `null` is no names, as
    /// transformers reads it.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub id2label: BTreeMap<String, serde_json::Value>,
    /// DeBERTa-v2's own keys (`relative_attention`, `pos_att_type`, ...), read for that
    /// family alone: see [`BertConfig::deberta`].
    #[serde(flatten)]
    pub deberta_keys: DebertaKeys,
}

/// The classes a `config.json` says the checkpoint was saved from (`architectures`:
/// `BertModel`, `BertForSequenceClassification`, ...); its string entries, none where it
/// names none.
pub(crate) fn architectures(config_json: &serde_json::Value) -> Vec<String> {
    config_json
        .get("architectures")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

/// A key that is present, null or not (absent is the field's default, `None`).
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<usize>>, D::Error> {
    Option::deserialize(d).map(Some)
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, serde_json::Value>, D::Error> {
    Ok(Option::deserialize(d)?.unwrap_or_default())
}

/// serde's error for a field of the wrong type does not say which field: the culprit is the
/// key whose removal leaves a config that parses, or one that lacks only that key (a
/// required field). A missing field is named by serde itself. `value` gave `error`.
fn name_the_field(value: &serde_json::Value, error: serde_json::Error) -> String {
    let message = error.to_string();
    // Each try parses the whole object again: bounded, since real configs hold a few dozen
    // settings and a file of thousands of keys would make this quadratic.
    const MAX_KEYS_SEARCHED: usize = 512;
    let object = match value.as_object() {
        Some(o) if o.len() <= MAX_KEYS_SEARCHED && !message.starts_with("missing field") => o,
        _ => return message,
    };
    let culprit = object.keys().find(|key| {
        let mut without = object.clone();
        without.remove(*key);
        match serde_json::from_value::<BertConfig>(serde_json::Value::Object(without)) {
            Ok(_) => true,
            Err(e) => e.to_string().starts_with(&format!("missing field `{key}`")),
        }
    });
    match culprit {
        Some(key) => format!("`{key}` is {}: {message}", object[key]),
        None => message,
    }
}

/// MPNet's padding id, which transformers' `MPNetEmbeddings` hard-codes (`padding_idx = 1`)
/// for its word and position tables and for counting positions, whatever `pad_token_id` says.
const MPNET_PADDING_ID: usize = 1;

/// DistilBERT's keys beside BERT's, with DistilBertConfig's defaults (transformers 5.24).
const DISTILBERT_KEYS: [(&str, &str, f64); 7] = [
    ("dim", "hidden_size", 768.0),
    ("n_layers", "num_hidden_layers", 6.0),
    ("n_heads", "num_attention_heads", 12.0),
    ("hidden_dim", "intermediate_size", 3072.0),
    ("dropout", "hidden_dropout_prob", 0.1),
    ("attention_dropout", "attention_probs_dropout_prob", 0.1),
    ("seq_classif_dropout", "classifier_dropout", 0.2),
];

/// A DistilBERT config (`dim`, `n_layers`, ...) as BERT's keys say it, with
/// DistilBertConfig's defaults for what it leaves out: its LayerNorms' epsilon is fixed at
/// 1e-12 and it has no segment table (one segment type here, which the model never reads).
fn distilbert_as_bert(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::{json, Value};
    let mut object = value.as_object().cloned().unwrap_or_default();
    for (theirs, ours, default) in DISTILBERT_KEYS {
        // DistilBertConfig's `attribute_map` sets `dim`, `n_heads` and `n_layers` from BERT's
        // names after its own fields: where a file holds both, BERT's name wins.
        if ATTRIBUTE_MAP.contains(&ours) && value.get(ours).is_some() {
            continue;
        }
        let given = value.get(theirs).cloned();
        object.insert(ours.into(), given.unwrap_or_else(|| json_number(default)));
    }
    let activation = value.get("activation").cloned();
    object.insert("hidden_act".into(), activation.unwrap_or(json!("gelu")));
    for (key, default) in [("vocab_size", 30522), ("max_position_embeddings", 512)] {
        object.entry(key).or_insert(json!(default));
    }
    object.insert("type_vocab_size".into(), json!(1));
    object.insert("layer_norm_eps".into(), json!(1e-12));
    Value::Object(object)
}

/// The BERT names DistilBertConfig's `attribute_map` maps onto its own.
const ATTRIBUTE_MAP: [&str; 3] = ["hidden_size", "num_attention_heads", "num_hidden_layers"];

/// The first of DistilBERT's own keys that `value` holds as null, which transformers'
/// DistilBertConfig refuses (serde would read some as absent).
fn distilbert_null(value: &serde_json::Value) -> Option<&'static str> {
    DISTILBERT_KEYS
        .iter()
        .map(|(theirs, _, _)| *theirs)
        .chain(["activation", "vocab_size", "max_position_embeddings"])
        .find(|key| value.get(key) == Some(&serde_json::Value::Null))
}

/// `message` about a translated DistilBERT config, naming DistilBERT's keys.
fn in_distilbert_terms(message: &str) -> String {
    let mut message = message.to_string();
    for (theirs, ours, _) in DISTILBERT_KEYS {
        message = message.replace(&format!("`{ours}`"), &format!("`{theirs}`"));
    }
    message.replace("`hidden_act`", "`activation`")
}

/// DeBERTa-v2's keys that may not be null (see `from_json_keeping_value`).
const DEBERTA_NOT_NULL: [&str; 10] = [
    "relative_attention",
    "max_relative_positions",
    "position_biased_input",
    "position_buckets",
    "norm_rel_ebd",
    "conv_kernel_size",
    "pooler_hidden_size",
    "pooler_hidden_act",
    "pooler_dropout",
    "attention_head_size",
];

/// DebertaV2Config's defaults (transformers 5.24) where BertConfig's differ.
const DEBERTA_DEFAULTS: [(&str, f64); 2] = [("type_vocab_size", 0.0), ("layer_norm_eps", 1e-7)];

/// `value` with `defaults` for the keys it lacks.
fn with_defaults(value: serde_json::Value, defaults: &[(&str, f64)]) -> serde_json::Value {
    let mut value = value;
    if let Some(object) = value.as_object_mut() {
        for &(key, default) in defaults {
            object.entry(key).or_insert_with(|| json_number(default));
        }
    }
    value
}

/// A default as config.json would write it: an integer where it is whole (the sizes'
/// fields take no `2.0`).
fn json_number(default: f64) -> serde_json::Value {
    match default.fract() == 0.0 {
        true => serde_json::json!(default as u64),
        false => serde_json::json!(default),
    }
}

/// DeBERTa-v2's attention in a few words, for [`BertConfig::encoder_difference`].
fn deberta_attention(c: &BertConfig) -> String {
    match c.deberta() {
        None => "none".into(),
        Some(d) => format!(
            "terms c2p {} p2c {}, relative {:?}",
            d.c2p, d.p2c, d.relative
        ),
    }
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_initializer_range() -> f64 {
    0.02
}

impl BertConfig {
    /// `problem_type`, beside what spafit makes of a head of `outputs` outputs (a
    /// `multi_label_classification` for a multi-label head, else a `regression` for one
    /// output, a `single_label_classification` for more), where the two differ:
    /// transformers gives the base's `problem_type` to whatever model loads on it, so a head
    /// trained there in Python was trained for that problem, and one trained here loads
    /// there as that problem unless told otherwise.
    pub fn problem_type_unlike(
        &self,
        outputs: usize,
        multi_label: bool,
    ) -> Option<(&str, &'static str)> {
        let ours = match (multi_label, outputs) {
            (true, _) => super::MULTI_LABEL,
            (false, 1) => "regression",
            (false, _) => "single_label_classification",
        };
        let theirs = self.problem_type.as_deref().filter(|p| *p != ours)?;
        Some((theirs, ours))
    }

    /// The shape of Google's BERT-tiny (`tiny`: 2 layers, hidden 128, 2 heads), BERT-mini
    /// (`mini`: 4 layers, hidden 256, 4 heads), BERT-base (`base`: 12 layers, hidden 768) or
    /// BERT-large (`large`: 24 layers, hidden 1024), or of ELECTRA's discriminators
    /// (`electra-small`: 12 layers, hidden 256 over 128-wide embeddings, 4 heads;
    /// `electra-base` and `electra-large`: BERT-base's and BERT-large's), DistilBERT's
    /// (`distilbert-base`: 6 layers, hidden 768) or MPNet's (`mpnet-base`: BERT-base's with
    /// MPNet's relative position table), uncased vocabulary; or DeBERTa-v3-base's
    /// (`deberta-v3-base`: 12 layers, hidden 768, its 128,100-piece vocabulary, relative
    /// positions alone in 256 logarithmic buckets): for benchmarks on random weights.
    pub fn preset(name: &str) -> Option<BertConfig> {
        if name == "deberta-v3-base" {
            return Some(Self::deberta_v3_base());
        }
        let (hidden, layers, heads, embedding_size, model_type) = match name {
            "tiny" => (128, 2, 2, None, "bert"),
            "mini" => (256, 4, 4, None, "bert"),
            "base" => (768, 12, 12, None, "bert"),
            "large" => (1024, 24, 16, None, "bert"),
            "electra-small" => (256, 12, 4, Some(128), "electra"),
            "electra-base" => (768, 12, 12, Some(768), "electra"),
            "electra-large" => (1024, 24, 16, Some(1024), "electra"),
            "distilbert-base" => (768, 6, 12, None, "distilbert"),
            "mpnet-base" => (768, 12, 12, None, "mpnet"),
            _ => return None,
        };
        Some(BertConfig {
            vocab_size: if model_type == "mpnet" { 30527 } else { 30522 },
            hidden_size: hidden,
            embedding_size,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: 4 * hidden,
            max_position_embeddings: 512,
            // DistilBERT and MPNet have no segment table (DistilBERT its own default head
            // dropout).
            type_vocab_size: if matches!(model_type, "distilbert" | "mpnet") {
                1
            } else {
                2
            },
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            classifier_dropout: (model_type == "distilbert").then_some(0.2),
            initializer_range: 0.02,
            position_embedding_type: None,
            model_type: Some(model_type.into()),
            tokenizer_class: None,
            pad_token_id: None,
            relative_attention_num_buckets: None,
            use_task_id: false,
            task_type_vocab_size: None,
            is_decoder: false,
            problem_type: None,
            id2label: BTreeMap::new(),
            deberta_keys: DebertaKeys::default(),
        })
    }

    /// DeBERTa-v3-base's shape, as its config.json gives it.
    fn deberta_v3_base() -> BertConfig {
        let json = serde_json::json!({
            "model_type": "deberta-v2", "vocab_size": 128100, "hidden_size": 768,
            "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
            "max_position_embeddings": 512, "type_vocab_size": 0, "layer_norm_eps": 1e-7,
            "relative_attention": true, "pos_att_type": ["p2c", "c2p"], "position_buckets": 256,
            "max_relative_positions": -1, "share_att_key": true, "norm_rel_ebd": "layer_norm",
            "position_biased_input": false, "pooler_dropout": 0, "pooler_hidden_act": "gelu",
            "pad_token_id": 0
        });
        serde_json::from_value(json).expect("DeBERTa-v3-base's settings are a valid config")
    }

    /// Reads and validates `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_json(&crate::text_file::read_utf8(path)?, path)
    }

    /// The dropout on the pooled output when hidden states drop with `hidden`:
    /// `classifier_dropout` when the config sets it, else `hidden` (always `hidden` for
    /// MPNet, whose head transformers drops out with `hidden_dropout_prob` alone).
    pub fn classifier_dropout_or(&self, hidden: f64) -> f64 {
        match self.family() {
            EncoderFamily::Mpnet => hidden,
            // DebertaV2ForSequenceClassification reads `cls_dropout`, never
            // `classifier_dropout`.
            EncoderFamily::DebertaV2 => {
                self.deberta().and_then(|d| d.cls_dropout).unwrap_or(hidden)
            }
            _ => self.classifier_dropout.unwrap_or(hidden),
        }
    }

    /// DeBERTa-v2's settings (`None` for the other families). A config that passed
    /// validation has usable ones.
    pub fn deberta(&self) -> Option<DebertaSettings> {
        (self.family() == EncoderFamily::DebertaV2)
            .then(|| {
                self.deberta_keys.settings(
                    self.hidden_size,
                    self.num_attention_heads,
                    self.max_position_embeddings,
                )
            })
            .and_then(|s| s.ok())
    }

    /// Dropout on the head's input before its dense map (BERT's pooler) when the family
    /// drops it out there: the classifier's for RoBERTa, ELECTRA and MPNet, DeBERTa-v2's
    /// `pooler_dropout` (0 when absent).
    pub fn pooler_input_dropout_or(&self, hidden: f64) -> f64 {
        match self.deberta() {
            Some(d) => d.pooler_dropout,
            None => self.classifier_dropout_or(hidden),
        }
    }

    /// The activation after the head's dense map: the family's, DeBERTa-v2's
    /// `pooler_hidden_act`.
    pub fn pooler_activation(&self) -> super::PoolerActivation {
        match self.deberta() {
            Some(d) => d.pooler_activation,
            None => self.family().pooler_activation(),
        }
    }

    /// Whether the embeddings add a segment (token-type) table: the family's, and for
    /// DeBERTa-v2 where `type_vocab_size` is not 0 (DeBERTa-v3 has none).
    pub fn has_token_types(&self) -> bool {
        match self.family() {
            EncoderFamily::DebertaV2 => self.type_vocab_size > 0,
            family => family.has_token_types(),
        }
    }

    /// Whether the embeddings add a position table: all families but DeBERTa-v2 without
    /// `position_biased_input` (DeBERTa-v3's positions are relative alone).
    pub fn has_position_table(&self) -> bool {
        self.deberta().is_none_or(|d| d.position_biased_input)
    }

    /// The first setting that gives `other`'s encoder other tensors or other computations
    /// than this one's (family, widths, counts, activation, position embeddings, the tables
    /// of MPNet's relative positions and ERNIE's task types), as
    /// `name: this vs other`; `None` for the same encoder (heads, labels, dropout aside).
    pub fn encoder_difference(&self, other: &BertConfig) -> Option<String> {
        let rows = |rows: Option<usize>| rows.map_or("none".to_string(), |r| r.to_string());
        let settings = |c: &BertConfig| {
            [
                ("family", format!("{:?}", c.family())),
                ("hidden_size", c.hidden_size.to_string()),
                ("num_hidden_layers", c.num_hidden_layers.to_string()),
                ("num_attention_heads", c.num_attention_heads.to_string()),
                ("intermediate_size", c.intermediate_size.to_string()),
                ("vocab_size", c.vocab_size.to_string()),
                (
                    "max_position_embeddings",
                    c.max_position_embeddings.to_string(),
                ),
                ("type_vocab_size", c.type_vocab_size.to_string()),
                ("embedding_size", c.embedding_width().to_string()),
                ("hidden_act", format!("{:?}", c.feed_forward_activation())),
                ("layer_norm_eps", format!("{:e}", c.layer_norm_eps)),
                (
                    "relative_attention_num_buckets",
                    rows(c.relative_position_rows()),
                ),
                ("task_type_vocab_size", rows(c.task_type_rows())),
                ("DeBERTa-v2 attention", deberta_attention(c)),
                ("position_biased_input", c.has_position_table().to_string()),
            ]
        };
        settings(self)
            .into_iter()
            .zip(settings(other))
            .find(|((_, a), (_, b))| a != b)
            .map(|((name, a), (_, b))| format!("{name}: {a} vs {b}"))
    }

    /// The class names of `id2label` in id order, when they are strings naming ids
    /// `0..num_labels`, all distinct, and not transformers' placeholders (`LABEL_0`, ...).
    pub fn class_names(&self, num_labels: usize) -> Option<Vec<String>> {
        let names: Vec<String> = (0..num_labels)
            .map(|i| Some(self.id2label.get(&i.to_string())?.as_str()?.to_string()))
            .collect::<Option<_>>()?;
        let placeholders = names
            .iter()
            .enumerate()
            .all(|(i, n)| *n == format!("LABEL_{i}"));
        let distinct = crate::data::first_repeat(&names).is_none();
        (self.id2label.len() == num_labels && distinct && !placeholders).then_some(names)
    }

    /// Features per attention head (`hidden_size / num_attention_heads`; 0 without heads,
    /// which validation refuses).
    pub fn head_dim(&self) -> usize {
        self.hidden_size
            .checked_div(self.num_attention_heads)
            .unwrap_or(0)
    }

    /// The encoder family (`model_type`; BERT when absent).
    pub fn family(&self) -> EncoderFamily {
        self.model_type
            .as_deref()
            .and_then(EncoderFamily::of_model_type)
            .unwrap_or(EncoderFamily::Bert)
    }

    /// The width of the embedding tables: ELECTRA's `embedding_size` (transformers' default
    /// 128 when absent), the hidden size for every other family.
    pub fn embedding_width(&self) -> usize {
        match self.family() {
            EncoderFamily::Electra => self.embedding_size.unwrap_or(128),
            EncoderFamily::Bert
            | EncoderFamily::Roberta
            | EncoderFamily::DistilBert
            | EncoderFamily::Mpnet
            | EncoderFamily::Ernie
            | EncoderFamily::DebertaV2 => self.hidden_size,
        }
    }

    /// The feed-forward's activation (`hidden_act`; transformers' `gelu_python` is the same
    /// erf GELU written out in Python). A config that passed validation names one of them;
    /// any other name reads as GELU.
    pub fn feed_forward_activation(&self) -> crate::nn::FeedForwardActivation {
        match self.hidden_act.as_str() {
            "relu" => crate::nn::FeedForwardActivation::Relu,
            _ => crate::nn::FeedForwardActivation::Gelu,
        }
    }

    /// Whether the embeddings are followed by a linear map up to the hidden size (ELECTRA's
    /// `embeddings_project`, there when `embedding_size` is not the hidden size).
    pub fn projects_embeddings(&self) -> bool {
        self.embedding_width() != self.hidden_size
    }

    /// The position id of a sequence's first token: 0 for BERT, ELECTRA, DistilBERT and ERNIE,
    /// `pad_token_id + 1` for RoBERTa (whose padding tokens sit at `pad_token_id`), 2 for
    /// MPNet (transformers hard-codes its padding position, 1).
    pub fn first_position(&self) -> usize {
        match self.family() {
            EncoderFamily::Bert
            | EncoderFamily::Electra
            | EncoderFamily::DistilBert
            | EncoderFamily::Ernie
            | EncoderFamily::DebertaV2 => 0,
            EncoderFamily::Roberta => self.roberta_padding_position().saturating_add(1),
            EncoderFamily::Mpnet => MPNET_PADDING_ID + 1,
        }
    }

    /// RoBERTa's padding id (a null one is refused by validation: transformers cannot count
    /// positions without it).
    fn roberta_padding_position(&self) -> usize {
        self.pad_token_id.flatten().unwrap_or(1)
    }

    /// The padding token's id (`pad_token_id`; transformers' defaults without it: 0 for
    /// BERT, ELECTRA, DistilBERT and ERNIE, 1 for RoBERTa; MPNet's is 1 whatever the config says,
    /// as transformers hard-codes it), whose word-embedding row transformers never trains;
    /// `None` where config.json sets it to null, as transformers reads that: no padding row.
    pub fn padding_id(&self) -> Option<usize> {
        match self.family() {
            EncoderFamily::Mpnet => Some(MPNET_PADDING_ID),
            EncoderFamily::Roberta => Some(self.roberta_padding_position()),
            EncoderFamily::Bert
            | EncoderFamily::Electra
            | EncoderFamily::DistilBert
            | EncoderFamily::Ernie
            | EncoderFamily::DebertaV2 => self.pad_token_id.unwrap_or(Some(0)),
        }
    }

    /// The rows of ERNIE's task-type table where its embeddings add one
    /// (`task_type_vocab_size`, 3 when absent); `None` for other families and for ERNIE
    /// without `use_task_id`.
    pub fn task_type_rows(&self) -> Option<usize> {
        (self.family() == EncoderFamily::Ernie && self.use_task_id)
            .then(|| self.task_type_vocab_size.unwrap_or(3))
    }

    /// The rows of MPNet's relative position table (`relative_attention_num_buckets`, 32
    /// when absent); `None` for the families without one.
    pub fn relative_position_rows(&self) -> Option<usize> {
        self.family()
            .has_relative_position_bias()
            .then(|| self.relative_attention_num_buckets.unwrap_or(32))
    }

    /// The longest sequence the position table holds: `max_position_embeddings` for BERT,
    /// less the positions RoBERTa skips (514 rows hold 512 tokens).
    pub fn max_tokens(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.first_position())
    }

    /// Where [`BertConfig::max_tokens`] comes from, for messages: config.json's
    /// `max_position_embeddings`, less the positions the family skips (RoBERTa's up to its
    /// padding id, MPNet's two).
    pub fn max_tokens_source(&self) -> String {
        match self.first_position() {
            0 => "config.json's `max_position_embeddings`".to_string(),
            skipped => format!(
                "config.json's `max_position_embeddings` {}, less the {skipped} that {}'s \
                 positions skip",
                self.max_position_embeddings,
                self.family().display()
            ),
        }
    }

    /// Why `id2label` names no classes for a head of `num_labels` outputs although it is
    /// neither empty nor transformers' placeholders: a count, an id, a name that is not a
    /// string, or a repeated name. `None` when it is usable, empty or placeholders.
    pub fn class_names_problem(&self, num_labels: usize) -> Option<String> {
        if self.id2label.is_empty() || self.class_names(num_labels).is_some() {
            return None;
        }
        let placeholders = (0..num_labels).all(|i| {
            self.id2label.get(&i.to_string()).and_then(|v| v.as_str())
                == Some(format!("LABEL_{i}").as_str())
        });
        if placeholders && self.id2label.len() == num_labels {
            return None;
        }
        if self.id2label.len() != num_labels {
            return Some(format!(
                "it has {} {} for a head of {num_labels} outputs",
                self.id2label.len(),
                if self.id2label.len() == 1 {
                    "entry"
                } else {
                    "entries"
                }
            ));
        }
        for i in 0..num_labels {
            match self.id2label.get(&i.to_string()) {
                None => return Some(format!("it has no entry for id {i}")),
                Some(v) if !v.is_string() => {
                    return Some(format!("id {i} is named {v}, not a string"))
                }
                _ => {}
            }
        }
        let names: Vec<String> = (0..num_labels)
            .filter_map(|i| Some(self.id2label.get(&i.to_string())?.as_str()?.to_string()))
            .collect();
        Some(match crate::data::first_repeat(&names) {
            Some((first, second)) => {
                format!("it names ids {first} and {second} `{}`", names[second])
            }
            None => "it names no usable classes".into(),
        })
    }

    /// Parses and validates JSON text; `path` names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        Self::from_json_keeping_value(text, path).map(|(config, _)| config)
    }

    /// [`BertConfig::from_json`], with the JSON value it parsed, for what a checkpoint reads
    /// beyond the config's fields (`architectures`) without parsing the text again.
    pub(crate) fn from_json_keeping_value(
        text: &str,
        path: &Path,
    ) -> Result<(Self, serde_json::Value)> {
        let format = |detail: String| Error::Format {
            path: path.to_path_buf(),
            detail,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format(format!("invalid BERT config: {e}")))?;
        if !value.is_object() {
            return Err(format(format!(
                "invalid BERT config: the file holds {}, not a JSON object of settings",
                match &value {
                    serde_json::Value::Array(_) => "an array",
                    serde_json::Value::String(_) => "a string",
                    serde_json::Value::Number(_) => "a number",
                    serde_json::Value::Bool(_) => "a boolean",
                    _ => "null",
                }
            )));
        }
        // Another family's config usually lacks BERT's field names too; naming the family
        // says more than a missing `hidden_size` would.
        match value.get("model_type") {
            // Configs older than `model_type` name their family only in `architectures`.
            None | Some(serde_json::Value::Null) => {
                let architectures = value.get("architectures").and_then(|a| a.as_array());
                let names: Vec<&str> = architectures
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str())
                    .collect();
                if !names.is_empty()
                    && !names
                        .iter()
                        .any(|a| EncoderFamily::of_architecture(a) == Some(EncoderFamily::Bert))
                {
                    return Err(format(format!(
                        "no `model_type`, and `architectures` ({}) names no BERT class; spafit \
                         runs BERT checkpoints, and those of the other families it runs where \
                         they say `model_type`: {}",
                        names.join(", "),
                        super::family::FAMILIES_RUN
                    )));
                }
            }
            Some(serde_json::Value::String(t)) if EncoderFamily::of_model_type(t).is_some() => {}
            Some(other) => {
                return Err(format(format!(
                    "`model_type` is {other}; spafit runs {} checkpoints only: other families \
                     differ in their position ids, embeddings or layers even where their \
                     tensor names match BERT's",
                    super::family::FAMILIES_RUN
                )))
            }
        }
        let family = value
            .get("model_type")
            .and_then(|t| t.as_str())
            .and_then(EncoderFamily::of_model_type)
            .unwrap_or(EncoderFamily::Bert);
        let distilbert = family == EncoderFamily::DistilBert;
        // DebertaV2Config's defaults where they are not BertConfig's.
        let value = match family {
            EncoderFamily::DebertaV2 => with_defaults(value, &DEBERTA_DEFAULTS),
            _ => value,
        };
        // DistilBERT names its sizes otherwise; messages name its keys.
        if let Some(key) = distilbert.then(|| distilbert_null(&value)).flatten() {
            return Err(format(format!(
                "`{key}` is null, which transformers refuses: give a value, or remove the key \
                 for DistilBertConfig's default"
            )));
        }
        let as_bert = match distilbert {
            true => distilbert_as_bert(&value),
            false => value.clone(),
        };
        let in_its_terms = |message: String| match distilbert {
            true => in_distilbert_terms(&message),
            false => message,
        };
        let config: BertConfig = serde_json::from_value(as_bert.clone()).map_err(|e| {
            format(format!(
                "invalid {} config: {}",
                family.display(),
                in_its_terms(name_the_field(&as_bert, e))
            ))
        })?;
        // serde reads null as absent; transformers refuses it rather than take the default.
        let nulls_refused = [
            (
                EncoderFamily::Electra,
                "embedding_size",
                "the embeddings' width",
                128,
            ),
            (
                EncoderFamily::Mpnet,
                "relative_attention_num_buckets",
                "the relative position table's rows",
                32,
            ),
            (
                EncoderFamily::Ernie,
                "task_type_vocab_size",
                "the task-type table's rows",
                3,
            ),
        ];
        // DeBERTa-v2's keys transformers 5.24 fails on as null (its config's typed fields, and
        // the attention's and encoder's arithmetic on the others); `pos_att_type` and
        // `cls_dropout` take null as "none".
        if family == EncoderFamily::DebertaV2 {
            // `position_buckets` is read only with relative attention.
            let relative = value.get("relative_attention") == Some(&serde_json::Value::Bool(true));
            if let Some(key) = DEBERTA_NOT_NULL
                .iter()
                .filter(|key| relative || **key != "position_buckets")
                .find(|key| value.get(**key) == Some(&serde_json::Value::Null))
            {
                return Err(format(format!(
                    "`{key}` is null, which transformers refuses: give a value, or remove the \
                     key for transformers' default"
                )));
            }
        }
        for (of, key, what, default) in nulls_refused {
            if family == of && value.get(key) == Some(&serde_json::Value::Null) {
                return Err(format(format!(
                    "`{key}` is null, which transformers refuses: give {what}, or remove the \
                     key for transformers' default of {default}"
                )));
            }
        }
        config
            .problem()
            .map_or(Ok(()), |p| Err(format(in_its_terms(p))))?;
        Ok((config, value))
    }

    /// Checks what [`BertConfig::from_json`] checks, for a config built in code: positive
    /// sizes whose tables fit in memory's address range, heads dividing the hidden size, and
    /// only the variants of BERT that spafit computes.
    pub fn validate(&self) -> Result<()> {
        self.problem()
            .map_or(Ok(()), |p| Err(Error::invalid("BertConfig", p)))
    }

    /// The first thing that makes this config unusable, in words.
    fn problem(&self) -> Option<String> {
        self.check().err()
    }

    fn check(&self) -> std::result::Result<(), String> {
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            // DeBERTa-v3's 0 is no segment table at all.
            let may_be_zero =
                field == "type_vocab_size" && self.family() == EncoderFamily::DebertaV2;
            if v == 0 && !may_be_zero {
                return Err(format!("`{field}` must be positive"));
            }
        }
        if self.embedding_width() == 0 {
            return Err("`embedding_size` must be positive".into());
        }
        if self.family() == EncoderFamily::DebertaV2 {
            self.deberta_keys.settings(
                self.hidden_size,
                self.num_attention_heads,
                self.max_position_embeddings,
            )?;
            if let Some(width) = self.embedding_size.filter(|&w| w != self.hidden_size) {
                return Err(format!(
                    "`embedding_size` {width} is not `hidden_size` {}: DeBERTa-v2's map from \
                     narrower embeddings (`embed_proj`) is not run by spafit",
                    self.hidden_size
                ));
            }
        }
        // Row 0 is the one added to every token.
        if self.task_type_rows() == Some(0) {
            return Err("`task_type_vocab_size` is 0, but `use_task_id` adds its row 0".into());
        }
        let (width_field, width) = match self.family() {
            EncoderFamily::Electra => ("embedding_size", self.embedding_width()),
            _ => ("hidden_size", self.hidden_size),
        };
        for (field, rows, columns, column_field) in [
            (
                "hidden_size",
                self.hidden_size,
                self.hidden_size,
                "hidden_size",
            ),
            ("hidden_size", self.hidden_size, width, width_field),
            ("vocab_size", self.vocab_size, width, width_field),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                width,
                width_field,
            ),
            ("type_vocab_size", self.type_vocab_size, width, width_field),
            (
                "intermediate_size",
                self.intermediate_size,
                self.hidden_size,
                "hidden_size",
            ),
        ] {
            // Each is a table of `rows × columns` values: a product past usize would wrap.
            if rows
                .checked_mul(columns)
                .is_none_or(|n| n > isize::MAX as usize / 8)
            {
                return Err(format!(
                    "`{field}` {rows} × `{column_field}` {columns} is more values than memory \
                     can address"
                ));
            }
        }
        if let Some(t) = self
            .model_type
            .as_deref()
            .filter(|t| EncoderFamily::of_model_type(t).is_none())
        {
            return Err(format!(
                "`model_type` is `{t}`; spafit runs {} checkpoints only",
                super::family::FAMILIES_RUN
            ));
        }
        // The padding id names a row of the word embeddings (transformers' `padding_idx`,
        // which it refuses out of range as well).
        if self.family() == EncoderFamily::Roberta && self.pad_token_id == Some(None) {
            return Err(
                "`pad_token_id` is null, but RoBERTa's positions count from it \
                        (transformers fails on it too): give the padding token's id, or remove \
                        the key for transformers' default of 1"
                    .into(),
            );
        }
        if let Some(pad) = self
            .pad_token_id
            .flatten()
            .filter(|&p| p >= self.vocab_size)
        {
            return Err(format!(
                "`pad_token_id` {pad} is not below `vocab_size` {}: it names a row of the \
                 word embeddings",
                self.vocab_size
            ));
        }
        // A text needs `<s>`, one token and `</s>`.
        if self.family() == EncoderFamily::Roberta
            && self.roberta_padding_position().saturating_add(4) > self.max_position_embeddings
        {
            return Err(format!(
                "`pad_token_id` {} leaves no RoBERTa positions among `max_position_embeddings` \
                 {} (positions start after the padding id, and a text needs 3)",
                self.roberta_padding_position(),
                self.max_position_embeddings
            ));
        }
        // transformers looks up buckets 0 to 31 whatever the table's size: a smaller table
        // fails there on the first long enough text.
        if let Some(rows) = self.relative_position_rows() {
            if rows < crate::model::RELATIVE_POSITION_BUCKETS {
                return Err(format!(
                    "`relative_attention_num_buckets` is {rows}, but MPNet looks up {} \
                     relative position buckets in that table",
                    crate::model::RELATIVE_POSITION_BUCKETS
                ));
            }
            if rows
                .checked_mul(self.num_attention_heads)
                .is_none_or(|n| n > isize::MAX as usize / 8)
            {
                return Err(format!(
                    "`relative_attention_num_buckets` {rows} × `num_attention_heads` {} is \
                     more values than memory can address",
                    self.num_attention_heads
                ));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "`hidden_size` {} is not divisible by `num_attention_heads` {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !matches!(self.hidden_act.as_str(), "gelu" | "gelu_python" | "relu") {
            return Err(format!(
                "`hidden_act` is `{}`; the exact erf `gelu` of BERT (`gelu` or `gelu_python`) \
                 and `relu` are supported",
                self.hidden_act
            ));
        }
        if let Some(p) = &self.position_embedding_type {
            if p != "absolute" {
                return Err(format!(
                    "`position_embedding_type` `{p}` is not supported (only `absolute`)"
                ));
            }
        }
        if self.is_decoder {
            return Err(
                "`is_decoder` is true: a decoder's attention is causal, BERT's encoder attends \
                 to every token"
                    .into(),
            );
        }
        if let Some(p) = self.problem_type.as_deref().filter(|p| {
            !matches!(
                *p,
                "single_label_classification" | "regression" | super::MULTI_LABEL
            )
        }) {
            // A multi-label head is set aside where it would be used
            // (`Checkpoint::other_kind_of_head`); its encoder is a base like any other.
            return Err(format!(
                "`problem_type` is `{p}`: transformers knows single_label_classification, \
                 multi_label_classification and regression"
            ));
        }
        if !(self.initializer_range > 0.0 && self.initializer_range.is_finite()) {
            return Err(format!(
                "`initializer_range` must be positive, got {}",
                self.initializer_range
            ));
        }
        // Past 1 the epsilon drowns the variance it guards (BERT's is 1e-12): every
        // LayerNorm output would be about 0.
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps <= 1.0) {
            return Err(format!(
                "`layer_norm_eps` must be in (0, 1], got {:e}",
                self.layer_norm_eps
            ));
        }
        for (field, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("`{field}` must be in [0, 1), got {p}"));
            }
        }
        if let Some(p) = self.classifier_dropout.filter(|p| !(0.0..1.0).contains(p)) {
            return Err(format!("`classifier_dropout` must be in [0, 1), got {p}"));
        }
        Ok(())
    }
}

//! The encoder families spafit runs, and how each names its tensors.
//!
//! RoBERTa's encoder is BERT's layer for layer; it differs in four places only: position ids
//! start after the padding id (`pad_token_id + 1`, padding at `pad_token_id`), one segment
//! type, the classification head (`dropout → dense → tanh → dropout → out_proj` on the first
//! token, where BERT's pooler has no dropout before its dense map), and the names. spafit
//! keeps one model and BERT's names inside (`bert.…`, `bert.pooler.dense`, `classifier`),
//! and translates at the edges where files are read or written: RoBERTa's
//! `classifier.dense` is BERT's pooler, its `classifier.out_proj` BERT's `classifier`.
//!
//! ELECTRA's discriminator is BERT's encoder too, with two differences: its embeddings may be
//! narrower than the hidden size (`embedding_size`), followed then by a linear map up to it
//! (`electra.embeddings_project`, `bert.embeddings_project` here), and its classification head
//! is RoBERTa's with GELU where RoBERTa has tanh. Positions and segments are BERT's.
//!
//! DistilBERT is BERT's post-LN layer with other names throughout (`q_lin`, `sa_layer_norm`,
//! `ffn.lin1`, ... under `distilbert.transformer.layer.N`), no segment embeddings, no dropout
//! after the attention's output map, and a head of `pre_classifier → ReLU → dropout →
//! classifier` (no dropout before `pre_classifier`, BERT's pooler here). Its config names the
//! sizes otherwise too (`dim`, `n_layers`, ...: see `BertConfig::from_json`).
//!
//! MPNet is BERT's post-LN layer under other names (`attention.attn.q`, ...,
//! `attention.attn.o`, `attention.LayerNorm`), RoBERTa's positions (its padding id, 1, is
//! hard-coded in transformers) and head, no segment embeddings, and one thing of its own: a
//! relative position bias added to every layer's attention scores, looked up by bucketed
//! distance in a table the layers share (`mpnet.encoder.relative_attention_bias`,
//! `bert.encoder.relative_attention_bias` here: see `crate::model::relative_position`).
//!
//! DeBERTa-v2 (and -v3) is BERT's post-LN layer under the prefix `deberta` with the
//! attention's maps named `query_proj`, `key_proj`, `value_proj`, a context pooler at the top
//! level (`pooler.dense`, GELU by default, `pooler_dropout` before it), segment and position
//! tables only where its config keeps them, and disentangled attention: see `super::deberta`
//! (`deberta.encoder.rel_embeddings` and `deberta.encoder.LayerNorm` are `bert.encoder.…` here).
//!
//! ERNIE is BERT under the prefix `ernie`, with one addition where its config sets
//! `use_task_id` (ERNIE 3.0's checkpoints do): a task-type table
//! (`ernie.embeddings.task_type_embeddings`) whose row 0 — transformers' task id when none is
//! given, and spafit's always — is added to every token's embedding.

/// A family of BERT-shaped encoders (`config.json`'s `model_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncoderFamily {
    /// `bert`.
    Bert,
    /// `roberta`, `xlm-roberta` and `camembert` (transformers runs them through the same
    /// code).
    Roberta,
    /// `electra` (the discriminator's encoder; a generator's checkpoint holds one too).
    Electra,
    /// `distilbert`.
    DistilBert,
    /// `mpnet`.
    Mpnet,
    /// `ernie` (ERNIE 1.0 to 3.0 as transformers runs them).
    Ernie,
    /// `deberta-v2` (DeBERTa-v2 and -v3).
    DebertaV2,
}

/// DeBERTa-v2's names of the modules of a layer, beside BERT's (relative to the layer).
const DEBERTA_LAYER_MODULES: [(&str, &str); 3] = [
    ("attention.self.query", "attention.self.query_proj"),
    ("attention.self.key", "attention.self.key_proj"),
    ("attention.self.value", "attention.self.value_proj"),
];

/// MPNet's names of the modules of a layer, beside BERT's (relative to the layer).
const MPNET_LAYER_MODULES: [(&str, &str); 5] = [
    ("attention.self.query", "attention.attn.q"),
    ("attention.self.key", "attention.attn.k"),
    ("attention.self.value", "attention.attn.v"),
    ("attention.output.dense", "attention.attn.o"),
    ("attention.output.LayerNorm", "attention.LayerNorm"),
];

/// DistilBERT's names of the modules of a layer, beside BERT's (relative to the layer).
const DISTILBERT_LAYER_MODULES: [(&str, &str); 8] = [
    ("attention.self.query", "attention.q_lin"),
    ("attention.self.key", "attention.k_lin"),
    ("attention.self.value", "attention.v_lin"),
    ("attention.output.dense", "attention.out_lin"),
    ("attention.output.LayerNorm", "sa_layer_norm"),
    ("intermediate.dense", "ffn.lin1"),
    ("output.dense", "ffn.lin2"),
    ("output.LayerNorm", "output_layer_norm"),
];

/// The activation of the head's dense map (BERT's pooler): BERT's and RoBERTa's tanh,
/// ELECTRA's GELU, DistilBERT's ReLU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolerActivation {
    /// `tanh`.
    Tanh,
    /// The exact (erf) GELU.
    Gelu,
    /// `max(x, 0)`.
    Relu,
}

/// The families spafit runs, by name and `model_type`, for messages.
pub const FAMILIES_RUN: &str = "BERT (`bert`), RoBERTa (`roberta`, `xlm-roberta`, \
     `camembert`), ELECTRA (`electra`), DistilBERT (`distilbert`), MPNet (`mpnet`), ERNIE \
     (`ernie`) and DeBERTa-v2/v3 (`deberta-v2`)";

impl EncoderFamily {
    /// Every family.
    pub const ALL: [EncoderFamily; 7] = [
        EncoderFamily::Bert,
        EncoderFamily::Roberta,
        EncoderFamily::Electra,
        EncoderFamily::DistilBert,
        EncoderFamily::Mpnet,
        EncoderFamily::Ernie,
        EncoderFamily::DebertaV2,
    ];

    /// The family of a `model_type`, `None` for one spafit does not run.
    pub fn of_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "bert" => Some(EncoderFamily::Bert),
            "roberta" | "xlm-roberta" | "camembert" => Some(EncoderFamily::Roberta),
            "electra" => Some(EncoderFamily::Electra),
            "distilbert" => Some(EncoderFamily::DistilBert),
            "mpnet" => Some(EncoderFamily::Mpnet),
            "ernie" => Some(EncoderFamily::Ernie),
            "deberta-v2" => Some(EncoderFamily::DebertaV2),
            _ => None,
        }
    }

    /// The family an `architectures` class belongs to (for configs without `model_type`).
    pub fn of_architecture(class: &str) -> Option<Self> {
        if class.starts_with("Bert") {
            Some(EncoderFamily::Bert)
        } else if ["Roberta", "XLMRoberta", "Camembert"]
            .iter()
            .any(|p| class.starts_with(p))
        {
            Some(EncoderFamily::Roberta)
        } else if class.starts_with("Electra") {
            Some(EncoderFamily::Electra)
        } else if class.starts_with("DistilBert") {
            Some(EncoderFamily::DistilBert)
        } else if class.starts_with("MPNet") {
            Some(EncoderFamily::Mpnet)
        } else if class.starts_with("ErnieFor") || class == "ErnieModel" {
            Some(EncoderFamily::Ernie)
        } else if class.starts_with("DebertaV2") {
            Some(EncoderFamily::DebertaV2)
        } else {
            None
        }
    }

    /// The transformers class of a sequence classifier of this family and `model_type`.
    pub fn sequence_classifier(self, model_type: Option<&str>) -> &'static str {
        match (self, model_type) {
            (EncoderFamily::Bert, _) => "BertForSequenceClassification",
            (EncoderFamily::Roberta, Some("xlm-roberta")) => "XLMRobertaForSequenceClassification",
            (EncoderFamily::Roberta, Some("camembert")) => "CamembertForSequenceClassification",
            (EncoderFamily::Roberta, _) => "RobertaForSequenceClassification",
            (EncoderFamily::Electra, _) => "ElectraForSequenceClassification",
            (EncoderFamily::DistilBert, _) => "DistilBertForSequenceClassification",
            (EncoderFamily::Mpnet, _) => "MPNetForSequenceClassification",
            (EncoderFamily::Ernie, _) => "ErnieForSequenceClassification",
            (EncoderFamily::DebertaV2, _) => "DebertaV2ForSequenceClassification",
        }
    }

    /// The family's name in messages.
    pub fn display(self) -> &'static str {
        match self {
            EncoderFamily::Bert => "BERT",
            EncoderFamily::Roberta => "RoBERTa",
            EncoderFamily::Electra => "ELECTRA",
            EncoderFamily::DistilBert => "DistilBERT",
            EncoderFamily::Mpnet => "MPNet",
            EncoderFamily::Ernie => "ERNIE",
            EncoderFamily::DebertaV2 => "DeBERTa-v2",
        }
    }

    /// The prefix of the encoder's tensors in a sequence classifier's file.
    pub fn prefix(self) -> &'static str {
        match self {
            EncoderFamily::Bert => "bert",
            EncoderFamily::Roberta => "roberta",
            EncoderFamily::Electra => "electra",
            EncoderFamily::DistilBert => "distilbert",
            EncoderFamily::Mpnet => "mpnet",
            EncoderFamily::Ernie => "ernie",
            EncoderFamily::DebertaV2 => "deberta",
        }
    }

    /// The top-level modules of the encoder, as a bare encoder's file names them (without
    /// [`EncoderFamily::prefix`]: `BertModel.save_pretrained` writes `embeddings.…`).
    pub fn encoder_modules(self) -> &'static [&'static str] {
        match self {
            EncoderFamily::Bert
            | EncoderFamily::Roberta
            | EncoderFamily::Mpnet
            | EncoderFamily::Ernie => &["embeddings", "encoder", "pooler"],
            EncoderFamily::Electra => &["embeddings", "embeddings_project", "encoder"],
            EncoderFamily::DistilBert => &["embeddings", "transformer"],
            EncoderFamily::DebertaV2 => &["embeddings", "encoder"],
        }
    }

    /// Whether the head's dense map (BERT's pooler) belongs to the classification head, so
    /// that it trains whenever the head does (RoBERTa's and ELECTRA's `classifier.dense`,
    /// DistilBERT's `pre_classifier`; PEFT saves it with `classifier`, whose name
    /// `pre_classifier` ends with). BERT's and ERNIE's pooler is the encoder's, and so is
    /// DeBERTa-v2's context pooler here (`pooler.dense`: PEFT's sequence-classification
    /// task saves `classifier` alone, and a base without one draws it fresh).
    pub fn pooler_is_head(self) -> bool {
        !matches!(
            self,
            EncoderFamily::Bert | EncoderFamily::Ernie | EncoderFamily::DebertaV2
        )
    }

    /// Whether the head drops out its input before the dense map (RoBERTa's, ELECTRA's and
    /// MPNet's heads do, with the classifier's dropout, and DeBERTa-v2's context pooler with
    /// `pooler_dropout`; BERT's pooler and DistilBERT's `pre_classifier` do not).
    pub fn dropout_before_pooler(self) -> bool {
        matches!(
            self,
            EncoderFamily::Roberta
                | EncoderFamily::Electra
                | EncoderFamily::Mpnet
                | EncoderFamily::DebertaV2
        )
    }

    /// The activation after the head's dense map (BERT's pooler); DeBERTa-v2's default
    /// (its config may name another: [`crate::checkpoint::BertConfig::pooler_activation`]).
    pub fn pooler_activation(self) -> PoolerActivation {
        match self {
            EncoderFamily::Bert
            | EncoderFamily::Roberta
            | EncoderFamily::Mpnet
            | EncoderFamily::Ernie => PoolerActivation::Tanh,
            EncoderFamily::Electra | EncoderFamily::DebertaV2 => PoolerActivation::Gelu,
            EncoderFamily::DistilBert => PoolerActivation::Relu,
        }
    }

    /// Whether the embeddings may add a segment (token-type) table: all but DistilBERT's and
    /// MPNet's (DeBERTa-v2's where `type_vocab_size` is not 0:
    /// [`crate::checkpoint::BertConfig::has_token_types`]).
    pub fn has_token_types(self) -> bool {
        !matches!(self, EncoderFamily::DistilBert | EncoderFamily::Mpnet)
    }

    /// Whether the layers add a relative position bias to their attention scores (MPNet).
    pub fn has_relative_position_bias(self) -> bool {
        self == EncoderFamily::Mpnet
    }

    /// Whether a layer drops out its attention's output map before the residual add (BERT's
    /// `attention.output.dropout`; DistilBERT's layer has none there).
    pub fn dropout_after_attention_output(self) -> bool {
        self != EncoderFamily::DistilBert
    }

    /// [`EncoderFamily::hf_name`] without the family's prefix, as the base model's own files
    /// (`BertModel`, `DistilBertModel`, ...) name it: `encoder.layer`, `transformer.layer`.
    pub fn hf_name_in_base_model(self, name: &str) -> String {
        let full = self.hf_name(name);
        let prefix = format!("{}.", self.prefix());
        full.strip_prefix(&prefix)
            .map_or_else(|| full.clone(), str::to_string)
    }

    /// The name transformers gives module `module` of a layer (BERT's name relative to the
    /// layer, `attention.self.query`), relative to the layer too.
    pub fn hf_layer_module(self, module: &str) -> String {
        let full = self.hf_name(&format!("bert.encoder.layer.0.{module}"));
        let layer = format!("{}.0.", self.hf_name("bert.encoder.layer"));
        full.strip_prefix(&layer).unwrap_or(&full).to_string()
    }

    /// The name transformers gives the tensor or module spafit calls `name`.
    pub fn hf_name(self, name: &str) -> String {
        match self {
            EncoderFamily::Bert => return name.to_string(),
            EncoderFamily::Ernie => return renamed_base(name, "bert", "ernie"),
            EncoderFamily::DistilBert => return rename(name, &BERT_NAMING, &DISTILBERT_NAMING),
            EncoderFamily::DebertaV2 => {
                if let Some(rest) = under(name, "bert.pooler") {
                    return format!("pooler{rest}");
                }
                let renamed = renamed_base(name, "bert", "deberta");
                return rename_layer_module(
                    &renamed,
                    "deberta.encoder.layer.",
                    &DEBERTA_LAYER_MODULES,
                    (0, 1),
                );
            }
            EncoderFamily::Roberta | EncoderFamily::Electra | EncoderFamily::Mpnet => {}
        }
        if let Some(rest) = under(name, "bert.pooler.dense") {
            return format!("classifier.dense{rest}");
        }
        if let Some(rest) = under(name, "classifier") {
            return format!("classifier.out_proj{rest}");
        }
        match under(name, "bert") {
            Some(rest) if self == EncoderFamily::Mpnet => rename_layer_module(
                &format!("mpnet{rest}"),
                "mpnet.encoder.layer.",
                &MPNET_LAYER_MODULES,
                (0, 1),
            ),
            Some(rest) => format!("{}{rest}", self.prefix()),
            None => name.to_string(),
        }
    }

    /// The name spafit gives the tensor or module transformers calls `name`
    /// ([`EncoderFamily::hf_name`]'s inverse).
    pub fn internal_name(self, name: &str) -> String {
        match self {
            EncoderFamily::Bert => return name.to_string(),
            EncoderFamily::Ernie => return renamed_base(name, "ernie", "bert"),
            EncoderFamily::DistilBert => return rename(name, &DISTILBERT_NAMING, &BERT_NAMING),
            EncoderFamily::DebertaV2 => {
                if let Some(rest) = under(name, "pooler") {
                    return format!("bert.pooler{rest}");
                }
                let ours = rename_layer_module(
                    name,
                    "deberta.encoder.layer.",
                    &DEBERTA_LAYER_MODULES,
                    (1, 0),
                );
                return renamed_base(&ours, "deberta", "bert");
            }
            EncoderFamily::Roberta | EncoderFamily::Electra | EncoderFamily::Mpnet => {}
        }
        if let Some(rest) = under(name, "classifier.dense") {
            return format!("bert.pooler.dense{rest}");
        }
        if let Some(rest) = under(name, "classifier.out_proj") {
            return format!("classifier{rest}");
        }
        match under(name, self.prefix()) {
            Some(_) if self == EncoderFamily::Mpnet => {
                let ours =
                    rename_layer_module(name, "mpnet.encoder.layer.", &MPNET_LAYER_MODULES, (1, 0));
                format!("bert{}", &ours["mpnet".len()..])
            }
            Some(rest) => format!("bert{rest}"),
            None => name.to_string(),
        }
    }
}

/// Where a naming puts what DistilBERT names otherwise than BERT: the head's dense map, the
/// encoder (its layers under `.layer.N`), the model, and which side of
/// [`DISTILBERT_LAYER_MODULES`] names a layer's modules.
struct Naming {
    pooler: &'static str,
    encoder: &'static str,
    base: &'static str,
    side: usize,
}

/// spafit's (BERT's) naming.
const BERT_NAMING: Naming = Naming {
    pooler: "bert.pooler.dense",
    encoder: "bert.encoder",
    base: "bert",
    side: 0,
};

/// DistilBERT's naming.
const DISTILBERT_NAMING: Naming = Naming {
    pooler: "pre_classifier",
    encoder: "distilbert.transformer",
    base: "distilbert",
    side: 1,
};

/// `name` under naming `from` as naming `to` spells it (names neither knows stay as they are).
fn rename(name: &str, from: &Naming, to: &Naming) -> String {
    if let Some(rest) = under(name, from.pooler) {
        return format!("{}{rest}", to.pooler);
    }
    if let Some((index, module)) = name
        .strip_prefix(&format!("{}.layer.", from.encoder))
        .map(|rest| rest.split_once('.').unwrap_or((rest, "")))
    {
        let layer = format!("{}.layer.{index}", to.encoder);
        if module.is_empty() {
            return layer;
        }
        return match DISTILBERT_LAYER_MODULES
            .iter()
            .find_map(|(bert, distilbert)| {
                let names = [bert, distilbert];
                Some((names[to.side], under(module, names[from.side])?))
            }) {
            Some((theirs, rest)) => format!("{layer}.{theirs}{rest}"),
            None => format!("{layer}.{module}"),
        };
    }
    if let Some(rest) = under(name, from.encoder) {
        return format!("{}{rest}", to.encoder);
    }
    match under(name, from.base) {
        Some(rest) => format!("{}{rest}", to.base),
        None => name.to_string(),
    }
}

/// `name` with the module of a layer under `layers` (`mpnet.encoder.layer.`) named by side
/// `to` of `modules` ([`MPNET_LAYER_MODULES`], ...) where side `from` names it; other names
/// as they are.
fn rename_layer_module(
    name: &str,
    layers: &str,
    modules: &[(&str, &str)],
    (from, to): (usize, usize),
) -> String {
    let Some((index, module)) = name
        .strip_prefix(layers)
        .and_then(|rest| rest.split_once('.'))
    else {
        return name.to_string();
    };
    modules
        .iter()
        .find_map(|pair| {
            let names = [pair.0, pair.1];
            Some(format!(
                "{layers}{index}.{}{}",
                names[to],
                under(module, names[from])?
            ))
        })
        .unwrap_or_else(|| name.to_string())
}

/// `name` with the base model's prefix `from` spelled `to`; names outside it as they are.
fn renamed_base(name: &str, from: &str, to: &str) -> String {
    match under(name, from) {
        Some(rest) => format!("{to}{rest}"),
        None => name.to_string(),
    }
}

/// What follows module `module` in `name` (empty, or starting with a dot) when `name` is
/// the module or one of its tensors.
fn under<'a>(name: &'a str, module: &str) -> Option<&'a str> {
    let rest = name.strip_prefix(module)?;
    (rest.is_empty() || rest.starts_with('.')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::EncoderFamily::{Bert, DistilBert, Electra, Ernie, Mpnet, Roberta};

    #[test]
    fn ernie_names_translate_both_ways() {
        for (ours, theirs) in [
            (
                "bert.encoder.layer.2.attention.self.query.lora_A.weight",
                "ernie.encoder.layer.2.attention.self.query.lora_A.weight",
            ),
            (
                "bert.embeddings.task_type_embeddings.weight",
                "ernie.embeddings.task_type_embeddings.weight",
            ),
            ("bert.pooler.dense.bias", "ernie.pooler.dense.bias"),
            ("bert", "ernie"),
            ("classifier.weight", "classifier.weight"),
            ("bertology.x", "bertology.x"),
        ] {
            assert_eq!(Ernie.hf_name(ours), theirs);
            assert_eq!(Ernie.internal_name(theirs), ours);
        }
        assert_eq!(
            Ernie.hf_name_in_base_model("bert.encoder.layer.0.output.dense.weight"),
            "encoder.layer.0.output.dense.weight"
        );
    }

    #[test]
    fn mpnet_names_translate_both_ways() {
        for (ours, theirs) in [
            (
                "bert.encoder.layer.2.attention.self.query.lora_A.weight",
                "mpnet.encoder.layer.2.attention.attn.q.lora_A.weight",
            ),
            (
                "bert.encoder.layer.0.attention.self.key.bias",
                "mpnet.encoder.layer.0.attention.attn.k.bias",
            ),
            (
                "bert.encoder.layer.1.attention.self.value",
                "mpnet.encoder.layer.1.attention.attn.v",
            ),
            (
                "bert.encoder.layer.0.attention.output.dense.base_layer.bias",
                "mpnet.encoder.layer.0.attention.attn.o.base_layer.bias",
            ),
            (
                "bert.encoder.layer.11.attention.output.LayerNorm.weight",
                "mpnet.encoder.layer.11.attention.LayerNorm.weight",
            ),
            (
                "bert.encoder.layer.3.intermediate.dense.weight",
                "mpnet.encoder.layer.3.intermediate.dense.weight",
            ),
            (
                "bert.encoder.layer.3.output.LayerNorm.bias",
                "mpnet.encoder.layer.3.output.LayerNorm.bias",
            ),
            ("bert.encoder.layer.2", "mpnet.encoder.layer.2"),
            (
                "bert.encoder.relative_attention_bias.weight",
                "mpnet.encoder.relative_attention_bias.weight",
            ),
            (
                "bert.embeddings.LayerNorm.bias",
                "mpnet.embeddings.LayerNorm.bias",
            ),
            ("bert.pooler.dense.weight", "classifier.dense.weight"),
            ("classifier.bias", "classifier.out_proj.bias"),
            ("lm_head.dense.weight", "lm_head.dense.weight"),
        ] {
            assert_eq!(Mpnet.hf_name(ours), theirs);
            assert_eq!(Mpnet.internal_name(theirs), ours);
        }
    }

    #[test]
    fn roberta_names_translate_both_ways() {
        for (ours, theirs) in [
            (
                "bert.encoder.layer.2.attention.self.query.weight",
                "roberta.encoder.layer.2.attention.self.query.weight",
            ),
            ("bert.embeddings", "roberta.embeddings"),
            ("bert.pooler.dense.bias", "classifier.dense.bias"),
            ("classifier.weight", "classifier.out_proj.weight"),
            ("classifier", "classifier.out_proj"),
            ("bertology.x", "bertology.x"),
        ] {
            assert_eq!(Roberta.hf_name(ours), theirs);
            assert_eq!(Roberta.internal_name(theirs), ours);
            assert_eq!(Bert.hf_name(ours), ours);
        }
    }

    #[test]
    fn electra_names_translate_both_ways() {
        for (ours, theirs) in [
            (
                "bert.encoder.layer.0.output.dense.weight",
                "electra.encoder.layer.0.output.dense.weight",
            ),
            (
                "bert.embeddings_project.bias",
                "electra.embeddings_project.bias",
            ),
            ("bert.embeddings.LayerNorm", "electra.embeddings.LayerNorm"),
            ("bert.pooler.dense.weight", "classifier.dense.weight"),
            ("classifier.bias", "classifier.out_proj.bias"),
            ("roberta.encoder", "roberta.encoder"),
        ] {
            assert_eq!(Electra.hf_name(ours), theirs);
            assert_eq!(Electra.internal_name(theirs), ours);
        }
    }

    #[test]
    fn distilbert_names_translate_both_ways() {
        for (ours, theirs) in [
            (
                "bert.encoder.layer.4.attention.self.query.lora_A.weight",
                "distilbert.transformer.layer.4.attention.q_lin.lora_A.weight",
            ),
            (
                "bert.encoder.layer.0.attention.output.dense.bias",
                "distilbert.transformer.layer.0.attention.out_lin.bias",
            ),
            (
                "bert.encoder.layer.0.attention.output.LayerNorm.weight",
                "distilbert.transformer.layer.0.sa_layer_norm.weight",
            ),
            (
                "bert.encoder.layer.11.intermediate.dense",
                "distilbert.transformer.layer.11.ffn.lin1",
            ),
            (
                "bert.encoder.layer.1.output.dense.base_layer.bias",
                "distilbert.transformer.layer.1.ffn.lin2.base_layer.bias",
            ),
            (
                "bert.encoder.layer.1.output.LayerNorm",
                "distilbert.transformer.layer.1.output_layer_norm",
            ),
            ("bert.encoder.layer.2", "distilbert.transformer.layer.2"),
            ("bert.encoder.layer", "distilbert.transformer.layer"),
            (
                "bert.embeddings.position_embeddings.weight",
                "distilbert.embeddings.position_embeddings.weight",
            ),
            ("bert.pooler.dense.weight", "pre_classifier.weight"),
            ("classifier.bias", "classifier.bias"),
            ("vocab_projector.weight", "vocab_projector.weight"),
        ] {
            assert_eq!(DistilBert.hf_name(ours), theirs);
            assert_eq!(DistilBert.internal_name(theirs), ours);
        }
        assert_eq!(DistilBert.hf_layer_module("intermediate.dense"), "ffn.lin1");
        assert_eq!(
            Mpnet.hf_layer_module("attention.output.dense"),
            "attention.attn.o"
        );
        assert_eq!(
            Roberta.hf_layer_module("attention.self.value"),
            "attention.self.value"
        );
    }
}

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

/// A family of BERT-shaped encoders (`config.json`'s `model_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncoderFamily {
    /// `bert`.
    Bert,
    /// `roberta` and `xlm-roberta` (transformers runs both through the same code).
    Roberta,
    /// `electra` (the discriminator's encoder; a generator's checkpoint holds one too).
    Electra,
}

/// The activation of the head's dense map (BERT's pooler): BERT's and RoBERTa's tanh,
/// ELECTRA's GELU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolerActivation {
    /// `tanh`.
    Tanh,
    /// The exact (erf) GELU.
    Gelu,
}

impl EncoderFamily {
    /// The family of a `model_type`, `None` for one spafit does not run.
    pub fn of_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "bert" => Some(EncoderFamily::Bert),
            "roberta" | "xlm-roberta" => Some(EncoderFamily::Roberta),
            "electra" => Some(EncoderFamily::Electra),
            _ => None,
        }
    }

    /// The family an `architectures` class belongs to (for configs without `model_type`).
    pub fn of_architecture(class: &str) -> Option<Self> {
        if class.starts_with("Bert") {
            Some(EncoderFamily::Bert)
        } else if class.starts_with("Roberta") || class.starts_with("XLMRoberta") {
            Some(EncoderFamily::Roberta)
        } else if class.starts_with("Electra") {
            Some(EncoderFamily::Electra)
        } else {
            None
        }
    }

    /// The transformers class of a sequence classifier of this family and `model_type`.
    pub fn sequence_classifier(self, model_type: Option<&str>) -> &'static str {
        match (self, model_type) {
            (EncoderFamily::Bert, _) => "BertForSequenceClassification",
            (EncoderFamily::Roberta, Some("xlm-roberta")) => "XLMRobertaForSequenceClassification",
            (EncoderFamily::Roberta, _) => "RobertaForSequenceClassification",
            (EncoderFamily::Electra, _) => "ElectraForSequenceClassification",
        }
    }

    /// The family's name in messages.
    pub fn display(self) -> &'static str {
        match self {
            EncoderFamily::Bert => "BERT",
            EncoderFamily::Roberta => "RoBERTa",
            EncoderFamily::Electra => "ELECTRA",
        }
    }

    /// The prefix of the encoder's tensors in a sequence classifier's file.
    pub fn prefix(self) -> &'static str {
        match self {
            EncoderFamily::Bert => "bert",
            EncoderFamily::Roberta => "roberta",
            EncoderFamily::Electra => "electra",
        }
    }

    /// Whether the head's dense map (BERT's pooler) belongs to the classification head, so
    /// that it trains whenever the head does (RoBERTa's and ELECTRA's `classifier.dense`;
    /// PEFT saves it with `classifier`).
    pub fn pooler_is_head(self) -> bool {
        self != EncoderFamily::Bert
    }

    /// The activation after the head's dense map (BERT's pooler).
    pub fn pooler_activation(self) -> PoolerActivation {
        match self {
            EncoderFamily::Bert | EncoderFamily::Roberta => PoolerActivation::Tanh,
            EncoderFamily::Electra => PoolerActivation::Gelu,
        }
    }

    /// The name transformers gives the tensor or module spafit calls `name`.
    pub fn hf_name(self, name: &str) -> String {
        if self == EncoderFamily::Bert {
            return name.to_string();
        }
        if let Some(rest) = under(name, "bert.pooler.dense") {
            return format!("classifier.dense{rest}");
        }
        if let Some(rest) = under(name, "classifier") {
            return format!("classifier.out_proj{rest}");
        }
        match under(name, "bert") {
            Some(rest) => format!("{}{rest}", self.prefix()),
            None => name.to_string(),
        }
    }

    /// The name spafit gives the tensor or module transformers calls `name`
    /// ([`EncoderFamily::hf_name`]'s inverse).
    pub fn internal_name(self, name: &str) -> String {
        if self == EncoderFamily::Bert {
            return name.to_string();
        }
        if let Some(rest) = under(name, "classifier.dense") {
            return format!("bert.pooler.dense{rest}");
        }
        if let Some(rest) = under(name, "classifier.out_proj") {
            return format!("classifier{rest}");
        }
        match under(name, self.prefix()) {
            Some(rest) => format!("bert{rest}"),
            None => name.to_string(),
        }
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
    use super::EncoderFamily::{Bert, Electra, Roberta};

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
}

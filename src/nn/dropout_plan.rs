use crate::backend::Dropout;
use crate::rng;

/// Dropout probabilities of a forward pass and a fresh seed for every call site.
///
/// Seeds derive from `(seed, call index)`, so the same plan replayed gives the same masks:
/// a training step is reproducible, and a finite-difference check can rerun it exactly.
#[derive(Clone, Debug)]
pub struct DropoutPlan {
    /// On hidden states (BERT's `hidden_dropout_prob`).
    pub hidden: f64,
    /// On attention probabilities (`attention_probs_dropout_prob`).
    pub attention: f64,
    /// On LoRA inputs (PEFT's `lora_dropout`).
    pub lora: f64,
    /// On the pooled output before the classifier (BERT's `classifier_dropout`, which
    /// defaults to `hidden_dropout_prob`).
    pub classifier: f64,
    /// On the head's input before its dense map, where the family drops it out there
    /// ([`crate::checkpoint::BertConfig::pooler_input_dropout_or`]): the classifier's unless
    /// set apart (DeBERTa-v2's `pooler_dropout`).
    pub pooler_input: Option<f64>,
    seed: u64,
    calls: u64,
}

impl DropoutPlan {
    /// Evaluation: no dropout anywhere.
    pub fn eval() -> Self {
        DropoutPlan::train(0.0, 0.0, 0.0, 0)
    }

    /// Training with the given probabilities and step seed; the classifier's dropout is
    /// the hidden one (see [`DropoutPlan::with_classifier`]).
    pub fn train(hidden: f64, attention: f64, lora: f64, seed: u64) -> Self {
        DropoutPlan {
            hidden,
            attention,
            lora,
            classifier: hidden,
            pooler_input: None,
            seed,
            calls: 0,
        }
    }

    /// The same plan with `p` on the pooled output before the classifier.
    pub fn with_classifier(self, p: f64) -> Self {
        DropoutPlan {
            classifier: p,
            ..self
        }
    }

    /// The same plan with `p` on the head's input before its dense map.
    pub fn with_pooler_input(self, p: f64) -> Self {
        DropoutPlan {
            pooler_input: Some(p),
            ..self
        }
    }

    fn draw(&mut self, p: f64) -> Option<Dropout> {
        if p == 0.0 {
            return None;
        }
        self.calls += 1;
        Some(Dropout {
            p,
            seed: rng::mix(self.seed, self.calls),
        })
    }

    /// The next hidden-state dropout, `None` when off.
    pub fn next_hidden(&mut self) -> Option<Dropout> {
        self.draw(self.hidden)
    }

    /// The next attention-probability dropout.
    pub fn next_attention(&mut self) -> Option<Dropout> {
        self.draw(self.attention)
    }

    /// The classifier's dropout on the pooled output.
    pub fn next_classifier(&mut self) -> Option<Dropout> {
        self.draw(self.classifier)
    }

    /// The dropout on the head's input before its dense map.
    pub fn next_pooler_input(&mut self) -> Option<Dropout> {
        self.draw(self.pooler_input.unwrap_or(self.classifier))
    }

    /// The next LoRA-input dropout.
    pub fn next_lora(&mut self) -> Option<Dropout> {
        self.draw(self.lora)
    }
}

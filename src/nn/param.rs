use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::tensor::Tensor;

/// A named tensor of the model and whether it trains.
#[derive(Clone, Debug)]
pub struct Param<B: Backend> {
    /// Hugging Face / PEFT name, e.g. `encoder.layer.4.attention.self.query.lora_A.weight`.
    pub name: String,
    /// The current value.
    pub value: Tensor<B>,
    /// Whether the optimizer updates it (and so whether the tape tracks it).
    pub trainable: bool,
}

/// Names of the trainable parameters among `params`, sorted.
pub fn trainable_names<'a, B: Backend>(
    params: impl IntoIterator<Item = &'a Param<B>>,
) -> Vec<String> {
    let mut names: Vec<String> = params
        .into_iter()
        .filter(|p| p.trainable)
        .map(|p| p.name.clone())
        .collect();
    names.sort();
    names
}

impl<B: Backend> Param<B> {
    /// A parameter.
    pub fn new(name: impl Into<String>, value: Tensor<B>, trainable: bool) -> Self {
        Param {
            name: name.into(),
            value,
            trainable,
        }
    }

    /// The parameter on `tape`: tracked when trainable, a constant otherwise.
    pub fn var(&self, tape: &mut Tape<B>) -> Var<B> {
        tape.param(&self.name, &self.value, self.trainable)
    }
}

use super::Param;
use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::Tensor;

/// LayerNorm with scale `prefix.weight` and shift `prefix.bias`.
#[derive(Clone, Debug)]
pub struct LayerNorm<B: Backend> {
    /// γ.
    pub weight: Param<B>,
    /// β.
    pub bias: Param<B>,
    /// Added to the variance.
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// A frozen LayerNorm under `prefix`.
    pub fn new(prefix: &str, weight: Tensor<B>, bias: Tensor<B>, eps: f64) -> Self {
        LayerNorm {
            weight: Param::new(format!("{prefix}.weight"), weight, false),
            bias: Param::new(format!("{prefix}.bias"), bias, false),
            eps,
        }
    }

    /// The normalization on the tape.
    pub fn forward(&self, tape: &mut Tape<B>, x: &Var<B>) -> Result<Var<B>> {
        let (g, b) = (self.weight.var(tape), self.bias.var(tape));
        tape.layernorm(x, &g, &b, self.eps)
    }
}

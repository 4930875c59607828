//! Outputs a backward recomputes rather than keep from forward: a GELU's or a LayerNorm's,
//! where a linear map's weight gradient reads it and the op's own node keeps what it was
//! computed from anyway ([`Backend::recomputes_linear_inputs`]).

use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::Tensor;

/// How to compute an op's output again from the forward's own inputs with the forward's
/// arithmetic (GELU's own kernel; LayerNorm's [`Backend::layernorm_apply`]): the same bits.
#[derive(Clone)]
pub(crate) enum Recompute<B: Backend> {
    /// `gelu(pre)`.
    Gelu { pre: Tensor<B> },
    /// `(x − mean) · rstd · γ + β` ([`Backend::layernorm_apply`]).
    LayerNorm {
        x: Tensor<B>,
        mean: Tensor<B>,
        rstd: Tensor<B>,
        gamma: Tensor<B>,
        beta: Tensor<B>,
    },
}

impl<B: Backend> Recompute<B> {
    /// The output.
    pub(crate) fn run(&self, backend: &B) -> Result<Tensor<B>> {
        match self {
            Recompute::Gelu { pre } => backend.gelu_forward(pre),
            Recompute::LayerNorm {
                x,
                mean,
                rstd,
                gamma,
                beta,
            } => backend.layernorm_apply(x, mean, rstd, gamma, beta),
        }
    }

    /// The activations it reads, which the op's own node keeps (so they count once).
    /// LayerNorm's γ and β are parameters, not activations.
    pub(crate) fn activations(&self) -> Vec<&Tensor<B>> {
        match self {
            Recompute::Gelu { pre } => vec![pre],
            Recompute::LayerNorm { x, mean, rstd, .. } => vec![x, mean, rstd],
        }
    }
}

//! Outputs a backward recomputes rather than keep from forward: a GELU's or a LayerNorm's,
//! where a linear map's weight gradient reads it and the op's own node keeps what it was
//! computed from anyway ([`Backend::recomputes_linear_inputs`]).

use std::sync::{Arc, Mutex, PoisonError};

use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::Tensor;

/// How to compute an op's output again from the forward's own inputs with the forward's
/// arithmetic (GELU's own kernel; LayerNorm's [`Backend::layernorm_apply`]): the same bits.
/// Clones share what the first of them computes: the query, key and value maps read one
/// LayerNorm output, recomputed once for the three in backward, where their nodes run one
/// after another and drop it with the last.
#[derive(Clone)]
pub(crate) struct Recompute<B: Backend> {
    recipe: Recipe<B>,
    done: Arc<Mutex<Computed<B>>>,
}

/// The outputs computed so far, each with whether it is the copy rounded for the products.
type Computed<B> = Vec<(bool, Tensor<B>)>;

#[derive(Clone)]
enum Recipe<B: Backend> {
    /// `gelu(pre)`.
    Gelu { pre: Tensor<B> },
    /// `(x − mean) · rstd · γ + β`.
    LayerNorm {
        x: Tensor<B>,
        mean: Tensor<B>,
        rstd: Tensor<B>,
        gamma: Tensor<B>,
        beta: Tensor<B>,
    },
}

impl<B: Backend> Recompute<B> {
    /// `gelu(pre)`.
    pub(crate) fn gelu(pre: Tensor<B>) -> Self {
        Self::of(Recipe::Gelu { pre })
    }

    /// A LayerNorm's output from its input, the forward's statistics and its parameters.
    pub(crate) fn layer_norm(
        x: Tensor<B>,
        mean: Tensor<B>,
        rstd: Tensor<B>,
        gamma: Tensor<B>,
        beta: Tensor<B>,
    ) -> Self {
        Self::of(Recipe::LayerNorm {
            x,
            mean,
            rstd,
            gamma,
            beta,
        })
    }

    fn of(recipe: Recipe<B>) -> Self {
        Recompute {
            recipe,
            done: Arc::default(),
        }
    }

    /// The output, or with `rounded` its copy rounded for the products where the backend
    /// makes one (where it does not, the products round the output themselves: the same
    /// bits).
    pub(crate) fn value(&self, backend: &B, rounded: bool) -> Result<Tensor<B>> {
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, t)) = done.iter().find(|(r, _)| *r == rounded) {
            return Ok(t.clone());
        }
        let t = match &self.recipe {
            Recipe::Gelu { pre } if rounded => backend.gelu_forward_for_products(pre)?,
            Recipe::Gelu { pre } => backend.gelu_forward(pre)?,
            Recipe::LayerNorm {
                x,
                mean,
                rstd,
                gamma,
                beta,
            } if rounded => backend.layernorm_apply_for_products(x, mean, rstd, gamma, beta)?,
            Recipe::LayerNorm {
                x,
                mean,
                rstd,
                gamma,
                beta,
            } => backend.layernorm_apply(x, mean, rstd, gamma, beta)?,
        };
        done.push((rounded, t.clone()));
        Ok(t)
    }

    /// The activations it reads, which the op's own node keeps (so they count once).
    /// LayerNorm's γ and β are parameters, not activations.
    pub(crate) fn activations(&self) -> Vec<&Tensor<B>> {
        match &self.recipe {
            Recipe::Gelu { pre } => vec![pre],
            Recipe::LayerNorm { x, mean, rstd, .. } => vec![x, mean, rstd],
        }
    }
}

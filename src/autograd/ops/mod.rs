//! The differentiable ops of the tape, one file each: the forward call and the node that
//! knows which activations its needed gradients use.

mod activation;
mod add;
mod attention;
mod dora;
mod dropout;
mod embedding;
mod layernorm;
mod linear;
mod loss;
mod recompute;

pub use linear::LoraVars;
pub(crate) use recompute::Recompute;

use super::Var;
use crate::backend::Backend;

/// The tape identity of an optional input slot.
fn id_of<B: Backend>(v: Option<&Var<B>>) -> Option<usize> {
    v.and_then(|v| v.id)
}

use super::super::{BackwardOp, Tape, Var};
use crate::backend::{Backend, Dropout};
use crate::error::Result;
use crate::tensor::Tensor;

/// Keeps the seed, not the mask: backward redraws the same mask.
struct DropoutNode {
    dropout: Dropout,
}

impl<B: Backend> BackwardOp<B> for DropoutNode {
    fn backward(
        &self,
        backend: &B,
        d_out: &Tensor<B>,
        _: &[bool],
    ) -> Result<Vec<Option<Tensor<B>>>> {
        Ok(vec![Some(backend.dropout(d_out, self.dropout)?)])
    }

    fn saved_activations(&self) -> Vec<&Tensor<B>> {
        vec![]
    }
}

impl<B: Backend> Tape<B> {
    /// Dropout; `None` or `p = 0` (evaluation) is the identity and records nothing.
    pub fn dropout(&mut self, x: &Var<B>, dropout: Option<Dropout>) -> Result<Var<B>> {
        let d = match dropout {
            Some(d) if d.p != 0.0 => d,
            _ => return Ok(x.clone()),
        };
        let y = self.backend.dropout(&x.value, d)?;
        Ok(self.record(y, vec![x.id], |_| Box::new(DropoutNode { dropout: d })))
    }
}

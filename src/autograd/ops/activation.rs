use super::super::{BackwardOp, Tape, Var};
use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::Tensor;

struct GeluNode<B: Backend> {
    x: Tensor<B>,
}

impl<B: Backend> BackwardOp<B> for GeluNode<B> {
    fn backward(
        &self,
        backend: &B,
        d_out: &Tensor<B>,
        _: &[bool],
    ) -> Result<Vec<Option<Tensor<B>>>> {
        Ok(vec![Some(backend.gelu_backward(d_out, &self.x)?)])
    }

    fn saved_activations(&self) -> Vec<&Tensor<B>> {
        vec![&self.x]
    }
}

/// tanh's derivative needs only its output, so that is what is kept.
struct TanhNode<B: Backend> {
    y: Tensor<B>,
}

impl<B: Backend> BackwardOp<B> for TanhNode<B> {
    fn backward(
        &self,
        backend: &B,
        d_out: &Tensor<B>,
        _: &[bool],
    ) -> Result<Vec<Option<Tensor<B>>>> {
        Ok(vec![Some(backend.tanh_backward(d_out, &self.y)?)])
    }

    fn saved_activations(&self) -> Vec<&Tensor<B>> {
        vec![&self.y]
    }
}

/// ReLU's derivative needs only its output's sign, so the output is kept.
struct ReluNode<B: Backend> {
    y: Tensor<B>,
}

impl<B: Backend> BackwardOp<B> for ReluNode<B> {
    fn backward(
        &self,
        backend: &B,
        d_out: &Tensor<B>,
        _: &[bool],
    ) -> Result<Vec<Option<Tensor<B>>>> {
        Ok(vec![Some(backend.relu_backward(d_out, &self.y)?)])
    }

    fn saved_activations(&self) -> Vec<&Tensor<B>> {
        vec![&self.y]
    }
}

impl<B: Backend> Tape<B> {
    /// GELU (erf form).
    pub fn gelu(&mut self, x: &Var<B>) -> Result<Var<B>> {
        let y = self.backend.gelu_forward(&x.value)?;
        Ok(self.record(y, vec![x.id], |_| Box::new(GeluNode { x: x.value.clone() })))
    }

    /// Hyperbolic tangent (BERT's pooler).
    pub fn tanh(&mut self, x: &Var<B>) -> Result<Var<B>> {
        let y = self.backend.tanh_forward(&x.value)?;
        let kept = y.clone();
        Ok(self.record(y, vec![x.id], |_| Box::new(TanhNode { y: kept })))
    }

    /// `max(x, 0)` (DistilBERT's head).
    pub fn relu(&mut self, x: &Var<B>) -> Result<Var<B>> {
        let y = self.backend.relu_forward(&x.value)?;
        let kept = y.clone();
        Ok(self.record(y, vec![x.id], |_| Box::new(ReluNode { y: kept })))
    }
}

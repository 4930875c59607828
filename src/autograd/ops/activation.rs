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

/// A backend's backward from the forward output: `(dy, y) → dx`.
type FromOutputBackward<B> = fn(&B, &Tensor<B>, &Tensor<B>) -> Result<Tensor<B>>;

/// tanh's and ReLU's derivatives need only their output, so that is what is kept, with the
/// backend's backward of the one it is.
struct FromOutputNode<B: Backend> {
    y: Tensor<B>,
    backward: FromOutputBackward<B>,
}

impl<B: Backend> BackwardOp<B> for FromOutputNode<B> {
    fn backward(
        &self,
        backend: &B,
        d_out: &Tensor<B>,
        _: &[bool],
    ) -> Result<Vec<Option<Tensor<B>>>> {
        Ok(vec![Some((self.backward)(backend, d_out, &self.y)?)])
    }

    fn saved_activations(&self) -> Vec<&Tensor<B>> {
        vec![&self.y]
    }
}

impl<B: Backend> Tape<B> {
    /// GELU (erf form).
    pub fn gelu(&mut self, x: &Var<B>) -> Result<Var<B>> {
        let y = self.backend.gelu_forward(&x.value)?;
        let y = self.record(y, vec![x.id], |_| Box::new(GeluNode { x: x.value.clone() }));
        // Recorded, its node keeps x: the map that reads y next may recompute y from it.
        if y.id.is_some() && self.backend.recomputes_linear_inputs() {
            let pre = x.value.clone();
            self.recomputable = Some((y.value.clone(), super::Recompute::gelu(pre)));
        }
        Ok(y)
    }

    /// [`Tape::gelu`] of a variable the caller gives up. Where nothing is recorded (`x` needs
    /// no gradient: inference, a frozen layer) the output may be written over `x`'s buffer
    /// ([`Backend::gelu_forward_owned`]); else as `gelu`.
    pub fn gelu_owned(&mut self, x: Var<B>) -> Result<Var<B>> {
        if x.id.is_some() {
            return self.gelu(&x);
        }
        let y = self.backend.gelu_forward_owned(x.value)?;
        // As `record` does for any op, recorded or not.
        self.forget_kept_for_next_op();
        Ok(self.constant(y))
    }

    /// Hyperbolic tangent (BERT's pooler).
    pub fn tanh(&mut self, x: &Var<B>) -> Result<Var<B>> {
        self.differentiated_by_output(x, B::tanh_forward, B::tanh_backward)
    }

    /// `max(x, 0)` (DistilBERT's head).
    pub fn relu(&mut self, x: &Var<B>) -> Result<Var<B>> {
        self.differentiated_by_output(x, B::relu_forward, B::relu_backward)
    }

    /// `forward(x)`, differentiated by `backward(dy, y)` from its output.
    fn differentiated_by_output(
        &mut self,
        x: &Var<B>,
        forward: fn(&B, &Tensor<B>) -> Result<Tensor<B>>,
        backward: FromOutputBackward<B>,
    ) -> Result<Var<B>> {
        let y = forward(&self.backend, &x.value)?;
        let kept = y.clone();
        Ok(self.record(y, vec![x.id], |_| {
            Box::new(FromOutputNode { y: kept, backward })
        }))
    }
}

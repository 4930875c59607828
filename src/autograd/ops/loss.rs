use super::super::{BackwardOp, Tape, Var};
use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::Tensor;

/// A backend's loss forward: `(prediction, target) → [1]`.
type LossForward<B> = fn(&B, &Tensor<B>, &Tensor<B>) -> Result<Tensor<B>>;

/// A backend's loss backward: `(d_loss, prediction, target) → d_prediction`.
type LossBackward<B> = fn(&B, &Tensor<B>, &Tensor<B>, &Tensor<B>) -> Result<Tensor<B>>;

/// Every loss differentiates its prediction from the prediction and the target alone, so
/// those are what is kept, with the backend's backward of the loss it is.
struct LossNode<B: Backend> {
    prediction: Tensor<B>,
    target: Tensor<B>,
    backward: LossBackward<B>,
}

impl<B: Backend> BackwardOp<B> for LossNode<B> {
    fn backward(
        &self,
        backend: &B,
        d_out: &Tensor<B>,
        _: &[bool],
    ) -> Result<Vec<Option<Tensor<B>>>> {
        let g = (self.backward)(backend, d_out, &self.prediction, &self.target)?;
        Ok(vec![Some(g)])
    }

    fn saved_activations(&self) -> Vec<&Tensor<B>> {
        vec![&self.prediction, &self.target]
    }
}

impl<B: Backend> Tape<B> {
    /// Mean softmax cross-entropy of `logits` `[n, classes]` against `U32` `labels` `[n]`.
    pub fn cross_entropy(&mut self, logits: &Var<B>, labels: &Tensor<B>) -> Result<Var<B>> {
        self.loss(
            logits,
            labels,
            B::cross_entropy_forward,
            B::cross_entropy_backward,
        )
    }

    /// Mean binary cross-entropy of `sigmoid(logits)` `[n, classes]` against float `targets`
    /// of the same shape (multi-label classification), over every element.
    pub fn bce_with_logits(&mut self, logits: &Var<B>, targets: &Tensor<B>) -> Result<Var<B>> {
        self.loss(
            logits,
            targets,
            B::bce_with_logits_forward,
            B::bce_with_logits_backward,
        )
    }

    /// Mean squared error of `pred` against float `target` (regression, one label).
    pub fn mse(&mut self, pred: &Var<B>, target: &Tensor<B>) -> Result<Var<B>> {
        self.loss(pred, target, B::mse_forward, B::mse_backward)
    }

    fn loss(
        &mut self,
        prediction: &Var<B>,
        target: &Tensor<B>,
        forward: LossForward<B>,
        backward: LossBackward<B>,
    ) -> Result<Var<B>> {
        let loss = forward(&self.backend, &prediction.value, target)?;
        Ok(self.record(loss, vec![prediction.id], |_| {
            Box::new(LossNode {
                prediction: prediction.value.clone(),
                target: target.clone(),
                backward,
            })
        }))
    }
}

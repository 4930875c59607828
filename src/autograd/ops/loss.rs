use super::super::{BackwardOp, Tape, Var};
use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::Tensor;

struct CrossEntropyNode<B: Backend> {
    logits: Tensor<B>,
    labels: Tensor<B>,
}

impl<B: Backend> BackwardOp<B> for CrossEntropyNode<B> {
    fn backward(
        &self,
        backend: &B,
        d_out: &Tensor<B>,
        _: &[bool],
    ) -> Result<Vec<Option<Tensor<B>>>> {
        let g = backend.cross_entropy_backward(d_out, &self.logits, &self.labels)?;
        Ok(vec![Some(g)])
    }

    fn saved_activations(&self) -> Vec<&Tensor<B>> {
        vec![&self.logits, &self.labels]
    }
}

struct MseNode<B: Backend> {
    pred: Tensor<B>,
    target: Tensor<B>,
}

impl<B: Backend> BackwardOp<B> for MseNode<B> {
    fn backward(
        &self,
        backend: &B,
        d_out: &Tensor<B>,
        _: &[bool],
    ) -> Result<Vec<Option<Tensor<B>>>> {
        Ok(vec![Some(backend.mse_backward(
            d_out,
            &self.pred,
            &self.target,
        )?)])
    }

    fn saved_activations(&self) -> Vec<&Tensor<B>> {
        vec![&self.pred, &self.target]
    }
}

struct BceWithLogitsNode<B: Backend> {
    logits: Tensor<B>,
    targets: Tensor<B>,
}

impl<B: Backend> BackwardOp<B> for BceWithLogitsNode<B> {
    fn backward(
        &self,
        backend: &B,
        d_out: &Tensor<B>,
        _: &[bool],
    ) -> Result<Vec<Option<Tensor<B>>>> {
        let g = backend.bce_with_logits_backward(d_out, &self.logits, &self.targets)?;
        Ok(vec![Some(g)])
    }

    fn saved_activations(&self) -> Vec<&Tensor<B>> {
        vec![&self.logits, &self.targets]
    }
}

impl<B: Backend> Tape<B> {
    /// Mean softmax cross-entropy of `logits` `[n, classes]` against `U32` `labels` `[n]`.
    pub fn cross_entropy(&mut self, logits: &Var<B>, labels: &Tensor<B>) -> Result<Var<B>> {
        let loss = self.backend.cross_entropy_forward(&logits.value, labels)?;
        Ok(self.record(loss, vec![logits.id], |_| {
            Box::new(CrossEntropyNode {
                logits: logits.value.clone(),
                labels: labels.clone(),
            })
        }))
    }

    /// Mean binary cross-entropy of `sigmoid(logits)` `[n, classes]` against float `targets`
    /// of the same shape (multi-label classification), over every element.
    pub fn bce_with_logits(&mut self, logits: &Var<B>, targets: &Tensor<B>) -> Result<Var<B>> {
        let loss = self
            .backend
            .bce_with_logits_forward(&logits.value, targets)?;
        Ok(self.record(loss, vec![logits.id], |_| {
            Box::new(BceWithLogitsNode {
                logits: logits.value.clone(),
                targets: targets.clone(),
            })
        }))
    }

    /// Mean squared error of `pred` against float `target` (regression, one label).
    pub fn mse(&mut self, pred: &Var<B>, target: &Tensor<B>) -> Result<Var<B>> {
        let loss = self.backend.mse_forward(&pred.value, target)?;
        Ok(self.record(loss, vec![pred.id], |_| {
            Box::new(MseNode {
                pred: pred.value.clone(),
                target: target.clone(),
            })
        }))
    }
}

use std::collections::BTreeMap;

use crate::autograd::Gradients;
use crate::backend::{AdamWStep, Backend};
use crate::error::Result;
use crate::nn::Param;
use crate::tensor::Tensor;

/// AdamW over named parameters with the moments kept per name. Biases and LayerNorm tensors
/// get no weight decay (the transformers / BERT convention).
pub struct AdamW<B: Backend> {
    /// `β₁`.
    pub beta1: f64,
    /// `β₂`.
    pub beta2: f64,
    /// `ε`.
    pub eps: f64,
    /// Decoupled weight decay for weight matrices.
    pub weight_decay: f64,
    /// Steps taken.
    pub step: u64,
    moments: BTreeMap<String, (Tensor<B>, Tensor<B>)>,
}

/// Whether a parameter is exempt from weight decay.
pub fn no_decay(name: &str) -> bool {
    name.ends_with(".bias") || name.contains("LayerNorm")
}

impl<B: Backend> AdamW<B> {
    /// AdamW with PyTorch's defaults for betas and eps.
    pub fn new(weight_decay: f64) -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// One update of every trainable parameter that has a gradient.
    pub fn update(
        &mut self,
        backend: &B,
        params: Vec<&mut Param<B>>,
        grads: &Gradients<B>,
        lr: f64,
    ) -> Result<()> {
        self.step += 1;
        for p in params.into_iter().filter(|p| p.trainable) {
            let Some(g) = grads.get(&p.name) else {
                continue;
            };
            let (m, v) = match self.moments.get_mut(&p.name) {
                Some(mv) => mv,
                None => {
                    let zeros = backend.zeros(p.value.shape().clone())?;
                    self.moments
                        .entry(p.name.clone())
                        .or_insert((zeros.clone(), backend.zeros(p.value.shape().clone())?))
                }
            };
            let step = AdamWStep {
                lr,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: if no_decay(&p.name) {
                    0.0
                } else {
                    self.weight_decay
                },
                step: self.step,
            };
            backend.adamw_step(&mut p.value, g, m, v, &step)?;
        }
        Ok(())
    }

    /// The moments, by parameter name (for checkpoints).
    pub fn moments(&self) -> &BTreeMap<String, (Tensor<B>, Tensor<B>)> {
        &self.moments
    }

    /// Restores moments saved by [`AdamW::moments`].
    pub fn set_moments(&mut self, step: u64, moments: BTreeMap<String, (Tensor<B>, Tensor<B>)>) {
        self.step = step;
        self.moments = moments;
    }
}

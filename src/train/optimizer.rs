use std::collections::{BTreeMap, HashMap};

use crate::autograd::Gradients;
use crate::backend::{shapes, AdamWStep, AdamWUpdate, Backend};
use crate::error::{Error, Result};
use crate::nn::Param;
use crate::tensor::Tensor;

/// AdamW over named parameters with the moments kept per name. Biases and LayerNorm tensors
/// get no weight decay (the transformers / BERT convention).
#[derive(Debug)]
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

/// Whether a parameter is exempt from weight decay: as transformers' Trainer decides
/// (`get_decay_parameter_names`), a name that holds `bias` (MPNet's
/// `relative_attention_bias.weight` too) or a LayerNorm's.
pub fn no_decay(name: &str) -> bool {
    name.contains("bias") || name.contains("LayerNorm")
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

    /// One update of every trainable parameter that has a gradient. Settings, shapes, the
    /// moments' dtypes and the memory for new moments are checked and taken for every
    /// parameter before any is changed, and so is the device memory for a parameter's own
    /// copy where another tensor shares its buffer (a clone of the model kept as the best
    /// weights): such a refusal, out of device memory included, leaves the parameters'
    /// values, the moments and the step count as they were. A gradient dtype the backend
    /// does not take for its parameter (the CPU wants the parameter's own; CUDA also takes
    /// bf16 for an f32 master) is refused by the backend before it updates any parameter, as
    /// well.
    pub fn update(
        &mut self,
        backend: &B,
        params: Vec<&mut Param<B>>,
        grads: &Gradients<B>,
        lr: f64,
    ) -> Result<()> {
        // `step` is public: a count set by hand to the last one cannot go on.
        let step_number = self.step.checked_add(1).ok_or_else(|| {
            Error::invalid(
                "adamw",
                "the step count is at its largest (u64::MAX): no step follows",
            )
        })?;
        shapes::adamw(&AdamWStep {
            lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            step: step_number,
        })?;
        let trainable: Vec<&mut Param<B>> = params.into_iter().filter(|p| p.trainable).collect();
        // A gradient no trainable parameter takes is a mistake (a misspelt name, the
        // gradients of another model), not something to skip.
        if let Some((name, _)) = grads
            .iter()
            .find(|(name, _)| !trainable.iter().any(|p| p.name == *name))
        {
            return Err(Error::invalid(
                "adamw",
                format!("a gradient for `{name}`, which is no trainable parameter given"),
            ));
        }
        let updates: Vec<(&mut Param<B>, &Tensor<B>)> = trainable
            .into_iter()
            .filter_map(|p| grads.get(&p.name).map(|g| (p, g)))
            .collect();
        for (p, g) in &updates {
            // A gradient may be narrower than its f32 master (bf16 on CUDA); its shape and
            // the moments' shape and dtype must be the parameter's.
            let mut operands = vec![("gradient", *g, false)];
            if let Some((m, v)) = self.moments.get(&p.name) {
                operands.extend([("first moment", m, true), ("second moment", v, true)]);
            }
            for (what, t, same_dtype) in operands {
                if t.shape() != p.value.shape() || (same_dtype && t.dtype() != p.value.dtype()) {
                    return Err(Error::shape(
                        "adamw",
                        format!(
                            "the {what} of `{}` is {:?} {:?}, the parameter {:?} {:?}",
                            p.name,
                            t.dtype(),
                            t.dims(),
                            p.value.dtype(),
                            p.value.dims()
                        ),
                    ));
                }
            }
        }
        // Out of memory for a new moment refuses the step before any parameter moved; the
        // new moments join the optimizer only once the step is done, so a step that fails
        // leaves the optimizer as it was.
        let mut fresh: BTreeMap<String, (Tensor<B>, Tensor<B>)> = BTreeMap::new();
        for (p, _) in &updates {
            if !self.moments.contains_key(&p.name) {
                let m = backend.zeros(p.value.shape().clone())?;
                let v = backend.zeros(p.value.shape().clone())?;
                fresh.insert(p.name.clone(), (m, v));
            }
        }
        let mut moments: HashMap<&str, &mut (Tensor<B>, Tensor<B>)> = self
            .moments
            .iter_mut()
            .chain(fresh.iter_mut())
            .map(|(name, mv)| (name.as_str(), mv))
            .collect();
        let mut batch = Vec::with_capacity(updates.len());
        for (p, g) in updates {
            let Some((m, v)) = moments.remove(p.name.as_str()) else {
                return Err(Error::invalid(
                    "adamw",
                    format!(
                        "no moments for `{}` (or two parameters of that name)",
                        p.name
                    ),
                ));
            };
            let weight_decay = if no_decay(&p.name) {
                0.0
            } else {
                self.weight_decay
            };
            batch.push(AdamWUpdate {
                param: &mut p.value,
                grad: g,
                m,
                v,
                step: AdamWStep {
                    lr,
                    beta1: self.beta1,
                    beta2: self.beta2,
                    eps: self.eps,
                    weight_decay,
                    step: step_number,
                },
            });
        }
        backend.adamw_step_each(&mut batch)?;
        drop(batch);
        self.moments.extend(fresh);
        self.step = step_number;
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

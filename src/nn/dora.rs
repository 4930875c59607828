//! DoRA (weight-decomposed low-rank adaptation, PEFT's `use_dora`): each output row of the
//! adapted weight `W + s·B·A` rescaled to a trained magnitude,
//! `y = m ⊙ (x·(W + s·B·A)ᵀ) / ‖W + s·B·A‖ + b`, the row norms held constant in backward,
//! as PEFT detaches them (the DoRA paper's §4.3: no gradient through the norm, which saves
//! keeping the adapted weight).

use std::sync::{Arc, Mutex};

use super::{DropoutPlan, Linear, LoraAdapter, Param};
use crate::autograd::{LoraVars, Tape, Var};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `‖W_o‖²` of a weight's rows, with the weight (held, so its storage identity stays its own).
type KeptRowNorms<B> = (Tensor<B>, Vec<f64>);

/// The trainable magnitudes of a DoRA adapter, one per output row.
#[derive(Clone, Debug)]
pub struct DoraMagnitude<B: Backend> {
    /// `…lora_magnitude_vector` `[out]`.
    pub magnitude: Param<B>,
    /// `‖W_o‖²` of the base weight's rows and the weight they were computed from: the frozen
    /// base is read once, not at every step (kept while that weight is the layer's).
    base_row_norms: Arc<Mutex<Option<KeptRowNorms<B>>>>,
    /// `1 / ‖W + s·B·A‖` per row, where held (see [`Linear::hold_dora_norms`]).
    held_inverse_norms: Option<Vec<f64>>,
}

impl<B: Backend> Linear<B> {
    /// Makes the layer's LoRA adapter a DoRA adapter with the given magnitudes `[out]`
    /// (trainable, named as PEFT names them); see [`Linear::initialise_dora_magnitude`] for
    /// PEFT's starting values.
    pub fn attach_dora(&mut self, magnitude: Tensor<B>) -> Result<()> {
        let (out, _) = self.out_in();
        let prefix = self.prefix.clone();
        let Some(lora) = &mut self.lora else {
            return Err(Error::invalid(
                "dora",
                format!("`{prefix}` has no LoRA adapter for DoRA's magnitudes to scale"),
            ));
        };
        if magnitude.dims() != [out] {
            return Err(Error::shape(
                "dora",
                format!(
                    "`{prefix}.lora_magnitude_vector` is {} but must be [{out}], one per output row",
                    magnitude.shape()
                ),
            ));
        }
        lora.dora = Some(DoraMagnitude {
            magnitude: Param::new(format!("{prefix}.lora_magnitude_vector"), magnitude, true),
            base_row_norms: Arc::default(),
            held_inverse_norms: None,
        });
        Ok(())
    }

    /// Computes the adapted weight's row norms now and scales with them, not with the
    /// norms of the current `A` and `B`, until [`Linear::release_dora_norms`]: the function
    /// whose gradient the tape takes (the norms detached, as PEFT's), for finite differences
    /// to check it. A layer without DoRA is left as it is.
    pub fn hold_dora_norms(&mut self, backend: &B) -> Result<()> {
        if self.dora().is_none() {
            return Ok(());
        }
        let held = self.dora_inverse_norms(backend)?;
        if let Some(dora) = self.lora.as_mut().and_then(|l| l.dora.as_mut()) {
            dora.held_inverse_norms = Some(held);
        }
        Ok(())
    }

    /// Scales with the current adapter's norms again (see [`Linear::hold_dora_norms`]).
    pub fn release_dora_norms(&mut self) {
        if let Some(dora) = self.lora.as_mut().and_then(|l| l.dora.as_mut()) {
            dora.held_inverse_norms = None;
        }
    }

    /// Sets the DoRA magnitudes to the norms of the adapted weight's rows, as PEFT
    /// initialises them: the layer then computes what its LoRA adapter alone would (the
    /// base's output, with `B` zero). A layer without DoRA is left as it is.
    pub fn initialise_dora_magnitude(&mut self, backend: &B) -> Result<()> {
        if self.dora().is_none() {
            return Ok(());
        }
        let norms: Vec<f64> = self
            .dora_inverse_norms(backend)?
            .iter()
            .map(|inv| 1.0 / inv)
            .collect();
        let Some(dora) = self.lora.as_mut().and_then(|l| l.dora.as_mut()) else {
            return Ok(());
        };
        let m = &mut dora.magnitude.value;
        *m = backend.tensor_from_f64_as(m.shape().clone(), &norms, m.dtype())?;
        Ok(())
    }

    /// The DoRA magnitudes, where the adapter is a DoRA adapter.
    pub fn dora(&self) -> Option<&DoraMagnitude<B>> {
        self.lora.as_ref().and_then(|l| l.dora.as_ref())
    }

    /// `1 / ‖W_o + s·(B·A)_o‖` of each output row `o`, from `‖W_o‖²` (kept),
    /// `2s·Σ_k B_ok·(A·Wᵀ)_ko` (one product of `r` rows with the weight on the backend) and
    /// `s²·B_o·(A·Aᵀ)·B_oᵀ`: the adapted weight itself is never formed.
    pub(crate) fn dora_inverse_norms(&self, backend: &B) -> Result<Vec<f64>> {
        let Some(lora) = &self.lora else {
            return Err(Error::invalid(
                "dora",
                format!("`{}` has no LoRA adapter", self.prefix),
            ));
        };
        let rank = self.check_adapter_shapes("dora")?;
        let (out, inp) = self.out_in();
        let base = self.base_row_norms_squared(backend)?;
        let product =
            backend.linear_forward(&lora.a.value, &self.weight.value, None, None, None)?;
        let a_w = backend.to_f64(&product.y)?;
        let a = backend.to_f64(&lora.a.value)?;
        let b = backend.to_f64(&lora.b.value)?;
        let mut gram = vec![0.0; rank * rank];
        for k in 0..rank {
            for l in 0..rank {
                gram[k * rank + l] = a[k * inp..(k + 1) * inp]
                    .iter()
                    .zip(&a[l * inp..(l + 1) * inp])
                    .map(|(x, y)| x * y)
                    .sum();
            }
        }
        let s = lora.scale;
        (0..out)
            .map(|o| {
                let b_o = &b[o * rank..(o + 1) * rank];
                let cross: f64 = (0..rank).map(|k| b_o[k] * a_w[k * out + o]).sum();
                let lora_sq: f64 = (0..rank)
                    .map(|k| {
                        let row = &gram[k * rank..(k + 1) * rank];
                        b_o[k] * row.iter().zip(b_o).map(|(g, bl)| g * bl).sum::<f64>()
                    })
                    .sum();
                let squared = base[o] + 2.0 * s * cross + s * s * lora_sq;
                // A zero row has no direction to scale: PEFT's outputs would be NaN.
                if squared > 0.0 && squared.is_finite() {
                    Ok(1.0 / squared.sqrt())
                } else {
                    Err(Error::invalid(
                        "dora",
                        format!(
                            "`{}`: row {o} of the adapted weight has squared norm {squared}, \
                             so DoRA's magnitude has no direction to scale",
                            self.prefix
                        ),
                    ))
                }
            })
            .collect()
    }

    /// `‖W_o‖²` of each row of the base weight, computed once per weight tensor unless the
    /// weight trains.
    fn base_row_norms_squared(&self, backend: &B) -> Result<Vec<f64>> {
        let (_, inp) = self.out_in();
        let w = &self.weight.value;
        let compute = || -> Result<Vec<f64>> {
            let values = backend.to_f64(w)?;
            Ok(values
                .chunks(inp.max(1))
                .map(|row| row.iter().map(|v| v * v).sum())
                .collect())
        };
        let Some(dora) = self.dora() else {
            return compute();
        };
        if self.weight.trainable {
            return compute();
        }
        let mut kept = dora
            .base_row_norms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((source, norms)) = &*kept {
            // The entry holds `source` alive, so its storage identity cannot be reused.
            if source.storage_id() == w.storage_id()
                && source.shape() == w.shape()
                && source.dtype() == w.dtype()
            {
                return Ok(norms.clone());
            }
        }
        let norms = compute()?;
        *kept = Some((w.clone(), norms.clone()));
        Ok(norms)
    }

    /// The DoRA layer on the tape. Without dropout, `y = (m/n) ⊙ (x·Wᵀ + s·x·Aᵀ·Bᵀ) + b`.
    /// With dropout on the adapter's input, PEFT scales the dropped input's whole map and
    /// keeps the base map of the rest: `y = x·Wᵀ + b + (m/n − 1) ⊙ (d·Wᵀ) + (m/n) ⊙ s·d·Aᵀ·Bᵀ`
    /// with `d` the dropped `x`, computed as `W·(x − d) + b` plus the scaled map of `d`: two
    /// products with `W`, as PEFT's. `for_products`: see [`Linear::forward_for_products`].
    pub(super) fn forward_dora(
        &self,
        tape: &mut Tape<B>,
        x: &Var<B>,
        dropouts: &mut DropoutPlan,
        (lora, dora): (&LoraAdapter<B>, &DoraMagnitude<B>),
        for_products: bool,
    ) -> Result<Var<B>> {
        let inverse_norms = match &dora.held_inverse_norms {
            Some(held) => held.clone(),
            None => self.dora_inverse_norms(tape.backend())?,
        };
        let w = self.weight.var(tape);
        let bias = self.bias.var(tape);
        let a = lora.a.var(tape);
        let b = lora.b.var(tape);
        let magnitude = dora.magnitude.var(tape);
        let adapter = || LoraVars {
            a: &a,
            b: &b,
            scale: lora.scale,
            dropout: None,
        };
        match dropouts.next_lora().filter(|d| d.p > 0.0) {
            None => {
                let z = tape.linear(x, &w, None, Some(adapter()))?;
                tape.magnitude_scale(
                    &z,
                    &magnitude,
                    inverse_norms,
                    (Some(&bias), None),
                    for_products,
                )
            }
            Some(d) => {
                let dropped = tape.dropout(x, Some(d))?;
                let z = tape.linear(&dropped, &w, None, Some(adapter()))?;
                let rest = tape.dropped_part(x, d)?;
                let base = tape.linear(&rest, &w, Some(&bias), None)?;
                tape.magnitude_scale(
                    &z,
                    &magnitude,
                    inverse_norms,
                    (None, Some(&base)),
                    for_products,
                )
            }
        }
    }
}

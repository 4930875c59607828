use super::{DoraMagnitude, DropoutPlan, Param};
use crate::autograd::{LoraVars, Tape, Var};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A LoRA adapter: `A` `[r, in]`, `B` `[out, r]`, scale `alpha / r`.
#[derive(Clone, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `…lora_A.weight`.
    pub a: Param<B>,
    /// `…lora_B.weight`.
    pub b: Param<B>,
    /// `alpha / r`.
    pub scale: f64,
    /// Present on DoRA adapters (see [`Linear::attach_dora`]).
    pub dora: Option<DoraMagnitude<B>>,
}

/// A linear map with bias (`prefix.weight` `[out, in]`, `prefix.bias` `[out]`) and an
/// optional LoRA adapter.
#[derive(Clone, Debug)]
pub struct Linear<B: Backend> {
    /// The module path, e.g. `encoder.layer.0.attention.self.query`.
    pub prefix: String,
    /// `[out, in]`.
    pub weight: Param<B>,
    /// `[out]`.
    pub bias: Param<B>,
    /// Present on LoRA targets.
    pub lora: Option<LoraAdapter<B>>,
}

impl<B: Backend> Linear<B> {
    /// A frozen linear map under `prefix`: `weight` `[out, in]`, `bias` `[out]`.
    pub fn new(prefix: &str, weight: Tensor<B>, bias: Tensor<B>) -> Result<Self> {
        let well_shaped = match weight.dims() {
            &[out, _] => bias.dims() == [out],
            _ => false,
        };
        if !well_shaped {
            return Err(Error::shape(
                "linear",
                format!(
                    "`{prefix}`: weight {} and bias {} must be [out, in] and [out]",
                    weight.shape(),
                    bias.shape()
                ),
            ));
        }
        Ok(Linear {
            prefix: prefix.to_string(),
            weight: Param::new(format!("{prefix}.weight"), weight, false),
            bias: Param::new(format!("{prefix}.bias"), bias, false),
            lora: None,
        })
    }

    /// `[out, in]` (0 for a dimension the weight lacks: its value was replaced by a tensor
    /// of another rank, which the ops refuse).
    pub fn out_in(&self) -> (usize, usize) {
        let d = self.weight.value.dims();
        (
            d.first().copied().unwrap_or(0),
            d.get(1).copied().unwrap_or(0),
        )
    }

    /// Adds a trainable adapter from the given `A` and `B`, named as PEFT names them.
    pub fn attach_lora(&mut self, a: Tensor<B>, b: Tensor<B>, scale: f64) {
        let p = &self.prefix;
        self.lora = Some(LoraAdapter {
            a: Param::new(format!("{p}.lora_A.weight"), a, true),
            b: Param::new(format!("{p}.lora_B.weight"), b, true),
            scale,
            dora: None,
        });
    }

    /// `x·Wᵀ + b (+ LoRA)` on the tape.
    pub fn forward(
        &self,
        tape: &mut Tape<B>,
        x: &Var<B>,
        dropouts: &mut DropoutPlan,
    ) -> Result<Var<B>> {
        self.forward_as(tape, x, dropouts, false)
    }

    /// [`Linear::forward`] for an output that only products read (attention's query, key
    /// and value): see [`Tape::linear_for_products`].
    pub fn forward_for_products(
        &self,
        tape: &mut Tape<B>,
        x: &Var<B>,
        dropouts: &mut DropoutPlan,
    ) -> Result<Var<B>> {
        self.forward_as(tape, x, dropouts, true)
    }

    fn forward_as(
        &self,
        tape: &mut Tape<B>,
        x: &Var<B>,
        dropouts: &mut DropoutPlan,
        for_products: bool,
    ) -> Result<Var<B>> {
        if let Some((lora, dora)) = self
            .lora
            .as_ref()
            .and_then(|l| l.dora.as_ref().map(|d| (l, d)))
        {
            return self.forward_dora(tape, x, dropouts, (lora, dora), for_products);
        }
        let w = self.weight.var(tape);
        let b = self.bias.var(tape);
        let lora_vars = self
            .lora
            .as_ref()
            .map(|l| (l.a.var(tape), l.b.var(tape), l.scale));
        let lora = lora_vars.as_ref().map(|(a, bl, scale)| LoraVars {
            a,
            b: bl,
            scale: *scale,
            dropout: dropouts.next_lora(),
        });
        tape.linear_as(x, &w, Some(&b), lora, for_products)
    }

    /// Folds a DoRA adapter (weight-decomposed LoRA, PEFT's `use_dora`) into the weight and
    /// removes it: `W ← m ⊙ (W + scale·B·A) / ‖W + scale·B·A‖`, each output row of the
    /// adapted weight scaled to its norm `magnitude[row]`, as PEFT merges one. That is what
    /// the layer computes in evaluation, where no dropout splits the input of the two terms.
    /// On an error the layer is left as it was.
    pub fn merge_dora(&mut self, backend: &B, magnitude: &[f64]) -> Result<()> {
        let (out, inp) = self.out_in();
        if magnitude.len() != out {
            return Err(Error::shape(
                "merge_dora",
                format!(
                    "`{}`: {} magnitudes for {out} output rows",
                    self.prefix,
                    magnitude.len()
                ),
            ));
        }
        let mut w = self.adapted_weight(backend, "merge_dora")?;
        for (row, (values, m)) in w.chunks_mut(inp.max(1)).zip(magnitude).enumerate() {
            let norm = values.iter().map(|v| v * v).sum::<f64>().sqrt();
            // A zero row has no direction to scale: PEFT's outputs would be NaN.
            if !(norm > 0.0 && norm.is_finite()) {
                return Err(Error::invalid(
                    "merge_dora",
                    format!(
                        "`{}`: row {row} of the adapted weight has norm {norm}, so DoRA's \
                         magnitude {m} has no direction to scale",
                        self.prefix
                    ),
                ));
            }
            values.iter_mut().for_each(|v| *v *= m / norm);
        }
        self.weight.value = backend.tensor_from_f64(self.weight.value.shape().clone(), &w)?;
        self.lora = None;
        Ok(())
    }

    /// Folds the adapter into the weight, `W += scale · B·A`, and removes it: the same
    /// outputs with no LoRA cost at inference.
    /// A DoRA adapter folds with its current magnitudes, as [`Linear::merge_dora`].
    pub fn merge_lora(&mut self, backend: &B) -> Result<()> {
        if self.lora.is_none() {
            return Ok(());
        }
        if let Some(dora) = self.dora() {
            let magnitude = backend.to_f64(&dora.magnitude.value)?;
            return self.merge_dora(backend, &magnitude);
        }
        let w = self.adapted_weight(backend, "merge_lora")?;
        self.weight.value = backend.tensor_from_f64(self.weight.value.shape().clone(), &w)?;
        self.lora = None;
        Ok(())
    }

    /// `W + scale · B·A` (the weight alone without an adapter), row-major `[out, in]`.
    fn adapted_weight(&self, backend: &B, op: &'static str) -> Result<Vec<f64>> {
        let mut w = backend.to_f64(&self.weight.value)?;
        let Some(l) = &self.lora else {
            return Ok(w);
        };
        let (out, inp) = self.out_in();
        let rank = self.check_adapter_shapes(op)?;
        let a = backend.to_f64(&l.a.value)?;
        let b = backend.to_f64(&l.b.value)?;
        for o in 0..out {
            for k in 0..rank {
                let s = l.scale * b[o * rank + k];
                for (wi, ai) in w[o * inp..(o + 1) * inp]
                    .iter_mut()
                    .zip(&a[k * inp..(k + 1) * inp])
                {
                    *wi += s * ai;
                }
            }
        }
        Ok(w)
    }

    /// The adapter's rank, once the weight is `[out, in]`, `A` `[r, in]` and `B` `[out, r]`.
    pub(super) fn check_adapter_shapes(&self, op: &'static str) -> Result<usize> {
        let Some(l) = &self.lora else {
            return Ok(0);
        };
        let (out, inp) = self.out_in();
        let rank = l.a.value.dims().first().copied().unwrap_or(0);
        let shapes = [
            (&self.weight.value, [out, inp]),
            (&l.a.value, [rank, inp]),
            (&l.b.value, [out, rank]),
        ];
        if let Some((t, want)) = shapes.iter().find(|(t, want)| t.dims() != want) {
            let detail = format!(
                "`{}`: {} where [{}, {}] is needed",
                self.prefix,
                t.shape(),
                want[0],
                want[1]
            );
            return Err(Error::shape(op, detail));
        }
        Ok(rank)
    }

    /// Stores a frozen weight in `backend`'s [`Backend::frozen_dtype`] (bf16 in bf16 mode);
    /// a trainable one stays as it is. A model built on a backend of another dtype (its bias
    /// is in that dtype) is refused: its weights would no longer match its activations.
    pub fn store_frozen_weight(&mut self, backend: &B) -> Result<()> {
        if self.bias.value.dtype() != backend.float_dtype() {
            return Err(Error::dtype(
                "store frozen weights",
                format!(
                    "`{}` is {} but {} computes in {}: build the model on the backend that \
                     runs it",
                    self.bias.name,
                    self.bias.value.dtype(),
                    backend.name(),
                    backend.float_dtype()
                ),
            ));
        }
        if !self.weight.trainable && self.weight.value.dtype() != backend.frozen_dtype() {
            self.weight.value = backend.cast(&self.weight.value, backend.frozen_dtype())?;
        }
        Ok(())
    }

    /// Every parameter, adapter included.
    pub fn params(&self) -> Vec<&Param<B>> {
        let mut v = vec![&self.weight, &self.bias];
        if let Some(l) = &self.lora {
            v.extend([&l.a, &l.b]);
            v.extend(l.dora.as_ref().map(|d| &d.magnitude));
        }
        v
    }

    /// Every parameter, mutably.
    pub fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        let mut v = vec![&mut self.weight, &mut self.bias];
        if let Some(l) = &mut self.lora {
            v.extend([&mut l.a, &mut l.b]);
            v.extend(l.dora.as_mut().map(|d| &mut d.magnitude));
        }
        v
    }
}

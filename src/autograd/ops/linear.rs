use super::super::{BackwardOp, Tape, Var};
use super::id_of;
use super::Recompute;
use crate::backend::{
    Backend, Dropout, LinearBackwardInputs, LinearForwardOptions, LinearGradRequest, LoraWeights,
};
use crate::error::Result;
use crate::tensor::Tensor;

/// A LoRA adapter on the tape: `y += scale · (dropout(x)·Aᵀ)·Bᵀ`.
#[derive(Debug)]
pub struct LoraVars<'a, B: Backend> {
    /// `A`: `[r, in]`.
    pub a: &'a Var<B>,
    /// `B`: `[out, r]`.
    pub b: &'a Var<B>,
    /// `alpha / r`.
    pub scale: f64,
    /// Dropout on the adapter's input (PEFT's `lora_dropout`), training only.
    pub dropout: Option<Dropout>,
}

// Input slots of the node.
const X: usize = 0;
const W: usize = 1;
const BIAS: usize = 2;
const A: usize = 3;
const B_LORA: usize = 4;

struct LinearNode<B: Backend> {
    w: Tensor<B>,
    lora: Option<(Tensor<B>, Tensor<B>, f64)>,
    /// The adapter's input dropout: its mask is redrawn from the seed in backward, so the
    /// dropped copy of `x` is never stored.
    lora_dropout: Option<Dropout>,
    /// Kept only when `dW` or `dA` is needed: the backend's copy rounded for the products
    /// where it makes one and the adapter has no dropout (which masks the unrounded `x`), or
    /// how to recompute either from what a GELU's or a LayerNorm's node keeps (see
    /// [`KeptInput::Recomputed`]).
    x: Option<KeptInput<B>>,
    /// Kept only when `dB` is needed.
    h: Option<Tensor<B>>,
}

impl<B: Backend> BackwardOp<B> for LinearNode<B> {
    fn backward(
        &self,
        backend: &B,
        d_out: &Tensor<B>,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor<B>>>> {
        let has_lora = self.lora.is_some();
        let want = LinearGradRequest {
            dx: needs[X],
            dw: needs[W],
            dbias: needs[BIAS],
            dlora_a: needs[A],
            dlora_b: needs[B_LORA],
            // Without adapter dropout the adapter reads x itself: one fused gradient. With it,
            // the adapter's part goes back through the dropout mask first.
            dlora_input: needs[X] && has_lora && self.lora_dropout.is_some(),
            dx_includes_lora: needs[X] && has_lora && self.lora_dropout.is_none(),
        };
        let x = match &self.x {
            Some(kept) => Some(kept.value(backend)?),
            None => None,
        };
        let x_lora = match (&x, self.lora_dropout) {
            (Some(x), Some(d)) if want.dlora_a => Some(backend.dropout(x, d)?),
            _ => None,
        };
        let g = backend.linear_backward(
            LinearBackwardInputs {
                dy: d_out,
                x: x.as_ref(),
                w: Some(&self.w),
                lora: self.lora.as_ref().map(|(a, b, scale)| LoraWeights {
                    a,
                    b,
                    scale: *scale,
                }),
                x_lora: x_lora.as_ref().or(x.as_ref()),
                h: self.h.as_ref(),
            },
            want,
        )?;
        let dx = match (g.dx, g.dlora_input) {
            (Some(mut dx), Some(dxl)) => {
                let dxl = match self.lora_dropout {
                    Some(d) => backend.dropout(&dxl, d)?,
                    None => dxl,
                };
                backend.add_assign(&mut dx, &dxl)?;
                Some(dx)
            }
            (dx, _) => dx,
        };
        Ok(vec![dx, g.dw, g.dbias, g.dlora_a, g.dlora_b])
    }

    fn saved_activations(&self) -> Vec<&Tensor<B>> {
        let mut kept = match &self.x {
            Some(KeptInput::Value(x)) => vec![x],
            Some(KeptInput::Recomputed { from, .. }) => from.activations(),
            None => vec![],
        };
        kept.extend(&self.h);
        kept
    }
}

/// What a linear node keeps to give its weight and adapter gradients their input.
enum KeptInput<B: Backend> {
    /// The input, or its copy rounded for the products.
    Value(Tensor<B>),
    /// The input was a GELU's or a LayerNorm's output, whose node keeps what it was computed
    /// from: computed again in backward with the forward's arithmetic (and rounded for the
    /// products as the forward's copy was, where `rounded`), so the same bits as keeping it
    /// ([`Backend::recomputes_linear_inputs`]).
    Recomputed { from: Recompute<B>, rounded: bool },
}

impl<B: Backend> KeptInput<B> {
    fn value(&self, backend: &B) -> Result<Tensor<B>> {
        match self {
            KeptInput::Value(x) => Ok(x.clone()),
            KeptInput::Recomputed { from, rounded } => from.value(backend, *rounded),
        }
    }
}

impl<B: Backend> Tape<B> {
    /// `x`'s copy from [`Backend::rounded_for_products`], made once for consecutive linear
    /// maps of the same input: [`Tape::linear_as`] keeps it after each map, and every other
    /// op the tape runs drops it (in `record`), so it lives no longer than a run of maps.
    fn rounded_input(&mut self, x: &Tensor<B>) -> Result<Option<Tensor<B>>> {
        if let Some((source, copy)) = &self.rounded_input {
            // The entry holds `source` alive, so its storage identity cannot be reused.
            if source.storage_id() == x.storage_id() && source.shape() == x.shape() {
                return Ok(Some(copy.clone()));
            }
        }
        // Dropped before the next copy is made, so two are never held at once.
        self.rounded_input = None;
        self.backend.rounded_for_products(x)
    }

    /// `y = x·Wᵀ + b (+ LoRA)`. Keeps `x` only if `W` or `A` trains (the bf16 copy the
    /// products read, where the backend makes one: see [`Backend::rounded_for_products`]) and
    /// the bottleneck `h` only if `B` trains; the adapter's dropout is redrawn in backward,
    /// never stored.
    pub fn linear(
        &mut self,
        x: &Var<B>,
        w: &Var<B>,
        bias: Option<&Var<B>>,
        lora: Option<LoraVars<'_, B>>,
    ) -> Result<Var<B>> {
        self.linear_as(x, w, bias, lora, false)
    }

    /// [`Tape::linear`] whose output only products read, which round it (attention's query,
    /// key and value): the backend may store it as they read it (bf16 in CUDA's bf16 mode,
    /// see [`LinearForwardOptions::output_for_products`]), with the same results.
    pub fn linear_for_products(
        &mut self,
        x: &Var<B>,
        w: &Var<B>,
        bias: Option<&Var<B>>,
        lora: Option<LoraVars<'_, B>>,
    ) -> Result<Var<B>> {
        self.linear_as(x, w, bias, lora, true)
    }

    /// [`Tape::linear`] or, with `output_for_products`, [`Tape::linear_for_products`].
    pub(crate) fn linear_as(
        &mut self,
        x: &Var<B>,
        w: &Var<B>,
        bias: Option<&Var<B>>,
        lora: Option<LoraVars<'_, B>>,
        output_for_products: bool,
    ) -> Result<Var<B>> {
        let lora_dropout = lora.as_ref().and_then(|l| l.dropout).filter(|d| d.p > 0.0);
        let dropped = match lora_dropout {
            Some(d) => Some(self.backend.dropout(&x.value, d)?),
            None => None,
        };
        let x_rounded = self.rounded_input(&x.value)?;
        // Read before `record`, which drops the entry.
        let recomputable = self.recomputable.take().filter(|(y, _)| {
            y.storage_id() == x.value.storage_id() && y.shape() == x.value.shape()
        });
        let recompute = recomputable.as_ref().map(|(_, from)| from.clone());
        let lora_weights = lora.as_ref().map(|l| LoraWeights {
            a: &l.a.value,
            b: &l.b.value,
            scale: l.scale,
        });
        let out = self.backend.linear_forward_with(
            &x.value,
            &w.value,
            bias.map(|b| &b.value),
            lora_weights,
            dropped.as_ref(),
            LinearForwardOptions {
                x_rounded: x_rounded.as_ref(),
                output_for_products,
            },
        )?;
        let ids = vec![
            x.id,
            w.id,
            id_of(bias),
            id_of(lora.as_ref().map(|l| l.a)),
            id_of(lora.as_ref().map(|l| l.b)),
        ];
        let h = out.h;
        let keep = x_rounded.clone().map(|c| (x.value.clone(), c));
        // Where another node keeps x itself (ReLU keeps its output), its copy would be bytes
        // more, not fewer: the products then round x again.
        let x_kept_elsewhere = self.saved_storages.contains(&x.value.storage_id());
        let y = self.record(out.y, ids, |needs| {
            Box::new(LinearNode {
                w: w.value.clone(),
                lora: lora
                    .as_ref()
                    .map(|l| (l.a.value.clone(), l.b.value.clone(), l.scale)),
                lora_dropout,
                x: (needs[W] || needs[A]).then(|| {
                    let rounded = x_rounded.is_some() && lora_dropout.is_none();
                    match (recompute, x_rounded) {
                        // Unless another node keeps x itself: then keeping it costs nothing.
                        (Some(from), _) if !x_kept_elsewhere => {
                            KeptInput::Recomputed { from, rounded }
                        }
                        (_, Some(xr)) if rounded && !x_kept_elsewhere => KeptInput::Value(xr),
                        _ => KeptInput::Value(x.value.clone()),
                    }
                }),
                h: if needs[B_LORA] { h } else { None },
            })
        });
        // After `record`, which drops the entries: the next map may read the same input.
        self.rounded_input = keep;
        self.recomputable = recomputable;
        Ok(y)
    }
}

use super::super::{BackwardOp, Tape, Var};
use super::id_of;
use crate::backend::{Backend, Dropout, LinearBackwardInputs, LinearGradRequest, LoraWeights};
use crate::error::Result;
use crate::tensor::Tensor;

/// A LoRA adapter on the tape: `y += scale · (dropout(x)·Aᵀ)·Bᵀ`.
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
const X_LORA: usize = 5;

struct LinearNode<B: Backend> {
    w: Tensor<B>,
    lora: Option<(Tensor<B>, Tensor<B>, f64)>,
    /// Kept only when `dW` is needed.
    x: Option<Tensor<B>>,
    /// Kept only when `dA` is needed.
    x_lora: Option<Tensor<B>>,
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
        let want = LinearGradRequest {
            dx: needs[X],
            dw: needs[W],
            db: needs[BIAS],
            da: needs[A],
            db_lora: needs[B_LORA],
            dx_lora: needs[X_LORA],
        };
        let g = backend.linear_backward(
            LinearBackwardInputs {
                dy: d_out,
                x: self.x.as_ref(),
                w: Some(&self.w),
                lora: self.lora.as_ref().map(|(a, b, scale)| LoraWeights {
                    a,
                    b,
                    scale: *scale,
                }),
                x_lora: self.x_lora.as_ref(),
                h: self.h.as_ref(),
            },
            want,
        )?;
        Ok(vec![g.dx, g.dw, g.db, g.da, g.db_lora, g.dx_lora])
    }

    fn saved_activations(&self) -> Vec<&Tensor<B>> {
        [&self.x, &self.x_lora, &self.h]
            .into_iter()
            .flatten()
            .collect()
    }
}

impl<B: Backend> Tape<B> {
    /// `y = x·Wᵀ + b (+ LoRA)`. Keeps `x` only if `W` trains, the adapter input only if `A`
    /// trains and the bottleneck `h` only if `B` trains.
    pub fn linear(
        &mut self,
        x: &Var<B>,
        w: &Var<B>,
        bias: Option<&Var<B>>,
        lora: Option<LoraVars<'_, B>>,
    ) -> Result<Var<B>> {
        let dropped = match lora.as_ref().and_then(|l| l.dropout) {
            Some(d) if d.p > 0.0 => Some(self.dropout(x, Some(d))?),
            _ => None,
        };
        let x_lora = dropped.as_ref().unwrap_or(x);
        let out = self.backend.linear_forward(
            &x.value,
            &w.value,
            bias.map(|b| &b.value),
            lora.as_ref().map(|l| LoraWeights {
                a: &l.a.value,
                b: &l.b.value,
                scale: l.scale,
            }),
            dropped.as_ref().map(|d| &d.value),
        )?;
        let ids = vec![
            x.id,
            w.id,
            id_of(bias),
            id_of(lora.as_ref().map(|l| l.a)),
            id_of(lora.as_ref().map(|l| l.b)),
            lora.as_ref().and(x_lora.id),
        ];
        let h = out.h;
        Ok(self.record(out.y, ids, |needs| {
            Box::new(LinearNode {
                w: w.value.clone(),
                lora: lora
                    .as_ref()
                    .map(|l| (l.a.value.clone(), l.b.value.clone(), l.scale)),
                x: needs[W].then(|| x.value.clone()),
                x_lora: needs[A].then(|| x_lora.value.clone()),
                h: if needs[B_LORA] { h } else { None },
            })
        }))
    }
}

use super::super::{BackwardOp, Tape, Var};
use crate::backend::{Backend, LayerNormGradRequest};
use crate::error::Result;
use crate::tensor::Tensor;

struct LayerNormNode<B: Backend> {
    gamma: Tensor<B>,
    /// `(x, mean, rstd)`, kept only when `dx` or `dγ` is needed: `dβ` needs nothing.
    stats: Option<(Tensor<B>, Tensor<B>, Tensor<B>)>,
}

impl<B: Backend> BackwardOp<B> for LayerNormNode<B> {
    fn backward(
        &self,
        backend: &B,
        d_out: &Tensor<B>,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor<B>>>> {
        let stats = self.stats.as_ref();
        let g = backend.layernorm_backward(
            d_out,
            stats.map(|s| &s.0),
            stats.map(|s| &s.1),
            stats.map(|s| &s.2),
            Some(&self.gamma),
            LayerNormGradRequest {
                dx: needs[0],
                dgamma: needs[1],
                dbeta: needs[2],
            },
        )?;
        Ok(vec![g.dx, g.dgamma, g.dbeta])
    }

    fn saved_activations(&self) -> Vec<&Tensor<B>> {
        match &self.stats {
            Some((x, m, r)) => vec![x, m, r],
            None => vec![],
        }
    }
}

impl<B: Backend> Tape<B> {
    /// Layernorm over the last dimension with scale `gamma` and shift `beta`.
    pub fn layernorm(
        &mut self,
        x: &Var<B>,
        gamma: &Var<B>,
        beta: &Var<B>,
        eps: f64,
    ) -> Result<Var<B>> {
        let out = self
            .backend
            .layernorm_forward(&x.value, &gamma.value, &beta.value, eps)?;
        let (mean, rstd) = (out.mean, out.rstd);
        // The node keeps x and the statistics when dx or dγ is needed: then the maps that
        // read y next may recompute it from them.
        let recompute = (x.id.is_some() || gamma.id.is_some())
            .then(|| {
                super::Recompute::layer_norm(
                    x.value.clone(),
                    mean.clone(),
                    rstd.clone(),
                    gamma.value.clone(),
                    beta.value.clone(),
                )
            })
            .filter(|_| self.backend.recomputes_linear_inputs());
        let y = self.record(out.y, vec![x.id, gamma.id, beta.id], |needs| {
            Box::new(LayerNormNode {
                gamma: gamma.value.clone(),
                stats: (needs[0] || needs[1]).then(|| (x.value.clone(), mean, rstd)),
            })
        });
        if let Some(recompute) = recompute {
            self.recomputable = Some((y.value.clone(), recompute));
        }
        Ok(y)
    }
}

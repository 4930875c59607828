use super::super::{BackwardOp, Tape, Var};
use crate::backend::{AttentionConfig, AttentionGradRequest, Backend, RelativeTerms};
use crate::error::Result;
use crate::tensor::Tensor;

struct AttentionNode<B: Backend> {
    q: Tensor<B>,
    k: Tensor<B>,
    /// Needed only for `dq`/`dk` (and the bias's gradient).
    v: Option<Tensor<B>>,
    lse: Tensor<B>,
    mask: Tensor<B>,
    bias: NodeBias<B>,
    config: AttentionConfig,
}

/// What the node's scores added, its inputs after q, k, v.
enum NodeBias<B: Backend> {
    None,
    /// MPNet's relative position bias `[2·seq − 1, heads]`, the fourth input.
    Position(Tensor<B>),
    /// DeBERTa's key terms and query terms (inputs where given, in that order) and the row
    /// each (query, key) pair reads.
    Disentangled {
        key_terms: Option<Tensor<B>>,
        query_terms: Option<Tensor<B>>,
        rows: Tensor<B>,
    },
}

impl<B: Backend> BackwardOp<B> for AttentionNode<B> {
    fn backward(
        &self,
        backend: &B,
        d_out: &Tensor<B>,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor<B>>>> {
        let want = AttentionGradRequest {
            dq: needs[0],
            dk: needs[1],
            dv: needs[2],
        };
        match &self.bias {
            NodeBias::None => {
                let g = backend.attention_backward(
                    d_out,
                    &self.q,
                    &self.k,
                    self.v.as_ref(),
                    &self.lse,
                    &self.mask,
                    &self.config,
                    want,
                )?;
                Ok(vec![g.dq, g.dk, g.dv])
            }
            NodeBias::Position(bias) => {
                let (g, d_bias) = backend.attention_backward_with_position_bias(
                    d_out,
                    &self.q,
                    &self.k,
                    self.v.as_ref(),
                    &self.lse,
                    &self.mask,
                    bias,
                    &self.config,
                    want,
                    needs[3],
                )?;
                Ok(vec![g.dq, g.dk, g.dv, d_bias])
            }
            NodeBias::Disentangled {
                key_terms,
                query_terms,
                rows,
            } => {
                let terms = RelativeTerms {
                    key: key_terms.as_ref(),
                    query: query_terms.as_ref(),
                    rows,
                };
                let g = backend.attention_backward_disentangled(
                    d_out,
                    &self.q,
                    &self.k,
                    self.v.as_ref(),
                    &self.lse,
                    &self.mask,
                    &terms,
                    &self.config,
                    want,
                    needs[3..].iter().any(|&n| n),
                )?;
                let mut grads = vec![g.attention.dq, g.attention.dk, g.attention.dv];
                if key_terms.is_some() {
                    grads.push(g.key_terms);
                }
                if query_terms.is_some() {
                    grads.push(g.query_terms);
                }
                Ok(grads)
            }
        }
    }

    fn saved_activations(&self) -> Vec<&Tensor<B>> {
        let mut saved = vec![&self.q, &self.k, &self.lse, &self.mask];
        saved.extend(self.v.as_ref());
        match &self.bias {
            NodeBias::None | NodeBias::Position(_) => {}
            NodeBias::Disentangled {
                key_terms,
                query_terms,
                rows,
            } => {
                saved.push(rows);
                saved.extend(key_terms.as_ref());
                saved.extend(query_terms.as_ref());
            }
        }
        saved
    }
}

impl<B: Backend> Tape<B> {
    /// Multi-head self-attention over `[batch·seq, hidden]` projections with a key padding
    /// `mask` `[batch, seq]`. Keeps q, k (and v when q or k trains) and the per-row
    /// log-sum-exp, never the output or the `seq × seq` probabilities.
    pub fn attention(
        &mut self,
        q: &Var<B>,
        k: &Var<B>,
        v: &Var<B>,
        mask: &Tensor<B>,
        config: AttentionConfig,
    ) -> Result<Var<B>> {
        let out = self
            .backend
            .attention_forward(&q.value, &k.value, &v.value, mask, &config)?;
        let lse = out.lse;
        Ok(self.record(out.out, vec![q.id, k.id, v.id], |needs| {
            Box::new(AttentionNode {
                q: q.value.clone(),
                k: k.value.clone(),
                v: (needs[0] || needs[1]).then(|| v.value.clone()),
                lse,
                mask: mask.clone(),
                bias: NodeBias::None,
                config,
            })
        }))
    }

    /// [`Tape::attention`] with MPNet's relative position bias `[2·seq − 1, heads]` added to
    /// the scores (see [`Backend::attention_forward_with_position_bias`]); the bias is a
    /// variable, so a trained position table gets its gradient through it.
    pub fn attention_with_position_bias(
        &mut self,
        q: &Var<B>,
        k: &Var<B>,
        v: &Var<B>,
        mask: &Tensor<B>,
        position_bias: &Var<B>,
        config: AttentionConfig,
    ) -> Result<Var<B>> {
        let out = self.backend.attention_forward_with_position_bias(
            &q.value,
            &k.value,
            &v.value,
            mask,
            &position_bias.value,
            &config,
        )?;
        let lse = out.lse;
        let inputs = vec![q.id, k.id, v.id, position_bias.id];
        Ok(self.record(out.out, inputs, |needs| {
            Box::new(AttentionNode {
                q: q.value.clone(),
                k: k.value.clone(),
                // The bias's gradient is dS, which needs dP = dO·Vᵀ as dq and dk do.
                v: (needs[0] || needs[1] || needs[3]).then(|| v.value.clone()),
                lse,
                mask: mask.clone(),
                bias: NodeBias::Position(position_bias.value.clone()),
                config,
            })
        }))
    }
}

impl<B: Backend> Tape<B> {
    /// [`Tape::attention`] with DeBERTa's disentangled terms added to the scores (see
    /// [`Backend::attention_forward_disentangled`]): `key_terms` and `query_terms`
    /// (`[rows, hidden]`, the relative embeddings under the layer's key and query maps) are
    /// variables, so the maps and the embeddings get their gradients through them; `rows`
    /// `[seq, seq]` says which row each (query, key) pair reads.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_disentangled(
        &mut self,
        q: &Var<B>,
        k: &Var<B>,
        v: &Var<B>,
        mask: &Tensor<B>,
        key_terms: Option<&Var<B>>,
        query_terms: Option<&Var<B>>,
        rows: &Tensor<B>,
        config: AttentionConfig,
    ) -> Result<Var<B>> {
        let terms = RelativeTerms {
            key: key_terms.map(|t| &t.value),
            query: query_terms.map(|t| &t.value),
            rows,
        };
        let out = self
            .backend
            .attention_forward_disentangled(&q.value, &k.value, &v.value, mask, &terms, &config)?;
        let lse = out.lse;
        let mut inputs = vec![q.id, k.id, v.id];
        inputs.extend(key_terms.map(|t| t.id));
        inputs.extend(query_terms.map(|t| t.id));
        Ok(self.record(out.out, inputs, |needs| {
            Box::new(AttentionNode {
                q: q.value.clone(),
                k: k.value.clone(),
                // Every gradient but dv's needs dS, and dS needs dP = dO·Vᵀ.
                v: (needs[0] || needs[1] || needs[3..].iter().any(|&n| n)).then(|| v.value.clone()),
                lse,
                mask: mask.clone(),
                bias: NodeBias::Disentangled {
                    key_terms: key_terms.map(|t| t.value.clone()),
                    query_terms: query_terms.map(|t| t.value.clone()),
                    rows: rows.clone(),
                },
                config,
            })
        }))
    }
}

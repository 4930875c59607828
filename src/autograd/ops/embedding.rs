use super::super::{BackwardOp, Tape, Var};
use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::Tensor;

struct EmbeddingNode<B: Backend> {
    ids: Tensor<B>,
    vocab: usize,
}

impl<B: Backend> BackwardOp<B> for EmbeddingNode<B> {
    fn backward(
        &self,
        backend: &B,
        d_out: &Tensor<B>,
        _: &[bool],
    ) -> Result<Vec<Option<Tensor<B>>>> {
        Ok(vec![Some(
            backend.embedding_backward(d_out, &self.ids, self.vocab)?,
        )])
    }

    fn saved_activations(&self) -> Vec<&Tensor<B>> {
        vec![&self.ids]
    }
}

impl<B: Backend> Tape<B> {
    /// Rows `ids` of `table` (`[n, dim]` → `[ids…, dim]`): token embeddings, and the
    /// `[CLS]` rows the pooler reads.
    pub fn embedding(&mut self, table: &Var<B>, ids: &Tensor<B>) -> Result<Var<B>> {
        let y = self.backend.embedding_forward(&table.value, ids)?;
        let vocab = table.value.dims()[0];
        Ok(self.record(y, vec![table.id], |_| {
            Box::new(EmbeddingNode {
                ids: ids.clone(),
                vocab,
            })
        }))
    }
}

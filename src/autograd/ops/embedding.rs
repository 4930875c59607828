use super::super::{BackwardOp, Tape, Var};
use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::Tensor;

struct EmbeddingNode<B: Backend> {
    ids: Tensor<B>,
    vocab: usize,
    /// A row that gets no gradient (`nn.Embedding`'s `padding_idx`).
    padding_row: Option<u32>,
}

impl<B: Backend> BackwardOp<B> for EmbeddingNode<B> {
    fn backward(
        &self,
        backend: &B,
        d_out: &Tensor<B>,
        _: &[bool],
    ) -> Result<Vec<Option<Tensor<B>>>> {
        // The ids come to the host only where a padding row is named (the tables that train).
        let host_ids = match self.padding_row {
            Some(pad) => Some((pad, backend.to_u32(&self.ids)?)),
            None => None,
        };
        let Some((pad, host_ids)) = host_ids.filter(|(pad, ids)| ids.contains(pad)) else {
            return Ok(vec![Some(
                backend.embedding_backward(d_out, &self.ids, self.vocab)?,
            )]);
        };
        // The padding row's share goes to one row past the table, which is then left out.
        let vocab = u32::try_from(self.vocab).map_err(|_| {
            crate::error::Error::invalid("embedding", "a table of 2^32 rows or more")
        })?;
        let redirected: Vec<u32> = host_ids
            .into_iter()
            .map(|id| if id == pad { vocab } else { id })
            .collect();
        let redirected = backend.tensor_from_u32(self.ids.shape().clone(), &redirected)?;
        let widened = backend.embedding_backward(d_out, &redirected, self.vocab + 1)?;
        let rows: Vec<u32> = (0..vocab).collect();
        let rows = backend.tensor_from_u32(crate::tensor::Shape::new([self.vocab]), &rows)?;
        Ok(vec![Some(backend.embedding_forward(&widened, &rows)?)])
    }

    fn saved_activations(&self) -> Vec<&Tensor<B>> {
        vec![&self.ids]
    }
}

impl<B: Backend> Tape<B> {
    /// Rows `ids` of `table` (`[n, dim]` → `[ids…, dim]`): token embeddings, and the
    /// `[CLS]` rows the pooler reads.
    pub fn embedding(&mut self, table: &Var<B>, ids: &Tensor<B>) -> Result<Var<B>> {
        self.embedding_with_padding(table, ids, None)
    }

    /// [`Tape::embedding`] whose row `padding_row` gets no gradient, as PyTorch's
    /// `nn.Embedding(padding_idx=…)` gives it none: transformers' word embeddings (and
    /// RoBERTa's position embeddings) never train their padding row, even where the padding
    /// token stands inside a text.
    pub fn embedding_with_padding(
        &mut self,
        table: &Var<B>,
        ids: &Tensor<B>,
        padding_row: Option<usize>,
    ) -> Result<Var<B>> {
        let y = self.backend.embedding_forward(&table.value, ids)?;
        let vocab = table.value.dims()[0];
        // A row past the table is no row of it.
        let padding_row = padding_row
            .filter(|&r| r < vocab)
            .and_then(|r| u32::try_from(r).ok());
        Ok(self.record(y, vec![table.id], |_| {
            Box::new(EmbeddingNode {
                ids: ids.clone(),
                vocab,
                padding_row,
            })
        }))
    }
}

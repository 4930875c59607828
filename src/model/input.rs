use crate::backend::Backend;
use crate::checkpoint::BertConfig;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};
use crate::text::EncodedBatch;

/// A tokenized batch on a backend, in the layout the model reads.
#[derive(Debug)]
pub struct ModelInput<B: Backend> {
    /// `[batch·seq]` token ids.
    pub input_ids: Tensor<B>,
    /// `[batch·seq]` segment ids.
    pub token_type_ids: Tensor<B>,
    /// `[batch·seq]` position ids: `0..seq` per row for BERT; for RoBERTa, counted over the
    /// row's tokens other than `pad_token_id` from `pad_token_id + 1`, those at
    /// `pad_token_id`
    /// ([`ModelInput::for_model`]).
    pub position_ids: Tensor<B>,
    /// `[batch, seq]`, 1 for real tokens.
    pub attention_mask: Tensor<B>,
    /// `[batch]` row index of each sequence's first token (`[CLS]`), for the pooler.
    pub first_tokens: Tensor<B>,
    /// Sequences.
    pub batch: usize,
    /// Padded length.
    pub seq: usize,
    /// The position id of a row's first token (0, or RoBERTa's `pad_token_id + 1`): the
    /// model checks it is its own.
    first_position: usize,
}

impl<B: Backend> ModelInput<B> {
    /// Uploads an encoded batch for a BERT model (positions `0..seq`); see
    /// [`ModelInput::for_model`] for any family, which also checks the token ids against the
    /// model's vocabulary (this one does not know it: the embedding refuses an id past it,
    /// saying only that it is out of range).
    pub fn new(backend: &B, encoded: &EncodedBatch) -> Result<Self> {
        Self::with_positions(backend, encoded, 0)
    }

    /// Uploads an encoded batch with the position ids of `config`'s family. A token id past
    /// its vocabulary is refused here, where it can be said what likely went wrong (the
    /// embedding would only say the id is out of range).
    pub fn for_model(backend: &B, encoded: &EncodedBatch, config: &BertConfig) -> Result<Self> {
        Self::for_model_naming_rows(backend, encoded, config, &|row| {
            format!("row {row} of the batch")
        })
    }

    /// [`ModelInput::for_model`], a refused id's row of the batch named by `row_name` (a
    /// caller that knows where the rows came from names them by their place in the data).
    pub(crate) fn for_model_naming_rows(
        backend: &B,
        encoded: &EncodedBatch,
        config: &BertConfig,
        row_name: &dyn Fn(usize) -> String,
    ) -> Result<Self> {
        // The batch's shape is checked first, and the ids before anything is uploaded.
        let tokens = Self::checked_tokens(encoded)?;
        let seq = encoded.seq.max(1);
        if let Some(at) = encoded
            .input_ids
            .iter()
            .position(|&id| id as usize >= config.vocab_size)
        {
            return Err(Error::invalid(
                "input",
                format!(
                    "{}: token id {} is past the model's vocabulary of {} tokens: were the \
                     texts tokenized by another model's tokenizer? Take the checkpoint's own \
                     (`Checkpoint::tokenizer`)",
                    row_name(at / seq),
                    encoded.input_ids[at],
                    config.vocab_size
                ),
            ));
        }
        // So are segment ids past the segment table (a BERT tokenizer's pairs for a RoBERTa,
        // whose table has one row), where the family reads them.
        let rows = config.type_vocab_size;
        if let Some(at) = encoded
            .token_type_ids
            .iter()
            .position(|&t| t as usize >= rows)
            .filter(|_| config.has_token_types())
        {
            return Err(Error::invalid(
                "input",
                format!(
                    "{}: segment id {} is past the model's {rows} segment type(s) \
                     (`type_vocab_size`): were the texts tokenized by another model's \
                     tokenizer? Take the checkpoint's own (`Checkpoint::tokenizer`)",
                    row_name(at / seq),
                    encoded.token_type_ids[at]
                ),
            ));
        }
        Self::upload(backend, encoded, tokens, config.first_position())
    }

    /// The position id of a row's first token these inputs were built with.
    pub fn first_position(&self) -> usize {
        self.first_position
    }

    fn with_positions(backend: &B, encoded: &EncodedBatch, first_position: usize) -> Result<Self> {
        let tokens = Self::checked_tokens(encoded)?;
        Self::upload(backend, encoded, tokens, first_position)
    }

    /// The batch's token count, where its shape holds at least one token, fits the device's
    /// u32 indices, and matches every field's length.
    fn checked_tokens(encoded: &EncodedBatch) -> Result<usize> {
        let (batch, seq) = (encoded.batch, encoded.seq);
        // No layer has anything to compute on, and each would say so in its own words.
        if batch == 0 || seq == 0 {
            return Err(Error::invalid(
                "input",
                format!(
                    "a batch of {batch} × {seq} tokens holds none: a batch needs at least one \
                     example of one token"
                ),
            ));
        }
        // Positions and first-token rows are u32 on the device: the token count must fit.
        let tokens = batch
            .checked_mul(seq)
            .filter(|&t| u32::try_from(t).is_ok())
            .ok_or_else(|| {
                Error::invalid(
                    "input",
                    format!("a batch of {batch} × {seq} tokens is 2^32 tokens or more"),
                )
            })?;
        for (field, len) in [
            ("input_ids", encoded.input_ids.len()),
            ("token_type_ids", encoded.token_type_ids.len()),
            ("attention_mask", encoded.attention_mask.len()),
        ] {
            if len != tokens {
                return Err(Error::shape(
                    "input",
                    format!("`{field}` holds {len} ids for a batch of {batch} × {seq} tokens"),
                ));
            }
        }
        Ok(tokens)
    }

    /// Uploads a batch [`ModelInput::checked_tokens`] passed, of `tokens` tokens.
    fn upload(
        backend: &B,
        encoded: &EncodedBatch,
        tokens: usize,
        first_position: usize,
    ) -> Result<Self> {
        let (batch, seq) = (encoded.batch, encoded.seq);
        let flat = Shape::new([tokens]);
        let positions: Vec<u32> = match first_position {
            0 => (0..batch).flat_map(|_| 0..seq as u32).collect(),
            // RoBERTa numbers the tokens that are not its padding id, which is the position
            // before the first (transformers' `create_position_ids_from_input_ids`), so
            // padding on either side keeps a sequence's positions; the padding itself sits at
            // the padding id's position.
            first => {
                let first = u32::try_from(first).map_err(|_| {
                    Error::invalid("input", format!("position {first} does not fit in 32 bits"))
                })?;
                let pad = first - 1;
                encoded
                    .input_ids
                    .chunks(seq.max(1))
                    .flat_map(|row| {
                        row.iter().scan(pad, move |next, &id| {
                            Some(if id != pad {
                                *next = next.saturating_add(1);
                                *next
                            } else {
                                pad
                            })
                        })
                    })
                    .collect()
            }
        };
        let first: Vec<u32> = (0..batch).map(|b| (b * seq) as u32).collect();
        Ok(ModelInput {
            input_ids: backend.tensor_from_u32(flat.clone(), &encoded.input_ids)?,
            token_type_ids: backend.tensor_from_u32(flat.clone(), &encoded.token_type_ids)?,
            position_ids: backend.tensor_from_u32(flat, &positions)?,
            attention_mask: backend
                .tensor_from_u32(Shape::new([batch, seq]), &encoded.attention_mask)?,
            first_tokens: backend.tensor_from_u32(Shape::new([batch]), &first)?,
            batch,
            seq,
            first_position,
        })
    }
}

use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::checkpoint::{BertConfig, EncoderFamily};
use crate::error::{Error, Result};
use crate::nn::{DropoutPlan, LayerNorm, Linear, Param};
use crate::tensor::{Shape, Tensor};

use super::ModelInput;

/// Word + position + token-type embeddings (+ an ERNIE's task type), LayerNorm, dropout; for
/// an ELECTRA whose embeddings are narrower than its hidden size, then the linear map up to
/// it.
#[derive(Clone, Debug)]
pub struct BertEmbeddings<B: Backend> {
    /// `[vocab, width]` (width: [`BertConfig::embedding_width`], the hidden size but in
    /// ELECTRA).
    pub word: Param<B>,
    /// `[max_positions, width]`; none in DeBERTa-v2 without `position_biased_input`
    /// (DeBERTa-v3), whose positions are relative alone.
    pub position: Option<Param<B>>,
    /// `[type_vocab, width]`; none in DistilBERT, which reads no segments.
    pub token_type: Option<Param<B>>,
    /// ERNIE's `[task_type_vocab, width]` task-type table where its config sets
    /// `use_task_id` ([`BertConfig::task_type_rows`]): row 0, the task id transformers
    /// gives when none is given, is added to every token. It trains with the embeddings.
    pub task_type: Option<Param<B>>,
    /// `embeddings.LayerNorm`.
    pub norm: LayerNorm<B>,
    /// ELECTRA's `embeddings_project` (`bert.embeddings_project` here), `[hidden, width]`,
    /// where the width is not the hidden size. It trains with the embeddings.
    pub project: Option<Linear<B>>,
    /// The padding token's id, whose row gets no gradient ([`BertConfig::padding_id`]); none
    /// where the config sets `pad_token_id` to null.
    padding_id: Option<usize>,
    /// The first token's position ([`BertConfig::first_position`]); RoBERTa's padding
    /// position, the one before, gets no gradient.
    first_position: usize,
}

impl<B: Backend> BertEmbeddings<B> {
    /// Loads the frozen embeddings under `prefix` (`bert.embeddings`), and the projection as
    /// `{prefix}_project` where the config has one.
    pub fn load(
        prefix: &str,
        c: &BertConfig,
        tensor: &mut dyn FnMut(&str, Shape) -> Result<Tensor<B>>,
    ) -> Result<Self> {
        let width = c.embedding_width();
        // A table of another width than `embedding_size` says is most often that setting
        // mistyped: the shape error alone would not say where the width comes from.
        let name_the_width = |e: Error| match e {
            Error::Format { path, detail } if c.family() == EncoderFamily::Electra => {
                Error::Format {
                    path,
                    detail: format!(
                        "{detail} (the embeddings' width is config.json's `embedding_size`, \
                         {width} here)"
                    ),
                }
            }
            other => other,
        };
        let mut tensor = |name: &str, shape: Shape| tensor(name, shape).map_err(name_the_width);
        let mut param = |name: &str, dims: [usize; 2]| -> Result<Param<B>> {
            let full = format!("{prefix}.{name}");
            Ok(Param::new(
                full.clone(),
                tensor(&full, Shape::new(dims))?,
                false,
            ))
        };
        let word = param("word_embeddings.weight", [c.vocab_size, width])?;
        let position = match c.has_position_table() {
            true => Some(param(
                "position_embeddings.weight",
                [c.max_position_embeddings, width],
            )?),
            false => None,
        };
        let token_type = match c.has_token_types() {
            true => Some(param(
                "token_type_embeddings.weight",
                [c.type_vocab_size, width],
            )?),
            false => None,
        };
        let task_type = match c.task_type_rows() {
            Some(rows) => Some(param("task_type_embeddings.weight", [rows, width])?),
            None => None,
        };
        let norm_name = format!("{prefix}.LayerNorm");
        let gamma = tensor(&format!("{norm_name}.weight"), Shape::new([width]))?;
        let beta = tensor(&format!("{norm_name}.bias"), Shape::new([width]))?;
        let project = match c.projects_embeddings() {
            true => {
                let name = format!("{prefix}_project");
                let h = c.hidden_size;
                Some(Linear::new(
                    &name,
                    tensor(&format!("{name}.weight"), Shape::new([h, width]))?,
                    tensor(&format!("{name}.bias"), Shape::new([h]))?,
                )?)
            }
            false => None,
        };
        Ok(BertEmbeddings {
            word,
            position,
            token_type,
            task_type,
            norm: LayerNorm::new(&norm_name, gamma, beta, c.layer_norm_eps),
            project,
            padding_id: c.padding_id(),
            first_position: c.first_position(),
        })
    }

    /// `[batch·seq, hidden]` embeddings of `input`.
    pub fn forward(
        &self,
        tape: &mut Tape<B>,
        input: &ModelInput<B>,
        dropouts: &mut DropoutPlan,
    ) -> Result<Var<B>> {
        let word = self.word.var(tape);

        // transformers' `padding_idx`: the padding token's row, and RoBERTa's padding
        // position, never train.
        let pad = self.padding_id;
        let mut sum = tape.embedding_with_padding(&word, &input.input_ids, pad)?;
        if let Some(position) = &self.position {
            let position = position.var(tape);
            let padding_position = (self.first_position > 0).then(|| self.first_position - 1);
            let p =
                tape.embedding_with_padding(&position, &input.position_ids, padding_position)?;
            sum = tape.add(&sum, &p)?;
        }
        if let Some(token_type) = &self.token_type {
            let table = token_type.var(tape);
            let t = tape.embedding(&table, &input.token_type_ids)?;
            sum = tape.add(&sum, &t)?;
        }
        if let Some(task_type) = &self.task_type {
            let table = task_type.var(tape);
            let rows = input.input_ids.shape().clone();
            let first_task = tape
                .backend()
                .tensor_from_u32(rows.clone(), &vec![0; rows.numel()])?;
            let t = tape.embedding(&table, &first_task)?;
            sum = tape.add(&sum, &t)?;
        }
        let normed = self.norm.forward(tape, &sum)?;
        let dropped = tape.dropout(&normed, dropouts.next_hidden())?;
        match &self.project {
            Some(project) => project.forward(tape, &dropped, dropouts),
            None => Ok(dropped),
        }
    }

    /// Every parameter.
    pub fn params(&self) -> Vec<&Param<B>> {
        let mut v = vec![&self.word];
        v.extend(&self.position);
        v.extend(&self.token_type);
        v.extend(&self.task_type);
        v.extend([&self.norm.weight, &self.norm.bias]);
        v.extend(self.project.iter().flat_map(Linear::params));
        v
    }

    /// Every parameter, mutably.
    pub fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        let mut v = vec![&mut self.word];
        v.extend(&mut self.position);
        v.extend(&mut self.token_type);
        v.extend(&mut self.task_type);
        v.extend([&mut self.norm.weight, &mut self.norm.bias]);
        v.extend(self.project.iter_mut().flat_map(Linear::params_mut));
        v
    }

    /// Stores a frozen projection's weight in `backend`'s frozen dtype (see
    /// [`crate::nn::Linear::store_frozen_weight`]); the tables are gathered, not multiplied.
    pub fn store_frozen_weights(&mut self, backend: &B) -> Result<()> {
        match &mut self.project {
            Some(project) => project.store_frozen_weight(backend),
            None => Ok(()),
        }
    }
}

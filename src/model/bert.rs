use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::checkpoint::{BertConfig, PoolerActivation};
use crate::error::{Error, Result};
use crate::nn::{DropoutPlan, EncoderLayer, EncoderLayerConfig, Linear, Param, ScoreBias};
use crate::tensor::{Shape, Tensor};

use super::{BertEmbeddings, ModelInput, RelativeEmbeddings};

/// Outputs of [`BertModel::forward`].
#[derive(Debug)]
pub struct BertOutput<B: Backend> {
    /// `[batch·seq, hidden]`.
    pub last_hidden_state: Var<B>,
    /// `tanh(W · h[CLS] + b)` (ELECTRA: GELU, DistilBERT: ReLU): `[batch, hidden]`.
    pub pooler_output: Var<B>,
}

/// The BERT encoder: embeddings, post-LN layers and the tanh pooler, parameters named as
/// in `BertForSequenceClassification` (`bert.…`). RoBERTa and ELECTRA checkpoints load into
/// it too (see [`crate::checkpoint::EncoderFamily`]): their `classifier.dense` is the pooler
/// here (ELECTRA's with GELU for tanh), ELECTRA's `embeddings_project` part of the
/// embeddings.
#[derive(Clone, Debug)]
pub struct BertModel<B: Backend> {
    /// Architecture.
    pub config: BertConfig,
    /// `bert.embeddings`.
    pub embeddings: BertEmbeddings<B>,
    /// `bert.encoder.layer.{i}`.
    pub layers: Vec<EncoderLayer<B>>,
    /// `bert.pooler.dense`.
    pub pooler: Linear<B>,
    /// MPNet's relative position table `[rows, heads]`
    /// (`bert.encoder.relative_attention_bias.weight`), shared by every layer; it trains
    /// under full fine-tuning only.
    pub relative_position: Option<Param<B>>,
    /// DeBERTa-v2's relative embeddings (`bert.encoder.rel_embeddings`, with their
    /// LayerNorm), shared by every layer's disentangled attention; they train under full
    /// fine-tuning only.
    pub relative_embeddings: Option<RelativeEmbeddings<B>>,
}

impl<B: Backend> BertModel<B> {
    /// Builds a frozen model, asking `tensor(name, shape)` for every Hugging Face tensor.
    pub fn load(
        config: &BertConfig,
        tensor: &mut dyn FnMut(&str, Shape) -> Result<Tensor<B>>,
    ) -> Result<Self> {
        Self::load_layer_by_layer(config, tensor, &mut |_, _| Ok(()))
    }

    /// [`BertModel::load`], handing each encoder layer to `loaded(index, layer)` as soon as it
    /// is whole, before the next one loads: a layer whose weights stay frozen can be stored
    /// compactly there, so that loading never holds every weight at full precision at once.
    pub(crate) fn load_layer_by_layer(
        config: &BertConfig,
        tensor: &mut dyn FnMut(&str, Shape) -> Result<Tensor<B>>,
        loaded: &mut dyn FnMut(usize, &mut EncoderLayer<B>) -> Result<()>,
    ) -> Result<Self> {
        // A config built in code has not been through `from_json`'s checks.
        config.validate()?;
        let embeddings = BertEmbeddings::load("bert.embeddings", config, tensor)?;
        let layer_config = EncoderLayerConfig {
            hidden: config.hidden_size,
            heads: config.num_attention_heads,
            intermediate: config.intermediate_size,
            layer_norm_eps: config.layer_norm_eps,
            dropout_after_attention_output: config.family().dropout_after_attention_output(),
            activation: config.feed_forward_activation(),
            attention_scale: config.deberta().map(|d| d.score_scale(config.head_dim())),
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let mut layer = EncoderLayer::load(
                    &format!("bert.encoder.layer.{i}"),
                    layer_config,
                    &mut *tensor,
                )?;
                loaded(i, &mut layer)?;
                Ok(layer)
            })
            .collect::<Result<Vec<_>>>()?;
        let relative_position = match config.relative_position_rows() {
            Some(rows) => {
                let name = "bert.encoder.relative_attention_bias.weight";
                let shape = Shape::new([rows, config.num_attention_heads]);
                Some(Param::new(name.to_string(), tensor(name, shape)?, false))
            }
            None => None,
        };
        let relative_embeddings = RelativeEmbeddings::load(config, tensor)?;
        let h = config.hidden_size;
        let pooler = Linear::new(
            "bert.pooler.dense",
            tensor("bert.pooler.dense.weight", Shape::new([h, h]))?,
            tensor("bert.pooler.dense.bias", Shape::new([h]))?,
        )?;
        Ok(BertModel {
            config: config.clone(),
            embeddings,
            layers,
            pooler,
            relative_position,
            relative_embeddings,
        })
    }

    /// The encoder on the tape. Nodes are scoped `embeddings`, `layer.{i}`, `pooler`.
    pub fn forward(
        &self,
        tape: &mut Tape<B>,
        input: &ModelInput<B>,
        dropouts: &mut DropoutPlan,
    ) -> Result<BertOutput<B>> {
        let hidden = self.encode(tape, input, dropouts, None)?;
        tape.set_scope("pooler");
        let first = tape.embedding(&hidden, &input.first_tokens)?;
        let pooler_output = self.pool(tape, &first, dropouts)?;
        Ok(BertOutput {
            last_hidden_state: hidden,
            pooler_output,
        })
    }

    /// `tanh(W · h[CLS] + b)` (ELECTRA: GELU) `[batch, hidden]` alone, without the rest of the last hidden
    /// state: the last layer runs only on the `[CLS]` rows (see
    /// [`EncoderLayer::forward_at_rows`]), which a classifier's step spends a good part of
    /// its multiply-adds on in [`BertModel::forward`] for rows nothing reads.
    pub fn forward_pooled(
        &self,
        tape: &mut Tape<B>,
        input: &ModelInput<B>,
        dropouts: &mut DropoutPlan,
    ) -> Result<Var<B>> {
        let hidden = self.encode(tape, input, dropouts, Some(&input.first_tokens))?;
        tape.set_scope("pooler");
        // Without layers nothing ran at the `[CLS]` rows: the embeddings hold every row.
        let first = if self.layers.is_empty() {
            tape.embedding(&hidden, &input.first_tokens)?
        } else {
            hidden
        };
        self.pool(tape, &first, dropouts)
    }

    /// Embeddings and layers; the last layer's output only at `last_layer_rows` when given.
    fn encode(
        &self,
        tape: &mut Tape<B>,
        input: &ModelInput<B>,
        dropouts: &mut DropoutPlan,
        last_layer_rows: Option<&Tensor<B>>,
    ) -> Result<Var<B>> {
        // A model built on a backend of another float dtype would run every op in its own
        // (f32 weights on an f64 tape give f32 logits, not the f64 reference asked for).
        let bias = &self.embeddings.norm.bias;
        let computes = tape.backend().float_dtype();
        if bias.value.dtype() != computes {
            return Err(Error::dtype(
                "bert",
                format!(
                    "`{}` is {} but {} computes in {computes}: build the model on the backend \
                     that runs it",
                    bias.name,
                    bias.value.dtype(),
                    tape.backend().name()
                ),
            ));
        }
        if input.first_position() != self.config.first_position() {
            return Err(Error::invalid(
                "bert",
                format!(
                    "the inputs number positions from {} but this {} model from {}: build them \
                     with `ModelInput::for_model`",
                    input.first_position(),
                    self.config.family().display(),
                    self.config.first_position()
                ),
            ));
        }
        if input.seq > self.config.max_tokens() {
            return Err(Error::invalid(
                "bert",
                format!(
                    "sequence length {} exceeds the model's {} positions",
                    input.seq,
                    self.config.max_tokens()
                ),
            ));
        }
        tape.set_scope("embeddings");
        let mut hidden = self.embeddings.forward(tape, input, dropouts)?;
        // Computed once, as transformers does, and read by every layer.
        let position_bias = match &self.relative_position {
            Some(table) => Some(super::position_bias(tape, table, input.seq)?),
            None => None,
        };
        let band = match &self.relative_embeddings {
            Some(relative) => Some(relative.band(tape, input.seq)?),
            None => None,
        };
        let terms = self.config.deberta();
        let bias = match (&position_bias, &band, terms) {
            (Some(bias), _, _) => ScoreBias::Position(bias),
            (None, Some(band), Some(terms)) => ScoreBias::Disentangled {
                embeddings: &band.embeddings,
                rows: &band.rows,
                c2p: terms.c2p,
                p2c: terms.p2c,
            },
            _ => ScoreBias::None,
        };
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            tape.set_scope(&format!("layer.{i}"));
            let rows = last_layer_rows.filter(|_| i == last);
            let mask = &input.attention_mask;
            hidden = layer.forward_rows(tape, &hidden, mask, bias, dropouts, rows)?;
        }
        Ok(hidden)
    }

    /// The pooler on the `[CLS]` rows `first`; RoBERTa's and ELECTRA's heads (whose dense map
    /// is the pooler here) drop out its input first, with the classifier's dropout;
    /// ELECTRA's activation is GELU, DistilBERT's ReLU.
    fn pool(
        &self,
        tape: &mut Tape<B>,
        first: &Var<B>,
        dropouts: &mut DropoutPlan,
    ) -> Result<Var<B>> {
        let family = self.config.family();
        let pooled = if family.dropout_before_pooler() {
            let dropped = tape.dropout(first, dropouts.next_pooler_input())?;
            self.pooler.forward(tape, &dropped, dropouts)?
        } else {
            self.pooler.forward(tape, first, dropouts)?
        };
        match self.config.pooler_activation() {
            PoolerActivation::Tanh => tape.tanh(&pooled),
            PoolerActivation::Gelu => tape.gelu(&pooled),
            PoolerActivation::Relu => tape.relu(&pooled),
        }
    }

    /// Every parameter, in checkpoint order.
    pub fn params(&self) -> Vec<&Param<B>> {
        let mut v = self.embeddings.params();
        for layer in &self.layers {
            v.extend(layer.params());
        }
        v.extend(&self.relative_position);
        v.extend(
            self.relative_embeddings
                .iter()
                .flat_map(RelativeEmbeddings::params),
        );
        v.extend(self.pooler.params());
        v
    }

    /// Every parameter, mutably.
    pub fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        let mut v = self.embeddings.params_mut();
        for layer in &mut self.layers {
            v.extend(layer.params_mut());
        }
        v.extend(&mut self.relative_position);
        v.extend(
            self.relative_embeddings
                .iter_mut()
                .flat_map(RelativeEmbeddings::params_mut),
        );
        v.extend(self.pooler.params_mut());
        v
    }
}

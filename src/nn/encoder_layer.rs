use super::{DropoutPlan, LayerNorm, Linear, LoraConfig, LoraTarget, Param, Stratum};
use crate::autograd::{Tape, Var};
use crate::backend::{AttentionConfig, Backend};
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};

/// Sizes of a BERT encoder layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EncoderLayerConfig {
    /// Hidden size.
    pub hidden: usize,
    /// Attention heads (must divide `hidden`).
    pub heads: usize,
    /// FFN inner size.
    pub intermediate: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Whether the attention's output map is dropped out before the residual add (BERT's
    /// `attention.output.dropout`; DistilBERT's layer has none).
    pub dropout_after_attention_output: bool,
    /// The feed-forward's activation (`hidden_act`, DistilBERT's `activation`).
    pub activation: FeedForwardActivation,
    /// The factor on the attention scores where it is not `1/√head_dim` (DeBERTa-v2's
    /// `1/√(head_dim · terms)`).
    pub attention_scale: Option<f64>,
}

/// What a layer's attention adds to its scores.
#[derive(Debug)]
pub enum ScoreBias<'a, B: Backend> {
    /// Nothing: BERT's attention.
    None,
    /// MPNet's relative position bias `[2·seq − 1, heads]` ([`crate::model::position_bias`]).
    Position(&'a Var<B>),
    /// DeBERTa-v2's relative embeddings `[rows, hidden]` and the row each (query, key) pair
    /// reads (`[seq, seq]`): the content-to-position term maps them with the layer's key
    /// map, the position-to-content term with its query map.
    Disentangled {
        /// The band of relative embeddings the batch reads.
        embeddings: &'a Var<B>,
        /// `[seq, seq]` `U32`.
        rows: &'a Tensor<B>,
        /// Whether the content-to-position term is added.
        c2p: bool,
        /// Whether the position-to-content term is added.
        p2c: bool,
    },
}

// Written out: a derive would ask the backend itself to be `Copy`.
impl<B: Backend> Clone for ScoreBias<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for ScoreBias<'_, B> {}

/// The activation between a layer's two feed-forward maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedForwardActivation {
    /// The exact (erf) GELU: `gelu`, `gelu_python`.
    Gelu,
    /// `max(x, 0)`: `relu`.
    Relu,
}

/// One post-LN BERT layer:
/// `h = LN(x + drop(O(attn(Q x, K x, V x))))`, `y = LN(h + drop(W2 · gelu(W1 h)))`.
/// Parameter names follow Hugging Face under `prefix` (e.g. `encoder.layer.3`).
#[derive(Clone, Debug)]
pub struct EncoderLayer<B: Backend> {
    /// Sizes.
    pub config: EncoderLayerConfig,
    /// `attention.self.query`.
    pub query: Linear<B>,
    /// `attention.self.key`.
    pub key: Linear<B>,
    /// `attention.self.value`.
    pub value: Linear<B>,
    /// `attention.output.dense`.
    pub attention_output: Linear<B>,
    /// `attention.output.LayerNorm`.
    pub attention_norm: LayerNorm<B>,
    /// `intermediate.dense`.
    pub intermediate: Linear<B>,
    /// `output.dense`.
    pub output: Linear<B>,
    /// `output.LayerNorm`.
    pub output_norm: LayerNorm<B>,
    stratum: Stratum,
}

impl<B: Backend> EncoderLayer<B> {
    /// Builds a frozen layer, asking `tensor(name, shape)` for each Hugging Face tensor.
    pub fn load(
        prefix: &str,
        config: EncoderLayerConfig,
        mut tensor: impl FnMut(&str, Shape) -> Result<Tensor<B>>,
    ) -> Result<Self> {
        let (h, i) = (config.hidden, config.intermediate);
        if config.heads == 0 || h % config.heads != 0 {
            return Err(Error::invalid(
                "encoder layer",
                format!("hidden size {h} is not divisible by {} heads", config.heads),
            ));
        }
        let mut linear = |module: &str, out: usize, inp: usize| -> Result<Linear<B>> {
            let name = format!("{prefix}.{module}");
            let w = tensor(&format!("{name}.weight"), Shape::new([out, inp]))?;
            let b = tensor(&format!("{name}.bias"), Shape::new([out]))?;
            Linear::new(&name, w, b)
        };
        let query = linear("attention.self.query", h, h)?;
        let key = linear("attention.self.key", h, h)?;
        let value = linear("attention.self.value", h, h)?;
        let attention_output = linear("attention.output.dense", h, h)?;
        let intermediate = linear("intermediate.dense", i, h)?;
        let output = linear("output.dense", h, i)?;
        let mut norm = |module: &str| -> Result<LayerNorm<B>> {
            let name = format!("{prefix}.{module}");
            let g = tensor(&format!("{name}.weight"), Shape::new([h]))?;
            let b = tensor(&format!("{name}.bias"), Shape::new([h]))?;
            Ok(LayerNorm::new(&name, g, b, config.layer_norm_eps))
        };
        let attention_norm = norm("attention.output.LayerNorm")?;
        let output_norm = norm("output.LayerNorm")?;
        Ok(EncoderLayer {
            config,
            query,
            key,
            value,
            attention_output,
            attention_norm,
            intermediate,
            output,
            output_norm,
            stratum: Stratum::Frozen,
        })
    }

    /// The layer's stratum.
    pub fn stratum(&self) -> Stratum {
        self.stratum
    }

    /// The linear map a LoRA target names.
    pub fn linear(&self, target: LoraTarget) -> &Linear<B> {
        match target {
            LoraTarget::Query => &self.query,
            LoraTarget::Key => &self.key,
            LoraTarget::Value => &self.value,
            LoraTarget::AttentionOutput => &self.attention_output,
            LoraTarget::Intermediate => &self.intermediate,
            LoraTarget::Output => &self.output,
        }
    }

    /// The linear map a LoRA target names, mutably.
    pub fn linear_mut(&mut self, target: LoraTarget) -> &mut Linear<B> {
        match target {
            LoraTarget::Query => &mut self.query,
            LoraTarget::Key => &mut self.key,
            LoraTarget::Value => &mut self.value,
            LoraTarget::AttentionOutput => &mut self.attention_output,
            LoraTarget::Intermediate => &mut self.intermediate,
            LoraTarget::Output => &mut self.output,
        }
    }

    /// Puts the layer in `stratum`: sets which tensors train and, for LoRA strata, attaches
    /// adapters to `lora.targets` with `A`, `B` from `init(name, shape)` (removing any
    /// others), each of the rank and alpha `lora` gives it as encoder layer `index`.
    pub fn set_stratum(
        &mut self,
        index: usize,
        stratum: Stratum,
        lora: Option<&LoraConfig>,
        mut init: impl FnMut(&str, Shape) -> Result<Tensor<B>>,
    ) -> Result<()> {
        // A weight stored compactly as frozen (bf16) has lost the precision a master copy
        // needs: training it would update the rounded values.
        if stratum.trains_weights() {
            for target in LoraTarget::ALL {
                let lin = self.linear(target);
                if lin.weight.value.dtype() != lin.bias.value.dtype() {
                    return Err(Error::dtype(
                        "stratum",
                        format!(
                            "`{}` is stored in {} as a frozen weight, so a {} stratum cannot \
                             train it: load the model for the plan that trains it \
                             (`BertClassifier::from_checkpoint_for_plan`)",
                            lin.weight.name,
                            lin.weight.value.dtype(),
                            stratum.name()
                        ),
                    ));
                }
            }
        }
        for target in LoraTarget::ALL {
            self.linear_mut(target).lora = None;
        }
        if stratum.has_lora() {
            let cfg = lora.ok_or_else(|| {
                Error::invalid("stratum", format!("{stratum:?} needs a LoRA configuration"))
            })?;
            cfg.validate()?;
            for &target in cfg.targets.iter().filter(|&&t| !cfg.leaves_out(index, t)) {
                let (rank, alpha) = cfg.rank_and_alpha(index, target);
                let lin = self.linear_mut(target);
                let (out, inp) = lin.out_in();
                let prefix = lin.prefix.clone();
                // Beyond min(out, in) a rank adds parameters and memory but no expressive
                // power; refusing it also stops a mistyped rank from exhausting memory.
                if rank > out.min(inp) {
                    return Err(Error::invalid(
                        "lora config",
                        format!(
                            "rank r = {rank} exceeds {} (the smaller side of `{prefix}`, [{out}, {inp}])",
                            out.min(inp)
                        ),
                    ));
                }
                // An initialiser is the caller's code: what it returns must be what the
                // layer computes with, or the model trains nothing and saves an adapter that
                // no load accepts.
                let dtype = lin.bias.value.dtype();
                let mut init_checked = |name: &str, dims: [usize; 2]| -> Result<Tensor<B>> {
                    let t = init(&format!("{prefix}.{name}.weight"), Shape::new(dims))?;
                    if t.dims() != dims {
                        return Err(Error::shape(
                            "lora init",
                            format!(
                                "`{prefix}.{name}.weight` was initialised as {} but must be {:?}",
                                t.shape(),
                                dims
                            ),
                        ));
                    }
                    if t.dtype() != dtype {
                        return Err(Error::dtype(
                            "lora init",
                            format!(
                                "`{prefix}.{name}.weight` was initialised as {} but the layer \
                                 computes in {dtype}",
                                t.dtype()
                            ),
                        ));
                    }
                    Ok(t)
                };
                let a = init_checked("lora_A", [rank, inp])?;
                let b = init_checked("lora_B", [out, rank])?;
                lin.attach_lora(a, b, alpha / rank as f64);
                if cfg.dora {
                    let name = format!("{prefix}.lora_magnitude_vector");
                    let m = init(&name, Shape::new([out]))?;
                    if m.dtype() != dtype {
                        return Err(Error::dtype(
                            "lora init",
                            format!(
                                "`{name}` was initialised as {} but the layer computes in {dtype}",
                                m.dtype()
                            ),
                        ));
                    }
                    lin.attach_dora(m)?;
                }
            }
        }
        for target in LoraTarget::ALL {
            let lin = self.linear_mut(target);
            lin.weight.trainable = stratum.trains_weights();
            lin.bias.trainable = stratum.trains_biases();
        }
        for norm in [&mut self.attention_norm, &mut self.output_norm] {
            norm.weight.trainable = stratum.trains_weights();
            norm.bias.trainable = stratum.trains_biases();
        }
        self.stratum = stratum;
        Ok(())
    }

    /// The layer on the tape; `x` is `[batch·seq, hidden]`, `mask` `[batch, seq]`.
    pub fn forward(
        &self,
        tape: &mut Tape<B>,
        x: &Var<B>,
        mask: &Tensor<B>,
        dropouts: &mut DropoutPlan,
    ) -> Result<Var<B>> {
        self.forward_rows(tape, x, mask, ScoreBias::None, dropouts, None)
    }

    /// The layer's output at rows `rows` of `x` only (`[rows.len(), hidden]`). Every token
    /// still serves as a key and value, but the attention output map, both LayerNorms and the
    /// FFN — three quarters of the layer's multiply-adds — run on the kept rows alone: the
    /// last layer of a classifier, whose pooler reads only the `[CLS]` rows. The kept rows
    /// are the same numbers as in [`EncoderLayer::forward`]'s output, up to rounding, except
    /// that dropout draws its masks over the smaller tensors.
    pub fn forward_at_rows(
        &self,
        tape: &mut Tape<B>,
        x: &Var<B>,
        mask: &Tensor<B>,
        dropouts: &mut DropoutPlan,
        rows: &Tensor<B>,
    ) -> Result<Var<B>> {
        self.forward_rows(tape, x, mask, ScoreBias::None, dropouts, Some(rows))
    }

    /// [`EncoderLayer::forward`], or [`EncoderLayer::forward_at_rows`] where `rows` are given,
    /// with `bias` added to the attention scores (MPNet's relative position bias,
    /// DeBERTa-v2's disentangled terms).
    pub fn forward_rows(
        &self,
        tape: &mut Tape<B>,
        x: &Var<B>,
        mask: &Tensor<B>,
        bias: ScoreBias<'_, B>,
        dropouts: &mut DropoutPlan,
        rows: Option<&Tensor<B>>,
    ) -> Result<Var<B>> {
        // Only attention reads them, and it rounds them for its products.
        let q = self.query.forward_for_products(tape, x, dropouts)?;
        let k = self.key.forward_for_products(tape, x, dropouts)?;
        let v = self.value.forward_for_products(tape, x, dropouts)?;
        let head_dim = self
            .config
            .hidden
            .checked_div(self.config.heads)
            .ok_or_else(|| {
                Error::invalid(
                    "attention",
                    "the layer's config has 0 heads (`config.heads`)",
                )
            })?;
        let scale = self
            .config
            .attention_scale
            .unwrap_or(1.0 / (head_dim as f64).sqrt());
        // transformers maps the relative embeddings (dropped out in each layer, with the
        // hidden states' rate) after the tokens and before the attention's dropout.
        let relative = match bias {
            ScoreBias::Disentangled {
                embeddings,
                c2p,
                p2c,
                ..
            } => {
                let dropped = tape.dropout(embeddings, dropouts.next_hidden())?;
                let key = match c2p {
                    true => Some(self.key.forward_for_products(tape, &dropped, dropouts)?),
                    false => None,
                };
                let query = match p2c {
                    true => Some(self.query.forward_for_products(tape, &dropped, dropouts)?),
                    false => None,
                };
                (key, query)
            }
            _ => (None, None),
        };
        let attention = AttentionConfig {
            heads: self.config.heads,
            scale,
            dropout: dropouts.next_attention(),
        };
        let context = match bias {
            ScoreBias::None => tape.attention(&q, &k, &v, mask, attention)?,
            ScoreBias::Position(bias) => {
                tape.attention_with_position_bias(&q, &k, &v, mask, bias, attention)?
            }
            ScoreBias::Disentangled { rows: pairs, .. } => tape.attention_disentangled(
                &q,
                &k,
                &v,
                mask,
                relative.0.as_ref(),
                relative.1.as_ref(),
                pairs,
                attention,
            )?,
        };
        let (context, x) = match rows {
            Some(rows) => (tape.embedding(&context, rows)?, tape.embedding(x, rows)?),
            None => (context, x.clone()),
        };
        let a = self.attention_output.forward(tape, &context, dropouts)?;
        let a = match self.config.dropout_after_attention_output {
            true => tape.dropout(&a, dropouts.next_hidden())?,
            false => a,
        };
        let a = tape.add(&a, &x)?;
        let h = self.attention_norm.forward(tape, &a)?;
        let f = self.intermediate.forward(tape, &h, dropouts)?;
        let f = match self.config.activation {
            // Nothing else reads the pre-activation where it is not recorded.
            FeedForwardActivation::Gelu => tape.gelu_owned(f)?,
            FeedForwardActivation::Relu => tape.relu(&f)?,
        };
        let f = self.output.forward(tape, &f, dropouts)?;
        let f = tape.dropout(&f, dropouts.next_hidden())?;
        let f = tape.add(&f, &h)?;
        self.output_norm.forward(tape, &f)
    }

    /// Every parameter of the layer, adapters included.
    pub fn params(&self) -> Vec<&Param<B>> {
        let mut v = Vec::new();
        for target in LoraTarget::ALL {
            v.extend(self.linear(target).params());
        }
        for norm in [&self.attention_norm, &self.output_norm] {
            v.extend([&norm.weight, &norm.bias]);
        }
        v
    }

    /// Stores the frozen weights of the six linear maps compactly (see
    /// [`Linear::store_frozen_weight`]).
    pub fn store_frozen_weights(&mut self, backend: &B) -> Result<()> {
        for l in [
            &mut self.query,
            &mut self.key,
            &mut self.value,
            &mut self.attention_output,
            &mut self.intermediate,
            &mut self.output,
        ] {
            l.store_frozen_weight(backend)?;
        }
        Ok(())
    }

    /// Every parameter, mutably (for optimizer updates).
    pub fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        let mut v = Vec::new();
        v.extend(self.query.params_mut());
        v.extend(self.key.params_mut());
        v.extend(self.value.params_mut());
        v.extend(self.attention_output.params_mut());
        v.extend(self.intermediate.params_mut());
        v.extend(self.output.params_mut());
        for norm in [&mut self.attention_norm, &mut self.output_norm] {
            v.extend([&mut norm.weight, &mut norm.bias]);
        }
        v
    }
}

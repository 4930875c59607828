//! DeBERTa-v2's settings (`model_type: "deberta-v2"`, which DeBERTa-v3's checkpoints use
//! too), read as transformers 5.24's `DebertaV2Config` and modules read them.
//!
//! DeBERTa's layer is BERT's post-LN layer; its attention adds, where `relative_attention`
//! is set, the disentangled terms of `pos_att_type` to every score: content-to-position
//! (`c2p`: the query against the key map of the relative distance's embedding) and
//! position-to-content (`p2c`: the key against the query map of it), the three terms scaled
//! together by `1/√(d·(1 + terms))`. The relative embeddings are one table the layers share
//! (`deberta.encoder.rel_embeddings`, layer-normalised by `deberta.encoder.LayerNorm` where
//! `norm_rel_ebd` says `layer_norm`), projected by each layer's own query and key maps
//! (`share_att_key`). See `crate::model::disentangled_position` for the distances' buckets.

use serde::Deserialize;
use serde_json::Value;

use super::PoolerActivation;

/// DeBERTa-v2's own keys of config.json as the file writes them, read for that family alone
/// (transformers ignores them elsewhere); `null` reads as absent.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct DebertaKeys {
    /// Whether attention adds the disentangled terms (transformers' default: false).
    #[serde(default)]
    pub relative_attention: Option<Value>,
    /// `["p2c", "c2p"]`, or a string `"p2c|c2p"`.
    #[serde(default)]
    pub pos_att_type: Option<Value>,
    /// Buckets of the logarithmic relative distances (`-1`: exact distances).
    #[serde(default)]
    pub position_buckets: Option<Value>,
    /// The farthest distance told apart (`-1`: `max_position_embeddings`).
    #[serde(default)]
    pub max_relative_positions: Option<Value>,
    /// Whether the relative embeddings go through the layers' own query and key maps.
    #[serde(default)]
    pub share_att_key: Option<Value>,
    /// `layer_norm` (or `none`) on the relative embeddings.
    #[serde(default)]
    pub norm_rel_ebd: Option<Value>,
    /// Whether the embeddings add a position table (transformers' default: true).
    #[serde(default)]
    pub position_biased_input: Option<Value>,
    /// DeBERTa-v2-xlarge's convolution after the first layer.
    #[serde(default)]
    pub conv_kernel_size: Option<Value>,
    /// The context pooler's width.
    #[serde(default)]
    pub pooler_hidden_size: Option<Value>,
    /// The context pooler's activation (transformers' default: `gelu`).
    #[serde(default)]
    pub pooler_hidden_act: Option<Value>,
    /// Dropout on the `[CLS]` row before the context pooler (default 0).
    #[serde(default)]
    pub pooler_dropout: Option<Value>,
    /// Dropout before the classifier (`hidden_dropout_prob` where absent).
    #[serde(default)]
    pub cls_dropout: Option<Value>,
    /// Features per head, where they are not `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub attention_head_size: Option<Value>,
}

/// What a DeBERTa-v2 config makes of its attention, embeddings and head.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DebertaSettings {
    /// Whether the scores add the content-to-position term.
    pub c2p: bool,
    /// Whether the scores add the position-to-content term.
    pub p2c: bool,
    /// The relative positions, where `relative_attention` is set.
    pub relative: Option<RelativePositions>,
    /// Whether the embeddings add the absolute position table.
    pub position_biased_input: bool,
    /// The context pooler's activation.
    pub pooler_activation: PoolerActivation,
    /// Dropout on the `[CLS]` row before the context pooler.
    pub pooler_dropout: f64,
    /// Dropout before the classifier, where the config sets one apart from the hidden one.
    pub cls_dropout: Option<f64>,
}

/// The relative distances DeBERTa's attention tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelativePositions {
    /// transformers' `att_span` (`pos_ebd_size`): distances map to rows `span + bucket`,
    /// clamped to `[0, 2·span)`.
    pub span: usize,
    /// `(position_buckets, max_relative_positions)` where distances are bucketed
    /// logarithmically beyond half the buckets; `None` for exact distances.
    pub buckets: Option<(usize, usize)>,
    /// Whether the relative embeddings are layer-normalised (`norm_rel_ebd`).
    pub normalised: bool,
}

impl RelativePositions {
    /// Rows of `rel_embeddings`: `2·span`.
    pub fn table_rows(&self) -> usize {
        2 * self.span
    }
}

impl DebertaSettings {
    /// The terms in the scores (1 + `c2p` + `p2c`): transformers scales them all by
    /// `1/√(head_dim · terms)`, counting the listed terms whether or not
    /// `relative_attention` computes them.
    pub fn score_terms(&self) -> usize {
        1 + usize::from(self.c2p) + usize::from(self.p2c)
    }

    /// The factor on every score: `1/√(head_dim · terms)` with the root taken in f32, as
    /// transformers' `scaled_size_sqrt` takes it (whatever the model's dtype).
    pub fn score_scale(&self, head_dim: usize) -> f64 {
        let root = ((head_dim as f32) * self.score_terms() as f32).sqrt();
        1.0 / root as f64
    }

    /// Whether the layers add disentangled terms at all.
    pub fn disentangles(&self) -> bool {
        self.relative.is_some() && (self.c2p || self.p2c)
    }
}

/// A non-negative integer key, or `default` where absent.
fn integer(keys: &Option<Value>, key: &str, default: i64) -> Result<i64, String> {
    match keys {
        None => Ok(default),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| format!("`{key}` is {v}, where DeBERTa-v2 takes an integer")),
    }
}

fn boolean(keys: &Option<Value>, key: &str, default: bool) -> Result<bool, String> {
    match keys {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| format!("`{key}` is {v}, where DeBERTa-v2 takes true or false")),
    }
}

fn probability(keys: &Option<Value>, key: &str) -> Result<Option<f64>, String> {
    match keys {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(p) if (0.0..1.0).contains(&p) => Ok(Some(p)),
            _ => Err(format!("`{key}` must be in [0, 1), got {v}")),
        },
    }
}

/// `|`-separated names (`"p2c|c2p"`), lower-cased as transformers splits them; a list is
/// taken as it is.
fn names(keys: &Option<Value>, key: &str) -> Result<Vec<String>, String> {
    match keys {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s
            .to_lowercase()
            .split('|')
            .map(|n| n.trim().to_string())
            .collect()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item.as_str() {
                Some(s) => Ok(s.to_string()),
                None => Err(format!(
                    "`{key}` holds {item}, where DeBERTa-v2 takes names"
                )),
            })
            .collect(),
        Some(v) => Err(format!(
            "`{key}` is {v}, where DeBERTa-v2 takes a list of names"
        )),
    }
}

impl DebertaKeys {
    /// The settings these keys give a model of `hidden` features in `heads` heads and
    /// `max_positions` positions, or why spafit cannot run it.
    pub fn settings(
        &self,
        hidden: usize,
        heads: usize,
        max_positions: usize,
    ) -> Result<DebertaSettings, String> {
        let relative_attention = boolean(&self.relative_attention, "relative_attention", false)?;
        // transformers tests membership only: other names (v1's `p2p`) are ignored.
        let terms = names(&self.pos_att_type, "pos_att_type")?;
        let (c2p, p2c) = (
            terms.iter().any(|t| t == "c2p"),
            terms.iter().any(|t| t == "p2c"),
        );
        let buckets = integer(&self.position_buckets, "position_buckets", -1)?;
        let mut max_relative = integer(&self.max_relative_positions, "max_relative_positions", -1)?;
        if max_relative < 1 {
            max_relative = max_positions as i64;
        }
        // transformers lower-cases and splits a string; anything else fails there.
        if let Some(v) = self.norm_rel_ebd.as_ref().filter(|v| !v.is_string()) {
            return Err(format!(
                "`norm_rel_ebd` is {v}, where DeBERTa-v2 takes a string (`layer_norm`, `none`)"
            ));
        }
        let norm = names(&self.norm_rel_ebd, "norm_rel_ebd")?;
        let relative = if relative_attention {
            // transformers divides by half the buckets (`make_log_bucket_position`).
            if buckets == 1 {
                return Err(
                    "`position_buckets` is 1: transformers divides by half the buckets, 0 \
                     (give 2 or more, or -1 for exact distances)"
                        .into(),
                );
            }
            // At `max_relative_positions − 1` equal to half the buckets (in f32), the
            // logarithm's range is ln 1 = 0 and transformers' buckets divide by it.
            if buckets > 0 {
                let range = ((max_relative - 1) as f64 / (buckets / 2) as f64) as f32;
                if range == 1.0 {
                    return Err(format!(
                        "`max_relative_positions` {max_relative} is one past half of \
                         `position_buckets` {buckets}: transformers' logarithmic buckets then \
                         divide by ln 1 = 0"
                    ));
                }
            }
            let (span, key) = match buckets > 0 {
                true => (buckets, "position_buckets"),
                false => (max_relative, "max_relative_positions"),
            };
            let span = usize::try_from(span)
                .ok()
                .filter(|&s| {
                    s.checked_mul(2 * hidden)
                        .is_some_and(|n| n <= isize::MAX as usize / 8)
                })
                .ok_or_else(|| {
                    format!("`{key}` {span} gives no table of relative embeddings memory can hold")
                })?;
            Some(RelativePositions {
                span,
                buckets: (buckets > 0).then_some((buckets as usize, max_relative as usize)),
                normalised: norm.iter().any(|n| n == "layer_norm"),
            })
        } else {
            None
        };
        if relative.is_some()
            && (c2p || p2c)
            && !boolean(&self.share_att_key, "share_att_key", false)?
        {
            return Err(
                "`share_att_key` is not true: the relative embeddings then go through maps of \
                 their own (`pos_key_proj`, `pos_query_proj`, DeBERTa-v2's first checkpoints), \
                 which spafit does not run; DeBERTa-v2 and -v3 checkpoints set it true"
                    .into(),
            );
        }
        if integer(&self.conv_kernel_size, "conv_kernel_size", 0)? > 0 {
            return Err(
                "`conv_kernel_size` is set: the convolution after the first layer \
                 (DeBERTa-v2-xlarge's) is not run by spafit"
                    .into(),
            );
        }
        let pooler_width = integer(
            &self.pooler_hidden_size,
            "pooler_hidden_size",
            hidden as i64,
        )?;
        if pooler_width != hidden as i64 {
            return Err(format!(
                "`pooler_hidden_size` {pooler_width} is not `hidden_size` {hidden}: the \
                 context pooler maps the hidden state to itself"
            ));
        }
        let head_dim = hidden.checked_div(heads).unwrap_or(0);
        if let Some(size) = &self.attention_head_size {
            if size.as_u64() != Some(head_dim as u64) {
                return Err(format!(
                    "`attention_head_size` is {size}, not `hidden_size / num_attention_heads` \
                     ({head_dim}), which spafit's attention takes"
                ));
            }
        }
        let pooler_activation = match &self.pooler_hidden_act {
            None => PoolerActivation::Gelu,
            Some(Value::String(a)) if a == "gelu" || a == "gelu_python" => PoolerActivation::Gelu,
            Some(Value::String(a)) if a == "tanh" => PoolerActivation::Tanh,
            Some(Value::String(a)) if a == "relu" => PoolerActivation::Relu,
            Some(v) => {
                return Err(format!(
                    "`pooler_hidden_act` is {v}; spafit runs `gelu`, `tanh` and `relu` there"
                ))
            }
        };
        Ok(DebertaSettings {
            c2p,
            p2c,
            relative,
            position_biased_input: boolean(
                &self.position_biased_input,
                "position_biased_input",
                true,
            )?,
            pooler_activation,
            pooler_dropout: probability(&self.pooler_dropout, "pooler_dropout")?.unwrap_or(0.0),
            cls_dropout: probability(&self.cls_dropout, "cls_dropout")?,
        })
    }
}

//! Building blocks of a BERT encoder on the tape: parameters with Hugging Face names,
//! linear maps with optional LoRA adapters, layernorm, the post-LN encoder layer, and the
//! stratum that decides which of a layer's tensors train.

mod dora;
mod dropout_plan;
mod encoder_layer;
mod layer_norm;
mod linear;
mod param;
mod stratum;

pub use dora::DoraMagnitude;
pub use dropout_plan::DropoutPlan;
pub use encoder_layer::{EncoderLayer, EncoderLayerConfig, FeedForwardActivation, ScoreBias};
pub use layer_norm::LayerNorm;
pub use linear::{Linear, LoraAdapter};
pub use param::{trainable_names, Param};
pub use stratum::{LoraConfig, LoraFields, LoraOverride, LoraSite, LoraTarget, Stratum};

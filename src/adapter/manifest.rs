use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::{LoraConfig, Stratum};
use crate::peft::{Method, PeftPlan};

/// `adapter.json`: everything needed to rebuild the plan and check the base.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterManifest {
    /// Always `spafit-adapter`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// `full`, `bitfit`, `lora` or `spafit`.
    pub method: String,
    /// Stratum of each layer: `frozen`, `bias_only`, `lora_and_bias`, `lora_only`, `full`.
    pub strata: Vec<String>,
    /// SPAFIT's boundaries.
    pub boundaries: Option<(usize, usize)>,
    /// Adapter settings.
    pub lora: Option<LoraConfig>,
    /// Whether the embeddings trained.
    pub train_embeddings: bool,
    /// Whether the pooler trained.
    pub train_pooler: bool,
    /// Whether LayerNorm scales trained.
    pub train_layer_norm_weights: bool,
    /// Head outputs.
    pub num_labels: usize,
    /// Class names in id order (classification).
    pub labels: Option<Vec<String>>,
    /// SHA-256 of the base `model.safetensors`.
    pub base_model_sha256: String,
    /// SHA-256 of `adapter.safetensors`, so a torn pair of files is detected.
    pub weights_sha256: String,
    /// Names of the stored tensors.
    pub tensors: Vec<String>,
}

pub(crate) fn stratum_name(s: Stratum) -> &'static str {
    match s {
        Stratum::Frozen => "frozen",
        Stratum::BiasOnly => "bias_only",
        Stratum::LoraAndBias => "lora_and_bias",
        Stratum::LoraOnly => "lora_only",
        Stratum::Full => "full",
    }
}

fn parse_stratum(s: &str) -> Option<Stratum> {
    [
        Stratum::Frozen,
        Stratum::BiasOnly,
        Stratum::LoraAndBias,
        Stratum::LoraOnly,
        Stratum::Full,
    ]
    .into_iter()
    .find(|&x| stratum_name(x) == s)
}

impl AdapterManifest {
    /// The manifest part that describes `plan`.
    pub(crate) fn describe(plan: &PeftPlan) -> (String, Vec<String>, Option<LoraConfig>) {
        let lora = plan.lora.clone();
        (
            plan.method.to_string(),
            plan.strata
                .iter()
                .map(|&s| stratum_name(s).to_string())
                .collect(),
            lora,
        )
    }

    /// The plan this adapter was trained with.
    pub fn plan(&self, path: &std::path::Path) -> Result<PeftPlan> {
        let bad = |detail: String| Error::Format {
            path: path.to_path_buf(),
            detail,
        };
        let method: Method = self.method.parse().map_err(|e: Error| bad(e.to_string()))?;
        let strata = self
            .strata
            .iter()
            .map(|s| parse_stratum(s).ok_or_else(|| bad(format!("unknown stratum `{s}`"))))
            .collect::<Result<Vec<_>>>()?;
        let lora = self.lora.clone();
        if let Some(l) = &lora {
            l.validate().map_err(|e| bad(e.to_string()))?;
        }
        Ok(PeftPlan {
            method,
            strata,
            lora,
            boundaries: self.boundaries,
            train_embeddings: self.train_embeddings,
            train_pooler: self.train_pooler,
            train_layer_norm_weights: self.train_layer_norm_weights,
        })
    }
}

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
    /// SHA-256 of the base's weights file ([`WeightsFile::sha256`]): its identity for
    /// adapters written before `base_encoder_sha256` existed.
    ///
    /// [`WeightsFile::sha256`]: crate::checkpoint::WeightsFile::sha256
    pub base_model_sha256: String,
    /// SHA-256 of the base's encoder tensors ([`WeightsFile::encoder_sha256`]): its identity,
    /// which survives re-saving the same tensors in shards or another layout.
    ///
    /// [`WeightsFile::encoder_sha256`]: crate::checkpoint::WeightsFile::encoder_sha256
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_encoder_sha256: Option<String>,
    /// Whether the head is a multi-label classifier's (a sigmoid per class, each example of
    /// any number of the classes); absent, as in adapters from before multi-label heads, it
    /// is not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub multi_label: bool,
    /// Whether the adapter was trained on text pairs (two texts per example), when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_pairs: Option<bool>,
    /// The tokens per example (special tokens included) the training texts were cut to
    /// (`--max-len`), when recorded: what evaluating with the same inputs needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
    /// SHA-256 of `adapter.safetensors`, so a torn pair of files is detected.
    pub weights_sha256: String,
    /// Names of the stored tensors.
    pub tensors: Vec<String>,
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
    .find(|&x| x.name() == s)
}

impl AdapterManifest {
    /// The manifest part that describes `plan`.
    pub(crate) fn describe(plan: &PeftPlan) -> (String, Vec<String>, Option<LoraConfig>) {
        let lora = plan.lora.clone();
        (
            plan.method.to_string(),
            plan.strata.iter().map(|&s| s.name().to_string()).collect(),
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
            let fields = crate::nn::LoraFields {
                rank: "`lora.rank`",
                alpha: "`lora.alpha`",
                dropout: "`lora.dropout`",
                targets: "`lora.targets`",
                override_rank: "`lora.overrides`",
                override_alpha: "`lora.overrides`",
            };
            if let Some(problem) = l.problem(fields) {
                return Err(bad(problem));
            }
        }
        let plan = PeftPlan {
            method,
            strata,
            lora,
            boundaries: self.boundaries,
            train_embeddings: self.train_embeddings,
            train_pooler: self.train_pooler,
            train_layer_norm_weights: self.train_layer_norm_weights,
        };
        match plan.inconsistency() {
            Some(why) => Err(bad(why)),
            None => Ok(plan),
        }
    }
}

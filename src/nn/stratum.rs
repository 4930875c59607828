use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// How one encoder layer trains (SPAFIT's strata, plus full fine-tuning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stratum {
    /// Nothing trains.
    Frozen,
    /// Every bias trains (attention q/k/v/output, FFN in/out, both LayerNorm biases).
    BiasOnly,
    /// LoRA adapters on the chosen linear maps, plus every bias.
    LoraAndBias,
    /// LoRA adapters only, biases frozen (plain LoRA).
    LoraOnly,
    /// Every tensor trains.
    Full,
}

impl Stratum {
    /// The name `adapter.json` and run states write for it (`frozen`, `bias_only`,
    /// `lora_and_bias`, `lora_only`, `full`).
    pub fn name(self) -> &'static str {
        match self {
            Stratum::Frozen => "frozen",
            Stratum::BiasOnly => "bias_only",
            Stratum::LoraAndBias => "lora_and_bias",
            Stratum::LoraOnly => "lora_only",
            Stratum::Full => "full",
        }
    }

    /// Whether linear and LayerNorm biases train.
    pub fn trains_biases(self) -> bool {
        matches!(
            self,
            Stratum::BiasOnly | Stratum::LoraAndBias | Stratum::Full
        )
    }

    /// Whether weight matrices and LayerNorm scales train.
    pub fn trains_weights(self) -> bool {
        self == Stratum::Full
    }

    /// Whether the layer carries LoRA adapters.
    pub fn has_lora(self) -> bool {
        matches!(self, Stratum::LoraAndBias | Stratum::LoraOnly)
    }
}

/// A linear map of an encoder layer that can carry a LoRA adapter, named as Hugging Face
/// names the module (and stored so in adapter manifests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LoraTarget {
    /// `attention.self.query`
    Query,
    /// `attention.self.key`
    Key,
    /// `attention.self.value`
    Value,
    /// `attention.output.dense`
    AttentionOutput,
    /// `intermediate.dense`
    Intermediate,
    /// `output.dense`
    Output,
}

impl LoraTarget {
    /// All six linear maps of a layer.
    pub const ALL: [LoraTarget; 6] = [
        LoraTarget::Query,
        LoraTarget::Key,
        LoraTarget::Value,
        LoraTarget::AttentionOutput,
        LoraTarget::Intermediate,
        LoraTarget::Output,
    ];

    /// The module path inside a layer, as Hugging Face names it.
    pub fn module(self) -> &'static str {
        match self {
            LoraTarget::Query => "attention.self.query",
            LoraTarget::Key => "attention.self.key",
            LoraTarget::Value => "attention.self.value",
            LoraTarget::AttentionOutput => "attention.output.dense",
            LoraTarget::Intermediate => "intermediate.dense",
            LoraTarget::Output => "output.dense",
        }
    }
}

impl fmt::Display for LoraTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.module())
    }
}

impl From<LoraTarget> for String {
    fn from(t: LoraTarget) -> String {
        t.module().to_string()
    }
}

impl TryFrom<String> for LoraTarget {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl FromStr for LoraTarget {
    type Err = Error;

    /// Accepts the module path or its last part where unambiguous (`query`, `key`, `value`),
    /// and DistilBERT's names of the same maps (`q_lin`, `k_lin`, `v_lin`, `out_lin`, `lin1`,
    /// `lin2`, with or without `attention.` / `ffn.`), MPNet's (`q`, `k`, `v`, `o`, with
    /// or without `attention.attn.`) and DeBERTa-v2's (`query_proj`, `key_proj`,
    /// `value_proj`, with or without `attention.self.`).
    fn from_str(s: &str) -> Result<Self, Error> {
        let found = match s {
            "query"
            | "q_lin"
            | "attention.q_lin"
            | "q"
            | "attention.attn.q"
            | "query_proj"
            | "attention.self.query_proj" => Some(LoraTarget::Query),
            "key"
            | "k_lin"
            | "attention.k_lin"
            | "k"
            | "attention.attn.k"
            | "key_proj"
            | "attention.self.key_proj" => Some(LoraTarget::Key),
            "value"
            | "v_lin"
            | "attention.v_lin"
            | "v"
            | "attention.attn.v"
            | "value_proj"
            | "attention.self.value_proj" => Some(LoraTarget::Value),
            "out_lin" | "attention.out_lin" | "o" | "attention.attn.o" => {
                Some(LoraTarget::AttentionOutput)
            }
            "lin1" | "ffn.lin1" => Some(LoraTarget::Intermediate),
            "lin2" | "ffn.lin2" => Some(LoraTarget::Output),
            _ => LoraTarget::ALL.into_iter().find(|t| t.module() == s),
        };
        found.ok_or_else(|| {
            Error::invalid(
                "lora target",
                format!(
                    "unknown target `{s}`; expected one of query, key, value, \
                     attention.output.dense, intermediate.dense, output.dense (DistilBERT's \
                     q_lin, k_lin, v_lin, out_lin, lin1, lin2, MPNet's q, k, v, o and \
                     DeBERTa-v2's query_proj, key_proj, value_proj name the same maps)"
                ),
            )
        })
    }
}

/// Where [`LoraConfig`]'s settings come from, by the names the source gives them: errors
/// name the flag or the file's field the user would change.
#[derive(Clone, Copy, Debug)]
pub struct LoraFields {
    /// The rank's name.
    pub rank: &'static str,
    /// Alpha's name.
    pub alpha: &'static str,
    /// The dropout's name.
    pub dropout: &'static str,
    /// The targets' name.
    pub targets: &'static str,
    /// The name of an override's rank ([`LoraConfig::overrides`]).
    pub override_rank: &'static str,
    /// The name of an override's alpha.
    pub override_alpha: &'static str,
}

impl LoraFields {
    /// The command line's flags (which make no overrides: a library caller's are named as
    /// the field).
    pub const FLAGS: LoraFields = LoraFields {
        rank: "--lora-r",
        alpha: "--lora-alpha",
        dropout: "--lora-dropout",
        targets: "--lora-targets",
        override_rank: "`LoraConfig::overrides`",
        override_alpha: "`LoraConfig::overrides`",
    };
}

/// LoRA settings: `y += (alpha / r) · (dropout(x)·Aᵀ)·Bᵀ` on each target — what a plan
/// asks for and what an adapter's manifest records. The other LoRA types each hold one
/// adapter's tensors at one level: [`crate::nn::LoraAdapter`] its parameters in the model,
/// [`crate::autograd::LoraVars`] their tape variables, [`crate::backend::LoraWeights`] the
/// operands a backend's linear map reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r` ≥ 1.
    pub rank: usize,
    /// `alpha`; the scale is `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter input during training.
    pub dropout: f64,
    /// The linear maps that get adapters.
    pub targets: Vec<LoraTarget>,
    /// Adapters whose rank or alpha differ from `rank` and `alpha`: what PEFT's
    /// `rank_pattern` and `alpha_pattern` give an imported adapter. The command line never
    /// makes any; manifests without the field have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<LoraOverride>,
    /// Maps among `targets` that a layer with adapters leaves without one: what an imported
    /// PEFT adapter whose `target_modules` adapt other maps in other layers gives. The
    /// command line never makes any; manifests without the field have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unadapted: Vec<LoraSite>,
    /// DoRA (PEFT's `use_dora`): each adapted weight row rescaled to a trained magnitude
    /// (see [`crate::nn::DoraMagnitude`]). Manifests without the field have plain LoRA.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dora: bool,
}

/// One linear map of one encoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LoraSite {
    /// The encoder layer (0-based).
    pub layer: usize,
    /// The linear map of that layer.
    pub target: LoraTarget,
}

/// The rank and alpha of one adapter that differ from its [`LoraConfig`]'s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraOverride {
    /// The encoder layer (0-based).
    pub layer: usize,
    /// The linear map of that layer.
    pub target: LoraTarget,
    /// Its rank r ≥ 1.
    pub rank: usize,
    /// Its alpha; its scale is `alpha / rank`.
    pub alpha: f64,
}

impl LoraOverride {
    /// The map it sets apart.
    pub fn site(&self) -> LoraSite {
        LoraSite {
            layer: self.layer,
            target: self.target,
        }
    }
}

impl fmt::Display for LoraOverride {
    /// `layer 2 attention.self.value r 4 alpha 1.5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "layer {} {} r {} alpha {}",
            self.layer, self.target, self.rank, self.alpha
        )
    }
}

impl LoraConfig {
    /// Why `alpha` cannot be an adapter's α at any rank, if it cannot: one rule for
    /// [`Self::problem`] and the command line's `--lora-alpha` (with α ≤ 0 an adapter is off,
    /// its gradients 0, or turned around).
    pub fn alpha_problem(alpha: f64) -> Option<String> {
        (!(alpha.is_finite() && alpha > 0.0))
            .then(|| "the LoRA scale α / r needs α > 0, and finite".to_string())
    }

    /// Why `p` cannot be the dropout on an adapter's input, if it cannot.
    pub fn dropout_problem(p: f64) -> Option<String> {
        (!(0.0..1.0).contains(&p)).then(|| "a dropout probability must be in [0, 1)".to_string())
    }

    /// The alpha whose `alpha / r` is rank-stabilized LoRA's scale `alpha / √r` at `rank`
    /// (PEFT's `use_rslora`, `--rslora`): `alpha · √r`, the one form every scale takes here.
    pub fn rank_stabilized_alpha(alpha: f64, rank: usize) -> f64 {
        alpha * (rank as f64).sqrt()
    }

    /// `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The rank and alpha of the adapter on `target` in encoder layer `layer`: its override's,
    /// or the config's.
    pub fn rank_and_alpha(&self, layer: usize, target: LoraTarget) -> (usize, f64) {
        let site = LoraSite { layer, target };
        self.overrides
            .iter()
            .find(|o| o.site() == site)
            .map_or((self.rank, self.alpha), |o| (o.rank, o.alpha))
    }

    /// Whether the adapter on `target` in encoder layer `layer` is left out
    /// ([`LoraConfig::unadapted`]) though `target` is among the targets.
    pub fn leaves_out(&self, layer: usize, target: LoraTarget) -> bool {
        self.unadapted.contains(&LoraSite { layer, target })
    }

    /// Whether some adapters differ from the config's own (an override or a map left out):
    /// what an older spafit would not read.
    pub fn varies_by_site(&self) -> bool {
        !self.overrides.is_empty() || !self.unadapted.is_empty()
    }

    /// What sets the adapters apart from plain LoRA adapters of the config's rank and alpha,
    /// in words, each after `, `: `, DoRA, layer 2 attention.self.value r 4 alpha 1.5, layer 3
    /// output.dense left out` (empty where nothing does).
    pub fn site_differences(&self) -> String {
        let dora = self.dora.then(|| ", DoRA".to_string());
        let overrides = dora
            .into_iter()
            .chain(self.overrides.iter().map(|o| format!(", {o}")));
        let left_out = self
            .unadapted
            .iter()
            .map(|s| format!(", layer {} {} left out", s.layer, s.target));
        overrides.chain(left_out).collect()
    }

    /// The largest scale `alpha / r` of any adapter: the config's, or an override's.
    pub fn largest_scale(&self) -> f64 {
        self.overrides
            .iter()
            .map(|o| o.alpha / o.rank as f64)
            .fold(self.scale(), f64::max)
    }

    /// Why an adapter of `rank` and `alpha` cannot be, if it cannot; `rank_name` and
    /// `alpha_name` name the settings.
    fn rank_alpha_problem(
        rank: usize,
        alpha: f64,
        rank_name: &str,
        alpha_name: &str,
    ) -> Option<String> {
        let scale = alpha / rank as f64;
        if rank == 0 {
            Some(format!("rank r ({rank_name}) must be at least 1"))
        } else if let Some(why) = Self::alpha_problem(alpha) {
            Some(format!("alpha ({alpha_name}) is {alpha}: {why}"))
        } else if !((scale as f32).is_finite()) {
            // Any product through the adapter would overflow to infinity, then NaN.
            Some(format!(
                "alpha ({alpha_name}) {alpha:e} gives the LoRA scale α / r = {scale:e}, beyond \
                 what f32 holds"
            ))
        } else if (scale as f32) < f32::MIN_POSITIVE {
            // Rounded to nothing (or to a subnormal, flushed on the GPU) in f32, the adapters
            // add nothing and their gradients vanish, as at α = 0.
            Some(format!(
                "alpha ({alpha_name}) {alpha:e} gives the LoRA scale α / r = {scale:e}, too \
                 small for f32 to hold: the adapters would add nothing"
            ))
        } else {
            None
        }
    }

    /// Checks rank, alpha, dropout and targets as the command line gives them (errors name
    /// the flags).
    pub fn validate(&self) -> Result<(), Error> {
        match self.problem(LoraFields::FLAGS) {
            Some(detail) => Err(Error::invalid("lora config", detail)),
            None => Ok(()),
        }
    }

    /// What [`Self::validate`] refuses, naming the settings by `fields`: for settings read
    /// from a file, whose caller names the file.
    pub fn problem(&self, fields: LoraFields) -> Option<String> {
        let LoraFields {
            rank,
            alpha,
            dropout,
            targets,
            override_rank,
            override_alpha,
        } = fields;
        if let Some(bad) = Self::rank_alpha_problem(self.rank, self.alpha, rank, alpha) {
            return Some(bad);
        }
        if let Some(why) = Self::dropout_problem(self.dropout) {
            return Some(format!("dropout ({dropout}) is {}: {why}", self.dropout));
        }
        if self.targets.is_empty() {
            return Some(format!("at least one target module ({targets}) is needed"));
        }
        // A second adapter on the same map would replace the first under the same name.
        let twice = self
            .targets
            .iter()
            .enumerate()
            .find_map(|(i, t)| self.targets[..i].contains(t).then_some(t));
        if let Some(t) = twice {
            return Some(format!("target `{}` is listed twice", t.module()));
        }
        let stray = self.unadapted.iter().enumerate().find_map(|(i, s)| {
            let at = format!("layer {}'s `{}`", s.layer, s.target.module());
            if !self.targets.contains(&s.target) {
                Some(format!(
                    "{at} is left without an adapter, but `{}` is not among the targets \
                     ({targets})",
                    s.target.module()
                ))
            } else if self.unadapted[..i].contains(s) {
                Some(format!("{at} is left without an adapter twice"))
            } else if self.overrides.iter().any(|o| o.site() == *s) {
                Some(format!(
                    "{at} is left without an adapter and given a rank and alpha of its own"
                ))
            } else {
                None
            }
        });
        if stray.is_some() {
            return stray;
        }
        self.overrides.iter().enumerate().find_map(|(i, o)| {
            let at = format!("the adapter on layer {}'s `{}`", o.layer, o.target.module());
            if !self.targets.contains(&o.target) {
                Some(format!(
                    "{at} has a rank and alpha of its own, but `{}` is not among the targets \
                     ({targets})",
                    o.target.module()
                ))
            } else if self.overrides[..i].iter().any(|p| p.site() == o.site()) {
                Some(format!("{at} is given a rank and alpha twice"))
            } else {
                Self::rank_alpha_problem(o.rank, o.alpha, override_rank, override_alpha)
                    .map(|why| format!("{at}: {why}"))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A saved adapter's alpha and dropout are refused by the rules the command line's
    /// `--lora-alpha` and `--lora-dropout` apply, named as the caller's fields name them.
    #[test]
    fn problem_applies_the_alpha_and_dropout_rules() {
        let fields = LoraFields {
            rank: "r",
            alpha: "lora_alpha",
            dropout: "lora_dropout",
            targets: "target_modules",
            override_rank: "rank_pattern",
            override_alpha: "alpha_pattern",
        };
        let good = LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: vec![LoraTarget::Query],
            overrides: Vec::new(),
            unadapted: Vec::new(),
            dora: false,
        };
        assert_eq!(good.problem(fields), None);
        for alpha in [0.0, -2.0, f64::NAN, f64::INFINITY] {
            let c = LoraConfig {
                alpha,
                ..good.clone()
            };
            let e = c.problem(fields).unwrap();
            let rule = LoraConfig::alpha_problem(alpha).unwrap();
            assert!(e.contains("lora_alpha") && e.contains(&rule), "{e}");
        }
        for dropout in [1.0, -0.1, f64::NAN] {
            let c = LoraConfig {
                dropout,
                ..good.clone()
            };
            let e = c.problem(fields).unwrap();
            let rule = LoraConfig::dropout_problem(dropout).unwrap();
            assert!(e.contains("lora_dropout") && e.contains(&rule), "{e}");
        }
        assert_eq!(LoraConfig::dropout_problem(0.0), None);
        assert_eq!(LoraConfig::alpha_problem(1e-3), None);
    }
}

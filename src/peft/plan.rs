use std::fmt;
use std::str::FromStr;

use crate::checkpoint::EncoderFamily;
use crate::error::{Error, Result};
use crate::nn::{LoraConfig, LoraTarget, Stratum};

/// A fine-tuning method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Every tensor trains.
    Full,
    /// Every encoder bias (LayerNorm biases included) trains.
    BitFit,
    /// LoRA adapters on chosen layers and targets; biases frozen.
    Lora,
    /// Frozen `[0, N1)`, bias-only `[N1, N2)`, LoRA + bias `[N2, L)`.
    Spafit,
}

impl FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Method::Full),
            "bitfit" => Ok(Method::BitFit),
            "lora" => Ok(Method::Lora),
            "spafit" => Ok(Method::Spafit),
            _ => Err(Error::invalid(
                "peft method",
                format!("unknown method `{s}`; expected full, bitfit, lora or spafit"),
            )),
        }
    }
}

impl Method {
    /// The peak learning rate each method's reference run uses, and `spafit train` unless
    /// given `--lr`: 5e-5 for full fine-tuning, 1e-3 for BitFit, 5e-4 for LoRA and SPAFIT.
    /// ([`crate::train::TrainConfig`]'s default is 5e-4 whatever the method.)
    pub fn default_learning_rate(self) -> f64 {
        match self {
            Method::Full => 5e-5,
            Method::BitFit => 1e-3,
            Method::Lora | Method::Spafit => 5e-4,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Full => "full",
            Method::BitFit => "bitfit",
            Method::Lora => "lora",
            Method::Spafit => "spafit",
        })
    }
}

/// A stratum boundary: a layer index, or a fraction of the depth (rounded to the nearest
/// layer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Boundary {
    /// Layer index (0-based; the boundary sits below this layer).
    Layer(usize),
    /// Fraction of the layer count in `[0, 1]`.
    Fraction(f64),
}

impl Boundary {
    /// The layer index for a model of `layers` layers; `name` (`N1 (--n1)`) names it in an
    /// error.
    fn resolve(self, name: &str, layers: usize) -> Result<usize> {
        let n = match self {
            Boundary::Layer(n) => n,
            Boundary::Fraction(f) if (0.0..=1.0).contains(&f) => {
                (f * layers as f64).round() as usize
            }
            Boundary::Fraction(f) => {
                return Err(Error::invalid(
                    "peft plan",
                    format!("{name} as a fraction must be in [0, 1], got {f}"),
                ))
            }
        };
        if n > layers {
            return Err(Error::invalid(
                "peft plan",
                format!("{name} = {n} is beyond the model's {layers} layers"),
            ));
        }
        Ok(n)
    }

    /// `n` as resolved, with the fraction it came from.
    fn describe(self, n: usize, layers: usize) -> String {
        match self {
            Boundary::Layer(_) => n.to_string(),
            Boundary::Fraction(f) => {
                let noun = if layers == 1 { "layer" } else { "layers" };
                format!("{n} ({} of {layers} {noun})", fraction_text(f))
            }
        }
    }
}

/// A fraction as a person writes it: `0.5`, `0.125`, `1e-9` as `0.000000001`, thirds as
/// `1/3` and `2/3` (not `0.6666666666666666`); others to six significant digits.
fn fraction_text(f: f64) -> String {
    // `1.0 of 6 layers`, not `1 of 6 layers` (read as one layer).
    if f.fract() == 0.0 {
        return format!("{f:.1}");
    }
    let shortest = f.to_string();
    if shortest.len() <= 12 {
        return shortest;
    }
    for q in 2..=16u32 {
        let p = (f * f64::from(q)).round();
        if (p / f64::from(q) - f).abs() <= 1e-12 {
            return format!("{p}/{q}");
        }
    }
    // Six significant digits of a value in [0, 1] (others are refused before they are shown).
    let decimals = (5 - f.abs().log10().floor() as i32).clamp(0, 20) as usize;
    let text = format!("{f:.decimals$}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl FromStr for Boundary {
    type Err = Error;
    /// `4` is a layer index; `0.5` or `1/3` is a fraction.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "boundary",
                format!(
                    "`{s}` is neither a layer index (0, 1, ...) nor a fraction of the depth in \
                     [0, 1] (`0.5`, `1/3`)"
                ),
            )
        };
        // 1.5 or 1/0 would be refused only once the model's depth is known.
        let fraction = |f: f64| match (0.0..=1.0).contains(&f) {
            true => Ok(Boundary::Fraction(f)),
            false => Err(bad()),
        };
        if s.trim_start().starts_with('-') {
            return Err(bad());
        }
        if let Ok(n) = s.parse::<usize>() {
            return Ok(Boundary::Layer(n));
        }
        // Digits only, too many for a count: a layer index, not a fraction of 1e23.
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::invalid(
                "boundary",
                format!("layer index `{s}` is beyond any model's layers"),
            ));
        }
        if let Some((a, b)) = s.split_once('/') {
            let (a, b): (f64, f64) = (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            );
            return fraction(a / b);
        }
        fraction(s.parse::<f64>().map_err(|_| bad())?)
    }
}

/// What the user asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct PeftConfig {
    /// The method.
    pub method: Method,
    /// Adapter settings (LoRA and SPAFIT's top stratum).
    pub lora: LoraConfig,
    /// LoRA only: the layers that get adapters (all when `None`).
    pub lora_layers: Option<Vec<usize>>,
    /// SPAFIT: first bias-only layer.
    pub n1: Boundary,
    /// SPAFIT: first LoRA + bias layer.
    pub n2: Boundary,
    /// Also train the pooler (RoBERTa's and ELECTRA's head's dense map, which trains with the
    /// head: [`PeftConfig::for_family`]).
    pub train_pooler: bool,
    /// Also train the embeddings (tables and their LayerNorm; ELECTRA's projection too).
    pub train_embeddings: bool,
    /// Also train the LayerNorm scales of every layer that trains anything.
    pub train_layer_norm_weights: bool,
}

impl PeftConfig {
    /// `method` with defaults: LoRA r = 8, alpha = 16, dropout 0.1 on query and value
    /// (SPAFIT: on all six linear maps), SPAFIT boundaries at thirds.
    pub fn new(method: Method) -> Self {
        let targets = match method {
            Method::Spafit => LoraTarget::ALL.to_vec(),
            _ => vec![LoraTarget::Query, LoraTarget::Value],
        };
        PeftConfig {
            method,
            lora: LoraConfig {
                rank: 8,
                alpha: 16.0,
                dropout: 0.1,
                targets,
                overrides: Vec::new(),
                unadapted: Vec::new(),
                dora: false,
            },
            lora_layers: None,
            n1: Boundary::Fraction(1.0 / 3.0),
            n2: Boundary::Fraction(2.0 / 3.0),
            train_pooler: false,
            train_embeddings: false,
            train_layer_norm_weights: false,
        }
    }

    /// The config for a model of `family`: RoBERTa's and ELECTRA's classification heads hold the dense map
    /// that BERT calls its pooler (`classifier.dense`), so it trains with the head, as PEFT's
    /// `modules_to_save = ["classifier"]` trains it.
    pub fn for_family(self, family: EncoderFamily) -> Self {
        PeftConfig {
            train_pooler: self.train_pooler || family.pooler_is_head(),
            ..self
        }
    }
}

impl PeftConfig {
    /// What a SPAFIT config leaves out on a model of `layers` layers when its boundaries
    /// empty one of the two strata that train (the default thirds on a shallow model: one
    /// layer makes N1 = 0 and N2 = 1, no LoRA + bias layer; two make N1 = N2 = 1, no bias-only
    /// layer), so the plan is in fact another method's: a notice for the user, who may not
    /// have chosen the boundaries. `None` for other methods, whole strata, or boundaries
    /// that [`PeftPlan::new`] refuses.
    pub fn empty_strata_notice(&self, layers: usize) -> Option<String> {
        if self.method != Method::Spafit || layers == 0 {
            return None;
        }
        let n1 = self.n1.resolve("N1", layers).ok()?;
        let n2 = self.n2.resolve("N2", layers).ok()?;
        if n1 > n2 {
            return None;
        }
        let missing = match (n1 == n2, n2 == layers) {
            (false, false) => return None,
            (true, true) => {
                "no layer that trains (only the head does, with what --train-* adds)".into()
            }
            (false, true) => format!(
                "no LoRA + bias layer: it trains biases only, as BitFit would on {} (lower --n2 \
                 to give the top layers adapters)",
                match n1 {
                    0 => "every layer".to_string(),
                    _ => format!("layers {n1} and up"),
                }
            ),
            (true, false) if n1 == 0 => "no bias-only layer: every layer is LoRA + bias (raise \
                 --n2 for a bias-only stratum)"
                .into(),
            (true, false) => "no bias-only layer: the layers below N2 are frozen, those from it \
                 LoRA + bias (lower --n1 for a bias-only stratum)"
                .into(),
        };
        Some(format!(
            "N1 = {} and N2 = {} leave this SPAFIT plan {missing}",
            self.n1.describe(n1, layers),
            self.n2.describe(n2, layers)
        ))
    }
}

/// A [`PeftConfig`] resolved against a model depth: one stratum per layer.
#[derive(Clone, Debug, PartialEq)]
pub struct PeftPlan {
    /// The method.
    pub method: Method,
    /// Stratum of each encoder layer.
    pub strata: Vec<Stratum>,
    /// Adapter settings where any layer has adapters.
    pub lora: Option<LoraConfig>,
    /// SPAFIT's resolved boundaries.
    pub boundaries: Option<(usize, usize)>,
    /// Embeddings train.
    pub train_embeddings: bool,
    /// Pooler trains.
    pub train_pooler: bool,
    /// LayerNorm scales of non-frozen layers train.
    pub train_layer_norm_weights: bool,
}

/// More layers than any encoder has: a count past it is a mistake, not a model, and would
/// size the per-layer tables before anything else refused it.
const MAX_LAYERS: usize = 1 << 16;

impl PeftPlan {
    /// Whether any layer's linear weights stay frozen under the plan (all but full
    /// fine-tuning's strata): what bf16 mode stores in half the memory.
    pub fn freezes_weights(&self) -> bool {
        self.strata.iter().any(|stratum| !stratum.trains_weights())
    }

    /// Why the plan's method, strata, boundaries and LoRA settings cannot belong together
    /// (a plan built field by field, or an edited `adapter.json`), if they cannot: what
    /// [`PeftPlan::new`] builds always belongs together, and a saved adapter must load again.
    pub fn inconsistency(&self) -> Option<String> {
        let (method, strata, boundaries, has_lora) = (
            self.method,
            &self.strata[..],
            self.boundaries,
            self.lora.is_some(),
        );
        let allowed: &[Stratum] = match method {
            Method::Full => &[Stratum::Full],
            Method::BitFit => &[Stratum::BiasOnly],
            // An imported PEFT adapter continues as `lora` with the biases it stored.
            Method::Lora => &[
                Stratum::LoraOnly,
                Stratum::LoraAndBias,
                Stratum::BiasOnly,
                Stratum::Frozen,
            ],
            Method::Spafit => &[Stratum::Frozen, Stratum::BiasOnly, Stratum::LoraAndBias],
        };
        if let Some(s) = strata.iter().find(|s| !allowed.contains(s)) {
            return Some(format!(
                "`strata`: a {} adapter has no `{}` layer",
                method,
                s.name()
            ));
        }
        let needs_lora = strata.iter().any(|s| s.has_lora());
        if needs_lora != has_lora {
            return Some(format!(
                "`lora`: the strata {} LoRA layers but the LoRA settings are {}",
                if needs_lora { "have" } else { "have no" },
                if has_lora { "present" } else { "missing" }
            ));
        }
        if let Some(lora) = &self.lora {
            // An override or a map left out names an adapter; a layer without adapters would
            // silently drop it.
            let overridden = lora.overrides.iter().map(|o| {
                (
                    "lora.overrides",
                    o.site(),
                    "has a rank and alpha of its own",
                )
            });
            let left_out = lora
                .unadapted
                .iter()
                .map(|&s| ("lora.unadapted", s, "is left without an adapter"));
            let stray = overridden
                .chain(left_out)
                .find(|(_, s, _)| !strata.get(s.layer).is_some_and(|st| st.has_lora()));
            if let Some((field, s, what)) = stray {
                return Some(format!(
                    "`{field}`: layer {}'s `{}` {what}, but {}",
                    s.layer,
                    s.target.module(),
                    match strata.get(s.layer) {
                        Some(st) => format!("that layer's stratum `{}` has no LoRA", st.name()),
                        None => format!("the plan has {} layers", strata.len()),
                    }
                ));
            }
            // A LoRA layer left with no adapter would be a bias-only or frozen one saved
            // under another name.
            let bare = (0..strata.len()).find(|&l| {
                strata[l].has_lora() && lora.targets.iter().all(|&t| lora.leaves_out(l, t))
            });
            if let Some(l) = bare {
                return Some(format!(
                    "`lora.unadapted`: layer {l} ({}) is left without any adapter",
                    strata[l].name()
                ));
            }
        }
        match (method, boundaries) {
            (Method::Spafit, Some((n1, n2))) => {
                let expected = |l: usize| match l {
                    l if l < n1 => Stratum::Frozen,
                    l if l < n2 => Stratum::BiasOnly,
                    _ => Stratum::LoraAndBias,
                };
                let fits = n1 <= n2 && (0..strata.len()).all(|l| strata[l] == expected(l));
                (!fits).then(|| {
                    format!("`boundaries` ({n1}, {n2}) do not match the strata of the layers")
                })
            }
            (Method::Spafit, None) => Some("`boundaries`: a spafit adapter needs N1 and N2".into()),
            (_, Some(_)) => Some(format!(
                "`boundaries`: only a spafit adapter has them, not {method}"
            )),
            (_, None) => None,
        }
    }

    /// The layers whose stratum carries LoRA adapters, in order.
    pub fn lora_layers(&self) -> Vec<usize> {
        self.strata
            .iter()
            .enumerate()
            .filter(|(_, s)| s.has_lora())
            .map(|(i, _)| i)
            .collect()
    }

    /// The dropout on the adapters' input during training; 0 where the plan has none.
    pub fn lora_dropout(&self) -> f64 {
        self.lora.as_ref().map_or(0.0, |l| l.dropout)
    }

    /// Resolves and validates `config` for a model with `layers` encoder layers.
    pub fn new(config: &PeftConfig, layers: usize) -> Result<Self> {
        let invalid = |detail: String| Error::invalid("peft plan", detail);
        if layers == 0 || layers > MAX_LAYERS {
            return Err(invalid(format!(
                "{layers} layers: an encoder has 1 to {MAX_LAYERS} here"
            )));
        }
        if config.lora_layers.is_some() && config.method != Method::Lora {
            // Other methods place their layers themselves (SPAFIT's adapters sit from N2 up):
            // a list given to them would be ignored without a word.
            return Err(invalid(format!(
                "lora_layers is a setting of the lora method; {} does not read it",
                config.method
            )));
        }
        let mut boundaries = None;
        let (strata, lora) = match config.method {
            Method::Full => (vec![Stratum::Full; layers], None),
            Method::BitFit => (vec![Stratum::BiasOnly; layers], None),
            Method::Lora => {
                config.lora.validate()?;
                let mut strata = vec![Stratum::Frozen; layers];
                match &config.lora_layers {
                    None => strata.fill(Stratum::LoraOnly),
                    Some(list) if list.is_empty() => {
                        return Err(invalid("the LoRA layer list is empty".into()))
                    }
                    Some(list) => {
                        for &l in list {
                            if l >= layers {
                                return Err(invalid(format!(
                                    "LoRA layer {l} (--lora-layers) does not exist (the model \
                                     has {layers} layers)"
                                )));
                            }
                            strata[l] = Stratum::LoraOnly;
                        }
                    }
                }
                (strata, Some(config.lora.clone()))
            }
            Method::Spafit => {
                let n1 = config.n1.resolve("N1 (--n1)", layers)?;
                let n2 = config.n2.resolve("N2 (--n2)", layers)?;
                if n1 > n2 {
                    return Err(invalid(format!(
                        "N1 = {} (--n1) is above N2 = {} (--n2): the strata need N1 ≤ N2 ≤ \
                         {layers} (this model's layers)",
                        config.n1.describe(n1, layers),
                        config.n2.describe(n2, layers)
                    )));
                }
                if n2 < layers {
                    config.lora.validate()?;
                }
                boundaries = Some((n1, n2));
                let strata = (0..layers)
                    .map(|i| {
                        if i < n1 {
                            Stratum::Frozen
                        } else if i < n2 {
                            Stratum::BiasOnly
                        } else {
                            Stratum::LoraAndBias
                        }
                    })
                    .collect();
                (strata, (n2 < layers).then(|| config.lora.clone()))
            }
        };
        let full = config.method == Method::Full;
        Ok(PeftPlan {
            method: config.method,
            strata,
            lora,
            boundaries,
            train_embeddings: full || config.train_embeddings,
            train_pooler: full || config.train_pooler,
            train_layer_norm_weights: config.train_layer_norm_weights,
        })
    }
}

//! Option groups shared by several commands.

use std::path::PathBuf;

use clap::Args;
use spafit::backend::cpu::CpuBackend;
use spafit::backend::cuda::CudaBackend;
use spafit::checkpoint::EncoderFamily;
use spafit::data::{
    label_names_problem, Dataset, GlueTask, OnMalformed, TableSpec, Target, TaskKind,
};
use spafit::nn::{LoraTarget, Stratum};
use spafit::peft::{Boundary, Method, PeftConfig, PeftPlan};
use spafit::tensor::DType;
use spafit::{Error, Result};

/// Parses a count that must be at least 1 (a batch size, a number of steps), so that 0 is
/// refused with the flag's name before any work.
pub fn at_least_one() -> fn(&str) -> std::result::Result<usize, String> {
    |text| {
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        match text.parse::<usize>() {
            Ok(0) => Err("must be at least 1".into()),
            Ok(n) => Ok(n),
            Err(_) if text.strip_prefix('-').is_some_and(digits) => {
                Err("must be at least 1".into())
            }
            Err(_) if digits(text.strip_prefix('+').unwrap_or(text)) => {
                Err(format!("must be at most {}", usize::MAX))
            }
            Err(_) => Err("not a whole number".into()),
        }
    }
}

/// Where the model is and what runs it.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Checkpoint directory (config.json, model.safetensors or its shards' index,
    /// tokenizer.json or vocab.txt), a Hugging Face hub cache folder, or a hub id found in
    /// the offline cache (`org/name`).
    #[arg(long, default_value = ".cache/models/all-MiniLM-L6-v2")]
    pub model: PathBuf,
    /// Compute device: `cpu`, `cuda[:N]` (a GPU), or `cuda-emu` (the same CUDA kernels on
    /// the CPU stand-in for the driver: for development and tests without a GPU, slow; it is
    /// loaded from the build's `target/` folder, or from `$SPAFIT_EMULATOR_DIR`).
    #[arg(long, default_value = "cpu", value_parser = spelling(parse_device))]
    pub device: String,
    /// Storage precision: f32; f64 (CPU only: the reference, slower); bf16 (mixed precision:
    /// frozen linear weights stored in bf16 and their products taken on bf16 operands with
    /// f32 accumulation, on tensor cores on CUDA and on AMX tiles or AVX-512 BF16 on CPUs that have them;
    /// f32 activations and master weights for what trains).
    #[arg(long, default_value = "f32", value_parser = spelling(parse_dtype))]
    pub dtype: String,
    /// Truncate inputs to this many tokens (special tokens included) [default: 64, or all the
    /// model's positions where it has fewer; eval,
    /// predict and train with --adapter: the length the adapter was trained with, where it
    /// records one].
    #[arg(long, allow_hyphen_values = true, value_parser = at_least_one())]
    pub max_len: Option<usize>,
}

/// The class names of a `--labels` list, in id order.
fn label_names(list: &str) -> Vec<String> {
    list.split(',').map(|s| s.trim().to_string()).collect()
}

/// `--labels`: a list of two class names or more, each a name a prediction file can hold,
/// none given twice — nor one number in two spellings, since data reads `1.0` as class `1`
/// (a float column's spelling) and would split that class's rows between the two. A list that
/// is not one is a command line that does not parse (exit status 2).
fn label_list(list: &str) -> std::result::Result<String, String> {
    let labels = label_names(list);
    if let Some(problem) = label_names_problem(&labels) {
        return Err(problem);
    }
    let number = |name: &str| name.parse::<f64>().ok().filter(|v| v.is_finite());
    for (i, name) in labels.iter().enumerate() {
        let same = labels[..i]
            .iter()
            .find(|earlier| number(name).is_some() && number(earlier) == number(name));
        if let Some(earlier) = same {
            return Err(format!(
                "`{earlier}` and `{name}` are one number, which data reads as one class: name \
                 it once"
            ));
        }
    }
    if labels.len() < 2 {
        return Err(
            "one class; classification needs at least two (or --regression for a \
                    real-valued label)"
                .into(),
        );
    }
    Ok(list.to_string())
}

/// Tokens per example when neither --max-len nor an adapter says.
pub const DEFAULT_MAX_LEN: usize = 64;

impl ModelArgs {
    /// Refuses a `--max-len` the model cannot take before any data is read.
    pub fn check_max_len(&self, checkpoint: &spafit::checkpoint::Checkpoint) -> Result<()> {
        match self.max_len {
            Some(given) => checkpoint.check_max_len(given).map_err(|e| match e {
                Error::InvalidArgument {
                    op: "tokenizer",
                    detail,
                } => Error::invalid("--max-len", detail),
                e => e,
            }),
            None => Ok(()),
        }
    }

    /// The checkpoint's tokenizer, cutting inputs at --max-len when given (with a note where
    /// an adapter was trained on another cut: it then reads its inputs otherwise than it
    /// learned them), else at the cut the adapter records, else at [`DEFAULT_MAX_LEN`] or the
    /// model's positions where it has fewer (with a note for an adapter that records none, and
    /// where the model's positions cut it). A length the checkpoint refuses is named by
    /// where it came from: the flag, the adapter, or the model (whose positions leave no room
    /// for a text).
    pub fn tokenizer(
        &self,
        checkpoint: &spafit::checkpoint::Checkpoint,
        adapter: TrainedCut,
    ) -> Result<spafit::text::TextTokenizer> {
        // The default, where the model has fewer positions, is all the model has: a cut
        // nobody asked for is no reason to refuse the run.
        let most = checkpoint.config.max_tokens();
        let default_len = DEFAULT_MAX_LEN.min(most);
        let note_default_cut = || {
            if most < DEFAULT_MAX_LEN {
                note!(
                    "note: inputs are cut to {most} tokens, all the model's positions take \
                     ({}), not the default {DEFAULT_MAX_LEN}",
                    checkpoint.config.max_tokens_source()
                );
            }
        };
        // The length, and where it came from when a flag did not give it.
        let (len, source) = match (self.max_len, adapter) {
            (Some(given), TrainedCut::Recorded(trained)) => {
                if given != trained {
                    note!(
                        "note: --max-len {given}: the adapter was trained on inputs cut to \
                         {trained} tokens"
                    );
                }
                (given, None)
            }
            (Some(given), _) => (given, None),
            (None, TrainedCut::Recorded(trained)) => (trained, Some(CutSource::Adapter(trained))),
            (None, TrainedCut::Unrecorded) => {
                note!(
                    "note: the adapter does not record the length its training texts were cut \
                     to; inputs are cut to {default_len} tokens (--max-len sets it)"
                );
                note_default_cut();
                (default_len, Some(CutSource::Default))
            }
            (None, TrainedCut::NoAdapter) => {
                note_default_cut();
                (default_len, Some(CutSource::Default))
            }
        };
        checkpoint.tokenizer(len).map_err(|e| match e {
            Error::InvalidArgument {
                op: "tokenizer",
                detail,
            } => match source {
                Some(CutSource::Adapter(trained)) => Error::invalid(
                    "adapter",
                    format!(
                        "it was trained on inputs cut to {trained} tokens, which this model \
                         cannot take ({detail})"
                    ),
                ),
                // Only a model with fewer positions than the default cuts to fewer than
                // the default: no flag to blame, and none that would help.
                Some(CutSource::Default) => Error::invalid(
                    "model",
                    format!(
                        "{}: the model has {most} position{} for a text ({}), and {detail}: no \
                         text fits",
                        checkpoint.dir().display(),
                        if most == 1 { "" } else { "s" },
                        checkpoint.config.max_tokens_source()
                    ),
                ),
                None => Error::invalid("--max-len", detail),
            },
            e => e,
        })
    }
}

/// Where a cut no flag gave comes from.
#[derive(Clone, Copy)]
enum CutSource {
    /// The cut the adapter was trained on.
    Adapter(usize),
    /// [`DEFAULT_MAX_LEN`], or the model's positions where it has fewer.
    Default,
}

/// What the adapter a command uses says about the cut of its training texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainedCut {
    /// No adapter: the checkpoint as it is, or a fresh run.
    NoAdapter,
    /// An adapter that does not record it (PEFT's own, or one saved before spafit did).
    Unrecorded,
    /// The adapter's training texts were cut to this many tokens.
    Recorded(usize),
}

impl TrainedCut {
    /// The cut an adapter records, if it records one.
    pub fn of_adapter(recorded: Option<usize>) -> Self {
        recorded.map_or(TrainedCut::Unrecorded, TrainedCut::Recorded)
    }
}

/// The backend the flags name.
pub enum AnyBackend {
    /// The CPU reference backend.
    Cpu(CpuBackend),
    /// The CUDA backend (a GPU or the CPU stand-in).
    Cuda(CudaBackend),
}

/// Runs `$body` with `$b` bound to the concrete backend inside an [`AnyBackend`], so the
/// commands are written once, generic over `Backend`.
macro_rules! on_backend {
    ($any:expr, $b:ident => $body:expr) => {
        match $any {
            $crate::cli::args::AnyBackend::Cpu($b) => $body,
            $crate::cli::args::AnyBackend::Cuda($b) => $body,
        }
    };
}
pub(crate) use on_backend;

impl ModelArgs {
    /// The storage dtype `--dtype` names (case-insensitive, as --method is: `F32`).
    pub fn dtype(&self) -> Result<DType> {
        parse_dtype(&self.dtype)
    }

    /// Whether `--device` names a backend that launches CUDA kernels (a GPU or cuda-emu).
    pub fn launches_kernels(&self) -> Result<bool> {
        Ok(parse_device(&self.device)? != Device::Cpu)
    }

    /// The device and dtype the flags name, refusing a pair that does not go together: the
    /// command line alone decides it (see `Cli::from_env`).
    pub fn device_and_dtype(&self) -> Result<(Device, DType)> {
        // Case-insensitive, as --method is (`CPU`, `F32`).
        let device = parse_device(&self.device)?;
        let dtype = self.dtype()?;
        if device != Device::Cpu && dtype == DType::F64 {
            return Err(Error::invalid(
                "--dtype",
                "f64 is the CPU reference; CUDA stores f32 or bf16",
            ));
        }
        Ok((device, dtype))
    }

    /// The backend the flags name.
    pub fn backend(&self) -> Result<AnyBackend> {
        let (device, dtype) = self.device_and_dtype()?;
        match device {
            Device::Cpu => {
                if dtype == DType::BF16 && !CpuBackend::has_bf16_dot_products() {
                    note!(
                        "this CPU lacks AVX-512 BF16: --dtype bf16 rounds the frozen weights' \
                         products to bf16 and runs them through the f32 GEMM, slower than \
                         --dtype f32 and less precise"
                    );
                }
                Ok(AnyBackend::Cpu(CpuBackend::new(dtype)?))
            }
            Device::CudaEmu => Ok(AnyBackend::Cuda(CudaBackend::emulated(dtype)?)),
            Device::Cuda(ordinal) => Ok(AnyBackend::Cuda(CudaBackend::new(ordinal, dtype)?)),
        }
    }
}

/// A `--device` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
    CudaEmu,
}

/// `--device`, case-insensitive as `--method` is (`CPU`).
fn parse_device(given: &str) -> Result<Device> {
    let device = given.trim().to_ascii_lowercase();
    let unknown = || {
        Error::invalid(
            "--device",
            format!("unknown device `{given}`; expected cpu, cuda[:N] or cuda-emu"),
        )
    };
    match device.as_str() {
        "cpu" => Ok(Device::Cpu),
        "cuda-emu" => Ok(Device::CudaEmu),
        "cuda" => Ok(Device::Cuda(0)),
        other => match other.strip_prefix("cuda:") {
            Some(n) => n.parse::<usize>().map(Device::Cuda).map_err(|_| {
                Error::invalid(
                    "--device",
                    format!("`{given}`: expected cuda:N with N a device number"),
                )
            }),
            None => Err(unknown()),
        },
    }
}

fn parse_dtype(given: &str) -> Result<DType> {
    match given.trim().to_ascii_lowercase().as_str() {
        "f32" => Ok(DType::F32),
        "f64" => Ok(DType::F64),
        "bf16" => Ok(DType::BF16),
        _ => Err(Error::invalid(
            "--dtype",
            format!("`{given}`: expected f32, f64 (CPU) or bf16"),
        )),
    }
}

/// Clap's check of a flag's spelling, so a misspelt value is refused as a command line that
/// does not parse (status 2), before anything loads; the value stays the text given.
pub(super) fn spelling<T>(
    parse: impl Fn(&str) -> Result<T> + Clone + Send + Sync + 'static,
) -> impl Fn(&str) -> std::result::Result<String, String> + Clone + Send + Sync + 'static {
    move |given| match parse(given) {
        Ok(_) => Ok(given.to_string()),
        Err(Error::InvalidArgument { detail, .. }) => Err(detail),
        Err(e) => Err(e.to_string()),
    }
}

/// A flag's number, refused before anything loads where `problem` finds one: the library's
/// own check of it where it has one (one rule, in the same words, for the command line and a
/// program that embeds the library). What is no number is told what `problem` says of NaN.
pub(super) fn number_passing(
    problem: impl Fn(f64) -> Option<String> + Clone + Send + Sync + 'static,
) -> impl Fn(&str) -> std::result::Result<f64, String> + Clone + Send + Sync + 'static {
    move |given| {
        let Ok(x) = given.trim().parse::<f64>() else {
            let why = problem(f64::NAN).map_or(String::new(), |why| format!("; {why}"));
            return Err(format!("not a number{why}"));
        };
        match problem(x) {
            None => Ok(x),
            Some(why) => Err(why),
        }
    }
}

/// Names the flag in a parse error of its value (the library names only what it parsed: a
/// boundary, a target), so the message points at the command line.
fn for_flag(flag: &'static str) -> impl Fn(Error) -> Error {
    move |e| match e {
        Error::InvalidArgument { detail, .. } => Error::invalid(flag, detail),
        other => other,
    }
}

/// `--lora-targets`: comma-separated target names.
fn lora_targets(list: &str) -> Result<Vec<LoraTarget>> {
    list.split(',')
        .map(|t| t.trim().parse::<LoraTarget>())
        .collect::<Result<Vec<_>>>()
        .map_err(for_flag("--lora-targets"))
}

/// `--lora-layers`: comma-separated layer indices.
fn lora_layers(list: &str) -> Result<Vec<usize>> {
    list.split(',')
        .map(|l| {
            l.trim()
                .parse::<usize>()
                .map_err(|_| Error::invalid("--lora-layers", format!("`{l}` is not a layer index")))
        })
        .collect()
}

/// The PEFT method and its settings.
#[derive(Args, Debug, Clone)]
pub struct PeftArgs {
    /// full, bitfit, lora or spafit.
    #[arg(long, default_value = "spafit", value_parser = spelling(|m| m.parse::<Method>()))]
    pub method: String,
    /// SPAFIT: first bias-only layer, as an index (`2`) or a fraction (`1/3`, `0.5`; `1.0` is
    /// the whole depth, `1` layer 1) of the depth, rounded to the nearest layer, halves up
    /// (1/4 of 6 layers is 2) [default: 1/3].
    #[arg(long, allow_hyphen_values = true, value_parser = spelling(|b| b.parse::<Boundary>()))]
    pub n1: Option<String>,
    /// SPAFIT: first LoRA + bias layer, as an index or a fraction [default: 2/3].
    #[arg(long, allow_hyphen_values = true, value_parser = spelling(|b| b.parse::<Boundary>()))]
    pub n2: Option<String>,
    /// LoRA rank r [default: 8].
    #[arg(long, allow_hyphen_values = true, value_parser = at_least_one())]
    pub lora_r: Option<usize>,
    /// LoRA alpha (scale = alpha / r, or alpha / √r with --rslora) [default: 16].
    #[arg(long, allow_hyphen_values = true, value_parser = number_passing(spafit::nn::LoraConfig::alpha_problem))]
    pub lora_alpha: Option<f64>,
    /// Rank-stabilized LoRA (PEFT's use_rslora): the scale is alpha / √r, not alpha / r. Kept
    /// and exported as plain LoRA of the same scale (alpha·√r over r).
    #[arg(long)]
    pub rslora: bool,
    /// DoRA (PEFT's use_dora): each adapted weight row is rescaled to a trained magnitude,
    /// started at the row's norm; the row norms are held constant in backward, as PEFT's.
    /// Saved, exported (`use_dora`) and merged with the adapters.
    #[arg(long)]
    pub dora: bool,
    /// Dropout on the adapters' input during training [default: 0.1].
    #[arg(long, allow_hyphen_values = true, value_parser = number_passing(spafit::nn::LoraConfig::dropout_problem))]
    pub lora_dropout: Option<f64>,
    /// Comma-separated LoRA targets among query, key, value, attention.output.dense,
    /// intermediate.dense, output.dense (DistilBERT's q_lin, k_lin, v_lin, out_lin, lin1,
    /// lin2, MPNet's q, k, v, o and DeBERTa-v2's query_proj, key_proj, value_proj name the
    /// same maps). Default: query,value for lora; all six for spafit. Each names
    /// one map: `output.dense` is the feed-forward's output, not `attention.output.dense`
    /// (PEFT's `target_modules=["output.dense"]` matches both by suffix; `--export-peft`
    /// writes a pattern that names exactly the maps trained).
    #[arg(long, allow_hyphen_values = true, value_parser = spelling(lora_targets))]
    pub lora_targets: Option<String>,
    /// lora only: comma-separated layer indices that get adapters (default: all).
    #[arg(long, allow_hyphen_values = true, value_parser = spelling(lora_layers))]
    pub lora_layers: Option<String>,
    /// Also train the pooler.
    #[arg(long)]
    pub train_pooler: bool,
    /// Also train the embeddings (ELECTRA's with their projection to the hidden size).
    #[arg(long)]
    pub train_embeddings: bool,
    /// Also train the LayerNorm scales of every layer that trains anything.
    #[arg(long)]
    pub train_layernorm: bool,
}

impl PeftArgs {
    /// [`PeftArgs::config`] for a model of `family`: where the dense map of the head (BERT's
    /// pooler) always trains with it (RoBERTa, DistilBERT, ELECTRA), that map trains, and
    /// `--train-pooler`, which could add nothing, is refused. Every command that builds a
    /// model from the flags goes through it (`train`, `gradcheck`, `bench` on a checkpoint or
    /// a drawn `--shape`), so they train the same tensors.
    pub fn config_for(&self, family: EncoderFamily) -> Result<PeftConfig> {
        if self.train_pooler && family.pooler_is_head() {
            return Err(Error::invalid(
                "--train-pooler",
                format!(
                    "has no effect on this {} model: the dense map of its classification head \
                     (`{}`, BERT's pooler) trains with the head anyway",
                    family.display(),
                    family.hf_name("bert.pooler.dense")
                ),
            ));
        }
        Ok(self.config()?.for_family(family))
    }

    /// The configuration the flags describe.
    pub fn config(&self) -> Result<PeftConfig> {
        let method: Method = self.method.parse().map_err(for_flag("--method"))?;
        self.refuse_flags_without_effect(method)?;
        let mut c = PeftConfig::new(method);
        if let Some(list) = &self.lora_targets {
            c.lora.targets = lora_targets(list)?;
            // A target named twice would get one adapter, not two: a typo to point out.
            let targets = &c.lora.targets;
            if let Some((first, i)) = (0..targets.len()).find_map(|i| {
                let first = targets[..i].iter().position(|t| *t == targets[i])?;
                Some((first, i))
            }) {
                let spelled = |k: usize| list.split(',').nth(k).map_or("", str::trim);
                let (name, earlier) = (spelled(i), spelled(first));
                let why = match name == earlier {
                    true => format!("`{name}` is named twice; name each map once"),
                    false => format!(
                        "`{earlier}` and `{name}` name the same map ({}); name each map once",
                        targets[i]
                    ),
                };
                return Err(Error::invalid("--lora-targets", why));
            }
        }
        c.lora.rank = self.lora_r.unwrap_or(c.lora.rank);
        c.lora.alpha = self.lora_alpha.unwrap_or(c.lora.alpha);
        if self.rslora {
            c.lora.alpha = spafit::nn::LoraConfig::rank_stabilized_alpha(c.lora.alpha, c.lora.rank);
        }
        c.lora.dropout = self.lora_dropout.unwrap_or(c.lora.dropout);
        c.lora.dora = self.dora;
        c.lora_layers = self.lora_layers.as_deref().map(lora_layers).transpose()?;
        if let Some(layers) = &c.lora_layers {
            let mut sorted = layers.clone();
            sorted.sort_unstable();
            if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                return Err(Error::invalid(
                    "--lora-layers",
                    format!("layer {} is listed twice", w[0]),
                ));
            }
        }
        if let Some(n1) = &self.n1 {
            c.n1 = n1.parse::<Boundary>().map_err(for_flag("--n1"))?;
        }
        if let Some(n2) = &self.n2 {
            c.n2 = n2.parse::<Boundary>().map_err(for_flag("--n2"))?;
        }
        c.train_pooler = self.train_pooler;
        c.train_embeddings = self.train_embeddings;
        c.train_layer_norm_weights = self.train_layernorm;
        Ok(c)
    }

    /// Refuses a flag the resolved plan never reads: SPAFIT with N2 at the model's depth has
    /// no LoRA stratum (a LoRA flag), and with N1 there no layer trains (--train-layernorm);
    /// either would be reported among settings the run never used.
    pub fn check_flags_against_plan(&self, plan: &PeftPlan) -> Result<()> {
        if self.train_layernorm && plan.strata.iter().all(|s| *s == Stratum::Frozen) {
            return Err(Error::invalid(
                "--train-layernorm",
                format!(
                    "has no effect: this plan freezes all {} layers, so no layer's LayerNorm \
                     trains (lower --n1)",
                    plan.strata.len()
                ),
            ));
        }
        if plan.lora.is_some() {
            return Ok(());
        }
        let given = [
            ("--lora-r", self.lora_r.is_some()),
            ("--lora-alpha", self.lora_alpha.is_some()),
            ("--rslora", self.rslora),
            ("--dora", self.dora),
            ("--lora-dropout", self.lora_dropout.is_some()),
            ("--lora-targets", self.lora_targets.is_some()),
        ];
        match (given.iter().find(|(_, present)| *present), plan.boundaries) {
            (Some((flag, _)), Some((_, n2))) => Err(Error::invalid(
                flag,
                format!(
                    "has no effect: with N2 = {n2}, the model's {} layers, this SPAFIT plan has \
                     no LoRA + bias layer (lower --n2 to give the top layers adapters)",
                    plan.strata.len()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// A flag the method never reads is refused: a run that silently ignored `--n1` or
    /// `--lora-r` would be reported under settings it never used.
    fn refuse_flags_without_effect(&self, method: Method) -> Result<()> {
        use Method::{BitFit, Lora, Spafit};
        const SPAFIT: &[Method] = &[Spafit];
        const WITH_ADAPTERS: &[Method] = &[Lora, Spafit];
        // Full fine-tuning trains the pooler, embeddings and LayerNorms anyway.
        const NOT_FULL: &[Method] = &[BitFit, Lora, Spafit];
        let given = [
            ("--n1", self.n1.is_some(), SPAFIT),
            ("--n2", self.n2.is_some(), SPAFIT),
            ("--lora-r", self.lora_r.is_some(), WITH_ADAPTERS),
            ("--lora-alpha", self.lora_alpha.is_some(), WITH_ADAPTERS),
            ("--rslora", self.rslora, WITH_ADAPTERS),
            ("--dora", self.dora, WITH_ADAPTERS),
            ("--lora-dropout", self.lora_dropout.is_some(), WITH_ADAPTERS),
            ("--lora-targets", self.lora_targets.is_some(), WITH_ADAPTERS),
            ("--lora-layers", self.lora_layers.is_some(), &[Lora]),
            ("--train-pooler", self.train_pooler, NOT_FULL),
            ("--train-embeddings", self.train_embeddings, NOT_FULL),
            ("--train-layernorm", self.train_layernorm, NOT_FULL),
        ];
        match given
            .iter()
            .find(|(_, present, methods)| *present && !methods.contains(&method))
        {
            Some((flag, _, methods)) => Err(Error::invalid(
                flag,
                format!(
                    "has no effect with --method {method}{}; it applies to {}",
                    if method == Method::Full {
                        " (full fine-tuning trains every weight)"
                    } else {
                        ""
                    },
                    methods
                        .iter()
                        .map(|m| format!("--method {m}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            None => Ok(()),
        }
    }
}

/// A task: a GLUE task in a GLUE directory, or custom CSV/TSV/JSONL files.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli; or ax, GLUE's
    /// diagnostic set, for `predict` with an MNLI adapter); needs --glue-dir.
    #[arg(long, conflicts_with_all = [
        "train_file", "dev_file", "labels", "regression", "multi_label", "text_column",
        "text_pair_column", "label_column",
    ])]
    pub task: Option<String>,
    /// Root of the GLUE distribution (holding CoLA/, SST-2/, ...).
    #[arg(long)]
    pub glue_dir: Option<PathBuf>,
    /// Custom data: training file (.csv, .tsv, .jsonl, or .json: JSON Lines or one array of
    /// row objects); eval and predict read it only with --split train.
    #[arg(long)]
    pub train_file: Option<PathBuf>,
    /// Custom data: evaluation file.
    #[arg(long)]
    pub dev_file: Option<PathBuf>,
    /// Custom data: column of the first text.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Custom data: column of the second text (pair tasks).
    #[arg(long)]
    pub text_pair_column: Option<String>,
    /// Custom data: label column.
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// Custom data: comma-separated label names in id order (default: the names the adapter
    /// or a fine-tuned checkpoint records; else for train the training file's labels in
    /// sorted order, numbers by value, or a regression where they are real numbers and the
    /// checkpoint's own head has one output; for eval and predict 0 to n-1 for a head of n
    /// outputs). A head that names its classes (an adapter's, a checkpoint's id2label) is
    /// reordered to this order by name; one whose outputs are unnamed (transformers'
    /// LABEL_0, …) holds the classes 0 to n-1, reordered so where the names are those
    /// numbers, else taken in this order.
    #[arg(long, conflicts_with = "regression", value_parser = label_list)]
    pub labels: Option<String>,
    /// Custom data: the label is a real number (regression, one output).
    #[arg(long)]
    pub regression: bool,
    /// Custom data: each label is a set of classes, any number of them (none included):
    /// names or ids separated by commas (`joy,anger`; an empty field is the empty set), or
    /// a list (`["joy", "anger"]`, a JSON array in JSONL). The head has a sigmoid per class
    /// (binary cross-entropy, as transformers' `multi_label_classification`); a class is
    /// predicted where its probability is above 0.5 (or --threshold).
    #[arg(long, conflicts_with = "regression")]
    pub multi_label: bool,
    /// Multi-label: the probability above which a class is predicted, for eval's metrics,
    /// predict's sets and the evaluations that pick train's best/ [default: 0.5; not saved
    /// with the adapter: give it to eval and predict too].
    #[arg(long, allow_hyphen_values = true, value_parser = number_passing(spafit::train::threshold_problem))]
    pub threshold: Option<f64>,
    /// Skip malformed rows (reported on stderr with their file and line; the final JSON line
    /// counts them: eval's skipped_rows, train's train_skipped_rows and dev_skipped_rows, and
    /// MNLI's dev_mismatched_skipped_rows)
    /// instead of stopping.
    #[arg(long)]
    pub skip_malformed: bool,
}

impl DataArgs {
    /// Gives `model` the --threshold, refused for data of `kind` that is not multi-label
    /// (its predictions have no threshold).
    pub fn apply_threshold<B: spafit::backend::Backend>(
        &self,
        model: &mut spafit::model::BertClassifier<B>,
        kind: &TaskKind,
    ) -> Result<()> {
        let Some(threshold) = self.threshold else {
            return Ok(());
        };
        if !kind.is_multi_label() {
            return Err(Error::invalid(
                "--threshold",
                "it is the probability above which a multi-label head predicts a class; this \
                 task's head predicts one class per example (the most probable) or a score",
            ));
        }
        model
            .set_decision_threshold(threshold)
            .map_err(for_flag("--threshold"))
    }

    /// Every data file the flags name: --train-file, --dev-file, and each split file of
    /// every GLUE task under --glue-dir, not only the one named (outputs must not replace
    /// any of them: the next run of that task would read a prediction file as its data).
    pub fn input_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = [&self.train_file, &self.dev_file]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        if let Some(dir) = &self.glue_dir {
            for task in GlueTask::ALL.into_iter().chain([GlueTask::Ax]) {
                files.extend(task.files(dir));
            }
        }
        files
    }

    /// The GLUE task named by --task.
    pub fn glue_task(&self) -> Result<Option<GlueTask>> {
        // clap's `requires` lets this pass when a custom-data flag is present.
        if self.task.is_none() && self.glue_dir.is_some() {
            return Err(Error::invalid(
                "--glue-dir",
                "it needs --task (GLUE data); custom files take --train-file / --dev-file",
            ));
        }
        self.task
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(for_flag("--task"))
    }

    fn policy(&self) -> OnMalformed {
        if self.skip_malformed {
            OnMalformed::Skip
        } else {
            OnMalformed::Error
        }
    }

    /// The label space the flags give; without --labels or --regression, `default` (an
    /// adapter's), else the two classes `0,1`.
    fn kind(&self, default: Option<&TaskKind>) -> Result<TaskKind> {
        if self.regression {
            return Ok(TaskKind::Regression);
        }
        // Sets of classes where the flag or the head (an adapter's, a checkpoint's) says so.
        let multi_label = self.multi_label || default.is_some_and(TaskKind::is_multi_label);
        let of_kind = |labels: Vec<String>| match multi_label {
            true => TaskKind::MultiLabel { labels },
            false => TaskKind::Classification { labels },
        };
        let Some(list) = &self.labels else {
            let two = || vec!["0".to_string(), "1".to_string()];
            return Ok(match (default, multi_label) {
                (Some(kind), false) => kind.clone(),
                (Some(kind), true) => of_kind(kind.class_names().map_or_else(two, <[_]>::to_vec)),
                (None, _) => of_kind(two()),
            });
        };
        // Checked by `label_list` as the command line was parsed.
        Ok(of_kind(label_names(list)))
    }

    /// The label space of a run's training data when only the training file can give it
    /// (custom data without --labels, --regression or a `default`): the classes it holds,
    /// said on stderr; or, from a checkpoint whose own head is a regressor (`regressor_head`),
    /// a regression where the labels are real numbers that cannot be classes, as `eval` and
    /// `predict` read that head.
    /// Otherwise `default` as given.
    pub fn train_kind(
        &self,
        default: Option<&TaskKind>,
        regressor_head: bool,
    ) -> Result<Option<TaskKind>> {
        // A single-label head's classes say nothing of a multi-label task's.
        let default = default.filter(|k| !self.multi_label || k.is_multi_label());
        if default.is_some() || self.labels.is_some() || self.regression {
            return Ok(default.cloned());
        }
        let Some(file) = self.train_file.as_ref().filter(|_| self.task.is_none()) else {
            return Ok(None);
        };
        let inferred = self.table(file, true, None)?.infer_classes(self.policy());
        // Real-valued labels, refused as classes, are a regressor's scores when the file
        // reads as scores with at least one fraction; any other fault keeps its own error.
        // Whole numbers stay classes, as they were before the head was looked at (0/1 data
        // on an STS-B model is a classification).
        if inferred.is_err()
            && regressor_head
            && !self.multi_label
            && self.has_real_valued_labels(file)
        {
            note!(
                "the checkpoint's own head is a regressor (one output) and {}'s labels are \
                 real numbers: it trains as a regression from that head (--regression)",
                file.display()
            );
            return Ok(Some(TaskKind::Regression));
        }
        let kind = inferred?;
        if let TaskKind::Classification { labels } = &kind {
            let sets: Vec<&String> = labels
                .iter()
                .filter(|l| spafit::data::looks_like_a_set(l))
                .collect();
            if let Some(first) = sets.first() {
                let first = spafit::data::class_list(std::slice::from_ref(*first));
                note!(
                    "note: {} of the classes of {} look like sets of classes (`{first}`): each \
                     such label is one class of its own unless --multi-label reads it as a set",
                    sets.len(),
                    file.display()
                );
            }
        }
        if let Some(labels) = kind.class_names() {
            let scores = match regressor_head && labels.iter().all(|l| l.parse::<f64>().is_ok()) {
                true => ", or --regression to train them as the checkpoint's regressor's scores",
                false => "",
            };
            note!(
                "classes from {}: {} (give --labels to name them in another order{scores})",
                file.display(),
                spafit::data::class_list(labels)
            );
        }
        Ok(Some(kind))
    }

    /// Whether `file` reads as regression data whose scores are not all whole numbers.
    fn has_real_valued_labels(&self, file: &std::path::Path) -> bool {
        let Ok(table) = self.table(file, true, Some(&TaskKind::Regression)) else {
            return false;
        };
        table.load(self.policy()).is_ok_and(|data| {
            data.examples
                .iter()
                .any(|e| matches!(e.target, Some(Target::Score(s)) if s.fract() != 0.0))
        })
    }

    fn table(
        &self,
        path: &std::path::Path,
        labeled: bool,
        default_kind: Option<&TaskKind>,
    ) -> Result<TableSpec> {
        super::named_pipes::note_named_pipe(path);
        Ok(TableSpec {
            path: path.to_path_buf(),
            text_column: self.text_column.clone(),
            text_pair_column: self.text_pair_column.clone(),
            label_column: labeled.then(|| self.label_column.clone()),
            kind: self.kind(default_kind)?,
            filter: None,
        })
    }

    /// The label space and name of custom data for `split` where the flags alone give the
    /// space (--labels, --regression), so that a head that cannot take it is refused before
    /// any row is read; `None` for GLUE data, or where the data or `default_kind` give it.
    pub fn given_label_space(
        &self,
        split: &str,
        default_kind: Option<&TaskKind>,
    ) -> Result<Option<(TaskKind, String)>> {
        if self.glue_task()?.is_some() || (self.labels.is_none() && !self.regression) {
            return Ok(None);
        }
        // Named as the loaded table names itself.
        self.custom_file(split)
            .map(|f| Ok((self.kind(default_kind)?, f.display().to_string())))
            .transpose()
    }

    /// The custom file of `split`: --train-file for `train`, --dev-file for `dev`, `test`
    /// and anything else.
    fn custom_file(&self, split: &str) -> Option<&PathBuf> {
        match split {
            "train" => self.train_file.as_ref(),
            _ => self.dev_file.as_ref(),
        }
    }

    /// Loads a split: GLUE `split` (`train`, `dev`, `dev_matched`, `test`...) or the custom
    /// file for `train` / anything else.
    pub fn load(&self, split: &str) -> Result<Dataset> {
        self.load_with_default_kind(split, None)
    }

    /// [`Self::load`], with the label space `default_kind` (an adapter's) for custom data
    /// when the flags give none.
    pub fn load_with_default_kind(
        &self,
        split: &str,
        default_kind: Option<&TaskKind>,
    ) -> Result<Dataset> {
        self.load_split(split, default_kind, !split.starts_with("test"))
    }

    /// [`Self::load_with_default_kind`] for predictions: a custom file's labels are not
    /// read (predict never uses them), so a file without a label column, or with empty or
    /// unknown labels, is predicted whatever --split says.
    pub fn load_for_prediction(
        &self,
        split: &str,
        default_kind: Option<&TaskKind>,
    ) -> Result<Dataset> {
        self.load_split(split, default_kind, false)
    }

    fn load_split(
        &self,
        split: &str,
        default_kind: Option<&TaskKind>,
        custom_labeled: bool,
    ) -> Result<Dataset> {
        let report = |d: Dataset| {
            const SHOWN: usize = 10;
            if !d.skipped.is_empty() {
                note!("{}: skipped {} malformed row(s):", d.name, d.skipped.len());
                for row in d.skipped.iter().take(SHOWN) {
                    note!("  {row}");
                }
                if d.skipped.len() > SHOWN {
                    note!("  ... and {} more", d.skipped.len() - SHOWN);
                }
            }
            if let Some(warning) = d.empty_texts() {
                note!("warning: {warning}");
            }
            d
        };
        if let Some(task) = self.glue_task()? {
            let dir = self
                .glue_dir
                .as_ref()
                .ok_or_else(|| Error::invalid("--task", "a GLUE task needs --glue-dir"))?;
            return task.load(dir, split, self.policy()).map(report);
        }
        let file = self.custom_file(split).ok_or_else(|| {
            let flag = if split == "train" {
                "--train-file"
            } else {
                "--dev-file"
            };
            Error::invalid(
                "data",
                format!(
                    "no data for `{split}`: give {flag} (custom data's `train` split is \
                     --train-file, `dev` and `test` are --dev-file), or --task with --glue-dir"
                ),
            )
        })?;
        let data = self
            .table(file, custom_labeled, default_kind)?
            .load(self.policy())
            .map(report)?;
        // `table` took the format from the same extension.
        if spafit::data::TableFormat::from_path(file)? == spafit::data::TableFormat::Tsv {
            if let Some(warning) = spafit::data::csv_quoting_in_tsv(&data) {
                note!("warning: {warning}");
            }
        }
        Ok(data)
    }
}

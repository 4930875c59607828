use std::time::Instant;

use clap::Args;
use serde_json::json;
use spafit::bench::{bench_train_step_with, BenchSettings, StepKernelTimes};
use spafit::checkpoint::BertConfig;
use spafit::gradcheck::{gradcheck_case, GradcheckCase, GradcheckObjective, GradcheckProgress};
use spafit::model::{check_batch_memory, BertClassifier, Pass};
use spafit::peft::{peft_lora_init, PeftConfig, PeftPlan};
use spafit::text::TextInput;
use spafit::Result;

use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;

use super::args::{on_backend, AnyBackend, ModelArgs, PeftArgs};
use super::named_pipes::open_checkpoint;
use super::train::setup;

/// Coordinates from which a gradcheck shows its progress.
const LONG_GRADCHECK: usize = 1000;

/// Without --tolerance, the resolution above which gradcheck says where the check was coarse:
/// the tolerance the help suggests for f64 and f32 checks.
const DEFAULT_RESOLUTION_NOTE: f64 = 1e-4;

/// A duration as a person reads an estimate: seconds under two minutes, then minutes, then
/// hours with a decimal.
fn rough_duration(seconds: f64) -> String {
    if seconds < 120.0 {
        format!("{} s", seconds.round())
    } else if seconds < 7200.0 {
        format!("{} min", (seconds / 60.0).round())
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

/// `spafit gradcheck`.
#[derive(Args, Debug)]
pub struct GradcheckCommand {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub peft: PeftArgs,
    /// Coordinates per trainable tensor (all of a smaller one); a check of many shows its
    /// progress on stderr.
    #[arg(long, value_parser = super::args::at_least_one(), default_value_t = 2, allow_hyphen_values = true)]
    pub samples: usize,
    /// Seed of the adapters, dropout and sampled coordinates.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub seed: u64,
    /// Fail with exit status 3 (after the JSON line) when the worst relative error is above
    /// this, for scripts and CI (status 1 is an error that stopped the check); without it the
    /// error is only reported; a check that could not see errors that small (`resolution`
    /// above it, or a tensor `unresolved`) exits with 3 as well, as inconclusive. On real
    /// checkpoints the f64 reference agrees to within the finite differences' rounding (0 on
    /// all-MiniLM-L6-v2), f32 to ~1e-5, bf16 to 2–5e-2
    /// on real checkpoints; where a gradient nearly cancels over the batch, as the classifier
    /// bias's can, bf16's relative error is larger (~8e-2 seen on MiniLM; on tiny random
    /// models up to 0.72 seen, tiny-distilbert's, a LayerNorm bias, CPU and stand-in alike,
    /// varying with --seed):
    /// a bf16 tolerance catches gross errors only (0.1 on real checkpoints).
    #[arg(long, allow_hyphen_values = true, value_parser = super::args::number_passing(spafit::gradcheck::tolerance_problem))]
    pub tolerance: Option<f64>,
    /// Check four fixed sentence pairs instead of single sentences: the second segment's
    /// tokens, and with --train-embeddings the token-type embeddings, get their gradient.
    #[arg(long)]
    pub pairs: bool,
    /// Check a regression head's mean squared error (one output, scores 0 to 5) instead of
    /// classes' cross-entropy.
    #[arg(long, conflicts_with_all = ["multi_label", "num_labels"])]
    pub regression: bool,
    /// Check a multi-label head's binary cross-entropy (a sigmoid per class) instead of
    /// classes' cross-entropy.
    #[arg(long)]
    pub multi_label: bool,
    /// Classes of the checked head (2 to 4096; 1 will do for --multi-label).
    #[arg(long, default_value_t = 2, value_parser = label_count, allow_hyphen_values = true)]
    pub num_labels: usize,
    /// Whether --dtype was on the command line (not its default).
    #[arg(skip)]
    pub dtype_given: bool,
}

/// `--num-labels`: from 1 (a multi-label head's least) to the most any check takes, refused
/// as a usage error whatever the other flags.
fn label_count(text: &str) -> std::result::Result<usize, String> {
    let n = super::args::at_least_one()(text)?;
    match n > spafit::gradcheck::MAX_GRADCHECK_LABELS {
        true => Err(format!(
            "must be at most {} (every class is the same code path)",
            spafit::gradcheck::MAX_GRADCHECK_LABELS
        )),
        false => Ok(n),
    }
}

/// What gradcheck reads: four short sentences, or four pairs with --pairs.
const GRADCHECK_TEXTS: [&str; 4] = [
    "a gorgeous, witty, seductive movie.",
    "unbelievably dull and overlong.",
    "it is not bad at all",
    "so-so",
];
const GRADCHECK_PAIRS: [(&str, &str); 4] = [
    ("a cat sat on the mat.", "the mat had a cat sitting on it."),
    (
        "he called the film dull.",
        "the film, he said, was brilliant!",
    ),
    ("it is raining", "the sun is out"),
    ("so-so", "it was fine, i guess"),
];

impl GradcheckCommand {
    fn objective(&self) -> GradcheckObjective {
        match (self.regression, self.multi_label) {
            (true, _) => GradcheckObjective::Regression,
            (false, true) => GradcheckObjective::MultiLabel(self.num_labels),
            (false, false) => GradcheckObjective::Classes(self.num_labels),
        }
    }

    /// The refusals the command line alone decides (see [`super::Cli::from_env`]); the
    /// model's family completes the PEFT flags' checks.
    pub fn check_command_line(&self) -> Result<()> {
        self.model.device_and_dtype()?;
        self.peft.config()?;
        match self.objective().problem() {
            Some(why) => Err(spafit::Error::invalid("--num-labels", why)),
            None => Ok(()),
        }
    }

    pub fn run(&self) -> Result<()> {
        // On the CPU the analytic gradients come from the f64 reference itself unless
        // --dtype asks for the f32 (or bf16) backend; on CUDA from the device, in its dtype;
        // all against the same f64 finite differences.
        match self.model.backend()? {
            AnyBackend::Cpu(_) if !self.dtype_given => self.run_on(CpuBackend::f64()),
            other => on_backend!(other, b => self.run_on(b)),
        }
    }

    fn run_on<B: Backend>(&self, backend: B) -> Result<()> {
        let checkpoint = open_checkpoint(&self.model.model)?;
        let peft = &self.peft.config_for(checkpoint.config.family())?;
        let layers = checkpoint.config.num_hidden_layers;
        let plan = PeftPlan::new(peft, layers)?;
        self.peft.check_flags_against_plan(&plan)?;
        if let Some(notice) = peft.empty_strata_notice(layers) {
            note!("note: {notice}");
        }
        let inputs: Vec<TextInput> = match self.pairs {
            true => GRADCHECK_PAIRS
                .iter()
                .map(|(a, b)| TextInput::Pair(a, b))
                .collect(),
            false => GRADCHECK_TEXTS
                .iter()
                .map(|t| TextInput::Single(t))
                .collect(),
        };
        let case = GradcheckCase {
            inputs,
            objective: self.objective(),
            samples: self.samples,
            seed: self.seed,
        };
        let started = Instant::now();
        let mut show = |p: GradcheckProgress<'_>| {
            // A short check says nothing until its result; a long one (a large --samples
            // reaches every coordinate of big tensors) says what it will do and how far it got.
            if p.planned_coordinates < LONG_GRADCHECK {
                return;
            }
            if p.tensor == 1 {
                note!(
                    "checking {} coordinates of {} tensors, each two or more f64 forward passes \
                     (--samples {} per tensor; fewer check faster)",
                    p.planned_coordinates,
                    p.tensors,
                    self.samples
                );
            }
            // Every coordinate costs about the same forward passes, so the pace so far
            // predicts the rest.
            let time_left = match p.coordinates_done {
                0 => String::new(),
                done => {
                    let per_coordinate = started.elapsed().as_secs_f64() / done as f64;
                    let left = per_coordinate * (p.planned_coordinates - done) as f64;
                    format!(", about {} left", rough_duration(left))
                }
            };
            note!(
                "tensor {}/{}: {} ({} coordinates){time_left}",
                p.tensor,
                p.tensors,
                p.name,
                p.coordinates
            );
        };
        let r = gradcheck_case(&backend, &checkpoint, peft, &case, &mut show).map_err(|e| {
            e.in_memory_context(|| {
                let what = format!(
                    "This was the gradient check (the model on the device, its f64 reference \
                     on the host), over {} short {}",
                    case.inputs.len(),
                    if self.pairs { "pairs" } else { "texts" }
                );
                super::out_of_memory_context(&backend, what, &[], plan.freezes_weights())
            })
        })?;
        let key_biases = match r.skipped.len() {
            1 => "1 attention key bias not differenced: its gradient is".to_string(),
            n => format!("{n} attention key biases not differenced: their gradients are"),
        };
        let skipped = match r.skipped.len() {
            0 => String::new(),
            _ => format!(
                " ({key_biases} exactly zero, and the device gives at most {:.1e} of the \
                 query bias's)",
                r.key_bias_err
            ),
        };
        let worst = match r.max_rel_err {
            0.0 => "every difference within the finite differences' rounding".to_string(),
            e => format!("worst relative error {e:.3e} ({})", r.worst_tensor),
        };
        note!(
            "checked {} coordinates and one random direction through each of {} tensors against f64 finite differences{skipped}; {worst}",
            r.coordinates, r.tensors
        );
        if !r.unresolved.is_empty() {
            note!(
                "warning: {} of the tensors have a gradient the finite differences cannot tell \
                 from zero (within the loss's rounding), so their backward pass went unchecked: \
                 {} (a head of zeros leaves the encoder no gradient; so does a LoRA alpha too \
                 small to matter)",
                r.unresolved.len(),
                r.unresolved.join(", ")
            );
        }
        // An error under the resolution would pass unseen: worth saying where it is above
        // what the check is asked to show (with --tolerance, the verdict says it).
        if self.tolerance.is_none() && r.resolution > DEFAULT_RESOLUTION_NOTE {
            note!(
                "note: {}'s gradient is small against the loss's rounding: the check could \
                 see relative errors there only above {:.1e}",
                r.least_resolved_tensor,
                r.resolution
            );
        }
        // JSON has no NaN or infinity (serde_json writes null): said as text, which no script
        // takes for a small number.
        let number = |x: f64| match x.is_finite() {
            true => json!(x),
            false => json!(x.to_string()),
        };
        let name = |n: &str| match n.is_empty() {
            true => serde_json::Value::Null,
            false => json!(n),
        };
        let mut line = json!({"method": peft.method.to_string(), "device": backend.name(), "tensors": r.tensors, "coordinates": r.coordinates, "max_rel_err": number(r.max_rel_err), "worst_tensor": name(&r.worst_tensor), "resolution": number(r.resolution), "least_resolved_tensor": name(&r.least_resolved_tensor), "unresolved": r.unresolved, "skipped": r.skipped, "key_bias_err": number(r.key_bias_err), "key_bias_tensor": name(&r.key_bias_tensor)});
        line["seed"] = json!(self.seed);
        line["samples"] = json!(self.samples);
        line["objective"] = json!(case.objective.to_string());
        line["num_labels"] = json!(case.objective.num_labels());
        line["pairs"] = json!(self.pairs);
        describe_plan(&mut line, &plan);
        let verdict = self.tolerance.map(|t| r.within(t));
        if let Some(v) = &verdict {
            line["tolerance"] = json!(self.tolerance);
            line["passed"] = json!(v.is_ok());
            // Neither a pass nor a gradient found wrong: the check could not see that far.
            line["inconclusive"] = json!(matches!(
                v,
                Err(spafit::Error::GradcheckInconclusive { .. })
            ));
        }
        super::print_line(&line)?;
        verdict.unwrap_or(Ok(()))
    }
}

/// What the trainable parameters are, in a JSON line: the resolved strata and adapters and
/// what `--train-*` adds, so an archived line says which configuration it measured.
fn describe_plan(line: &mut serde_json::Value, plan: &PeftPlan) {
    if let Some((n1, n2)) = plan.boundaries {
        line["n1"] = json!(n1);
        line["n2"] = json!(n2);
    }
    if let Some(lora) = &plan.lora {
        let layers = plan.lora_layers();
        let targets: Vec<String> = lora.targets.iter().map(|t| t.to_string()).collect();
        line["lora"] = json!({"r": lora.rank, "alpha": lora.alpha, "dropout": lora.dropout, "targets": targets, "layers": layers});
        if !lora.overrides.is_empty() {
            line["lora"]["overrides"] = json!(lora.overrides);
        }
        if !lora.unadapted.is_empty() {
            line["lora"]["unadapted"] = json!(lora.unadapted);
        }
        if lora.dora {
            line["lora"]["dora"] = json!(true);
        }
    }
    line["train_embeddings"] = json!(plan.train_embeddings);
    line["train_pooler"] = json!(plan.train_pooler);
    line["train_layer_norm"] = json!(plan.train_layer_norm_weights);
}

/// A --shape that names a preset (any case), refused as a misspelling otherwise.
fn shape_name(given: &str) -> std::result::Result<String, String> {
    match BertConfig::preset(&given.to_ascii_lowercase()) {
        Some(_) => Ok(given.to_string()),
        None => Err(format!(
            "`{given}`: expected tiny, mini, base, large, electra-small, electra-base, \
             electra-large, distilbert-base, mpnet-base or deberta-v3-base"
        )),
    }
}

/// `spafit bench`.
#[derive(Args, Debug)]
pub struct BenchCommand {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub peft: PeftArgs,
    /// Examples per step.
    #[arg(long, value_parser = super::args::at_least_one(), default_value_t = 32, allow_hyphen_values = true)]
    pub batch_size: usize,
    /// Run each step's batch in micro-batches of at most N examples, their gradients summed
    /// before AdamW (train's gradient accumulation): its cost in time and its saving in
    /// memory (N ≤ --batch-size).
    #[arg(long, value_parser = super::args::at_least_one(), allow_hyphen_values = true)]
    pub micro_batch_size: Option<usize>,
    /// Tokens per example (without it, 64, or all the model's positions where it has fewer,
    /// noted).
    #[arg(long, value_parser = super::args::at_least_one(), default_value_t = 64, allow_hyphen_values = true)]
    pub seq_len: usize,
    /// Whether --seq-len was on the command line (not its default).
    #[arg(skip)]
    pub seq_len_given: bool,
    /// Timed steps, 1 to 1000000 (the median is reported).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000), default_value_t = 10, allow_hyphen_values = true)]
    pub steps: usize,
    /// Untimed steps first, 0 to 1000000.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1_000_000), default_value_t = 2, allow_hyphen_values = true)]
    pub warmup: usize,
    /// Benchmark a model of this shape with random weights instead of --model: `tiny` (2
    /// layers, hidden 128), `mini` (4 layers, hidden 256), `base` (BERT-base: 12 layers,
    /// hidden 768) or `large` (24 layers, hidden 1024); `electra-small` (12 layers, hidden 256
    /// over 128-wide embeddings and their projection), `electra-base` or `electra-large`
    /// (BERT-base's and BERT-large's shapes under ELECTRA's head); `distilbert-base` (6
    /// layers, hidden 768, no segment table, the ReLU head); `mpnet-base` (BERT-base's shape
    /// with MPNet's relative position bias, no segment table); `deberta-v3-base` (12 layers,
    /// hidden 768, disentangled attention over 256 relative buckets).
    #[arg(long, value_parser = shape_name)]
    pub shape: Option<String>,
    /// After the timed steps, time one more step's CUDA kernels on the device: each kernel's
    /// launches and milliseconds on stderr, the busiest first, beside the step's wall time,
    /// and `kernel_times` in the JSON line (--device cuda or cuda-emu).
    #[arg(long)]
    pub kernel_times: bool,
    /// Time inference instead of training: each step a forward pass of the batch in
    /// evaluation mode, as `eval` and `predict` run it (nothing kept for a backward, no
    /// dropout, the logits read back to the host). Not with --micro-batch-size.
    #[arg(long, conflicts_with = "micro_batch_size")]
    pub inference: bool,
}

/// Kernels listed by name on stderr; the rest are summed on one line.
const KERNELS_LISTED: usize = 12;

impl BenchCommand {
    /// What ran out of memory in a timed step, and which of the command's settings need less.
    fn step_memory_context<B: Backend>(
        &self,
        backend: &B,
        seq_len: usize,
        frozen_weights: bool,
    ) -> String {
        let micro = self.micro_batch_size.unwrap_or(self.batch_size);
        let in_parts = match micro < self.batch_size {
            true => format!(" in micro-batches of {micro}"),
            false => String::new(),
        };
        let what = format!(
            "This was {} on a batch of {} × {} tokens{in_parts}",
            match self.inference {
                true => "a forward pass in evaluation mode",
                false => "a training step",
            },
            self.batch_size,
            seq_len
        );
        // In micro-batches the part, not the batch, is what the activations scale with.
        let changes = [
            (seq_len > 1).then_some("a shorter --seq-len"),
            (micro > 1 && !self.inference)
                .then_some("a smaller --micro-batch-size (the same batch in parts)"),
            (micro == self.batch_size && micro > 1).then_some("a smaller --batch-size"),
        ];
        super::out_of_memory_context(backend, what, &changes, frozen_weights)
    }

    /// The refusals the command line alone decides (see [`super::Cli::from_env`]).
    pub fn check_command_line(&self) -> Result<()> {
        self.model.device_and_dtype()?;
        if let Some(size) = self.micro_batch_size {
            spafit::train::check_micro_batch_size("bench", size, self.batch_size)?;
        }
        if self.kernel_times && !self.model.launches_kernels()? {
            return Err(spafit::Error::invalid(
                "--kernel-times",
                "times CUDA kernels on the device: give --device cuda or cuda-emu (the CPU \
                 backend launches none)",
            ));
        }
        self.peft.config().map(drop)
    }

    pub fn run(&self) -> Result<()> {
        let peft = self.peft.config()?;
        on_backend!(self.model.backend()?, b => self.run_on(b, &peft))
    }

    fn run_on<B: Backend>(&self, backend: B, peft: &PeftConfig) -> Result<()> {
        // Read without regard to case, as --method and --device are.
        let shape = self.shape.as_deref().map(str::to_ascii_lowercase);
        let (backend, mut model) = match &shape {
            Some(shape) => {
                let config = BertConfig::preset(shape).ok_or_else(|| {
                    spafit::Error::invalid("--shape", shape_name(shape).err().unwrap_or_default())
                })?;
                let peft = &self.peft.config_for(config.family())?;
                let plan = PeftPlan::new(peft, config.num_hidden_layers)?;
                self.peft.check_flags_against_plan(&plan)?;
                if let Some(notice) = peft.empty_strata_notice(config.num_hidden_layers) {
                    note!("note: {notice}");
                }
                // Drawing BERT-large's weights takes seconds and a gigabyte: a batch that
                // cannot fit even one forward pass is refused before that (the step checks
                // again, counting what the tape keeps).
                check_batch_memory(
                    &backend,
                    &config,
                    self.micro_batch_size.unwrap_or(self.batch_size),
                    self.seq_len,
                    Pass::Inference,
                    "bench",
                )?;
                let m = BertClassifier::random_for_plan(
                    &config,
                    &backend,
                    2,
                    0,
                    &plan,
                    &mut peft_lora_init(&backend, 0),
                )?;
                super::release_loading_memory();
                (backend, m)
            }
            None => {
                let run = setup(
                    backend,
                    open_checkpoint(&self.model.model)?,
                    &self.peft,
                    2,
                    0,
                )?;
                (run.backend, run.model)
            }
        };
        if backend.name().starts_with("cuda-emu") {
            note!(
                "cuda-emu runs the CUDA kernels on the CPU stand-in: these timings say nothing \
                 about a GPU's"
            );
        }
        // As train, eval and predict cut to a small model's positions: only a length asked
        // for is refused there.
        let positions = model.config().max_tokens();
        let seq_len = match !self.seq_len_given && positions < self.seq_len {
            true => {
                note!(
                    "note: sequences of {positions} tokens, all the model's positions take ({}), \
                     not the default {}",
                    model.config().max_tokens_source(),
                    self.seq_len
                );
                positions
            }
            false => self.seq_len,
        };
        let settings = BenchSettings {
            batch: self.batch_size,
            micro_batch: self.micro_batch_size.unwrap_or(self.batch_size),
            seq_len,
            warmup: self.warmup,
            steps: self.steps,
            kernel_times: self.kernel_times,
            inference: self.inference,
        };
        let frozen = model.has_frozen_linear_weights();
        let r = bench_train_step_with(&backend, &mut model, &settings).map_err(|e| {
            e.in_memory_context(|| self.step_memory_context(&backend, seq_len, frozen))
        })?;
        let mut line = json!({
            "pass": match self.inference { true => "inference", false => "training" },
            "method": peft.method.to_string(), "device": backend.name(), "dtype": self.model.dtype()?.to_string(),
            "model": shape.map_or_else(|| self.model.model.display().to_string(), |s| match (s.strip_prefix("electra-"), s.strip_prefix("distilbert-"), s.strip_prefix("mpnet-")) {
                (Some(size), _, _) => format!("random ELECTRA-{size}"),
                (_, Some(size), _) => format!("random DistilBERT-{size}"),
                (_, _, Some(size)) => format!("random MPNet-{size}"),
                _ if s.starts_with("deberta-") => format!("random DeBERTa-{}", &s["deberta-".len()..]),
                _ => format!("random BERT-{s}"),
            }),
            "batch": r.batch, "micro_batch": r.micro_batch, "seq_len": r.seq_len, "steps": r.steps,
            "ms_per_step": r.ms_per_step, "ms_per_step_min": r.ms_per_step_min, "samples_per_s": r.samples_per_s, "tokens_per_s": r.tokens_per_s,
            "warmup": self.warmup, "host_threads": rayon::current_num_threads(),
            "peak_mem_mib": r.peak_mem_mib, "resident_before_steps_mib": r.resident_before_steps_mib, "process_peak_mem_mib": r.process_peak_mem_mib, "peak_device_mib": r.peak_device_mib,
            "kernel_code": backend.kernel_code(),
            "linear_inputs": match backend.recomputes_linear_inputs() { true => "recomputed", false => "kept" },
            "trainable_params": r.trainable_params, "autograd_nodes": r.nodes, "saved_activation_bytes": r.saved_activation_bytes,
        });
        if backend.name() == "cpu-bf16" {
            line["bf16_products"] = json!(spafit::backend::cpu::CpuBackend::bf16_products());
        }
        if let Some(plan) = model.plan() {
            describe_plan(&mut line, plan);
        }
        if let Some(times) = &r.kernel_times {
            print_kernel_times(times);
            let kernels: Vec<_> = times
                .kernels
                .iter()
                .map(|k| json!({"kernel": k.kernel, "launches": k.launches, "ms": k.milliseconds}))
                .collect();
            line["kernel_times"] = json!({
                "step_ms": times.step_ms, "kernel_ms": times.kernel_ms(), "kernels": kernels,
            });
        }
        super::print_line(&line)
    }
}

/// The busiest kernels of a timed step, and how much of its wall time the device spent in
/// kernels at all (the rest: launch overhead and waits for the host).
fn print_kernel_times(times: &StepKernelTimes) {
    let total = times.kernel_ms();
    let launches: u64 = times.kernels.iter().map(|k| k.launches).sum();
    note!(
        "one more step, its kernels timed on the device: {:.3} ms in {launches} launches of {} \
         kernels, {:.1}% of the step's {:.3} ms wall time (timing included)",
        total,
        times.kernels.len(),
        100.0 * total / times.step_ms,
        times.step_ms
    );
    let share = |ms: f64| if total > 0.0 { 100.0 * ms / total } else { 0.0 };
    for k in times.kernels.iter().take(KERNELS_LISTED) {
        note!(
            "  {:>10.3} ms {:>5.1}% {:>6} × {}",
            k.milliseconds,
            share(k.milliseconds),
            k.launches,
            k.kernel
        );
    }
    let rest = &times.kernels[times.kernels.len().min(KERNELS_LISTED)..];
    if !rest.is_empty() {
        let ms: f64 = rest.iter().map(|k| k.milliseconds).sum();
        let n: u64 = rest.iter().map(|k| k.launches).sum();
        note!(
            "  {ms:>10.3} ms {:>5.1}% {n:>6} × {} other kernels",
            share(ms),
            rest.len()
        );
    }
}

//! The `spafit` command line, built only on the library's public API.

/// Says something on stderr, like `eprintln!`, except that a stderr which cannot take it (a
/// closed pipe, a full disk) is passed over instead of panicking: it is where a failure would
/// be reported too, so there is nowhere better to say it.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod args;
mod checkpoint_classes;
mod demo;
mod evaluate;
pub mod interrupt;
mod merge;
mod named_pipes;
mod output_paths;
mod prediction_output;
mod run_result;
mod tools;
mod train;

use clap::{Parser, Subcommand};

/// The most worker threads `--threads` takes: far past any CPU's cores, and below the counts
/// whose stacks and start-up (hundreds of thousands of threads) made the process hang.
pub const MAX_THREADS: usize = 1024;

/// Parameter-efficient fine-tuning of BERT-style encoders: SPAFIT (frozen / bias-only /
/// LoRA + bias strata), BitFit, LoRA and full fine-tuning.
#[derive(Parser, Debug)]
#[command(name = "spafit", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// CPU worker threads for the command's work, 1 to 1024 (default: RAYON_NUM_THREADS where
    /// set, else one per core). Results are the same bits for any count
    #[arg(long, global = true, value_name = "N", value_parser = thread_count)]
    threads: Option<std::num::NonZeroUsize>,
}

/// `--threads`: clap's own message for 0 ("number would be zero for non-zero type") says
/// nothing of what to give.
fn thread_count(given: &str) -> std::result::Result<std::num::NonZeroUsize, String> {
    let range = format!("1 to {MAX_THREADS}");
    match given
        .trim()
        .parse::<usize>()
        .map(std::num::NonZeroUsize::new)
    {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(format!(
            "0 worker threads: give {range}, or leave --threads out for the default \
             (RAYON_NUM_THREADS where set, else one per core)"
        )),
        Err(_) => Err(format!("not a count of worker threads ({range})")),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fine-tune on a GLUE task or custom CSV/TSV/JSONL data; saves the best adapter.
    Train(Box<train::TrainCommand>),
    /// Evaluate a saved adapter, or a fine-tuned checkpoint's own head, on a labeled split (ends with one JSON line).
    Eval(evaluate::EvalCommand),
    /// Predict labels with their probabilities, or scores, for a split with a saved adapter or a fine-tuned checkpoint's own head (JSON lines, CSV, TSV or GLUE's submission TSV).
    Predict(evaluate::PredictCommand),
    /// Finite-difference check of a real model's gradients under a method (prints max_rel_err); on the CPU it checks the f64 reference unless --dtype is given.
    ///
    /// What it differentiates: the cross-entropy of four fixed short sentences (--pairs: four
    /// sentence pairs), labels alternating 0/1 (input i has class i mod N with --num-labels
    /// N), through the checkpoint's encoder and a two-class head (the checkpoint's own where
    /// it has as many outputs as checked, else a fresh one; the mean squared error of a
    /// one-output head with --regression, a sigmoid per class with --multi-label), with training-mode dropout at 0.1 (the adapters at their own
    /// --lora-dropout) under a fixed mask, and adapters drawn random (B not zero) so that every
    /// gradient is non-trivial. The analytic gradients come from the device, the central
    /// finite differences (Richardson-extrapolated) from the f64 CPU reference on the same
    /// weights and masks. The JSON line: `max_rel_err` (the worst tensor's ‖analytic − fd‖ /
    /// ‖fd‖ over its sampled coordinates, or along one random direction through all of them,
    /// a difference within the finite differences' rounding — about 3e-11 of the loss —
    /// counting as none) and `worst_tensor`; `resolution` (the smallest relative error the
    /// check could see in its least resolved tensor, `least_resolved_tensor`: that rounding
    /// over the tensor's gradient); `unresolved` (tensors whose gradient the finite
    /// differences cannot tell from zero: unchecked beyond that, and warned of); `skipped`
    /// (the attention key biases, whose gradient is exactly zero); `tensors` and
    /// `coordinates` (the coordinates differenced, the random directions not counted); with
    /// --tolerance, `passed` and `inconclusive` (the check could not see errors that small).
    /// `objective`, `num_labels` and `pairs` say which loss was differentiated. A NaN or
    /// infinite error is written as text ("NaN", "inf").
    Gradcheck(tools::GradcheckCommand),
    /// Training-step (or, with --inference, forward-pass) throughput and memory for a method and batch shape (one JSON line).
    ///
    /// Every step is a whole training step (forward, backward, AdamW) on one random batch of
    /// --batch-size × --seq-len tokens, all real (no padding), with training-mode dropout;
    /// with --inference, a forward pass of that batch as `eval` and `predict` run one (no
    /// dropout, nothing kept for a backward, the logits read back to the host).
    /// --warmup steps run first, untimed. The JSON line: `pass` (`training` or
    /// `inference`); `ms_per_step` (median of the timed
    /// steps) and `ms_per_step_min` (the fastest: the least disturbed on a shared machine);
    /// `samples_per_s` and `tokens_per_s` (batch, and batch × seq_len, over the median; every
    /// token counts, where `train`'s tokens_per_s counts only real tokens of padded batches);
    /// `peak_mem_mib` (peak resident memory of the steps, the model included, Linux only),
    /// `resident_before_steps_mib` (resident memory as the steps began: the peak less this is
    /// what training added) and `process_peak_mem_mib` (of the whole process, loading the checkpoint included, which
    /// may be the larger); `peak_device_mib` (CUDA: device memory of the timed steps);
    /// `kernel_code` (CUDA: the kernels as machine code for the GPU or as PTX its driver
    /// compiled, see `SPAFIT_CUDA_SASS` in the README); `bf16_products` (`--device cpu
    /// --dtype bf16`: `amx`, `avx512_bf16` or `f32_gemm`, what runs the products with frozen
    /// weights on this CPU); `linear_inputs` (`recomputed`: the
    /// GELU and LayerNorm outputs linear maps' gradients read are recomputed in backward,
    /// CUDA's default; `kept`: kept from forward, the CPU's, and CUDA's under
    /// SPAFIT_CUDA_KEEP_LINEAR_INPUTS=1);
    /// `trainable_params`; `autograd_nodes` and `saved_activation_bytes` (what one step's, or
    /// micro-batch's, tape records and keeps for backward); `host_threads` (the CPU's worker
    /// threads: --threads or RAYON_NUM_THREADS sets them); for SPAFIT `n1` and `n2` as resolved; for
    /// adapters `lora` (rank, alpha, targets, layers).
    Bench(tools::BenchCommand),
    /// Fold an adapter into its base model and save a fine-tuned checkpoint of its own, which transformers and `spafit eval --model` read without the adapter (one JSON line).
    Merge(merge::MergeCommand),
    /// Fine-tune all-MiniLM-L6-v2 on Rotten Tomatoes and print dev accuracy (one JSON line).
    Demo(Box<demo::DemoCommand>),
}

impl Cli {
    /// Parses the process's arguments (exiting with clap's message on a syntax error), then
    /// refuses flags that parse but the command would ignore (which only the parser can tell
    /// from their defaults) and every other refusal the command line alone decides: a flag
    /// the method never reads, one that needs another. `main` exits with clap's status 2 on
    /// these, before any file is read; what depends on the model or the data is refused
    /// later, with status 1.
    pub fn from_env() -> spafit::Result<Self> {
        use clap::{CommandFactory, FromArgMatches};
        // bench makes its own token ids, so the shared --max-len is refused there (below)
        // and kept out of its --help.
        let matches = Cli::command()
            .mut_subcommand("bench", |bench| {
                bench.mut_arg("max_len", |arg| arg.hide(true))
            })
            // gradcheck's precision defaults by device, which the shared flag's text cannot say.
            .mut_subcommand("gradcheck", |check| {
                check
                    .mut_arg("max_len", |arg| arg.hide(true))
                    .mut_arg("dtype", |arg| {
                        arg.hide_default_value(true).help(
                        "Precision of the analytic gradients: on the CPU the f64 reference unless \
                         given (`f32` checks the f32 backend); on CUDA f32 unless given (`bf16`: \
                         tensor cores). The finite differences are always f64",
                    )
                    })
            })
            .get_matches();
        let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        // RAYON_NUM_THREADS sets the count where the flag does not, under the same bound;
        // read as rayon reads it (a value it cannot parse it ignores).
        let from_env = || {
            std::env::var("RAYON_NUM_THREADS")
                .ok()?
                .parse::<usize>()
                .ok()
        };
        let (asked, source) = match cli.threads() {
            0 => (from_env().unwrap_or(0), "RAYON_NUM_THREADS"),
            n => (n, "--threads"),
        };
        if asked > MAX_THREADS {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            return Err(spafit::Error::invalid(
                source,
                format!(
                    "{asked} worker threads: at most {MAX_THREADS} (this machine has {cores} cores)"
                ),
            ));
        }
        let Some((_, sub)) = matches.subcommand() else {
            return Ok(cli);
        };
        let given = |id: &str| sub.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        match &mut cli.command {
            Command::Bench(bench) => {
                bench.seq_len_given = given("seq_len");
                if given("max_len") {
                    return Err(spafit::Error::invalid(
                        "--max-len",
                        "bench reads no text to truncate: it makes --seq-len tokens per example",
                    ));
                }
                if bench.shape.is_some() && given("model") {
                    return Err(spafit::Error::invalid(
                        "--shape",
                        "benchmarks a model of that shape with random weights; drop --model, \
                         or --shape to benchmark the checkpoint",
                    ));
                }
            }
            Command::Gradcheck(check) => {
                if given("max_len") {
                    return Err(spafit::Error::invalid(
                        "--max-len",
                        format!(
                            "gradcheck checks four fixed short sentences (or pairs) at their own \
                             length, cut to the model's positions where it has fewer than {}",
                            spafit::gradcheck::MAX_GRADCHECK_TOKENS
                        ),
                    ));
                }
                check.dtype_given = given("dtype");
            }
            _ => {}
        }
        match &cli.command {
            Command::Train(c) => c.check_command_line(),
            Command::Eval(c) => c.check_command_line(),
            Command::Predict(c) => c.check_command_line(),
            Command::Gradcheck(c) => c.check_command_line(),
            Command::Bench(c) => c.check_command_line(),
            Command::Merge(c) => c.check_command_line(),
            Command::Demo(c) => c.check_command_line(),
        }?;
        Ok(cli)
    }

    /// The worker threads `--threads` asks for; 0 where it is not given (rayon's default).
    /// [`Cli::from_env`] refuses more than [`MAX_THREADS`].
    pub fn threads(&self) -> usize {
        self.threads.map_or(0, std::num::NonZeroUsize::get)
    }

    pub fn run(self) -> spafit::Result<()> {
        match self.command {
            Command::Train(c) => c.run(),
            Command::Eval(c) => c.run(),
            Command::Predict(c) => c.run(),
            Command::Gradcheck(c) => c.run(),
            Command::Bench(c) => c.run(),
            Command::Merge(c) => c.run(),
            Command::Demo(c) => c.run(),
        }
    }
}

/// Returns to the system the memory that loading the model freed (f32 weights narrowed to
/// bf16, values widened to f64 on the way): `main` keeps freed memory in the heap for the
/// training steps' sake, which would otherwise keep it resident for the whole command (a
/// bf16 run of BERT-base then held its f32 weights' 340 MB as well).
pub(crate) fn release_loading_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only hands free heap pages back to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The sentence an out-of-memory error gets where a command ran out: `what` ran out, and
/// which of `changes` (those that apply) or `--dtype bf16` (where the model has frozen
/// weights, `frozen_weights`) needs less.
fn out_of_memory_context<B: spafit::backend::Backend>(
    backend: &B,
    what: String,
    changes: &[Option<&str>],
    frozen_weights: bool,
) -> String {
    let changes: Vec<&str> = changes.iter().flatten().copied().collect();
    match spafit::model::memory_alternatives(backend, &changes, frozen_weights) {
        Some(less) => format!("{what}: {less} needs less"),
        None => format!("{what}: it needs a device with more memory"),
    }
}

/// Prints one line on stdout (a command's result). A closed pipe or a full disk is an error
/// naming stdout, where `println!` would panic.
fn print_line(line: &dyn std::fmt::Display) -> spafit::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|source| spafit::Error::Io {
            path: "<stdout>".into(),
            error: source,
        })
}

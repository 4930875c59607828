use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use spafit::adapter::{export_peft, AdapterHead};
use spafit::backend::Backend;
use spafit::checkpoint::Checkpoint;
use spafit::data::{Dataset, TaskKind};
use spafit::model::BertClassifier;
use spafit::peft::{peft_lora_init, Method, PeftPlan};
use spafit::train::{TrainConfig, TrainReport, Trainer};
use spafit::Result;

use super::args::{on_backend, DataArgs, ModelArgs, PeftArgs, TrainedCut};
use super::named_pipes::{open_adapter_noting_pipes, open_checkpoint};
use super::output_paths::check_output_paths;
use super::run_result::{keep_result, print_recorded_result, timing_or_null, RESULT_FILE};

/// Optimizer, schedule and run bookkeeping.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Passes over the training data.
    #[arg(long, value_parser = super::args::at_least_one(), default_value_t = 1, allow_hyphen_values = true)]
    pub epochs: usize,
    /// Examples per step.
    #[arg(long, value_parser = super::args::at_least_one(), default_value_t = 32, allow_hyphen_values = true)]
    pub batch_size: usize,
    /// Gradient accumulation: run each step's batch through the model in micro-batches of at
    /// most N examples and sum their gradients before the optimizer step, so a batch whose
    /// activations do not fit in memory still trains as one step (N ≤ --batch-size; each
    /// micro-batch draws its own dropout masks). A resumed run may change it.
    #[arg(long, value_parser = super::args::at_least_one(), allow_hyphen_values = true)]
    pub micro_batch_size: Option<usize>,
    /// Peak learning rate, reached after a linear warmup (then as --lr-schedule says)
    /// [default: 5e-5 for full, 1e-3 for bitfit, 5e-4 for lora and spafit].
    #[arg(long, allow_hyphen_values = true, value_parser = super::args::number_passing(spafit::train::learning_rate_problem))]
    pub lr: Option<f64>,
    /// AdamW decoupled weight decay (never on biases or LayerNorm).
    #[arg(long, default_value_t = 0.01, allow_hyphen_values = true, value_parser = super::args::number_passing(spafit::train::weight_decay_problem))]
    pub weight_decay: f64,
    /// Fraction of steps spent warming up (rounded up to whole steps).
    #[arg(long, default_value_t = 0.06, allow_hyphen_values = true, value_parser = super::args::number_passing(spafit::train::warmup_ratio_problem))]
    pub warmup_ratio: f64,
    /// Warmup steps, instead of --warmup-ratio's share of the run.
    #[arg(long, conflicts_with = "warmup_ratio", value_parser = clap::builder::RangedU64ValueParser::<usize>::new(), allow_hyphen_values = true)]
    pub warmup_steps: Option<usize>,
    /// After warmup the learning rate falls linearly to 0 (linear), along half a cosine to 0
    /// (cosine), or stays at --lr (constant), as transformers' schedules of those names.
    #[arg(long, default_value = "linear", value_parser = super::args::spelling(|s: &str| s.parse::<spafit::train::ScheduleKind>()))]
    pub lr_schedule: String,
    /// Clip the global gradient norm to this (0 disables; negative is refused).
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true, value_parser = super::args::number_passing(
        |n| match n == 0.0 {
            true => None,
            false => spafit::train::max_grad_norm_problem(n).map(|why| format!("{why}, or 0 for no clipping")),
        },
    ))]
    pub max_grad_norm: f64,
    /// Seed of batch order, dropout, adapters and a fresh head.
    #[arg(long, default_value_t = 42, allow_hyphen_values = true)]
    pub seed: u64,
    /// Early stopping: end the run once N evaluations in a row have not improved on the best
    /// one (best/ keeps its weights). Needs a dev set; evaluations come at each epoch end and
    /// every --eval-every steps.
    #[arg(long, value_parser = super::args::at_least_one(), allow_hyphen_values = true)]
    pub early_stopping_patience: Option<usize>,
    /// The dev metric that picks best/ (and that early stopping watches): `loss` (lowest) or
    /// one the task reports, highest (`accuracy`, `f1`, `matthews_correlation`, `pearson`,
    /// `spearman`; multi-label: `micro_f1`, `macro_f1`, `subset_accuracy`) [default: the
    /// task's main metric: GLUE's, else accuracy, micro_f1 or Pearson].
    #[arg(long)]
    pub best_metric: Option<String>,
    /// Examples per evaluation batch (the dev set's batches, sorted by length; less memory
    /// on a device than a larger one, the same metrics up to rounding) [default: 64].
    #[arg(long, value_parser = super::args::at_least_one(), allow_hyphen_values = true)]
    pub eval_batch_size: Option<usize>,
    /// Also evaluate every N steps (always at each epoch end).
    #[arg(long, value_parser = super::args::at_least_one(), allow_hyphen_values = true)]
    pub eval_every: Option<usize>,
    /// Also save the resumable state in OUTPUT/last every N steps (it is always saved after
    /// an evaluation); a killed run repeats at most the steps since the last save.
    #[arg(long, value_parser = super::args::at_least_one(), allow_hyphen_values = true)]
    pub save_every: Option<usize>,
    /// Write a metrics.jsonl line every N steps: `loss` is the mean training loss over the
    /// steps since the previous line (as transformers' Trainer logs it), `lr` and `grad_norm`
    /// (before clipping) are the logged step's own.
    #[arg(long, value_parser = super::args::at_least_one(), default_value_t = 10, allow_hyphen_values = true)]
    pub log_every: usize,
    /// Stop after at most N steps in total (the schedule spans them); --epochs still ends the
    /// run first when its steps are fewer: raise it to train longer.
    #[arg(long, value_parser = super::args::at_least_one(), allow_hyphen_values = true)]
    pub max_steps: Option<usize>,
    /// Output directory: metrics.jsonl, best/ (the best adapter), last/ (resumable state),
    /// result.json (the final JSON line). With it, Ctrl-C or SIGTERM stops the run after its
    /// step and saves the state for --resume (a second one quits at once).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Continue the run saved in OUTPUT/last.
    #[arg(long)]
    pub resume: bool,
    /// Also export the best adapter in PEFT's format (LoRA and SPAFIT) to this directory.
    #[arg(long)]
    pub export_peft: Option<PathBuf>,
    /// Write each step's examples (step, epoch, rows, source lines, input_ids,
    /// token_type_ids, labels) as JSON lines to this
    /// file, so another trainer can replay the same batches (scripts/side_by_side_demo.sh);
    /// it is written as .NAME.partial beside it until the run ends, so a file there stays
    /// whole if the run fails (a failed or killed run leaves the steps it logged in the
    /// .partial file; a --resume writes the whole log again).
    #[arg(long)]
    pub write_batches: Option<PathBuf>,
    /// No progress bar and no per-evaluation lines on stderr (metrics.jsonl under --output
    /// has every evaluation); the opening line, which says where a resumed run starts, the
    /// notices and warnings, and the final JSON line stay.
    #[arg(long)]
    pub quiet: bool,
}

/// The refusal of `--export-peft` for a plan of `method` (with SPAFIT's `boundaries`) that has
/// no LoRA adapter.
fn no_adapter_to_export(method: Method, boundaries: Option<(usize, usize)>) -> spafit::Error {
    spafit::Error::invalid(
        "--export-peft",
        format!(
            "the {method} plan has no LoRA adapter{}, and PEFT's LoRA format needs one (only \
             lora and spafit export); refused before training: --output saves any method's \
             adapter in spafit's format",
            match boundaries {
                Some((_, n2)) => format!(
                    " (N2 = {n2} is the model's depth: no LoRA + bias layer, which a plan \
                     with a lower --n2 has)"
                ),
                None => String::new(),
            }
        ),
    )
}

/// Everything a run needs, set up from flags.
pub struct Run<B: Backend> {
    pub backend: B,
    pub checkpoint: Checkpoint,
    pub model: BertClassifier<B>,
    pub plan: PeftPlan,
    /// The cut of the training texts of the adapter the run continues, if any.
    pub trained_cut: TrainedCut,
}

pub fn setup<B: Backend>(
    backend: B,
    mut checkpoint: Checkpoint,
    peft: &PeftArgs,
    num_labels: usize,
    seed: u64,
) -> Result<Run<B>> {
    let config = peft.config_for(checkpoint.config.family())?;
    let layers = checkpoint.config.num_hidden_layers;
    let plan = PeftPlan::new(&config, layers)?;
    peft.check_flags_against_plan(&plan)?;
    if let Some(notice) = config.empty_strata_notice(layers) {
        note!("note: {notice}");
    }
    let m = BertClassifier::from_checkpoint_for_plan(
        &checkpoint,
        &backend,
        num_labels,
        seed,
        &plan,
        &mut peft_lora_init(&backend, seed),
    )?;
    // The run keeps the checkpoint for its identity, not its bytes: the model holds them.
    checkpoint.weights.release_tensor_data()?;
    super::release_loading_memory();
    Ok(Run {
        backend,
        checkpoint,
        model: m,
        plan,
        trained_cut: TrainedCut::NoAdapter,
    })
}

/// A run that continues from an adapter (spafit's or PEFT's): its plan and head, and the
/// label space that head was trained for.
pub fn setup_from_adapter<B: Backend>(
    backend: B,
    model: &ModelArgs,
    adapter: &std::path::Path,
) -> Result<(Run<B>, AdapterHead)> {
    let mut checkpoint = open_checkpoint(&model.model)?;
    model.check_max_len(&checkpoint)?;
    let opened = open_adapter_noting_pipes(adapter, &checkpoint, &backend)?;
    opened.check_trainable(adapter)?;
    note!(
        "continuing from the {} adapter in {} ({} plan)",
        match opened.format {
            spafit::adapter::AdapterFormat::Spafit => "spafit",
            spafit::adapter::AdapterFormat::Peft => "PEFT",
        },
        adapter.display(),
        opened.plan.method
    );
    for note in opened.warnings.iter().chain(&opened.notes) {
        note!("note: {note}");
    }
    let head = opened.head();
    checkpoint.weights.release_tensor_data()?;
    super::release_loading_memory();
    Ok((
        Run {
            backend,
            checkpoint,
            model: opened.model,
            plan: opened.plan,
            trained_cut: TrainedCut::of_adapter(opened.max_len),
        },
        head,
    ))
}

pub fn fit<B: Backend>(
    run: &mut Run<B>,
    model: &ModelArgs,
    args: &TrainArgs,
    train: &Dataset,
    dev: Option<&Dataset>,
    task: Option<spafit::data::GlueTask>,
    stop_on_signal: bool,
) -> Result<(TrainReport, RunHold)> {
    if args.export_peft.is_some() && run.plan.lora.is_none() {
        return Err(no_adapter_to_export(run.plan.method, run.plan.boundaries));
    }
    // The flags' other refusals were made from the command line (`check_command_line`).
    if let (Some(name), Some(dev)) = (&args.best_metric, dev) {
        spafit::metrics::check_best_metric(&name.to_ascii_lowercase(), task, &dev.kind, &dev.name)?;
    }
    let tokenizer = model.tokenizer(&run.checkpoint, run.trained_cut)?;
    // Before the banner: pair data the model or --max-len cannot take is refused first.
    if [Some(train), dev]
        .into_iter()
        .flatten()
        .any(Dataset::has_text_pairs)
    {
        tokenizer.check_pairs()?;
    }
    let config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        micro_batch_size: args.micro_batch_size,
        learning_rate: args
            .lr
            .unwrap_or_else(|| run.plan.method.default_learning_rate()),
        weight_decay: args.weight_decay,
        warmup_ratio: args.warmup_ratio,
        warmup_steps: args.warmup_steps,
        lr_schedule: args.lr_schedule.parse()?,
        early_stopping_patience: args.early_stopping_patience,
        best_metric: args.best_metric.as_deref().map(str::to_ascii_lowercase),
        max_grad_norm: (args.max_grad_norm != 0.0).then_some(args.max_grad_norm),
        seed: args.seed,
        eval_every: args.eval_every,
        eval_batch_size: args.eval_batch_size(),
        save_every: args.save_every,
        log_every: args.log_every,
        max_steps: args.max_steps,
        output_dir: args.output.clone(),
        resume: args.resume,
        progress: !args.quiet,
        notices_on_stderr: true,
        task,
        batch_log: args.write_batches.clone(),
        ..TrainConfig::default()
    };
    // The run's directories are locked from here until its export is written: another
    // process on either is refused. One already there is locked before it is checked (so a
    // run in progress there is reported as such); a new one is created only once the
    // settings pass.
    let dirs: Vec<&std::path::Path> = [args.output.as_deref(), args.export_peft.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    // Before the banner, so a refused setting is the only thing printed.
    let mut locks = spafit::train::lock_run_dirs_around(&dirs, || config.check())?;
    // An earlier attempt's result would sit beside a run starting from step 0 as if it
    // were its own (a resumed run's is its own, printed again if it is complete).
    let resumes_state = |dir: &std::path::Path| {
        args.resume && dir.join("last").join(spafit::train::STATE_FILE).exists()
    };
    // A finished run whose state was removed (it is the largest file) has nothing to resume:
    // starting over, with whatever settings, would replace its results unasked, where a
    // script passes --resume to every call.
    if let Some(dir) = args
        .output
        .as_deref()
        .filter(|dir| args.resume && !resumes_state(dir) && dir.join(RESULT_FILE).is_file())
    {
        return Err(spafit::Error::invalid(
            "--resume",
            format!(
                "{} holds a finished run ({RESULT_FILE}) whose saved state (last/) is gone: \
                 there is nothing to resume, and starting over would replace its results; use \
                 another output directory, or remove its {RESULT_FILE} to start over there",
                dir.display()
            ),
        ));
    }
    if let Some(result) = args
        .output
        .as_deref()
        .filter(|dir| !resumes_state(dir))
        .map(|dir| dir.join(RESULT_FILE))
    {
        match std::fs::remove_file(&result) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(spafit::Error::Io {
                    path: result,
                    error: e,
                })
            }
            _ => {}
        }
    }
    // Training is the costly part; a run that keeps nothing should not end as a surprise.
    if args.output.is_none() && args.export_peft.is_none() {
        note!(
            "note: no --output (nor --export-peft): the trained weights are not saved; give \
             --output DIR to keep the best adapter, the metrics and a resumable state"
        );
    }
    // The CPU's bf16 covers frozen weights only: where every weight trains, nothing changes.
    if run.backend.name() == "cpu-bf16" && run.plan.method == spafit::peft::Method::Full {
        note!(
            "note: on the CPU, --dtype bf16 stores and multiplies the frozen weights in bf16; \
             full fine-tuning freezes none, so this run computes as in f32"
        );
    }
    // With an output directory a stopped run resumes: Ctrl-C or SIGTERM stops it after its
    // step and saves it. Without one, the signals end the process as they always do.
    let on_signal = args
        .output
        .as_ref()
        .filter(|_| stop_on_signal)
        .and_then(|_| super::interrupt::StopOnSignal::install(super::interrupt::TRAINING_STOPS));
    let mut stop_when_signalled = |_: &spafit::train::TrainEvent<'_>| match on_signal.is_some()
        && super::interrupt::received().is_some()
    {
        true => std::ops::ControlFlow::Break(()),
        false => std::ops::ControlFlow::Continue(()),
    };
    let report = Trainer::new(
        &run.backend,
        &mut run.model,
        &run.plan,
        &run.checkpoint.weights,
        config,
    )
    .holding(&mut locks)
    .observe(&mut stop_when_signalled)
    .fit(&tokenizer, train, dev)
    .map_err(|e| resumable_after(e, args.output.as_deref()))?;
    if let Some(handlers) = on_signal.as_ref().filter(|_| !report.stopped_by_observer) {
        handlers.say(super::interrupt::FINISHING);
    }
    let hold = RunHold {
        _locks: locks,
        _signals: on_signal,
    };
    if report.stopped_by_observer {
        // Neither the export nor result.json: they are the whole run's, written when a
        // resume ends it.
        return Ok((report, hold));
    }
    if let Some(dir) = &args.export_peft {
        let base_name = run.checkpoint.dir().display().to_string();
        let trained = train.kind.class_names();
        let record = spafit::adapter::PeftExportRecord {
            base_model_name_or_path: &base_name,
            labels: trained,
            inputs: spafit::adapter::TrainingInputs {
                text_pairs: Some(report.text_pairs),
                max_len: Some(tokenizer.max_len()),
            },
            run_dir: args.output.as_deref(),
            base: Some(&run.checkpoint.weights),
        };
        let exported = export_peft(dir, &run.backend, &run.model, &run.plan, &record)?;
        if let spafit::adapter::ExportedClassOrder::BaseOrder { exported } = exported {
            let order = match run.checkpoint.config.class_names(exported.len()) {
                Some(_) => "the base's id2label order",
                None => {
                    "the order of the numbers (the base names no classes: transformers \
                         calls output i LABEL_i)"
                }
            };
            note!(
                "note: the export's head follows {order} {exported:?}, by which transformers \
                 names a PEFT adapter's outputs (trained as {:?})",
                trained.unwrap_or_default()
            );
        }
        if let Some(note) = transformers_loading_note(&run.checkpoint, &train.kind) {
            note!("{note}");
        }
    }
    Ok((report, hold))
}

/// What a PEFT export of a head trained on `kind` needs to load in transformers as spafit
/// trained it, where the base's config.json would give the model something else: the
/// export holds the head, but transformers builds the model the adapter loads onto from the
/// base's config (its `problem_type`, its number and names of outputs) and refuses a saved
/// head of another size unless told to ignore it.
fn transformers_loading_note(checkpoint: &Checkpoint, kind: &TaskKind) -> Option<String> {
    let config = &checkpoint.config;
    let outputs = kind.num_labels();
    let (mut why, mut arguments) = (Vec::new(), Vec::new());
    if let Some((theirs, ours)) = config.problem_type_unlike(outputs, kind.is_multi_label()) {
        why.push(format!("its `problem_type` is `{theirs}`"));
        arguments.push(format!("problem_type=\"{ours}\""));
    } else if config.problem_type.is_none() {
        let unsaid = match (kind.is_multi_label(), outputs) {
            (true, _) => Some((
                "a head of several outputs reads as one class per example (softmax)",
                "multi_label_classification",
            )),
            (false, 1) => Some((
                "transformers' pipelines read a single output as a probability (a sigmoid), \
                 not a score",
                "regression",
            )),
            (false, _) => None,
        };
        if let Some((reading, problem)) = unsaid {
            why.push(format!("it sets no `problem_type`, so {reading}"));
            arguments.push(format!("problem_type=\"{problem}\""));
        }
    }
    // transformers' default without id2label is two outputs, named LABEL_0, LABEL_1, ...
    let base_outputs = match config.id2label.len() {
        0 => 2,
        n => n,
    };
    let base_names = config.class_names(outputs);
    let trained = kind.class_names();
    // Classes that are the numbers of the outputs (data of 0s and 1s) are what transformers
    // calls them anyway, by position: the export puts them in that order.
    let by_id = trained.is_some_and(|names| spafit::data::numbered_classes(names).is_some());
    let names_differ = match (trained, &base_names) {
        (Some(trained), Some(base)) => spafit::data::class_order(base, trained).is_none(),
        (Some(_), None) => !by_id,
        (None, _) => false,
    };
    if base_outputs != outputs {
        why.push(format!(
            "it gives the model {base_outputs} outputs, where spafit trained {outputs}"
        ));
    } else if names_differ {
        why.push(match &base_names {
            Some(base) => format!("it names the outputs {base:?}"),
            None => "it names no classes (transformers calls the outputs LABEL_0, LABEL_1, …)"
                .to_string(),
        });
    }
    let mismatched_head = checkpoint.classifier_rows().filter(|&n| n != outputs);
    if let Some(theirs) = mismatched_head {
        why.push(format!(
            "its own head has {theirs} outputs, which ignore_mismatched_sizes replaces"
        ));
    }
    if why.is_empty() {
        return None;
    }
    arguments.push(format!("num_labels={outputs}"));
    // Names the base gives in another order are the export's own (it is written in the
    // base's order): only names it lacks, or other ones, are given.
    let unnamed_by_base = base_names.is_none() && !by_id;
    if let Some(trained) = trained.filter(|_| names_differ || unnamed_by_base) {
        // JSON's quoting of a string is Python's too.
        let quoted = trained.iter().map(|n| serde_json::Value::from(n.as_str()));
        let (id2label, label2id): (Vec<String>, Vec<String>) = quoted
            .enumerate()
            .map(|(i, n)| (format!("{i}: {n}"), format!("{n}: {i}")))
            .unzip();
        arguments.push(format!("id2label={{{}}}", id2label.join(", ")));
        arguments.push(format!("label2id={{{}}}", label2id.join(", ")));
    }
    if mismatched_head.is_some() {
        arguments.push("ignore_mismatched_sizes=True".to_string());
    }
    Some(format!(
        "note: transformers builds the model a PEFT adapter loads onto from the base's \
         config.json, and {}: load the base with \
         `AutoModelForSequenceClassification.from_pretrained(BASE, {})` to get the head spafit \
         trained",
        why.join("; "),
        arguments.join(", ")
    ))
}

/// What the caller of [`fit`] holds while it writes the rest of the run folder
/// (result.json): the run's locks, and the signal handlers, so that a signal after the last
/// step lets those writes finish rather than ending the process between them.
pub struct RunHold {
    _locks: Vec<spafit::train::RunLock>,
    _signals: Option<super::interrupt::StopOnSignal>,
}

impl TrainArgs {
    /// Refuses what the command line alone rules out, before anything is read: a flag that
    /// needs --output, one that needs a dev set where `has_dev` says there is none, and
    /// --export-peft for a `method` that has no adapter at all (a SPAFIT plan without one
    /// depends on the model's depth, and is refused once the model is read).
    pub fn check_command_line(&self, has_dev: bool, method: Method) -> Result<()> {
        let refuse = |flag, detail: String| Err(spafit::Error::invalid(flag, detail));
        if self.export_peft.is_some() && matches!(method, Method::Full | Method::BitFit) {
            return Err(no_adapter_to_export(method, None));
        }
        if self.output.is_none() {
            if let Some(n) = self.save_every {
                return refuse(
                    "--save-every",
                    format!("{n}: saving needs an output directory (--output)"),
                );
            }
            if self.resume {
                return refuse(
                    "--resume",
                    "needs the output directory to resume (--output)".into(),
                );
            }
        }
        if has_dev {
            return Ok(());
        }
        if let Some(n) = self.early_stopping_patience {
            return refuse(
                "--early-stopping-patience",
                format!(
                    "{n}: early stopping counts evaluations on a dev set, and there is none \
                     (give --dev-file)"
                ),
            );
        }
        if let Some(name) = &self.best_metric {
            return refuse(
                "--best-metric",
                format!("`{name}`: there is no dev set to evaluate (give --dev-file)"),
            );
        }
        if let Some(n) = self.eval_batch_size {
            return refuse(
                "--eval-batch-size",
                format!("{n}: there is no dev set to evaluate (give --dev-file)"),
            );
        }
        if let Some(n) = self.eval_every {
            return refuse(
                "--eval-every",
                format!(
                    "{n}: there is no dev set to evaluate (give --dev-file); --save-every N \
                     saves the resumable state every N steps"
                ),
            );
        }
        Ok(())
    }

    /// `--eval-batch-size`, or the trainer's default.
    fn eval_batch_size(&self) -> usize {
        self.eval_batch_size
            .unwrap_or(TrainConfig::default().eval_batch_size)
    }
}

/// `spafit train`.
#[derive(Args, Debug)]
pub struct TrainCommand {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub peft: PeftArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub train: TrainArgs,
    /// Continue training this adapter (spafit's OUTPUT/best, or a PEFT directory with
    /// adapter_config.json + adapter_model.safetensors): its plan, LoRA settings and head
    /// come from it, so the method flags cannot be given with it.
    #[arg(long, conflicts_with_all = [
        "method", "n1", "n2", "lora_r", "lora_alpha", "rslora", "dora", "lora_dropout", "lora_targets",
        "lora_layers", "train_pooler", "train_embeddings", "train_layernorm",
    ])]
    pub adapter: Option<PathBuf>,
}

impl TrainCommand {
    /// The training split and every evaluation split, all read before training, so a
    /// missing or malformed one stops the run before it costs anything.
    fn load_data(
        &self,
        task: Option<spafit::data::GlueTask>,
        default_kind: Option<&spafit::data::TaskKind>,
        regressor_head: bool,
    ) -> Result<(Dataset, Vec<Dataset>)> {
        let inferred = self.data.train_kind(default_kind, regressor_head)?;
        let default_kind = inferred.as_ref();
        let train = self.data.load_with_default_kind("train", default_kind)?;
        if train.is_empty() {
            return Err(spafit::Error::invalid(
                "train",
                format!("the training set {} has no examples", train.name),
            ));
        }
        note_classes_without_examples(&train);
        let devs = match task {
            Some(t) => t
                .dev_splits()
                .iter()
                .map(|split| {
                    self.data.load(split).map_err(|e| match e {
                        // Why a file the user never named is needed (MNLI's second dev set).
                        spafit::Error::Io { path, error }
                            if t.dev_splits().len() > 1
                                && error.kind() == std::io::ErrorKind::NotFound =>
                        {
                            spafit::Error::Io {
                                path,
                                error: std::io::Error::new(
                                    error.kind(),
                                    format!(
                                        "{error} (training on {} evaluates on {}, as GLUE \
                                         reports both)",
                                        t.dir_name(),
                                        t.dev_splits().join(" and ")
                                    ),
                                ),
                            }
                        }
                        other => other,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            None if self.data.dev_file.is_some() => {
                vec![self.data.load_with_default_kind("dev", default_kind)?]
            }
            None => Vec::new(),
        };
        if let Some(empty) = devs.iter().find(|d| d.is_empty()) {
            return Err(spafit::Error::invalid(
                "train",
                format!("the evaluation set {} has no examples", empty.name),
            ));
        }
        Ok((train, devs))
    }

    /// Refuses output paths that would fail only after training (a file where a directory
    /// goes) or overwrite an input.
    fn check_output_paths(&self) -> Result<()> {
        check_output_paths(
            &self.train,
            &self.model.model,
            self.adapter.as_deref(),
            &self.data.input_files(),
        )
    }

    /// The refusals the command line alone decides (see [`super::Cli::from_env`]).
    pub fn check_command_line(&self) -> Result<()> {
        self.model.device_and_dtype()?;
        let method = self.peft.config()?.method;
        let task = self.data.glue_task()?;
        let has_dev = task.is_some() || self.data.dev_file.is_some();
        self.train.check_command_line(has_dev, method)
    }

    pub fn run(&self) -> Result<()> {
        on_backend!(self.model.backend()?, b => self.run_on(b))
    }

    fn run_on<B: Backend>(&self, backend: B) -> Result<()> {
        let task = self.data.glue_task()?;
        self.check_output_paths()?;
        let (mut run, train, devs) = match &self.adapter {
            Some(dir) => {
                let (mut run, head) = setup_from_adapter(backend, &self.model, dir)?;
                let names = run.checkpoint.config.class_names(head.outputs);
                let default_kind = head.default_kind_naming(names);
                let (train, devs) = self.load_data(task, Some(&default_kind), false)?;
                head.check_texts(&train, dir)?;
                super::checkpoint_classes::check_adapter_head(
                    &head,
                    &run.checkpoint,
                    &train.kind,
                    &train.name,
                    dir,
                )?;
                super::checkpoint_classes::match_adapter_classes(
                    &head,
                    &run.checkpoint,
                    &mut run.model,
                    &run.backend,
                    &train.kind,
                )?;
                (run, train, devs)
            }
            None => {
                let checkpoint = open_checkpoint(&self.model.model)?;
                self.model.check_max_len(&checkpoint)?;
                let mut own_classes = super::checkpoint_classes::checkpoint_head_kind(&checkpoint);
                // Training reads sets of classes only when asked: data of one class each,
                // the common case, would otherwise train a sigmoid per class unasked.
                let one_class_data = !self.data.multi_label && !self.data.regression;
                if let (Some(TaskKind::MultiLabel { labels }), true, None) =
                    (&own_classes, one_class_data, task)
                {
                    note!(
                        "note: the checkpoint's head is multi-label (`problem_type` \
                         `multi_label_classification`); the data is read as one class per \
                         example: give --multi-label to train on sets of classes"
                    );
                    own_classes = Some(TaskKind::Classification {
                        labels: labels.clone(),
                    });
                }
                let regressor = super::checkpoint_classes::has_regressor_head(&checkpoint);
                let (train, devs) = self.load_data(task, own_classes.as_ref(), regressor)?;
                super::checkpoint_classes::note_replaced_head(&checkpoint, train.kind.num_labels());
                let mut run = setup(
                    backend,
                    checkpoint,
                    &self.peft,
                    train.kind.num_labels(),
                    self.train.seed,
                )?;
                super::checkpoint_classes::match_checkpoint_classes(
                    &run.checkpoint,
                    &mut run.model,
                    &run.backend,
                    &train.kind,
                )?;
                (run, train, devs)
            }
        };
        self.data.apply_threshold(&mut run.model, &train.kind)?;
        let dev = devs.first();
        let (report, _hold) = fit(&mut run, &self.model, &self.train, &train, dev, task, true)?;
        if report.stopped_by_observer {
            let signal = super::interrupt::received().map_or("a signal", |(name, _)| name);
            let results = match &self.train.export_peft {
                Some(_) => "result.json and --export-peft's adapter come",
                None => "result.json comes",
            };
            let best = match (&report.best, dev) {
                (Some((step, _)), _) => {
                    format!("best/ holds step {step}'s adapter, the best so far")
                }
                (None, Some(_)) => "no evaluation has given a best adapter (best/) yet".into(),
                (None, None) => "best/ holds the weights it stopped with".into(),
            };
            // The trainer's notice said where the run stopped and that a resume goes on.
            note!(
                "spafit: stopped by {signal}: the same command with --resume goes on; {best}; \
                 {results} when the run ends"
            );
            super::interrupt::stopped_run();
            return Ok(());
        }
        if print_recorded_result(self.train.output.as_deref(), &report, &run.backend)? {
            return Ok(());
        }
        let timing = timing_or_null(&report);
        let mut line = json!({
            "task": task.map_or_else(|| train.name.clone(), |t| t.dir_name().to_string()),
            "method": run.plan.method.to_string(),
            "steps": report.steps,
            // A resumed run timed only this call's steps: the rates and seconds are theirs.
            "steps_this_call": report.steps_this_call,
            "train_seconds": timing(report.train_seconds),
            "samples_per_s": timing(report.samples_per_s),
            "tokens_per_s": timing(report.tokens_per_s),
            "trainable_params": run.model.trainable_parameter_count(),
            "device": run.backend.name(),
        });
        line["max_len"] = json!(report.max_len);
        // What --skip-malformed left out of the examples trained and evaluated on (stderr
        // lists them); the second dev split's, with its metrics below.
        line["train_skipped_rows"] = json!(train.skipped.len());
        if let Some(dev) = dev {
            line["dev_skipped_rows"] = json!(dev.skipped.len());
        }
        line["batch_size"] = json!(self.train.batch_size);
        line["early_stopped"] = json!(report.early_stopped);
        // This call's: a resumed run may have changed it.
        line["micro_batch_size"] = json!(spafit::train::micro_batches_in_use(
            self.train.micro_batch_size,
            self.train.batch_size,
            train.len()
        ));
        if let Some((step, eval)) = &report.best {
            line["best_step"] = json!(step);
            line["best_metric"] = json!(self
                .train
                .best_metric
                .as_deref()
                .map_or(eval.main_metric.to_string(), str::to_ascii_lowercase));
            line["dev_loss"] = json!(eval.loss);
            for (k, v) in &eval.metrics {
                line[format!("dev_{k}")] = json!(v);
            }
            // As `eval` says: F1 is that of class id 1, whichever class the labels put there.
            if let (Some(_), TaskKind::Classification { labels }) =
                (eval.metrics.get("f1"), &train.kind)
            {
                line["f1_positive_class"] = json!(labels.get(1));
            }
        }
        // GLUE reports MNLI on both dev sets; the first one selected the model. A signal that
        // came after the last step leaves the second out, which may take minutes, rather than
        // keep a scheduler or a user waiting for it.
        let signalled = || super::interrupt::received().is_some();
        // Out of memory there, the run's results are still written, without that split.
        let mut out_of_memory = None;
        if let Some(t) = task.filter(|_| devs.len() > 1) {
            let tokenizer = self.model.tokenizer(&run.checkpoint, run.trained_cut)?;
            for (split, data) in t.dev_splits()[1..].iter().zip(&devs[1..]) {
                let encoded = spafit::train::EncodedDataset::new(&tokenizer, data)?;
                let evaluated = match signalled() {
                    true => None,
                    false => match spafit::train::evaluate_until(
                        &run.backend,
                        &run.model,
                        &encoded,
                        self.train.eval_batch_size(),
                        task,
                        &signalled,
                    ) {
                        Ok(evaluated) => evaluated,
                        Err(e @ spafit::Error::OutOfMemory { .. }) => {
                            let largest = self.train.eval_batch_size().min(encoded.len());
                            out_of_memory = Some(e.in_memory_context(|| {
                                self.split_out_of_memory_context(t, split, largest)
                            }));
                            break;
                        }
                        Err(e) => return Err(e),
                    },
                };
                let Some(eval) = evaluated else {
                    self.note_split_left_out(t, split);
                    super::interrupt::stopped_run();
                    break;
                };
                line[format!("{split}_loss")] = json!(eval.loss);
                line[format!("{split}_skipped_rows")] = json!(data.skipped.len());
                for (k, v) in &eval.metrics {
                    line[format!("{split}_{k}")] = json!(v);
                }
            }
        }
        // MNLI's second dev split is only here.
        keep_result(self.train.output.as_deref(), &line)?;
        // One that came during the writes, or during the second dev set's evaluation.
        if let (Some((signal, _)), None) = (
            super::interrupt::received(),
            super::interrupt::exit_status(),
        ) {
            note!(
                "spafit: the run had reached its end when {signal} came: its results are written"
            );
        }
        super::print_line(&line)?;
        match out_of_memory {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// What a finished run's evaluation of its second dev split, `split`, in batches of up to
    /// `largest` examples, was when it ran out of memory, and how to have it still.
    fn split_out_of_memory_context(
        &self,
        task: spafit::data::GlueTask,
        split: &str,
        largest: usize,
    ) -> String {
        let written = match &self.train.output {
            // A --resume finds the run complete and reports these results as they are.
            Some(dir) => format!(
                "written to {} without it (a --resume reports them as they are)",
                dir.join(RESULT_FILE).display()
            ),
            None => "printed without it".to_string(),
        };
        // Half the batch that ran out; one example where that was one already.
        let (batch, device) = match largest {
            0 | 1 => (1, " on a device with more memory"),
            n => (n / 2, ""),
        };
        let adapter = match self.saved_adapter() {
            Some(_) => format!(
                "the trained adapter is saved: `{} --batch-size {batch}` gives it{device}",
                self.eval_command(task, split)
            ),
            None => "without --output or --export-peft the trained adapter is not saved".into(),
        };
        format!(
            "This was the evaluation on {split} after the last step, in batches of up to \
             {largest} examples: the run's results are {written}; {adapter}"
        )
    }

    /// Says that a signal after the run's last step left out the evaluation of `split`, and
    /// the command that gives it.
    fn note_split_left_out(&self, task: spafit::data::GlueTask, split: &str) {
        let signal = super::interrupt::received().map_or("a signal", |(name, _)| name);
        let command = self.eval_command(task, split);
        note!(
            "spafit: {signal} came after the run's last step: its results are written without \
             {split}'s evaluation, which `{command}` gives"
        );
    }

    /// The `spafit eval` command that evaluates the run's best adapter on `split`, as the
    /// run would have: the same model, data, device and precision.
    fn eval_command(&self, task: spafit::data::GlueTask, split: &str) -> String {
        let flag = |flag: &str, path: &std::path::Path| {
            spafit::shell_word::shell_flag(flag, path.as_os_str())
        };
        let mut command = format!(
            "spafit eval {} --task {}",
            flag("--model", &self.model.model),
            task.dir_name().to_ascii_lowercase()
        );
        if let Some(dir) = &self.data.glue_dir {
            command += &format!(" {}", flag("--glue-dir", dir));
        }
        command += &format!(" --split {split}");
        // The run's own device and precision, so the numbers are those it would have given.
        if self.model.device != "cpu" {
            command += &format!(" --device {}", self.model.device);
        }
        if self.model.dtype != "f32" {
            command += &format!(" --dtype {}", self.model.dtype);
        }
        if let Some(adapter) = self.saved_adapter() {
            command += &format!(" {}", flag("--adapter", &adapter));
        }
        command
    }

    /// Where the run's trained adapter is once it ends: `best/` under --output, else the
    /// --export-peft folder (the same weights: the export is written from the best ones).
    fn saved_adapter(&self) -> Option<PathBuf> {
        match (&self.train.output, &self.train.export_peft) {
            (Some(out), _) => Some(out.join("best")),
            (None, export) => export.clone(),
        }
    }
}

/// Says which classes no training example has: the head learns never to predict them.
fn note_classes_without_examples(train: &Dataset) {
    let Some(labels) = train.kind.class_names() else {
        return;
    };
    let mut seen = vec![false; labels.len()];
    for example in &train.examples {
        let ids = match &example.target {
            Some(spafit::data::Target::Class(id)) => std::slice::from_ref(id),
            Some(spafit::data::Target::LabelSet(ids)) => ids.as_slice(),
            _ => &[],
        };
        for &id in ids {
            if let Some(seen) = seen.get_mut(id as usize) {
                *seen = true;
            }
        }
    }
    let missing: Vec<&str> = labels
        .iter()
        .zip(&seen)
        .filter(|(_, seen)| !**seen)
        .map(|(label, _)| label.as_str())
        .collect();
    if !missing.is_empty() {
        note!(
            "note: no training example of {} has the class{} {} (of {} classes): the model \
             learns never to predict {}",
            train.name,
            if missing.len() == 1 { "" } else { "es" },
            missing
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", "),
            labels.len(),
            if missing.len() == 1 { "it" } else { "them" }
        );
    }
}

/// A write under the run's directory that failed for want of room (a full disk, a quota, a
/// file size limit, a file system gone read-only) leaves what the run saved before whole
/// (each file is written under a temporary name, then renamed): said with the error, and how
/// to go on, where a user would otherwise take the run for lost.
fn resumable_after(e: spafit::Error, output: Option<&std::path::Path>) -> spafit::Error {
    use std::io::ErrorKind::{FileTooLarge, QuotaExceeded, ReadOnlyFilesystem, StorageFull};
    match (e, output) {
        (spafit::Error::Io { path, error }, Some(dir))
            if path.starts_with(dir)
                && matches!(
                    error.kind(),
                    StorageFull | QuotaExceeded | FileTooLarge | ReadOnlyFilesystem
                ) =>
        {
            let error = std::io::Error::new(
                error.kind(),
                format!(
                    "{error}; what the run saved before is whole (each file is written under \
                     a temporary name, then renamed): once there is room, the same command \
                     with --resume goes on from its last saved state (last/), or starts over \
                     where it saved none"
                ),
            );
            spafit::Error::Io { path, error }
        }
        (e, _) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::resumable_after;
    use std::io::{Error as IoError, ErrorKind};
    use std::path::Path;

    fn io(path: &str, kind: ErrorKind) -> spafit::Error {
        spafit::Error::Io {
            path: path.into(),
            error: IoError::new(kind, "the OS's words"),
        }
    }

    /// A save that ran out of room under the run's directory says how to go on; an error
    /// elsewhere, or of another kind (a read), is left as it was.
    #[test]
    fn a_save_without_room_says_the_run_resumes() {
        let out = Some(Path::new("runs/a"));
        let said = resumable_after(
            io("runs/a/last/state.safetensors", ErrorKind::StorageFull),
            out,
        );
        let text = said.to_string();
        assert!(
            text.starts_with("runs/a/last/state.safetensors: the OS's words; ")
                && text.contains("the same command with --resume goes on"),
            "{text}"
        );
        assert!(
            matches!(said, spafit::Error::Io { error, .. } if error.kind() == ErrorKind::StorageFull)
        );
        for (path, kind, output) in [
            ("elsewhere/x", ErrorKind::StorageFull, out),
            ("runs/a/last/state.safetensors", ErrorKind::NotFound, out),
            (
                "runs/a/last/state.safetensors",
                ErrorKind::StorageFull,
                None,
            ),
        ] {
            let text = resumable_after(io(path, kind), output).to_string();
            assert_eq!(text, format!("{path}: the OS's words"));
        }
    }
}

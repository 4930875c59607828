use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use spafit::adapter::AdapterHead;
use spafit::data::{GlueTask, TaskKind};
use spafit::model::BertClassifier;
use spafit::train::{evaluate, infer, scored_predictions_at, EncodedDataset};
use spafit::{Error, Result};

use spafit::backend::Backend;

use super::args::{on_backend, DataArgs, ModelArgs, TrainedCut};
use super::named_pipes::{open_adapter_noting_pipes, open_checkpoint};
use super::prediction_output::{PredictionFormat, PredictionTable};

/// The model (the base with a saved adapter, or a fine-tuned checkpoint as it is), a split
/// of data, and its tokenized form.
struct Loaded<B: Backend> {
    backend: B,
    model: spafit::model::BertClassifier<B>,
    data: spafit::data::Dataset,
    encoded: EncodedDataset,
    /// Tokens per example the texts were cut to.
    max_len: usize,
}

fn load<B: Backend>(
    backend: B,
    model: &ModelArgs,
    data: &DataArgs,
    adapter: Option<&std::path::Path>,
    split: &str,
    for_prediction: bool,
) -> Result<Loaded<B>> {
    let checkpoint = open_checkpoint(&model.model)?;
    model.check_max_len(&checkpoint)?;
    let (classifier, head, default_kind, head_source, trained_cut) = match adapter {
        Some(dir) => {
            let opened = open_adapter_noting_pipes(dir, &checkpoint, &backend)?;
            for warning in &opened.warnings {
                note!("note: {warning}");
            }
            let head = opened.head();
            // A PEFT adapter's model takes its base's class names, as in transformers.
            let default_kind =
                Some(head.default_kind_naming(checkpoint.config.class_names(head.outputs)));
            let cut = TrainedCut::of_adapter(opened.max_len);
            (opened.model, head, default_kind, dir.to_path_buf(), cut)
        }
        None => {
            let classifier = BertClassifier::from_fine_tuned(&checkpoint, &backend)?;
            // The checkpoint's class names (config.json's id2label) name custom data's
            // classes when the user gives none. A GLUE task keeps its own names, and the
            // head is lined up with them after loading (`match_checkpoint_classes`).
            let head = AdapterHead {
                labels: None,
                text_pairs: None,
                // As problem_type says; without one a head may be read as either
                // (transformers' default is no record of how it trained).
                multi_label: checkpoint.problem_is_multi_label(),
                outputs: classifier.num_labels(),
            };
            let default_kind = super::checkpoint_classes::checkpoint_head_kind(&checkpoint)
                .or_else(|| Some(head.default_kind()));
            let source = checkpoint.weights.path().to_path_buf();
            // A checkpoint `spafit merge` wrote cuts inputs as its adapter did.
            let cut = match spafit::adapter::merged_max_len(checkpoint.dir())? {
                Some(recorded) => TrainedCut::of_adapter(recorded),
                None => TrainedCut::NoAdapter,
            };
            (classifier, head, default_kind, source, cut)
        }
    };
    // The head against the data's classes: by the adapter's names, or by the checkpoint's.
    let check_head = |kind: &TaskKind, data_name: &str| match adapter {
        Some(dir) => {
            super::checkpoint_classes::check_adapter_head(&head, &checkpoint, kind, data_name, dir)
        }
        None => head
            .check(kind, data_name, &head_source)
            .map_err(|e| match e {
                spafit::Error::Mismatch { path, detail } => spafit::Error::Mismatch {
                    path,
                    detail: format!(
                        "{detail}; the checkpoint's head is its own (no --adapter){}",
                        checkpoint
                            .config
                            .class_names(head.outputs)
                            .map_or(String::new(), |n| format!(
                                ", its classes {n:?} by config.json's id2label"
                            ))
                    ),
                },
                e => e,
            }),
    };
    // Classes the flags give are checked before any row is read: a row's label outside
    // them is no news when the head cannot take them at all.
    if let Some((kind, name)) = data.given_label_space(split, default_kind.as_ref())? {
        check_head(&kind, &name)?;
    }
    let data = match for_prediction {
        true => data.load_for_prediction(split, default_kind.as_ref())?,
        false => data.load_with_default_kind(split, default_kind.as_ref())?,
    };
    head.check_texts(&data, &head_source)?;
    check_head(&data.kind, &data.name)?;
    let mut classifier = classifier;
    // Lined up with the data's classes once: by the adapter's names, or by the checkpoint's.
    match adapter {
        Some(_) => {
            super::checkpoint_classes::match_adapter_classes(
                &head,
                &checkpoint,
                &mut classifier,
                &backend,
                &data.kind,
            )?;
        }
        None => {
            super::checkpoint_classes::match_checkpoint_classes(
                &checkpoint,
                &mut classifier,
                &backend,
                &data.kind,
            )?;
            classifier.store_frozen_weights(&backend)?;
        }
    }
    super::release_loading_memory();
    let tokenizer = model.tokenizer(&checkpoint, trained_cut)?;
    let encoded = EncodedDataset::new(&tokenizer, &data)?;
    Ok(Loaded {
        backend,
        model: classifier,
        data,
        encoded,
        max_len: tokenizer.max_len(),
    })
}

/// `spafit eval`.
#[derive(Args, Debug)]
pub struct EvalCommand {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Adapter directory: written by `spafit train` (OUTPUT/best) or by Python PEFT
    /// (adapter_config.json + adapter_model.safetensors, LoRA). Without it, the checkpoint's
    /// own classifier head (a fine-tuned BertForSequenceClassification, class names from
    /// config.json's id2label).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Split to evaluate (GLUE: dev, dev_matched, ...; default: the task's first dev split;
    /// custom data: the --dev-file).
    #[arg(long)]
    pub split: Option<String>,
    /// Examples per batch.
    #[arg(long, value_parser = super::args::at_least_one(), default_value_t = 64, allow_hyphen_values = true)]
    pub batch_size: usize,
}

impl EvalCommand {
    fn split(&self) -> Result<String> {
        Ok(match (&self.split, self.data.glue_task()?) {
            // Custom data has two splits: `dev` (--dev-file) and `train` (--train-file).
            (Some(s), None) if s != "dev" && s != "train" => {
                return Err(Error::invalid(
                    "--split",
                    format!(
                        "`{s}`: custom data is evaluated from --dev-file (`dev`, the default) \
                         or --train-file (`train`); other splits are GLUE's (dev_matched, ...)"
                    ),
                ))
            }
            (Some(s), _) => s.clone(),
            (None, Some(task)) => task.dev_splits()[0].to_string(),
            (None, None) => "dev".to_string(),
        })
    }

    /// The refusals the command line alone decides (see [`super::Cli::from_env`]).
    pub fn check_command_line(&self) -> Result<()> {
        self.model.device_and_dtype()?;
        self.split().map(drop)
    }

    pub fn run(&self) -> Result<()> {
        on_backend!(self.model.backend()?, b => self.run_on(b))
    }

    fn run_on<B: Backend>(&self, backend: B) -> Result<()> {
        let Loaded {
            backend,
            mut model,
            data,
            encoded,
            max_len,
        } = load(
            backend,
            &self.model,
            &self.data,
            self.adapter.as_deref(),
            &self.split()?,
            false,
        )?;
        if data.is_empty() {
            return Err(Error::Format {
                path: data.name.clone().into(),
                detail: "no examples to evaluate".into(),
            });
        }
        self.data.apply_threshold(&mut model, &data.kind)?;
        if let Some((count, first)) = data.unlabeled() {
            return Err(Error::Format {
                path: data.name.clone().into(),
                detail: format!(
                    "eval needs labeled examples and {count} of {} have no label, the first \
                     at {first} (for unlabeled data, use `spafit predict`)",
                    data.examples.len()
                ),
            });
        }
        let eval = evaluate(
            &backend,
            &model,
            &encoded,
            self.batch_size,
            self.data.glue_task()?,
        )
        .map_err(|e| {
            e.in_memory_context(|| {
                batch_memory_context(&backend, &model, self.batch_size, &encoded, max_len)
            })
        })?;
        // The rows --skip-malformed left out are listed on stderr; a script reading this line
        // alone would take the metrics for the whole file's.
        let mut line = json!({"split": data.name, "examples": data.len(), "skipped_rows": data.skipped.len(), "max_len": max_len, "loss": eval.loss, "seconds": eval.seconds, "device": backend.name()});
        for (k, v) in &eval.metrics {
            line[k] = json!(v);
        }
        // F1 is that of class id 1; named, since a head's names may put any class there.
        if let (Some(_), TaskKind::Classification { labels }) = (eval.metrics.get("f1"), &data.kind)
        {
            line["f1_positive_class"] = json!(labels.get(1));
        }
        super::print_line(&line)?;
        Ok(())
    }
}

/// `spafit predict`.
#[derive(Args, Debug)]
pub struct PredictCommand {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Adapter directory: written by `spafit train` (OUTPUT/best) or by Python PEFT
    /// (adapter_config.json + adapter_model.safetensors, LoRA). Without it, the checkpoint's
    /// own classifier head (a fine-tuned BertForSequenceClassification, class names from
    /// config.json's id2label).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Split to predict (GLUE: test, MNLI's test_matched or test_mismatched, ...; default:
    /// the task's test split, test_matched for MNLI). Custom data: `test` (the default) or
    /// `dev` read --dev-file, `train` reads --train-file.
    #[arg(long)]
    pub split: Option<String>,
    /// Write predictions here instead of standard output (`-` is standard output): an
    /// existing file is replaced whole (written beside it, then renamed), and missing folders
    /// on the way are created.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Output format: jsonl (index, file line, label, its probability and every class's
    /// probability; or the score), csv, or tsv (for a GLUE task: GLUE's submission file).
    /// Default: the --output file's extension, else jsonl.
    #[arg(long, value_enum)]
    pub format: Option<PredictionFormat>,
    /// Examples per batch.
    #[arg(long, value_parser = super::args::at_least_one(), default_value_t = 64, allow_hyphen_values = true)]
    pub batch_size: usize,
}

impl PredictCommand {
    fn split(&self) -> Result<String> {
        Ok(match (&self.split, self.data.glue_task()?) {
            (Some(s), None) if !["test", "dev", "train"].contains(&s.as_str()) => {
                return Err(Error::invalid(
                    "--split",
                    format!(
                        "`{s}`: custom data is predicted from --dev-file (`test`, the default, \
                         or `dev`) or --train-file (`train`); other splits are GLUE's \
                         (test_matched, ...)"
                    ),
                ))
            }
            (Some(s), _) => s.clone(),
            (None, Some(GlueTask::Mnli)) => "test_matched".to_string(),
            (None, _) => "test".to_string(),
        })
    }

    /// The refusals the command line alone decides (see [`super::Cli::from_env`]).
    pub fn check_command_line(&self) -> Result<()> {
        self.model.device_and_dtype()?;
        self.split().map(drop)
    }

    pub fn run(&self) -> Result<()> {
        on_backend!(self.model.backend()?, b => self.run_on(b))
    }

    /// The file --output names; `None` for standard output (no flag, or `-` as the Unix
    /// tools take it).
    fn output_file(&self) -> Option<&Path> {
        self.output.as_deref().filter(|p| *p != Path::new("-"))
    }

    fn run_on<B: Backend>(&self, backend: B) -> Result<()> {
        if let Some(out) = self.output_file() {
            super::output_paths::check_output_file(
                "--output",
                out,
                &self.model.model,
                self.adapter.as_deref(),
                &self.data.input_files(),
            )?;
        }
        let split = self.split()?;
        let Loaded {
            backend,
            mut model,
            data,
            encoded,
            max_len,
        } = load(
            backend,
            &self.model,
            &self.data,
            self.adapter.as_deref(),
            &split,
            true,
        )?;
        // An empty prediction file would pass for an answer (a GLUE submission of no rows).
        if data.is_empty() {
            return Err(Error::Format {
                path: data.name.clone().into(),
                detail: "no examples to predict".into(),
            });
        }
        self.data.apply_threshold(&mut model, &data.kind)?;
        let glue = self.data.glue_task()?;
        let format = PredictionFormat::choose(self.format, self.output_file());
        // A GLUE submission answers every test row: one skipped would leave a hole.
        if glue.is_some() && format == PredictionFormat::Tsv && !data.skipped.is_empty() {
            return Err(Error::invalid(
                "predict",
                format!(
                    "{} rows of {} were skipped ({}), and a GLUE submission needs every test row in order; fix them, or write --format jsonl or csv, whose rows carry their file line",
                    data.skipped.len(),
                    data.name,
                    data.skipped.first().map_or("", String::as_str)
                ),
            ));
        }
        // A submission names rows by the test file's own `index`, which need not count from
        // 0 in a file someone cut or reordered; the other formats carry it as `id`.
        let submission_ids: Option<Vec<String>> = match glue {
            Some(task) => {
                let dir = self.data.glue_dir.as_deref().unwrap_or(Path::new("."));
                let ids = task.row_ids(dir, &split)?;
                if format == PredictionFormat::Tsv {
                    check_submission_ids(&task.file(dir, &split)?, &ids, &data.source_lines)?;
                }
                data.source_lines
                    .iter()
                    .map(|line| ids.get(line).cloned())
                    .collect()
            }
            None => None,
        };
        let out = infer(&backend, &model, &encoded, self.batch_size).map_err(|e| {
            e.in_memory_context(|| {
                batch_memory_context(&backend, &model, self.batch_size, &encoded, max_len)
            })
        })?;
        // `load` checked that the data's label space is the head's.
        let labels = data.kind.class_names();
        let predictions = scored_predictions_at(
            &data.kind,
            &out.logits,
            model.num_labels(),
            model.decision_threshold(),
        )?;
        let text = PredictionTable {
            predictions: &predictions,
            labels,
            multi_label: data.kind.is_multi_label(),
            source_lines: &data.source_lines,
            glue,
            submission_ids: submission_ids.as_deref(),
        }
        .render(format)?;
        match self.output_file() {
            Some(path) => spafit::adapter::write_atomic(path, text.as_bytes())?,
            None => std::io::stdout()
                .write_all(text.as_bytes())
                .and_then(|()| std::io::stdout().flush())
                .map_err(|source| Error::Io {
                    path: "<stdout>".into(),
                    error: source,
                })?,
        }
        note!("{} predictions", data.len());
        Ok(())
    }
}

/// What ran out of memory in `encoded`'s examples run `batch_size` at a time, texts cut to
/// `max_len` tokens, and which settings need less (a batch size between the split's size and
/// the setting, or a --max-len above its longest text, would change nothing).
fn batch_memory_context<B: Backend>(
    backend: &B,
    model: &BertClassifier<B>,
    batch_size: usize,
    encoded: &EncodedDataset,
    max_len: usize,
) -> String {
    let largest = batch_size.min(encoded.len());
    let longest = encoded.texts.iter().map(|t| t.ids.len()).max().unwrap_or(0);
    let what = format!(
        "This was a batch of up to {largest} examples of up to {longest} tokens (texts cut \
         to {max_len})"
    );
    let shorter = format!("a --max-len below {longest}");
    let smaller = format!("a --batch-size below {largest}");
    let changes = [
        (longest > 1).then_some(shorter.as_str()),
        (largest > 1).then_some(smaller.as_str()),
    ];
    let frozen = model.has_frozen_linear_weights();
    super::out_of_memory_context(backend, what, &changes, frozen)
}

/// A GLUE submission names each row by its test file's id: an empty id or one given twice
/// would be scored against the wrong rows, or none (before any work, naming both lines).
fn check_submission_ids(
    file: &Path,
    ids: &std::collections::HashMap<usize, String>,
    lines: &[usize],
) -> Result<()> {
    let mut first_line_of: std::collections::HashMap<&str, usize> = Default::default();
    for &line in lines {
        let refuse = |detail: String| Error::Format {
            path: file.to_path_buf(),
            detail: format!("line {line}: {detail}"),
        };
        let Some(id) = ids.get(&line) else {
            continue;
        };
        if id.is_empty() {
            return Err(refuse(
                "the row's id (the `index` column; QQP's `id`) is empty, and a GLUE submission \
                 names every row by it: give the row its id, or write --format jsonl or csv"
                    .into(),
            ));
        }
        if let Some(first) = first_line_of.insert(id, line) {
            return Err(refuse(format!(
                "id `{id}` was already given on line {first}, and a GLUE submission names every \
                 row by its own id: fix the ids, or write --format jsonl or csv"
            )));
        }
    }
    Ok(())
}

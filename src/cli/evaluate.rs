use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use spafit::adapter::load_adapter;
use spafit::checkpoint::Checkpoint;
use spafit::data::{Target, TaskKind};
use spafit::train::{evaluate, infer, predictions, EncodedDataset};
use spafit::{Error, Result};

use super::args::{DataArgs, ModelArgs};

/// `spafit eval`.
#[derive(Args, Debug)]
pub struct EvalCommand {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Adapter directory written by `spafit train` (OUTPUT/best).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Split to evaluate (GLUE: dev, dev_matched, ...; custom data: the --dev-file).
    #[arg(long, default_value = "dev")]
    pub split: String,
    /// Examples per batch.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
}

impl EvalCommand {
    pub fn run(&self) -> Result<()> {
        let backend = self.model.backend()?;
        let checkpoint = Checkpoint::open(&self.model.model)?;
        let (model, _) = load_adapter(&self.adapter, &checkpoint, &backend)?;
        let data = self.data.load(&self.split)?;
        let encoded = EncodedDataset::new(&checkpoint.tokenizer(self.model.max_len)?, &data)?;
        let eval = evaluate(
            &backend,
            &model,
            &encoded,
            self.batch_size,
            self.data.glue_task()?,
        )?;
        let mut line = json!({"split": data.name, "examples": data.len(), "loss": eval.loss, "seconds": eval.seconds});
        for (k, v) in &eval.metrics {
            line[k] = json!(v);
        }
        println!("{line}");
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
    /// Adapter directory written by `spafit train`.
    #[arg(long)]
    pub adapter: PathBuf,
    /// Split to predict (GLUE: test, test_matched, ...; custom data: the --dev-file).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Write predictions here (JSON lines) instead of standard output.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Examples per batch.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
}

impl PredictCommand {
    pub fn run(&self) -> Result<()> {
        let backend = self.model.backend()?;
        let checkpoint = Checkpoint::open(&self.model.model)?;
        let (model, manifest) = load_adapter(&self.adapter, &checkpoint, &backend)?;
        let data = self.data.load(&self.split)?;
        let encoded = EncodedDataset::new(&checkpoint.tokenizer(self.model.max_len)?, &data)?;
        let out = infer(&backend, &model, &encoded, self.batch_size)?;
        let kind = match &manifest.labels {
            Some(labels) => TaskKind::Classification {
                labels: labels.clone(),
            },
            None => TaskKind::Regression,
        };
        let mut text = String::new();
        for (i, p) in predictions(&kind, &out.logits, model.num_labels)
            .into_iter()
            .enumerate()
        {
            let value = match (p, &kind) {
                (Target::Class(c), TaskKind::Classification { labels }) => {
                    json!(labels[c as usize])
                }
                (Target::Score(s), _) => json!(s),
                (Target::Class(c), _) => json!(c),
            };
            text.push_str(&json!({"index": i, "prediction": value}).to_string());
            text.push('\n');
        }
        match &self.output {
            Some(path) => spafit::adapter::write_atomic(path, text.as_bytes())?,
            None => std::io::stdout()
                .write_all(text.as_bytes())
                .map_err(|source| Error::Io {
                    path: "<stdout>".into(),
                    source,
                })?,
        }
        eprintln!("{} predictions", data.len());
        Ok(())
    }
}

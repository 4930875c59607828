//! `spafit merge`: an adapter folded into its base, saved as a fine-tuned checkpoint.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use spafit::adapter::{save_merged, MergedDType, MERGE_NOTE_FILE};
use spafit::backend::cpu::CpuBackend;
use spafit::data::TaskKind;
use spafit::{Error, Result};

use super::args::spelling;
use super::named_pipes::{open_adapter_noting_pipes, open_checkpoint};

/// `spafit merge`.
#[derive(Args, Debug)]
pub struct MergeCommand {
    /// The base checkpoint the adapter was trained on (a directory, a hub cache folder, or a
    /// hub id in the offline cache).
    #[arg(long, default_value = ".cache/models/all-MiniLM-L6-v2")]
    pub model: PathBuf,
    /// Adapter directory: written by `spafit train` (OUTPUT/best) or by Python PEFT (LoRA).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Folder for the merged checkpoint (new, or empty).
    #[arg(long)]
    pub output: PathBuf,
    /// Storage of the merged tensors: f32 (transformers' default), f16 or bf16 (half the
    /// size), f64 (the merge's own precision). The merge itself is computed in f64.
    #[arg(long, default_value = "f32", value_parser = spelling(parse_merged_dtype))]
    pub dtype: String,
}

/// What the first Ctrl-C or SIGTERM during a merge says.
const MERGE_STOPS: &[u8] = b"\nspafit: the merge ends once its files are written (interrupt \
    again to quit at once; the next merge into the same folder removes what that leaves)\n";

fn parse_merged_dtype(given: &str) -> Result<MergedDType> {
    match given.trim().to_ascii_lowercase().as_str() {
        "f32" => Ok(MergedDType::F32),
        "f64" => Ok(MergedDType::F64),
        "f16" => Ok(MergedDType::F16),
        "bf16" => Ok(MergedDType::BF16),
        _ => Err(Error::invalid(
            "--dtype",
            format!("`{given}`: expected f32, f16, bf16 or f64"),
        )),
    }
}

impl MergeCommand {
    /// The refusals the command line alone decides (see [`super::Cli::from_env`]).
    pub fn check_command_line(&self) -> Result<()> {
        parse_merged_dtype(&self.dtype).map(drop)
    }

    pub fn run(&self) -> Result<()> {
        let dtype = parse_merged_dtype(&self.dtype)?;
        if let Some(folder) =
            super::output_paths::read_folder_holding(&self.output, &self.model, Some(&self.adapter))
        {
            return Err(Error::invalid(
                "--output",
                format!(
                    "{} lies in {}, the folder of the model or adapter this command reads; \
                     write the merge elsewhere",
                    self.output.display(),
                    folder.display()
                ),
            ));
        }
        let checkpoint = open_checkpoint(&self.model)?;
        // In f64, so the merged weights are the adapter's sums rounded once, on storing.
        let backend = CpuBackend::f64();
        let opened = open_adapter_noting_pipes(&self.adapter, &checkpoint, &backend)?;
        for warning in &opened.warnings {
            note!("note: {warning}");
        }
        let head = opened.head();
        let kind = head.default_kind_naming(checkpoint.config.class_names(head.outputs));
        let max_len = opened.max_len;
        // Ctrl-C or SIGTERM waits for the writes: the merge is whole or was never renamed
        // into place, and a second signal quits at once.
        let deferred = super::interrupt::StopOnSignal::install(MERGE_STOPS);
        let merged = save_merged(
            &self.output,
            &backend,
            opened.model,
            &kind,
            &checkpoint,
            dtype,
            max_len,
        )?;
        drop(deferred);
        if let Some((signal, _)) = super::interrupt::received() {
            note!("note: {signal} came while the merge was written; it is complete");
            // A script's loop stops at a command a signal ended, as it would without us.
            super::interrupt::stopped_run();
        }
        let classes = json!(kind.class_names());
        if let Some(max_len) = max_len {
            note!(
                "note: the adapter was trained on inputs cut to {max_len} tokens: spafit eval \
                 and predict cut the merged checkpoint's inputs there too ({MERGE_NOTE_FILE}); \
                 in transformers give max_length={max_len}, truncation=True"
            );
        }
        super::print_line(&json!({
            "output": merged.dir.display().to_string(),
            "tensors": merged.tensors,
            "dtype": self.dtype.trim().to_ascii_lowercase(),
            "classes": classes,
            "regression": matches!(kind, TaskKind::Regression),
            "multi_label": kind.is_multi_label(),
            "max_len": max_len,
            "tokenizer_files": merged.tokenizer_files,
        }))
    }
}

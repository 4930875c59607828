//! A record of the batches a run trained on, one JSON line per optimizer step, so another
//! trainer (PyTorch in `scripts/side_by_side_demo.sh`) can replay exactly the same work.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::EncodedDataset;
use crate::data::Target;
use crate::error::{Error, Result};

/// Where each step's examples go: `{"step", "epoch", "rows", "input_ids", "token_type_ids",
/// "labels"}`, token ids unpadded (the replaying side pads each batch to its longest row).
pub struct BatchLog {
    path: PathBuf,
    out: BufWriter<File>,
}

impl BatchLog {
    /// A resumed run's log: the lines of the interrupted run up to `step` (the state it
    /// resumes from) are kept, the ones after it (steps it is about to repeat, and a line
    /// torn by the kill) dropped, so every step appears once.
    pub fn resume_at(path: &Path, step: usize) -> Result<Self> {
        super::run_state::truncate_step_log(path, step)?;
        Self::open(path, true)
    }

    /// Starts a new log at `path`, replacing any file there.
    pub fn create(path: &Path) -> Result<Self> {
        Self::open(path, false)
    }

    /// Only through [`Self::create`] and [`Self::resume_at`]: appending without first
    /// dropping the steps a resumed run repeats would log them twice.
    fn open(path: &Path, append: bool) -> Result<Self> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            error: source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(path)
            .map_err(io)?;
        Ok(BatchLog {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    /// Appends step `step` (1-based) of epoch `epoch`, examples `rows` of `data`, and flushes
    /// so a killed run leaves whole lines.
    pub fn write(
        &mut self,
        step: usize,
        epoch: usize,
        rows: &[usize],
        data: &EncodedDataset,
    ) -> Result<()> {
        let texts = rows
            .iter()
            .map(|&i| data.text(i))
            .collect::<Result<Vec<_>>>()?;
        let labels: Vec<serde_json::Value> = rows
            .iter()
            .map(|&i| {
                Ok(match data.target(i)? {
                    Some(Target::Class(c)) => json!(c),
                    Some(Target::Score(s)) => json!(s),
                    None => serde_json::Value::Null,
                })
            })
            .collect::<Result<_>>()?;
        let line = json!({
            "step": step,
            "epoch": epoch,
            "rows": rows,
            "input_ids": texts.iter().map(|t| &t.ids).collect::<Vec<_>>(),
            "token_type_ids": texts.iter().map(|t| &t.type_ids).collect::<Vec<_>>(),
            "labels": labels,
        });
        writeln!(self.out, "{line}")
            .and_then(|()| self.out.flush())
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                error: source,
            })
    }
}

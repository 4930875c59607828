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
///
/// A file is written as `.NAME.partial` beside it and renamed into place when the run ends,
/// so a run that fails or is killed leaves an earlier log at the path whole (a resume
/// continues the partial one). A device or pipe is written in place.
pub struct BatchLog {
    /// Where the finished log goes.
    path: PathBuf,
    /// The file written now: the partial sibling, or `path` itself for a device.
    writing: PathBuf,
    out: BufWriter<File>,
}

impl BatchLog {
    /// A resumed run's log: the lines of the interrupted run up to `step` (the state it
    /// resumes from) are kept, the ones after it (steps it is about to repeat, and a line
    /// torn by the kill) dropped, so every step appears once.
    pub fn resume_at(path: &Path, step: usize) -> Result<Self> {
        let writing = writing_path(path)?;
        // A run whose log was finished (killed after the rename, or resumed once done)
        // continues from the finished file.
        if writing != path && !writing.exists() && path.is_file() {
            std::fs::copy(path, &writing).map_err(|source| Error::Io {
                path: writing.clone(),
                error: source,
            })?;
        }
        super::run_state::truncate_step_log(&writing, step)?;
        Self::open(path, writing, true)
    }

    /// Starts a new log for `path`; a file there is replaced when the run ends.
    pub fn create(path: &Path) -> Result<Self> {
        Self::open(path, writing_path(path)?, false)
    }

    /// Only through [`Self::create`] and [`Self::resume_at`]: appending without first
    /// dropping the steps a resumed run repeats would log them twice.
    fn open(path: &Path, writing: PathBuf, append: bool) -> Result<Self> {
        let io = |source| Error::Io {
            path: writing.clone(),
            error: source,
        };
        if let Some(dir) = writing.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(&writing)
            .map_err(io)?;
        Ok(BatchLog {
            path: path.to_path_buf(),
            writing,
            out: BufWriter::new(file),
        })
    }

    /// Ends the log of a run that took its last step: the partial file takes the log's
    /// path. A run that stops before (`stop_after_steps`) leaves it partial for its resume.
    pub fn finish(mut self, run_complete: bool) -> Result<()> {
        let io = |path: &Path, source| Error::Io {
            path: path.to_path_buf(),
            error: source,
        };
        self.out.flush().map_err(|e| io(&self.writing, e))?;
        if run_complete && self.writing != self.path {
            let target = crate::adapter::link_target(&self.path).map_err(|e| io(&self.path, e))?;
            std::fs::rename(&self.writing, &target).map_err(|e| io(&target, e))?;
        }
        Ok(())
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
                path: self.writing.clone(),
                error: source,
            })
    }
}

/// The file a log for `path` is written to: `.NAME.partial` beside the file a link at
/// `path` points to, or `path` itself when it is a device or a pipe.
fn writing_path(path: &Path) -> Result<PathBuf> {
    match std::fs::metadata(path) {
        // The rename at the end would fail, after the whole run.
        Ok(m) if m.is_dir() => {
            return Err(Error::invalid(
                "batch log",
                format!("{} is a directory; give a file name", path.display()),
            ))
        }
        Ok(m) if !m.is_file() => return Ok(path.to_path_buf()),
        _ => {}
    }
    let target = crate::adapter::link_target(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        error: source,
    })?;
    let name = target
        .file_name()
        .map_or_else(|| "batches".into(), |n| n.to_string_lossy().into_owned());
    Ok(target.with_file_name(format!(".{name}.partial")))
}

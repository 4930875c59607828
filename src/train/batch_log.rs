//! A record of the batches a run trained on, one JSON line per optimizer step, so another
//! trainer (PyTorch in `scripts/side_by_side_demo.sh`) can replay exactly the same work.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
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
    /// Steps 1 to this were in the file when it opened.
    logged: usize,
}

impl BatchLog {
    /// A resumed run's log: the lines of the interrupted run up to `step` (the state it
    /// resumes from) are kept, the ones after it (steps it is about to repeat, and a line
    /// torn by the kill) dropped, so every step appears once. Steps the file lacks (the
    /// first attempt wrote no log, or another file) are for the caller to write again
    /// (see [`Self::steps_logged`]).
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
        Self::open(path, writing, Some(step))
    }

    /// Starts a new log for `path`; a file there is replaced when the run ends.
    pub fn create(path: &Path) -> Result<Self> {
        Self::open(path, writing_path(path)?, None)
    }

    /// Only through [`Self::create`] and [`Self::resume_at`] (`resume_step`): appending
    /// without first dropping the steps a resumed run repeats would log them twice.
    fn open(path: &Path, writing: PathBuf, resume_step: Option<usize>) -> Result<Self> {
        let io = |source| Error::Io {
            path: writing.clone(),
            error: source,
        };
        if let Some(dir) = writing.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // A device or a pipe is written as it is, and what it holds cannot be read back.
        if writing == path {
            let file = OpenOptions::new()
                .create(true)
                .append(resume_step.is_some())
                .write(true)
                .truncate(resume_step.is_none())
                .open(&writing)
                .map_err(io)?;
            return Ok(BatchLog {
                path: path.to_path_buf(),
                writing,
                out: BufWriter::new(file),
                logged: resume_step.unwrap_or(0),
            });
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&writing)
            .map_err(io)?;
        // Locked before anything in it changes: two runs given one log would interleave
        // their lines, and the first to finish would rename the other's file away.
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::invalid(
                    "batch log",
                    format!(
                        "{} is being written by another run (its partial log {} is locked); \
                         give this run a file of its own",
                        path.display(),
                        writing.display()
                    ),
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let (kept, logged) = match resume_step {
            Some(step) => {
                let mut text = String::new();
                file.read_to_string(&mut text).map_err(io)?;
                kept_steps(&text, step)
            }
            None => (String::new(), 0),
        };
        // Rewritten in place, under the lock; a kill part way through loses lines, which
        // the next resume writes again.
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)).map(drop))
            .and_then(|()| file.write_all(kept.as_bytes()))
            .and_then(|()| file.flush())
            .map_err(io)?;
        Ok(BatchLog {
            path: path.to_path_buf(),
            writing,
            out: BufWriter::new(file),
            logged,
        })
    }

    /// The steps the log holds, 1 to this, when it opened: a resumed run writes the steps
    /// after it up to where it resumes, so the log holds every step once.
    pub fn steps_logged(&self) -> usize {
        self.logged
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

/// The lines of a log for steps up to `step`, in order from step 1 without a gap, and how
/// many steps they cover: a line torn by a kill, or a step after a missing one, ends them.
fn kept_steps(text: &str, step: usize) -> (String, usize) {
    let mut kept = String::new();
    let mut logged = 0;
    for line in text.lines() {
        let s = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["step"].as_u64());
        if logged >= step || s != Some(logged as u64 + 1) {
            break;
        }
        kept.push_str(line);
        kept.push('\n');
        logged += 1;
    }
    (kept, logged)
}

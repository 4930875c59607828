//! A record of the batches a run trained on, one JSON line per optimizer step, so another
//! trainer (PyTorch in `scripts/side_by_side_demo.sh`) can replay exactly the same work.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::EncodedDataset;
use crate::data::Target;
use crate::error::{Error, Result};

/// Where each step's examples go: `{"step", "epoch", "rows", "lines", "input_ids",
/// "token_type_ids", "labels"}` (steps and epochs counted from 1; `rows` index the examples
/// read, `lines` are their lines in the data file, absent for data built in code, and differ
/// from the rows by the header and any row skipped as malformed), token ids unpadded (the
/// replaying side pads each batch to its longest row).
///
/// A file is written as `.NAME.partial` beside it and renamed into place when the run ends,
/// so a run that fails or is killed leaves an earlier log at the path whole (and the steps
/// it logged in the partial file, for a look at what it trained on before it failed; a
/// resume writes the log again from step 1). A device or pipe is written in place.
#[derive(Debug)]
pub struct BatchLog {
    /// Where the finished log goes.
    path: PathBuf,
    /// The file written now: the partial sibling, or `path` itself for a device.
    writing: PathBuf,
    out: BufWriter<File>,
    /// Steps 1 to this were in the log when it opened.
    logged: usize,
}

impl BatchLog {
    /// A resumed run's log, at `step`. A file starts empty: the caller writes steps 1 to
    /// `step` again (see [`Self::steps_logged`]), which follow from the seed and the
    /// settings a resume must keep, so the log is the one an uninterrupted run writes,
    /// whatever the first attempt logged, to this file or to none. A device or a pipe keeps
    /// what it was given and counts as holding them.
    pub fn resume_at(path: &Path, step: usize) -> Result<Self> {
        Self::open(path, writing_path(path)?, Some(step))
    }

    /// Starts a new log for `path`; a file there is replaced when the run ends.
    pub fn create(path: &Path) -> Result<Self> {
        Self::open(path, writing_path(path)?, None)
    }

    fn open(path: &Path, writing: PathBuf, resume_step: Option<usize>) -> Result<Self> {
        let io = |source| Error::Io {
            path: writing.clone(),
            error: source,
        };
        if let Some(dir) = writing.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
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
        let file = lock_partial(path, &writing)?;
        // Emptied only once locked: another run's partial log is never touched.
        file.set_len(0).map_err(io)?;
        Ok(BatchLog {
            path: path.to_path_buf(),
            writing,
            out: BufWriter::new(file),
            logged: 0,
        })
    }

    /// The steps the log held when it opened (from step 1): a resumed run writes the
    /// steps after them up to where it resumes, so the log holds every step once.
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
            // Synced before and after the rename, as every atomic write is: after a power
            // cut the log is the whole one or the one it replaced, never an empty file.
            let file = self.out.get_ref();
            file.sync_all().map_err(|e| io(&self.writing, e))?;
            let target = crate::adapter::link_target(&self.path).map_err(|e| io(&self.path, e))?;
            std::fs::rename(&self.writing, &target).map_err(|e| io(&target, e))?;
            let dir = crate::adapter::parent_of(&target);
            crate::adapter::sync_path(dir).map_err(|e| io(dir, e))?;
        }
        Ok(())
    }

    /// Appends step `step` (1-based) of epoch `epoch` (0-based; written 1-based, as
    /// `metrics.jsonl` counts epochs), examples `rows` of `data`, and flushes so a killed run
    /// leaves whole lines.
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
                    // As transformers takes a multi-label target: one 0/1 float per class.
                    Some(Target::LabelSet(ids)) => json!((0..data.kind.num_labels() as u32)
                        .map(|c| if ids.contains(&c) { 1.0 } else { 0.0 })
                        .collect::<Vec<f64>>()),
                    Some(Target::Score(s)) => json!(s),
                    None => serde_json::Value::Null,
                })
            })
            .collect::<Result<_>>()?;
        let mut line = json!({
            "step": step,
            "epoch": epoch + 1,
            "rows": rows,
            "input_ids": texts.iter().map(|t| &t.ids).collect::<Vec<_>>(),
            "token_type_ids": texts.iter().map(|t| &t.type_ids).collect::<Vec<_>>(),
            "labels": labels,
        });
        if let Some(lines) = rows
            .iter()
            .map(|&i| data.source_line(i))
            .collect::<Option<Vec<_>>>()
        {
            line["lines"] = json!(lines);
        }
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

/// Opens the partial log `writing` and takes its lock: two runs given one log would
/// interleave their lines, and the first to finish would rename the other's file away.
/// The file locked must still be the one at `writing`: a run finishing between the open
/// and the lock has renamed it into place as its finished log.
fn lock_partial(path: &Path, writing: &Path) -> Result<File> {
    use std::os::unix::fs::MetadataExt;
    let io = |source| Error::Io {
        path: writing.to_path_buf(),
        error: source,
    };
    for _ in 0..3 {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(writing)
            .map_err(io)?;
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
        let held = file.metadata().map_err(io)?;
        let same = std::fs::metadata(writing)
            .is_ok_and(|now| (now.dev(), now.ino()) == (held.dev(), held.ino()));
        if same {
            return Ok(file);
        }
    }
    Err(Error::invalid(
        "batch log",
        format!(
            "{} keeps being replaced while this run opens it: another run writes the same log",
            writing.display()
        ),
    ))
}

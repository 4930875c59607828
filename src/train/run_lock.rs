//! An exclusive lock on a directory a run writes into (its output, its PEFT export), so that
//! two processes never interleave their checkpoints, metrics or exported files there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// The lock file a run holds in each directory it writes.
pub const LOCK_FILE: &str = ".spafit-run.lock";

/// The directories this process holds, by resolved path: the open lock file, how many
/// [`RunLock`]s share it, and the thread that holds them. That thread may lock a directory
/// again (the CLI holds its output across training and export, the trainer locks it for
/// training); another thread, like another process, may not: it would be a second run.
static HELD: Mutex<Option<HashMap<PathBuf, Holder>>> = Mutex::new(None);

struct Holder {
    _file: std::fs::File,
    count: usize,
    thread: std::thread::ThreadId,
}

/// A held lock on a run directory, released when the last holder in this process drops it
/// (or when the process ends, however it ends).
#[derive(Debug)]
pub struct RunLock {
    key: Option<PathBuf>,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let Ok(mut held) = HELD.lock() else { return };
        if let Some(map) = held.as_mut() {
            if let Some(Holder { count, .. }) = map.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    // Closing the file releases the lock.
                    map.remove(&key);
                }
            }
        }
    }
}

/// Locks `dir` (creating it) for this process: another process that locks it gets an error
/// saying the directory is in use. On a file system without locks the lock is a no-op. The
/// lock file stays behind: deleting it could let two processes each lock a different file of
/// that name.
pub fn lock_run_dir(dir: &Path) -> Result<RunLock> {
    let path = dir.join(LOCK_FILE);
    let io = |source| Error::Io {
        path: path.clone(),
        error: source,
    };
    // The folder's own failures name the folder, not the lock file it was to hold.
    let folder = |error| Error::Io {
        path: dir.to_path_buf(),
        error,
    };
    std::fs::create_dir_all(dir).map_err(folder)?;
    let key = std::fs::canonicalize(dir).map_err(folder)?;
    let mut held = HELD
        .lock()
        .map_err(|_| Error::invalid("run lock", "lock table poisoned".to_string()))?;
    let map = held.get_or_insert_with(HashMap::new);
    let in_use = || {
        Error::invalid(
            "run lock",
            format!(
                "{} is in use by another spafit run (it holds {}): wait for that run to end, \
                 or give another directory",
                dir.display(),
                path.display()
            ),
        )
    };
    if let Some(holder) = map.get_mut(&key) {
        if holder.thread != std::thread::current().id() {
            return Err(in_use());
        }
        holder.count += 1;
        return Ok(RunLock { key: Some(key) });
    }
    // Opening a pipe would wait for a writer forever; a directory cannot be locked.
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        if !meta.is_file() {
            return Err(Error::Format {
                path: path.clone(),
                detail: "not a plain file: remove it (spafit keeps its run lock there)".into(),
            });
        }
    }
    let open = |write: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .create(write)
            .truncate(false)
            .open(&path)
    };
    // A lock file this user may only read still takes a lock.
    let file = match open(true) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && path.exists() => open(false),
        other => other,
    }
    .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(in_use()),
        Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            return Ok(RunLock { key: None });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    map.insert(
        key.clone(),
        Holder {
            _file: file,
            count: 1,
            thread: std::thread::current().id(),
        },
    );
    Ok(RunLock { key: Some(key) })
}

/// Locks `dir` if it exists, without creating it: a directory in use by another run is
/// reported as such before any other check of its contents.
pub fn lock_existing_run_dir(dir: &Path) -> Result<Option<RunLock>> {
    match dir.is_dir() {
        true => lock_run_dir(dir).map(Some),
        false => Ok(None),
    }
}

/// Locks the directories a run writes around `check` of its settings: those that exist
/// before it runs (so a run in progress there is reported as in use, not by what it holds),
/// the others, created, once it passes (so a refused run creates none); `check` runs again
/// when a directory was new, since another run may have come and gone in between.
pub fn lock_run_dirs_around(
    dirs: &[&Path],
    mut check: impl FnMut() -> Result<()>,
) -> Result<Vec<RunLock>> {
    let mut locks = Vec::new();
    for dir in dirs {
        locks.extend(lock_existing_run_dir(dir)?);
    }
    let existed = locks.len();
    check()?;
    for dir in dirs {
        locks.push(lock_run_dir(dir)?);
    }
    if existed < dirs.len() {
        check()?;
    }
    Ok(locks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process may lock a directory again; the lock is released only when the last
    /// holder lets go, and meanwhile another opener (as another process would be) cannot
    /// take it. A pipe where the lock file goes is refused, not waited on.
    #[test]
    fn the_lock_is_reentrant_here_and_exclusive_elsewhere() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let other = || {
            let f = std::fs::File::open(dir.join(LOCK_FILE)).unwrap();
            f.try_lock().is_ok()
        };
        let first = lock_run_dir(&dir).unwrap();
        let second = lock_existing_run_dir(&dir).unwrap().unwrap();
        assert!(!other());
        // Another thread of this process is another run: refused, as another process is.
        let from_thread = std::thread::scope(|s| s.spawn(|| lock_run_dir(&dir).err()).join());
        let e = from_thread.unwrap().expect("a second thread took the lock");
        assert!(
            e.to_string().contains("in use by another spafit run"),
            "{e}"
        );
        drop(first);
        assert!(!other(), "released while a holder remains");
        drop(second);
        assert!(other());
        let piped = tmp.path().join("piped");
        std::fs::create_dir_all(&piped).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(piped.join(LOCK_FILE))
            .status()
            .unwrap();
        assert!(status.success());
        let e = lock_run_dir(&piped).unwrap_err().to_string();
        assert!(e.contains("not a plain file"), "{e}");
        // A folder that cannot be made is named itself, not the lock file it would hold.
        std::fs::write(tmp.path().join("a-file"), "").unwrap();
        let unmakeable = tmp.path().join("a-file").join("run");
        let e = lock_run_dir(&unmakeable).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: ", unmakeable.display())) && !e.contains(LOCK_FILE),
            "{e}"
        );
        assert!(lock_existing_run_dir(&tmp.path().join("absent"))
            .unwrap()
            .is_none());
        assert!(!tmp.path().join("absent").exists());
    }
}

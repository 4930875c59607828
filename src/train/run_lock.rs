//! An exclusive lock on a directory a run writes into (its output, its PEFT export), so that
//! two processes never interleave their checkpoints, metrics or exported files there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// The lock file a run holds in each directory it writes.
pub const LOCK_FILE: &str = ".spafit-run.lock";

/// What this process's locks hold.
#[derive(Default)]
struct Held {
    /// The directories held, by resolved path, with their open lock files. A directory held
    /// here is refused to any other locker in this process as to another process, whatever
    /// thread asks: a thread is not a run (a rayon worker waiting inside one run's parallel
    /// work may start another). Code that already holds a run's lock passes it on
    /// ([`crate::train::Trainer::holding`]) instead of locking again. The file is `None` on
    /// a file system without locks, where only this process's runs are kept apart.
    locks: HashMap<PathBuf, Option<std::fs::File>>,
    /// The folders locking made (a run's folder and the parents it lacked), resolved: each is
    /// removed, if empty, once no lock lies in it (`--output out --export-peft out/peft`: `out`
    /// after `out/peft`, whichever lock goes first).
    made: Vec<PathBuf>,
}

static HELD: Mutex<Option<Held>> = Mutex::new(None);

/// The locks held; a panic elsewhere while it was locked leaves it as it was (every change
/// to it is one insert or remove), so it is used on, not given up.
fn held() -> std::sync::MutexGuard<'static, Option<Held>> {
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A held lock on a run directory, released when dropped (or when the process ends, however
/// it ends). Dropped, it removes its lock file (on Unix, where a lock was taken), and the
/// folders locking made where nothing else was written into them (a run that failed before
/// its first file).
#[derive(Debug)]
pub struct RunLock {
    /// The directory, resolved.
    dir: PathBuf,
}

impl RunLock {
    /// Whether this is the lock of `dir` (compared resolved).
    pub fn covers(&self, dir: &Path) -> bool {
        std::fs::canonicalize(dir).is_ok_and(|d| d == self.dir)
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // All of it under the table's lock: another thread of this process that locks the
        // folder meanwhile is told it is held here, not that another process holds it.
        let mut guard = held();
        let Held { locks, made } = guard.get_or_insert_with(Held::default);
        let file = locks.remove(&self.dir).flatten();
        // Removed while still locked, and only if it is still this lock's file: a locker
        // that opened it before cannot hold it after (see `still_at`), so no two runs ever
        // hold two files of that name. Where that cannot be told, the file stays.
        if let Some(file) = &file {
            let path = self.dir.join(LOCK_FILE);
            if still_at(file, &path) {
                let _ = std::fs::remove_file(&path);
            }
        }
        // Closing the file releases the lock.
        drop(file);
        // Deepest first; each removal fails, leaving the folder, unless it is empty.
        made.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        made.retain(|d| {
            let in_use = locks.keys().any(|l| l.starts_with(d));
            if !in_use {
                let _ = std::fs::remove_dir(d);
            }
            in_use
        });
    }
}

/// Whether `path` is the file `file` has open (Unix: the same device and inode). A locker
/// that opened a lock file just before its holder removed it and let go gets the lock of a
/// file no longer there, while the next locker makes a new one: it must see this and try
/// again.
fn still_at(file: &std::fs::File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::symlink_metadata(path)) {
            (Ok(open), Ok(named)) => (open.dev(), open.ino()) == (named.dev(), named.ino()),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        false
    }
}

/// Locks `dir` (creating it): another run that locks it, in another process or in this
/// one, gets an error saying the directory is in use. On a file system without locks only
/// this process's runs are kept apart. The lock file is removed when the lock is dropped
/// (on Unix, where a lock was taken; else it stays), and the folders locking made with it
/// where they stayed empty.
pub fn lock_run_dir(dir: &Path) -> Result<RunLock> {
    lock_run_dir_with(dir, |_| {})
}

/// [`lock_run_dir`], running `between_open_and_lock` with the lock file's path after each
/// open, where another run may let go of the file (tests play that run there).
fn lock_run_dir_with(dir: &Path, mut between_open_and_lock: impl FnMut(&Path)) -> Result<RunLock> {
    // The working directory by another name: refused (see `check_output_folder`), not
    // created as "" (a bare "No such file or directory" naming nothing).
    if dir.as_os_str().is_empty() {
        return Err(Error::invalid(
            "run directory",
            "the path is empty: give the run's folder (`.` for the working directory)",
        ));
    }
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
    // Creating it may fail with "No such file or directory" (under /proc), which alone
    // reads as if the folder should have been there.
    let creating = |error: std::io::Error| {
        folder(std::io::Error::new(
            error.kind(),
            format!("the run's folder cannot be created: {error}"),
        ))
    };
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    std::fs::create_dir_all(dir).map_err(creating)?;
    let key = std::fs::canonicalize(dir).map_err(folder)?;
    let mut made: Vec<PathBuf> = missing
        .iter()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .collect();
    let mut held = held();
    let Held {
        locks: map,
        made: all_made,
    } = held.get_or_insert_with(Held::default);
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
    if map.contains_key(&key) {
        return Err(Error::invalid(
            "run lock",
            format!(
                "{} is in use by another run of this program (this process holds {}): wait \
                 for that run to end; code that holds the lock itself passes it to the \
                 trainer (Trainer::holding) instead of locking again",
                dir.display(),
                path.display()
            ),
        ));
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
    // A holder that lets go between this open and the lock removes the file first (and its
    // folder, if it made it and left it empty): the folder is made again, and the lock
    // taken again, of the file at the path. A few tries: each needs another run to have
    // come and gone in between; then (a file system whose file identities do not compare)
    // the lock is kept as taken.
    const TRIES: usize = 8;
    let mut tries = 0;
    let file = loop {
        tries += 1;
        // A lock file this user may only read still takes a lock.
        let file = match open(true) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && path.exists() => {
                open(false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < TRIES => {
                std::fs::create_dir_all(dir).map_err(creating)?;
                made.push(key.clone());
                continue;
            }
            other => other,
        }
        .map_err(io)?;
        between_open_and_lock(&path);
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(in_use()),
            Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                break None;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        if cfg!(unix) && tries < TRIES && !still_at(&file, &path) {
            continue;
        }
        break Some(file);
    };
    map.insert(key.clone(), file);
    all_made.extend(made);
    Ok(RunLock { dir: key })
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
    let mut locks: Vec<RunLock> = Vec::new();
    for dir in dirs {
        if !locks.iter().any(|l| l.covers(dir)) {
            locks.extend(lock_existing_run_dir(dir)?);
        }
    }
    let existed = locks.len();
    check()?;
    for dir in dirs {
        if !locks.iter().any(|l| l.covers(dir)) {
            locks.push(lock_run_dir(dir)?);
        }
    }
    if existed < locks.len() {
        check()?;
    }
    Ok(locks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A held directory is refused to every other locker: another process, another thread,
    /// and the same thread again (a rayon worker may run a second job inside the first's
    /// parallel work); the lock is released when dropped. A pipe where the lock file goes is
    /// refused, not waited on. Unix: the lock file and the folders locking made go with
    /// the lock (elsewhere the file stays).
    #[cfg(unix)]
    #[test]
    fn the_lock_is_exclusive_even_to_its_own_thread() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        // Whether another process could lock it now: no lock file, or one not locked.
        let other = || match std::fs::File::open(dir.join(LOCK_FILE)) {
            Ok(f) => f.try_lock().is_ok(),
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        };
        let first = lock_run_dir(&dir).unwrap();
        assert!(first.covers(&dir) && first.covers(&tmp.path().join("run/../run")));
        assert!(!first.covers(tmp.path()));
        assert!(!other());
        let in_use = |e: Option<Error>| {
            let e = e.expect("a second locker took the lock").to_string();
            assert!(
                e.contains("in use by another run of this program") && e.contains("holding"),
                "{e}"
            );
        };
        in_use(lock_existing_run_dir(&dir).err());
        in_use(lock_run_dir(&dir).err());
        let from_thread = std::thread::scope(|s| s.spawn(|| lock_run_dir(&dir).err()).join());
        in_use(from_thread.unwrap());
        // The same directory twice in one set is locked once.
        let e = lock_run_dirs_around(&[&dir], || Ok(())).err();
        in_use(e);
        // A locker that opened the file before the holder let go.
        let stale = std::fs::File::open(dir.join(LOCK_FILE)).unwrap();
        drop(first);
        assert!(other());
        // The lock file is gone, and the folder the lock made, left empty.
        assert!(!dir.exists());
        // The stale opener gets the lock of a file no longer there, beside the next run's:
        // it sees that its file is not the one at the path (and tries again).
        let next = lock_run_dir(&dir).unwrap();
        assert!(stale.try_lock().is_ok());
        assert!(!still_at(&stale, &dir.join(LOCK_FILE)));
        assert!(!other());
        // A folder the run wrote into stays, without the lock file; so does an empty
        // folder that was there before.
        std::fs::write(dir.join("metrics.jsonl"), "").unwrap();
        drop(next);
        assert!(dir.join("metrics.jsonl").exists() && !dir.join(LOCK_FILE).exists());
        let before = tmp.path().join("before");
        std::fs::create_dir(&before).unwrap();
        drop(lock_run_dir(&before).unwrap());
        assert!(before.is_dir() && !before.join(LOCK_FILE).exists());
        // The parents locking made go too; a run folder inside another run's goes first,
        // whichever lock is dropped first.
        let nested = tmp.path().join("nested");
        drop(lock_run_dir(&nested.join("a/b")).unwrap());
        assert!(!nested.exists());
        let outer = lock_run_dir(&nested).unwrap();
        let inner = lock_run_dir(&nested.join("peft")).unwrap();
        drop(outer);
        assert!(nested.join("peft").is_dir());
        drop(inner);
        assert!(!nested.exists());
        let both = lock_run_dirs_around(&[&dir, &dir], || Ok(())).unwrap();
        assert_eq!(both.len(), 1);
        drop(both);
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

    /// A holder that lets go between this locker's open and its lock removes the file
    /// (first try) and then its folder too (second try): the locker opens again and holds
    /// the file at the path, which no other run can lock then.
    #[cfg(unix)]
    #[test]
    fn a_lock_taken_of_a_removed_file_is_taken_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let mut opens = 0;
        let lock = lock_run_dir_with(&dir, |path| {
            opens += 1;
            match opens {
                1 => std::fs::remove_file(path).unwrap(),
                2 => std::fs::remove_dir_all(path.parent().unwrap()).unwrap(),
                _ => {}
            }
        })
        .unwrap();
        // The second removal took the folder, so the third try found none to open in and
        // made it again before its open.
        assert_eq!(opens, 3);
        let other = std::fs::File::open(dir.join(LOCK_FILE)).unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(other);
        // The folder made again is still one locking made: it goes with the lock.
        drop(lock);
        assert!(!dir.exists());
    }
}

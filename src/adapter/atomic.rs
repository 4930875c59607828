//! Writes that never leave a half-written file: write a temporary sibling, sync, rename.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Replaces `path` with `bytes` atomically (readers see the old file or the new one). A
/// symbolic link is followed, as a shell's `>` does: the file it points to is written (and
/// created, for a dangling link) and the link stays; an existing file keeps its permissions.
/// An existing device or pipe is written in place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    stage_atomic(path, bytes)?.commit()?;
    remove_leftovers_of_dead_writers(path);
    Ok(())
}

/// [`write_atomic`] of what `write` writes into the file (from its start; it may seek back):
/// a file too large to hold in memory whole, made piece by piece. An error from `write`
/// leaves the old file as it was.
pub(crate) fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    stage_atomic_with(path, write)?.commit()?;
    remove_leftovers_of_dead_writers(path);
    Ok(())
}

/// Removes the temporaries of `path` that writers killed before their rename left behind (a
/// `predict` stopped by SIGKILL, say), once a write to it has succeeded: a writer no longer
/// running (Linux's `/proc`) will never rename them. Only those untouched for an hour: a
/// process this one cannot see (another PID namespace sharing the folder, another host on a
/// network file system) may still be writing or renaming its own. Those of an earlier process
/// that had this one's PID go too (their random number is not this process's). Those of running
/// processes, this one included, stay, as does anything that cannot be removed.
fn remove_leftovers_of_dead_writers(path: &Path) {
    const UNTOUCHED_FOR: std::time::Duration = std::time::Duration::from_secs(3600);
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(resolved) = link_target(path) else {
        return;
    };
    let Some(name) = resolved.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let prefix = staged_prefix(name);
    for leftover in staged_copies(parent_of(&resolved), name) {
        let writer = leftover
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(writer_of);
        let stale = std::fs::metadata(&leftover)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > UNTOUCHED_FOR));
        if writer.is_some_and(writer_is_gone) && stale {
            let _ = std::fs::remove_file(&leftover);
        }
    }
}

/// A file written in full beside its destination (`.name.tmp-PID-N`) and synced, waiting for
/// [`StagedWrite::commit`] to rename it into place. Dropped uncommitted, it is removed. Files
/// that belong together (an adapter's weights and the manifest holding their hash) are all
/// staged before any is committed, so that a kill can only fall between renames.
pub(crate) struct StagedWrite {
    /// The temporary file and its destination; none for a device written in place.
    rename: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Writes `bytes` to a temporary sibling of `path` (see [`write_atomic`] for links, devices
/// and permissions), ready to be committed.
pub(crate) fn stage_atomic(path: &Path, bytes: &[u8]) -> Result<StagedWrite> {
    stage_atomic_with(path, |f| {
        let (head, tail) = bytes.split_at(bytes.len() / 2);
        f.write_all(head)
            .and_then(|()| pause_mid_write(f))
            .and_then(|()| f.write_all(tail))
            .map_err(|error| Error::Io {
                path: path.to_path_buf(),
                error,
            })
    })
}

/// [`stage_atomic`] of what `write` writes into the file (see [`write_atomic_with`]).
pub(crate) fn stage_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<StagedWrite> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        error: source,
    };
    // A device or a pipe (/dev/null, /dev/stdout) is written where it is: a rename would
    // replace the device itself with a plain file. Opened by the path as given: the kernel
    // follows /proc's links to a pipe, which have no name to resolve here.
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io)?;
        write(&mut f)?;
        f.flush().map_err(io)?;
        return Ok(StagedWrite { rename: None });
    }
    let resolved = link_target(path).map_err(io)?;
    let path = resolved.as_path();
    let permissions = std::fs::metadata(path).ok().map(|m| m.permissions());
    let dir = parent_of(path);
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let (tmp, mut f) = create_staged_file(dir, name, permissions.as_ref()).map_err(io)?;
    let result = write(&mut f).and_then(|()| f.sync_all().map_err(io));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(StagedWrite {
        rename: Some((tmp, path.to_path_buf())),
    })
}

/// Where a test asks for slow writes (`SPAFIT_SLOW_WRITES_MS`, so that a kill lands inside
/// one), syncs what `f` holds so far and waits: a writer calls it halfway through a file
/// (a staged one: a device written in place does not wait).
pub(crate) fn pause_mid_write(f: &mut std::fs::File) -> std::io::Result<()> {
    let pause = slow_write_pause();
    if !pause.is_zero() && f.metadata()?.is_file() {
        f.sync_all()?;
        std::thread::sleep(pause);
    }
    Ok(())
}

/// A new temporary file for `name` in `dir`, `.name.tmp-PID-NONCE-N`, that no other writer
/// holds: created exclusively, so a writer with the same PID (PID 1 in every container, or a
/// process on another host sharing the folder) moves on to the next name instead of
/// truncating this one's half-written file. One name per write, not per process: two threads
/// saving to one destination each get their own. With `permissions`, those of the file it
/// replaces, set before a byte is written: a private file's new content is never readable by
/// others while it is staged.
fn create_staged_file(
    dir: &Path,
    name: &str,
    permissions: Option<&std::fs::Permissions>,
) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let (tmp, file) = create_unique(dir, &staged_prefix(name), |tmp| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        if let Some(p) = permissions {
            // The umask may narrow this, never widen it; the exact mode is set just below.
            options.mode(p.mode() & 0o7777);
        }
        options.open(tmp)
    })?;
    if let Some(p) = permissions {
        if let Err(e) = file.set_permissions(p.clone()) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    }
    Ok((tmp, file))
}

/// Makes a new entry `PREFIX` + `PID-NONCE-N` in `dir` with `create`, which fails with
/// `AlreadyExists` where the name is taken: then the next N is tried. Nothing another
/// writer holds (the same PID in another container, the same name by chance) is touched.
pub(crate) fn create_unique<T>(
    dir: &Path,
    prefix: &str,
    mut create: impl FnMut(&Path) -> std::io::Result<T>,
) -> std::io::Result<(std::path::PathBuf, T)> {
    // A folder where thousands of names are taken in a row has something else wrong with it.
    const TRIES: usize = 1000;
    let mut last_error = None;
    for _ in 0..TRIES {
        let n = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(unique_name(prefix, n));
        match create(&path) {
            Ok(made) => return Ok((path, made)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free name")))
}

/// Entries [`create_unique`] made in this process: the last part of their names.
static CREATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The `n`th name [`create_unique`] tries for `prefix` in this process.
fn unique_name(prefix: &str, n: u64) -> String {
    format!(
        "{prefix}{}-{:016x}-{n}",
        std::process::id(),
        process_nonce()
    )
}

/// The names [`create_unique`] tries next for `prefix`, the first `count` of them (for tests
/// that take them first).
#[cfg(test)]
pub(crate) fn next_unique_names(prefix: &str, count: u64) -> Vec<String> {
    let next = CREATED.load(std::sync::atomic::Ordering::Relaxed);
    (next..next + count)
        .map(|n| unique_name(prefix, n))
        .collect()
}

/// The writer a name after its prefix records: `PID-NONCE-N` ([`create_unique`]), or
/// `PID-N` and a bare `PID` from builds before the nonce; `None` for anything else.
pub(crate) fn writer_of(rest: &str) -> Option<(u32, Option<u64>)> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = rest.split('-').collect();
    let pid = parts.first().filter(|p| digits(p))?.parse().ok()?;
    match parts.as_slice() {
        [_] => Some((pid, None)),
        [_, n] if digits(n) => Some((pid, None)),
        [_, nonce, n] if nonce.len() == 16 && digits(n) => {
            Some((pid, Some(u64::from_str_radix(nonce, 16).ok()?)))
        }
        _ => None,
    }
}

/// Whether the process `writer_of` read from a name is gone: another PID that `/proc` no
/// longer lists, or this PID with another number or none (an earlier process the PID was
/// given to again: this one always records its number).
pub(crate) fn writer_is_gone((pid, nonce): (u32, Option<u64>)) -> bool {
    match pid == std::process::id() {
        true => nonce != Some(process_nonce()),
        false => !Path::new(&format!("/proc/{pid}")).exists(),
    }
}

/// A random number drawn once per process, in the names of its temporaries and staging
/// folders: a leftover with this process's PID but another number is another process's
/// (an earlier one that PID was reused for, or one in another PID namespace).
fn process_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static NONCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    // The standard library seeds its hash keys from the operating system's randomness.
    *NONCE.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.finish()
    })
}

/// The start of the names `stage_atomic` gives the temporaries of a file called `name`.
fn staged_prefix(name: &str) -> String {
    format!(".{name}.tmp-")
}

/// The temporaries of `name` in `dir` that writers stopped before their rename left behind
/// (by any process: a killed one included).
pub(crate) fn staged_copies(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let prefix = staged_prefix(name);
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

impl StagedWrite {
    /// Renames the staged file into place, durably; a failed rename removes it.
    pub(crate) fn commit(self) -> Result<()> {
        self.rename_into_place(false)
    }

    /// [`StagedWrite::commit`] for the last file of a set whose first ones are already in
    /// place: a failed rename leaves it staged, where a later load finds it and completes the
    /// set (an adapter's manifest, which holds the hash of the weights renamed before it).
    pub(crate) fn commit_or_leave_staged(self) -> Result<()> {
        self.rename_into_place(true)
    }

    fn rename_into_place(mut self, leave_staged_on_failure: bool) -> Result<()> {
        let Some((tmp, path)) = self.rename.take() else {
            return Ok(());
        };
        std::thread::sleep(slow_write_pause());
        let renamed = std::fs::rename(&tmp, &path);
        if renamed.is_err() && !leave_staged_on_failure {
            let _ = std::fs::remove_file(&tmp);
        }
        // The rename itself must survive a power cut, not only a killed process.
        let result = renamed.and_then(|()| sync_path(parent_of(&path)));
        result.map_err(|source| Error::Io {
            path,
            error: source,
        })
    }
}

impl Drop for StagedWrite {
    fn drop(&mut self) {
        if let Some((tmp, _)) = &self.rename {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Flushes a file or a folder (a folder: the names in it, a rename among them) to the disk.
pub(crate) fn sync_path(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

pub(crate) fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Where `path` leads through any chain of symbolic links (the last target may not exist).
pub(crate) fn link_target(path: &Path) -> std::io::Result<std::path::PathBuf> {
    // Linux's own limit on links followed in one lookup.
    const MAX_LINKS: usize = 40;
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        if !current
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            return Ok(current);
        }
        let target = std::fs::read_link(&current)?;
        current = match current.parent() {
            Some(dir) if target.is_relative() => dir.join(target),
            _ => target,
        };
    }
    Err(std::io::Error::other(format!(
        "more than {MAX_LINKS} symbolic links in a chain (a loop?)"
    )))
}

/// Fault injection for crash tests: `SPAFIT_SLOW_WRITES_MS` pauses every atomic write halfway
/// through its temporary file and again before its rename, so a test can kill the process in
/// the middle of a checkpoint, or between the renames of files that belong together.
fn slow_write_pause() -> std::time::Duration {
    let ms = std::env::var("SPAFIT_SLOW_WRITES_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    std::time::Duration::from_millis(ms)
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

/// SHA-256 of the file at `path` as lowercase hex, read a piece at a time (adapter weights
/// can be a model's size).
pub(crate) fn file_sha256(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// `bytes` as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_followed_and_kept_dangling_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("real")).unwrap();
        std::fs::write(d.join("real/old.txt"), "old").unwrap();
        symlink("real/old.txt", d.join("to_old")).unwrap();
        symlink("real/new.txt", d.join("dangling")).unwrap();
        symlink("dangling", d.join("to_dangling")).unwrap();
        write_atomic(&d.join("to_old"), b"A").unwrap();
        write_atomic(&d.join("to_dangling"), b"B").unwrap();
        assert_eq!(std::fs::read(d.join("real/old.txt")).unwrap(), b"A");
        assert_eq!(std::fs::read(d.join("real/new.txt")).unwrap(), b"B");
        for link in ["to_old", "dangling", "to_dangling"] {
            let m = d.join(link).symlink_metadata().unwrap();
            assert!(m.file_type().is_symlink(), "{link} was replaced");
        }
        symlink("loop_b", d.join("loop_a")).unwrap();
        symlink("loop_a", d.join("loop_b")).unwrap();
        let e = write_atomic(&d.join("loop_a"), b"C")
            .unwrap_err()
            .to_string();
        assert!(e.contains("loop_a") && e.contains("symbolic links"), "{e}");
    }

    /// A write that succeeds removes what killed writers of the same file left staged, and
    /// nothing a running writer may still rename.
    #[test]
    fn leftovers_of_dead_writers_go_with_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let ours = std::process::id();
        let leftover = dir.path().join(format!(".p.jsonl.tmp-{dead}-0"));
        let recent = dir.path().join(format!(".p.jsonl.tmp-{dead}-1"));
        let nonce = process_nonce();
        let running = dir
            .path()
            .join(format!(".p.jsonl.tmp-{ours}-{nonce:016x}-999999"));
        let reused = dir
            .path()
            .join(format!(".p.jsonl.tmp-{ours}-{:016x}-3", nonce ^ 1));
        let older_build = dir.path().join(format!(".p.jsonl.tmp-{ours}-5"));
        let other = dir.path().join(format!(".q.jsonl.tmp-{dead}-0"));
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        for f in [&leftover, &recent, &running, &reused, &older_build, &other] {
            std::fs::write(f, "half").unwrap();
            if f != &recent {
                let file = std::fs::File::options().write(true).open(f).unwrap();
                file.set_modified(two_hours_ago).unwrap();
            }
        }
        write_atomic(&path, b"whole").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        assert!(!leftover.exists());
        // This PID with another process's number, or none (an older build's, which the PID
        // had before: PID 1 of every container): one that had the PID before.
        assert!(!reused.exists() && !older_build.exists());
        // Touched in the last hour: perhaps a writer this process cannot see.
        assert!(recent.exists());
        assert!(running.exists() && other.exists());
    }

    /// Threads of one program saving to the same file each stage their own temporary: the
    /// file ends as one whole write, never another's truncated half.
    #[test]
    fn concurrent_writes_to_one_file_never_mix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("adapter.safetensors");
        let size = 1 << 20;
        std::thread::scope(|scope| {
            for t in 0..4u8 {
                let path = &path;
                scope.spawn(move || {
                    for round in 0..5u8 {
                        write_atomic(path, &vec![t * 16 + round; size]).unwrap();
                    }
                });
            }
        });
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), size);
        assert!(bytes.iter().all(|&b| b == bytes[0]));
        assert!(staged_copies(dir.path(), "adapter.safetensors").is_empty());
    }

    #[test]
    fn writers_are_read_from_names_of_every_build() {
        assert_eq!(writer_of("12"), Some((12, None)));
        assert_eq!(writer_of("12-3"), Some((12, None)));
        assert_eq!(writer_of("12-00000000000000ab-3"), Some((12, Some(0xab))));
        for other in [
            "",
            "x",
            "+12",
            "12-",
            "12-ab-3",
            "12-00000000000000ag-3",
            "cafe",
            "1-2-3-4",
        ] {
            assert_eq!(writer_of(other), None, "{other:?}");
        }
    }

    /// A temporary name another writer holds (one with the same PID and count: PID 1 of
    /// another container writing to a shared folder) is skipped, never truncated; the
    /// temporary takes the destination's permissions before its content is written.
    #[test]
    fn a_temporary_name_in_use_is_skipped_and_the_mode_is_set_first() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.jsonl");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let taken: Vec<_> = next_unique_names(".private.jsonl.tmp-", 16)
            .into_iter()
            .map(|name| {
                let taken = dir.path().join(name);
                std::fs::write(&taken, "another writer's").unwrap();
                taken
            })
            .collect();
        let staged = stage_atomic(&path, b"new").unwrap();
        let (tmp, _) = staged.rename.as_ref().unwrap();
        assert!(!taken.contains(tmp), "{}", tmp.display());
        let mode = std::fs::metadata(tmp).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        staged.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        for t in &taken {
            assert_eq!(std::fs::read(t).unwrap(), b"another writer's");
        }
    }

    /// A failed rename removes the temporary, except for the last file of a set whose first
    /// ones are in place (the manifest beside renamed weights): a load completes the set from
    /// what stays staged.
    #[test]
    fn a_failed_rename_leaves_the_last_file_of_a_set_staged() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A rename over a directory that holds something fails.
        for name in ["plain", "last"] {
            std::fs::create_dir_all(d.join(name).join("inside")).unwrap();
        }
        assert!(stage_atomic(&d.join("plain"), b"x")
            .unwrap()
            .commit()
            .is_err());
        assert!(staged_copies(d, "plain").is_empty());
        let e = stage_atomic(&d.join("last"), b"y")
            .unwrap()
            .commit_or_leave_staged()
            .unwrap_err()
            .to_string();
        assert!(e.contains("last"), "{e}");
        let staged = staged_copies(d, "last");
        assert_eq!(staged.len(), 1);
        assert_eq!(std::fs::read(&staged[0]).unwrap(), b"y");
    }
}

//! Writes that never leave a half-written file: write a temporary sibling, sync, rename.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Replaces `path` with `bytes` atomically (readers see the old file or the new one). A
/// symbolic link to an existing file is followed, so that file is replaced and the link
/// stays (a dangling link is replaced by the file), and an existing file keeps its
/// permissions.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let is_link = path
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink());
    let resolved = match is_link {
        true => std::fs::canonicalize(path).ok(),
        false => None,
    };
    let path = resolved.as_deref().unwrap_or(path);
    let permissions = std::fs::metadata(path).ok().map(|m| m.permissions());
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        let pause = slow_write_pause();
        if pause.is_zero() {
            f.write_all(bytes)?;
        } else {
            let (head, tail) = bytes.split_at(bytes.len() / 2);
            f.write_all(head)?;
            f.sync_all()?;
            std::thread::sleep(pause);
            f.write_all(tail)?;
        }
        f.sync_all()?;
        if let Some(p) = permissions {
            std::fs::set_permissions(&tmp, p)?;
        }
        std::fs::rename(&tmp, path)?;
        // The rename itself must survive a power cut, not only a killed process.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Fault injection for crash tests: `SPAFIT_SLOW_WRITES_MS` pauses every atomic write halfway
/// through its temporary file, so a test can kill the process in the middle of a checkpoint.
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
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

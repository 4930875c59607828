//! Where a checkpoint lives: a plain directory, or a Hugging Face hub cache (offline).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Resolves `spec` to a directory holding `config.json`:
/// - a directory with `config.json` is used as is;
/// - a hub cache repository folder (`…/models--org--name`) resolves to the snapshot named by
///   `refs/main`, or to its only snapshot;
/// - a hub id (`org/name`) is looked up in `$HF_HUB_CACHE`, `$HF_HOME/hub` or
///   `~/.cache/huggingface/hub`. Nothing is downloaded.
pub fn resolve(spec: &Path) -> Result<PathBuf> {
    resolve_with_caches(spec, &hub_caches())
}

/// [`resolve`] with explicit hub cache roots instead of the environment's.
pub fn resolve_with_caches(spec: &Path, hub_caches: &[PathBuf]) -> Result<PathBuf> {
    if spec.join("config.json").is_file() {
        return Ok(spec.to_path_buf());
    }
    if spec.join("snapshots").is_dir() {
        return snapshot(spec);
    }
    if !spec.exists() {
        if let Some(id) = spec.to_str().filter(|s| s.matches('/').count() == 1) {
            let folder = format!("models--{}", id.replace('/', "--"));
            for hub in hub_caches {
                let repo = hub.join(&folder);
                if repo.join("snapshots").is_dir() {
                    return snapshot(&repo);
                }
            }
        }
        return Err(Error::Io {
            path: spec.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such checkpoint directory, and no offline Hugging Face cache entry for it",
            ),
        });
    }
    Err(Error::Format {
        path: spec.to_path_buf(),
        detail: "not a checkpoint: no config.json (and not a Hugging Face cache folder)".into(),
    })
}

fn hub_caches() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        v.push(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        v.push(PathBuf::from(p).join("hub"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        v.push(PathBuf::from(home).join(".cache/huggingface/hub"));
    }
    v
}

fn snapshot(repo: &Path) -> Result<PathBuf> {
    let snapshots = repo.join("snapshots");
    if let Ok(main) = std::fs::read_to_string(repo.join("refs/main")) {
        let dir = snapshots.join(main.trim());
        if dir.join("config.json").is_file() {
            return Ok(dir);
        }
    }
    let entries = std::fs::read_dir(&snapshots).map_err(|source| Error::Io {
        path: snapshots.clone(),
        source,
    })?;
    let found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").is_file())
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::Format {
            path: snapshots,
            detail: "no snapshot with a config.json".into(),
        }),
        _ => Err(Error::Format {
            path: snapshots,
            detail: "several snapshots and no refs/main to choose one".into(),
        }),
    }
}

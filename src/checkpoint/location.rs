//! Where a checkpoint lives: a plain directory, or a Hugging Face hub cache (offline).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Resolves `spec` to a directory holding `config.json`:
/// - a directory with `config.json` is used as is; a sentence-transformers folder without
///   one, whose `modules.json` names its Transformer module's folder (`0_Transformer`, the
///   older layout), resolves to that folder;
/// - a hub cache repository folder (`…/models--org--name`) resolves to the snapshot named by
///   `refs/main`, or to its only snapshot;
/// - a hub id (`org/name`, or a bare `name` such as `bert-base-uncased`) is looked up in
///   the cache folders [`hub_cache_roots`] lists. Nothing is downloaded.
pub fn resolve(spec: &Path) -> Result<PathBuf> {
    resolve_with_caches(spec, &hub_caches())
}

/// [`resolve`] with explicit hub cache roots instead of the environment's.
pub fn resolve_with_caches(spec: &Path, hub_caches: &[PathBuf]) -> Result<PathBuf> {
    // Joined with "config.json", an empty path would silently mean the working directory.
    if spec.as_os_str().is_empty() {
        return Err(Error::invalid(
            "checkpoint",
            "the path is empty: give the checkpoint's folder (config.json, model.safetensors, \
             tokenizer.json) or a hub id",
        ));
    }
    if let Some(dir) = checkpoint_in(spec) {
        return Ok(dir);
    }
    if spec.join("snapshots").is_dir() {
        return snapshot(spec);
    }
    if !spec.exists() {
        // Hub ids are `org/name`, or a bare `name` for the oldest models (bert-base-uncased).
        let hub_id = |s: &&str| {
            s.matches('/').count() <= 1
                && !s.starts_with(['/', '.'])
                && !s.ends_with('/')
                && !s.is_empty()
        };
        if let Some(id) = spec.to_str().filter(hub_id) {
            let folder = format!("models--{}", id.replace('/', "--"));
            for hub in hub_caches {
                let repo = hub.join(&folder);
                if repo.join("snapshots").is_dir() {
                    return snapshot(&repo);
                }
            }
        }
        let looked_in = match spec.to_str().filter(hub_id) {
            Some(id) => format!(
                "no offline Hugging Face cache entry for it (looked for models--{} in {}; \
                 nothing is downloaded)",
                id.replace('/', "--"),
                match hub_caches.is_empty() {
                    true => "no cache folder: HOME and HF_HUB_CACHE are unset".to_string(),
                    false => hub_caches
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            ),
            None => "and not a Hugging Face hub id (`org/name`)".to_string(),
        };
        return Err(Error::Io {
            path: spec.to_path_buf(),
            error: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no such checkpoint directory, {looked_in}"),
            ),
        });
    }
    use std::os::unix::fs::FileTypeExt;
    let config_is_pipe =
        std::fs::metadata(spec.join("config.json")).is_ok_and(|m| m.file_type().is_fifo());
    let detail = match spec.is_file() {
        false if config_is_pipe => {
            "config.json here is a named pipe: the model's configuration is read from a \
             regular file"
        }
        false if spec.join("config.json").exists() => {
            "config.json here is not a file (a folder?): the model's configuration goes in a \
             file of that name"
        }
        true => {
            "a file, not a checkpoint folder: give the folder that holds config.json, \
                 model.safetensors and tokenizer.json"
        }
        false => "not a checkpoint: no config.json (and not a Hugging Face cache folder)",
    };
    Err(Error::Format {
        path: spec.to_path_buf(),
        detail: detail.into(),
    })
}

fn hub_caches() -> Vec<PathBuf> {
    hub_cache_roots(&|name| std::env::var_os(name))
}

/// The Hugging Face hub cache folder, given the environment `var` reads, as huggingface_hub
/// chooses it: the first set (and not empty) of `HF_HUB_CACHE`, its legacy
/// `HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub`, else
/// `~/.cache/huggingface/hub`; a leading `~/` is the home folder. One folder (or none
/// without a home), in a list for [`resolve_with_caches`].
pub fn hub_cache_roots(var: &dyn Fn(&str) -> Option<OsString>) -> Vec<PathBuf> {
    let home = var("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    let path = |name: &str| {
        let value = var(name).filter(|v| !v.is_empty())?;
        let text = value.to_string_lossy();
        match (text.strip_prefix("~/"), &home) {
            (Some(rest), Some(home)) => Some(home.join(rest)),
            _ => Some(PathBuf::from(value)),
        }
    };
    path("HF_HUB_CACHE")
        .or_else(|| path("HUGGINGFACE_HUB_CACHE"))
        .or_else(|| path("HF_HOME").map(|p| p.join("hub")))
        .or_else(|| path("XDG_CACHE_HOME").map(|p| p.join("huggingface/hub")))
        .or_else(|| home.map(|h| h.join(".cache/huggingface/hub")))
        .into_iter()
        .collect()
}

fn snapshot(repo: &Path) -> Result<PathBuf> {
    let snapshots = repo.join("snapshots");
    let main = std::fs::read_to_string(repo.join("refs/main")).ok();
    // An empty ref (an interrupted write) names no revision: as if there were none.
    if let Some(main) = main.filter(|m| !m.trim().is_empty()) {
        // A revision is one folder name: `../` would reach another repository's snapshot.
        let one_name = Path::new(main.trim()).components().count() == 1
            && matches!(
                Path::new(main.trim()).components().next(),
                Some(std::path::Component::Normal(_))
            );
        if !one_name {
            return Err(Error::Format {
                path: repo.join("refs/main"),
                detail: format!("`{}` is not a snapshot name", main.trim()),
            });
        }
        let dir = snapshots.join(main.trim());
        if let Some(dir) = checkpoint_in(&dir) {
            return Ok(dir);
        }
        // Another snapshot would be another revision than the one the cache calls current.
        return Err(Error::Format {
            path: dir.clone(),
            detail: format!(
                "refs/main names snapshot `{}`, which {}",
                main.trim(),
                missing_config(&dir)
            ),
        });
    }
    let entries = std::fs::read_dir(&snapshots).map_err(|source| Error::Io {
        path: snapshots.clone(),
        error: source,
    })?;
    let found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| checkpoint_in(&p))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => {
            let broken = std::fs::read_dir(&snapshots)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.join("config.json").symlink_metadata().is_ok());
            Err(Error::Format {
                path: snapshots,
                detail: match broken {
                    Some(dir) => format!(
                        "no snapshot with a readable config.json: {} {}",
                        dir.display(),
                        missing_config(&dir)
                    ),
                    None => "no snapshot with a config.json".into(),
                },
            })
        }
        _ => Err(Error::Format {
            path: snapshots,
            detail: "several snapshots and no refs/main to choose one".into(),
        }),
    }
}

/// The checkpoint folder `dir` holds: `dir` itself where it has a config.json, else the
/// folder its sentence-transformers `modules.json` names for the Transformer module (the
/// older layout keeps the model in `0_Transformer/`; the newer at the top, with
/// `"path": ""`), where that has one.
fn checkpoint_in(dir: &Path) -> Option<PathBuf> {
    if dir.join("config.json").is_file() {
        return Some(dir.to_path_buf());
    }
    // A small file of a few entries; anything unreadable is no sentence-transformers folder.
    let text = std::fs::read_to_string(dir.join("modules.json")).ok()?;
    let modules: serde_json::Value = serde_json::from_str(&text).ok()?;
    let module = modules.as_array()?.iter().find(|m| {
        m.get("type")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|t| t.ends_with(".Transformer"))
    })?;
    let folder = module.get("path")?.as_str()?;
    // One plain folder name: `..` or an absolute path would leave the model's folder.
    let mut parts = Path::new(folder).components();
    match (parts.next(), parts.next()) {
        (Some(std::path::Component::Normal(_)), None) => {}
        _ => return None,
    }
    let inner = dir.join(folder);
    inner.join("config.json").is_file().then_some(inner)
}

/// Why snapshot `dir` has no usable config.json, in words.
fn missing_config(dir: &Path) -> String {
    if !dir.is_dir() {
        "does not exist".into()
    } else if dir.join("config.json").symlink_metadata().is_ok() {
        "has a config.json link to a missing blob (an interrupted download?)".into()
    } else {
        "has no config.json".into()
    }
}

//! Notes for inputs on named pipes: opening one blocks until a program writes to it, which
//! would otherwise look like a hang.

use std::path::{Path, PathBuf};

use spafit::adapter::{
    is_peft_adapter, is_spafit_adapter, open_adapter, OpenedAdapter, MANIFEST_FILE,
    PEFT_WEIGHTS_FILE, WEIGHTS_FILE,
};
use spafit::backend::Backend;
use spafit::checkpoint::Checkpoint;
use spafit::Result;

/// Says once per path that a named pipe is read when a program writes to it, also where
/// `path` links to one (a Hugging Face cache's snapshot links to its blobs). Pipes a shell
/// made (`/dev/stdin`, `<(…)`) lead to no path, have their writer already and go unnoted.
pub(super) fn note_named_pipe(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    static NOTED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let named_pipe = std::fs::canonicalize(path)
        .and_then(std::fs::symlink_metadata)
        .is_ok_and(|m| m.file_type().is_fifo());
    let mut noted = NOTED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if named_pipe && !noted.iter().any(|p| p == path) {
        noted.push(path.to_path_buf());
        note!(
            "note: {} is a named pipe: it is read when a program writes to it (waiting until \
             then), and what it gives serves the whole run",
            path.display()
        );
    }
}

/// [`Checkpoint::open`], after noting the checkpoint's weights files (`model.safetensors`,
/// the index and its shards) that are named pipes: those are read whole from a pipe. Its
/// configuration and tokenizer are read from regular files only, and refused at once.
pub(super) fn open_checkpoint(spec: &Path) -> Result<Checkpoint> {
    // A spec that does not resolve is Checkpoint::open's error to report.
    if let Ok(dir) = spafit::checkpoint::resolve(spec) {
        let weights = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                name.ends_with(".safetensors") || name == "model.safetensors.index.json"
            });
        for path in weights {
            note_named_pipe(&path);
        }
    }
    Checkpoint::open(spec)
}

/// [`open_adapter`], after noting the adapter's files that it reads from named pipes: a
/// spafit adapter's manifest and weights (recognized by a regular file of the two), a PEFT
/// adapter's weights (beside its regular `adapter_config.json`).
pub(super) fn open_adapter_noting_pipes<B: Backend>(
    dir: &Path,
    checkpoint: &Checkpoint,
    backend: &B,
) -> Result<OpenedAdapter<B>> {
    if is_spafit_adapter(dir) {
        note_named_pipe(&dir.join(MANIFEST_FILE));
        note_named_pipe(&dir.join(WEIGHTS_FILE));
    } else if is_peft_adapter(dir) {
        note_named_pipe(&dir.join(PEFT_WEIGHTS_FILE));
    }
    open_adapter(dir, checkpoint, backend)
}

//! Notes for inputs on named pipes: opening one blocks until a program writes to it, which
//! would otherwise look like a hang.

use std::path::{Path, PathBuf};

use spafit::adapter::{
    open_adapter, OpenedAdapter, MANIFEST_FILE, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, WEIGHTS_FILE,
};
use spafit::backend::Backend;
use spafit::checkpoint::Checkpoint;
use spafit::Result;

/// The files of a checkpoint folder that opening it (and its tokenizer) reads when present.
const CHECKPOINT_FILES: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
];

/// The files of an adapter folder (spafit's or PEFT's) that opening it reads when present.
const ADAPTER_FILES: [&str; 4] = [
    MANIFEST_FILE,
    WEIGHTS_FILE,
    PEFT_CONFIG_FILE,
    PEFT_WEIGHTS_FILE,
];

/// Says once per path that a named pipe is read when a program writes to it. Pipes a shell
/// made (`/dev/stdin`, `<(…)`) have their writer already and go unnoted.
pub(super) fn note_named_pipe(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    static NOTED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let named_pipe = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo());
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

/// [`Checkpoint::open`], after noting the checkpoint's files that are named pipes.
pub(super) fn open_checkpoint(spec: &Path) -> Result<Checkpoint> {
    // A spec that does not resolve is Checkpoint::open's error to report.
    if let Ok(dir) = spafit::checkpoint::resolve(spec) {
        for name in CHECKPOINT_FILES {
            note_named_pipe(&dir.join(name));
        }
    }
    Checkpoint::open(spec)
}

/// [`open_adapter`], after noting the adapter's files that are named pipes.
pub(super) fn open_adapter_noting_pipes<B: Backend>(
    dir: &Path,
    checkpoint: &Checkpoint,
    backend: &B,
) -> Result<OpenedAdapter<B>> {
    for name in ADAPTER_FILES {
        note_named_pipe(&dir.join(name));
    }
    open_adapter(dir, checkpoint, backend)
}

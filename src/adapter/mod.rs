//! Trained adapters on disk: spafit's own format (only the trainable tensors, plus a manifest
//! tied to the hash of the base's encoder tensors), export to and import from PEFT's format,
//! and merged into a fine-tuned checkpoint of their own. Every write is atomic.

mod atomic;
mod manifest;
mod merged_checkpoint;
mod open;
mod peft_config;
mod peft_export;
mod peft_import;
mod python_regex;
mod store;
mod streamed_safetensors;

use crate::error::{Error, Result};
pub(crate) use atomic::{hex, link_target, parent_of, sync_path};
pub(crate) use streamed_safetensors::{write_streamed, StreamedTensor};

/// The first file in `dir` that makes it a model's or an adapter's folder (a checkpoint's
/// config and weights, a PEFT adapter, a spafit adapter), if any: no run or adapter writes
/// its own files among them.
pub fn model_or_adapter_file_in(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    first_present(
        dir,
        &[
            "config.json",
            "model.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            PEFT_CONFIG_FILE,
            PEFT_WEIGHTS_FILE,
            store::MANIFEST_FILE,
            store::WEIGHTS_FILE,
        ],
    )
}

/// The first of `names` present in `dir` (a dangling link counts: a write would follow it).
fn first_present(dir: &std::path::Path, names: &[&str]) -> Option<std::path::PathBuf> {
    names
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.symlink_metadata().is_ok())
}
pub use atomic::{sha256_hex, write_atomic};
pub use manifest::AdapterManifest;
pub use merged_checkpoint::{
    merged_max_len, save_merged, MergedCheckpoint, MergedDType, MERGE_NOTE_FILE,
};
pub use open::{is_spafit_adapter, open_adapter, AdapterFormat, AdapterHead, OpenedAdapter};
pub use peft_export::{
    export_peft, exported_by_run, spafit_file_in, ExportedClassOrder, PeftExportRecord,
};
pub use peft_import::{
    import_peft, is_peft_adapter, PeftImport, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE,
    SPAFIT_EXPORT_FILE,
};
pub(crate) use store::complete_interrupted_save;
pub use store::{
    load_adapter, read_manifest, read_tensors, save_adapter, tensors_to_safetensors,
    TrainingInputs, MANIFEST_FILE, WEIGHTS_FILE,
};

/// The adapter folder `dir` to read, refused as [`not_a_folder`] says when it is none.
fn require_adapter_folder(dir: &std::path::Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    Err(Error::Io {
        path: dir.to_path_buf(),
        error: std::io::Error::new(std::io::ErrorKind::NotFound, not_a_folder(dir)),
    })
}

/// Refuses an output folder `dir` that is a file or lies under one, naming it: making the
/// folder would fail with the system's bare "File exists" or "Not a directory". `goes_into`
/// says where what is written goes ("an adapter goes into a folder").
fn check_output_folder(dir: &std::path::Path, op: &'static str, goes_into: &str) -> Result<()> {
    // Joined with a file name, an empty path would silently mean the working directory.
    if dir.as_os_str().is_empty() {
        return Err(Error::invalid(
            op,
            format!("the path is empty: {goes_into} (`.` for the working directory)"),
        ));
    }
    let file = dir
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .find(|a| std::fs::metadata(a).is_ok_and(|m| !m.is_dir()));
    match file {
        None => Ok(()),
        Some(file) if file == dir => Err(Error::invalid(
            op,
            format!("{} is a file: {goes_into}", dir.display()),
        )),
        Some(file) => Err(Error::invalid(
            op,
            format!(
                "{} lies under {}, which is a file: {goes_into}",
                dir.display(),
                file.display()
            ),
        )),
    }
}

/// Why an adapter path that is not a folder cannot be read: a file in one (`best/adapter.json`)
/// names the folder to give instead.
fn not_a_folder(path: &std::path::Path) -> &'static str {
    match path.is_file() {
        true => "a file, not an adapter folder: give the folder that holds it (e.g. OUTPUT/best)",
        false => "no such adapter directory",
    }
}

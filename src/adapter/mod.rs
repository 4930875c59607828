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
mod store;

pub(crate) use atomic::{hex, link_target};

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
pub use open::{open_adapter, AdapterFormat, AdapterHead, OpenedAdapter};
pub use peft_export::{
    export_peft, exported_by_run, spafit_file_in, ExportedClassOrder, PeftExportRecord,
};
pub use peft_import::{
    import_peft, is_peft_adapter, PeftImport, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE,
    SPAFIT_EXPORT_FILE,
};
pub(crate) use store::{complete_interrupted_save, tensors_to_safetensors_with_metadata};
pub use store::{
    load_adapter, read_manifest, read_tensors, save_adapter, tensors_to_safetensors,
    TrainingInputs, MANIFEST_FILE, WEIGHTS_FILE,
};

/// Why an adapter path that is not a folder cannot be read: a file in one (`best/adapter.json`)
/// names the folder to give instead.
fn not_a_folder(path: &std::path::Path) -> &'static str {
    match path.is_file() {
        true => "a file, not an adapter folder: give the folder that holds it (e.g. OUTPUT/best)",
        false => "no such adapter directory",
    }
}

//! Trained adapters on disk: spafit's own format (only the trainable tensors, plus a manifest
//! tied to the base checkpoint's hash), export to PEFT's format, and merging LoRA into the
//! base weights. Every write is atomic.

mod atomic;
mod manifest;
mod peft_export;
mod store;

pub use atomic::{sha256_hex, write_atomic};
pub use manifest::AdapterManifest;
pub use peft_export::export_peft;
pub(crate) use store::tensors_to_safetensors_with_metadata;
pub use store::{
    load_adapter, read_manifest, read_tensors, save_adapter, tensors_to_safetensors, MANIFEST_FILE,
    WEIGHTS_FILE,
};

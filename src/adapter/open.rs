//! One entry point for an adapter directory, whichever tool wrote it: spafit (`adapter.json`
//! and `adapter.safetensors`) or Python PEFT (`adapter_config.json` and
//! `adapter_model.safetensors`).

use std::path::Path;

use super::peft_import::{import_peft, is_peft_adapter, PEFT_CONFIG_FILE};
use super::store::{load_adapter, MANIFEST_FILE};
use crate::backend::Backend;
use crate::checkpoint::Checkpoint;
use crate::data::TaskKind;
use crate::error::{Error, Result};
use crate::model::BertClassifier;
use crate::peft::PeftPlan;

/// Who wrote an adapter directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterFormat {
    /// `spafit train`.
    Spafit,
    /// Python PEFT's `save_pretrained`.
    Peft,
}

/// An adapter loaded onto its base model.
pub struct OpenedAdapter<B: Backend> {
    /// The base model with the adapter's tensors.
    pub model: BertClassifier<B>,
    /// The plan the model is under.
    pub plan: PeftPlan,
    /// Class names, when the adapter records them (spafit's do; PEFT's do not).
    pub labels: Option<Vec<String>>,
    /// Who wrote it.
    pub format: AdapterFormat,
    /// What the import could not carry over exactly (see [`super::PeftImport::notes`]).
    pub notes: Vec<String>,
}

impl<B: Backend> OpenedAdapter<B> {
    /// Refuses data whose label space is not the adapter's head: other class names (when the
    /// adapter records them), another class count, or regression against classification.
    pub fn check_labels(&self, kind: &TaskKind, data_name: &str, dir: &Path) -> Result<()> {
        let outputs = self.model.num_labels;
        let fits = match (kind, &self.labels) {
            (TaskKind::Classification { labels }, Some(trained)) => labels == trained,
            (TaskKind::Classification { labels }, None) => labels.len() == outputs && outputs > 1,
            (TaskKind::Regression, _) => outputs == 1,
        };
        if fits {
            return Ok(());
        }
        Err(Error::Mismatch {
            path: dir.to_path_buf(),
            detail: format!(
                "the adapter was trained for labels {} ({outputs} outputs) but {data_name} has {}",
                self.labels
                    .as_ref()
                    .map_or("without names".to_string(), |l| format!("{l:?}")),
                match kind {
                    TaskKind::Classification { labels } => format!("labels {labels:?}"),
                    TaskKind::Regression => "a regression target".to_string(),
                }
            ),
        })
    }
}

/// Loads the adapter in `dir` onto `checkpoint`, recognizing its format by its files.
pub fn open_adapter<B: Backend>(
    dir: &Path,
    checkpoint: &Checkpoint,
    backend: &B,
) -> Result<OpenedAdapter<B>> {
    if !dir.is_dir() {
        return Err(Error::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such adapter directory"),
        });
    }
    if dir.join(MANIFEST_FILE).is_file() {
        let (model, manifest) = load_adapter(dir, checkpoint, backend)?;
        let plan = manifest.plan(&dir.join(MANIFEST_FILE))?;
        return Ok(OpenedAdapter {
            model,
            plan,
            labels: manifest.labels,
            format: AdapterFormat::Spafit,
            notes: Vec::new(),
        });
    }
    if is_peft_adapter(dir) {
        let (model, import) = import_peft(dir, checkpoint, backend)?;
        return Ok(OpenedAdapter {
            model,
            plan: import.plan,
            labels: None,
            format: AdapterFormat::Peft,
            notes: import.notes,
        });
    }
    Err(Error::Format {
        path: dir.to_path_buf(),
        detail: format!(
            "neither {MANIFEST_FILE} (a spafit adapter) nor {PEFT_CONFIG_FILE} (a PEFT adapter) is here"
        ),
    })
}

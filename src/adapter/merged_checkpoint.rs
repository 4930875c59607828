//! A fine-tuned checkpoint of its own, made from a base model and an adapter: LoRA folded
//! into the weights it adapts, every tensor under `BertForSequenceClassification`'s names
//! (`RobertaForSequenceClassification`'s for a RoBERTa base, `ElectraForSequenceClassification`'s
//! for an ELECTRA one),
//! the base's `config.json` naming the head's classes, and the base's tokenizer files. The
//! folder needs no adapter and no spafit: transformers' `AutoModelForSequenceClassification`
//! reads it, and so do `spafit eval` and `predict` as a fine-tuned checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde_json::{json, Map, Value};

use super::streamed_safetensors::{write_streamed_synced, StreamedTensor};
use crate::backend::Backend;
use crate::checkpoint::Checkpoint;
use crate::data::TaskKind;
use crate::error::{Error, Result};
use crate::model::BertClassifier;

/// spafit's note in a merged checkpoint: what transformers' files have no place for, the
/// length the adapter's training texts were cut to, which `spafit eval` and `predict` then
/// cut inputs to as they would with the adapter.
pub const MERGE_NOTE_FILE: &str = "spafit_merge.json";

/// The tokenizer files of a base checkpoint that a merged one takes along, those it has.
const TOKENIZER_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];

/// How a merged checkpoint stores its tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergedDType {
    /// What transformers saves by default.
    F32,
    /// The merge's own precision, for checks that compare it to the adapter exactly.
    F64,
    /// Half the size; values beyond f16's ±65504 are refused, naming the tensor.
    F16,
    /// Half the size, f32's range.
    BF16,
}

impl MergedDType {
    /// The name transformers' `config.json` gives the dtype (`dtype`, formerly `torch_dtype`).
    fn torch_name(self) -> &'static str {
        match self {
            MergedDType::F32 => "float32",
            MergedDType::F64 => "float64",
            MergedDType::F16 => "float16",
            MergedDType::BF16 => "bfloat16",
        }
    }

    /// The largest magnitude the dtype holds.
    fn largest(self) -> f64 {
        match self {
            MergedDType::F64 => f64::MAX,
            MergedDType::F32 => f64::from(f32::MAX),
            MergedDType::F16 => f64::from(half::f16::MAX),
            MergedDType::BF16 => f64::from(half::bf16::MAX),
        }
    }

    /// The dtype the file stores.
    fn stored(self) -> Dtype {
        match self {
            MergedDType::F64 => Dtype::F64,
            MergedDType::F32 => Dtype::F32,
            MergedDType::BF16 => Dtype::BF16,
            MergedDType::F16 => Dtype::F16,
        }
    }

    /// `values` in this dtype's little-endian bytes, or the first value it cannot hold (NaN,
    /// infinite, or beyond its range).
    fn encode(self, values: &[f64]) -> std::result::Result<Vec<u8>, f64> {
        if let Some(&v) = values
            .iter()
            .find(|v| !v.is_finite() || v.abs() > self.largest())
        {
            return Err(v);
        }
        Ok(match self {
            MergedDType::F64 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            MergedDType::F32 => values
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
            MergedDType::BF16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f64(v).to_le_bytes())
                .collect(),
            MergedDType::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f64(v).to_le_bytes())
                .collect(),
        })
    }
}

/// For a checkpoint [`save_merged`] wrote in `dir`, the tokens per example the merged
/// adapter's texts were cut to, where the adapter recorded it (`Some(None)`: a PEFT adapter
/// records none); `None` for a checkpoint that is no merge.
pub fn merged_max_len(dir: &Path) -> Result<Option<Option<usize>>> {
    let path = dir.join(MERGE_NOTE_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let note: Value =
        serde_json::from_str(&crate::text_file::read_utf8(&path)?).map_err(|e| Error::Format {
            path: path.clone(),
            detail: format!("invalid JSON: {e}"),
        })?;
    match &note["max_len"] {
        Value::Null => Ok(Some(None)),
        value => match value.as_u64().filter(|&n| n > 0) {
            Some(n) => Ok(Some(Some(n as usize))),
            None => Err(Error::Format {
                path,
                detail: format!("`max_len` is {value}, not a token count above 0"),
            }),
        },
    }
}

/// What [`save_merged`] wrote.
#[derive(Clone, Debug)]
pub struct MergedCheckpoint {
    /// The folder.
    pub dir: PathBuf,
    /// Tensors in its `model.safetensors`.
    pub tensors: usize,
    /// The base's tokenizer files it holds.
    pub tokenizer_files: Vec<String>,
}

/// Writes `model` (a base with an adapter, as [`super::open_adapter`] gives it) as a
/// fine-tuned checkpoint in `dir` (through a link, where it points), which must not exist or
/// be empty: `model.safetensors` with every tensor (LoRA folded into its weight, summed in
/// f64 and rounded to `backend`'s precision: on an f64 backend, as `spafit merge` uses, the
/// one rounding is `dtype`'s),
/// `checkpoint`'s `config.json` with `architectures`, `id2label`, `label2id` and
/// `problem_type` for `kind` (the head's classes, or regression), and the base's tokenizer
/// files, and `spafit_merge.json` with `max_len`, the length the adapter's training texts
/// were cut to, where known ([`merged_max_len`] reads it back). The folder is written beside
/// `dir` under a temporary name and renamed into place, so a failed or killed merge leaves
/// no checkpoint that looks whole; what killed merges left is removed by the next merge.
pub fn save_merged<B: Backend>(
    dir: &Path,
    backend: &B,
    mut model: BertClassifier<B>,
    kind: &TaskKind,
    checkpoint: &Checkpoint,
    dtype: MergedDType,
    max_len: Option<usize>,
) -> Result<MergedCheckpoint> {
    let invalid = |detail: String| Error::invalid("merge", detail);
    // The merge is written with `checkpoint`'s config and tokenizer: a model of another
    // encoder would be a checkpoint that loads as neither.
    if let Some(difference) = model.config().encoder_difference(&checkpoint.config) {
        return Err(invalid(format!(
            "the model is not an encoder of {} ({difference}): merge it with the checkpoint it \
             was built from",
            checkpoint.dir().display()
        )));
    }
    if let Some(problem) = super::store::max_len_problem(model.config(), max_len) {
        return Err(invalid(problem));
    }
    let outputs = kind.num_labels();
    if outputs != model.num_labels() {
        return Err(invalid(format!(
            "the head has {} outputs but {outputs} classes were named",
            model.num_labels()
        )));
    }
    let dir = &super::atomic::link_target(dir).map_err(|error| Error::Io {
        path: dir.to_path_buf(),
        error,
    })?;
    let name = folder_name(dir)?;
    check_new_folder(dir)?;
    model.merge_lora(backend)?;
    let family = model.config().family();
    let params = model.params();
    // Each tensor is stored as it is written: a merge is a whole model, and its bytes held
    // whole beside it were half again its size on the f64 backend `spafit merge` uses.
    let tensors: Vec<StreamedTensor> = params
        .iter()
        .map(|p| StreamedTensor {
            name: family.hf_name(&p.name),
            dtype: dtype.stored(),
            dims: p.value.dims().to_vec(),
            bytes: Box::new(move || {
                let values = backend.to_f64(&p.value)?;
                dtype.encode(&values).map_err(|value| {
                    invalid(format!(
                        "tensor `{}` holds {value:e}, which {} cannot store (largest {:e}){}",
                        p.name,
                        dtype.torch_name(),
                        dtype.largest(),
                        match dtype {
                            MergedDType::F16 => ": store the merge as bf16 or f32",
                            _ => "",
                        }
                    ))
                })
            }),
        })
        .collect();
    // transformers refuses a safetensors file whose header names no framework.
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let config = merged_config(checkpoint, kind, dtype)?;

    let (staging, _lock) = staging_folder(dir, &name)?;
    // An empty folder at `dir` gives way to the merge, which takes its permissions: one a user
    // made private stays private, while the merge is written too (with the owner's access
    // kept until it is in place, so a failed merge can still be cleaned up).
    let kept_mode = std::fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| m.permissions());
    let written = (|| -> Result<Vec<String>> {
        if let Some(mode) = &kept_mode {
            use std::os::unix::fs::PermissionsExt;
            let writable = std::fs::Permissions::from_mode(mode.mode() | 0o700);
            std::fs::set_permissions(&staging, writable).map_err(|error| Error::Io {
                path: staging.clone(),
                error,
            })?;
        }
        write_streamed_synced(&staging.join("model.safetensors"), tensors, metadata)?;
        write_synced(&staging.join("config.json"), config.as_bytes())?;
        let note = json!({
            "max_len": max_len,
            "base": checkpoint.dir().display().to_string(),
            "dtype": dtype.torch_name(),
        });
        write_synced(
            &staging.join(MERGE_NOTE_FILE),
            format!("{note:#}\n").as_bytes(),
        )?;
        let mut copied = Vec::new();
        for name in TOKENIZER_FILES {
            let from = checkpoint.dir().join(name);
            if from.is_file() {
                // Read through a hub cache's links: the merge holds the files themselves.
                let bytes = std::fs::read(&from).map_err(|error| Error::Io {
                    path: from.clone(),
                    error,
                })?;
                write_synced(&staging.join(name), &bytes)?;
                copied.push(name.to_string());
            }
        }
        // Its entries must survive a power cut too, before the folder is renamed into place.
        sync(&staging)?;
        // An empty folder at `dir` (checked above) gives way to the merge; one another
        // process filled since (a second merge into it) is its, and this merge is not saved.
        let filled_meanwhile = |error: std::io::Error| match error.kind() {
            std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::AlreadyExists => {
                invalid(format!(
                    "{} was filled by another process while this merge was written (a second \
                     merge into it?); it is left as that process wrote it and this merge is not \
                     saved: give this one a new folder",
                    dir.display()
                ))
            }
            _ => Error::Io {
                path: dir.to_path_buf(),
                error,
            },
        };
        if dir.is_dir() {
            std::fs::remove_dir(dir).map_err(filled_meanwhile)?;
        }
        std::fs::rename(&staging, dir).map_err(filled_meanwhile)?;
        if let Some(mode) = kept_mode {
            std::fs::set_permissions(dir, mode).map_err(|error| Error::Io {
                path: dir.to_path_buf(),
                error,
            })?;
        }
        // The rename itself must survive a power cut, not only a killed process.
        sync(super::atomic::parent_of(dir))?;
        Ok(copied)
    })();

    match written {
        Ok(tokenizer_files) => Ok(MergedCheckpoint {
            dir: dir.to_path_buf(),
            tensors: params.len(),
            tokenizer_files,
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// Refuses a `dir` that holds anything (a merge never mixes its files with others) or is
/// not a folder.
fn check_new_folder(dir: &Path) -> Result<()> {
    const GOES_INTO: &str = "a merged checkpoint goes into a new or empty folder";
    super::check_output_folder(dir, "merge", GOES_INTO)?;
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                error,
            })
        }
    };
    let refuse = |what: &str| {
        Err(Error::invalid(
            "merge",
            format!("{} {what}: {GOES_INTO}", dir.display()),
        ))
    };
    if !meta.is_dir() {
        return refuse("is a file");
    }
    let empty = std::fs::read_dir(dir)
        .map_err(|error| Error::Io {
            path: dir.to_path_buf(),
            error,
        })?
        .next()
        .is_none();
    match empty {
        true => Ok(()),
        false => refuse("is not empty"),
    }
}

/// The name of the merge's own folder at the end of `dir`: `new/.`, which reads as `new` to
/// `Path` but fails the final rename, and `.` or `/`, which are no folder of the merge's
/// own, are refused before the merge's work.
fn folder_name(dir: &Path) -> Result<String> {
    use std::os::unix::ffi::OsStrExt;
    let raw = dir.as_os_str().as_bytes();
    let trimmed = &raw[..raw.len() - raw.iter().rev().take_while(|&&b| b == b'/').count()];
    let last = trimmed.rsplit(|&b| b == b'/').next().unwrap_or_default();
    match (last, dir.file_name()) {
        (b"." | b"..", _) | (_, None) => Err(Error::invalid(
            "merge",
            format!(
                "{} names no folder of the merge's own: give one (e.g. ./merged)",
                dir.display()
            ),
        )),
        (_, Some(name)) => Ok(name.to_string_lossy().into_owned()),
    }
}

/// A fresh folder beside `dir` (`.NAME.merging-PID-NONCE-N`) to write the merge in, locked
/// for as long as the returned file lives, once the folders of merges no longer writing are
/// removed (one killed part way; a live one, in this process namespace or not, holds its
/// lock). Created exclusively: a name another merge holds (the same PID in another
/// container) is skipped, never emptied.
fn staging_folder(dir: &Path, name: &str) -> Result<(PathBuf, std::fs::File)> {
    let parent = super::atomic::parent_of(dir);
    let prefix = format!(".{name}.merging-");
    // Named after the output asked for, with the step that failed: the bare parent (`/proc/self:
    // No such file or directory`) said neither.
    let in_parent = |staging: &Path, error: std::io::Error| Error::Io {
        path: dir.to_path_buf(),
        error: std::io::Error::new(
            error.kind(),
            format!(
                "cannot write the merge beside it, in {} (through {}): {error}",
                parent.display(),
                staging.display()
            ),
        ),
    };
    let pattern = parent.join(format!("{prefix}PID-NONCE-N"));
    std::fs::create_dir_all(parent).map_err(|e| in_parent(&pattern, e))?;
    remove_abandoned_staging(parent, &prefix);
    let (staging, ()) = super::atomic::create_unique(parent, &prefix, |p| std::fs::create_dir(p))
        .map_err(|e| in_parent(&pattern, e))?;
    let lock = std::fs::File::open(&staging).map_err(|e| in_parent(&staging, e))?;
    lock.lock().map_err(|e| in_parent(&staging, e))?;
    Ok((staging, lock))
}

/// Removes the staging folders (`PREFIX` then `PID-NONCE-N`, or the bare PID of older
/// builds) in `parent` whose lock can be taken: their merges no longer run.
fn remove_abandoned_staging(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let is_staging = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(super::atomic::writer_of)
            .is_some();
        let path = entry.path();
        if !is_staging || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let abandoned = std::fs::File::open(&path).is_ok_and(|f| f.try_lock().is_ok());
        if abandoned {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |error| Error::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut file = std::fs::File::create(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Flushes a file or folder (a folder: the names in it) to the disk.
fn sync(path: &Path) -> Result<()> {
    super::atomic::sync_path(path).map_err(|error| Error::Io {
        path: path.to_path_buf(),
        error,
    })
}

/// The base's `config.json`, as transformers reads a sequence classifier's: its
/// architecture, class names both ways, problem type and dtype; every other setting kept.
fn merged_config(checkpoint: &Checkpoint, kind: &TaskKind, dtype: MergedDType) -> Result<String> {
    let path = checkpoint.dir().join("config.json");
    let text = crate::text_file::read_utf8(&path)?;
    let mut config: Map<String, Value> =
        serde_json::from_str(&text).map_err(|e| Error::Format {
            path: path.clone(),
            detail: format!("invalid BERT config: {e}"),
        })?;
    let (names, problem_type) = match kind {
        TaskKind::Classification { labels } => (labels.clone(), "single_label_classification"),
        TaskKind::MultiLabel { labels } => (labels.clone(), crate::checkpoint::MULTI_LABEL),
        // transformers' own name for a head it was given no names for.
        TaskKind::Regression => (vec!["LABEL_0".to_string()], "regression"),
    };
    let id2label: Map<String, Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (i.to_string(), json!(n)))
        .collect();
    let label2id: Map<String, Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), json!(i)))
        .collect();
    let architecture = checkpoint
        .config
        .family()
        .sequence_classifier(checkpoint.config.model_type.as_deref());
    config.insert("architectures".into(), json!([architecture]));
    config.insert("id2label".into(), Value::Object(id2label));
    config.insert("label2id".into(), Value::Object(label2id));
    config.insert("problem_type".into(), json!(problem_type));
    // transformers derives the count from id2label; a stale one beside it would disagree.
    config.remove("num_labels");
    config.insert("dtype".into(), json!(dtype.torch_name()));
    if config.contains_key("torch_dtype") {
        config.insert("torch_dtype".into(), json!(dtype.torch_name()));
    }
    serde_json::to_string_pretty(&Value::Object(config))
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| Error::invalid("merge", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A staging folder of the name this process would take first, held by another merge
    /// (the same PID in another container), is skipped: its lock and files are left alone.
    #[test]
    fn a_staging_folder_another_merge_holds_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("merged");
        let mut locks = Vec::new();
        let held: Vec<PathBuf> = super::super::atomic::next_unique_names(".merged.merging-", 4)
            .into_iter()
            .map(|name| {
                let held = tmp.path().join(name);
                std::fs::create_dir(&held).unwrap();
                std::fs::write(held.join("model.safetensors"), "another merge's").unwrap();
                let lock = std::fs::File::open(&held).unwrap();
                lock.lock().unwrap();
                locks.push(lock);
                held
            })
            .collect();
        let (staging, _ours) = staging_folder(&out, "merged").unwrap();
        assert!(!held.contains(&staging), "{}", staging.display());
        assert!(staging.is_dir() && std::fs::read_dir(&staging).unwrap().next().is_none());
        for h in &held {
            let kept = std::fs::read(h.join("model.safetensors")).unwrap();
            assert_eq!(kept, b"another merge's");
        }
    }

    /// A merge is written a tensor at a time: it holds a few copies of the largest tensor
    /// (1 MiB here, passing through f64) beside the model, not the 13 MiB file, which the
    /// merge held whole; the file reads back as the model's tensors, under their names.
    #[test]
    fn a_merge_is_written_a_tensor_at_a_time() {
        use crate::backend::cpu::CpuBackend;
        let cpu = CpuBackend::f32();
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        std::fs::create_dir(&base).unwrap();
        let config = r#"{"model_type": "bert", "vocab_size": 1024, "hidden_size": 256,
            "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024,
            "max_position_embeddings": 64, "type_vocab_size": 2}"#;
        std::fs::write(base.join("config.json"), config).unwrap();
        let bert = crate::checkpoint::BertConfig::from_json(config, &base).unwrap();
        let model = BertClassifier::random(&bert, &cpu, 2, 3).unwrap();
        let stored: Vec<(String, crate::tensor::Tensor<CpuBackend>)> = model
            .params()
            .iter()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect();
        let bytes = super::super::tensors_to_safetensors(&cpu, &stored).unwrap();
        std::fs::write(base.join("model.safetensors"), bytes).unwrap();
        let checkpoint = Checkpoint::open(&base).unwrap();
        let kind = TaskKind::Classification {
            labels: vec!["no".into(), "yes".into()],
        };
        let out = tmp.path().join("merged");
        let (merged, peak) = crate::allocation_peak::peak_allocation_of(|| {
            save_merged(
                &out,
                &cpu,
                model,
                &kind,
                &checkpoint,
                MergedDType::F32,
                None,
            )
        });
        assert_eq!(merged.unwrap().tensors, stored.len());
        let largest = 1024 * 256 * 4;
        let file = out.join("model.safetensors");
        let len = std::fs::metadata(&file).unwrap().len() as usize;
        assert!(len > 12 * largest, "{len} bytes");
        assert!(
            peak <= 4 * largest,
            "merging a model of {} MiB held {} MiB at once",
            len >> 20,
            peak >> 20
        );
        let read = crate::checkpoint::WeightsFile::open(&file).unwrap();
        assert_eq!(read.header_metadata().unwrap()["format"], "pt");
        for (name, t) in &stored {
            let values = read.read_f64(name, t.shape()).unwrap();
            assert_eq!(values, cpu.to_f64(t).unwrap(), "{name}");
        }
    }
}

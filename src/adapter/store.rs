use std::collections::BTreeMap;
use std::path::Path;

use super::atomic::{sha256_hex, stage_atomic, staged_copies};
use super::manifest::AdapterManifest;
use super::streamed_safetensors::{
    stage_streamed, streamed_bytes, streamed_file_sha256, StreamedTensor,
};
use crate::backend::Backend;
use crate::checkpoint::{BertConfig, Checkpoint, WeightsFile};
use crate::error::{Error, Result};
use crate::model::BertClassifier;
use crate::peft::PeftPlan;
use crate::tensor::Tensor;

/// File of the trainable tensors inside an adapter directory.
pub const WEIGHTS_FILE: &str = "adapter.safetensors";
/// Manifest inside an adapter directory.
pub const MANIFEST_FILE: &str = "adapter.json";

/// Serializes named tensors (f64 tensors as F64, everything else as F32), as safetensors'
/// own writer would.
pub fn tensors_to_safetensors<B: Backend>(
    backend: &B,
    tensors: &[(String, Tensor<B>)],
) -> Result<Vec<u8>> {
    streamed_bytes(
        tensors
            .iter()
            .map(|(name, t)| StreamedTensor::on_backend(backend, name.clone(), t))
            .collect(),
    )
}

/// Reads every tensor of a safetensors file onto `backend`.
pub fn read_tensors<B: Backend>(backend: &B, path: &Path) -> Result<BTreeMap<String, Tensor<B>>> {
    let file = WeightsFile::open(path)?;
    let mut out = BTreeMap::new();
    for name in file.names() {
        let shape = file.shape(name).ok_or_else(|| Error::Format {
            path: path.to_path_buf(),
            detail: format!("tensor `{name}` is unreadable"),
        })?;
        out.insert(name.clone(), file.tensor(backend, name, shape.into())?);
    }
    Ok(out)
}

/// What the training examples were like, recorded with an adapter so that using it reads
/// its inputs the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrainingInputs {
    /// Whether the examples were text pairs.
    pub text_pairs: Option<bool>,
    /// The tokens per example (special tokens included) they were cut to.
    pub max_len: Option<usize>,
}

/// Why `max_len`, the cut of a model's training texts, cannot be recorded with it: 0, or
/// more tokens than its positions hold.
pub(crate) fn max_len_problem(config: &BertConfig, max_len: Option<usize>) -> Option<String> {
    let positions = config.max_tokens();
    let n = max_len.filter(|&n| n == 0 || n > positions)?;
    Some(format!(
        "max_len {n}: the training texts' cut is between 1 and the model's {positions} positions"
    ))
}

/// What a loader would refuse is refused before anything is written: a plan other than the
/// model's (or none applied, or LoRA merged away, or layers or trainable tensors changed by
/// hand since: [`BertClassifier::check_plan`]), class names the head cannot carry, a cut
/// of the texts the model cannot take, and non-finite weights. `op` names the writer (a
/// spafit adapter, a PEFT export).
pub(crate) fn check_savable<B: Backend>(
    backend: &B,
    model: &BertClassifier<B>,
    plan: &PeftPlan,
    labels: Option<&[String]>,
    max_len: Option<usize>,
    op: &'static str,
) -> Result<()> {
    // The plan, and the model's parts (public fields) as the plan left them: layers and
    // trainable tensors changed by hand would save an adapter its base cannot take.
    model.check_plan(plan)?;
    if let Some(problem) = max_len_problem(model.config(), max_len) {
        return Err(Error::invalid(op, problem));
    }
    if let Some(problem) = labels.and_then(|l| labels_problem(l, model.num_labels())) {
        return Err(Error::invalid(op, problem));
    }
    if let Some((name, value)) = model.non_finite_trainable(backend)? {
        return Err(Error::invalid(
            op,
            format!("`{name}` holds {value}: an adapter of non-finite weights cannot be used"),
        ));
    }
    Ok(())
}

/// Saves the trainable tensors of `model` and a manifest into `dir`, recording the class
/// names and what the training inputs were like ([`TrainingInputs`]). Both files are written in full beside
/// their places before either is renamed into place, the weights first and the manifest
/// (which holds their hash) last: a kill between the two renames leaves the new weights with
/// the new manifest staged beside them, which [`load_adapter`] completes the save with.
pub fn save_adapter<B: Backend>(
    dir: &Path,
    backend: &B,
    model: &BertClassifier<B>,
    plan: &PeftPlan,
    base: &WeightsFile,
    labels: Option<&[String]>,
    inputs: TrainingInputs,
) -> Result<()> {
    check_savable(backend, model, plan, labels, inputs.max_len, "adapter")?;
    model.check_base(base)?;
    super::check_output_folder(dir, "adapter", "an adapter goes into a folder")?;
    // One adapter per folder: beside a PEFT adapter, `open_adapter` would read this one and
    // pass the other over without a word; in a model's folder, the files would mix.
    let foreign = [
        super::PEFT_CONFIG_FILE,
        super::PEFT_WEIGHTS_FILE,
        "config.json",
        "model.safetensors",
    ];
    if let Some(found) = super::first_present(dir, &foreign) {
        return Err(Error::invalid(
            "adapter",
            format!(
                "{} holds a PEFT adapter or a model ({}): give the adapter a folder of its own",
                dir.display(),
                found.display()
            ),
        ));
    }
    let trainable: Vec<(String, Tensor<B>)> = model
        .params()
        .into_iter()
        .filter(|p| p.trainable)
        .map(|p| (p.name.clone(), p.value.clone()))
        .collect();
    // The weights of a full fine-tuning are a model's size: made and written a tensor at a
    // time, never whole in memory beside the model.
    let streamed = || {
        trainable
            .iter()
            .map(|(name, t)| StreamedTensor::on_backend(backend, name.clone(), t))
            .collect()
    };
    let (base_model_sha256, base_encoder_sha256) = (base.sha256()?, base.encoder_sha256()?);
    let (method, strata, lora) = AdapterManifest::describe(plan);
    let manifest = |weights_sha256: String| AdapterManifest {
        format: "spafit-adapter".into(),
        // An older spafit would read a multi-label head as a softmax, and pass over adapters
        // of their own rank or alpha (computing with the wrong scale): it refuses the
        // adapter instead.
        version: manifest_version(
            model.is_multi_label(),
            lora.as_ref().is_some_and(|l| l.varies_by_site()),
            lora.as_ref().is_some_and(|l| l.dora),
        ),
        method,
        strata,
        boundaries: plan.boundaries,
        lora,
        train_embeddings: plan.train_embeddings,
        train_pooler: plan.train_pooler,
        train_layer_norm_weights: plan.train_layer_norm_weights,
        num_labels: model.num_labels(),
        labels: labels.map(<[String]>::to_vec),
        base_model_sha256: base_model_sha256.to_string(),
        base_encoder_sha256: Some(base_encoder_sha256.to_string()),
        multi_label: model.is_multi_label(),
        text_pairs: inputs.text_pairs,
        max_len: inputs.max_len,
        weights_sha256,
        tensors: trainable.iter().map(|(n, _)| n.clone()).collect(),
    };
    let json = |weights_sha256| {
        serde_json::to_vec_pretty(&manifest(weights_sha256))
            .map_err(|e| Error::invalid("adapter", e.to_string()))
    };
    // Already in place byte for byte (a resumed run saves again the best it restored): left
    // as it is, so a resume that changes nothing needs no free disk. Compared a tensor at a
    // time, up to the first difference (the first tensor, when training moved it).
    let weights_path = dir.join(WEIGHTS_FILE);
    if let Some(sha) = streamed_file_sha256(&weights_path, streamed())? {
        let json = json(sha)?;
        if std::fs::read(dir.join(MANIFEST_FILE)).ok().as_deref() != Some(&json[..]) {
            stage_atomic(&dir.join(MANIFEST_FILE), &json)?.commit()?;
        }
        return Ok(());
    }
    let (weights, sha) = stage_streamed(&weights_path, streamed())?;
    let manifest = stage_atomic(&dir.join(MANIFEST_FILE), &json(sha)?)?;
    weights.commit()?;
    manifest.commit_or_leave_staged()
}

/// The `adapter.json` version of an adapter with neither a multi-label head nor adapters of
/// their own rank or alpha; each adds to it what an older spafit must not read past.
const MANIFEST_VERSION: u32 = 1;

/// What a multi-label head (`multi_label`) adds to the version: 2 and 4.
const MULTI_LABEL_VERSION_STEP: u32 = 1;

/// What adapters of their own rank or alpha (`lora.overrides`), or maps left without one
/// (`lora.unadapted`), add to the version: 3 and 4.
const OVERRIDES_VERSION_STEP: u32 = 2;

/// What DoRA adapters (`lora.dora`) add to the version: 5 to 8.
const DORA_VERSION_STEP: u32 = 4;

/// The version of a manifest with a multi-label head or not, adapters that vary by site
/// ([`crate::nn::LoraConfig::varies_by_site`]) or not, and DoRA adapters or not.
fn manifest_version(multi_label: bool, varies_by_site: bool, dora: bool) -> u32 {
    MANIFEST_VERSION
        + u32::from(multi_label) * MULTI_LABEL_VERSION_STEP
        + u32::from(varies_by_site) * OVERRIDES_VERSION_STEP
        + u32::from(dora) * DORA_VERSION_STEP
}

/// Reads an adapter's manifest.
pub fn read_manifest(dir: &Path) -> Result<AdapterManifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = crate::text_file::read_utf8(&path)?;
    parse_manifest(path, &text)
}

/// The manifest a save interrupted between its two renames left staged in `dir`
/// (`.adapter.json.tmp-PID-N`), if it is whole and holds the hash of the weights in place,
/// with its path.
fn staged_manifest(
    dir: &Path,
    weights_sha256: &str,
) -> Option<(std::path::PathBuf, AdapterManifest)> {
    staged_copies(dir, MANIFEST_FILE)
        .into_iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(&path).ok()?;
            let manifest = parse_manifest(path.clone(), &text).ok()?;
            Some((path, manifest))
        })
        .find(|(_, m)| m.weights_sha256 == weights_sha256)
}

/// Completes a save of the adapter in `dir` that was killed between its two renames: the
/// manifest staged beside the new weights is renamed into place. Anything else is left as
/// it is.
pub(crate) fn complete_interrupted_save(dir: &Path) -> Result<()> {
    // Hashed a piece at a time: the weights of a full fine-tuning are a model's size.
    let Ok(hash) = super::atomic::file_sha256(&dir.join(WEIGHTS_FILE)) else {
        return Ok(());
    };
    if read_manifest(dir).is_ok_and(|m| m.weights_sha256 == hash) {
        return Ok(());
    }
    let Some((staged, _)) = staged_manifest(dir, &hash) else {
        return Ok(());
    };
    let manifest = dir.join(MANIFEST_FILE);
    std::fs::rename(&staged, &manifest).map_err(|source| Error::Io {
        path: manifest,
        error: source,
    })
}

fn parse_manifest(path: std::path::PathBuf, text: &str) -> Result<AdapterManifest> {
    let m: AdapterManifest = serde_json::from_str(text).map_err(|e| Error::Format {
        path: path.clone(),
        detail: format!("invalid adapter manifest: {e}"),
    })?;
    if m.format != "spafit-adapter" {
        return Err(Error::Format {
            path,
            detail: format!("not a spafit adapter (format `{}`)", m.format),
        });
    }
    // Versions 2 to 8 are version 1 with a multi-label head, LoRA overrides, DoRA or some of
    // them, which the manifest must say.
    let overrides = m.lora.as_ref().is_some_and(|l| l.varies_by_site());
    let dora = m.lora.as_ref().is_some_and(|l| l.dora);
    if m.version != manifest_version(m.multi_label, overrides, dora) {
        return Err(Error::Format {
            path,
            detail: format!(
                "`version` {} with `multi_label` {}, {} `lora.overrides` or `lora.unadapted` \
                 and `lora.dora` {dora}: this spafit reads version {} adapters (one class per \
                 example, or a regression), plus {} for a multi-label head, {} for adapters of \
                 their own rank or alpha, or maps left without one, and {} for DoRA adapters",
                m.version,
                m.multi_label,
                if overrides { "some" } else { "no" },
                MANIFEST_VERSION,
                MULTI_LABEL_VERSION_STEP,
                OVERRIDES_VERSION_STEP,
                DORA_VERSION_STEP,
            ),
        });
    }
    if m.max_len == Some(0) {
        return Err(Error::Format {
            path,
            detail: "`max_len` 0: the training texts' cut is a positive count of tokens".into(),
        });
    }
    if let Some(problem) = m
        .labels
        .as_ref()
        .and_then(|l| labels_problem(l, m.num_labels))
    {
        return Err(Error::Format {
            path,
            detail: problem,
        });
    }
    Ok(m)
}

/// What makes `labels` unfit to name a head of `num_labels` outputs, if anything: what the
/// loader refuses in a manifest, and so what a save refuses to write.
fn labels_problem(labels: &[String], num_labels: usize) -> Option<String> {
    if let Some(problem) = crate::data::label_names_problem(labels) {
        return Some(format!("`labels`: {problem}"));
    }
    (labels.len() != num_labels).then(|| {
        format!(
            "{} label names for a head of {num_labels} outputs",
            labels.len()
        )
    })
}

/// Refuses a base other than the one the adapter was trained on: by its encoder tensors, or
/// for an adapter from before those were recorded, by its file's bytes.
fn check_base(manifest: &AdapterManifest, manifest_path: &Path, base: &WeightsFile) -> Result<()> {
    let refuse = |detail: String| {
        Err(Error::Mismatch {
            path: manifest_path.to_path_buf(),
            detail,
        })
    };
    match &manifest.base_encoder_sha256 {
        Some(trained_on) => check_encoder_identity(trained_on, manifest_path, base),
        None => match base.sha256()? {
            same if manifest.base_model_sha256 == same => Ok(()),
            other => refuse(format!(
                "the adapter was trained on base model sha256 {} but {} has sha256 {other}",
                manifest.base_model_sha256,
                base.path().display(),
            )),
        },
    }
}

/// Refuses a base whose encoder tensors are not those an adapter was trained on
/// (`trained_on`, their SHA-256 as `record` gives it).
pub(crate) fn check_encoder_identity(
    trained_on: &str,
    record: &Path,
    base: &WeightsFile,
) -> Result<()> {
    let encoder = base.encoder_sha256()?;
    if trained_on == encoder {
        return Ok(());
    }
    Err(Error::Mismatch {
        path: record.to_path_buf(),
        detail: format!(
            "the adapter was trained on a base whose encoder tensors have sha256 {trained_on}, \
             but those of {} have sha256 {}: another model, or the same one saved with other \
             values or in another dtype",
            base.path().display(),
            encoder
        ),
    })
}

/// Loads the adapter in `dir` onto the base `checkpoint`: rebuilds its plan and sets its
/// tensors. Refuses an adapter trained on another base, or whose files do not match.
pub fn load_adapter<B: Backend>(
    dir: &Path,
    checkpoint: &Checkpoint,
    backend: &B,
) -> Result<(BertClassifier<B>, AdapterManifest)> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let weights_path = dir.join(WEIGHTS_FILE);
    if !manifest_path.exists() && !weights_path.exists() {
        // Said of the folder: a missing `adapter.json` alone reads as a torn adapter.
        let what = if super::is_peft_adapter(dir) {
            "holds a PEFT adapter, not a spafit one: read it with open_adapter or import_peft"
        } else if dir.is_dir() {
            "holds no spafit adapter (no adapter.json, no adapter.safetensors)"
        } else {
            super::not_a_folder(dir)
        };
        return Err(Error::Io {
            path: dir.to_path_buf(),
            error: std::io::Error::new(std::io::ErrorKind::NotFound, what),
        });
    }
    let read = read_manifest(dir);
    // Read from disk a tensor at a time where it parses (the weights of a full fine-tuning
    // are a model's size), and hashed from the file it was opened as; a file that does not
    // parse is hashed whole, to be told torn or edited unless its manifest says it is whole.
    let opened = WeightsFile::open(&weights_path);
    let hash = match &opened {
        Ok(file) => file.sha256()?.to_string(),
        Err(_) => match crate::text_file::read_file(&weights_path) {
            Ok(bytes) => sha256_hex(&bytes),
            Err(source) => {
                // A folder that is no adapter at all is told so by its missing manifest.
                read?;
                return Err(Error::Io {
                    path: weights_path,
                    error: source,
                });
            }
        },
    };
    // A save killed between its renames left its manifest staged beside the new weights
    // (with the old manifest, or none yet, in place).
    let manifest = match read {
        Ok(m) if m.weights_sha256 == hash => m,
        Ok(_) => staged_manifest(dir, &hash)
            .map(|(_, m)| m)
            .ok_or_else(|| Error::Mismatch {
                path: weights_path.clone(),
                detail: "the weights do not match the manifest's hash (torn or edited adapter)"
                    .into(),
            })?,
        Err(e @ Error::Io { .. }) if !manifest_path.exists() => {
            staged_manifest(dir, &hash).map(|(_, m)| m).ok_or(e)?
        }
        Err(e) => return Err(e),
    };
    check_base(&manifest, &manifest_path, &checkpoint.weights)?;
    let plan = manifest.plan(&manifest_path)?;
    if plan.strata.len() != checkpoint.config.num_hidden_layers {
        return Err(Error::Mismatch {
            path: manifest_path,
            detail: format!(
                "the adapter has strata for {} layers but the base model has {}",
                plan.strata.len(),
                checkpoint.config.num_hidden_layers
            ),
        });
    }
    let file = opened?;
    // The hash covers the weights, not the manifest: a head size edited in the manifest must
    // not size the model (a huge one would exhaust memory before any tensor is compared).
    let stored_head = file
        .shape("classifier.weight")
        .and_then(|dims| dims.first().copied());
    if manifest.num_labels == 0 || stored_head != Some(manifest.num_labels) {
        return Err(Error::Mismatch {
            path: manifest_path,
            detail: format!(
                "`num_labels` is {} but the stored head `classifier.weight` has {}",
                manifest.num_labels,
                stored_head.map_or("no rows (it is missing)".to_string(), |n| format!(
                    "{n} rows"
                ))
            ),
        });
    }
    let loaded = (|| {
        let mut model = BertClassifier::base_for_adapter(
            checkpoint,
            backend,
            manifest.num_labels,
            Some(&plan),
        )?;
        model.apply_plan(&plan, &mut |_, shape| backend.zeros(shape))?;
        let expected = model.trainable_names();
        let mut stored = manifest.tensors.clone();
        stored.sort();
        if expected != stored {
            let missing: Vec<&String> = expected.iter().filter(|n| !stored.contains(n)).collect();
            let extra: Vec<&String> = stored.iter().filter(|n| !expected.contains(n)).collect();
            let mut why = Vec::new();
            if !missing.is_empty() {
                why.push(format!("the plan trains {missing:?}, which the list lacks"));
            }
            if !extra.is_empty() {
                why.push(format!(
                    "the list names {extra:?}, which the plan does not train"
                ));
            }
            if let Some((_, repeat)) = crate::data::first_repeat(&stored) {
                why.push(format!("the list names `{}` twice", stored[repeat]));
            }
            return Err(Error::Mismatch {
                path: manifest_path,
                detail: format!(
                    "its list of stored tensors (`tensors`) is not what its plan trains: {}",
                    why.join("; ")
                ),
            });
        }
        // A tensor the list does not name would be left out without a word: what it was to
        // change would not be changed.
        if let Some(unlisted) = file.names().iter().find(|n| !stored.contains(n)) {
            return Err(Error::Mismatch {
                path: weights_path.clone(),
                detail: format!(
                    "it holds `{unlisted}`, which the manifest's list of stored tensors \
                     (`tensors`) does not name: an adapter of another plan, or edited"
                ),
            });
        }
        for p in model.params_mut().into_iter().filter(|p| p.trainable) {
            p.value = file.tensor(backend, &p.name, p.value.shape().clone())?;
        }
        model.store_frozen_weights(backend)?;
        Ok(model)
    })();
    let mut model = crate::model::while_loading(backend, plan.freezes_weights(), loaded)?;
    // The adapter's head, not the base's, says how its outputs read.
    model.set_multi_label(manifest.multi_label);
    Ok((model, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::peft::{peft_lora_init, Method, PeftConfig};

    /// The adapter of a full fine-tuning is the whole model (13 MiB here): saved, it is made
    /// and written a tensor at a time, holding two copies of its largest tensor (1 MiB) at
    /// most, where building the file whole held it twice over; the manifest records the
    /// file's hash and the file reads back as the model's weights. Saved again as it is, the
    /// file is compared and kept (the same inode); after a change to one tensor, it is
    /// replaced and reads back as the new weights.
    #[test]
    fn a_full_fine_tuning_adapter_is_saved_a_tensor_at_a_time() {
        use std::os::unix::fs::MetadataExt;
        let cpu = CpuBackend::f32();
        let config = BertConfig::from_json(
            r#"{"model_type": "bert", "vocab_size": 1024, "hidden_size": 256,
                "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024,
                "max_position_embeddings": 64, "type_vocab_size": 2}"#,
            Path::new("config.json"),
        )
        .unwrap();
        let plan = PeftPlan::new(&PeftConfig::new(Method::Full), 4).unwrap();
        let init = &mut peft_lora_init(&cpu, 7);
        let mut model = BertClassifier::random_for_plan(&config, &cpu, 2, 7, &plan, init).unwrap();
        let base_bytes =
            tensors_to_safetensors(&cpu, &[("x".into(), cpu.zeros([1].into()).unwrap())]).unwrap();
        let base = WeightsFile::from_bytes(Path::new("base.safetensors"), base_bytes).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let save = |model: &BertClassifier<CpuBackend>| {
            save_adapter(
                dir.path(),
                &cpu,
                model,
                &plan,
                &base,
                None,
                TrainingInputs::default(),
            )
        };
        let weights_path = dir.path().join(WEIGHTS_FILE);
        let reads_back_as = |model: &BertClassifier<CpuBackend>| {
            let manifest = read_manifest(dir.path()).unwrap();
            let bytes = std::fs::read(&weights_path).unwrap();
            assert_eq!(manifest.weights_sha256, sha256_hex(&bytes));
            let read = read_tensors(&cpu, &weights_path).unwrap();
            let trainable: Vec<_> = model.params().into_iter().filter(|p| p.trainable).collect();
            assert_eq!(read.len(), trainable.len());
            for p in trainable {
                let values = cpu.to_f64(&p.value).unwrap();
                assert_eq!(cpu.to_f64(&read[&p.name]).unwrap(), values, "{}", p.name);
            }
        };
        let (saved, peak) = crate::allocation_peak::peak_allocation_of(|| save(&model));
        saved.unwrap();
        let largest = 1024 * 256 * 4;
        let file_len = std::fs::metadata(&weights_path).unwrap().len() as usize;
        assert!(file_len > 12 * largest, "{file_len} bytes");
        assert!(
            peak <= 2 * largest + largest / 4,
            "saving an adapter of {} MiB held {} MiB at once",
            file_len >> 20,
            peak >> 20
        );
        reads_back_as(&model);
        let inode = || std::fs::metadata(&weights_path).unwrap().ino();
        let first = inode();
        save(&model).unwrap();
        assert_eq!(inode(), first, "an unchanged adapter was written again");
        let last = model
            .params_mut()
            .into_iter()
            .rfind(|p| p.trainable)
            .unwrap();
        let mut values = cpu.to_f64(&last.value).unwrap();
        values[0] += 1.0;
        last.value = cpu
            .tensor_from_f64(last.value.shape().clone(), &values)
            .unwrap();
        save(&model).unwrap();
        assert_ne!(inode(), first, "a changed adapter was kept");
        reads_back_as(&model);
    }
}

//! Export to PEFT's on-disk format: `adapter_model.safetensors` + `adapter_config.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::atomic::{stage_atomic, staged_copies};
use super::store::TrainingInputs;
use super::streamed_safetensors::{stage_streamed, StreamedTensor};
use crate::backend::Backend;
use crate::checkpoint::WeightsFile;
use crate::error::{Error, Result};
use crate::model::BertClassifier;
use crate::nn::{LoraOverride, LoraTarget, Stratum};
use crate::peft::PeftPlan;
use crate::tensor::Tensor;

/// What a PEFT export records of its training: `adapter_config.json` names the base, and
/// `spafit_export.json` beside the weights keeps what PEFT's files have no place for, which
/// spafit's import reads back.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeftExportRecord<'a> {
    /// `adapter_config.json`'s `base_model_name_or_path` (informational: PEFT loads the
    /// adapter onto whatever base it is given).
    pub base_model_name_or_path: &'a str,
    /// The head's class names, in output order (a classifier's; `None` for a regression or
    /// where unknown).
    pub labels: Option<&'a [String]>,
    /// Whether the training examples were text pairs, and the tokens per example they were
    /// cut to: spafit's import gives them to the opened adapter, as a spafit adapter has them.
    pub inputs: TrainingInputs,
    /// The training run's output folder (see [`exported_by_run`]), so that resuming that run
    /// may write its export again and no other run can replace it; `None` outside a run.
    pub run_dir: Option<&'a Path>,
    /// The weights the model was trained on: their encoder's identity is recorded, and
    /// spafit's import checks it as it checks its own adapters' (PEFT checks none).
    pub base: Option<&'a WeightsFile>,
}

/// The order in which [`export_peft`] wrote the head's classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportedClassOrder {
    /// As trained (the record's `labels`), or without names to order by.
    AsTrained,
    /// The base's `id2label` order, which names the trained classes in another order:
    /// transformers names a PEFT adapter's outputs by its base's `id2label`, so the head's
    /// rows were written in that order (the model itself is left as it is).
    BaseOrder {
        /// The classes in the export's output order (the base's).
        exported: Vec<String>,
    },
}

/// Writes `model`'s adapters as PEFT saves a `LoraConfig` model for sequence classification:
/// LoRA tensors as `base_model.model.<module>.lora_A.weight`, the classifier (and any other
/// trained non-LoRA tensor: SPAFIT's biases, a trained pooler, LayerNorms, embeddings) under
/// `base_model.model.<name>` as `modules_to_save` and `bias` saving hold them — a bias inside
/// a LoRA-wrapped module lives at `<module>.base_layer.bias` in PEFT. The config names all of
/// them, so PEFT keeps them trainable and saves them again. `record` says what goes beside
/// them ([`PeftExportRecord`]). `target_modules` is a full-match regular expression over the
/// exact modules that carry adapters, so PEFT's suffix matching cannot wrap a module that
/// was not trained (`output.dense` also ends `attention.output.dense`). An export already in
/// `dir` is replaced (a resumed run writes its own again; the CLI refuses another's), but
/// never one beside a spafit adapter or run.
///
/// transformers names the outputs of a PEFT adapter's model by its base's `id2label` (the
/// model's config): a head trained on the same classes in another order (GLUE's MNLI on a
/// base fine-tuned on it) is written in the base's order, and `spafit_export.json` records
/// that order ([`ExportedClassOrder::BaseOrder`]).
pub fn export_peft<B: Backend>(
    dir: &Path,
    backend: &B,
    model: &BertClassifier<B>,
    plan: &PeftPlan,
    record: &PeftExportRecord,
) -> Result<ExportedClassOrder> {
    let PeftExportRecord {
        base_model_name_or_path,
        labels,
        inputs,
        run_dir,
        base,
    } = *record;
    let max_len = inputs.max_len;
    super::check_output_folder(dir, "peft export", "a PEFT export goes into a folder")?;
    if let Some(found) = spafit_file_in(dir) {
        return Err(Error::invalid(
            "peft export",
            format!(
                "{} holds a spafit adapter or run ({}); an export there would mix two \
                 adapters in one folder (and spafit would read its own one back): give a \
                 folder of its own",
                dir.display(),
                found.display()
            ),
        ));
    }
    // transformers reads a folder with a model's config.json as that model, not the adapter.
    if let Some(found) = super::first_present(dir, &["config.json", "model.safetensors"]) {
        return Err(Error::invalid(
            "peft export",
            format!(
                "{} holds a model ({}): give the export a folder of its own",
                dir.display(),
                found.display()
            ),
        ));
    }
    let lora = plan.lora.as_ref().ok_or_else(|| {
        Error::invalid(
            "peft export",
            format!(
                "the {} plan has no LoRA adapter; PEFT's LoRA format needs one",
                plan.method
            ),
        )
    })?;
    super::store::check_savable(backend, model, plan, labels, max_len, "peft export")?;
    if let Some(base) = record.base {
        model.check_base(base)?;
    }
    // A base that names no classes calls the outputs LABEL_0, LABEL_1, …: classes that are
    // those numbers go out in number order, as an import reads them back.
    let base_order = labels.and_then(|trained| {
        let names = (model.config().class_names(trained.len()))
            .or_else(|| crate::data::numbered_classes(trained))?;
        let order = crate::data::class_order(&names, trained)?;
        (names.as_slice() != trained).then_some((names, order))
    });
    let head_in_base_order = match &base_order {
        Some((_, order)) => Some(model.classifier_in_order(backend, order)?),
        None => None,
    };
    let labels = base_order
        .as_ref()
        .map(|(names, _)| names.as_slice())
        .or(labels);
    let value_of = |p: &crate::nn::Param<B>| match (&head_in_base_order, p.name.as_str()) {
        (Some((weight, _)), "classifier.weight") => weight.clone(),
        (Some((_, bias)), "classifier.bias") => bias.clone(),
        _ => p.value.clone(),
    };
    let lora_layers = plan.lora_layers();
    let wrapped = |name: &str| {
        lora_layers.iter().any(|&l| {
            lora.targets
                .iter()
                .filter(|&&t| !lora.leaves_out(l, t))
                .any(|t| name.starts_with(&format!("bert.encoder.layer.{l}.{}.", t.module())))
        })
    };
    // Names as transformers gives them to the model's family (RoBERTa's and ELECTRA's head
    // and prefix).
    let family = model.config().family();
    let mut tensors: Vec<(String, Tensor<B>)> = Vec::new();
    for p in model.params().into_iter().filter(|p| p.trainable) {
        let key = if p.name.contains(".lora_") {
            p.name.clone()
        } else if wrapped(&p.name) && p.name.ends_with(".bias") {
            p.name.replace(".bias", ".base_layer.bias")
        } else {
            p.name.clone()
        };
        tensors.push((
            format!("base_model.model.{}", family.hf_name(&key)),
            value_of(p),
        ));
    }
    // The layers grouped by the maps they adapt (one group unless some leave maps out), each
    // group one alternative of the pattern PEFT matches whole module names against.
    let mut groups: BTreeMap<Vec<LoraTarget>, Vec<usize>> = BTreeMap::new();
    for &l in &lora_layers {
        let adapted = lora
            .targets
            .iter()
            .copied()
            .filter(|&t| !lora.leaves_out(l, t));
        groups.entry(adapted.collect()).or_default().push(l);
    }
    let layer_prefix = family.hf_name("bert.encoder.layer").replace('.', "\\.");
    let target_modules = groups
        .iter()
        .map(|(targets, layers)| {
            let layers_alt = layers
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join("|");
            let modules_alt = targets
                .iter()
                .map(|t| family.hf_layer_module(t.module()).replace('.', "\\."))
                .collect::<Vec<_>>()
                .join("|");
            format!("{layer_prefix}\\.({layers_alt})\\.({modules_alt})")
        })
        .collect::<Vec<_>>()
        .join("|");
    let trains_biases = plan
        .strata
        .iter()
        .any(|s| s.trains_biases() && *s != Stratum::Full);
    // Everything else that trains goes where PEFT keeps it trainable when training goes on,
    // and saves it again: biases under `bias: "all"` (PEFT cannot name some layers' biases
    // only; it trains them all, a superset of the plan), LayerNorms and the embeddings as
    // modules saved whole (their tensors the file does not hold start from the base).
    let mut modules_to_save = vec!["classifier".to_string()];
    // RoBERTa's and ELECTRA's `classifier` holds the dense map BERT calls its pooler.
    if plan.train_pooler && !family.pooler_is_head() {
        modules_to_save.push("pooler".into());
    }
    if plan.train_layer_norm_weights {
        for (l, _) in plan
            .strata
            .iter()
            .enumerate()
            .filter(|(_, s)| **s != Stratum::Frozen)
        {
            for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
                modules_to_save.push(family.hf_name(&format!("bert.encoder.layer.{l}.{norm}")));
            }
        }
    }
    if plan.train_embeddings {
        modules_to_save.push(family.hf_name("bert.embeddings"));
        if model.bert.embeddings.project.is_some() {
            modules_to_save.push(family.hf_name("bert.embeddings_project"));
        }
    }
    // PEFT restores a module in `modules_to_save` whole: a tensor of it that does not train
    // (a LayerNorm's bias under LoRA, whose scale trains) is written with its base value,
    // or PEFT's load fails on the missing key.
    let pooler = family.hf_name("bert.pooler");
    let saved_whole = |name: &str| {
        let name = family.hf_name(name);
        modules_to_save.iter().any(|m| {
            let m = if m == "pooler" { &pooler } else { m };
            name.starts_with(&format!("{m}."))
        })
    };
    for p in model
        .params()
        .into_iter()
        .filter(|p| !p.trainable && saved_whole(&p.name))
    {
        tensors.push((
            format!("base_model.model.{}", family.hf_name(&p.name)),
            value_of(p),
        ));
    }
    // PEFT matches each key against the end of a module's name, as a regular expression:
    // the whole name, dots escaped, picks out that one map.
    let pattern_key = |o: &LoraOverride| {
        family
            .hf_name(&format!(
                "bert.encoder.layer.{}.{}",
                o.layer,
                o.target.module()
            ))
            .replace('.', "\\.")
    };
    // Each names the maps whose value differs from the config's.
    let patterns = |value: &dyn Fn(&LoraOverride) -> Option<serde_json::Value>| {
        lora.overrides
            .iter()
            .filter_map(|o| value(o).map(|v| (pattern_key(o), v)))
            .collect::<serde_json::Map<_, _>>()
    };
    let rank_pattern = patterns(&|o| (o.rank != lora.rank).then(|| json!(o.rank)));
    let alpha_pattern = patterns(&|o| (o.alpha != lora.alpha).then(|| json!(o.alpha)));
    let config = json!({
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_model_name_or_path,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": target_modules,
        "bias": if trains_biases { "all" } else { "none" },
        "modules_to_save": modules_to_save,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": lora.dora,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
    });
    let names = [
        super::peft_import::PEFT_WEIGHTS_FILE,
        super::peft_import::PEFT_CONFIG_FILE,
        super::peft_import::SPAFIT_EXPORT_FILE,
    ];
    // What a killed export left staged here is replaced (the folder is this run's: the
    // caller checked that, and holds its lock).
    for path in names.iter().flat_map(|name| staged_copies(dir, name)) {
        std::fs::remove_file(&path).map_err(|source| Error::Io {
            path,
            error: source,
        })?;
    }
    // All three written in full before any is renamed into place: a full disk or a kill
    // while writing leaves the folder as it was, and the renames themselves take moments.
    // The weights (the embeddings, where they train) a tensor at a time.
    let streamed = tensors
        .iter()
        .map(|(name, t)| StreamedTensor::on_backend(backend, name.clone(), t))
        .collect();
    let (weights, weights_sha256) = stage_streamed(&dir.join(names[0]), streamed)?;
    // Kept out of adapter_config.json: older PEFT versions reject unknown keys there. The
    // class names live here because PEFT keeps them in the base model's config, which an
    // adapter does not carry; spafit's import reads them back. The weights' hash ties the
    // note to them: PEFT may save another adapter into this folder later and leave the note.
    let provenance = json!({
        "method": plan.method.to_string(),
        "boundaries": plan.boundaries,
        "trained_biases_included": trains_biases,
        "labels": labels,
        "max_len": max_len,
        "text_pairs": inputs.text_pairs,
        "multi_label": model.is_multi_label(),
        "adapter_model_sha256": weights_sha256,
        "base_encoder_sha256": base.map(WeightsFile::encoder_sha256).transpose()?,
        "run": run_dir.map(run_identity),
    });
    let config = serde_json::to_vec_pretty(&config)
        .map_err(|e| Error::invalid("peft export", e.to_string()))?;
    let provenance = serde_json::to_vec_pretty(&provenance)
        .map_err(|e| Error::invalid("peft export", e.to_string()))?;
    let config = stage_atomic(&dir.join(names[1]), &config)?;
    let provenance = stage_atomic(&dir.join(names[2]), &provenance)?;
    for file in [weights, config, provenance] {
        file.commit()?;
    }
    Ok(match base_order {
        Some((exported, _)) => ExportedClassOrder::BaseOrder { exported },
        None => ExportedClassOrder::AsTrained,
    })
}

/// The first file or folder in `dir` that belongs to a spafit adapter or training run
/// (`adapter.json`, its weights, `metrics.jsonl`, `best/`, `last/`): a PEFT export must not
/// go there.
pub fn spafit_file_in(dir: &Path) -> Option<PathBuf> {
    let names = [
        super::MANIFEST_FILE,
        super::WEIGHTS_FILE,
        "metrics.jsonl",
        "best",
        "last",
    ];
    super::first_present(dir, &names)
}

/// A run folder as recorded in `spafit_export.json`: its absolute, resolved path when it
/// exists, as written otherwise.
fn run_identity(run_dir: &Path) -> String {
    std::fs::canonicalize(run_dir)
        .unwrap_or_else(|_| run_dir.to_path_buf())
        .display()
        .to_string()
}

/// Whether the PEFT export in `dir` was written by the training run whose output folder is
/// `run_dir` (as `spafit_export.json` records it) and is still what that run wrote (the
/// weights' hash: PEFT may have saved another adapter there since): only then may resuming
/// that run replace it.
pub fn exported_by_run(dir: &Path, run_dir: &Path) -> bool {
    // An export of this run killed while renaming its files into place: its note is staged.
    let identity = run_identity(run_dir);
    let staged_by_run = staged_copies(dir, super::peft_import::SPAFIT_EXPORT_FILE)
        .into_iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .filter_map(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .any(|json| json.get("run").and_then(|r| r.as_str()) == Some(identity.as_str()));
    if staged_by_run {
        return true;
    }
    let note = dir.join(super::peft_import::SPAFIT_EXPORT_FILE);
    let Ok(text) = std::fs::read_to_string(note) else {
        return false;
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let weights = dir.join(super::peft_import::PEFT_WEIGHTS_FILE);
    let Ok(weights_sha256) = super::atomic::file_sha256(&weights) else {
        return false;
    };
    json.get("run").and_then(|r| r.as_str()) == Some(identity.as_str())
        && json.get("adapter_model_sha256").and_then(|h| h.as_str())
            == Some(weights_sha256.as_str())
}

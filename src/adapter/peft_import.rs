//! Import of adapters that Python PEFT wrote (`save_pretrained`): LoRA on BERT's encoder
//! layers, the saved classifier, and any biases (or other base tensors) stored beside them.
//!
//! The adapted modules are read from two sources that must agree: the config's
//! `target_modules` (as PEFT matches it) and the `lora_A`/`lora_B` tensors in the file.
//! The plan spafit trains with when training continues is the nearest it has: LoRA where the
//! file has it, and every bias of a layer whose biases the file stores (see
//! [`PeftImport::notes`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::peft_config::PeftLoraSettings;
use crate::backend::Backend;
use crate::checkpoint::{Checkpoint, WeightsFile};
use crate::error::{Error, Result};
use crate::model::BertClassifier;
use crate::nn::{LoraConfig, LoraOverride, LoraSite, LoraTarget, Stratum};
use crate::peft::{Method, PeftPlan};

/// PEFT's adapter config file.
pub const PEFT_CONFIG_FILE: &str = "adapter_config.json";
/// PEFT's adapter weights file.
pub const PEFT_WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PREFIX: &str = "base_model.model.";

/// What an import found beyond the model itself.
#[derive(Clone, Debug, PartialEq)]
pub struct PeftImport {
    /// The plan the imported model is under (and trains with, when training continues).
    pub plan: PeftPlan,
    /// `base_model_name_or_path` from the config: informational (PEFT stores no hash).
    pub base_model_name_or_path: Option<String>,
    /// Model parameters set from the file, by spafit name (DoRA's magnitudes as
    /// `<module>.lora_magnitude_vector`).
    pub loaded: Vec<String>,
    /// Tensors of the file that PEFT itself does not use either: the frozen originals of
    /// modules saved whole (`...original_module...`) and the wrapper's copies
    /// (`...modules_to_save...`) of tensors also stored under their plain names.
    pub ignored: Vec<String>,
    /// Tensors set from the file that stay frozen under the nearest spafit plan (a module
    /// saved whole, the embeddings' LayerNorm bias of `bias = "all"`): evaluation uses them,
    /// but a spafit adapter stores only trainable tensors, so training cannot continue from
    /// such an adapter without losing them.
    pub kept_frozen: Vec<String>,
    /// What a user continuing training should know: trainable tensors the file did not
    /// store (they start from the base model).
    pub notes: Vec<String>,
    /// The head's class names, when `spafit_export.json` (written beside a spafit export)
    /// records them; PEFT itself records none (its adapter's model takes the base's
    /// `id2label`, which [`AdapterHead::default_kind_naming`] can be given).
    ///
    /// [`AdapterHead::default_kind_naming`]: super::AdapterHead::default_kind_naming
    pub labels: Option<Vec<String>>,
    /// The tokens per example the training texts were cut to, when `spafit_export.json`
    /// records it (a spafit export does); PEFT itself records none.
    pub max_len: Option<usize>,
    /// Whether the training examples were text pairs, when `spafit_export.json` records it
    /// (a spafit export does); PEFT itself records none.
    pub text_pairs: Option<bool>,
    /// Whether the head is a multi-label classifier's: as `spafit_export.json` records it,
    /// else where the base's `problem_type` is `multi_label_classification` (which
    /// transformers gives the model PEFT trained on), else unknown.
    pub multi_label: Option<bool>,
    /// What every use of the adapter should know: a `spafit_export.json` whose class names
    /// are left unused because it describes other weights (the adapter was saved again).
    pub warnings: Vec<String>,
    /// The LoRA B matrices (named as the file names them) that PEFT keeps frozen while it
    /// trains, with the `init_lora_weights` that says so (MiCA): they compute as any LoRA
    /// adapter's, but a spafit run would train them, so training cannot continue from it.
    pub frozen_in_peft_training: Option<(String, Vec<String>)>,
}

/// spafit's note beside an exported PEFT adapter: the plan it came from, the class names,
/// the inputs' cut and kind, and the weights and base it describes.
pub const SPAFIT_EXPORT_FILE: &str = "spafit_export.json";

/// What `spafit_export.json` records beside the weights: the class names, the inputs' cut
/// and whether they were pairs.
#[derive(Default)]
struct ExportNote {
    labels: Option<Vec<String>>,
    max_len: Option<usize>,
    text_pairs: Option<bool>,
    /// Whether the head is a multi-label classifier's (absent in notes from before
    /// multi-label heads, whose heads were not).
    multi_label: bool,
    /// The note describes these weights: spafit exported them.
    describes_weights: bool,
}

/// Refuses a spafit export onto another base than the one its note records (since spafit
/// exports name their base; older notes pass unchecked), before anything else is read: on
/// another base, what its tensors lack or the config does not select would be said instead.
/// The note read is the one [`exported_note`] reads: the one describing these weights.
fn check_recorded_base(
    dir: &Path,
    weights_sha256: &str,
    base: &crate::checkpoint::WeightsFile,
) -> Result<()> {
    let Some((path, json)) = note_describing(dir, weights_sha256) else {
        return Ok(());
    };
    match json.get("base_encoder_sha256").and_then(|h| h.as_str()) {
        Some(trained_on) => super::store::check_encoder_identity(trained_on, &path, base),
        None => Ok(()),
    }
}

/// The `spafit_export.json` that describes the weights of SHA-256 `weights_sha256`, and its
/// JSON: the committed one, else one staged by an export killed between its renames (the
/// note is renamed last, so its staged copy is the one beside those weights).
fn note_describing(dir: &Path, weights_sha256: &str) -> Option<(PathBuf, serde_json::Value)> {
    std::iter::once(dir.join(SPAFIT_EXPORT_FILE))
        .chain(super::atomic::staged_copies(dir, SPAFIT_EXPORT_FILE))
        .filter_map(|path| {
            let text = std::fs::read_to_string(&path).ok()?;
            Some((path, serde_json::from_str::<serde_json::Value>(&text).ok()?))
        })
        .find(|(_, json)| {
            json.get("adapter_model_sha256").and_then(|h| h.as_str()) == Some(weights_sha256)
        })
}

/// What `spafit_export.json` records for a head of `outputs` outputs, if the file is there and
/// describes these weights (their SHA-256 `weights_sha256`: PEFT may have saved another
/// adapter here since, leaving the note; then `stale` says what is ignored): class names (for
/// a classifier), `max_len` and `text_pairs`. Names that do not fit the head, a `max_len` that
/// is not a positive count, or a `text_pairs` that is not a boolean are an error naming the
/// file (its recorded base, [`check_recorded_base`]'s).
fn exported_note(
    dir: &Path,
    outputs: usize,
    weights_sha256: &str,
    stale: &mut Vec<String>,
) -> Result<ExportNote> {
    let committed = dir.join(SPAFIT_EXPORT_FILE);
    // An export killed between its renames leaves its note staged beside the weights it
    // describes: that note is the one to read, as `best/` reads its staged manifest. Any
    // other staged note is a leftover and is passed over.
    let staged_note = note_describing(dir, weights_sha256)
        .map(|(path, _)| path)
        .filter(|path| *path != committed);
    // Killed before adapter_config.json was renamed too (weights, config and note go in that
    // order): the config in place is an earlier export's, whose alpha and targets need not
    // be these weights'.
    if staged_note.is_some() && !super::atomic::staged_copies(dir, PEFT_CONFIG_FILE).is_empty() {
        return Err(Error::Format {
            path: dir.join(PEFT_CONFIG_FILE),
            detail: format!(
                "an export into {} was stopped while renaming its files into place, before \
                 this file: it may describe other weights than {PEFT_WEIGHTS_FILE}; export \
                 again (or resume the run that exported it)",
                dir.display()
            ),
        });
    }
    let path = staged_note.unwrap_or(committed);
    if !path.is_file() {
        return Ok(ExportNote::default());
    }
    let text = crate::text_file::read_utf8(&path)?;
    let bad = |detail: String| Error::Format {
        path: path.clone(),
        detail,
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    if json.get("adapter_model_sha256").and_then(|h| h.as_str()) != Some(weights_sha256) {
        let recorded = |key: &str| json.get(key).is_some_and(|v| !v.is_null());
        let ignored: Vec<String> = [
            ("labels", format!("its class names (the {outputs} outputs take the base's id2label names, or, where it names none, are the classes 0 to {} where the data's are those numbers, else the data's classes in order; custom data: --labels names them)", outputs.saturating_sub(1))),
            ("max_len", "its cut of the texts (--max-len decides)".to_string()),
            ("text_pairs", "whether the texts were pairs".to_string()),
        ]
        .into_iter()
        .filter(|(key, _)| recorded(key))
        .map(|(_, what)| what)
        .collect();
        if !ignored.is_empty() {
            stale.push(format!(
                "{} describes other weights than {PEFT_WEIGHTS_FILE} holds (it was saved again \
                 since), so what it records is ignored: {}",
                path.display(),
                ignored.join("; ")
            ));
        }
        return Ok(ExportNote::default());
    }
    let max_len = match json.get("max_len") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|&n| n > 0)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad(format!("`max_len` is {v}, not a positive count of tokens")))?,
        ),
    };
    // Recorded since spafit exports carry it; older notes leave it unknown.
    let text_pairs = match json.get("text_pairs") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Bool(pairs)) => Some(*pairs),
        Some(v) => return Err(bad(format!("`text_pairs` is {v}, not true or false"))),
    };
    let multi_label = match json.get("multi_label") {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(multi)) => *multi,
        Some(v) => return Err(bad(format!("`multi_label` is {v}, not true or false"))),
    };
    // A regression head has no class names to take.
    let labels = match json.get("labels").filter(|_| outputs >= 2) {
        None | Some(serde_json::Value::Null) => {
            return Ok(ExportNote {
                labels: None,
                max_len,
                text_pairs,
                multi_label,
                describes_weights: true,
            })
        }
        Some(serde_json::Value::Array(names)) => names
            .iter()
            .map(|n| n.as_str().map(str::to_string))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| bad("`labels` must be a list of class names".into()))?,
        Some(other) => return Err(bad(format!("`labels` is {other}, not a list of names"))),
    };
    if let Some(problem) = crate::data::label_names_problem(&labels) {
        return Err(bad(format!("`labels`: {problem}")));
    }
    if labels.len() != outputs {
        return Err(bad(format!(
            "{} class names for a classifier of {outputs} outputs",
            labels.len()
        )));
    }
    Ok(ExportNote {
        labels: Some(labels),
        max_len,
        text_pairs,
        multi_label,
        describes_weights: true,
    })
}

/// Whether `dir` holds a PEFT adapter.
pub fn is_peft_adapter(dir: &Path) -> bool {
    dir.join(PEFT_CONFIG_FILE).is_file()
}

/// A LoRA module of the file, by its spafit/Hugging Face module path.
#[derive(Default)]
struct LoraPair {
    a: Option<String>,
    b: Option<String>,
    /// DoRA's magnitudes, one per output row (`use_dora`).
    magnitude: Option<String>,
}

/// Loads the PEFT adapter in `dir` onto the base `checkpoint`.
pub fn import_peft<B: Backend>(
    dir: &Path,
    checkpoint: &Checkpoint,
    backend: &B,
) -> Result<(BertClassifier<B>, PeftImport)> {
    // A LoRA adapter's base keeps its weights frozen.
    crate::model::while_loading(backend, true, import(dir, checkpoint, backend))
}

fn import<B: Backend>(
    dir: &Path,
    checkpoint: &Checkpoint,
    backend: &B,
) -> Result<(BertClassifier<B>, PeftImport)> {
    super::require_adapter_folder(dir)?;
    let config_path = dir.join(PEFT_CONFIG_FILE);
    let weights_path = dir.join(PEFT_WEIGHTS_FILE);
    if !weights_path.is_file() && dir.join("adapter_model.bin").is_file() {
        return Err(Error::Format {
            path: dir.join("adapter_model.bin"),
            detail: "a pickled PyTorch file; save the adapter with safe_serialization=True \
                     (adapter_model.safetensors)"
                .into(),
        });
    }
    let settings = PeftLoraSettings::read(&config_path)?;
    let file = WeightsFile::open(&weights_path)?;
    check_recorded_base(dir, file.sha256()?, &checkpoint.weights)?;
    let bad_tensor = |detail: String| Error::Format {
        path: weights_path.clone(),
        detail,
    };
    let config = &checkpoint.config;
    let layers = config.num_hidden_layers;
    // The file names tensors as transformers does; the model as BERT does.
    let family = config.family();

    // The model's modules, as PEFT's `modules_to_save` matching sees them: every dotted
    // prefix of the base's tensor names (under the model's prefix, which a base saved as a
    // bare encoder leaves out) and of the adapter's own (a head the base lacks).
    let prefixed = |name: &String| -> String {
        let first = name.split('.').next().unwrap_or("");
        match family.encoder_modules().contains(&first) {
            true => format!("{}.{name}", family.prefix()),
            false => name.clone(),
        }
    };
    let base_names: Vec<String> = checkpoint.weights.names().iter().map(prefixed).collect();
    let module_names: BTreeSet<String> = base_names
        .iter()
        .map(String::as_str)
        .chain(
            file.names()
                .iter()
                .filter_map(|n| n.strip_prefix(PREFIX))
                .filter(|key| !key.contains(".lora_") && !key.contains(".modules_to_save.")),
        )
        .flat_map(|name| {
            let parts: Vec<&str> = name.split('.').collect();
            (1..parts.len())
                .map(|n| parts[..n].join("."))
                .collect::<Vec<_>>()
        })
        .collect();
    if let Some([outer_entry, outer, inner_entry, inner]) =
        settings.nested_saved_modules(&module_names)
    {
        let which = match outer_entry == inner_entry {
            true => format!("`{outer_entry}` matches both `{outer}` and `{inner}` inside it"),
            false => format!(
                "`{outer_entry}` matches `{outer}` and `{inner_entry}` matches `{inner}` inside it"
            ),
        };
        return Err(Error::Format {
            path: config_path.clone(),
            detail: format!(
                "`modules_to_save`: {which} (PEFT matches by the end of a module's name): each \
                 keeps its own copy, and the saved file cannot say which one the model ran \
                 with (PEFT's own loader refuses it too); save the adapter again with modules \
                 that do not lie inside one another"
            ),
        });
    }

    // Sort the file's tensors into LoRA pairs and base-model parameters.
    let mut lora: BTreeMap<String, LoraPair> = BTreeMap::new();
    let mut others: BTreeMap<String, String> = BTreeMap::new();
    let mut wrapped: Vec<(String, String)> = Vec::new();
    let mut ignored: Vec<String> = Vec::new();
    for name in file.names() {
        let key = name.strip_prefix(PREFIX).ok_or_else(|| {
            bad_tensor(format!(
                "tensor `{name}` is not under `{PREFIX}`: not a PEFT model's state"
            ))
        })?;
        if let Some(module) = key.strip_suffix(".lora_A.weight") {
            lora.entry(family.internal_name(module)).or_default().a = Some(name.clone());
        } else if let Some(module) = key.strip_suffix(".lora_B.weight") {
            lora.entry(family.internal_name(module)).or_default().b = Some(name.clone());
        } else if let Some(module) = key
            .strip_suffix(".lora_magnitude_vector")
            .or_else(|| key.strip_suffix(".lora_magnitude_vector.weight"))
        {
            // Without `use_dora` PEFT would compute plain LoRA and ignore them.
            if !settings.dora {
                return Err(bad_tensor(format!(
                    "tensor `{name}` is a DoRA magnitude, but `use_dora` is not true in \
                     {PEFT_CONFIG_FILE}: which adapter was this file saved from?"
                )));
            }
            lora.entry(family.internal_name(module))
                .or_default()
                .magnitude = Some(name.clone());
        } else if key.contains(".lora_") {
            return Err(bad_tensor(format!(
                "tensor `{name}`: spafit supports LoRA's A and B matrices and DoRA's magnitudes \
                 only (not embedding adapters or LoRA biases)"
            )));
        } else if key.contains(".original_module.") {
            ignored.push(name.clone());
        } else if key.contains(".modules_to_save.") {
            wrapped.push((
                family.internal_name(&unwrap_saved_module(key)),
                name.clone(),
            ));
        } else {
            // A wrapped module keeps its own weight and bias under `base_layer`.
            others.insert(
                family.internal_name(&key.replace(".base_layer.", ".")),
                name.clone(),
            );
        }
    }
    // Two wrapper copies of one tensor come from `modules_to_save` naming modules inside one
    // another (`pooler` and `dense`): each wrapper keeps its own copy and which one the model
    // ran with cannot be told from the file (PEFT itself fails to load it).
    let mut copies: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (plain, name) in &wrapped {
        copies.entry(plain).or_default().push(name);
    }
    if let Some((plain, names)) = copies.iter().find(|(_, names)| names.len() > 1) {
        return Err(bad_tensor(format!(
            "`{}` is stored as {} copies saved whole ({}): the adapter's `modules_to_save` \
             names modules inside one another, and which copy the model ran with cannot be \
             told (PEFT's own loader refuses this file too); save it again with each module \
             listed once, the outer one or the inner ones",
            family.hf_name(plain),
            names.len(),
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    // `bias = "all"` also stores the wrapper's copy of a module saved whole; PEFT loads the
    // plain name, so the copy counts only where the plain name is absent.
    for (plain, name) in wrapped {
        match others.entry(plain) {
            std::collections::btree_map::Entry::Occupied(_) => ignored.push(name),
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(name);
            }
        }
    }

    let layer_of = |name: &str| -> Option<usize> {
        name.strip_prefix("bert.encoder.layer.")?
            .split('.')
            .next()?
            .parse()
            .ok()
    };
    // An adapter made for a base with more layers says so, rather than naming one tensor.
    let base_name = || {
        settings
            .base_model_name_or_path
            .clone()
            .unwrap_or_else(|| "another base model".into())
    };
    let deepest = lora
        .keys()
        .chain(others.keys())
        .filter_map(|n| Some((layer_of(n)?, n)))
        .max();
    let file_layers = deepest.map(|(l, _)| l.saturating_add(1));
    if let Some((l, name)) = deepest.filter(|&(l, _)| l >= layers) {
        return Err(Error::Mismatch {
            path: weights_path.clone(),
            detail: format!(
                "`{}`: the adapter has tensors for encoder layer {l} but this base model \
                 has {layers} layers (the adapter was made for {})",
                family.hf_name(name),
                base_name()
            ),
        });
    }

    // The modules the config selects, and the adapters the file holds, must be the same.
    let mut selected: BTreeSet<String> = BTreeSet::new();
    for l in 0..layers {
        for t in LoraTarget::ALL {
            let module = format!("bert.encoder.layer.{l}.{}", t.module());
            if settings.targets(&family.hf_name(&module), Some(l), true, false) {
                selected.insert(module);
            }
        }
    }
    let unsupported = [
        ("bert.pooler.dense", true, false),
        ("classifier", true, true),
        ("bert.embeddings.word_embeddings", false, false),
        ("bert.embeddings.position_embeddings", false, false),
    ];
    let family_has = [
        (
            ("bert.embeddings.token_type_embeddings", false, false),
            config.has_token_types(),
        ),
        (
            ("bert.embeddings_project", true, false),
            config.projects_embeddings(),
        ),
    ];
    let present = family_has.iter().filter(|(_, has)| *has).map(|(m, _)| m);
    for &(module, linear, head) in unsupported.iter().chain(present) {
        let module = family.hf_name(module);
        if settings.targets(&module, None, linear, head) {
            return Err(Error::Format {
                path: config_path.clone(),
                detail: format!(
                    "`target_modules` selects `{module}`; spafit puts LoRA only on the six linear \
                     maps of encoder layers"
                ),
            });
        }
    }
    for (module, pair) in &lora {
        if !selected.contains(module) {
            let module = family.hf_name(module);
            let (fields, verb) = settings.selection_fields();
            return Err(bad_tensor(format!(
                "LoRA tensors for `{module}`, which {fields} in {PEFT_CONFIG_FILE} {verb} not \
                 select (or this model has no such module; its encoder layers are 0 to {})",
                layers.saturating_sub(1)
            )));
        }
        if pair.a.is_none() || pair.b.is_none() {
            let missing = if pair.a.is_none() { "lora_A" } else { "lora_B" };
            let module = family.hf_name(module);
            return Err(bad_tensor(format!(
                "`{PREFIX}{module}.{missing}.weight` is missing"
            )));
        }
        if settings.dora && pair.magnitude.is_none() {
            let module = family.hf_name(module);
            return Err(bad_tensor(format!(
                "`{PREFIX}{module}.lora_magnitude_vector` is missing: `use_dora` is true in \
                 {PEFT_CONFIG_FILE}, and each DoRA adapter scales its rows to its magnitudes"
            )));
        }
    }
    // In layer order (`layer.10` sorts before `layer.2` as text).
    let first_missing = selected
        .iter()
        .filter(|m| !lora.contains_key(*m))
        .min_by_key(|m| (layer_of(m), m.as_str()));
    if let Some(module) = first_missing {
        // An adapter made for fewer layers leaves every layer past its own without tensors,
        // where the config selects maps in each of them; a config that skips some of those
        // layers points elsewhere (tensors missing from the file).
        let selects_every_layer_from =
            |n: usize| (n..layers).all(|l| selected.iter().any(|m| layer_of(m) == Some(l)));
        let fewer_layers = match (layer_of(module), file_layers) {
            (Some(l), Some(n)) if l >= n && selects_every_layer_from(n) => format!(
                "; the adapter's tensors stop at layer {} of this {layers}-layer base model: was \
                 it made for {} with fewer layers?",
                n - 1,
                base_name()
            ),
            _ => String::new(),
        };
        return Err(bad_tensor(format!(
            "no LoRA tensors for `{}`, which `target_modules` selects{fewer_layers}",
            family.hf_name(module)
        )));
    }
    if selected.is_empty() {
        return Err(Error::Format {
            path: config_path,
            detail: match settings.layers_to_transform().filter(|l| !l.is_empty()) {
                Some(wanted) => format!(
                    "`target_modules` with `layers_to_transform` {wanted:?} selects no linear map \
                     of this model's encoder layers (it has {layers}: 0 to {})",
                    layers.saturating_sub(1)
                ),
                None => {
                    "`target_modules` selects no linear map of this model's encoder layers".into()
                }
            },
        });
    }

    // The targets are every map adapted in some layer.
    let mut per_layer: BTreeMap<usize, BTreeSet<LoraTarget>> = BTreeMap::new();
    for l in 0..layers {
        for t in LoraTarget::ALL {
            if selected.contains(&format!("bert.encoder.layer.{l}.{}", t.module())) {
                per_layer.entry(l).or_default().insert(t);
            }
        }
    }
    let targets: BTreeSet<LoraTarget> = per_layer.values().flatten().copied().collect();
    // `rank_pattern` and `alpha_pattern`: the adapters whose rank or scale is not the
    // config's own.
    let global = (settings.rank, settings.spafit_alpha());
    let mut overrides = Vec::new();
    let mut adapted_modules = Vec::new();
    for (&layer, layer_targets) in &per_layer {
        for &target in layer_targets {
            let module = family.hf_name(&format!("bert.encoder.layer.{layer}.{}", target.module()));
            let (rank, alpha) = settings.module_rank_and_alpha(&module);
            adapted_modules.push(module);
            if (rank, alpha) != global {
                overrides.push(LoraOverride {
                    layer,
                    target,
                    rank,
                    alpha,
                });
            }
        }
    }
    // Maps adapted in some layers but not in others are left out where they are not.
    let unadapted: Vec<LoraSite> = per_layer
        .iter()
        .flat_map(|(&layer, layer_targets)| {
            targets
                .iter()
                .filter(|t| !layer_targets.contains(t))
                .map(move |&target| LoraSite { layer, target })
        })
        .collect();

    // The head PEFT saved (modules_to_save) fixes the number of outputs; an adapter that
    // saved none, or only part of one (`bias = "all"` saves the head's bias alone), runs in PEFT
    // on the base's own head for the rest.
    let head_parts = ["classifier.weight", "classifier.bias"];
    let saved_head = head_parts.map(|n| others.contains_key(n));
    let base_outputs = checkpoint.classifier_outputs();
    // Why the base cannot supply what the adapter lacks of the head.
    // (RoBERTa's token classifier names its one linear map `classifier`, where its sequence
    // classifier has `classifier.out_proj`: no head is read from it, but `architectures` says.)
    let base_head_missing = || match checkpoint.other_kind_of_head() {
        Some(kind) => format!("the base model's own head is no sequence classifier's ({kind})"),
        None => match checkpoint.foreign_head() {
            Some(architecture) => format!(
                "the base model's own head is no sequence classifier's (`architectures` is \
                 `{architecture}`)"
            ),
            None => "the base model has no sequence classifier's head of its own".to_string(),
        },
    };
    let head_shape = match others.get("classifier.weight").and_then(|n| file.shape(n)) {
        Some(shape) => shape,
        None => match base_outputs {
            Some(outputs) => vec![outputs, config.hidden_size],
            None => {
                return Err(bad_tensor(format!(
                    "no `base_model.model.{}`, and {} to run it on: the adapter must carry its \
                     classifier (modules_to_save)",
                    family.hf_name("classifier.weight"),
                    base_head_missing()
                )))
            }
        },
    };
    if head_shape.len() != 2 || head_shape[1] != config.hidden_size || head_shape[0] == 0 {
        return Err(Error::Mismatch {
            path: weights_path,
            detail: format!(
                "the classifier has shape {head_shape:?} but this base model's hidden size is {} \
                 (the adapter was made for {})",
                config.hidden_size,
                settings
                    .base_model_name_or_path
                    .as_deref()
                    .unwrap_or("another base model")
            ),
        });
    }
    let num_labels = head_shape[0];
    // A head `modules_to_save` names is saved whole: half of it is a damaged file (PEFT's
    // loader fails on it with a KeyError), not a part left to the base.
    let classifier_module = family.hf_name("classifier");
    if saved_head[0] != saved_head[1] && settings.saved_whole(&classifier_module) {
        let (has, lacks) = match saved_head[0] {
            true => ("weight", "classifier.bias"),
            false => ("bias", "classifier.weight"),
        };
        return Err(bad_tensor(format!(
            "no `base_model.model.{}` beside the classifier's {has}, though `modules_to_save` \
             saves `{classifier_module}` whole: the file is missing a tensor",
            family.hf_name(lacks)
        )));
    }
    if saved_head == [true, false] && base_outputs != Some(num_labels) {
        return Err(bad_tensor(format!(
            "no `base_model.model.{}` beside the classifier's weight, and {}: the adapter must \
             carry all of its classifier (modules_to_save)",
            family.hf_name("classifier.bias"),
            match base_outputs {
                Some(n) => format!("the base model's own head has {n} outputs, not {num_labels}"),
                None => base_head_missing(),
            }
        )));
    }

    // Strata: LoRA where the file has it; biases train in a layer whose biases it stores. A
    // LayerNorm's bias alone does not count: a LayerNorm saved whole (its scale trains)
    // carries its bias along, trained or not.
    let layer_stores_biases: BTreeSet<usize> = others
        .keys()
        .filter(|n| n.ends_with(".bias") && !n.ends_with("LayerNorm.bias"))
        .filter_map(|n| layer_of(n))
        .collect();
    let strata: Vec<Stratum> = (0..layers)
        .map(
            |l| match (per_layer.contains_key(&l), layer_stores_biases.contains(&l)) {
                (true, true) => Stratum::LoraAndBias,
                (true, false) => Stratum::LoraOnly,
                (false, true) => Stratum::BiasOnly,
                (false, false) => Stratum::Frozen,
            },
        )
        .collect();
    let train_pooler = others.keys().any(|n| n.starts_with("bert.pooler."));
    // LayerNorm scales and the embeddings train when the file holds exactly what a plan that
    // trains them holds (spafit's own export does); anything less is used as it is.
    let non_frozen: BTreeSet<usize> = (0..layers)
        .filter(|&l| strata[l] != Stratum::Frozen)
        .collect();
    let norm_layers: BTreeSet<usize> = others
        .keys()
        .filter(|n| n.ends_with("LayerNorm.weight"))
        .filter_map(|n| layer_of(n))
        .collect();
    let train_layer_norm_weights = !non_frozen.is_empty()
        && norm_layers == non_frozen
        && non_frozen.iter().all(|l| {
            [
                "attention.output.LayerNorm.weight",
                "output.LayerNorm.weight",
            ]
            .iter()
            .all(|n| others.contains_key(&format!("bert.encoder.layer.{l}.{n}")))
        });
    // ELECTRA's projection trains with the embeddings: a file without it (PEFT's
    // `modules_to_save` naming `electra.embeddings` alone) kept it frozen.
    let projection = [
        "bert.embeddings_project.weight",
        "bert.embeddings_project.bias",
    ];
    let projection = &projection[..if config.projects_embeddings() { 2 } else { 0 }];
    let segments = ["token_type_embeddings.weight"];
    let segments = &segments[..usize::from(config.has_token_types())];
    let positions = ["position_embeddings.weight"];
    let positions = &positions[..usize::from(config.has_position_table())];
    let task_types = ["task_type_embeddings.weight"];
    let task_types = &task_types[..usize::from(config.task_type_rows().is_some())];
    let train_embeddings = [
        "word_embeddings.weight",
        "LayerNorm.weight",
        "LayerNorm.bias",
    ]
    .iter()
    .chain(positions)
    .chain(segments)
    .chain(task_types)
    .map(|n| format!("bert.embeddings.{n}"))
    .chain(projection.iter().map(|n| n.to_string()))
    .all(|n| others.contains_key(&n));
    let (method, boundaries) =
        spafit_shape(&strata).map_or((Method::Lora, None), |b| (Method::Spafit, Some(b)));
    let lora_config = LoraConfig {
        rank: settings.rank,
        alpha: settings.spafit_alpha(),
        dropout: settings.dropout,
        targets: targets.into_iter().collect(),
        overrides,
        unadapted,
        dora: settings.dora,
    };
    let fields = crate::nn::LoraFields {
        rank: "`r`",
        alpha: match settings.rank_stabilized {
            true => "`lora_alpha` × √`r` (`use_rslora`)",
            false => "`lora_alpha`",
        },
        dropout: "`lora_dropout`",
        targets: "`target_modules`",
        override_rank: "`rank_pattern`",
        override_alpha: match settings.rank_stabilized {
            true => "`alpha_pattern` or `lora_alpha`, × √ its rank (`use_rslora`)",
            false => "`alpha_pattern` or `lora_alpha`",
        },
    };
    if let Some(problem) = lora_config.problem(fields) {
        return Err(Error::Format {
            path: config_path.clone(),
            detail: problem,
        });
    }
    let rank_fields = match lora_config
        .overrides
        .iter()
        .any(|o| o.rank != settings.rank)
    {
        true => format!("`r` = {} and `rank_pattern`", settings.rank),
        false => format!("`r` = {}", settings.rank),
    };
    let plan = PeftPlan {
        method,
        strata,
        lora: Some(lora_config),
        boundaries,
        train_embeddings,
        train_pooler,
        train_layer_norm_weights,
    };

    let mut model = BertClassifier::base_for_adapter(checkpoint, backend, num_labels, Some(&plan))?;
    model
        .apply_plan(&plan, &mut |_, shape| backend.zeros(shape))
        .map_err(|e| match e {
            // The plan's LoRA settings are the config's: a rank spafit refuses is its `r`
            // (or one its `rank_pattern` gives).
            Error::InvalidArgument {
                op: "lora config",
                detail,
            } => Error::Format {
                path: config_path.clone(),
                detail: format!("{rank_fields}: {detail}"),
            },
            e => e,
        })?;
    let mut sources: BTreeMap<String, String> = others.clone();
    for (module, pair) in &lora {
        sources.insert(
            format!("{module}.lora_A.weight"),
            pair.a.clone().unwrap_or_default(),
        );
        sources.insert(
            format!("{module}.lora_B.weight"),
            pair.b.clone().unwrap_or_default(),
        );
        if let Some(magnitude) = &pair.magnitude {
            sources.insert(format!("{module}.lora_magnitude_vector"), magnitude.clone());
        }
    }
    let mut loaded = Vec::new();
    let mut untouched_trainable = Vec::new();
    let mut same_as_base = BTreeSet::new();
    for p in model.params_mut() {
        match sources.remove(&p.name) {
            // Shapes are checked on read: a LoRA pair for another hidden size, rank or
            // orientation is refused, naming the tensor.
            Some(stored) => {
                // A frozen weight stored in bf16 as it loaded is compared as the checkpoint
                // holds it, read as the model first read it: a module saved whole equals
                // that, not its bf16 rounding.
                let base = match (p.trainable, p.value.dtype() == backend.float_dtype()) {
                    (true, _) => None,
                    (false, true) => Some(backend.to_f64(&p.value)?),
                    (false, false) => {
                        let read = checkpoint.tensor(backend, &p.name, p.value.shape().clone())?;
                        Some(backend.to_f64(&read)?)
                    }
                };
                // A LoRA pair of the base's sizes but another rank disagrees with the config,
                // not with the base.
                let rank_in_file = lora_rank(&p.name, p.value.dims(), file.shape(&stored));
                p.value = file
                    .tensor(backend, &stored, p.value.shape().clone())
                    .map_err(|e| match e {
                        // Values that are not finite are the file's own fault, not the base's.
                        Error::Format { path, detail }
                            if !detail.contains(crate::checkpoint::NON_FINITE_WEIGHTS) =>
                        {
                            Error::Mismatch {
                                path,
                                detail: format!("{detail} ({})", misfit(&settings, rank_in_file)),
                            }
                        }
                        e => e,
                    })?;
                // A frozen tensor stored with its base value (a module saved whole) changes
                // nothing, and does not keep the adapter from training on.
                if base.is_some_and(|b| backend.to_f64(&p.value).is_ok_and(|v| v == b)) {
                    same_as_base.insert(p.name.clone());
                }
                loaded.push(p.name.clone());
            }
            None if p.trainable => untouched_trainable.push(family.hf_name(&p.name)),
            None => {}
        }
    }
    if let Some((name, stored)) = sources.into_iter().next() {
        return Err(bad_tensor(format!(
            "tensor `{stored}` is not a parameter of this model (`{}`); is the base model {}?",
            family.hf_name(&name),
            settings
                .base_model_name_or_path
                .as_deref()
                .unwrap_or("the one it was made for")
        )));
    }
    let trainable: BTreeSet<String> = model.trainable_names().into_iter().collect();
    // Named as the file names them.
    let kept_frozen: Vec<String> = loaded
        .iter()
        .filter(|n| !trainable.contains(*n) && !same_as_base.contains(*n))
        .map(|n| family.hf_name(n))
        .collect();
    let mut notes = Vec::new();
    let from_base: Vec<String> = head_parts
        .iter()
        .zip(saved_head)
        .filter(|(_, saved)| !saved)
        .map(|(n, _)| family.hf_name(n))
        .collect();
    if !from_base.is_empty() {
        notes.push(format!(
            "the adapter did not save {}: the base's own head supplies {}, which train{} on \
             from its values when training continues",
            from_base.join(" and "),
            if from_base.len() == 1 { "it" } else { "them" },
            if from_base.len() == 1 { "s" } else { "" }
        ));
        untouched_trainable.retain(|n| !from_base.contains(n));
    }
    if !untouched_trainable.is_empty() {
        notes.push(format!(
            "{} trainable tensors are not in the adapter and start from the base model (spafit \
             trains every bias of a layer whose biases train): {}",
            untouched_trainable.len(),
            untouched_trainable.join(", ")
        ));
    }
    if settings.rank_stabilized {
        notes.push(format!(
            "rank-stabilized LoRA (`use_rslora`): its scale `lora_alpha` / √`r` = {} / √{} is \
             spafit's alpha / r with alpha {}, which an adapter or a PEFT export saved from it \
             records (with `use_rslora` false: the same scale){}",
            settings.alpha,
            settings.rank,
            settings.spafit_alpha(),
            match plan.lora.as_ref().is_some_and(|l| !l.overrides.is_empty()) {
                true =>
                    "; so does each adapter `rank_pattern` or `alpha_pattern` sets apart, \
                         its alpha times the square root of its own rank",
                false => "",
            }
        ));
    }
    let unmatched = settings.unmatched_patterns(&adapted_modules);
    if !unmatched.is_empty() {
        let keys: Vec<String> = unmatched
            .iter()
            .map(|(field, key)| format!("`{field}` key `{key}`"))
            .collect();
        notes.push(format!(
            "{} match{} no adapted module and change{} nothing (PEFT warns of {} too)",
            keys.join(", "),
            if keys.len() == 1 { "es" } else { "" },
            if keys.len() == 1 { "s" } else { "" },
            if keys.len() == 1 { "it" } else { "them" },
        ));
    }
    let frozen_in_peft_training = settings.frozen_b_init.clone().map(|init| {
        let b: Vec<String> = lora.values().filter_map(|pair| pair.b.clone()).collect();
        (init, b)
    });
    model.store_frozen_weights(backend)?;
    let mut warnings = Vec::new();
    let note = exported_note(dir, num_labels, file.sha256()?, &mut warnings)?;
    // A spafit export's head was trained here, whatever the base's problem_type; PEFT's own
    // adapter's was trained as the base's problem_type made it, which a multi-label one
    // spafit reads as such.
    let multi_label = match note.describes_weights {
        true => Some(note.multi_label),
        false => checkpoint
            .problem_is_multi_label()
            .map(|multi| multi && num_labels >= 2),
    };
    let trained_as = checkpoint
        .config
        .problem_type_unlike(num_labels, multi_label == Some(true));
    if let Some((p, _)) = trained_as.filter(|_| !note.describes_weights) {
        warnings.push(format!(
            "the base's config.json has `problem_type` `{p}`, which transformers applies to \
             the adapter's head of {num_labels} output(s) as well, so the head was likely \
             trained for it; spafit reads it as {}: its probabilities, scores and loss are not \
             those of the model it was trained in",
            match num_labels {
                1 => "one regression score",
                _ => "one class among its outputs (softmax)",
            }
        ));
    }
    // The adapter's head, as transformers trained it, not the base's own.
    model.set_multi_label(multi_label == Some(true));
    Ok((
        model,
        PeftImport {
            labels: note.labels,
            max_len: note.max_len,
            text_pairs: note.text_pairs,
            multi_label,
            plan,
            base_model_name_or_path: settings.base_model_name_or_path,
            loaded,
            ignored,
            kept_frozen,
            notes,
            warnings,
            frozen_in_peft_training,
        },
    ))
}

/// The plain name of a tensor stored under a `modules_to_save` wrapper:
/// `classifier.modules_to_save.bias` → `classifier.bias`,
/// `bert.pooler.modules_to_save.default.dense.bias` → `bert.pooler.dense.bias`. PEFT drops
/// the adapter's name (`default`, or the name it was saved under) only where it is the
/// second-to-last part, so a longer tail still starts with it.
fn unwrap_saved_module(key: &str) -> String {
    let (head, tail) = key.split_once(".modules_to_save.").unwrap_or((key, ""));
    let tail = match tail.split_once('.') {
        Some((_adapter, rest)) => rest,
        None => tail,
    };
    format!("{head}.{tail}")
}

/// Why a tensor of the file does not fit the model: a LoRA pair of another rank than the
/// config gives it (`ranks`: the model's, the file's), else another base.
fn misfit(settings: &PeftLoraSettings, ranks: Option<(usize, usize)>) -> String {
    match ranks {
        Some((wanted, found)) => {
            format!(
            "the file's adapter has rank {found}, where {} in {PEFT_CONFIG_FILE} give{} it rank \
             {wanted}",
            match settings.rank_pattern.is_empty() {
                true => "`r`",
                false => "`r` and `rank_pattern`",
            },
            if settings.rank_pattern.is_empty() { "s" } else { "" }
        )
        }
        None => format!(
            "does the adapter belong to this base model? it names {}",
            settings
                .base_model_name_or_path
                .as_deref()
                .unwrap_or("none")
        ),
    }
}

/// For a LoRA tensor `name` the model holds as `dims` and the file as `stored`: the two
/// ranks, when the file's tensor differs from the model's in its rank alone.
fn lora_rank(name: &str, dims: &[usize], stored: Option<Vec<usize>>) -> Option<(usize, usize)> {
    // `lora_A` is [r, in], `lora_B` [out, r].
    let rank_axis = match name {
        n if n.ends_with(".lora_A.weight") => 0,
        n if n.ends_with(".lora_B.weight") => 1,
        _ => return None,
    };
    let stored = stored?;
    let other = 1 - rank_axis;
    (dims.len() == 2
        && stored.len() == 2
        && stored[other] == dims[other]
        && stored[rank_axis] != dims[rank_axis])
        .then(|| (dims[rank_axis], stored[rank_axis]))
}

/// SPAFIT's boundaries when the strata are frozen, then bias-only, then LoRA + bias (with
/// at least one LoRA + bias layer).
fn spafit_shape(strata: &[Stratum]) -> Option<(usize, usize)> {
    let n1 = strata.iter().take_while(|s| **s == Stratum::Frozen).count();
    let n2 = n1
        + strata[n1..]
            .iter()
            .take_while(|s| **s == Stratum::BiasOnly)
            .count();
    let top_ok = n2 < strata.len() && strata[n2..].iter().all(|s| *s == Stratum::LoraAndBias);
    top_ok.then_some((n1, n2))
}

#[cfg(test)]
mod tests {
    use super::unwrap_saved_module;

    #[test]
    fn wrapper_names_unwrap_whatever_the_adapter_is_called() {
        for (key, plain) in [
            ("classifier.modules_to_save.bias", "classifier.bias"),
            (
                "bert.pooler.modules_to_save.default.dense.bias",
                "bert.pooler.dense.bias",
            ),
            (
                "bert.pooler.modules_to_save.sst.dense.bias",
                "bert.pooler.dense.bias",
            ),
        ] {
            assert_eq!(unwrap_saved_module(key), plain, "{key}");
        }
    }
}

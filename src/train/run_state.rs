//! A run's resumable state on disk: `last/state.safetensors`, one file written atomically.
//!
//! The trainable weights, AdamW's moments, the best weights so far and where the run stopped
//! (in the header's metadata) travel in that single file, so the rename that publishes it is
//! the only commit point: a process killed at any moment leaves either the previous state or
//! the new one, never a mixed pair. A checksum of the tensor bytes catches a file damaged
//! afterwards.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::DropoutRates;
use super::micro_batches;
use super::schedule::warmup_steps;
use super::{EncodedDataset, Evaluation, TrainConfig};
use crate::adapter::{sha256_hex, write_atomic, write_streamed, StreamedTensor};
use crate::backend::Backend;
use crate::checkpoint::WeightsFile;
use crate::data::Target;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::tensor::{copy_all, HostTensors};

/// File of the resumable state inside `<output>/last/`.
pub const STATE_FILE: &str = "state.safetensors";
/// The one metadata key (one, so that the header's bytes do not depend on hash-map order).
const HEADER_KEY: &str = "spafit.run";
const MOMENT_M: &str = "adam.m.";
const MOMENT_V: &str = "adam.v.";
const BEST: &str = "best.";

/// Where a run stopped: the next batch to train on and what it has achieved.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct RunPosition {
    /// Optimizer steps taken.
    pub step: usize,
    /// Epoch of the next batch (0-based).
    pub epoch: usize,
    /// Index of the next batch within that epoch.
    pub next_batch: usize,
    /// Steps the schedule spans.
    pub total_steps: usize,
    /// The best evaluation so far.
    pub best: Option<SavedBest>,
    /// The run's settings by name (see [`run_settings`]): all must be the same to resume
    /// but the device, which is noted; empty in a state written before they were recorded
    /// by name.
    #[serde(default)]
    pub settings: RunSettings,
    /// Evaluations since the best one, for early stopping (0 in older states).
    #[serde(default)]
    pub evaluations_since_best: usize,
    /// The training losses since the last logged line, so the first line a resumed run logs
    /// averages the same steps as an uninterrupted run's (empty in older states).
    #[serde(default)]
    pub loss_window: LossWindow,
    /// Whether the evaluation due at this step ran out of device memory: a resume runs it
    /// before the next step, as the uninterrupted run did. Absent when false, so other
    /// states are written as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub evaluation_due: bool,
}

/// The steps' losses summed since the last `metrics.jsonl` train line (as bits: exact), and
/// the last logged mean.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct LossWindow {
    pub sum_bits: u64,
    pub steps: usize,
    pub last_logged_bits: Option<u64>,
}

/// What the header carries: the position, a checksum of the tensor bytes and one of the
/// position (as serialized: a damaged key, which serde would pass over as unknown and
/// leave at its default, changes it).
#[derive(Serialize, Deserialize)]
struct StateHeader {
    #[serde(flatten)]
    position: RunPosition,
    tensors_sha256: String,
    /// Absent in states written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    position_sha256: Option<String>,
}

/// The checksum of a position: of the header's JSON value without its two checksums, which
/// a reader recomputes from the text as it is, fields it does not know included (a state of
/// a later version).
fn position_sha256(mut header: serde_json::Value) -> String {
    if let Some(fields) = header.as_object_mut() {
        fields.remove("tensors_sha256");
        fields.remove("position_sha256");
    }
    sha256_hex(header.to_string().as_bytes())
}

/// The best evaluation so far, kept across a resume (the value as bits: exact).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct SavedBest {
    pub step: usize,
    main_metric: String,
    value_bits: u64,
    loss: f64,
    metrics: BTreeMap<String, f64>,
}

impl SavedBest {
    pub fn new(step: usize, e: &Evaluation) -> Self {
        SavedBest {
            step,
            main_metric: e.main_metric.to_string(),
            value_bits: e.main_value().to_bits(),
            loss: e.loss,
            metrics: e.metrics.clone(),
        }
    }

    pub fn evaluation(&self) -> Evaluation {
        let main_metric = crate::metrics::METRIC_NAMES
            .into_iter()
            .find(|m| *m == self.main_metric)
            .unwrap_or("accuracy");
        let mut metrics = self.metrics.clone();
        metrics.insert(main_metric.to_string(), f64::from_bits(self.value_bits));
        Evaluation {
            metrics,
            main_metric,
            loss: self.loss,
            seconds: 0.0,
        }
    }
}

/// Named tensors, in name order.
pub(crate) type NamedTensors<B> = BTreeMap<String, Tensor<B>>;

/// Everything a resumed run needs.
pub(crate) struct SavedRun<B: Backend> {
    pub position: RunPosition,
    pub trainable: NamedTensors<B>,
    pub moments: BTreeMap<String, (Tensor<B>, Tensor<B>)>,
    /// The weights of `position.best`, when there is one, on the host (as a run keeps them).
    pub best_weights: Option<HostTensors>,
}

/// What `output_dir` holds of an earlier run (`last/state.safetensors`, `best/`,
/// `metrics.jsonl`), which a fresh run would overwrite.
pub(crate) fn run_outputs(output_dir: &Path) -> Vec<String> {
    [
        format!("last/{STATE_FILE}"),
        "best/".to_string(),
        "metrics.jsonl".to_string(),
    ]
    .into_iter()
    .filter(|name| output_dir.join(name).exists())
    .collect()
}

/// Publishes the state of a run in `<output_dir>/last/` with a single atomic rename.
pub(crate) fn save_run<B: Backend>(
    backend: &B,
    output_dir: &Path,
    position: &RunPosition,
    trainable: &[(String, Tensor<B>)],
    moments: &BTreeMap<String, (Tensor<B>, Tensor<B>)>,
    best_weights: Option<&HostTensors>,
) -> Result<()> {
    // Each tensor is copied off the backend only as it is written: the state is several
    // times the trained weights, and whole in memory it would sit beside them.
    let on_backend = |name, t| StreamedTensor::on_backend(backend, name, t);
    let mut tensors: Vec<StreamedTensor> = trainable
        .iter()
        .map(|(name, t)| on_backend(name.clone(), t))
        .collect();
    for (name, (m, v)) in moments {
        tensors.push(on_backend(format!("{MOMENT_M}{name}"), m));
        tensors.push(on_backend(format!("{MOMENT_V}{name}"), v));
    }
    for (name, t) in best_weights.into_iter().flatten() {
        tensors.push(StreamedTensor::on_host(format!("{BEST}{name}"), t));
    }
    let position_sha256 = Some(position_sha256(
        serde_json::to_value(position).map_err(|e| Error::invalid("state", e.to_string()))?,
    ));
    let metadata = |tensors_sha256: &str| {
        let header = StateHeader {
            position: position.clone(),
            tensors_sha256: tensors_sha256.to_string(),
            position_sha256: position_sha256.clone(),
        };
        let header =
            serde_json::to_string(&header).map_err(|e| Error::invalid("state", e.to_string()))?;
        Ok(HashMap::from([(HEADER_KEY.to_string(), header)]))
    };
    write_streamed(&output_dir.join("last").join(STATE_FILE), tensors, metadata)
}

/// Reads `<output_dir>/last/state.safetensors`; `None` when the run never saved a state.
pub(crate) fn load_run<B: Backend>(backend: &B, output_dir: &Path) -> Result<Option<SavedRun<B>>> {
    let path = output_dir.join("last").join(STATE_FILE);
    // Something else under that name is no state, and not nothing either: starting over
    // would clear the metrics of the run it was meant to hold.
    let io = |error| Error::Io {
        path: path.clone(),
        error,
    };
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
        Ok(_) => {}
    }
    // Through a link, what it points to; a dangling one is no file either.
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {}
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {
            return Err(Error::Format {
                path: path.clone(),
                detail: "is not a file, where a run keeps its saved state: remove it to start \
                         over (the metrics of the earlier run are then cleared), or put the \
                         state file back"
                    .into(),
            })
        }
    }
    let corrupt = |detail: String| Error::Format {
        path: path.clone(),
        detail,
    };
    // Read a tensor at a time: the state is several times the trained weights.
    let file = WeightsFile::open(&path).map_err(|e| match e {
        // Written whole or not at all (a temporary file renamed): one that does not parse
        // was cut short or damaged since.
        Error::Format { detail, .. } => corrupt(format!(
            "{detail}: the file was damaged or cut short after it was saved; restore it or \
             start another run"
        )),
        other => other,
    })?;
    let text = file
        .header_metadata()
        .and_then(|m| m.get(HEADER_KEY))
        .ok_or_else(|| {
            corrupt(format!(
                "the header has no `{HEADER_KEY}`: not a spafit run state"
            ))
        })?;
    let unreadable = |e: serde_json::Error| corrupt(format!("`{HEADER_KEY}` in the header: {e}"));
    let as_written: serde_json::Value = serde_json::from_str(text).map_err(unreadable)?;
    let StateHeader {
        position,
        tensors_sha256,
        position_sha256: recorded,
    } = serde_json::from_value(as_written.clone()).map_err(unreadable)?;
    if recorded.is_some_and(|h| h != position_sha256(as_written)) {
        return Err(Error::Mismatch {
            path,
            detail: "the run's position in the header (step, best evaluation, settings) does \
                     not match the checksum written with it: the file was damaged after it \
                     was saved; restore it or start another run"
                .into(),
        });
    }
    if file.data_sha256().map_err(io)? != tensors_sha256 {
        return Err(Error::Mismatch {
            path,
            detail: "the tensors do not match the checksum written with them: the file was \
                     damaged after it was saved; restore it or start another run"
                .into(),
        });
    }
    let mut trainable = BTreeMap::new();
    let mut m_parts = BTreeMap::new();
    let mut v_parts = BTreeMap::new();
    let mut best = BTreeMap::new();
    for name in file.names() {
        let shape = file
            .shape(name)
            .ok_or_else(|| corrupt(format!("tensor `{name}` is unreadable")))?;
        let tensor = file.tensor(backend, name, shape.into())?;
        if let Some(p) = name.strip_prefix(MOMENT_M) {
            m_parts.insert(p.to_string(), tensor);
        } else if let Some(p) = name.strip_prefix(MOMENT_V) {
            v_parts.insert(p.to_string(), tensor);
        } else if let Some(p) = name.strip_prefix(BEST) {
            best.insert(p.to_string(), tensor);
        } else {
            trainable.insert(name.clone(), tensor);
        }
    }
    let mut moments = BTreeMap::new();
    for (name, m) in m_parts {
        let v = v_parts
            .remove(&name)
            .ok_or_else(|| corrupt(format!("`{MOMENT_V}{name}` is missing")))?;
        moments.insert(name, (m, v));
    }
    if let Some(name) = v_parts.keys().next() {
        return Err(corrupt(format!("`{MOMENT_M}{name}` is missing")));
    }
    let best_weights = match (&position.best, best.is_empty()) {
        (Some(_), true) => {
            return Err(corrupt(
                "the state names a best evaluation but holds no best weights".into(),
            ))
        }
        (Some(_), false) => Some(copy_all(backend, &best)?),
        (None, _) => None,
    };
    Ok(Some(SavedRun {
        position,
        trainable,
        moments,
        best_weights,
    }))
}

/// Whether `output_dir/last/` holds the state of a run that is over: every step taken (or
/// its early stopping's patience spent), no evaluation owed. A resume of it trains nothing
/// and saves nothing there; it only reports (and may write `best/` again). Only the header
/// is read, and not checked: false for anything that is not such a state, which the resume
/// then reads in full and judges.
pub fn saved_run_is_over(output_dir: &Path) -> bool {
    let read_position = || -> Option<RunPosition> {
        use std::io::Read;
        let path = output_dir.join("last").join(STATE_FILE);
        // Not a pipe or a device, which a read could wait on forever.
        if !std::fs::metadata(&path).ok()?.is_file() {
            return None;
        }
        let mut file = std::fs::File::open(&path).ok()?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len).ok()?;
        // A header past this is no state of ours (and not worth reading to find out).
        const MAX_HEADER: u64 = 64 << 20;
        let len = u64::from_le_bytes(len);
        if len > MAX_HEADER {
            return None;
        }
        let mut header = Vec::new();
        file.take(len).read_to_end(&mut header).ok()?;
        // Cut short: the resume says so.
        if header.len() as u64 != len {
            return None;
        }
        let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
        let text = header.get("__metadata__")?.get(HEADER_KEY)?.as_str()?;
        let StateHeader { position, .. } = serde_json::from_str(text).ok()?;
        Some(position)
    };
    read_position().is_some_and(|p| {
        let patience_spent = p
            .settings
            .get("--early-stopping-patience")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| p.evaluations_since_best >= n);
        !p.evaluation_due && (p.step >= p.total_steps || patience_spent)
    })
}

/// Completes a save of `best/` killed between its two renames (its new manifest staged
/// beside its new weights), then removes the `.name.tmp-PID-N` files that a killed writer left
/// in `last/` and `best/` (see `write_atomic`); the files they were to replace are intact.
pub(crate) fn remove_interrupted_writes(output_dir: &Path) -> Result<()> {
    crate::adapter::complete_interrupted_save(&output_dir.join("best"))?;
    for sub in ["last", "best"] {
        remove_temporary_files(&output_dir.join(sub))?;
    }
    Ok(())
}

fn remove_temporary_files(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp-") {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|source| Error::Io {
                path,
                error: source,
            })?;
        }
    }
    Ok(())
}

/// What must not change between a run and its resumption, by the name a user knows it under
/// (a flag where there is one), so that a refused resume can say what changed.
pub(crate) type RunSettings = BTreeMap<String, String>;

/// The inputs of [`run_settings`] that are not part of [`TrainConfig`].
pub(crate) struct RunInputs<'a> {
    pub total_steps: usize,
    pub dropout: DropoutRates,
    pub trainable_shapes: &'a [(String, Vec<usize>)],
    /// LoRA's `alpha` (its scale is `alpha / r`), where the plan has adapters.
    pub lora_alpha: Option<f64>,
    /// What trains, in words ([`describe_plan`]), so a resume names a changed method flag.
    pub plan: String,
    pub base_sha256: &'a str,
    /// A digest of the trainable tensors' values before the first step: the adapter a run
    /// continues (--adapter), or what the seed drew.
    pub starting_weights: String,
    pub train: &'a EncodedDataset,
    pub dev: Option<&'a EncodedDataset>,
    /// The tokenizer's cut: part of the data's digest too, named on its own so that a resume
    /// says which flag changed.
    pub max_len: usize,
    /// The backend's name (`cpu-f32`, `cuda-emu-bf16`): recorded, not required to match.
    pub device: String,
    /// The metric that picks the best evaluation, by name (the task's main one unless
    /// `--best-metric` names another): given or not, the same metric is the same run.
    pub best_metric: String,
}

/// The settings key of the device a run trained on: a resumed run may move to another one
/// (a CPU run finished on a GPU), so [`changed_settings`] skips it and the trainer notes it.
pub(crate) const DEVICE_SETTING: &str = "device and precision";

/// The settings key of the micro-batch size: like the device, it changes the order of the
/// sums (and the dropout masks) but not the run, and a run that ran out of memory resumes
/// with smaller micro-batches, so [`changed_settings`] skips it too.
pub(crate) const MICRO_BATCH_SETTING: &str = "--micro-batch-size";

/// The settings key of how often the training loss is logged: it changes `metrics.jsonl`'s
/// train lines, not the run, so [`changed_settings`] skips it and the trainer notes it.
pub(crate) const LOG_EVERY_SETTING: &str = "--log-every";

/// The settings a resumed run may change, each noted by the trainer.
const MAY_CHANGE_ON_RESUME: [&str; 3] = [DEVICE_SETTING, MICRO_BATCH_SETTING, LOG_EVERY_SETTING];

/// The micro-batch setting of a run that runs whole batches: every run before the setting
/// was recorded.
pub(crate) const MICRO_BATCH_OFF: &str = "off";

/// Everything that decides the batches, the schedule, dropout, the starting weights and the
/// choice of the best evaluation. The data enter as a hash of their token ids and labels, so
/// another file, another `--max-len` or another label order all count as a change.
pub(crate) fn run_settings(config: &TrainConfig, inputs: &RunInputs) -> RunSettings {
    let c = config;
    let shapes = format!("{:?}", inputs.trainable_shapes);
    let entries: [(&str, String); 27] = [
        (DEVICE_SETTING, inputs.device.clone()),
        // A state saved before this entry has none: not noted.
        (LOG_EVERY_SETTING, c.log_every.to_string()),
        (
            MICRO_BATCH_SETTING,
            micro_batches::in_use(c.micro_batch_size, c.batch_size, inputs.train.len())
                .map_or_else(|| MICRO_BATCH_OFF.into(), |m| m.to_string()),
        ),
        (
            "training data (token ids and labels: the file, --max-len, --labels)",
            data_digest(inputs.train),
        ),
        (
            "evaluation data (token ids and labels)",
            inputs.dev.map_or_else(|| "none".into(), data_digest),
        ),
        // A state saved before this entry has none: not compared.
        ("--max-len", inputs.max_len.to_string()),
        ("--epochs", c.epochs.to_string()),
        ("--batch-size", c.batch_size.to_string()),
        ("length buckets", c.bucket_batches.to_string()),
        ("--lr", c.learning_rate.to_string()),
        // The steps, not the flags: `--warmup-steps 3` resumes a run whose ratio made 3.
        (
            WARMUP_SETTING,
            c.warmup_steps
                .unwrap_or_else(|| warmup_steps(c.warmup_ratio, inputs.total_steps))
                .to_string(),
        ),
        // A state saved before this entry has none (a linear schedule): not compared.
        ("--lr-schedule", c.lr_schedule.to_string()),
        // Which evaluation is the best (a state saved before this entry has none: not
        // compared).
        ("--best-metric", inputs.best_metric.clone()),
        // When the run ends (a state saved before this entry has none: not compared).
        (
            "--early-stopping-patience",
            c.early_stopping_patience
                .map_or_else(|| "off".into(), |n| n.to_string()),
        ),
        ("--weight-decay", c.weight_decay.to_string()),
        (
            "--max-grad-norm",
            c.max_grad_norm
                .map_or_else(|| "off".into(), |v| v.to_string()),
        ),
        ("--seed", c.seed.to_string()),
        (
            "dropout (hidden, attention, LoRA)",
            dropout_setting(&inputs.dropout),
        ),
        (
            "--max-steps",
            c.max_steps.map_or_else(|| "none".into(), |v| v.to_string()),
        ),
        (TOTAL_STEPS_SETTING, inputs.total_steps.to_string()),
        ("base model (SHA-256)", inputs.base_sha256.to_string()),
        // A resume takes its weights from `last/`: another --adapter would be ignored
        // without a word (a state saved before this entry has none: not compared).
        (
            "starting weights (--adapter, or what --seed drew)",
            inputs.starting_weights.clone(),
        ),
        (
            LORA_ALPHA_SETTING,
            inputs
                .lora_alpha
                .map_or_else(|| "no LoRA".into(), |a| a.to_string()),
        ),
        // The task's metric decides which evaluation is the best one, and so `best/` (a
        // state saved before this entry has none: not compared).
        (
            "--task (its metric picks best/)",
            c.task
                .map_or_else(|| "none".into(), |t| t.dir_name().to_string()),
        ),
        // It decides which evaluation is the best one, and so `best/`.
        (
            "--eval-every",
            c.eval_every
                .map_or_else(|| "epoch ends".into(), |n| n.to_string()),
        ),
        (
            "the plan (--method, --n1, --n2, --lora-r, --lora-targets, --lora-layers, --train-*)",
            inputs.plan.clone(),
        ),
        (
            "trainable tensors",
            format!(
                "{} tensors, shapes SHA-256 {}",
                inputs.trainable_shapes.len(),
                &sha256_hex(shapes.as_bytes())[..16]
            ),
        ),
    ];
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// A plan in words: method, each layer's stratum (named as `adapter.json` names it), LoRA's
/// rank and targets, and what else trains.
pub(crate) fn describe_plan(plan: &crate::peft::PeftPlan) -> String {
    let strata: Vec<&str> = plan.strata.iter().map(|&s| s.name()).collect();
    let strata = strata.join(",");
    let lora = plan.lora.as_ref().map_or_else(
        || "no LoRA".to_string(),
        |l| {
            let targets: Vec<&str> = l.targets.iter().map(|t| t.module()).collect();
            // Empty where every adapter is the config's: states saved before there were
            // others still resume.
            format!(
                "LoRA r {} on {}{}",
                l.rank,
                targets.join(","),
                l.site_differences()
            )
        },
    );
    format!(
        "{}, strata {strata}, {lora}, pooler {}, embeddings {}, LayerNorm scales {}",
        plan.method, plan.train_pooler, plan.train_embeddings, plan.train_layer_norm_weights
    )
}

/// The dropout rates; the classifier's only where a config's `classifier_dropout` sets it
/// apart from the hidden one, and the pooler input's only where it differs from the
/// classifier's (DeBERTa-v2's `pooler_dropout`), so the states of runs without them still
/// resume.
fn dropout_setting(d: &DropoutRates) -> String {
    let mut setting = format!("{}, {}, {}", d.hidden, d.attention, d.lora);
    if d.classifier != d.hidden {
        setting.push_str(&format!("; classifier {}", d.classifier));
    }
    if d.pooler_input != d.classifier {
        setting.push_str(&format!("; pooler input {}", d.pooler_input));
    }
    setting
}

/// `N examples, SHA-256 …` of a tokenized dataset: its token ids, segment ids and labels.
fn data_digest(data: &EncodedDataset) -> String {
    let mut bytes = Vec::new();
    for (text, target) in data.texts.iter().zip(&data.targets) {
        bytes.extend_from_slice(&(text.ids.len() as u64).to_le_bytes());
        for id in text.ids.iter().chain(&text.type_ids) {
            bytes.extend_from_slice(&id.to_le_bytes());
        }
        match target {
            None => bytes.push(0),
            Some(Target::Class(c)) => {
                bytes.push(1);
                bytes.extend_from_slice(&c.to_le_bytes());
            }
            Some(Target::Score(s)) => {
                bytes.push(2);
                bytes.extend_from_slice(&s.to_bits().to_le_bytes());
            }
            Some(Target::LabelSet(ids)) => {
                bytes.push(3);
                bytes.extend_from_slice(&(ids.len() as u64).to_le_bytes());
                for c in ids {
                    bytes.extend_from_slice(&c.to_le_bytes());
                }
            }
        }
    }
    format!(
        "{} examples, SHA-256 {}",
        data.texts.len(),
        &sha256_hex(&bytes)[..16]
    )
}

/// The settings of a saved run that differ from this one, as `name: saved X, now Y`. A
/// setting the saved run did not record (an older spafit's state) is not compared.
pub(crate) fn changed_settings(saved: &RunSettings, now: &RunSettings) -> Vec<String> {
    let saved = &with_warmup_steps(saved);
    let keys: std::collections::BTreeSet<&String> = saved.keys().collect();
    keys.into_iter()
        .filter(|k| !MAY_CHANGE_ON_RESUME.contains(&k.as_str()) && saved.get(*k) != now.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.map_or("(not recorded)", |v| v.as_str()).to_string();
            // The value is the alpha over r every adapter's scale is held as: --rslora's
            // alpha times √r.
            let held_as = match k.as_str() {
                LORA_ALPHA_SETTING => " (the alpha of alpha / r: with --rslora, --lora-alpha × √r)",
                _ => "",
            };
            format!(
                "{k}: saved {}, now {}{held_as}",
                show(saved.get(k)),
                show(now.get(k))
            )
        })
        .collect()
}

/// The LoRA alpha of a run's state.
const LORA_ALPHA_SETTING: &str = "--lora-alpha";

/// The length of the run's schedule in a run's state.
const TOTAL_STEPS_SETTING: &str = "steps in the schedule";

/// The warmup setting of a run's state.
const WARMUP_SETTING: &str = "warmup steps (--warmup-steps, or --warmup-ratio of the run's steps)";

/// `saved` with the warmup as its number of steps: states written before that was recorded
/// hold the two flags (`--warmup-steps` since it exists, a number or "from
/// --warmup-ratio"), from which the steps follow as the run computed them. Left as saved
/// where they do not parse, so a damaged entry is still reported as a change.
fn with_warmup_steps(saved: &RunSettings) -> RunSettings {
    const RATIO: &str = "--warmup-ratio";
    const STEPS: &str = "--warmup-steps";
    let mut settings = saved.clone();
    if settings.contains_key(WARMUP_SETTING) {
        return settings;
    }
    let given = match saved.get(STEPS).map(String::as_str) {
        None | Some("from --warmup-ratio") => None,
        Some(steps) => match steps.parse::<usize>() {
            Ok(n) => Some(n),
            Err(_) => return settings,
        },
    };
    let from_ratio = || {
        let ratio = saved.get(RATIO)?.parse::<f64>().ok()?;
        let total = saved.get(TOTAL_STEPS_SETTING)?.parse::<usize>().ok()?;
        Some(warmup_steps(ratio, total))
    };
    if let Some(steps) = given.or_else(from_ratio) {
        settings.remove(RATIO);
        settings.remove(STEPS);
        settings.insert(WARMUP_SETTING.into(), steps.to_string());
    }
    settings
}

/// Keeps the lines of a JSON-lines log with a `step` field (`metrics.jsonl`, the batch log)
/// up to `step`: a resumed run rewrites what followed, and a run starting over (`step` 0)
/// clears the lines of one that never saved a state. A line torn by a kill goes too.
pub(crate) fn truncate_step_log(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if kept.len() == text.len() {
        return Ok(());
    }
    write_atomic(path, kept.as_bytes())
}

/// Path of `metrics.jsonl` in an output directory.
pub(crate) fn metrics_path(output_dir: &Path) -> PathBuf {
    output_dir.join("metrics.jsonl")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state file holding only a header (`position`, and the checksums as written), as
    /// `saved_run_is_over` reads it; `header_len` overrides the length it says it has.
    fn write_state(dir: &Path, position: &RunPosition, header_len: Option<u64>) {
        let header = StateHeader {
            position: position.clone(),
            tensors_sha256: sha256_hex(&[]),
            position_sha256: None,
        };
        let text = serde_json::to_string(&header).unwrap();
        let json = serde_json::json!({ "__metadata__": { HEADER_KEY: text } }).to_string();
        let len = header_len.unwrap_or(json.len() as u64);
        let last = dir.join("last");
        std::fs::create_dir_all(&last).unwrap();
        let bytes = [&len.to_le_bytes()[..], json.as_bytes()].concat();
        std::fs::write(last.join(STATE_FILE), bytes).unwrap();
    }

    /// Over: every step taken, or the patience spent; not over: steps left, an evaluation
    /// owed, patience left or off, and whatever is not such a state.
    #[test]
    fn a_state_is_over_when_its_steps_or_its_patience_are_spent() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let position = |step: usize, since_best: usize, patience: &str| RunPosition {
            step,
            epoch: 0,
            next_batch: 0,
            total_steps: 10,
            best: None,
            settings: BTreeMap::from([("--early-stopping-patience".into(), patience.into())]),
            evaluations_since_best: since_best,
            loss_window: LossWindow::default(),
            evaluation_due: false,
        };
        assert!(!saved_run_is_over(dir), "no state");
        for (p, over) in [
            (position(10, 0, "off"), true),
            (position(9, 0, "off"), false),
            (position(4, 2, "2"), true),
            (position(4, 1, "2"), false),
            (position(4, 5, "off"), false),
            (
                RunPosition {
                    evaluation_due: true,
                    ..position(10, 0, "off")
                },
                false,
            ),
        ] {
            write_state(dir, &p, None);
            assert_eq!(saved_run_is_over(dir), over, "{p:?}");
        }
        // A length past the bound, or past the file: not read as a state.
        write_state(dir, &position(10, 0, "off"), Some(1 << 40));
        assert!(!saved_run_is_over(dir));
        let real = std::fs::read(dir.join("last").join(STATE_FILE))
            .unwrap()
            .len() as u64;
        write_state(dir, &position(10, 0, "off"), Some(real));
        assert!(!saved_run_is_over(dir));
        // Not a file.
        std::fs::remove_file(dir.join("last").join(STATE_FILE)).unwrap();
        std::fs::create_dir(dir.join("last").join(STATE_FILE)).unwrap();
        assert!(!saved_run_is_over(dir));
    }

    /// The best evaluation of every kind of task comes back from a saved state as it was:
    /// its main metric (a multi-label run's `micro_f1` fell back to `accuracy`), its value
    /// and every other metric.
    #[test]
    fn a_saved_best_evaluation_keeps_its_main_metric() {
        use crate::data::TaskKind;
        let names = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>();
        let kinds = [
            TaskKind::Classification { labels: names(2) },
            TaskKind::MultiLabel { labels: names(3) },
            TaskKind::Regression,
        ];
        for kind in kinds {
            let reported = crate::metrics::reported_names(None, &kind);
            let metrics: BTreeMap<String, f64> = reported
                .iter()
                .enumerate()
                .map(|(i, m)| (m.clone(), 0.25 + i as f64 / 10.0))
                .collect();
            let evaluation = Evaluation {
                metrics,
                main_metric: crate::metrics::main_metric_name(None, &kind),
                loss: 0.5,
                seconds: 1.0,
            };
            let back = SavedBest::new(4, &evaluation).evaluation();
            assert_eq!(back.main_metric, evaluation.main_metric, "{kind:?}");
            assert_eq!(back.metrics, evaluation.metrics, "{kind:?}");
            assert_eq!(back.loss, evaluation.loss);
        }
    }

    /// A run's position after step 3 of 8, `since_best` evaluations after its best.
    fn step_3_of_8(since_best: usize) -> RunPosition {
        RunPosition {
            step: 3,
            epoch: 0,
            next_batch: 3,
            total_steps: 8,
            best: None,
            settings: RunSettings::new(),
            evaluations_since_best: since_best,
            loss_window: LossWindow::default(),
            evaluation_due: false,
        }
    }

    /// The state is written, and read back, a tensor at a time: saving it holds two copies
    /// of its largest tensor at most (its host copy and that copy's bytes), never the whole
    /// state (weights, moments and best weights: 64 MiB here), which building the file in
    /// memory held three times over; loading holds the state it returns and a tensor's
    /// passage, not the file beside them (160 MiB when it was read whole).
    #[test]
    fn a_state_is_saved_without_holding_it_whole() {
        let cpu = crate::backend::cpu::CpuBackend::f32();
        let dir = tempfile::tempdir().unwrap();
        let position = step_3_of_8(0);
        const ELEMENTS: usize = 4 << 20;
        let tensor = |v: f64| {
            cpu.tensor_from_f64(crate::tensor::Shape::new([ELEMENTS]), &vec![v; ELEMENTS])
                .unwrap()
        };
        let trainable = [("w".to_string(), tensor(1.0))];
        let moments = BTreeMap::from([("w".to_string(), (tensor(0.5), tensor(0.25)))]);
        let best = copy_all(&cpu, trainable.iter().map(|(n, t)| (n, t))).unwrap();
        let (saved, peak) = crate::allocation_peak::peak_allocation_of(|| {
            save_run(
                &cpu,
                dir.path(),
                &position,
                &trainable,
                &moments,
                Some(&best),
            )
        });
        saved.unwrap();
        let largest = ELEMENTS * 4;
        assert!(
            peak <= 2 * largest + largest / 4,
            "saving a state of {} MiB held {} MiB at once",
            (4 * largest) >> 20,
            peak >> 20
        );
        // Read back a tensor at a time too: what it holds beyond the state it returns is
        // a tensor's passage through f64, not the file.
        let (loaded, peak) =
            crate::allocation_peak::peak_allocation_of(|| load_run(&cpu, dir.path()));
        let loaded = loaded.unwrap().unwrap();
        assert!(
            peak <= 4 * largest + 3 * largest,
            "loading a state of {} MiB held {} MiB at once",
            (4 * largest) >> 20,
            peak >> 20
        );
        assert_eq!(
            cpu.to_f64(&loaded.moments["w"].1).unwrap()[ELEMENTS - 1],
            0.25
        );
    }

    /// A state whose header was damaged in a key (serde would pass the key over as unknown
    /// and resume from its default) is refused; the state as written loads.
    #[test]
    fn a_damaged_position_in_the_header_is_refused() {
        let cpu = crate::backend::cpu::CpuBackend::f32();
        let dir = tempfile::tempdir().unwrap();
        let position = step_3_of_8(2);
        let weight = cpu
            .tensor_from_f64(crate::tensor::Shape::new([2]), &[1.0, 2.0])
            .unwrap();
        let trainable = [("w".to_string(), weight)];
        save_run(
            &cpu,
            dir.path(),
            &position,
            &trainable,
            &BTreeMap::new(),
            None,
        )
        .unwrap();
        let loaded = load_run(&cpu, dir.path()).unwrap().unwrap();
        assert_eq!(loaded.position, position);
        let path = dir.path().join("last").join(STATE_FILE);
        let written = std::fs::read(&path).unwrap();
        // A later version's state, with a field this one does not know, checksummed as that
        // version would: it loads.
        let header_len = u64::from_le_bytes(written[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value =
            serde_json::from_slice(&written[8..8 + header_len]).unwrap();
        let run = &mut header["__metadata__"][HEADER_KEY];
        let mut later: serde_json::Value = serde_json::from_str(run.as_str().unwrap()).unwrap();
        later["a_later_field"] = serde_json::json!([1.5, "x"]);
        later["position_sha256"] = position_sha256(later.clone()).into();
        *run = later.to_string().into();
        let mut text = header.to_string().into_bytes();
        text.resize(text.len().next_multiple_of(8), b' ');
        let mut rewritten = (text.len() as u64).to_le_bytes().to_vec();
        rewritten.extend(text);
        rewritten.extend(&written[8 + header_len..]);
        std::fs::write(&path, &rewritten).unwrap();
        assert_eq!(
            load_run(&cpu, dir.path()).unwrap().unwrap().position,
            position
        );
        std::fs::write(&path, &written).unwrap();
        let mut bytes = written;
        let key = b"evaluations_since_best";
        let at = bytes.windows(key.len()).position(|w| w == key).unwrap();
        // One letter, so the safetensors header keeps its length and stays readable.
        bytes[at + key.len() - 2] = b'z';
        std::fs::write(&path, &bytes).unwrap();
        let e = load_run(&cpu, dir.path()).err().expect("a damaged key");
        assert!(e.to_string().contains("does not match the checksum"), "{e}");
    }

    /// The states of runs saved before `classifier_dropout` was read hold the three rates
    /// alone; a run whose classifier drops at the hidden rate must still compare equal.
    #[test]
    fn the_dropout_setting_names_the_classifier_only_when_it_differs() {
        let rates = |classifier| DropoutRates {
            hidden: 0.1,
            attention: 0.1,
            lora: 0.0,
            classifier,
            pooler_input: classifier,
        };
        assert_eq!(dropout_setting(&rates(0.1)), "0.1, 0.1, 0");
        assert_eq!(dropout_setting(&rates(0.0)), "0.1, 0.1, 0; classifier 0");
        let deberta = DropoutRates {
            pooler_input: 0.0,
            ..rates(0.1)
        };
        assert_eq!(dropout_setting(&deberta), "0.1, 0.1, 0; pooler input 0");
    }
}

//! One entry point for an adapter directory, whichever tool wrote it: spafit (`adapter.json`
//! and `adapter.safetensors`) or Python PEFT (`adapter_config.json` and
//! `adapter_model.safetensors`).

use std::path::Path;

use super::peft_import::{import_peft, is_peft_adapter, PEFT_CONFIG_FILE};
use super::store::{load_adapter, MANIFEST_FILE};
use crate::backend::Backend;
use crate::checkpoint::Checkpoint;
use crate::data::{Dataset, TaskKind};
use crate::error::{Error, Result};
use crate::model::{BertClassifier, ClassAlignment};
use crate::peft::PeftPlan;
use crate::text::TextTokenizer;
use crate::train::{predict_text_pairs, predict_texts, Prediction};

/// Who wrote an adapter directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterFormat {
    /// `spafit train`.
    Spafit,
    /// Python PEFT's `save_pretrained`.
    Peft,
}

/// An adapter loaded onto its base model.
#[derive(Debug)]
pub struct OpenedAdapter<B: Backend> {
    /// The base model with the adapter's tensors.
    pub model: BertClassifier<B>,
    /// The plan the model is under.
    pub plan: PeftPlan,
    /// Class names, when the adapter records them (spafit's do, and its PEFT exports in
    /// `spafit_export.json`; PEFT's own do not: their outputs take the base's `id2label`
    /// names, or are the classes 0 to n-1 where the base names none and the data's classes
    /// are those numbers, else match data by position).
    pub labels: Option<Vec<String>>,
    /// Whether it was trained on text pairs, when it records that (spafit's adapters and
    /// its PEFT exports do).
    pub text_pairs: Option<bool>,
    /// Whether its head is a multi-label classifier's (a sigmoid per class), when it records
    /// that (spafit's adapters and its PEFT exports do; PEFT's own do not).
    pub multi_label: Option<bool>,
    /// The tokens per example its training texts were cut to, when it records that
    /// (spafit's adapters and its PEFT exports do; PEFT's own do not):
    /// [`OpenedAdapter::tokenizer`] cuts inputs there.
    pub max_len: Option<usize>,
    /// Who wrote it.
    pub format: AdapterFormat,
    /// What the import could not carry over exactly (see [`super::PeftImport::notes`]).
    pub notes: Vec<String>,
    /// What every use of the adapter should know (see [`super::PeftImport::warnings`]).
    pub warnings: Vec<String>,
    /// Tensors set from the adapter that stay frozen under its plan (see
    /// [`super::PeftImport::kept_frozen`]); training cannot continue from it when any are.
    pub kept_frozen: Vec<String>,
    /// The LoRA B matrices PEFT keeps frozen while it trains, with the initialisation that
    /// says so (see [`super::PeftImport::frozen_in_peft_training`]); training cannot continue
    /// from it when there are any.
    pub frozen_in_peft_training: Option<(String, Vec<String>)>,
}

/// The label space an adapter's head was trained for.
#[derive(Clone, Debug)]
pub struct AdapterHead {
    /// Class names, when the adapter records them.
    pub labels: Option<Vec<String>>,
    /// Whether it was trained on text pairs, when it records that.
    pub text_pairs: Option<bool>,
    /// Whether it is a multi-label classifier's head, when it records that.
    pub multi_label: Option<bool>,
    /// Outputs of the classifier (1 for regression).
    pub outputs: usize,
}

impl AdapterHead {
    /// The label space data is read with when the user names none: the class names the
    /// adapter records, regression for a single output, else the classes `0` to `n - 1`
    /// (a PEFT classifier records no names; data naming its classes otherwise needs
    /// --labels); a multi-label task where the adapter records a multi-label head.
    pub fn default_kind(&self) -> TaskKind {
        self.default_kind_naming(None)
    }

    /// [`AdapterHead::default_kind`], with `base_names` (the base's `id2label` names, which
    /// transformers gives a PEFT adapter's model) naming the classes of a head that records
    /// none, where there are as many as it has outputs. Data in other names still matches
    /// such a head by position ([`AdapterHead::check`]).
    pub fn default_kind_naming(&self, base_names: Option<Vec<String>>) -> TaskKind {
        let base_names = base_names.filter(|n| n.len() == self.outputs && self.outputs >= 2);
        let labels = match (self.labels.clone().or(base_names), self.outputs) {
            (Some(labels), _) => labels,
            (None, 1) if self.multi_label != Some(true) => return TaskKind::Regression,
            (None, n) => (0..n).map(|i| i.to_string()).collect(),
        };
        match self.multi_label {
            Some(true) => TaskKind::MultiLabel { labels },
            _ => TaskKind::Classification { labels },
        }
    }

    /// Refuses data of one text per example for an adapter trained on text pairs, or the
    /// other way round (the model would read a sentence pair task's input as something else).
    pub fn check_texts(&self, data: &Dataset, dir: &Path) -> Result<()> {
        let (Some(trained), Some(first)) = (self.text_pairs, data.examples.first()) else {
            return Ok(());
        };
        let pairs = first.text_b.is_some();
        if pairs == trained {
            return Ok(());
        }
        Err(Error::Mismatch {
            path: dir.to_path_buf(),
            detail: format!(
                "the adapter was trained on {} but {} has {} ({})",
                texts(trained),
                data.name,
                texts(pairs),
                match trained {
                    true => "for custom data, --text-pair-column names the second text",
                    false => "for custom data, drop --text-pair-column",
                }
            ),
        })
    }

    /// Where the data's classes sit among the head's outputs when the adapter records the
    /// same class names in another order (an MNLI head trained on custom data, classes
    /// sorted, against GLUE's entailment, neutral, contradiction): output `j` for the data
    /// is the head's `order[j]`. `None` when nothing needs to move.
    pub fn class_order(&self, kind: &TaskKind) -> Option<Vec<usize>> {
        let (Some(labels), Some(trained)) = (kind.class_names(), &self.labels) else {
            return None;
        };
        let order = crate::data::class_order(labels, trained)?;
        let moved = order.iter().enumerate().any(|(j, &i)| i != j);
        moved.then_some(order)
    }

    /// Reorders `model`'s head, this adapter's, to the data's class order where the data
    /// lists the recorded classes otherwise ([`AdapterHead::class_order`]). Data of other
    /// classes is not this method's to refuse: [`AdapterHead::check`] does.
    pub fn align<B: Backend>(
        &self,
        model: &mut BertClassifier<B>,
        backend: &B,
        kind: &TaskKind,
    ) -> Result<ClassAlignment> {
        let (Some(_), Some(trained)) = (kind.class_names(), &self.labels) else {
            return Ok(ClassAlignment::NotNeeded);
        };
        match self.class_order(kind) {
            None => Ok(ClassAlignment::SameOrder),
            Some(order) => {
                model.reorder_classes(backend, &order)?;
                Ok(ClassAlignment::Reordered {
                    head_classes: trained.clone(),
                })
            }
        }
    }

    /// Refuses data whose label space is not the head's: other class names (when the
    /// adapter records them; the same names in another order fit, see
    /// [`AdapterHead::class_order`]), another class count, or regression against
    /// classification.
    pub fn check(&self, kind: &TaskKind, data_name: &str, dir: &Path) -> Result<()> {
        let outputs = self.outputs;
        // A head trained with a sigmoid per class scores each class on its own; read with a
        // softmax (or the other way round) its outputs would mean something else.
        if let Some(trained) = self.multi_label.filter(|&m| m != kind.is_multi_label()) {
            let head = match (trained, outputs) {
                (true, _) => "a multi-label classifier (a sigmoid per class)",
                (false, 1) => "a regression (one output)",
                (false, _) => "a classifier of one class per example (softmax)",
            };
            let data = match kind {
                TaskKind::MultiLabel { .. } => "sets of classes (--multi-label)",
                TaskKind::Classification { .. } => "one class per example",
                TaskKind::Regression => "scores (--regression)",
            };
            return Err(Error::Mismatch {
                path: dir.to_path_buf(),
                detail: format!(
                    "the classifier head was trained as {head} but {data_name} is read as \
                     {data}: its outputs would mean something else"
                ),
            });
        }
        let fits = match (kind, &self.labels) {
            (
                TaskKind::Classification { labels } | TaskKind::MultiLabel { labels },
                Some(trained),
            ) => crate::data::class_order(labels, trained).is_some(),
            (TaskKind::Classification { labels } | TaskKind::MultiLabel { labels }, None) => {
                labels.len() == outputs && outputs > 1
            }
            (TaskKind::Regression, _) => outputs == 1,
        };
        if fits {
            return Ok(());
        }
        let head = match (&self.labels, outputs) {
            (Some(labels), 1) => format!("was trained for labels {labels:?} (1 output)"),
            (Some(labels), _) => format!("was trained for labels {labels:?} ({outputs} outputs)"),
            (None, 1) => "has 1 output (a regression's score)".to_string(),
            (None, _) => format!("has {outputs} outputs (its classes not recorded with it)"),
        };
        Err(Error::Mismatch {
            path: dir.to_path_buf(),
            detail: format!(
                "the classifier head {head} but {data_name} is read with {} (for custom data, \
                 --labels / --regression give the data's label space)",
                match kind {
                    TaskKind::Classification { labels } => format!("labels {labels:?}"),
                    TaskKind::MultiLabel { labels } => format!("sets of the labels {labels:?}"),
                    TaskKind::Regression => "a regression target".to_string(),
                }
            ),
        })
    }
}

impl<B: Backend> OpenedAdapter<B> {
    /// The label space of the adapter's head.
    pub fn head(&self) -> AdapterHead {
        AdapterHead {
            labels: self.labels.clone(),
            text_pairs: self.text_pairs,
            multi_label: self.multi_label,
            outputs: self.model.num_labels(),
        }
    }

    /// Whether training can continue from this adapter (opened from `dir`): not when it sets
    /// tensors its plan keeps frozen ([`OpenedAdapter::kept_frozen`]; a continued run's
    /// adapter would drop them), nor when PEFT trains it
    /// with its B matrices frozen ([`OpenedAdapter::frozen_in_peft_training`]; a spafit run
    /// would train them). Eval and
    /// predict use such an adapter as it is; call this before handing its model to a
    /// [`crate::train::Trainer`], as the CLI's `train --adapter` does.
    pub fn check_trainable(&self, dir: &Path) -> Result<()> {
        if !self.kept_frozen.is_empty() {
            return Err(Error::Mismatch {
                path: dir.to_path_buf(),
                detail: format!(
                    "the adapter sets {} tensors that no spafit plan trains ({}); a continued \
                     run's adapter would not carry them, so training cannot continue from it \
                     (eval and predict use it as it is)",
                    self.kept_frozen.len(),
                    self.kept_frozen.join(", ")
                ),
            });
        }
        if let Some((init, frozen)) = &self.frozen_in_peft_training {
            return Err(Error::Mismatch {
                path: dir.to_path_buf(),
                detail: format!(
                    "`init_lora_weights` {init:?}: PEFT keeps the adapter's {} lora_B matrices \
                     frozen while it trains, where a spafit run would train them, so training \
                     cannot continue from it (eval and predict use it as it is)",
                    frozen.len()
                ),
            });
        }
        Ok(())
    }

    /// [`AdapterHead::check`] for this adapter.
    pub fn check_labels(&self, kind: &TaskKind, data_name: &str, dir: &Path) -> Result<()> {
        self.head().check(kind, data_name, dir)
    }

    /// Lines the adapter's head up with data of label space `kind`, as the CLI does before
    /// eval, predict and further training: data the head was not trained for is refused
    /// ([`AdapterHead::check`]; `dir` names the adapter in the error), and data that orders
    /// the recorded classes otherwise reorders the head, and [`OpenedAdapter::labels`] with
    /// it, so an adapter saved after further training records the order it has. `evaluate`,
    /// `infer` and the trainer match classes by position: without this, the same classes
    /// listed in another order are scored against the wrong outputs.
    pub fn align_classes(
        &mut self,
        backend: &B,
        kind: &TaskKind,
        dir: &Path,
    ) -> Result<ClassAlignment> {
        let head = self.head();
        head.check(kind, "the data", dir)?;
        let done = head.align(&mut self.model, backend, kind)?;
        if let (ClassAlignment::Reordered { .. }, Some(labels)) = (&done, kind.class_names()) {
            self.labels = Some(labels.to_vec());
        }
        Ok(done)
    }

    /// `checkpoint`'s tokenizer cutting inputs where the adapter's training texts were cut
    /// ([`OpenedAdapter::max_len`]), or at `otherwise` where it records no cut (PEFT's own
    /// adapters): the texts a prediction or evaluation reads are then those it learned from.
    pub fn tokenizer(&self, checkpoint: &Checkpoint, otherwise: usize) -> Result<TextTokenizer> {
        checkpoint.tokenizer(self.max_len.unwrap_or(otherwise))
    }

    /// [`predict_texts`] with the adapter's model: class ids index [`OpenedAdapter::labels`]
    /// when it records them. Refused for an adapter trained on text pairs, which would read
    /// one text as what it learned from two. `tokenizer` decides where long texts are cut:
    /// [`OpenedAdapter::tokenizer`] cuts them as training did.
    pub fn predict_texts<S: AsRef<str>>(
        &self,
        backend: &B,
        tokenizer: &TextTokenizer,
        texts: &[S],
        batch_size: usize,
    ) -> Result<Vec<Prediction>> {
        self.check_inputs(false)?;
        predict_texts(backend, &self.model, tokenizer, texts, batch_size)
    }

    /// [`predict_text_pairs`] with the adapter's model; refused for an adapter trained on
    /// single texts.
    pub fn predict_text_pairs<S: AsRef<str>>(
        &self,
        backend: &B,
        tokenizer: &TextTokenizer,
        pairs: &[(S, S)],
        batch_size: usize,
    ) -> Result<Vec<Prediction>> {
        self.check_inputs(true)?;
        predict_text_pairs(backend, &self.model, tokenizer, pairs, batch_size)
    }

    /// Refuses inputs of the other kind than the adapter records it was trained on.
    fn check_inputs(&self, pairs: bool) -> Result<()> {
        match self.text_pairs {
            Some(trained) if trained != pairs => Err(Error::invalid(
                "predict",
                format!(
                    "the adapter was trained on {}; use {}",
                    texts(trained),
                    match trained {
                        true => "predict_text_pairs",
                        false => "predict_texts",
                    }
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// What examples of one text, or of two, are called in messages.
fn texts(pairs: bool) -> &'static str {
    match pairs {
        true => "text pairs (two texts per example)",
        false => "single texts (one per example)",
    }
}

/// Whether `dir` holds a spafit adapter: its manifest or its weights as a regular file (a
/// save killed between its renames can leave the weights without their manifest).
pub fn is_spafit_adapter(dir: &Path) -> bool {
    dir.join(MANIFEST_FILE).is_file() || dir.join(super::WEIGHTS_FILE).is_file()
}

/// Loads the adapter in `dir` onto `checkpoint`, recognizing its format by its files.
pub fn open_adapter<B: Backend>(
    dir: &Path,
    checkpoint: &Checkpoint,
    backend: &B,
) -> Result<OpenedAdapter<B>> {
    super::require_adapter_folder(dir)?;
    let spafit_adapter = is_spafit_adapter(dir);
    // Neither writer makes such a folder: which adapter was meant cannot be guessed.
    if spafit_adapter && is_peft_adapter(dir) {
        return Err(Error::Format {
            path: dir.to_path_buf(),
            detail: format!(
                "holds both a spafit adapter ({MANIFEST_FILE}) and a PEFT adapter \
                 (adapter_config.json): which one to read is ambiguous; move one of them to a \
                 folder of its own"
            ),
        });
    }
    // Weights without their manifest: a first save killed between its two renames, which
    // `load_adapter` completes from the manifest staged beside them.
    if spafit_adapter {
        let (model, manifest) = load_adapter(dir, checkpoint, backend)?;
        let plan = manifest.plan(&dir.join(MANIFEST_FILE))?;
        check_finite(dir, backend, &model)?;
        return Ok(OpenedAdapter {
            model,
            plan,
            labels: manifest.labels,
            text_pairs: manifest.text_pairs,
            multi_label: Some(manifest.multi_label),
            max_len: manifest.max_len,
            format: AdapterFormat::Spafit,
            notes: Vec::new(),
            warnings: Vec::new(),
            kept_frozen: Vec::new(),
            frozen_in_peft_training: None,
        });
    }
    if is_peft_adapter(dir) {
        let (model, import) = import_peft(dir, checkpoint, backend)?;
        check_finite(dir, backend, &model)?;
        return Ok(OpenedAdapter {
            model,
            plan: import.plan,
            labels: import.labels,
            text_pairs: import.text_pairs,
            multi_label: import.multi_label,
            max_len: import.max_len,
            format: AdapterFormat::Peft,
            notes: import.notes,
            warnings: import.warnings,
            kept_frozen: import.kept_frozen,
            frozen_in_peft_training: import.frozen_in_peft_training,
        });
    }
    // PEFT saves an adapter with a name other than `default` in a folder of that name.
    let mut inside: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(PEFT_CONFIG_FILE).is_file() || p.join(MANIFEST_FILE).is_file())
        .map(|p| p.display().to_string())
        .collect();
    inside.sort();
    let hint = match inside.is_empty() {
        true => String::new(),
        false => format!("; adapters are in {}", inside.join(", ")),
    };
    Err(Error::Format {
        path: dir.to_path_buf(),
        detail: format!(
            "neither {MANIFEST_FILE} (a spafit adapter) nor {PEFT_CONFIG_FILE} (a PEFT adapter) is here{hint}"
        ),
    })
}

/// Refuses an adapter whose tensors hold NaN or infinite values (saved from a diverged run,
/// or damaged): every prediction made with it would be NaN.
fn check_finite<B: Backend>(dir: &Path, backend: &B, model: &BertClassifier<B>) -> Result<()> {
    match model.non_finite_trainable(backend)? {
        Some((name, _)) => Err(Error::Format {
            path: dir.to_path_buf(),
            detail: format!(
                "tensor `{name}` holds NaN or infinite values (saved from a diverged run?)"
            ),
        }),
        None => Ok(()),
    }
}

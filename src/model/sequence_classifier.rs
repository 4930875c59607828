use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::checkpoint::{BertConfig, Checkpoint, EncoderFamily, WeightsFile};
use crate::error::{Error, Result};
use crate::nn::{DropoutPlan, Linear, Param, Stratum};
use crate::peft::PeftPlan;
use crate::rng::SplitMix;
use crate::tensor::{Shape, Tensor};

use super::memory::while_loading;
use super::{BertModel, ModelInput};

/// Targets of a batch: class ids for classification, the classes that apply for
/// multi-label classification, scores for regression.
#[derive(Debug)]
pub enum Labels<B: Backend> {
    /// `U32` class ids `[batch]` (`num_labels ≥ 2`, cross-entropy).
    Classes(Tensor<B>),
    /// Float `[batch, num_labels]`, 1 where a class applies and 0 where not (a sigmoid per
    /// class, binary cross-entropy averaged over every element, as transformers'
    /// `multi_label_classification`).
    MultiHot(Tensor<B>),
    /// Float scores `[batch]` (`num_labels = 1`, mean squared error).
    Scores(Tensor<B>),
}

/// `BertForSequenceClassification`: BERT, dropout on the pooled output, a linear classifier.
///
/// A clone shares every tensor with the original until one of them changes it (tensors are
/// copied on write): a second copy of a loaded model costs no memory for its frozen
/// weights, and training one copy leaves the other as it was.
#[derive(Clone)]
pub struct BertClassifier<B: Backend> {
    /// The encoder.
    pub bert: BertModel<B>,
    /// `classifier`: `[num_labels, hidden]`; its rows are the model's outputs
    /// ([`BertClassifier::num_labels()`]).
    pub classifier: Linear<B>,
    /// The head's outputs when the model was built (1 for regression, ≥ 2 for
    /// classification), kept for reading. The crate reads the count from the head itself
    /// ([`BertClassifier::num_labels()`]), so a head replaced
    /// later, or this field changed, cannot misalign the logits.
    pub num_labels: usize,
    /// The checkpoint had no pooler, so `bert.pooler.dense` was drawn fresh: it must train.
    fresh_pooler: bool,
    /// The plan [`BertClassifier::apply_plan`] applied last.
    plan: Option<PeftPlan>,
    /// The trainable tensors as that plan left them, by name, with their shapes: the
    /// parameters are public (`params_mut`), and one set trainable, frozen or reshaped by hand
    /// afterwards would be trained and saved as an adapter that no load of the plan accepts.
    planned: Vec<(String, Shape)>,
    /// LoRA adapters were folded into the weights: the model no longer has its plan's shape.
    lora_merged: bool,
    /// `apply_plan` was called (whether it succeeded or not): a model takes one plan.
    plan_applied: bool,
    /// The head scores each class on its own (see [`BertClassifier::is_multi_label`]).
    multi_label: bool,
    /// See [`BertClassifier::decision_threshold`].
    decision_threshold: f64,
    /// The base checkpoint's [`WeightsFile::encoder_fingerprint`], for a model loaded from one
    /// (see [`BertClassifier::check_base`]).
    base_fingerprint: Option<String>,
}

/// A summary (the weights are on the backend): shape, head, plan and what trains, so that a
/// `Result<BertClassifier<_>>` can be unwrapped and printed.
impl<B: Backend> std::fmt::Debug for BertClassifier<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertClassifier")
            .field("layers", &self.bert.layers.len())
            .field("hidden_size", &self.bert.config.hidden_size)
            .field("num_labels", &self.num_labels())
            .field("method", &self.plan.as_ref().map(|p| p.method))
            .field("trainable_parameters", &self.trainable_parameter_count())
            .field("lora_merged", &self.lora_merged)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> BertClassifier<B> {
    /// Loads `checkpoint` on `backend` with a `num_labels` head: the checkpoint's own
    /// `classifier` tensors when it has them with that shape (and no other architecture saved
    /// them: [`Checkpoint::other_kind_of_head`]), otherwise a fresh
    /// head drawn as transformers draws
    /// it (weights N(0, `initializer_range`), bias 0) from `seed`. A head present in part, or
    /// in shapes that do not fit together, is refused (it is a damaged file, not a base
    /// model). The encoder starts frozen and the head trainable; apply a plan to choose what
    /// trains. A reused head keeps the checkpoint's class order: see
    /// [`BertClassifier::align_classes`].
    pub fn from_checkpoint(
        checkpoint: &Checkpoint,
        backend: &B,
        num_labels: usize,
        seed: u64,
    ) -> Result<Self> {
        let loaded = Self::with_checked_head(checkpoint, backend, num_labels, seed, &|_| false);
        while_loading(backend, false, loaded)
    }

    /// [`BertClassifier::from_checkpoint`], then [`BertClassifier::apply_plan`] (adapters from
    /// `init`) and [`BertClassifier::store_frozen_weights`], in one: each encoder layer whose
    /// weights `plan` keeps frozen is stored in the backend's frozen dtype as soon as it is
    /// loaded. In bf16 mode loading then holds one layer's weights in f32 at a time beside the
    /// others in bf16, where loading first and storing after holds all of them in f32: a
    /// model whose f32 weights do not fit on the device loads in `--dtype bf16` if its bf16
    /// weights do.
    pub fn from_checkpoint_for_plan(
        checkpoint: &Checkpoint,
        backend: &B,
        num_labels: usize,
        seed: u64,
        plan: &PeftPlan,
        init: &mut dyn FnMut(&str, Shape) -> Result<Tensor<B>>,
    ) -> Result<Self> {
        Self::for_plan(backend, plan, init, |frozen| {
            Self::with_checked_head(checkpoint, backend, num_labels, seed, frozen)
        })
    }

    fn with_checked_head(
        checkpoint: &Checkpoint,
        backend: &B,
        num_labels: usize,
        seed: u64,
        frozen_weights: &dyn Fn(usize) -> bool,
    ) -> Result<Self> {
        if let Some(problem) = checkpoint.classifier_head_problem() {
            return Err(Error::Format {
                path: checkpoint.weights.path().to_path_buf(),
                detail: problem,
            });
        }
        Self::with_head_if_whole(checkpoint, backend, num_labels, seed, frozen_weights)
    }

    /// The base under an adapter, which brings its own head: the checkpoint's head, whole or
    /// damaged, is never used, so it is not checked (an adapter trained on such a base by an
    /// earlier spafit still loads). The layers whose weights `plan` (the adapter's) keeps
    /// frozen are stored compactly as they load, as in
    /// [`BertClassifier::from_checkpoint_for_plan`]; without a plan, none are.
    pub(crate) fn base_for_adapter(
        checkpoint: &Checkpoint,
        backend: &B,
        num_labels: usize,
        plan: Option<&PeftPlan>,
    ) -> Result<Self> {
        let frozen = |layer: usize| plan.is_some_and(|plan| keeps_weights_frozen(plan, layer));
        Self::with_head_if_whole(checkpoint, backend, num_labels, 0, &frozen)
    }

    /// Loads the checkpoint, storing the weights of each encoder layer `frozen_weights` names
    /// (by index) in the backend's frozen dtype as soon as that layer is loaded.
    fn with_head_if_whole(
        checkpoint: &Checkpoint,
        backend: &B,
        num_labels: usize,
        seed: u64,
        frozen_weights: &dyn Fn(usize) -> bool,
    ) -> Result<Self> {
        let config = &checkpoint.config;
        backend.check_attention_head_dim(config.head_dim(), false)?;
        // A checkpoint saved without a pooler (`BertModel(add_pooling_layer=False)`) gets a
        // fresh one, as transformers gives it; one pooler tensor alone is a broken file.
        let pooler = ["bert.pooler.dense.weight", "bert.pooler.dense.bias"];
        let fresh_pooler = pooler
            .iter()
            .all(|name| checkpoint.weights.resolve(name).is_none());
        let mut rng = SplitMix::new(seed ^ crate::peft::init_hash(pooler[0]));
        let mut source = |name: &str, shape: Shape| {
            if fresh_pooler && pooler.contains(&name) {
                let values: Vec<f64> = match name == pooler[0] {
                    true => (0..shape.numel())
                        .map(|_| config.initializer_range * rng.normal())
                        .collect(),
                    false => vec![0.0; shape.numel()],
                };
                return backend.tensor_from_f64(shape, &values);
            }
            checkpoint.tensor(backend, name, shape)
        };
        let bert = BertModel::load_layer_by_layer(config, &mut source, &mut |index, layer| {
            store_if_frozen(backend, index, layer, frozen_weights)
        })?;
        let h = config.hidden_size;
        let own_head = checkpoint.classifier_outputs() == Some(num_labels);
        let classifier = if own_head {
            Linear::new(
                "classifier",
                checkpoint.tensor(backend, "classifier.weight", Shape::new([num_labels, h]))?,
                checkpoint.tensor(backend, "classifier.bias", Shape::new([num_labels]))?,
            )?
        } else {
            fresh_head(backend, &checkpoint.config, num_labels, seed)?
        };
        let mut model = Self::new(bert, classifier, num_labels)?;
        model.base_fingerprint = Some(checkpoint.weights.encoder_fingerprint()?.to_string());
        model.fresh_pooler = fresh_pooler;
        model.multi_label = own_head && checkpoint.is_multi_label();
        Ok(model)
    }

    /// The checkpoint as it was fine-tuned (a `BertForSequenceClassification`): its own
    /// classifier head, with as many outputs as `classifier.weight` has rows, for evaluating
    /// or predicting without an adapter. Everything is frozen (then
    /// [`BertClassifier::store_frozen_weights`] halves its memory on a bf16 device). Refused
    /// when the checkpoint has no head, a head but no pooler to feed it, a head another
    /// architecture saved ([`Checkpoint::other_kind_of_head`]), or one output under a
    /// `problem_type` of classes. A multi-label head (`problem_type`
    /// `multi_label_classification`) loads as one ([`BertClassifier::is_multi_label`]). The
    /// outputs keep the checkpoint's
    /// class order (`id2label`); [`BertClassifier::align_classes`] lines them up with data
    /// that orders the same classes otherwise.
    pub fn from_fine_tuned(checkpoint: &Checkpoint, backend: &B) -> Result<Self> {
        let weights = &checkpoint.weights;
        let h = checkpoint.config.hidden_size;
        if let Some(kind) = checkpoint.other_kind_of_head() {
            return Err(Error::Format {
                path: checkpoint.dir().join("config.json"),
                detail: format!(
                    "{kind}, so it cannot be evaluated as spafit's; give an --adapter trained \
                     on this checkpoint (a run trained on it starts from a fresh head)"
                ),
            });
        }
        let family = checkpoint.config.family();
        let (head_weight, head_bias, pooler) = (
            family.hf_name("classifier.weight"),
            family.hf_name("classifier.bias"),
            family.hf_name("bert.pooler.dense"),
        );
        let refuse = |detail: String| {
            Err(Error::Format {
                path: weights.path().to_path_buf(),
                detail,
            })
        };
        let num_labels = match weights.shape("classifier.weight").as_deref() {
            Some(&[n, inputs]) if inputs == h && n >= 1 => n,
            Some(other) => {
                return refuse(format!(
                    "`{head_weight}` has shape {other:?}, not [num_labels, {h}]"
                ))
            }
            // Half a head is a damaged checkpoint, not one that was never fine-tuned.
            None => match weights.shape("classifier.bias") {
                Some(bias) => {
                    return refuse(format!(
                        "`{head_bias}` {bias:?} is there but `{head_weight}` is missing"
                    ))
                }
                None => {
                    return refuse(format!(
                        "no classifier head (`{head_weight}`): the checkpoint was not \
                         fine-tuned for sequence classification; give an --adapter trained on it"
                    ))
                }
            },
        };
        if weights.shape("classifier.bias").as_deref() != Some(&[num_labels]) {
            return refuse(format!(
                "`{head_weight}` has {num_labels} rows but `{head_bias}` is {}",
                weights
                    .shape("classifier.bias")
                    .map_or("missing".to_string(), |s| format!("of shape {s:?}"))
            ));
        }
        // Without even the embeddings the encoder is what is missing, which loading names.
        let encoder_found = weights
            .resolve("bert.embeddings.word_embeddings.weight")
            .is_some();
        if encoder_found && weights.resolve("bert.pooler.dense.weight").is_none() {
            return refuse(format!(
                "a classifier head but no pooler (`{pooler}`) to feed it"
            ));
        }
        // transformers reads one output as regression unless problem_type says otherwise
        // (a regression of several outputs is another kind of head, refused above).
        if num_labels == 1 && checkpoint.is_multi_label() {
            return Err(Error::Format {
                path: checkpoint.dir().join("config.json"),
                detail: format!(
                    "`problem_type` is `multi_label_classification` but the head \
                     (`{head_weight}`) has 1 output, a single yes-or-no class, which spafit \
                     reads as a classification of two classes or a regression: if the head is \
                     a regressor, make `problem_type` `regression` (or remove it)"
                ),
            });
        }
        if num_labels == 1
            && checkpoint.config.problem_type.as_deref() == Some("single_label_classification")
        {
            return Err(Error::Format {
                path: checkpoint.dir().join("config.json"),
                detail: format!(
                    "`problem_type` is `single_label_classification` but the head \
                     (`{head_weight}`) has 1 output, and a softmax over one class is always 1: \
                     if the head is a regressor, make `problem_type` `regression` (or remove \
                     it)"
                ),
            });
        }
        let loaded = Self::with_checked_head(checkpoint, backend, num_labels, 0, &|_| true);
        let mut model = while_loading(backend, true, loaded)?;
        for p in model.params_mut() {
            p.trainable = false;
        }
        Ok(model)
    }

    /// Reorders the classifier's outputs: output `j` becomes what output `order[j]` was (for
    /// data that numbers the same classes in another order). The head keeps its dtype, so it
    /// may run before or after [`BertClassifier::store_frozen_weights`].
    pub fn reorder_classes(&mut self, backend: &B, order: &[usize]) -> Result<()> {
        let (weight, bias) = self.classifier_in_order(backend, order)?;
        self.classifier.weight.value = weight;
        self.classifier.bias.value = bias;
        Ok(())
    }

    /// The classifier's weight and bias with their outputs in `order` (see
    /// [`BertClassifier::reorder_classes`]), leaving the model as it is.
    pub fn classifier_in_order(
        &self,
        backend: &B,
        order: &[usize],
    ) -> Result<(Tensor<B>, Tensor<B>)> {
        let n = self.num_labels();
        let mut seen = vec![false; n];
        let is_permutation = order.len() == n
            && order
                .iter()
                .all(|&i| i < n && !std::mem::replace(&mut seen[i], true));
        if !is_permutation {
            return Err(Error::invalid(
                "classifier",
                format!("{order:?} is not an order of the {n} classes"),
            ));
        }
        let (_, inputs) = self.classifier.out_in();
        let head = &self.classifier;
        if head.weight.value.dims() != [n, inputs] || head.bias.value.dims() != [n] {
            return Err(Error::shape(
                "classifier",
                format!(
                    "weight {} and bias {} are not a head of {n} classes",
                    head.weight.value.shape(),
                    head.bias.value.shape()
                ),
            ));
        }
        let weight = backend.to_f64(&self.classifier.weight.value)?;
        let bias = backend.to_f64(&self.classifier.bias.value)?;
        let rows: Vec<f64> = order
            .iter()
            .flat_map(|&i| weight[i * inputs..(i + 1) * inputs].iter().copied())
            .collect();
        let biases: Vec<f64> = order.iter().map(|&i| bias[i]).collect();
        let weight = backend.tensor_from_f64_as(
            Shape::new([n, inputs]),
            &rows,
            self.classifier.weight.value.dtype(),
        )?;
        let bias = backend.tensor_from_f64_as(
            Shape::new([n]),
            &biases,
            self.classifier.bias.value.dtype(),
        )?;
        Ok((weight, bias))
    }

    /// A model of `config`'s shape with random weights as transformers initialises them
    /// (N(0, `initializer_range`) weights and embeddings, zero biases, unit LayerNorm scales): for
    /// throughput benchmarks, where values do not matter.
    pub fn random(config: &BertConfig, backend: &B, num_labels: usize, seed: u64) -> Result<Self> {
        let drawn = Self::random_storing(config, backend, num_labels, seed, &|_| false);
        while_loading(backend, false, drawn)
    }

    /// [`BertClassifier::random`] under `plan`, loaded as
    /// [`BertClassifier::from_checkpoint_for_plan`] loads a checkpoint (frozen layers stored
    /// compactly as they are drawn).
    pub fn random_for_plan(
        config: &BertConfig,
        backend: &B,
        num_labels: usize,
        seed: u64,
        plan: &PeftPlan,
        init: &mut dyn FnMut(&str, Shape) -> Result<Tensor<B>>,
    ) -> Result<Self> {
        Self::for_plan(backend, plan, init, |frozen| {
            Self::random_storing(config, backend, num_labels, seed, frozen)
        })
    }

    /// The model `load(frozen)` builds (storing the layers `frozen` names compactly as they
    /// load), under `plan`, its frozen weights stored compactly.
    fn for_plan(
        backend: &B,
        plan: &PeftPlan,
        init: &mut dyn FnMut(&str, Shape) -> Result<Tensor<B>>,
        load: impl FnOnce(&dyn Fn(usize) -> bool) -> Result<Self>,
    ) -> Result<Self> {
        let frozen = |layer: usize| keeps_weights_frozen(plan, layer);
        let loaded = load(&frozen).and_then(|mut model| {
            model.apply_plan(plan, init)?;
            model.store_frozen_weights(backend)?;
            model.initialise_dora_magnitudes(backend)?;
            Ok(model)
        });
        while_loading(backend, plan.freezes_weights(), loaded)
    }

    /// A random model, storing the weights of each encoder layer `frozen_weights` names (by
    /// index) in the backend's frozen dtype as soon as that layer is drawn.
    fn random_storing(
        config: &BertConfig,
        backend: &B,
        num_labels: usize,
        seed: u64,
        frozen_weights: &dyn Fn(usize) -> bool,
    ) -> Result<Self> {
        config.validate()?;
        backend.check_attention_head_dim(config.head_dim(), false)?;
        let mut rng = SplitMix::new(seed);
        let mut source = |name: &str, shape: Shape| {
            let n = shape.numel();
            let values: Vec<f64> = if name.ends_with("LayerNorm.weight") {
                vec![1.0; n]
            } else if name.ends_with(".bias") {
                vec![0.0; n]
            } else {
                (0..n)
                    .map(|_| config.initializer_range * rng.normal())
                    .collect()
            };
            backend.tensor_from_f64(shape, &values)
        };
        let bert = BertModel::load_layer_by_layer(config, &mut source, &mut |index, layer| {
            store_if_frozen(backend, index, layer, frozen_weights)
        })?;
        let classifier = fresh_head(backend, config, num_labels, seed)?;
        Self::new(bert, classifier, num_labels)
    }

    /// Assembles a model from parts (e.g. a [`BertModel`] built from other tensors).
    pub fn new(bert: BertModel<B>, mut classifier: Linear<B>, num_labels: usize) -> Result<Self> {
        if num_labels == 0 {
            return Err(Error::invalid(
                "classifier",
                "num_labels must be at least 1",
            ));
        }
        let (out, inp) = classifier.out_in();
        if out != num_labels || inp != bert.config.hidden_size {
            return Err(Error::shape(
                "classifier",
                format!(
                    "classifier weight is [{out}, {inp}] but the model needs [{num_labels}, {}]",
                    bert.config.hidden_size
                ),
            ));
        }
        classifier.weight.trainable = true;
        classifier.bias.trainable = true;
        Ok(BertClassifier {
            bert,
            classifier,
            num_labels,
            fresh_pooler: false,
            plan: None,
            planned: Vec::new(),
            lora_merged: false,
            plan_applied: false,
            multi_label: false,
            decision_threshold: 0.5,
            base_fingerprint: None,
        })
    }

    /// The probability above which a multi-label head predicts a class (0.5 unless set):
    /// what evaluation's metrics, the trainer's choice of its best evaluation and predictions
    /// use. It is not saved with an adapter.
    pub fn decision_threshold(&self) -> f64 {
        self.decision_threshold
    }

    /// Sets [`BertClassifier::decision_threshold`]; refused outside (0, 1).
    pub fn set_decision_threshold(&mut self, threshold: f64) -> Result<()> {
        if let Some(problem) = crate::train::threshold_problem(threshold) {
            return Err(Error::invalid("threshold", problem));
        }
        self.decision_threshold = threshold;
        Ok(())
    }

    /// Whether the head is a multi-label classifier's: a sigmoid per class, each example of
    /// any number of the classes (predictions are the classes of positive logits), rather
    /// than a softmax over the classes (or a regression, for one output). Set from a
    /// fine-tuned checkpoint's `problem_type`, from an adapter that records it, and by
    /// training on multi-label data; the loss follows the labels given
    /// ([`BertClassifier::loss`]), not this. A head of one output is never one (it is a
    /// regression's, as spafit reads a checkpoint's), whatever was set.
    pub fn is_multi_label(&self) -> bool {
        self.multi_label && self.num_labels() >= 2
    }

    /// Marks the head as a multi-label classifier's, or not (see
    /// [`BertClassifier::is_multi_label`]: a head of one output stays a regression's).
    pub fn set_multi_label(&mut self, multi_label: bool) {
        self.multi_label = multi_label;
    }

    /// Outputs of the head: 1 for regression, ≥ 2 for classification. Read from the
    /// classifier's weight, so that it cannot disagree with the logits the head computes.
    pub fn num_labels(&self) -> usize {
        self.classifier.out_in().0
    }

    /// The plan applied with [`BertClassifier::apply_plan`], while the model still has its
    /// shape (`None` before any, after [`BertClassifier::merge_lora`], and after an
    /// `apply_plan` that failed part way).
    pub fn plan(&self) -> Option<&PeftPlan> {
        self.plan.as_ref()
    }

    /// Refuses `base` where the model was loaded from a checkpoint with other weights (compared
    /// by [`WeightsFile::encoder_fingerprint`]): an adapter saved or trained against it would
    /// record a base it was not trained on, and load onto neither. A model built otherwise (by
    /// hand) records no base and is not checked. The check is the fingerprint's: base weights
    /// that differ from the model's only in a matrix's values pass it.
    pub fn check_base(&self, base: &WeightsFile) -> Result<()> {
        let family = self.config().family();
        match &self.base_fingerprint {
            Some(_) if base.family() != family => Err(Error::Mismatch {
                path: base.path().to_path_buf(),
                detail: format!(
                    "the weights are read by {} names where the model is a {} encoder: open \
                     them with `Checkpoint::open` (which reads `config.json`) or \
                     `WeightsFile::read_as`",
                    base.family().display(),
                    family.display()
                ),
            }),
            Some(own) if own != base.encoder_fingerprint()? => Err(Error::Mismatch {
                path: base.path().to_path_buf(),
                detail: "not the weights the model was loaded from (the encoder's tensors \
                         differ): an adapter records its base by them and loads onto that base \
                         alone; give the weights of the checkpoint the model was built from"
                    .into(),
            }),
            _ => Ok(()),
        }
    }

    /// Refuses `plan` where the model was built under another one, or where its trainable
    /// tensors were changed after the plan was applied (set trainable, frozen or replaced by
    /// another shape through `params_mut`): a save or a training run would record tensors
    /// the plan does not name, and the adapter could not be loaded.
    pub fn check_plan(&self, plan: &PeftPlan) -> Result<()> {
        if self.lora_merged {
            return Err(Error::invalid(
                "peft plan",
                "the model's LoRA adapters were merged into its weights: it no longer has a \
                 plan's tensors (save or train before merging)",
            ));
        }
        match &self.plan {
            Some(applied) if applied != plan => Err(Error::invalid(
                "peft plan",
                match (applied.method, &applied.strata) == (plan.method, &plan.strata) {
                    // The same method and strata: name the part that differs.
                    true => format!(
                        "the model was built under another plan than the one given: the same \
                         {} with strata {:?}, but LoRA {} there and {} here{}",
                        plan.method,
                        plan.strata,
                        describe_lora(applied.lora.as_ref()),
                        describe_lora(plan.lora.as_ref()),
                        match applied.lora == plan.lora {
                            true => " (and what else trains differs)",
                            false => "",
                        }
                    ),
                    false => format!(
                        "the model was built under another plan ({} with strata {:?}) than the \
                         one given ({} with strata {:?})",
                        applied.method, applied.strata, plan.method, plan.strata
                    ),
                },
            )),
            Some(_) => self.check_trainables_as_planned(),
            // Without a plan every weight trains, whatever `plan` says: a save would record
            // tensors the plan does not name.
            None => Err(Error::invalid(
                "peft plan",
                format!(
                    "no plan was applied to the model (or applying one failed part way): call \
                     apply_plan with the {} plan first",
                    plan.method
                ),
            )),
        }
    }

    /// The trainable tensors still those, and of the shapes, the plan left (see `planned`).
    fn check_trainables_as_planned(&self) -> Result<()> {
        // Layers removed by hand (`bert.layers` is public) are that, not frozen tensors.
        let (layers, configured) = (self.bert.layers.len(), self.config().num_hidden_layers);
        if layers != configured {
            return Err(Error::invalid(
                "peft plan",
                format!(
                    "the model has {layers} encoder layers where its config (its base \
                     checkpoint's, and its plan's) has {configured}: an adapter of it would \
                     not load onto that base"
                ),
            ));
        }
        let now = self.trainable_shapes();
        if now == self.planned {
            return Ok(());
        }
        // A head replaced whole by one of another class count (weight and bias agreeing, on
        // the same width) saves and loads: the adapter's head sizes the model it loads into.
        let dims = |list: &[(String, Shape)], name: &str| {
            list.iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s.dims().to_vec())
        };
        let head_replaced_whole = match (
            dims(&now, "classifier.weight"),
            dims(&now, "classifier.bias"),
            dims(&self.planned, "classifier.weight"),
        ) {
            (Some(w), Some(b), Some(planned)) => {
                w.len() == 2 && planned.len() == 2 && w[1] == planned[1] && b == [w[0]]
            }
            _ => false,
        };
        let mut why = Vec::new();
        for (name, shape) in &now {
            match self.planned.iter().find(|(n, _)| n == name) {
                None => why.push(format!("`{name}` trains, which the plan freezes")),
                Some(_) if head_replaced_whole && name.starts_with("classifier.") => {}
                Some((_, planned)) if planned != shape => why.push(format!(
                    "`{name}` has shape {shape} where the plan made it {planned}"
                )),
                Some(_) => {}
            }
        }
        for (name, _) in &self.planned {
            if !now.iter().any(|(n, _)| n == name) {
                why.push(format!("`{name}` is frozen, which the plan trains"));
            }
        }
        if why.is_empty() {
            return Ok(());
        }
        const SAID: usize = 4;
        if why.len() > SAID {
            let more = why.len() - SAID;
            why.truncate(SAID);
            why.push(format!("and {more} more"));
        }
        Err(Error::invalid(
            "peft plan",
            format!(
                "the model's trainable tensors are no longer those its plan trains ({}): \
                 changed after `apply_plan` (through `params_mut`), they would train and save \
                 as an adapter no load of the plan accepts; build the model again and apply \
                 a plan that trains what is wanted",
                why.join("; ")
            ),
        ))
    }

    /// The architecture.
    pub fn config(&self) -> &BertConfig {
        &self.bert.config
    }

    /// Applies a PEFT plan: strata per layer, adapters from `init(name, shape)` (see
    /// [`crate::peft::peft_lora_init`]), embeddings / pooler / LayerNorm options. The
    /// classifier always trains. A pooler the checkpoint lacked must train too: frozen, its
    /// random weights would be part of the model without being saved with the adapter. A
    /// model takes one plan: a second call is refused (once its layers have been changed,
    /// even by a call that then failed), since weights trained or merged under the first
    /// would not be what the second plan's adapter records.
    pub fn apply_plan(
        &mut self,
        plan: &PeftPlan,
        init: &mut dyn FnMut(&str, Shape) -> Result<Tensor<B>>,
    ) -> Result<()> {
        // Weights trained under a first plan (biases, a head) or merged adapters are not what
        // a second plan's adapter would record: it would save tensors that do not reproduce
        // the model, or drop trained adapters without a word.
        if self.plan_applied {
            return Err(Error::invalid(
                "peft plan",
                "a plan was already applied to this model (and it may have trained or merged \
                 under it): build a new model (`from_checkpoint`) for another plan",
            ));
        }
        if self.fresh_pooler && !plan.train_pooler {
            let family = self.config().family();
            let why = match family {
                EncoderFamily::Bert | EncoderFamily::Ernie | EncoderFamily::DebertaV2 => &*format!(
                    "the checkpoint has no pooler (`{}`; saved without one, e.g. {}), so the \
                     classifier's pooler starts random and must train, and this plan does not \
                     train it: when training, add --train-pooler (the pooler is then saved \
                     with the adapter); an adapter to load must hold a pooler",
                    family.hf_name("bert.pooler.dense"),
                    match family {
                        EncoderFamily::DebertaV2 =>
                            "a bare `DebertaV2Model`, as DeBERTa-v3's \
                                                     published checkpoints are",
                        _ => "`BertModel(add_pooling_layer=False)`",
                    }
                ),
                EncoderFamily::Roberta | EncoderFamily::Electra | EncoderFamily::Mpnet => {
                    "the checkpoint has no classification head (`classifier.dense`), so the \
                     head's dense map starts random and must train, and this plan does not \
                     train it: build the plan from `PeftConfig::for_family` (the CLI does), \
                     which trains it with the head; an adapter to load must hold it"
                }
                EncoderFamily::DistilBert => {
                    "the checkpoint has no classification head (`pre_classifier`), so the \
                     head's dense map starts random and must train, and this plan does not \
                     train it: build the plan from `PeftConfig::for_family` (the CLI does), \
                     which trains it with the head; an adapter to load must hold it"
                }
            };
            return Err(Error::invalid("peft plan", why));
        }
        let layers = self.bert.layers.len();
        if plan.strata.len() != layers {
            return Err(Error::invalid(
                "peft plan",
                format!(
                    "the plan has {} strata but the model has {layers} layers",
                    plan.strata.len()
                ),
            ));
        }
        // A plan built field by field may not belong together; saved, it would be an adapter
        // that no load accepts, written over a good one.
        if let Some(why) = plan.inconsistency() {
            return Err(Error::invalid("peft plan", why));
        }
        if let Some(lora) = &plan.lora {
            lora.validate()?;
        }
        // Until every layer has its stratum the model is under no plan: a failure part way
        // leaves it refused by `check_plan`, not passing for the plan it had before.
        self.plan = None;
        self.plan_applied = true;
        for (index, (layer, &stratum)) in self.bert.layers.iter_mut().zip(&plan.strata).enumerate()
        {
            layer.set_stratum(index, stratum, plan.lora.as_ref(), &mut *init)?;
            if plan.train_layer_norm_weights && stratum != Stratum::Frozen {
                layer.attention_norm.weight.trainable = true;
                layer.output_norm.weight.trainable = true;
            }
        }
        for p in self.bert.embeddings.params_mut() {
            p.trainable = plan.train_embeddings;
        }
        // Part of the encoder, not of any layer or stratum: full fine-tuning trains it, as
        // transformers does; the parameter-efficient methods keep it.
        let full = plan.method == crate::peft::Method::Full;
        if let Some(table) = &mut self.bert.relative_position {
            table.trainable = full;
        }
        for p in self
            .bert
            .relative_embeddings
            .iter_mut()
            .flat_map(|r| r.params_mut())
        {
            p.trainable = full;
        }
        for p in self.bert.pooler.params_mut() {
            p.trainable = plan.train_pooler;
        }
        self.classifier.weight.trainable = true;
        self.classifier.bias.trainable = true;
        self.planned = self.trainable_shapes();
        self.plan = Some(plan.clone());
        self.lora_merged = false;
        Ok(())
    }

    /// The trainable tensors' names (sorted) and shapes.
    fn trainable_shapes(&self) -> Vec<(String, Shape)> {
        let mut v: Vec<(String, Shape)> = self
            .params()
            .into_iter()
            .filter(|p| p.trainable)
            .map(|p| (p.name.clone(), p.value.shape().clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Sets every DoRA adapter's magnitudes to the norms of its adapted weight's rows, as PEFT
    /// initialises them (see [`Linear::initialise_dora_magnitude`]): a fresh DoRA adapter
    /// then computes what its LoRA adapter alone would.
    pub fn initialise_dora_magnitudes(&mut self, backend: &B) -> Result<()> {
        for layer in &mut self.bert.layers {
            for target in crate::nn::LoraTarget::ALL {
                layer
                    .linear_mut(target)
                    .initialise_dora_magnitude(backend)?;
            }
        }
        Ok(())
    }

    /// Holds every DoRA adapter's norms at their current values (see
    /// [`Linear::hold_dora_norms`]), or, with `hold` false, releases them.
    pub fn hold_dora_norms(&mut self, backend: &B, hold: bool) -> Result<()> {
        for layer in &mut self.bert.layers {
            for target in crate::nn::LoraTarget::ALL {
                let linear = layer.linear_mut(target);
                match hold {
                    true => linear.hold_dora_norms(backend)?,
                    false => linear.release_dora_norms(),
                }
            }
        }
        Ok(())
    }

    /// Folds every LoRA adapter into its base weight (see [`Linear::merge_lora`]), a DoRA
    /// adapter with its magnitudes (see [`Linear::merge_dora`]).
    pub fn merge_lora(&mut self, backend: &B) -> Result<()> {
        for layer in &mut self.bert.layers {
            for target in crate::nn::LoraTarget::ALL {
                let linear = layer.linear_mut(target);
                if linear.lora.is_some() {
                    self.lora_merged = true;
                    self.plan = None;
                }
                linear.merge_lora(backend)?;
            }
        }
        Ok(())
    }

    /// Logits `[batch, num_labels]`. The last encoder layer runs on the `[CLS]` rows only
    /// ([`BertModel::forward_pooled`]); [`BertModel::forward`] gives every token's hidden state.
    pub fn forward(
        &self,
        tape: &mut Tape<B>,
        input: &ModelInput<B>,
        dropouts: &mut DropoutPlan,
    ) -> Result<Var<B>> {
        let pooler_output = self.bert.forward_pooled(tape, input, dropouts)?;
        tape.set_scope("classifier");
        let pooled = tape.dropout(&pooler_output, dropouts.next_classifier())?;
        self.classifier.forward(tape, &pooled, dropouts)
    }

    /// Mean cross-entropy (classification), mean binary cross-entropy of a sigmoid per class
    /// (multi-label) or mean squared error (regression) of `logits`.
    pub fn loss(&self, tape: &mut Tape<B>, logits: &Var<B>, labels: &Labels<B>) -> Result<Var<B>> {
        tape.set_scope("loss");
        match (labels, self.num_labels()) {
            (Labels::Classes(y), n) if n >= 2 => tape.cross_entropy(logits, y),
            (Labels::Scores(y), 1) => tape.mse(logits, y),
            (Labels::MultiHot(y), _) => tape.bce_with_logits(logits, y),
            (Labels::Classes(_), _) => Err(Error::invalid(
                "loss",
                "class labels need num_labels ≥ 2; a 1-label head is a regression head",
            )),
            (Labels::Scores(_), n) => Err(Error::invalid(
                "loss",
                format!("float scores need a regression head (num_labels = 1), not {n}"),
            )),
        }
    }

    /// Every parameter.
    pub fn params(&self) -> Vec<&Param<B>> {
        let mut v = self.bert.params();
        v.extend(self.classifier.params());
        v
    }

    /// Stores every frozen linear weight in `backend`'s [`Backend::frozen_dtype`]: bf16 in
    /// bf16 mode (CUDA's or the CPU's), half the memory of the frozen weights (their products
    /// round to bf16 anyway); nothing changes in f32 or f64. Call it after
    /// [`BertClassifier::apply_plan`]: what trains keeps its dtype.
    pub fn store_frozen_weights(&mut self, backend: &B) -> Result<()> {
        for layer in &mut self.bert.layers {
            layer.store_frozen_weights(backend)?;
        }
        self.bert.embeddings.store_frozen_weights(backend)?;
        self.bert.pooler.store_frozen_weight(backend)?;
        self.classifier.store_frozen_weight(backend)
    }

    /// Whether any linear weight is frozen: what [`BertClassifier::store_frozen_weights`]
    /// stores in bf16 in bf16 mode (full fine-tuning freezes none).
    pub fn has_frozen_linear_weights(&self) -> bool {
        let bert = &self.bert;
        let layers = bert
            .layers
            .iter()
            .flat_map(|layer| crate::nn::LoraTarget::ALL.map(|target| layer.linear(target)));
        layers
            .chain([&bert.pooler, &self.classifier])
            .chain(&bert.embeddings.project)
            .any(|linear| !linear.weight.trainable)
    }

    /// Every parameter, mutably.
    pub fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        let mut v = self.bert.params_mut();
        v.extend(self.classifier.params_mut());
        v
    }

    /// Names of the trainable tensors, sorted.
    pub fn trainable_names(&self) -> Vec<String> {
        crate::nn::trainable_names(self.params())
    }

    /// Encoder layers a training step keeps activations of: those from the lowest one with
    /// a trainable tensor up (all of them when the embeddings train), since the tape records
    /// nothing below the first thing it differentiates.
    pub fn layers_on_tape(&self) -> usize {
        let trains = |params: Vec<&Param<B>>| params.iter().any(|p| p.trainable);
        let layers = &self.bert.layers;
        if trains(self.bert.embeddings.params()) {
            return layers.len();
        }
        layers
            .iter()
            .position(|layer| trains(layer.params()))
            .map_or(0, |lowest| layers.len() - lowest)
    }

    /// Number of trainable scalars.
    pub fn trainable_parameter_count(&self) -> usize {
        self.params()
            .into_iter()
            .filter(|p| p.trainable)
            .map(|p| p.value.numel())
            .sum()
    }

    /// The first trainable tensor holding NaN, infinite or overflowing values, with its sum
    /// of squares: weights a diverged run left, which must be neither saved nor used.
    pub fn non_finite_trainable(&self, backend: &B) -> Result<Option<(String, f64)>> {
        let trainable: Vec<_> = self.params().into_iter().filter(|p| p.trainable).collect();
        let values: Vec<&Tensor<B>> = trainable.iter().map(|p| &p.value).collect();
        let sums = backend.sum_squares_each(&values)?;
        Ok(trainable
            .iter()
            .zip(sums)
            .find(|(_, sum)| !sum.is_finite())
            .map(|(p, sum)| (p.name.clone(), sum)))
    }
}

/// Layer `layer`'s linear weights stay frozen under `plan` (a plan for other layers than the
/// model's is refused when applied, before anything trains).
fn keeps_weights_frozen(plan: &PeftPlan, layer: usize) -> bool {
    plan.strata
        .get(layer)
        .is_some_and(|stratum| !stratum.trains_weights())
}

fn store_if_frozen<B: Backend>(
    backend: &B,
    index: usize,
    layer: &mut crate::nn::EncoderLayer<B>,
    frozen_weights: &dyn Fn(usize) -> bool,
) -> Result<()> {
    match frozen_weights(index) {
        true => layer.store_frozen_weights(backend),
        false => Ok(()),
    }
}

fn fresh_head<B: Backend>(
    backend: &B,
    config: &BertConfig,
    num_labels: usize,
    seed: u64,
) -> Result<Linear<B>> {
    let hidden = config.hidden_size;
    let size = num_labels
        .checked_mul(hidden)
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            Error::invalid(
                "classifier",
                format!("a head of {num_labels} outputs over {hidden} features cannot be built"),
            )
        })?;
    let mut rng = SplitMix::new(seed ^ crate::peft::init_hash("classifier.weight"));
    // A count from the caller may ask for more memory than there is: an allocation that
    // fails aborts the process, so it is asked for first and refused as an error.
    let mut w: Vec<f64> = Vec::new();
    w.try_reserve_exact(size).map_err(|_| Error::OutOfMemory {
        op: "classifier",
        detail: format!(
            "host: a head of {num_labels} outputs over {hidden} features needs {} GiB",
            size.saturating_mul(8) >> 30
        ),
    })?;
    w.extend((0..size).map(|_| config.initializer_range * rng.normal()));
    Linear::new(
        "classifier",
        backend.tensor_from_f64(Shape::new([num_labels, hidden]), &w)?,
        backend.zeros(Shape::new([num_labels]))?,
    )
}

/// A plan's LoRA settings in words, adapters that differ included, for an error that
/// compares two.
fn describe_lora(lora: Option<&crate::nn::LoraConfig>) -> String {
    match lora {
        None => "none".into(),
        Some(l) => {
            let targets: Vec<&str> = l.targets.iter().map(|t| t.module()).collect();
            format!(
                "r {} alpha {} dropout {} on {}{}",
                l.rank,
                l.alpha,
                l.dropout,
                targets.join(","),
                l.site_differences()
            )
        }
    }
}

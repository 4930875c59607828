//! Hugging Face BERT checkpoints: `config.json`, `model.safetensors`, `tokenizer.json`.

mod config;
mod deberta;
mod family;
mod location;
mod weights;

pub use config::BertConfig;
pub use deberta::{DebertaKeys, DebertaSettings, RelativePositions};
pub use family::{EncoderFamily, PoolerActivation};
pub use location::{hub_cache_roots, resolve, resolve_with_caches};
pub use weights::{WeightsFile, NON_FINITE_WEIGHTS};

use std::path::{Path, PathBuf};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};
use crate::text::TextTokenizer;

/// An opened checkpoint directory.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    /// `config.json`'s `architectures` (see [`Checkpoint::foreign_head`]).
    architectures: Vec<String>,
    /// The architecture.
    pub config: BertConfig,
    /// The weights.
    pub weights: WeightsFile,
}

/// The `problem_type` of a multi-label classifier's config.
pub(crate) const MULTI_LABEL: &str = "multi_label_classification";

impl Checkpoint {
    /// Opens a checkpoint directory or offline Hugging Face cache entry (see [`resolve`]).
    pub fn open(spec: impl AsRef<Path>) -> Result<Self> {
        let dir = resolve(spec.as_ref())?;
        let config_path = dir.join("config.json");
        let (config, config_json) = BertConfig::from_json_keeping_value(
            &crate::text_file::read_utf8(&config_path)?,
            &config_path,
        )?;
        let weights = open_weights(&dir)?.read_as(config.family());
        check_layer_count(&config, &weights)?;
        Ok(Checkpoint {
            dir,
            architectures: config::architectures(&config_json),
            config,
            weights,
        })
    }

    /// The outputs of the classifier head the checkpoint holds (`classifier.weight`
    /// `[n, hidden]` with `classifier.bias` `[n]`), when it holds a whole one that spafit's
    /// heads can be: another kind of head ([`Checkpoint::other_kind_of_head`]) is none.
    pub fn classifier_outputs(&self) -> Option<usize> {
        match self.other_kind_of_head() {
            Some(_) => None,
            None => self.classifier_head().ok().flatten(),
        }
    }

    /// What the checkpoint's whole `classifier` head is when it is not a single-label,
    /// multi-label or regression head of a sequence classifier: another architecture's
    /// ([`Checkpoint::foreign_head`]) or a regression of several targets. Such a head is not
    /// used: evaluating it is refused, and training starts from a fresh head on its encoder.
    pub fn other_kind_of_head(&self) -> Option<String> {
        let outputs = self.classifier_head().ok().flatten()?;
        if let Some(architecture) = self.foreign_head() {
            return Some(format!(
                "`architectures` is `{architecture}`: its `classifier` is not a sequence \
                 classifier's head (one score per answer choice or per token, not per class)"
            ));
        }
        match self.config.problem_type.as_deref() {
            Some("regression") if outputs > 1 => Some(format!(
                "`problem_type` is `regression` and its `classifier` has {outputs} outputs: a \
                 regression of {outputs} targets at once, while spafit's regression gives one \
                 score"
            )),
            _ => None,
        }
    }

    /// Whether `config.json`'s `problem_type` is `multi_label_classification`: the head, if
    /// any, scores each class on its own (a sigmoid each, any number of them true).
    pub fn is_multi_label(&self) -> bool {
        self.problem_is_multi_label() == Some(true)
    }

    /// Whether `problem_type` says multi-label (`true`) or names another problem, a
    /// single-label classification or a regression (`false`); `None` without one (transformers
    /// then reads several outputs as a softmax, and a model trained on the checkpoint may have
    /// been told otherwise).
    pub fn problem_is_multi_label(&self) -> Option<bool> {
        self.config.problem_type.as_ref().map(|p| p == MULTI_LABEL)
    }

    /// The architecture that saved the checkpoint's `classifier`, when `config.json`'s
    /// `architectures` says it is not a sequence classifier's: `BertForMultipleChoice` (one
    /// score per answer choice, which would read as a regression head) or
    /// `BertForTokenClassification` (one prediction per token), or another family's class
    /// of those two kinds, all of which name their head `classifier`. Such a head is neither
    /// evaluated nor trained on; a fresh one replaces it.
    pub fn foreign_head(&self) -> Option<&str> {
        const OTHER_HEADS: [&str; 2] = ["ForMultipleChoice", "ForTokenClassification"];
        let names = &self.architectures;
        let ours = self
            .config
            .family()
            .sequence_classifier(self.config.model_type.as_deref());
        if names.iter().any(|a| a == ours) {
            return None;
        }
        names
            .iter()
            .find(|a| OTHER_HEADS.iter().any(|kind| a.ends_with(kind)))
            .map(String::as_str)
    }

    /// What is wrong with the classifier head the checkpoint holds in part or in shapes
    /// that do not fit together (`classifier.weight` without `classifier.bias`, rows that
    /// are not the bias's length, inputs that are not the hidden size); `None` for a whole
    /// head or none at all.
    pub fn classifier_head_problem(&self) -> Option<String> {
        self.classifier_head().err()
    }

    /// The rows of the tensor a sequence classifier's head weight is read from (`classifier.weight`,
    /// RoBERTa's `classifier.out_proj.weight`), whatever head saved it (a token classifier's
    /// too): transformers refuses to load it into a head of another size unless told to
    /// ignore the mismatch.
    pub fn classifier_rows(&self) -> Option<usize> {
        self.weights
            .shape("classifier.weight")
            .and_then(|shape| shape.first().copied())
    }

    /// The head's outputs (`None` without a head), or what is wrong with it: one reading of
    /// the two tensors for both questions, so they cannot disagree.
    fn classifier_head(&self) -> std::result::Result<Option<usize>, String> {
        let h = self.config.hidden_size;
        // Named as the file names them (RoBERTa's `classifier.out_proj`).
        let family = self.config.family();
        let (weight, bias) = (
            family.hf_name("classifier.weight"),
            family.hf_name("classifier.bias"),
        );
        match (
            self.weights.shape("classifier.weight"),
            self.weights.shape("classifier.bias"),
        ) {
            (None, None) => Ok(None),
            (Some(w), None) => Err(format!("`{weight}` {w:?} is there but `{bias}` is missing")),
            (None, Some(b)) => Err(format!("`{bias}` {b:?} is there but `{weight}` is missing")),
            (Some(w), Some(b)) => match (w.as_slice(), b.as_slice()) {
                (&[n, inputs], &[m]) if n == m && n > 0 && inputs == h => Ok(Some(n)),
                _ => Err(format!(
                    "the classifier head does not fit together: `{weight}` {w:?}, `{bias}` \
                     {b:?} (expected [num_labels, {h}] and [num_labels])"
                )),
            },
        }
    }

    /// The resolved directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Tensor `name` (Hugging Face name, `bert.` prefix optional in the file) on `backend`.
    pub fn tensor<B: Backend>(&self, backend: &B, name: &str, shape: Shape) -> Result<Tensor<B>> {
        self.weights.tensor(backend, name, shape)
    }

    /// Refuses a truncation length longer than the model's position table, as
    /// [`Checkpoint::tokenizer`] does: a caller checks it before reading any data.
    pub fn check_max_len(&self, max_len: usize) -> Result<()> {
        let most = self.config.max_tokens();
        if max_len > most {
            return Err(Error::invalid(
                "tokenizer",
                format!(
                    "max length {max_len} exceeds the model's {most} positions ({}): give \
                     --max-len {most} or less",
                    self.config.max_tokens_source()
                ),
            ));
        }
        Ok(())
    }

    /// The tokenizer in `tokenizer.json` (or, for a checkpoint without one, BERT's built from
    /// `vocab.txt` and `tokenizer_config.json`, or RoBERTa's from `vocab.json` and
    /// `merges.txt`), truncating to `max_len` tokens, checked against the model's vocabulary
    /// and position table. A RoBERTa checkpoint's `tokenizer.json` is read as
    /// `RobertaTokenizer` unless `tokenizer_config.json` names another class, as transformers'
    /// AutoTokenizer reads it.
    pub fn tokenizer(&self, max_len: usize) -> Result<TextTokenizer> {
        let mut path = self.dir.join("tokenizer.json");
        self.check_max_len(max_len)?;
        let vocab = self.dir.join("vocab.txt");
        let config = Some(self.dir.join("tokenizer_config.json")).filter(|c| c.is_file());
        let (bpe_vocab, merges) = (self.dir.join("vocab.json"), self.dir.join("merges.txt"));
        let roberta = self.config.family() == EncoderFamily::Roberta;
        let tok = if !path.exists() && roberta && bpe_vocab.is_file() && merges.is_file() {
            path = bpe_vocab;
            TextTokenizer::from_bpe_vocab(&path, &merges, config.as_deref(), max_len)?
        } else if !path.exists() && vocab.is_file() {
            path = vocab;
            // An MPNet's class, which AutoTokenizer builds from vocab.txt as it does from
            // tokenizer.json: config.json's, else the model type's.
            let implied = (self.config.family() == EncoderFamily::Mpnet)
                .then(|| (self.config.tokenizer_class.as_deref()).unwrap_or("MPNetTokenizer"));
            TextTokenizer::from_vocab_of_class(&path, config.as_deref(), max_len, implied)?
        } else if !path.exists() {
            // XLM-R and CamemBERT checkpoints ship tokenizer.json beside the SentencePiece model they were
            // converted from; the model alone would need SentencePiece's own reader.
            let spm = [
                "sentencepiece.bpe.model",
                "spiece.model",
                "tokenizer.model",
                "spm.model",
            ]
            .into_iter()
            .find(|f| self.dir.join(f).is_file())
            .map_or(String::new(), |f| {
                format!(
                    "; {f} is a SentencePiece model, which spafit reads only as converted \
                         to tokenizer.json (transformers' save_pretrained writes one)"
                )
            });
            return Err(Error::Io {
                path,
                error: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "no tokenizer file (nor a vocab.txt to build BERT's tokenizer from, or \
                         for RoBERTa a vocab.json and merges.txt){spm}"
                    ),
                ),
            });
        } else {
            // As transformers' AutoTokenizer picks where tokenizer_config.json names no class:
            // config.json's class, else the model type's.
            let by_type = match (self.config.family(), self.config.model_type.as_deref()) {
                (EncoderFamily::Roberta, Some("xlm-roberta")) => Some("XLMRobertaTokenizer"),
                (EncoderFamily::Roberta, Some("camembert")) => Some("CamembertTokenizer"),
                (EncoderFamily::Roberta, _) => Some("RobertaTokenizer"),
                (EncoderFamily::Mpnet, _) => Some("MPNetTokenizer"),
                (EncoderFamily::DebertaV2, _) => Some("DebertaV2Tokenizer"),
                // transformers maps electra, distilbert and ernie to BertTokenizer itself (so
                // a DistilBERT folder naming no class gets segment ids, which it never reads).
                (
                    EncoderFamily::Bert
                    | EncoderFamily::Electra
                    | EncoderFamily::DistilBert
                    | EncoderFamily::Ernie,
                    _,
                ) => None,
            };
            let implied = self.config.tokenizer_class.as_deref().or(by_type);
            TextTokenizer::from_files_of_class(&path, config.as_deref(), max_len, implied)?
        };
        if tok.vocab_size() > self.config.vocab_size {
            return Err(Error::Format {
                path,
                detail: format!(
                    "the tokenizer has {} tokens but the model's vocab_size is {}{}",
                    tok.vocab_size(),
                    self.config.vocab_size,
                    added_beyond(&tok, self.config.vocab_size)
                ),
            });
        }
        if let Some((id, token)) = tok
            .largest_id()
            .filter(|(id, _)| *id as usize >= self.config.vocab_size)
        {
            return Err(Error::Format {
                path,
                detail: format!(
                    "token `{token}` has id {id}, beyond the model's vocab_size {} \
                     (config.json){}",
                    self.config.vocab_size,
                    added_beyond(&tok, self.config.vocab_size)
                ),
            });
        }
        // The post-processor's special tokens, the padding id and the segment ids come from
        // other parts of the file than the vocabulary: a probe pair shows what they are.
        // At the full position table, so a --max-len too short for a pair hides nothing.
        // (No copy of the tokenizer for it: a large vocabulary's copy costs.)
        let mut tok = tok;
        tok.set_max_len(self.config.max_tokens())?;
        let probe = tok.encode(crate::text::TextInput::Pair("a", "b")).ok();
        let single = tok.encode(crate::text::TextInput::Single("a")).ok();
        tok.set_max_len(max_len)?;
        let ids = probe.iter().chain(&single).flat_map(|e| &e.ids).copied();
        if let Some(id) = ids
            .chain([tok.pad_id()])
            .find(|&id| id as usize >= self.config.vocab_size)
        {
            return Err(Error::Format {
                path,
                detail: format!(
                    "the tokenizer emits token id {id} (a special or padding token), beyond the \
                     model's vocab_size {} (config.json)",
                    self.config.vocab_size
                ),
            });
        }
        // A model with one segment type (RoBERTa-style conversions) still takes single
        // sentences; only pairs need the second.
        // DistilBERT reads no segments at all.
        let types = probe.iter().flat_map(|e| &e.type_ids).copied();
        let read = self.config.has_token_types();
        if let Some(t) = types
            .into_iter()
            .find(|&t| read && t as usize >= self.config.type_vocab_size)
        {
            tok.refuse_pairs(format!(
                "{} emits segment (type) id {t} for a sentence pair, beyond the model's \
                 type_vocab_size {} ({}): this model takes single sentences only",
                path.display(),
                self.config.type_vocab_size,
                self.dir.join("config.json").display()
            ));
        }
        Ok(tok)
    }
}

/// The added tokens of `tok` whose ids lie beyond `vocab_size`, for a message: special or
/// added tokens the tokenizer's files name that its vocabulary lacks (a `pad_token` of
/// tokenizer_config.json, say), which transformers gives new ids as well.
fn added_beyond(tok: &TextTokenizer, vocab_size: usize) -> String {
    let beyond = tok.added_tokens_from(vocab_size);
    if beyond.is_empty() {
        return String::new();
    }
    let listed: Vec<String> = beyond
        .iter()
        .take(5)
        .map(|(id, token)| format!("`{token}` (id {id})"))
        .collect();
    format!(
        "; beyond it: {}{} — tokens tokenizer_config.json or special_tokens_map.json names \
         (pad_token, mask_token, ...) or lists, or tokenizer.json adds, which the vocabulary \
         lacks",
        listed.join(", "),
        if beyond.len() > 5 { ", ..." } else { "" }
    )
}

/// `model.safetensors`, else the shards `model.safetensors.index.json` lists (as
/// transformers saves a model larger than its shard size).
fn open_weights(dir: &Path) -> Result<WeightsFile> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.exists() || !index.exists() {
        return WeightsFile::open(&single).map_err(|e| match e {
            Error::Io {
                path,
                error: source,
            } if source.kind() == std::io::ErrorKind::NotFound => {
                let pickle = dir.join("pytorch_model.bin").exists();
                let dangling = single.symlink_metadata().is_ok();
                Error::Io {
                    path,
                    error: std::io::Error::new(
                        source.kind(),
                        if dangling {
                            "a link to a file that does not exist (in a hub cache, a blob an \
                             interrupted download did not finish): download the model again"
                        } else if pickle {
                            "no such file; the folder has pytorch_model.bin, which spafit does \
                             not read (a pickle): save the model with safetensors \
                             (save_pretrained(dir, safe_serialization=True))"
                        } else {
                            "no such file (nor model.safetensors.index.json, for a sharded \
                             checkpoint)"
                        },
                    ),
                }
            }
            other => other,
        });
    }
    WeightsFile::open_sharded(&index)
}

/// Refuses a config whose layer count is not the one the weights hold: more layers would
/// fail later on a missing tensor (after allocating for all of them), fewer would silently
/// run a truncated model.
fn check_layer_count(config: &BertConfig, weights: &WeightsFile) -> Result<()> {
    // `encoder.layer` (`transformer.layer` in DistilBERT), with or without the prefix.
    let family = config.family();
    let container = family.hf_name_in_base_model("bert.encoder.layer");
    let found: std::collections::BTreeSet<usize> = weights
        .names()
        .iter()
        .filter_map(|name| {
            let rest = name.split_once(&format!("{container}."))?.1;
            rest.split('.').next()?.parse::<usize>().ok()
        })
        .collect();
    let layers = found.last().map_or(0, |last| last.saturating_add(1));
    if layers == config.num_hidden_layers && found.len() == layers {
        return Ok(());
    }
    let key = match family {
        EncoderFamily::DistilBert => "n_layers",
        _ => "num_hidden_layers",
    };
    let held = match found.len() == layers {
        true => format!(
            "holds {layers} encoder layers (`{container}.0` to `{container}.{}`)",
            layers.saturating_sub(1)
        ),
        // Numbers with holes: a layer's tensors are missing, or stray ones were added.
        false => format!(
            "holds encoder layers {} (`{container}.N`), not one run from 0",
            found
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    // A config cut short is a way to prune a model that transformers follows (it drops the
    // other layers with a warning); which of the two was meant cannot be told here.
    let remedy = match found.len() == layers && layers > config.num_hidden_layers {
        true => format!(
            "; transformers would run the first {} and leave the rest unused (with a \
             warning): set `{key}` to {layers} to run them all, or save the weights without \
             the layers past it to run {}",
            config.num_hidden_layers, config.num_hidden_layers
        ),
        false => String::new(),
    };
    Err(Error::Format {
        path: weights.path().to_path_buf(),
        detail: format!(
            "{held} but config.json's `{key}` is {}{remedy}",
            config.num_hidden_layers
        ),
    })
}

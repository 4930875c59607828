//! spafit: parameter-efficient fine-tuning of BERT-style encoders.
//!
//! SPAFIT (Arora & Wang, 2024) splits an encoder's layers into three strata: the bottom
//! layers frozen, the middle ones training only their biases (BitFit), the top ones training
//! LoRA adapters and biases. Full fine-tuning, BitFit and LoRA run on the same machinery.
//!
//! The crate is layered one way:
//! - [`tensor`]: shapes, dtypes and backend-owned buffers;
//! - [`backend`]: one interface with one method per fused op; the CPU reference backend
//!   (f64, f32) and the CUDA backend (f32, bf16; on a GPU, or on the CPU stand-in for the
//!   driver, `cuda-emu`);
//! - [`autograd`]: a tape that records only what it will differentiate;
//! - [`nn`]: BERT layers with Hugging Face parameter names and per-layer strata;
//! - [`checkpoint`], [`text`]: Hugging Face checkpoints and tokenizers;
//! - [`model`]: BERT for sequence classification / regression;
//! - [`peft`]: full, BitFit, LoRA and SPAFIT as plans of strata;
//! - [`data`], [`metrics`]: GLUE and custom CSV/TSV/JSONL tasks, and their metrics;
//! - [`train`]: AdamW, the trainer with its resumable runs, evaluation and prediction;
//! - [`adapter`]: saving and loading adapters, and PEFT's format both ways;
//! - [`gradcheck`], [`bench`](mod@bench): finite-difference checks of the gradients, and the
//!   training-step benchmark;
//! - [`prelude`]: the names an embedding program usually needs, in one import;
//! - [`shell_word`](mod@shell_word): the words of the commands messages suggest.
//!
//! # Settings named in messages
//!
//! Errors and notices name a setting by the `spafit` command's flag, the words most readers
//! of a message typed. An embedding program sets the same thing here:
//!
//! | flag | library |
//! |---|---|
//! | `--epochs`, `--batch-size`, `--micro-batch-size`, `--eval-batch-size`, `--weight-decay`, `--warmup-ratio`, `--warmup-steps`, `--lr-schedule`, `--early-stopping-patience`, `--best-metric`, `--max-grad-norm`, `--seed`, `--eval-every`, `--save-every`, `--log-every`, `--max-steps`, `--resume` | the [`TrainConfig`](train::TrainConfig) field of the same name, dashes as underscores |
//! | `--lr` | [`TrainConfig::learning_rate`](train::TrainConfig::learning_rate) |
//! | `--output` | [`TrainConfig::output_dir`](train::TrainConfig::output_dir) |
//! | `--train-file`, `--dev-file` | the datasets given to [`Trainer::fit`](train::Trainer::fit) |
//! | `--method`, `--n1`, `--n2`, `--lora-layers`, `--train-pooler`, `--train-embeddings` | the [`PeftConfig`](peft::PeftConfig) field of the same name |
//! | `--train-layernorm` | [`PeftConfig::train_layer_norm_weights`](peft::PeftConfig::train_layer_norm_weights) |
//! | `--lora-r`, `--lora-alpha`, `--lora-dropout`, `--lora-targets` | [`LoraConfig`](nn::LoraConfig)'s [`rank`](nn::LoraConfig::rank), [`alpha`](nn::LoraConfig::alpha), [`dropout`](nn::LoraConfig::dropout), [`targets`](nn::LoraConfig::targets) |
//! | `--rslora` | [`LoraConfig::alpha`](nn::LoraConfig::alpha) set to alpha·√r (the scale alpha / √r) |
//! | `--text-column`, `--text-pair-column`, `--label-column` | the [`TableSpec`](data::TableSpec) field of the same name |
//! | `--labels`, `--multi-label`, `--regression` | [`TaskKind`](data::TaskKind)'s [`Classification`](data::TaskKind::Classification), [`MultiLabel`](data::TaskKind::MultiLabel), [`Regression`](data::TaskKind::Regression) |
//! | `--skip-malformed` | [`OnMalformed::Skip`](data::OnMalformed::Skip) |
//! | `--glue-dir`, `--task` | [`GlueTask::load`](data::GlueTask::load)'s folder, and the task |
//! | `--max-len` | [`TextTokenizer::set_max_len`](text::TextTokenizer::set_max_len) (or the tokenizer constructors' `max_len`) |
//! | `--adapter` | [`open_adapter`](adapter::open_adapter), [`load_adapter`](adapter::load_adapter) |
//! | `--device cpu`, `--device cuda`, `--device cuda-emu` | [`CpuBackend::new`](backend::cpu::CpuBackend::new), [`CudaBackend::new`](backend::cuda::CudaBackend::new), [`CudaBackend::emulated`](backend::cuda::CudaBackend::emulated) |
//! | `--dtype` | the [`DType`](tensor::DType) those constructors take |
#![warn(missing_docs)]

pub mod adapter;
#[cfg(test)]
mod allocation_peak;
pub mod autograd;
pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod gradcheck;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod peft;
pub mod prelude;
pub mod rng;
pub mod shell_word;
pub mod tensor;
pub mod text;
mod text_file;
pub mod train;

pub use error::{Error, Result};

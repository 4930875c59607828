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
#![warn(missing_docs)]

pub mod adapter;
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

//! spafit: parameter-efficient fine-tuning of BERT-style encoders.
//!
//! SPAFIT (Arora & Wang, 2024) splits an encoder's layers into three strata: the bottom
//! layers frozen, the middle ones training only their biases (BitFit), the top ones training
//! LoRA adapters and biases. Full fine-tuning, BitFit and LoRA run on the same machinery.
//!
//! The crate is layered one way:
//! - [`tensor`]: shapes, dtypes and backend-owned buffers;
//! - [`backend`]: one interface with one method per fused op, and the CPU reference backend;
//! - [`autograd`]: a tape that records only what it will differentiate;
//! - [`nn`]: BERT layers with Hugging Face parameter names and per-layer strata.
#![warn(missing_docs)]

pub mod autograd;
pub mod backend;
pub mod error;
pub mod nn;
pub mod rng;
pub mod tensor;

pub use error::{Error, Result};

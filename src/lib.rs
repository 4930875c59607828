//! spafit: parameter-efficient fine-tuning of BERT-style encoders.

pub mod autograd;
pub mod backend;
pub mod error;
pub mod nn;
pub mod rng;
pub mod tensor;

pub use error::{Error, Result};

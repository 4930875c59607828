//! Text to model inputs.

mod tokenizer;

pub use tokenizer::{EncodedBatch, TextInput, TextTokenizer};

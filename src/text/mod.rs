//! Text to model inputs.

mod tokenizer;

pub use tokenizer::{EncodedBatch, EncodedText, TextInput, TextTokenizer};

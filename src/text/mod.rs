//! Text to model inputs.

mod tokenizer;
mod tokenizer_config;
mod wordpiece_vocab;

pub use tokenizer::{EncodedBatch, EncodedText, TextInput, TextTokenizer};

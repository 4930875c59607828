//! Text to model inputs.

mod tokenizer;
mod wordpiece_vocab;

pub use tokenizer::{EncodedBatch, EncodedText, TextInput, TextTokenizer};

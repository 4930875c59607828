//! Text to model inputs.

mod long_text;
mod roberta_tokenizer;
mod tokenizer;
mod tokenizer_config;
mod wordpiece_vocab;

pub use tokenizer::{EncodedBatch, EncodedText, TextInput, TextTokenizer};

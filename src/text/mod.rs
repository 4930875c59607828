//! Text to model inputs.

mod added_tokens;
mod deberta_tokenizer;
mod long_text;
mod long_words;
mod roberta_tokenizer;
#[cfg(test)]
mod test_texts;
mod tokenizer;
mod tokenizer_class;
mod tokenizer_config;
mod tokenizer_memory;
mod wordpiece_vocab;
mod xlm_roberta_tokenizer;

pub use tokenizer::{EncodedBatch, EncodedText, TextInput, TextTokenizer};

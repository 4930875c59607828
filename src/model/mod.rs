//! BERT for sequence classification and regression, on any backend.

mod bert;
mod class_alignment;
mod disentangled_position;
mod embeddings;
mod input;
mod memory;
mod relative_position;
mod sequence_classifier;

pub use bert::{BertModel, BertOutput};
pub use class_alignment::ClassAlignment;
pub use disentangled_position::{
    log_bucket, relative_band, relative_row, RelativeBand, RelativeEmbeddings,
};
pub use embeddings::BertEmbeddings;
pub use input::ModelInput;
pub(crate) use memory::{available_host_memory, proc_kib};
pub use memory::{check_batch_memory, memory_alternatives, while_loading, Pass};
pub use relative_position::{
    bucket_ids, position_bias, relative_position_bucket, RELATIVE_POSITION_BUCKETS,
};
pub use sequence_classifier::{BertClassifier, Labels};

//! The names a program that embeds spafit needs for the usual work — load a checkpoint, plan
//! a method, train on in-memory or file data, evaluate, predict, save and export — in one
//! import: `use spafit::prelude::*;`. `spafit::Result` and `spafit::Error` are left out, so
//! that the glob does not shadow the standard `Result`.

pub use crate::adapter::{
    export_peft, import_peft, load_adapter, open_adapter, save_adapter, AdapterManifest,
    OpenedAdapter, TrainingInputs,
};
pub use crate::backend::cpu::CpuBackend;
pub use crate::backend::cuda::CudaBackend;
pub use crate::backend::Backend;
pub use crate::checkpoint::{Checkpoint, WeightsFile};
pub use crate::data::{
    Dataset, Example, GlueTask, OnMalformed, TableFormat, TableSpec, Target, TaskKind,
};
pub use crate::model::{BertClassifier, ClassAlignment};
pub use crate::nn::{LoraConfig, LoraTarget};
pub use crate::peft::{peft_lora_init, Boundary, Method, PeftConfig, PeftPlan};
pub use crate::tensor::{DType, Shape};
pub use crate::text::TextTokenizer;
pub use crate::train::{
    evaluate, infer, predict_text_pairs, predict_texts, predictions, scored_predictions,
    EncodedDataset, Evaluation, ModelOutputs, Prediction, TrainConfig, TrainReport, Trainer,
};

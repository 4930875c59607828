//! The names a program that embeds spafit needs for the usual work — load a checkpoint, plan
//! a method, train on in-memory or file data (with the [`Trainer`], or a loop of its own
//! over the [`Tape`]: [`ModelInput`], [`DropoutPlan`], [`AdamW`], [`LrSchedule`]), evaluate,
//! predict, save and export — in one import: `use spafit::prelude::*;`. `spafit::Result` and `spafit::Error` are left out, so
//! that the glob does not shadow the standard `Result`.

pub use crate::adapter::{
    export_peft, import_peft, load_adapter, merged_max_len, open_adapter, save_adapter,
    save_merged, AdapterFormat, AdapterHead, AdapterManifest, ExportedClassOrder, MergedDType,
    OpenedAdapter, PeftExportRecord, TrainingInputs,
};
pub use crate::autograd::{Gradients, Tape, Var};
pub use crate::backend::cpu::CpuBackend;
pub use crate::backend::cuda::CudaBackend;
pub use crate::backend::Backend;
pub use crate::checkpoint::{BertConfig, Checkpoint, WeightsFile};
pub use crate::data::{
    Dataset, Example, GlueTask, OnMalformed, TableFormat, TableSpec, Target, TaskKind,
};
pub use crate::model::{BertClassifier, ClassAlignment, Labels, ModelInput};
pub use crate::nn::{DropoutPlan, LoraConfig, LoraTarget};
pub use crate::peft::{peft_lora_init, Boundary, Method, PeftConfig, PeftPlan};
pub use crate::tensor::{DType, Shape};
pub use crate::text::TextTokenizer;
pub use crate::train::{
    evaluate, evaluate_until, infer, lock_run_dir, predict_text_pairs, predict_texts, predictions,
    scored_predictions, AdamW, Control, EncodedDataset, Evaluation, LrSchedule, ModelOutputs,
    Prediction, RunLock, ScheduleKind, StepReport, TrainConfig, TrainEvent, TrainReport, Trainer,
};

//! Fine-tuning: AdamW with warmup and a linear, cosine or constant schedule, gradient clipping, length-bucketed
//! batches, periodic evaluation, best-checkpoint keeping, `metrics.jsonl`, resumable state.

mod batch_log;
mod config;
mod encoded;
mod evaluate;
pub(crate) mod micro_batches;
mod observer;
mod optimizer;
mod prediction;
mod progress;
mod report;
mod run_lock;
mod run_state;
mod schedule;
mod text_predictions;
mod trainer;

pub use batch_log::BatchLog;
pub use config::{
    learning_rate_problem, max_grad_norm_problem, warmup_ratio_problem, weight_decay_problem,
    TrainConfig,
};
pub use encoded::EncodedDataset;
pub use evaluate::{evaluate, evaluate_until, infer, predictions, Evaluation, ModelOutputs};
pub use micro_batches::{check_size as check_micro_batch_size, in_use as micro_batches_in_use};
pub use observer::{Control, Observer, StepReport, TrainEvent};
pub use optimizer::{no_decay, AdamW};
pub use prediction::{scored_predictions, scored_predictions_at, threshold_problem, Prediction};
pub use progress::Progress;
pub use report::TrainReport;
pub use run_lock::{lock_existing_run_dir, lock_run_dir, lock_run_dirs_around, RunLock, LOCK_FILE};
pub use run_state::{saved_run_is_over, STATE_FILE};
pub use schedule::{warmup_steps, LinearSchedule, LrSchedule, ScheduleKind};
pub use text_predictions::{predict_text_pairs, predict_texts};
pub use trainer::Trainer;

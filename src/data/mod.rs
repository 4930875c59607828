//! Datasets: the nine GLUE tasks, custom CSV/TSV/JSONL tables, the demo's Rotten Tomatoes
//! split, and batching.

mod batches;
mod example;
mod glue;
mod rotten_tomatoes;
mod table;

pub use batches::{evaluation_batches, shuffle, training_batches};
pub use example::{Dataset, Example, OnMalformed, Target, TaskKind};
pub use glue::GlueTask;
pub use rotten_tomatoes::rotten_tomatoes;
pub use table::{TableFormat, TableSpec};

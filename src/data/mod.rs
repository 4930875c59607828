//! Datasets: the nine GLUE tasks, custom CSV/TSV/JSONL tables, the demo's Rotten Tomatoes
//! split, and batching.

mod batches;
mod example;
mod glue;
mod rotten_tomatoes;
mod table;

pub use batches::{evaluation_batches, shuffle, training_batches};
pub use example::{label_names_problem, Dataset, Example, OnMalformed, Target, TaskKind};
pub use glue::GlueTask;
pub use rotten_tomatoes::rotten_tomatoes;
pub use table::{TableFormat, TableSpec};

/// The first name given twice in `names`, as (its first index, the repeat's index).
pub fn first_repeat<T: PartialEq>(names: &[T]) -> Option<(usize, usize)> {
    names.iter().enumerate().find_map(|(i, n)| {
        let first = names[..i].iter().position(|m| m == n)?;
        Some((first, i))
    })
}

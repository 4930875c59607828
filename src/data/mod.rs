//! Datasets: the nine GLUE tasks, custom CSV/TSV/JSONL tables, the demo's Rotten Tomatoes
//! split, and batching.

mod batches;
mod class_lookup;
mod example;
mod glue;
mod json_record;
mod rotten_tomatoes;
mod table;

pub use batches::{evaluation_batches, shuffle, training_batches};
pub use example::{
    label_names_problem, target_problem, Dataset, Example, OnMalformed, Target, TaskKind,
};
pub use glue::GlueTask;
pub use rotten_tomatoes::rotten_tomatoes;
pub use table::{csv_quoting_in_tsv, looks_like_a_set, TableFormat, TableSpec};

/// For each of the data's class names `labels`, the position of the same class among a
/// head's `names`, when both list the same distinct classes: matched exactly, else ignoring
/// case where that keeps every name distinct. `None` when the lists name other classes.
pub fn class_order(labels: &[String], names: &[String]) -> Option<Vec<usize>> {
    let exact = |labels: &[String], names: &[String]| -> Option<Vec<usize>> {
        let distinct = |v: &[String]| first_repeat(v).is_none();
        if labels.len() != names.len() || !distinct(labels) || !distinct(names) {
            return None;
        }
        let position: std::collections::HashMap<&String, usize> =
            names.iter().enumerate().map(|(i, n)| (n, i)).collect();
        labels.iter().map(|l| position.get(l).copied()).collect()
    };
    let lower = |v: &[String]| v.iter().map(|s| s.to_lowercase()).collect::<Vec<_>>();
    exact(labels, names).or_else(|| exact(&lower(labels), &lower(names)))
}

/// The class names `0` to `n-1`, where `labels` are those numbers in some order: what a head
/// whose outputs have no names (transformers' `LABEL_0`, `LABEL_1`, …) holds, output `i`
/// class `i`, as transformers trains it from such data (its label ids are the sorted
/// labels). `None` for other labels, which nothing ties to the outputs but their position.
pub fn numbered_classes(labels: &[String]) -> Option<Vec<String>> {
    let numbers: Vec<String> = (0..labels.len()).map(|i| i.to_string()).collect();
    class_order(labels, &numbers).map(|_| numbers)
}

/// The first name given twice in `names`, as (its first index, the repeat's index).
pub fn first_repeat<T: std::hash::Hash + Eq>(names: &[T]) -> Option<(usize, usize)> {
    let mut first = std::collections::HashMap::with_capacity(names.len());
    names
        .iter()
        .enumerate()
        .find_map(|(i, n)| first.insert(n, i).map(|earlier| (earlier, i)))
}

#[cfg(test)]
mod tests {
    use super::class_order;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn classes_are_matched_by_name_and_only_as_a_permutation() {
        let order = |labels: &[&str], head: &[&str]| class_order(&names(labels), &names(head));
        assert_eq!(
            order(
                &["entailment", "neutral", "contradiction"],
                &["contradiction", "neutral", "entailment"]
            ),
            Some(vec![2, 1, 0])
        );
        // Names that differ only in case are distinct classes, matched exactly.
        assert_eq!(order(&["A", "a"], &["a", "A"]), Some(vec![1, 0]));
        // Otherwise case is ignored.
        assert_eq!(
            order(&["positive", "negative"], &["NEGATIVE", "POSITIVE"]),
            Some(vec![1, 0])
        );
        assert_eq!(order(&["x", "x"], &["x", "y"]), None);
        assert_eq!(order(&["x", "z"], &["x", "y"]), None);
        assert_eq!(order(&["x"], &["x", "y"]), None);
    }
}

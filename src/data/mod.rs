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

/// `items` joined with ", ", only the first 50 of more, then how many there are: a message
/// naming a task's classes or a file's columns stays a line however many the data has (and
/// GoEmotions' 28 classes are listed whole).
pub fn brief_list<I>(items: I) -> String
where
    I: IntoIterator,
    I::IntoIter: ExactSizeIterator,
    I::Item: std::fmt::Display,
{
    const SHOWN: usize = 50;
    let items = items.into_iter();
    let count = items.len();
    let shown: Vec<String> = items.take(SHOWN).map(|i| i.to_string()).collect();
    match count > SHOWN {
        true => format!("{}, … ({count} in all)", shown.join(", ")),
        false => shown.join(", "),
    }
}

/// Class names joined by `, `, each quoted where a comma, a quote or an edge space would make
/// the list read as other classes (`neg, pos`; `"very, good", bad`); only the first of many.
pub fn class_list(labels: &[String]) -> String {
    brief_list(labels.iter().map(|l| {
        // Control characters are shown escaped, not written to the terminal.
        let plain = !l.is_empty()
            && !l.contains([',', '"'])
            && l.trim() == l.as_str()
            && !l.chars().any(char::is_control);
        shown_briefly(l, 200, |start| match plain {
            true => start.to_string(),
            false => format!("{start:?}"),
        })
    }))
}

/// `text` as a message shows it: `show` of its first `chars` characters, and where that is not
/// all of it, `text`'s length (a label of 700 KB, a whole set read as one class, or a text of
/// megabytes is named by its start).
pub fn shown_briefly(text: &str, chars: usize, show: impl Fn(&str) -> String) -> String {
    match text.char_indices().nth(chars) {
        Some((end, _)) => format!("{}… ({} bytes)", show(&text[..end]), text.len()),
        None => show(text),
    }
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
    use super::{brief_list, class_list, class_order, first_repeat};

    #[test]
    fn class_lists_quote_only_names_that_would_read_as_others() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(class_list(&names(&["neg", "pos"])), "neg, pos");
        assert_eq!(
            class_list(&names(&["say \"no\"", "very, good", " x", "plain text"])),
            r#""say \"no\"", "very, good", " x", plain text"#
        );
        // A NUL or an escape would reach the terminal as it is.
        assert_eq!(
            class_list(&names(&["x\u{0}y", "a\u{1b}[31m"])),
            r#""x\0y", "a\u{1b}[31m""#
        );
    }

    #[test]
    fn long_lists_and_fields_are_shown_by_their_start_and_size() {
        let few: Vec<String> = (0..50).map(|i| format!("c{i}")).collect();
        assert_eq!(brief_list(few.iter()), few.join(", "));
        let many: Vec<String> = (0..51).map(|i| format!("c{i}")).collect();
        assert_eq!(
            brief_list(many.iter()),
            format!("{}, … (51 in all)", few.join(", "))
        );
        let label = format!("é{}", "x".repeat(300));
        let shown = super::glue::shown_plainly(&label);
        assert_eq!(shown, format!("é{}… (302 bytes)", "x".repeat(199)));
        assert_eq!(super::glue::shown_plainly("a\tb"), "a\\tb");
    }

    #[test]
    fn the_first_repeat_is_found_with_its_first_place() {
        assert_eq!(first_repeat(&["a", "b", "c"]), None);
        assert_eq!(first_repeat(&["a", "b", "a", "b", "b"]), Some((0, 2)));
        assert_eq!(first_repeat(&["x", "b", "c", "b", "x"]), Some((1, 3)));
    }

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

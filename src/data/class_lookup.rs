//! A task's classes indexed by name and by value, so that each row's label finds its class
//! in constant time: a label column mistaken for an id column (200,000 classes over 200,000
//! rows) is read in a second, not in hours of comparing every label with every class.

use std::collections::HashMap;

use super::glue::{class_value, integer_spelling};

/// The classes of a task, looked up as [`ClassLookup::class_of`] says.
pub(crate) struct ClassLookup<'a> {
    /// The first class of each name.
    by_name: HashMap<&'a str, u32>,
    /// For each number some class names (`1`, `1.0`), the one class of that value; `None`
    /// where two classes share it.
    by_value: HashMap<u64, Option<u32>>,
}

impl<'a> ClassLookup<'a> {
    pub(crate) fn new(labels: &'a [String]) -> Self {
        let mut by_name = HashMap::with_capacity(labels.len());
        let mut by_value = HashMap::new();
        for (i, label) in labels.iter().enumerate() {
            let i = i as u32;
            by_name.entry(label.as_str()).or_insert(i);
            if let Some(v) = class_value(label) {
                by_value
                    .entry(value_key(v))
                    .and_modify(|only: &mut Option<u32>| *only = None)
                    .or_insert(Some(i));
            }
        }
        ClassLookup { by_name, by_value }
    }

    /// The id of the class `field` names, if any. Tools that store class ids as floats write
    /// `1.0` for class `1` (pandas with a missing value in the column, JSON numbers), and a
    /// class may be named `1.0` for data that says `1`: where no class has the field's very
    /// name, a number names the class spelt as its integer, else the one class of its value,
    /// if only one (values past 2^53 are not compared: neighbours round to one f64).
    pub(crate) fn class_of(&self, field: &str) -> Option<u32> {
        if let Some(&i) = self.by_name.get(field) {
            return Some(i);
        }
        let value = class_value(field)?;
        let integral = integer_spelling(value);
        integral
            .and_then(|name| self.by_name.get(name.as_str()).copied())
            .or_else(|| self.by_value.get(&value_key(value)).copied().flatten())
    }
}

/// A hash key equal for equal values: the bits, with -0 as 0 (`==` holds between them).
pub(crate) fn value_key(v: f64) -> u64 {
    (v + 0.0).to_bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lookup as a scan over the classes: the rule [`ClassLookup::class_of`] states,
    /// read literally.
    fn scanned(field: &str, labels: &[String]) -> Option<u32> {
        let value = class_value(field);
        let integral = value.and_then(integer_spelling);
        let same_value = || {
            let v = value?;
            let mut same = (0..labels.len()).filter(|&i| class_value(&labels[i]) == Some(v));
            let first = same.next()?;
            same.next().is_none().then_some(first)
        };
        labels
            .iter()
            .position(|l| l == field)
            .or_else(|| labels.iter().position(|l| Some(l) == integral.as_ref()))
            .or_else(same_value)
            .map(|i| i as u32)
    }

    #[test]
    fn finds_the_class_a_scan_finds() {
        let sets: [&[&str]; 6] = [
            &["neg", "pos"],
            &["0", "1", "2"],
            &["1.0", "2.0", "-0", "x"],
            &["1", "1.0", "1e0", "2.5"],
            &["2.50", "0.0", "b", "b", "9007199254740993"],
            &[" 3", "3.0", "03", "-0.0", "0"],
        ];
        let fields = [
            "neg",
            "pos",
            "0",
            "1",
            "2",
            "1.0",
            "2.0",
            "-0",
            "0.0",
            "-0.0",
            "1e0",
            "2.5",
            "2.50",
            "+2.5",
            "b",
            "x",
            "3",
            " 3",
            "03",
            "3.0",
            "9007199254740993",
            "9007199254740992",
            "nan",
            "inf",
            "",
            "POS",
        ];
        for set in sets {
            let labels: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            let lookup = ClassLookup::new(&labels);
            for field in fields {
                assert_eq!(
                    lookup.class_of(field),
                    scanned(field, &labels),
                    "{field:?} among {labels:?}"
                );
            }
        }
    }
}

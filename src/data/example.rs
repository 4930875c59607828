use crate::error::{Error, Result};
use crate::text::TextInput;

/// What an example is labelled with.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A class id.
    Class(u32),
    /// The class ids that apply, ascending and each once (multi-label classification; none
    /// is a valid answer).
    LabelSet(Vec<u32>),
    /// A real-valued score (regression).
    Score(f64),
}

/// One example: one or two texts and, except in test files, a target.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// First (or only) text.
    pub text_a: String,
    /// Second text of a pair task.
    pub text_b: Option<String>,
    /// `None` for unlabeled (test) data.
    pub target: Option<Target>,
}

impl Example {
    /// The texts as tokenizer input.
    pub fn input(&self) -> TextInput<'_> {
        match &self.text_b {
            Some(b) => TextInput::Pair(&self.text_a, b),
            None => TextInput::Single(&self.text_a),
        }
    }
}

/// Classification with named labels (one class per example, or any number of them), or
/// regression.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskKind {
    /// Class `i` is `labels[i]`; each example is of one class (softmax).
    Classification {
        /// Label names in id order.
        labels: Vec<String>,
    },
    /// Class `i` is `labels[i]`; each example is of any number of them, none included (a
    /// sigmoid per class: transformers' `multi_label_classification`).
    MultiLabel {
        /// Label names in id order.
        labels: Vec<String>,
    },
    /// One real-valued output.
    Regression,
}

impl TaskKind {
    /// Outputs of the head: the class count, or 1.
    pub fn num_labels(&self) -> usize {
        match self {
            TaskKind::Classification { labels } | TaskKind::MultiLabel { labels } => labels.len(),
            TaskKind::Regression => 1,
        }
    }

    /// The class names, in id order (none for a regression).
    pub fn class_names(&self) -> Option<&[String]> {
        match self {
            TaskKind::Classification { labels } | TaskKind::MultiLabel { labels } => Some(labels),
            TaskKind::Regression => None,
        }
    }

    /// Whether each example is of any number of the classes (a sigmoid per class).
    pub fn is_multi_label(&self) -> bool {
        matches!(self, TaskKind::MultiLabel { .. })
    }
}

/// What is wrong with class names in id order, if anything: an empty name, a tab or line
/// break (names go into TSV / CSV prediction files, one row per line), or a name given twice.
pub fn label_names_problem(labels: &[String]) -> Option<String> {
    if labels.iter().any(String::is_empty) {
        return Some("an empty label name".into());
    }
    if let Some(bad) = labels.iter().find(|l| l.contains(['\t', '\n', '\r'])) {
        return Some(format!("{bad:?} holds a tab or line break"));
    }
    let (first, repeat) = super::first_repeat(labels)?;
    Some(format!(
        "`{}` appears twice (class {first} repeated as class {repeat})",
        labels[repeat]
    ))
}

/// What to do with a row that cannot be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnMalformed {
    /// Stop with an error naming the file and line (the default).
    #[default]
    Error,
    /// Skip it and count it in [`Dataset::skipped`].
    Skip,
}

/// A loaded split.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Where it came from: the file's path as given (GLUE's `glue/SST-2/dev.tsv` too), or a
    /// name for data made in memory.
    pub name: String,
    /// Label space.
    pub kind: TaskKind,
    /// The examples, in file order.
    pub examples: Vec<Example>,
    /// One message per skipped malformed row (`file:line: why`).
    pub skipped: Vec<String>,
    /// The file line (1-based) each example was read from, in step with `examples`; empty
    /// when the examples did not come from a file.
    pub source_lines: Vec<usize>,
}

impl Dataset {
    /// In-memory examples (nothing skipped, no source file).
    pub fn from_examples(name: impl Into<String>, kind: TaskKind, examples: Vec<Example>) -> Self {
        Dataset {
            name: name.into(),
            kind,
            examples,
            skipped: Vec::new(),
            source_lines: Vec::new(),
        }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there is no example.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Whether any example is a text pair.
    pub fn has_text_pairs(&self) -> bool {
        self.examples.iter().any(|e| e.text_b.is_some())
    }

    /// Why the examples are not all of one kind, single texts or text pairs, if they are
    /// not (naming one of each): a model learns from one kind, and its adapter records which.
    pub fn mixed_inputs(&self) -> Option<String> {
        let single = self.examples.iter().position(|e| e.text_b.is_none())?;
        let pair = self.examples.iter().position(|e| e.text_b.is_some())?;
        Some(format!(
            "{} mixes single texts (example {single}) and text pairs (example {pair}): a \
             model learns from one kind (give every example a second text, or none)",
            self.name
        ))
    }

    /// Whether every example has a target.
    pub fn is_labeled(&self) -> bool {
        self.examples.iter().all(|e| e.target.is_some())
    }

    /// How many examples have no label, and where the first is (its file line, or its
    /// index for data built in code); `None` when all have one.
    pub fn unlabeled(&self) -> Option<(usize, String)> {
        let first = self.examples.iter().position(|e| e.target.is_none())?;
        let count = self.examples.iter().filter(|e| e.target.is_none()).count();
        Some((count, self.place_of(first)))
    }

    /// A note when texts are empty or only spaces (a missing value the file wrote as ``,
    /// a tab-only line): each adds no tokens, so an example of one empty text is its special
    /// tokens alone, which no model can tell apart from another, and a pair keeps only its
    /// other text; they are named rather than refused (an empty text is valid input).
    pub fn empty_texts(&self) -> Option<String> {
        let blank = |e: &Example| {
            e.text_a.trim().is_empty() || e.text_b.as_deref().is_some_and(|b| b.trim().is_empty())
        };
        let first = self.examples.iter().position(blank)?;
        let count = self.examples.iter().filter(|e| blank(e)).count();
        Some(format!(
            "{}: {count} example{} an empty or blank text (first: {}); such a text adds no \
             tokens (one alone reads as the special tokens alone, `[CLS] [SEP]` or `<s> </s>`, \
             a pair as its other text's tokens and the separators, as transformers' batched \
             tokenization gives): drop such rows if \
             they are not meant",
            self.name,
            if count == 1 { " has" } else { "s have" },
            self.place_of(first)
        ))
    }

    /// Where example `i` is: its file line, or its index for data built in code.
    pub(crate) fn place_of(&self, i: usize) -> String {
        match self.source_lines.get(i) {
            Some(line) => format!("line {line}"),
            None => format!("example {i}"),
        }
    }

    /// Checks the label space and every target against it: class names a head can carry,
    /// class ids below the class count, finite scores, and the kind of target the task has.
    /// A dataset read from a file passes by construction; one built in code is checked here,
    /// before a run, so a bad target is named by example (and line) instead of failing a
    /// batch midway. `op` names the caller.
    pub fn check_targets(&self, op: &'static str) -> Result<()> {
        if let Some(labels) = self.kind.class_names() {
            // One output is what a regression head has: a one-class head would be read as one.
            if labels.len() < 2 {
                return Err(Error::invalid(
                    op,
                    format!(
                        "{}: class names {labels:?}: a classification task needs at least two \
                         classes",
                        self.name
                    ),
                ));
            }
            // Commas separate the names of a set where one is written or read.
            let multi_label = self.kind.is_multi_label();
            if let Some(name) = labels.iter().find(|l| multi_label && l.contains(',')) {
                return Err(Error::invalid(
                    op,
                    format!(
                        "{}: class name `{name}` holds a comma, which separates the names of a \
                         set of classes",
                        self.name
                    ),
                ));
            }
            if let Some(problem) = label_names_problem(labels) {
                return Err(Error::invalid(
                    op,
                    format!("{}: class names {labels:?}: {problem}", self.name),
                ));
            }
        }
        for (i, e) in self.examples.iter().enumerate() {
            if let Some(problem) = e
                .target
                .as_ref()
                .and_then(|t| target_problem(t, &self.kind))
            {
                return Err(Error::invalid(
                    op,
                    format!("{}, {}: {problem}", self.name, self.place_of(i)),
                ));
            }
        }
        Ok(())
    }
}

/// What makes `target` unfit for a task of `kind`, if anything: a class id past the classes,
/// a non-finite score, or the other kind of target.
pub fn target_problem(target: &Target, kind: &TaskKind) -> Option<String> {
    let classes = kind.num_labels();
    match (target, kind) {
        (&Target::Class(c), TaskKind::Classification { .. }) => ((c as usize) >= classes)
            .then(|| format!("class id {c} is not below the {classes} classes")),
        (Target::LabelSet(ids), TaskKind::MultiLabel { .. }) => {
            if let Some(c) = ids.iter().find(|&&c| c as usize >= classes) {
                return Some(format!("class id {c} is not below the {classes} classes"));
            }
            ids.windows(2).find(|w| w[0] >= w[1]).map(|w| {
                format!(
                    "class ids {} and {} are not ascending and distinct",
                    w[0], w[1]
                )
            })
        }
        (Target::LabelSet(_), TaskKind::Classification { .. } | TaskKind::Regression) => {
            Some("a set of classes in a task of one class or score per example".into())
        }
        (Target::Class(c), TaskKind::MultiLabel { .. }) => Some(format!(
            "class id {c} in a multi-label task (a set of classes each)"
        )),
        (Target::Score(s), TaskKind::MultiLabel { .. }) => {
            Some(format!("score {s} in a multi-label task"))
        }
        (&Target::Score(s), TaskKind::Regression) => {
            (!s.is_finite()).then(|| format!("score {s} is not finite"))
        }
        (Target::Class(c), TaskKind::Regression) => {
            Some(format!("class id {c} in a regression task"))
        }
        (Target::Score(s), TaskKind::Classification { .. }) => {
            Some(format!("score {s} in a classification task"))
        }
    }
}

/// What a malformed row's error adds: how to skip such rows instead.
pub(crate) const SKIP_HINT: &str =
    " (to skip such rows and list them instead: `--skip-malformed`; in the library, \
     `OnMalformed::Skip`)";

/// Collects rows, either stopping at the first malformed one or skipping and counting.
pub(crate) struct RowSink {
    pub policy: OnMalformed,
    pub examples: Vec<Example>,
    pub skipped: Vec<String>,
    pub lines: Vec<usize>,
}

impl RowSink {
    pub fn new(policy: OnMalformed) -> Self {
        RowSink {
            policy,
            examples: Vec::new(),
            skipped: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// Takes a parsed row, or a `(location, why)` failure.
    pub fn take(
        &mut self,
        row: std::result::Result<Example, String>,
        path: &std::path::Path,
        line: usize,
    ) -> crate::Result<()> {
        match row {
            Ok(e) => {
                self.examples.push(e);
                self.lines.push(line);
                Ok(())
            }
            Err(why) => match self.policy {
                OnMalformed::Error => Err(crate::Error::Format {
                    path: path.to_path_buf(),
                    detail: format!("line {line}: {why}{SKIP_HINT}"),
                }),
                OnMalformed::Skip => {
                    self.skipped
                        .push(format!("{}:{line}: {why}", path.display()));
                    Ok(())
                }
            },
        }
    }
}

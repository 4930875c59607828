//! The nine GLUE tasks, read from the standard GLUE distribution layout
//! (`CoLA/train.tsv`, `MNLI/dev_matched.tsv`, ...): tab-separated, unquoted, one example per
//! line, each task with its own columns and quirks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::class_lookup::ClassLookup;
use super::example::{Dataset, Example, OnMalformed, RowSink, Target, TaskKind};
use crate::error::{Error, Result};

/// A GLUE task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GlueTask {
    /// Corpus of Linguistic Acceptability (Matthews correlation).
    Cola,
    /// Stanford Sentiment Treebank, binary (accuracy).
    Sst2,
    /// Microsoft Research Paraphrase Corpus (F1, accuracy).
    Mrpc,
    /// Semantic Textual Similarity Benchmark (Pearson, Spearman).
    Stsb,
    /// Quora Question Pairs (F1, accuracy).
    Qqp,
    /// Multi-Genre NLI (accuracy, matched / mismatched).
    Mnli,
    /// Question NLI (accuracy).
    Qnli,
    /// Recognizing Textual Entailment (accuracy).
    Rte,
    /// Winograd NLI (accuracy).
    Wnli,
    /// GLUE's diagnostic set (AX, `diagnostic/diagnostic.tsv`): unlabeled sentence pairs in
    /// MNLI's classes, only predicted, with an MNLI model, for the submission's `AX.tsv`.
    Ax,
}

/// Where a field sits in a row.
#[derive(Clone, Copy)]
enum Column {
    Index(usize),
    Named(&'static str),
}

struct Layout {
    dir: &'static str,
    /// Train and dev files carry a header row (CoLA's do not; its test file does).
    labeled_header: bool,
    text_a: Column,
    text_b: Option<Column>,
    label: Column,
    /// Test files name their columns like this.
    test_a: &'static str,
    test_b: Option<&'static str>,
    labels: Option<&'static [&'static str]>,
}

const BINARY: &[&str] = &["0", "1"];
const ENTAILMENT: &[&str] = &["entailment", "not_entailment"];
const MNLI: &[&str] = &["entailment", "neutral", "contradiction"];

impl GlueTask {
    /// All nine tasks.
    pub const ALL: [GlueTask; 9] = [
        GlueTask::Cola,
        GlueTask::Sst2,
        GlueTask::Mrpc,
        GlueTask::Stsb,
        GlueTask::Qqp,
        GlueTask::Mnli,
        GlueTask::Qnli,
        GlueTask::Rte,
        GlueTask::Wnli,
    ];

    fn layout(self) -> Layout {
        use Column::*;
        let pair = |a, b, label, labels| Layout {
            dir: "",
            labeled_header: true,
            text_a: Named(a),
            text_b: Some(Named(b)),
            label: Named(label),
            test_a: a,
            test_b: Some(b),
            labels,
        };
        match self {
            GlueTask::Cola => Layout {
                dir: "CoLA",
                labeled_header: false,
                text_a: Index(3),
                text_b: None,
                label: Index(1),
                test_a: "sentence",
                test_b: None,
                labels: Some(BINARY),
            },
            GlueTask::Sst2 => Layout {
                dir: "SST-2",
                labeled_header: true,
                text_a: Named("sentence"),
                text_b: None,
                label: Named("label"),
                test_a: "sentence",
                test_b: None,
                labels: Some(BINARY),
            },
            GlueTask::Mrpc => Layout {
                dir: "MRPC",
                ..pair("#1 String", "#2 String", "Quality", Some(BINARY))
            },
            GlueTask::Stsb => Layout {
                dir: "STS-B",
                ..pair("sentence1", "sentence2", "score", None)
            },
            GlueTask::Qqp => Layout {
                dir: "QQP",
                ..pair("question1", "question2", "is_duplicate", Some(BINARY))
            },
            GlueTask::Mnli => Layout {
                dir: "MNLI",
                ..pair("sentence1", "sentence2", "gold_label", Some(MNLI))
            },
            GlueTask::Qnli => Layout {
                dir: "QNLI",
                ..pair("question", "sentence", "label", Some(ENTAILMENT))
            },
            GlueTask::Rte => Layout {
                dir: "RTE",
                ..pair("sentence1", "sentence2", "label", Some(ENTAILMENT))
            },
            GlueTask::Wnli => Layout {
                dir: "WNLI",
                ..pair("sentence1", "sentence2", "label", Some(BINARY))
            },
            GlueTask::Ax => Layout {
                dir: "diagnostic",
                ..pair("sentence1", "sentence2", "label", Some(MNLI))
            },
        }
    }

    /// The task's folder in the GLUE layout.
    pub fn dir_name(self) -> &'static str {
        self.layout().dir
    }

    /// Label space.
    pub fn kind(self) -> TaskKind {
        match self.layout().labels {
            Some(l) => TaskKind::Classification {
                labels: l.iter().map(|s| s.to_string()).collect(),
            },
            None => TaskKind::Regression,
        }
    }

    /// Why `kind`, the label space of `what` (a data set), is not this task's, if it is
    /// not: the names and their order count, since the task's metrics assume them (MRPC's
    /// and QQP's F1 is that of class 1).
    pub fn label_space_mismatch(self, kind: &TaskKind, what: &str) -> Option<String> {
        let task = self.kind();
        if task == *kind {
            return None;
        }
        let describe = |kind: &TaskKind| match kind {
            TaskKind::Classification { labels } => format!("the classes {labels:?}"),
            TaskKind::MultiLabel { labels } => {
                format!("the classes {labels:?}, any number of them per example")
            }
            TaskKind::Regression => "a regression".to_string(),
        };
        Some(format!(
            "{} has {}, {what} has {}",
            self.dir_name(),
            describe(&task),
            describe(kind)
        ))
    }

    /// The dev split(s) GLUE reports on.
    pub fn dev_splits(self) -> &'static [&'static str] {
        match self {
            GlueTask::Mnli => &["dev_matched", "dev_mismatched"],
            _ => &["dev"],
        }
    }

    /// Every split of the task's folder.
    pub fn splits(self) -> &'static [&'static str] {
        match self {
            GlueTask::Mnli => &[
                "train",
                "dev_matched",
                "dev_mismatched",
                "test_matched",
                "test_mismatched",
            ],
            GlueTask::Ax => &["test"],
            _ => &["train", "dev", "test"],
        }
    }

    /// The file name of `split` in the task's folder (AX's one split is `diagnostic.tsv`, as
    /// GLUE's download script names it).
    fn file_name(self, split: &str) -> String {
        match self {
            GlueTask::Ax => "diagnostic.tsv".to_string(),
            _ => format!("{split}.tsv"),
        }
    }

    /// The files of every split under `glue_dir`, present or not: what an output must never
    /// replace.
    pub fn files(self, glue_dir: &Path) -> Vec<PathBuf> {
        self.splits()
            .iter()
            .map(|split| glue_dir.join(self.dir_name()).join(self.file_name(split)))
            .collect()
    }

    /// The file of `split` (`train`, `dev`, `test`, MNLI's `dev_matched`...).
    pub fn file(self, glue_dir: &Path, split: &str) -> Result<PathBuf> {
        let allowed = self.splits();
        if self == GlueTask::Ax && split != "test" {
            return Err(Error::invalid(
                "glue",
                format!(
                    "AX (GLUE's diagnostic set) has no `{split}` split: it is unlabeled and only \
                     predicted, with an MNLI model (spafit predict --task ax --adapter MNLI_RUN/best)"
                ),
            ));
        }
        if !allowed.contains(&split) {
            return Err(Error::invalid(
                "glue",
                format!(
                    "{} has no split `{split}`; it has {}",
                    self.dir_name(),
                    allowed.join(", ")
                ),
            ));
        }
        let task_dir = glue_dir.join(self.dir_name());
        // The folder a missing file was looked for in says more than the file's name.
        let missing = |path: &Path, detail: String| {
            Err(Error::Io {
                path: path.to_path_buf(),
                error: std::io::Error::new(std::io::ErrorKind::NotFound, detail),
            })
        };
        if !glue_dir.is_dir() {
            let what = if glue_dir.exists() {
                "a file, not a folder"
            } else {
                "no such folder"
            };
            return missing(
                glue_dir,
                format!(
                    "{what} (--glue-dir names the folder holding GLUE's task folders, e.g. \
                     SST-2/)"
                ),
            );
        }
        if !task_dir.is_dir() {
            return missing(
                &task_dir,
                format!(
                    "no such folder: GLUE's layout puts {} in {}/ under the GLUE folder",
                    self.file_name(split),
                    self.dir_name()
                ),
            );
        }
        Ok(task_dir.join(self.file_name(split)))
    }

    /// The row ids GLUE's submissions name rows by (the `index` column; QQP's `id`), keyed
    /// by file line, for a split whose file has a header with such a column; empty otherwise
    /// (CoLA's and SST-2's header-less training files have none).
    pub fn row_ids(self, glue_dir: &Path, split: &str) -> Result<HashMap<usize, String>> {
        let path = self.file(glue_dir, split)?;
        let bytes = crate::text_file::read_bytes(&path)?;
        let mut lines = crate::text_file::utf8_lines(&bytes);
        let column = match lines.next() {
            Some((_, Ok(header))) => header
                .split('\t')
                .position(|h| h == "index" || (h == "id" && self == GlueTask::Qqp)),
            _ => None,
        };
        let Some(column) = column else {
            return Ok(HashMap::new());
        };
        Ok(lines
            .filter_map(|(line_no, line)| {
                let id = line.ok()?.split('\t').nth(column)?.trim().to_string();
                Some((line_no, id))
            })
            .collect())
    }

    /// Reads `split` from a GLUE directory. Test splits are unlabeled.
    pub fn load(self, glue_dir: &Path, split: &str, on_malformed: OnMalformed) -> Result<Dataset> {
        let path = self.file(glue_dir, split)?;
        // The GLUE distribution's MRPC files start with a UTF-8 byte-order mark (dropped here).
        let bytes = crate::text_file::read_bytes(&path)?;
        if bytes
            .strip_prefix("\u{feff}".as_bytes())
            .unwrap_or(&bytes)
            .iter()
            .all(u8::is_ascii_whitespace)
        {
            return Err(Error::Format {
                path,
                detail: "the file is empty: GLUE's files hold one example per line".into(),
            });
        }
        let layout = self.layout();
        let labeled = !split.starts_with("test");
        let mut lines = crate::text_file::utf8_lines(&bytes);
        let has_header = !labeled || layout.labeled_header;
        let header: Vec<&str> = if has_header {
            match lines.next() {
                Some((_, Ok(h))) => h.split('\t').collect(),
                Some((_, Err(why))) => {
                    return Err(Error::Format {
                        path: path.clone(),
                        detail: format!("line 1 (the header): {why}"),
                    })
                }
                None => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let find = |col: Column| -> Result<usize> {
            match col {
                Column::Index(i) => Ok(i),
                Column::Named(name) => {
                    header
                        .iter()
                        .position(|h| *h == name)
                        .ok_or_else(|| Error::Format {
                            path: path.clone(),
                            detail: format!(
                                "line 1: the header has no `{name}` column (it has: {})",
                                super::brief_list(header.iter())
                            ),
                        })
                }
            }
        };
        let (a, b, label) = if labeled {
            (
                find(layout.text_a)?,
                layout.text_b.map(find).transpose()?,
                Some(find(layout.label)?),
            )
        } else {
            (
                find(Column::Named(layout.test_a))?,
                layout.test_b.map(|n| find(Column::Named(n))).transpose()?,
                None,
            )
        };
        let width = if has_header { Some(header.len()) } else { None };
        let kind = self.kind();
        let class_names = kind.class_names().unwrap_or_default();
        let classes = ClassLookup::new(class_names);
        let mut sink = RowSink::new(on_malformed);
        for (line_no, line) in lines {
            let line = match line {
                // A blank line (a stray space at the end of a file too) holds no example.
                Ok(line) if line.trim_matches(' ').is_empty() => continue,
                Ok(line) => line,
                Err(why) => {
                    sink.take(Err(why), &path, line_no)?;
                    continue;
                }
            };
            let fields: Vec<&str> = line.split('\t').collect();
            let mut row = parse_row(&fields, width, a, b, label, &kind, &classes);
            // A header someone added to a header-less file (CoLA's train and dev).
            if let (Err(why), 1, false) = (&mut row, line_no, has_header) {
                why.push_str(
                    " (in GLUE's layout this file has no header line: if line 1 is one, delete \
                     it)",
                );
            }
            sink.take(row, &path, line_no)?;
        }
        Ok(Dataset {
            // The file, as every other message about the split names it.
            name: path.display().to_string(),
            kind,
            examples: sink.examples,
            skipped: sink.skipped,
            source_lines: sink.lines,
        })
    }
}

fn parse_row(
    fields: &[&str],
    width: Option<usize>,
    a: usize,
    b: Option<usize>,
    label: Option<usize>,
    kind: &TaskKind,
    classes: &ClassLookup,
) -> std::result::Result<Example, String> {
    let needed = [Some(a), b, label].into_iter().flatten().max().unwrap_or(0) + 1;
    if let Some(w) = width {
        if fields.len() != w {
            let plural = if fields.len() == 1 { "" } else { "s" };
            return Err(format!(
                "{} field{plural}, the header has {w}",
                fields.len()
            ));
        }
    } else if fields.len() != needed {
        // A file without a header (CoLA's train and dev) has exactly its layout's columns:
        // a tab more would cut the sentence at it without a word.
        return Err(format!(
            "{} field{}, the file's rows have {needed} (it has no header)",
            fields.len(),
            if fields.len() == 1 { "" } else { "s" }
        ));
    }
    let target = match label {
        None => None,
        Some(i) => Some(parse_target(fields[i], kind, classes)?),
    };
    Ok(Example {
        text_a: fields[a].to_string(),
        text_b: b.map(|i| fields[i].to_string()),
        target,
    })
}

/// A label field as a target of `kind`, whose classes `classes` looks up.
pub(crate) fn parse_target(
    field: &str,
    kind: &TaskKind,
    classes: &ClassLookup,
) -> std::result::Result<Target, String> {
    let field = field.trim();
    // Control characters (a NUL, an escape) are shown escaped, not written to the terminal.
    let shown = shown_plainly(field);
    if field.is_empty() && !kind.is_multi_label() {
        return Err("the label is empty".into());
    }
    match kind {
        TaskKind::MultiLabel { labels } => {
            let mut ids = label_set_items(field)?
                .into_iter()
                .map(|item| {
                    classes.class_of(&item).ok_or_else(|| {
                        format!(
                            "label `{}` (in `{}`) is not one of the classes {}",
                            shown_plainly(&item),
                            shown_plainly(field),
                            super::class_list(labels)
                        )
                    })
                })
                .collect::<std::result::Result<Vec<u32>, String>>()?;
            ids.sort_unstable();
            ids.dedup();
            Ok(Target::LabelSet(ids))
        }
        TaskKind::Regression => {
            let value = field
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("label `{shown}` is not a finite number"))?;
            // Training squares the error in f32, which overflows above ~1.8e19.
            if value.abs() > 1e18 {
                return Err(format!(
                    "label `{shown}` is too large for a regression target (its squared error \
                     would overflow f32 training): scale the targets"
                ));
            }
            Ok(Target::Score(value))
        }
        TaskKind::Classification { labels } => {
            classes.class_of(field).map(Target::Class).ok_or_else(|| {
                // `nan` or `inf` among numeric classes is a broken value, as the class
                // inference says, not a class left out.
                let number = |text: &str| text.trim().parse::<f64>().ok();
                if number(field).is_some_and(|v| !v.is_finite())
                    && labels.iter().all(|l| number(l).is_some_and(f64::is_finite))
                {
                    return format!(
                        "label `{shown}` is not a finite number, and every class ({}) is one",
                        super::class_list(labels)
                    );
                }
                // transformers' name for output k of a head whose classes are unnamed (as its
                // pipelines write predictions): class id k is the class at k.
                let placeholder = field
                    .strip_prefix("LABEL_")
                    .and_then(|k| k.parse::<usize>().ok())
                    .and_then(|k| Some((k, labels.get(k)?)));
                let hint = match placeholder {
                    Some((k, class)) => format!(
                        " (transformers' name for output {k}, which is class {} here: write that)",
                        super::class_list(std::slice::from_ref(class))
                    ),
                    None => String::new(),
                };
                format!(
                    "label `{shown}` is not one of the classes {}{hint}",
                    super::class_list(labels)
                )
            })
        }
    }
}

/// The number a class name spells, where classes are compared by value (`1.0` is class `1`):
/// finite, and below 9e15, past which neighbouring whole numbers round to one f64.
pub(super) fn class_value(name: &str) -> Option<f64> {
    name.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && v.abs() < 9.0e15)
}

/// A whole-number class value spelt as an integer (`1.0` is class `1`), where it is one
/// exactly (below 9e15, as [`class_value`]).
pub(super) fn integer_spelling(value: f64) -> Option<String> {
    (value.fract() == 0.0 && value.abs() < 9.0e15).then(|| format!("{}", value as i64))
}

/// The class names of a multi-label field: comma-separated (`joy,anger`, as GoEmotions
/// writes ids: `2,27`), or a list as JSON or Python writes one (`["joy", "anger"]`,
/// `['joy', 'anger']`: pandas' CSV of a column of lists, a JSONL array), whose quoted items
/// are read whole, escapes included; an empty field or list is the empty set (no class
/// applies). A name holding a comma is refused: commas separate the names of a set where it
/// is written back (`predict`'s CSV, `--labels`).
pub(crate) fn label_set_items(field: &str) -> std::result::Result<Vec<String>, String> {
    let field = field.trim();
    let shown = || shown_plainly(field);
    let items = match field.strip_prefix('[') {
        None if field.is_empty() => return Ok(Vec::new()),
        None => field.split(',').map(|i| i.trim().to_string()).collect(),
        Some(_) if !field.ends_with(']') => {
            return Err(format!("label list `{}` has no closing `]`", shown()))
        }
        Some(_) => match serde_json::from_str::<Vec<serde_json::Value>>(field) {
            Ok(values) => values
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::String(name) => Ok(name.trim().to_string()),
                    serde_json::Value::Number(id) => Ok(id.to_string()),
                    other => Err(format!(
                        "label list `{}` holds {other}, not a class name or id",
                        shown()
                    )),
                })
                .collect::<std::result::Result<Vec<String>, String>>()?,
            Err(_) => python_list_items(&field[1..field.len() - 1])
                .ok_or_else(|| format!("label list `{}` is not a list of names", shown()))?,
        },
    };
    if let Some(name) = items.iter().find(|i| i.contains(',')) {
        return Err(format!(
            "class name `{}` in `{}` holds a comma, which separates the names of a set",
            shown_plainly(name),
            shown()
        ));
    }
    if items.iter().any(String::is_empty) {
        return Err(format!(
            "label list `{}` holds an empty name (two commas in a row, or one at an end)",
            shown()
        ));
    }
    Ok(items)
}

/// The items of a list's inside as Python writes one (`'joy', "it's"`, numbers bare) or
/// numpy prints one (`2 27`, `'joy' 'anger'`), each quoted item whole with its backslash
/// escapes undone; `None` where the text is not such a list (an unclosed quote, an escape
/// that cannot be undone).
fn python_list_items(inside: &str) -> Option<Vec<String>> {
    let mut items = Vec::new();
    let mut chars = inside.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else {
            // `[]`, or a trailing comma after the last item (Python allows one).
            return Some(items);
        };
        let item = if first == '\'' || first == '"' {
            chars.next();
            let mut name = String::new();
            loop {
                match chars.next()? {
                    '\\' => python_escape(&mut chars, &mut name)?,
                    c if c == first => break,
                    c => name.push(c),
                }
            }
            name
        } else {
            let mut bare = String::new();
            while let Some(c) = chars.next_if(|&c| c != ',' && !c.is_whitespace()) {
                bare.push(c);
            }
            bare
        };
        items.push(item.trim().to_string());
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        // Items end at a comma, or, as numpy prints an array (`[ 2 27]`, pandas' CSV of a
        // column of arrays), at the spaces before the next one.
        if chars.peek().is_none() {
            return Some(items);
        }
        chars.next_if_eq(&',');
    }
}

/// Undoes one escape of a Python string literal after its backslash, as `ast.literal_eval`
/// reads it (`\n`, `\x41`, `\u00e9`, octal `\101`; an unknown escape keeps its backslash);
/// `None` for one it cannot undo here (`\N{...}`, a code that is no character).
fn python_escape(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    name: &mut String,
) -> Option<()> {
    fn code(
        chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
        digits: usize,
        radix: u32,
        first: Option<char>,
    ) -> Option<char> {
        let mut text: String = first.into_iter().collect();
        while text.len() < digits {
            match chars.next_if(|c| c.is_digit(radix)) {
                Some(c) => text.push(c),
                // Octal takes one to three digits; the others exactly their count.
                None if radix == 8 => break,
                None => return None,
            }
        }
        char::from_u32(u32::from_str_radix(&text, radix).ok()?)
    }
    let c = match chars.next()? {
        'n' => '\n',
        't' => '\t',
        'r' => '\r',
        'a' => '\u{7}',
        'b' => '\u{8}',
        'f' => '\u{c}',
        'v' => '\u{b}',
        'x' => code(chars, 2, 16, None)?,
        'u' => code(chars, 4, 16, None)?,
        'U' => code(chars, 8, 16, None)?,
        d @ '0'..='7' => code(chars, 3, 8, Some(d))?,
        'N' => return None,
        c @ ('\\' | '\'' | '"') => c,
        '\n' => return Some(()),
        other => {
            name.push('\\');
            other
        }
    };
    name.push(c);
    Some(())
}

/// `text` as a message shows it: what is unprintable escaped (control characters, invisible
/// and direction-changing marks), quotes and backslashes as they are.
pub(crate) fn shown_plainly(text: &str) -> String {
    super::shown_briefly(text, SHOWN_CHARS, |start| {
        start
            .chars()
            .flat_map(|c| match c {
                '\'' | '"' | '\\' => vec![c],
                _ => c.escape_debug().collect::<Vec<_>>(),
            })
            .collect()
    })
}

/// The characters of a field a message shows.
pub(crate) const SHOWN_CHARS: usize = 200;

impl FromStr for GlueTask {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let key: String = s
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        // AX's folder is `diagnostic`; either name selects it.
        if key == "ax" || key == "diagnostic" {
            return Ok(GlueTask::Ax);
        }
        GlueTask::ALL
            .into_iter()
            .find(|t| {
                t.dir_name().chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase() == key
            })
            .ok_or_else(|| {
                Error::invalid(
                    "glue",
                    format!("unknown GLUE task `{s}`; expected one of cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, ax"),
                )
            })
    }
}

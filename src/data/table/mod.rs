//! Custom tasks from CSV, TSV or JSONL: one or two text columns and a label column.

mod csv_rows;
mod json_rows;

use std::path::{Path, PathBuf};

use super::class_lookup::{value_key, ClassLookup};
use super::example::{Dataset, Example, OnMalformed, RowSink, TaskKind};
use super::glue::{class_value, integer_spelling, parse_target};
use crate::error::{Error, Result};

/// File formats of [`TableSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFormat {
    /// Comma-separated with a header row, RFC 4180 quoting.
    Csv,
    /// Tab-separated with a header row, one record per line and no quoting (as GLUE's files
    /// and the IANA TSV format): a `"` is text like any other character.
    Tsv,
    /// One JSON object per line.
    Jsonl,
}

impl TableFormat {
    /// The format a file extension names (`.csv`, `.tsv`, `.jsonl` / `.json`).
    pub fn from_path(path: &Path) -> Result<Self> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv") => Ok(TableFormat::Csv),
            Some("tsv") => Ok(TableFormat::Tsv),
            Some("jsonl") | Some("json") => Ok(TableFormat::Jsonl),
            Some("gz" | "zip" | "bz2" | "xz" | "zst") => Err(Error::Format {
                path: path.to_path_buf(),
                detail: "compressed files are not read: decompress it first, to a .csv, .tsv, \
                         .jsonl or .json file"
                    .into(),
            }),
            _ => {
                use std::os::unix::fs::FileTypeExt;
                // `<(…)`, `/dev/stdin` and `-` name standard input or a pipe without a
                // format's extension.
                let pipe = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
                    || path.as_os_str() == "-"
                    || path.starts_with("/dev/")
                    || path.starts_with("/proc/self/fd/");
                let hint = match pipe {
                    true => {
                        " (standard input or a pipe by this name says no format: give it a \
                         name that does, `mkfifo rows.csv`, or link one to it, \
                         `ln -s /dev/stdin rows.csv`)"
                    }
                    false => "",
                };
                Err(Error::Format {
                    path: path.to_path_buf(),
                    detail: format!(
                        "unknown table format: use a .csv, .tsv, .jsonl or .json file{hint}"
                    ),
                })
            }
        }
    }
}

/// Which columns of a table hold what.
#[derive(Clone, Debug, PartialEq)]
pub struct TableSpec {
    /// The file.
    pub path: PathBuf,
    /// First text column.
    pub text_column: String,
    /// Second text column for pair tasks.
    pub text_pair_column: Option<String>,
    /// Label column; `None` for unlabeled data.
    pub label_column: Option<String>,
    /// Label space. For classification, labels are matched by name (`"positive"`, `"1"`).
    pub kind: TaskKind,
    /// Only rows whose column equals the value (e.g. `source = rotten_tomatoes`).
    pub filter: Option<(String, String)>,
}

/// What [`TableSpec::for_each_row`] calls with each record's line: the row, or why it
/// cannot be read.
type RowVisitor<'a> = dyn FnMut(usize, std::result::Result<&dyn Row, String>) -> Result<()> + 'a;

/// A row as field lookups by column name.
trait Row {
    fn get(&self, column: &str) -> std::result::Result<Option<String>, String>;

    /// Whether the row holds `column` as an explicit null (JSON's `null`).
    fn is_null(&self, _column: &str) -> bool {
        false
    }

    /// The row's own column names, where rows name them (JSON objects); a table's header
    /// is checked once, before any row.
    fn own_columns(&self) -> Vec<&str> {
        Vec::new()
    }

    /// [`Row::get`] for a multi-label column, which may also hold a list (a JSON array,
    /// given as its JSON text).
    fn get_label_set(&self, column: &str) -> std::result::Result<Option<String>, String> {
        self.get(column)
    }
}

/// The label field of `row`: a multi-label column may hold a list (a JSON array), which in
/// another task's column is refused with a pointer to --multi-label.
fn label_field(
    row: &dyn Row,
    column: &str,
    multi_label: bool,
) -> std::result::Result<Option<String>, String> {
    match multi_label {
        true => row.get_label_set(column),
        false => row
            .get(column)
            .map_err(|why| match row.get_label_set(column) {
                Ok(Some(list)) => format!(
                    "`{column}` holds the list {list}: a set of classes per example is read with \
                 --multi-label"
                ),
                _ => why,
            }),
    }
}

/// Whether a single-label field looks like a set of classes: a list in brackets, or names
/// between commas (`joy,anger`), which a multi-label task reads as several classes.
pub fn looks_like_a_set(label: &str) -> bool {
    let label = label.trim();
    (label.starts_with('[') && label.ends_with(']'))
        || (label.contains(',') && label.split(',').all(|name| !name.trim().is_empty()))
}

/// For a table read as TSV: its texts that look quoted by a CSV writer, whose quotes a TSV
/// keeps as text — each text in quotes with its own quotes doubled (`"he said ""no"""`, as
/// pandas' `to_csv(sep="\t")` and Python's csv module write a field holding a quote), or,
/// where every text of two or more is in quotes, all of them (a writer quoting all fields
/// or every string). A note naming the first one and their count.
pub fn csv_quoting_in_tsv(data: &Dataset) -> Option<String> {
    fn inside_quotes(text: &str) -> Option<&str> {
        text.strip_prefix('"').and_then(|t| t.strip_suffix('"'))
    }
    let quotes_doubled = |text: &str| {
        inside_quotes(text)
            .is_some_and(|inner| inner.contains("\"\"") && !inner.replace("\"\"", "").contains('"'))
    };
    let texts = || {
        data.examples.iter().enumerate().flat_map(|(i, e)| {
            std::iter::once((i, &e.text_a)).chain(e.text_b.iter().map(move |b| (i, b)))
        })
    };
    let all_in_quotes =
        texts().nth(1).is_some() && texts().all(|(_, t)| inside_quotes(t).is_some());
    let (why, mut found): (_, Box<dyn Iterator<Item = usize>>) = match all_in_quotes {
        true => ("every text is in quotes", Box::new(texts().map(|(i, _)| i))),
        false => (
            "in quotes with its own quotes doubled",
            Box::new(texts().filter(|(_, t)| quotes_doubled(t)).map(|(i, _)| i)),
        ),
    };
    let first = found.next()?;
    let count = 1 + found.count();
    let place = data.place_of(first);
    Some(format!(
        "{}: {count} {} quoted as CSV writes them (first: {place}; {why}); a .tsv is read \
         without quoting, as GLUE's files are, so those quotes stay in the text: save the \
         table as .csv, or write the TSV unquoted (quoting=csv.QUOTE_NONE)",
        data.name,
        if count == 1 {
            "text looks"
        } else {
            "texts look"
        }
    ))
}

impl TableSpec {
    /// The table at `path` with the command line's default columns: the text in `text`, the
    /// label in `label`, no second text and every row; set the fields to read others
    /// (`spec.text_pair_column = Some("hypothesis".into())`).
    pub fn new(path: impl Into<PathBuf>, kind: TaskKind) -> Self {
        TableSpec {
            path: path.into(),
            text_column: "text".into(),
            text_pair_column: None,
            label_column: Some("label".into()),
            kind,
            filter: None,
        }
    }

    /// For a column this spec names that `columns` lack: where exactly one of `columns` is
    /// named by no setting (an id column apart), it is likely the one meant, said as the
    /// flag that names it, as "; here likely `--text-column sentence`"; else nothing.
    fn likely_column(&self, missing: &str, columns: &[&str]) -> String {
        let roles = self.column_roles();
        let Some((role, flag, _)) = roles.iter().find(|(_, _, c)| *c == Some(missing)) else {
            return String::new();
        };
        // A spec that reads no labels (predictions) still meets files that hold them.
        let is_labels = |c: &str| {
            *role != "label" && matches!(c.trim().to_ascii_lowercase().as_str(), "label" | "labels")
        };
        let named: Vec<Option<&str>> = roles
            .iter()
            .map(|(_, _, c)| *c)
            .chain([self.filter.as_ref().map(|(column, _)| column.as_str())])
            .collect();
        let is_id = |c: &str| {
            matches!(
                c.trim().to_ascii_lowercase().as_str(),
                "" | "id" | "idx" | "index" | "guid" | "unnamed: 0"
            )
        };
        let mut others = columns
            .iter()
            .filter(|c| !named.contains(&Some(**c)) && !is_id(c) && !is_labels(c));
        match (others.next(), others.next()) {
            (Some(only), None) => {
                let words = crate::shell_word::shell_flag(flag, std::ffi::OsStr::new(only));
                format!("; here likely `{words}`")
            }
            _ => String::new(),
        }
    }

    /// The columns this spec reads, each with its role and the flag that names it: the
    /// text's, the second text's and the label's (`None` where the spec has none).
    fn column_roles(&self) -> [(&'static str, &'static str, Option<&str>); 3] {
        [
            ("text", "--text-column", Some(self.text_column.as_str())),
            (
                "second text",
                "--text-pair-column",
                self.text_pair_column.as_deref(),
            ),
            ("label", "--label-column", self.label_column.as_deref()),
        ]
    }

    /// Whether the filter keeps `row`.
    fn selected(&self, row: &dyn Row) -> std::result::Result<bool, String> {
        match &self.filter {
            Some((col, want)) => Ok(row.get(col)?.as_deref() == Some(want.as_str())),
            None => Ok(true),
        }
    }

    /// The example `row` holds, its label read as one of `classes` (the spec's own), or
    /// `None` where the filter leaves it out.
    fn example(
        &self,
        row: &dyn Row,
        classes: &ClassLookup,
    ) -> std::result::Result<Option<Example>, String> {
        if !self.selected(row)? {
            return Ok(None);
        }
        let present = |c: &str, value: Option<String>| {
            value.ok_or_else(|| match row.is_null(c) {
                true => format!("`{c}` is null: give the row a value, or drop it"),
                false => match row.own_columns().as_slice() {
                    [] => format!("missing `{c}`"),
                    has => format!(
                        "missing `{c}` (the row has {}; --text-column, --text-pair-column and \
                         --label-column name the columns{})",
                        crate::data::brief_list(has.iter().map(|k| format!("`{}`", visible(k)))),
                        self.likely_column(c, has)
                    ),
                },
            })
        };
        let text = |c: &str| present(c, row.get(c)?);
        let target = match &self.label_column {
            None => None,
            Some(c) => {
                let label = present(c, label_field(row, c, self.kind.is_multi_label())?)?;
                Some(parse_target(&label, &self.kind, classes).map_err(|why| {
                    let unknown_class = why.contains("is not one of the classes");
                    match (&self.kind, label.trim().is_empty()) {
                        // How to skip such rows follows in every malformed row's message.
                        (_, true) => format!("{why}: fill it in or delete the row"),
                        (TaskKind::Classification { .. }, false) if looks_like_a_set(&label) => {
                            format!(
                                "{why} (it reads as a set of classes: --multi-label reads each \
                                 label as one)"
                            )
                        }
                        (TaskKind::Classification { .. } | TaskKind::MultiLabel { .. }, false)
                            if unknown_class =>
                        {
                            format!(
                                "{why} (--labels names a custom task's classes; without it they \
                             are those an adapter or the checkpoint's id2label records, else \
                             the training file's)"
                            )
                        }
                        _ => why,
                    }
                })?)
            }
        };
        Ok(Some(Example {
            text_a: text(&self.text_column)?,
            text_b: self.text_pair_column.as_deref().map(text).transpose()?,
            target,
        }))
    }

    /// Reads the table.
    pub fn load(&self, on_malformed: OnMalformed) -> Result<Dataset> {
        let path = &self.path;
        // Classes no row can be matched against are the spec's mistake, said once, not as
        // every row's ("not one of the classes pos, pos").
        if let Some(labels) = self.kind.class_names() {
            let problem = match (&self.kind, labels.len()) {
                (TaskKind::Classification { .. }, 0 | 1) => Some(format!(
                    "{} class(es): a classification needs at least two",
                    labels.len()
                )),
                (_, 0) => Some("no classes".to_string()),
                _ => super::label_names_problem(labels),
            };
            if let Some(problem) = problem {
                return Err(Error::invalid(
                    "labels",
                    format!(
                        "{}: the classes to read it by ({labels:?}, as the task was given them: \
                         its labels, an adapter's or a checkpoint's `id2label`): {problem}",
                        path.display()
                    ),
                ));
            }
        }
        let mut sink = RowSink::new(on_malformed);
        let classes = ClassLookup::new(self.kind.class_names().unwrap_or_default());
        self.for_each_row(
            &mut |line, row| match row.and_then(|r| self.example(r, &classes)) {
                Ok(Some(e)) => sink.take(Ok(e), path, line),
                Ok(None) => Ok(()),
                Err(why) => sink.take(Err(why), path, line),
            },
        )?;
        Ok(Dataset {
            name: path.display().to_string(),
            kind: self.kind.clone(),
            examples: sink.examples,
            skipped: sink.skipped,
            source_lines: sink.lines,
        })
    }

    /// The classes of the label column, for a file that is the only word on them (no
    /// `--labels`, no adapter or fine-tuned head that names them): every distinct label the
    /// selected rows hold, in order (whole numbers by value, written as integers; names
    /// sorted), as transformers' `run_glue` infers them; `0`/`1` data always has both
    /// classes. Labels that are all numbers with a fraction among them are refused
    /// as likely regression targets, `nan` or `inf` among numbers as a broken value (skipped
    /// rows, with [`OnMalformed::Skip`]); a single class is refused. A malformed row is the error
    /// [`TableSpec::load`] would give, or skipped as it would skip it; a row with an empty
    /// label is left to `load` to report, and a file without one labeled row is refused.
    /// For a spec of [`TaskKind::MultiLabel`], every class name of every row's set counts,
    /// and the answer is a multi-label task of those classes.
    pub fn infer_classes(&self, on_malformed: OnMalformed) -> Result<TaskKind> {
        let path = &self.path;
        let Some(column) = &self.label_column else {
            return Err(Error::invalid(
                "labels",
                format!("{}: unlabeled data names no classes", path.display()),
            ));
        };
        let multi_label = self.kind.is_multi_label();
        let mut seen: Vec<(String, usize)> = Vec::new();
        let mut seen_names = std::collections::HashSet::new();
        // A malformed row is the error `load` would give, or skipped as `load` would skip it.
        let mut sink = RowSink::new(on_malformed);
        // Only a row `load` keeps names a class: one the filter selects, with its texts, and
        // a label that is a usable class name.
        let texts_only = TableSpec {
            label_column: None,
            ..self.clone()
        };
        self.for_each_row(&mut |line, row| {
            let row = match row {
                Ok(row) => row,
                Err(why) => return sink.take(Err(why), path, line),
            };
            match texts_only.example(row, &ClassLookup::new(&[])) {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(why) => return sink.take(Err(why), path, line),
            }
            let label = match label_field(row, column, multi_label) {
                Ok(Some(label)) => label.trim().to_string(),
                // A null label is left to `load` to report, as an empty one is.
                Ok(None) if row.is_null(column) => return Ok(()),
                Ok(None) => return sink.take(Err(format!("missing `{column}`")), path, line),
                Err(why) => return sink.take(Err(why), path, line),
            };
            let names = match multi_label {
                true => match super::glue::label_set_items(&label) {
                    Ok(names) => names,
                    Err(why) => return sink.take(Err(why), path, line),
                },
                false => vec![label],
            };
            for label in names {
                if label.is_empty() || seen_names.contains(&label) {
                    continue;
                }
                if let Some(problem) = super::label_names_problem(std::slice::from_ref(&label)) {
                    let why = format!("label `{}`: {problem}", visible(&label));
                    return sink.take(Err(why), path, line);
                }
                seen_names.insert(label.clone());
                seen.push((label, line));
            }
            Ok(())
        })?;
        // The rows skipped may be why too few classes remain: the refusal names them.
        let skipped = match sink.skipped.as_slice() {
            [] => String::new(),
            [only] => format!(" (1 malformed row was skipped: {only})"),
            [first, rest @ ..] => format!(
                " ({} malformed rows were skipped, the first: {first})",
                rest.len() + 1
            ),
        };
        let refuse = |detail: String| Error::Format {
            path: path.clone(),
            detail: format!("{detail}{skipped}"),
        };
        if seen.is_empty() {
            return Err(refuse(format!(
                "no example with a label in `{column}`: nothing to learn the classes from, or \
                 to train on"
            )));
        }
        // `nan` or `inf` among numbers is a missing or broken value, not a class of its own:
        // refused, or (skipping malformed rows) left out of the classes, so that `load`
        // skips and lists those rows.
        let numeric = |l: &str| l.parse::<f64>().ok();
        if seen.iter().all(|(l, _)| numeric(l).is_some())
            && seen
                .iter()
                .any(|(l, _)| numeric(l).is_some_and(f64::is_finite))
        {
            if let Some((label, line)) = seen
                .iter()
                .find(|(l, _)| numeric(l).is_some_and(|v| !v.is_finite()))
            {
                if on_malformed == OnMalformed::Error {
                    return Err(refuse(format!(
                        "line {line}: label `{label}` is not a finite number, and every other \
                         label in `{column}` is one: fix or drop that row, or give --labels to \
                         name the classes"
                    )));
                }
                seen.retain(|(l, _)| numeric(l).is_some_and(f64::is_finite));
            }
        }
        let numbers: Option<Vec<f64>> = seen
            .iter()
            .map(|(l, _)| numeric(l).filter(|v| v.is_finite()))
            .collect();
        let labels: Vec<String> = match numbers {
            Some(values) => {
                if let Some((_, (label, line))) =
                    values.iter().zip(&seen).find(|(v, _)| v.fract() != 0.0)
                {
                    let remedy = match multi_label {
                        true => "give --labels to name the classes",
                        false => {
                            "give --regression to fit them as scores, or --labels to name the \
                             classes"
                        }
                    };
                    return Err(refuse(format!(
                        "line {line}: label `{label}` is a real number, and every label in \
                         `{column}` is a number: {remedy}"
                    )));
                }
                // By value; a whole number written as an integer (`1.0` is class `1`, as
                // `load` reads it) unless too large to be one exactly.
                let mut by_value: Vec<(f64, String)> = values
                    .iter()
                    .zip(&seen)
                    .map(|(&v, (label, _))| {
                        (v, integer_spelling(v).unwrap_or_else(|| label.clone()))
                    })
                    .collect();
                // Whole numbers past 2^53 that round to one f64 still sort by exact value.
                let exact = |name: &str| name.parse::<i128>().ok();
                by_value.sort_by(|a, b| a.0.total_cmp(&b.0).then(exact(&a.1).cmp(&exact(&b.1))));
                by_value.dedup_by(|a, b| a.1 == b.1);
                let mut names: Vec<String> = by_value.into_iter().map(|(_, n)| n).collect();
                // Binary 0/1 data keeps both classes however few rows show one of them.
                if names.iter().all(|n| n == "0" || n == "1") {
                    names = vec!["0".into(), "1".into()];
                }
                names
            }
            None => {
                // Numbers among names are still classes by value: `1` and `1.0` are one class
                // (`load` reads `1.0` as class `1`), spelt as an integer where whole, the
                // first spelling seen otherwise.
                let mut values = std::collections::HashSet::new();
                let mut names: Vec<String> = Vec::new();
                for (label, _) in seen {
                    match class_value(&label) {
                        Some(v) if !values.insert(value_key(v)) => {}
                        Some(v) => names.push(integer_spelling(v).unwrap_or(label)),
                        None => names.push(label),
                    }
                }
                names.sort();
                names
            }
        };
        if let Some(problem) = super::label_names_problem(&labels) {
            return Err(refuse(format!("the labels of `{column}`: {problem}")));
        }
        match labels.as_slice() {
            [] => Err(refuse(format!("no row has a label in `{column}`"))),
            [only] if multi_label => Err(refuse(format!(
                "`{only}` is the only class in `{column}`: a multi-label task needs two classes \
                 or more (give --labels to name them all; one yes-or-no class is a \
                 classification of two)"
            ))),
            [only] => Err(refuse(format!(
                "every label in `{column}` is `{only}`: classification needs two classes or \
                 more (give --labels to name them all, or --regression for a real-valued label)"
            ))),
            _ if multi_label => Ok(TaskKind::MultiLabel { labels }),
            _ => Ok(TaskKind::Classification { labels }),
        }
    }

    /// Visits every record of the file with its 1-based line: the row, or why it cannot be
    /// read. A header without the spec's columns is an error before any row.
    fn for_each_row(&self, visit: &mut RowVisitor<'_>) -> Result<()> {
        let path = &self.path;
        let roles = self.column_roles();
        for (i, (role, _, column)) in roles.iter().enumerate() {
            let again = roles[i + 1..]
                .iter()
                .find(|(_, _, other)| other.is_some() && other == column);
            if let (Some(column), Some((other, _, _))) = (column, again) {
                return Err(Error::invalid(
                    "columns",
                    format!(
                        "`{column}` is both the {role} and the {other} column of {} \
                         (--text-column, --text-pair-column, --label-column)",
                        path.display()
                    ),
                ));
            }
        }
        match TableFormat::from_path(path)? {
            format @ (TableFormat::Csv | TableFormat::Tsv) => self.for_each_csv_row(format, visit),
            TableFormat::Jsonl => json_rows::for_each_json_row(path, visit),
        }
    }
}

/// `text` as a message shows a name from a file: control characters (a tab, a carriage
/// return) written as escapes, everything else as it is (`escape_debug` also wrote `it's` as
/// `it\'s`, a name no file has).
pub(crate) fn visible(text: &str) -> String {
    super::shown_briefly(text, super::glue::SHOWN_CHARS, |start| {
        start
            .chars()
            .flat_map(|c| match c.is_control() {
                true => c.escape_debug().collect::<Vec<_>>(),
                false => vec![c],
            })
            .collect()
    })
}

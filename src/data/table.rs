//! Custom tasks from CSV, TSV or JSONL: one or two text columns and a label column.

use std::path::{Path, PathBuf};

use super::example::{Dataset, Example, OnMalformed, RowSink, TaskKind};
use super::glue::{class_value, integer_spelling, parse_target};
use super::json_record::{json_problem, JsonRecord};
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

struct CsvRow<'a> {
    header: &'a [String],
    record: csv::StringRecord,
}

impl Row for CsvRow<'_> {
    fn get(&self, column: &str) -> std::result::Result<Option<String>, String> {
        let i = self
            .header
            .iter()
            .position(|h| h == column)
            .ok_or_else(|| format!("no column `{column}`"))?;
        Ok(self.record.get(i).map(str::to_string))
    }
}

/// A CSV record as text; a field that is not UTF-8 is named (by column when the header
/// names it) with the offending byte.
fn decode_record(
    record: csv::ByteRecord,
    header: &[String],
) -> std::result::Result<csv::StringRecord, String> {
    csv::StringRecord::from_byte_record(record).map_err(|e| {
        let (field, at) = (e.utf8_error().field(), e.utf8_error().valid_up_to());
        let record = e.into_byte_record();
        let bytes = record.get(field).unwrap_or_default();
        let name = header
            .get(field)
            .map_or(format!("field {}", field + 1), |h| format!("field `{h}`"));
        format!(
            "{name}, byte {} of the field: {}",
            at + 1,
            crate::text_file::invalid_utf8(bytes.get(at).copied().unwrap_or(0))
        )
    })
}

struct JsonRow(serde_json::Map<String, serde_json::Value>);

impl Row for JsonRow {
    fn get(&self, column: &str) -> std::result::Result<Option<String>, String> {
        Ok(match self.0.get(column) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                Some(v.to_string())
            }
            Some(other) => return Err(format!("field `{column}` is {other}, not text")),
        })
    }

    fn is_null(&self, column: &str) -> bool {
        self.0.get(column) == Some(&serde_json::Value::Null)
    }

    fn own_columns(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    fn get_label_set(&self, column: &str) -> std::result::Result<Option<String>, String> {
        match self.0.get(column) {
            Some(list @ serde_json::Value::Array(items))
                if items.iter().all(|i| i.is_string() || i.is_number()) =>
            {
                Ok(Some(list.to_string()))
            }
            Some(serde_json::Value::Array(_)) => Err(format!(
                "field `{column}` is a list holding something other than class names or ids"
            )),
            _ => self.get(column),
        }
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

/// For a table read as TSV: its texts that look quoted by a CSV writer (`"he said ""no"""`,
/// as pandas' `to_csv(sep="\t")` and Python's csv module write a field holding a quote),
/// whose quotes a TSV keeps as text. A note naming the first one and their count.
pub fn csv_quoting_in_tsv(data: &Dataset) -> Option<String> {
    let quoted = |text: &str| {
        let inner = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or("");
        inner.contains("\"\"") && !inner.replace("\"\"", "").contains('"')
    };
    let mut found = data
        .examples
        .iter()
        .enumerate()
        .filter(|(_, e)| quoted(&e.text_a) || e.text_b.as_deref().is_some_and(quoted));
    let (first, _) = found.next()?;
    let count = 1 + found.count();
    let place = data.place_of(first);
    Some(format!(
        "{}: {count} {} quoted as CSV writes them (first: {place}, in quotes with its \
         own quotes doubled); a .tsv is read without quoting, as GLUE's files are, so those \
         quotes stay in the text: save the table as .csv, or write the TSV unquoted \
         (quoting=csv.QUOTE_NONE)",
        data.name,
        if count == 1 {
            "text looks"
        } else {
            "texts look"
        }
    ))
}

impl TableSpec {
    /// Whether the filter keeps `row`.
    fn selected(&self, row: &dyn Row) -> std::result::Result<bool, String> {
        match &self.filter {
            Some((col, want)) => Ok(row.get(col)?.as_deref() == Some(want.as_str())),
            None => Ok(true),
        }
    }

    fn example(&self, row: &dyn Row) -> std::result::Result<Option<Example>, String> {
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
                         --label-column name the columns)",
                        has.iter()
                            .map(|k| format!("`{}`", k.escape_debug()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
            })
        };
        let text = |c: &str| present(c, row.get(c)?);
        let target = match &self.label_column {
            None => None,
            Some(c) => {
                let label = present(c, label_field(row, c, self.kind.is_multi_label())?)?;
                Some(parse_target(&label, &self.kind).map_err(|why| {
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
        let mut sink = RowSink::new(on_malformed);
        self.for_each_row(&mut |line, row| match row.and_then(|r| self.example(r)) {
            Ok(Some(e)) => sink.take(Ok(e), path, line),
            Ok(None) => Ok(()),
            Err(why) => sink.take(Err(why), path, line),
        })?;
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
            match texts_only.example(row) {
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
                if label.is_empty() || seen.iter().any(|(l, _)| *l == label) {
                    continue;
                }
                if let Some(problem) = super::label_names_problem(std::slice::from_ref(&label)) {
                    let why = format!("label `{}`: {problem}", label.escape_debug());
                    return sink.take(Err(why), path, line);
                }
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
                let mut values: Vec<f64> = Vec::new();
                let mut names: Vec<String> = Vec::new();
                for (label, _) in seen {
                    match class_value(&label) {
                        Some(v) if values.contains(&v) => {}
                        Some(v) => {
                            values.push(v);
                            names.push(integer_spelling(v).unwrap_or(label));
                        }
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
        let roles = [
            ("text", Some(&self.text_column)),
            ("second text", self.text_pair_column.as_ref()),
            ("label", self.label_column.as_ref()),
        ];
        for (i, (role, column)) in roles.iter().enumerate() {
            let again = roles[i + 1..]
                .iter()
                .find(|(_, other)| other.is_some() && other == column);
            if let (Some(column), Some((other, _))) = (column, again) {
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
            format @ (TableFormat::Csv | TableFormat::Tsv) => {
                let mut bytes = crate::text_file::read_bytes(path)?;
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    let what = match bytes.is_empty() {
                        true => "the file is empty",
                        false => "the file holds only blank lines",
                    };
                    return Err(Error::Format {
                        path: path.clone(),
                        detail: format!(
                            "{what}: a table starts with a header line naming its columns"
                        ),
                    });
                }
                // In a file of `\n` lines a lone `\r` is a character (a stray one from a
                // pasted text), as editors, `wc -l` and the GLUE reader take it: ending a row
                // there would cut it in two rows, the second one read as data.
                let lone_cr_is_text = !lone_cr_ends_lines(&bytes);
                let unclosed_why = |quote_line: usize| {
                    format!(
                        "a quoted field opens on line {quote_line} and is never closed, so it \
                         would take in every line to the end of the file (close the quote, or \
                         double a quote meant as text: `\"\"`)"
                    )
                };
                // The csv reader would read an unclosed quote's field to the end of the file,
                // swallowing every later row: that record is reported where it stands and
                // emptied to its quote's line end, and reading goes on after it.
                let mut unclosed = Vec::new();
                let quotes = loop {
                    let scan = match format {
                        TableFormat::Csv => scan_quotes(&bytes, lone_cr_is_text),
                        _ => QuoteScan {
                            unclosed: None,
                            text_after_closing: Vec::new(),
                        },
                    };
                    let Some((record, quote)) = scan.unclosed else {
                        break scan;
                    };
                    let mut counter = LineCounter::new(&bytes);
                    let (record_line, quote_line) = (
                        counter.line_of(record as u64),
                        counter.line_of(quote as u64),
                    );
                    // Only blank lines before it: the unclosed record is the header.
                    if bytes[..record].iter().all(u8::is_ascii_whitespace) {
                        return Err(Error::Format {
                            path: path.clone(),
                            detail: format!("line 1 (the header): {}", unclosed_why(quote_line)),
                        });
                    }
                    unclosed.push((record_line, unclosed_why(quote_line)));
                    let line_end = if lone_cr_is_text { b'\n' } else { b'\r' };
                    let quote_line_end = bytes[quote..]
                        .iter()
                        .position(|&b| b == line_end)
                        .map_or(bytes.len(), |i| quote + i);
                    // Its line ends stay, so every later line keeps its number.
                    let emptied = bytes[record..quote_line_end]
                        .iter()
                        .copied()
                        .filter(|&b| b == line_end);
                    let emptied: Vec<u8> = emptied.collect();
                    bytes.splice(record..quote_line_end, emptied);
                };
                let mut unclosed = unclosed.into_iter().peekable();
                let readable = &bytes[..];
                let mut lines = LineCounter::new(readable);
                let mut reader = csv::ReaderBuilder::new()
                    .delimiter(if format == TableFormat::Csv {
                        b','
                    } else {
                        b'\t'
                    })
                    .quoting(format == TableFormat::Csv)
                    .flexible(true)
                    .terminator(match lone_cr_is_text {
                        true => csv::Terminator::Any(b'\n'),
                        false => csv::Terminator::CRLF,
                    })
                    // The header is the first line that is not blank, found below: ending
                    // records at `\n`, the reader takes a CRLF file's blank line for a record.
                    .has_headers(false)
                    .from_reader(readable);
                let line_one = |detail: String| Error::Format {
                    path: path.clone(),
                    detail: format!("line 1 (the header): {detail}"),
                };
                let mut header_bytes = csv::ByteRecord::new();
                loop {
                    let read = reader
                        .read_byte_record(&mut header_bytes)
                        .map_err(|e| line_one(e.to_string()))?;
                    if lone_cr_is_text {
                        drop_cr_of_crlf(&mut header_bytes);
                    }
                    let blank = header_bytes.len() == 1
                        && header_bytes[0].is_empty()
                        && !starts_quoted(readable, header_bytes.position(), lone_cr_is_text);
                    // Only blank lines: refused above, so a record comes first.
                    if !read || !blank {
                        break;
                    }
                }
                let header: Vec<String> = decode_record(header_bytes, &[])
                    .map_err(line_one)?
                    .iter()
                    .map(str::to_string)
                    .collect();
                let header_end = reader.position().byte();
                if let Some(stray) = quotes
                    .text_after_closing
                    .iter()
                    .find(|s| (s.text as u64) < header_end)
                {
                    return Err(line_one(text_after_quote_why(&bytes, stray)));
                }
                // The columns the spec names (the filter's is looked up row by row).
                let named: Vec<&String> = [
                    Some(&self.text_column),
                    self.text_pair_column.as_ref(),
                    self.label_column.as_ref(),
                ]
                .into_iter()
                .flatten()
                .collect();
                // A name given twice is ambiguous only where the command reads it.
                let filter = self.filter.as_ref().map(|(column, _)| column);
                let named_twice = header.iter().enumerate().find_map(|(i, name)| {
                    let first = header[..i].iter().position(|m| m == name)?;
                    (named.contains(&name) || filter == Some(name)).then_some((first, i))
                });
                if let Some((first, repeat)) = named_twice {
                    return Err(line_one(format!(
                        "column `{}` appears twice (columns {} and {}): rename one of them, \
                         or delete the one that is not meant",
                        header[repeat],
                        first + 1,
                        repeat + 1
                    )));
                }
                for col in named {
                    if !header.contains(col) {
                        return Err(Error::Format {
                            path: path.clone(),
                            detail: format!(
                                "line 1: no column `{col}` (columns: {}){}; --text-column, \
                                 --text-pair-column and --label-column name the columns",
                                header
                                    .iter()
                                    .map(|h| format!("`{}`", h.escape_debug()))
                                    .collect::<Vec<_>>()
                                    .join(", "),
                                match header.iter().any(|h| h.contains('\0')) {
                                    // UTF-16 without its byte-order mark: ASCII letters with
                                    // a NUL byte beside each.
                                    true => " (NUL bytes between the letters: the file looks \
                                              like UTF-16; save it as UTF-8)"
                                        .to_string(),
                                    false => separator_hint(&header, format),
                                }
                            ),
                        });
                    }
                }
                let mut r = csv::ByteRecord::new();
                // Records and strays both go in file order: a cursor finds a record's strays.
                let mut strays = quotes.text_after_closing.iter().peekable();
                loop {
                    let start = reader.position().byte();
                    let read = reader.read_byte_record(&mut r);
                    if lone_cr_is_text && matches!(read, Ok(true)) {
                        drop_cr_of_crlf(&mut r);
                    }
                    let line = match &read {
                        Ok(_) => r.position().map(|p| p.byte()),
                        Err(e) => e.position().map(|p| p.byte()),
                    };
                    let line = line.map_or(0, |byte| lines.line_of(byte));
                    while let Some((at, why)) = unclosed.next_if(|(at, _)| match read {
                        Ok(true) | Err(_) => *at < line,
                        Ok(false) => true,
                    }) {
                        visit(at, Err(why))?;
                    }
                    match read {
                        Ok(false) => break,
                        // An empty line is no row (as for Python's csv and pandas). A line
                        // of spaces is one: the text of a one-column table, a row with too
                        // few fields in a wider one.
                        Ok(true)
                            if r.len() == 1
                                && r[0].is_empty()
                                && !starts_quoted(readable, r.position(), lone_cr_is_text) =>
                        {
                            continue
                        }
                        Ok(true) => {
                            let end = reader.position().byte();
                            while strays.next_if(|s| (s.text as u64) < start).is_some() {}
                            if let Some(stray) = strays.next_if(|s| (s.text as u64) < end) {
                                while strays.next_if(|s| (s.text as u64) < end).is_some() {}
                                visit(line, Err(text_after_quote_why(&bytes, stray)))?;
                                continue;
                            }
                            if r.len() != header.len() {
                                // A TSV saved by a CSV writer (pandas, Python's csv) quotes
                                // a field holding a tab or a line break.
                                let quoted = format == TableFormat::Tsv
                                    && r.iter().any(|field| field.contains(&b'"'));
                                let spaces_only = r.len() == 1
                                    && r[0].trim_ascii().is_empty()
                                    && !starts_quoted(readable, r.position(), lone_cr_is_text);
                                // Spaces after the last row are an editor's leftovers, no row.
                                if spaces_only && readable[end as usize..].trim_ascii().is_empty() {
                                    continue;
                                }
                                if spaces_only {
                                    visit(
                                        line,
                                        Err(format!(
                                            "the line holds only spaces or tabs, where a row \
                                             of {} fields belongs: delete the line, or \
                                             --skip-malformed skips it",
                                            header.len()
                                        )),
                                    )?;
                                    continue;
                                }
                                let why = format!(
                                    "{} field{}, the header has {}{}",
                                    r.len(),
                                    if r.len() == 1 { "" } else { "s" },
                                    header.len(),
                                    if quoted {
                                        " (a .tsv is read without quoting, as GLUE's files \
                                         are: a quoted field holding a tab or a line break is \
                                         not one field here; save the table as .csv to quote \
                                         fields)"
                                    } else {
                                        ""
                                    }
                                );
                                visit(line, Err(why))?;
                                continue;
                            }
                            // Files joined each with its header: that line would be read as
                            // a row, its label column's name a class.
                            if header.len() > 1 && r.iter().eq(header.iter().map(|h| h.as_bytes()))
                            {
                                visit(
                                    line,
                                    Err("the line repeats the header (files joined, each with \
                                         its header?): delete the line"
                                        .into()),
                                )?;
                                continue;
                            }
                            match decode_record(std::mem::take(&mut r), &header) {
                                Ok(record) => visit(
                                    line,
                                    Ok(&CsvRow {
                                        header: &header,
                                        record,
                                    }),
                                )?,
                                Err(why) => visit(line, Err(why))?,
                            }
                        }
                        Err(e) => visit(line, Err(e.to_string()))?,
                    }
                }
            }
            TableFormat::Jsonl => {
                let bytes = crate::text_file::read_bytes(path)?;
                // A .json file holding one JSON array of row objects (what `json.dump` of a
                // list writes, and Hugging Face datasets also reads) rather than JSON Lines.
                let json_extension = path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("json"));
                if json_extension && bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
                {
                    let text = crate::text_file::read_utf8(path)?;
                    let whole: serde_json::Result<Vec<JsonRecord>> = serde_json::from_str(&text);
                    let elements = array_elements(text.as_bytes());
                    type Parsed = std::result::Result<JsonRecord, (usize, String)>;
                    let (rows, elements): (Vec<Parsed>, _) = match (whole, elements) {
                        (Ok(rows), elements) => (rows.into_iter().map(Ok).collect(), elements),
                        // An element that is not valid JSON (or repeats a key) is its own
                        // row's fault, reported or skipped as such, where the array's
                        // bounds still find every other element.
                        (Err(_), Some(elements)) => {
                            let rows = elements.iter().map(|e| parse_element(&text, e)).collect();
                            (rows, Some(elements))
                        }
                        (Err(e), None) => {
                            return Err(Error::Format {
                                path: path.clone(),
                                detail: format!(
                                    "line {}: {}, in a file holding one JSON array",
                                    e.line(),
                                    json_problem(
                                        &e,
                                        text.lines().nth(e.line().saturating_sub(1)).unwrap_or("")
                                    )
                                ),
                            })
                        }
                    };
                    for (i, row) in rows.into_iter().enumerate() {
                        // The scan agrees with the parser on valid JSON; element numbers
                        // stand in should it ever not.
                        let line = elements
                            .as_ref()
                            .and_then(|e| e.get(i))
                            .map_or(i + 1, |e| e.line);
                        match row {
                            Ok(JsonRecord::Row(map)) => visit(line, Ok(&JsonRow(map)))?,
                            Ok(JsonRecord::NotAnObject) => visit(
                                line,
                                Err(format!(
                                    "element {} of the array is not a JSON object",
                                    i + 1
                                )),
                            )?,
                            Err((line, why)) => visit(
                                line,
                                Err(format!("{why}, in element {} of the array", i + 1)),
                            )?,
                        }
                    }
                    return Ok(());
                }
                if json_extension {
                    refuse_single_object(path, &bytes)?;
                }
                for (line_no, line) in crate::text_file::utf8_lines(&bytes) {
                    // Files joined each with its byte-order mark: the mark is no text.
                    let line = line.map(|l| l.strip_prefix('\u{feff}').unwrap_or(l));
                    match line {
                        Ok(line) if line.trim().is_empty() => continue,
                        Ok(line) => match JsonRecord::parse(line) {
                            Ok(JsonRecord::Row(map)) => visit(line_no, Ok(&JsonRow(map)))?,
                            Ok(JsonRecord::NotAnObject) => {
                                visit(line_no, Err("not a JSON object".to_string()))?
                            }
                            Err(e) if e.is_eof() => visit(
                                line_no,
                                Err(format!(
                                    "{}: the line ends inside a JSON value, and JSON Lines \
                                     holds one whole object per line (a pretty-printed object \
                                     spans several; a .json file may hold one array of them)",
                                    json_problem(&e, line)
                                )),
                            )?,
                            Err(e) => visit(line_no, Err(json_problem(&e, line)))?,
                        },
                        Err(why) => visit(line_no, Err(why))?,
                    }
                }
            }
        }
        Ok(())
    }
}

/// A `.json` file that is one JSON object rather than rows (`{"data": [...]}`, or one object
/// spread over several lines) is refused saying what a data file holds, instead of being read
/// as JSON Lines whose first line lacks every column.
fn refuse_single_object(path: &Path, bytes: &[u8]) -> Result<()> {
    let text = String::from_utf8_lossy(bytes);
    if !text
        .trim_start_matches('\u{feff}')
        .trim_start()
        .starts_with('{')
    {
        return Ok(());
    }
    // JSON Lines with several rows is no single value: the parse stops at the second row.
    let Ok(serde_json::Value::Object(object)) =
        serde_json::from_str::<serde_json::Value>(text.trim_start_matches('\u{feff}'))
    else {
        return Ok(());
    };
    let rows_inside = object.iter().find(|(_, v)| {
        v.as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(serde_json::Value::is_object))
    });
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    let what = match rows_inside {
        Some((key, rows)) => format!(
            "one JSON object whose `{key}` field holds an array of {} row objects; write that \
             array alone as the file",
            rows.as_array().map_or(0, Vec::len)
        ),
        None if lines > 1 => "one JSON object spread over several lines".to_string(),
        None => return Ok(()),
    };
    Err(Error::Format {
        path: path.to_path_buf(),
        detail: format!(
            "line 1: the file holds {what}: a .json data file holds one JSON array of row \
             objects, or JSON Lines (one row object per line)"
        ),
    })
}

/// One element of the array in `text`, parsed alone: an error names the file's line and
/// column (the element's own line is padded to where it starts, so serde_json's column is
/// counted from the line's start).
fn parse_element(
    text: &str,
    element: &ArrayElement,
) -> std::result::Result<JsonRecord, (usize, String)> {
    let line_start = text[..element.start].rfind('\n').map_or(0, |i| i + 1);
    let padded = format!(
        "{}{}",
        " ".repeat(element.start - line_start),
        &text[element.start..element.end]
    );
    JsonRecord::parse(&padded).map_err(|e| {
        let line = element.line + e.line() - 1;
        let line_text = text.lines().nth(line - 1).unwrap_or("");
        (line, json_problem(&e, line_text))
    })
}

/// One element of a file's top-level JSON array: its bytes and the 1-based line it starts on.
struct ArrayElement {
    start: usize,
    end: usize,
    line: usize,
}

/// The elements of the top-level JSON array that `text` holds, found by nesting depth outside
/// strings, so that an element that is not valid JSON has its bounds still: `None` where the
/// array itself is broken (a bracket or string never closed, a missing or trailing comma
/// between elements, text after the array), which no element's bounds can mend.
fn array_elements(text: &[u8]) -> Option<Vec<ArrayElement>> {
    let mut elements: Vec<ArrayElement> = Vec::new();
    let (mut line, mut depth, mut closed) = (1, 0usize, false);
    let (mut in_string, mut escaped) = (false, false);
    // Between `[` or `,` and an element's first byte; after a comma, a `]` there is a
    // trailing comma.
    let (mut expecting, mut after_comma) = (false, false);
    // The element's value has ended (its closing bracket or quote, or a space after a bare
    // value): only `,` or `]` may follow; anything else is a missing comma, which leaves no
    // way to tell where one element ends and the next begins.
    let mut value_ended = false;
    for (i, &b) in text.iter().enumerate() {
        if b == b'\n' {
            line += 1;
        }
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => {
                    in_string = false;
                    value_ended = depth == 1;
                }
                _ => {}
            }
            if let Some(element) = elements.last_mut() {
                element.end = i + 1;
            }
            continue;
        }
        if b.is_ascii_whitespace() {
            if depth == 1 && !expecting && !elements.is_empty() {
                value_ended = true;
            }
            continue;
        }
        match (depth, b) {
            (_, _) if closed => return None,
            (0, b'[') => (depth, expecting) = (1, true),
            (0, _) => return None,
            (1, b',') if expecting => return None,
            (1, b',') => (expecting, after_comma, value_ended) = (true, true, false),
            (1, b']') if expecting && after_comma => return None,
            (1, b']') => (depth, closed) = (0, true),
            (1, _) if value_ended => return None,
            _ => {
                if depth == 1 && expecting {
                    elements.push(ArrayElement {
                        start: i,
                        end: i,
                        line,
                    });
                    expecting = false;
                }
                match b {
                    b'"' => in_string = true,
                    b'[' | b'{' => depth += 1,
                    // A stray closing bracket of an element at the array's own level is the
                    // element's fault, found when the element is parsed.
                    b']' | b'}' if depth > 1 => {
                        depth -= 1;
                        value_ended = depth == 1;
                    }
                    _ => {}
                }
                if let Some(element) = elements.last_mut() {
                    element.end = i + 1;
                }
            }
        }
    }
    closed.then_some(elements)
}

/// What the quotes of a CSV file do, as the csv reader parses them (RFC 4180: a quote opens
/// a field only as its first character, `""` inside is a quote, text after the closing quote
/// joins the field).
struct QuoteScan {
    /// Where an unclosed quote makes the rest of the file one field: the byte offset of the
    /// record it is in, and of the quote.
    unclosed: Option<(usize, usize)>,
    /// Text right after a closing quote: the reader would glue it to the field, which is how
    /// a stray quote silently merges the lines up to the next quote into one row.
    text_after_closing: Vec<TextAfterQuote>,
}

/// Text after a closing quote (byte offsets).
struct TextAfterQuote {
    opening: usize,
    closing: usize,
    text: usize,
}

/// Whether a `\r` ends a line where no `\n` follows it: in old Mac files (as many such `\r`s
/// as `\n`s or more, so a final `\n` an editor added or one inside a quoted field does not make
/// it a file of `\n` lines). Elsewhere a lone `\r` is text; `\r`s before a `\n` are part of
/// its line end either way.
fn lone_cr_ends_lines(bytes: &[u8]) -> bool {
    let (mut newlines, mut lone_crs) = (0usize, 0usize);
    // Backwards, so each `\r` knows the first byte after its run of `\r`s.
    let mut newline_next = false;
    for &b in bytes.iter().rev() {
        match b {
            b'\r' if !newline_next => lone_crs += 1,
            b'\r' => {}
            b'\n' => {
                newlines += 1;
                newline_next = true;
            }
            _ => newline_next = false,
        }
    }
    // A tie is a two-line old Mac file with the editor's final `\n`.
    lone_crs > 0 && lone_crs >= newlines
}

/// Whether the `\r` at `i` is part of a line end `\r…\r\n`.
fn cr_before_newline(bytes: &[u8], i: usize) -> bool {
    bytes[i..].iter().find(|&&b| b != b'\r') == Some(&b'\n')
}

/// `lone_cr_is_text`: a `\r` ends a line only before `\n` (see the reader).
fn scan_quotes(bytes: &[u8], lone_cr_is_text: bool) -> QuoteScan {
    #[derive(PartialEq)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        /// After the quote at `at` closed a quoted field, and then spaces when `spaced`.
        Closed {
            at: usize,
            spaced: bool,
        },
    }
    let (mut state, mut record, mut quote) = (State::FieldStart, 0, 0);
    let mut text_after_closing = Vec::new();
    // Whether the run of `\r`s ending before `cr_run_end` is a line end (`\r…\r\n`).
    let (mut cr_run_end, mut cr_run_newline) = (0, false);
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\r' && i >= cr_run_end {
            cr_run_end = i + bytes[i..].iter().take_while(|&&c| c == b'\r').count();
            cr_run_newline = cr_before_newline(bytes, i);
        }
        let line_end = b == b'\n' || (b == b'\r' && (!lone_cr_is_text || cr_run_newline));
        state = match state {
            State::Quoted if b == b'"' => State::Closed {
                at: i,
                spaced: false,
            },
            State::Quoted => State::Quoted,
            State::Closed { spaced: false, .. } if b == b'"' => State::Quoted,
            State::FieldStart if b == b'"' => {
                quote = i;
                State::Quoted
            }
            _ if b == b',' => State::FieldStart,
            _ if line_end => {
                record = i + 1;
                State::FieldStart
            }
            // Spaces after a closing quote (`"a" ,1`) only pad the field.
            State::Closed { at, .. } if b == b' ' || b == b'\t' => {
                State::Closed { at, spaced: true }
            }
            State::Closed { at, .. } => {
                text_after_closing.push(TextAfterQuote {
                    opening: quote,
                    closing: at,
                    text: i,
                });
                State::Unquoted
            }
            _ => State::Unquoted,
        };
    }
    QuoteScan {
        unclosed: (state == State::Quoted).then_some((record, quote)),
        text_after_closing,
    }
}

/// Why a record with text after a closing quote is refused, from the file's bytes.
fn text_after_quote_why(bytes: &[u8], stray: &TextAfterQuote) -> String {
    let mut lines = LineCounter::new(bytes);
    let opening = lines.line_of(stray.opening as u64);
    let closing = lines.line_of(stray.closing as u64);
    let rest = &bytes[stray.text..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b',' | b'\n' | b'\r'))
        .unwrap_or(rest.len());
    let text: String = String::from_utf8_lossy(&rest[..end])
        .chars()
        .take(40)
        .flat_map(|c| match c.is_control() {
            true => c.escape_default().collect::<Vec<_>>(),
            false => vec![c],
        })
        .collect();
    let (place, joined) = if opening == closing {
        (format!("the quoted field on line {opening} is"), "")
    } else {
        (
            format!("the quoted field that opens on line {opening} closes on line {closing}, and is"),
            "; a stray quote like this one joins the lines between it and the next quote into one row",
        )
    };
    format!(
        "{place} followed by `{text}` before the next comma or line end: text after a closing \
         quote is not CSV{joined} (quote the whole field and double each quote inside it: `\"\"`)"
    )
}

/// The `\r`s of a `\r\n` line end (`\r\r\n` where Python's csv writer ran on Windows
/// without `newline=''`), left on a record's last field by a reader that ends records at
/// `\n` only.
fn drop_cr_of_crlf(record: &mut csv::ByteRecord) {
    let Some(last) = record.iter().next_back() else {
        return;
    };
    let kept_len = last.len() - last.iter().rev().take_while(|&&b| b == b'\r').count();
    if kept_len == last.len() {
        return;
    }
    let kept = &last[..kept_len];
    let last = record.len() - 1;
    let mut stripped: csv::ByteRecord = record
        .iter()
        .enumerate()
        .map(|(i, field)| if i == last { kept } else { field })
        .collect();
    stripped.set_position(record.position().cloned());
    *record = stripped;
}

/// Whether the record at `position` starts with a quote. The reader may place a record after
/// the line ends it skipped; where a lone `\r` is text (`lone_cr_is_text`), a `\r` is the
/// record's own (an empty line of a CRLF file), not one of them.
fn starts_quoted(bytes: &[u8], position: Option<&csv::Position>, lone_cr_is_text: bool) -> bool {
    let start = position.map_or(0, |p| p.byte() as usize);
    let skipped = |b: u8| b == b'\n' || (b == b'\r' && !lone_cr_is_text);
    bytes
        .get(start..)
        .and_then(|rest| rest.iter().find(|&&b| !skipped(b)))
        == Some(&b'"')
}

/// A hint when a header read as one column looks separated by something else.
fn separator_hint(header: &[String], format: TableFormat) -> String {
    let [only] = header else {
        return String::new();
    };
    let (expected, ext) = match format {
        TableFormat::Csv => (',', ".csv"),
        _ => ('\t', ".tsv"),
    };
    [
        ('\t', "tabs"),
        (';', "semicolons"),
        (',', "commas"),
        ('|', "bars"),
    ]
    .into_iter()
    .find(|&(c, _)| c != expected && only.contains(c))
    .map_or(String::new(), |(_, name)| {
        format!(
            "; the header reads as one column: is the file separated by {name}? a {ext} \
                 file is read as {} separated",
            if expected == ',' { "comma" } else { "tab" }
        )
    })
}

/// 1-based line numbers of the byte offsets where records start, counted forward through
/// the file once (records come in order). The csv crate's own `Position::line` is one short
/// in files with CRLF line ends, where a record's position is the `\n` left over from the
/// previous `\r\n`; here line ends before the record's first byte are skipped, then the
/// `\n`s before it counted.
struct LineCounter<'a> {
    bytes: &'a [u8],
    counted_to: usize,
    line: usize,
    /// Whether a lone `\r` ends a line: in a file without `\n` (old Mac files) it does; in
    /// one with `\n` it is a character of a quoted field, as editors and `wc -l` count.
    lone_cr_ends_lines: bool,
}

impl<'a> LineCounter<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        LineCounter {
            bytes,
            counted_to: 0,
            line: 1,
            lone_cr_ends_lines: lone_cr_ends_lines(bytes),
        }
    }

    fn line_of(&mut self, offset: u64) -> usize {
        let mut start =
            usize::try_from(offset).map_or(self.bytes.len(), |o| o.min(self.bytes.len()));
        while start < self.bytes.len() && matches!(self.bytes[start], b'\r' | b'\n') {
            start += 1;
        }
        if start < self.counted_to {
            (self.counted_to, self.line) = (0, 1);
        }
        // The csv reader ends a record at `\n`, `\r\n` or a lone `\r` (old Mac files); this
        // count takes a lone `\r` as a line's end where the file has no `\n`.
        let span = &self.bytes[self.counted_to..start];
        self.line += span
            .iter()
            .enumerate()
            .filter(|&(i, &b)| {
                b == b'\n'
                    || (b == b'\r'
                        && self.lone_cr_ends_lines
                        && self.bytes.get(self.counted_to + i + 1) != Some(&b'\n'))
            })
            .count();
        self.counted_to = start;
        self.line
    }
}

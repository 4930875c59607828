//! Custom tasks from CSV, TSV or JSONL: one or two text columns and a label column.

use std::path::{Path, PathBuf};

use super::example::{Dataset, Example, OnMalformed, RowSink, TaskKind};
use super::glue::parse_target;
use crate::error::{Error, Result};

/// File formats of [`TableSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFormat {
    /// Comma-separated with a header row, RFC 4180 quoting.
    Csv,
    /// Tab-separated with a header row, RFC 4180 quoting.
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
            _ => Err(Error::Format {
                path: path.to_path_buf(),
                detail: "unknown table format: use a .csv, .tsv or .jsonl file".into(),
            }),
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

/// A row as field lookups by column name.
trait Row {
    fn get(&self, column: &str) -> std::result::Result<Option<String>, String>;
}

struct CsvRow<'a> {
    header: &'a csv::StringRecord,
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
}

impl TableSpec {
    fn example(&self, row: &dyn Row) -> std::result::Result<Option<Example>, String> {
        if let Some((col, want)) = &self.filter {
            if row.get(col)?.as_deref() != Some(want.as_str()) {
                return Ok(None);
            }
        }
        let text = |c: &str| row.get(c)?.ok_or_else(|| format!("missing `{c}`"));
        let target = match &self.label_column {
            None => None,
            Some(c) => Some(parse_target(&text(c)?, &self.kind)?),
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
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let mut sink = RowSink::new(on_malformed);
        match TableFormat::from_path(path)? {
            format @ (TableFormat::Csv | TableFormat::Tsv) => {
                let mut reader = csv::ReaderBuilder::new()
                    .delimiter(if format == TableFormat::Csv {
                        b','
                    } else {
                        b'\t'
                    })
                    .flexible(true)
                    .from_path(path)
                    .map_err(|e| Error::Format {
                        path: path.clone(),
                        detail: e.to_string(),
                    })?;
                let header = reader
                    .headers()
                    .map_err(|e| Error::Format {
                        path: path.clone(),
                        detail: format!("line 1: {e}"),
                    })?
                    .clone();
                for col in [
                    Some(&self.text_column),
                    self.text_pair_column.as_ref(),
                    self.label_column.as_ref(),
                ]
                .into_iter()
                .flatten()
                {
                    if !header.iter().any(|h| h == col) {
                        return Err(Error::Format {
                            path: path.clone(),
                            detail: format!(
                                "line 1: no column `{col}` (columns: {})",
                                header.iter().collect::<Vec<_>>().join(", ")
                            ),
                        });
                    }
                }
                for record in reader.records() {
                    let (line, row) = match record {
                        Ok(r) => {
                            let line = r.position().map_or(0, |p| p.line() as usize);
                            let row = if r.len() != header.len() {
                                Err(format!(
                                    "{} fields, the header has {}",
                                    r.len(),
                                    header.len()
                                ))
                            } else {
                                self.example(&CsvRow {
                                    header: &header,
                                    record: r,
                                })
                            };
                            (line, row)
                        }
                        Err(e) => (
                            e.position().map_or(0, |p| p.line() as usize),
                            Err(e.to_string()),
                        ),
                    };
                    match row {
                        Ok(Some(e)) => sink.take(Ok(e), path, line)?,
                        Ok(None) => {}
                        Err(why) => sink.take(Err(why), path, line)?,
                    }
                }
            }
            TableFormat::Jsonl => {
                let text = std::fs::read_to_string(path).map_err(io)?;
                let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let row = match serde_json::from_str::<serde_json::Value>(line) {
                        Ok(serde_json::Value::Object(map)) => self.example(&JsonRow(map)),
                        Ok(_) => Err("not a JSON object".to_string()),
                        Err(e) => Err(format!("invalid JSON: {e}")),
                    };
                    match row {
                        Ok(Some(e)) => sink.take(Ok(e), path, i + 1)?,
                        Ok(None) => {}
                        Err(why) => sink.take(Err(why), path, i + 1)?,
                    }
                }
            }
        }
        Ok(Dataset {
            name: path.display().to_string(),
            kind: self.kind.clone(),
            examples: sink.examples,
            skipped: sink.skipped,
        })
    }
}

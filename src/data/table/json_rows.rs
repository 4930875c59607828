//! JSON Lines and `.json` arrays of row objects read row by row: an element that is not valid
//! JSON found by its bounds, so the others still read; a file that is one object refused.

use std::path::Path;

use super::{Row, RowVisitor};
use crate::data::json_record::{json_problem, JsonRecord};
use crate::error::{Error, Result};

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

/// The rows of a JSON Lines file, or of a `.json` file holding one array of row objects, each
/// with its line, to `visit`.
pub(super) fn for_each_json_row(path: &Path, visit: &mut RowVisitor<'_>) -> Result<()> {
    let bytes = crate::text_file::read_bytes(path)?;
    // A .json file holding one JSON array of row objects (what `json.dump` of a
    // list writes, and Hugging Face datasets also reads) rather than JSON Lines.
    let json_extension = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if json_extension && bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
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
                    path: path.to_path_buf(),
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
    Ok(())
}

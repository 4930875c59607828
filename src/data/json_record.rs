//! One JSON data record: a row object whose keys are its columns, read so that a key given
//! twice is refused (serde_json's own map keeps the last value without a word, so
//! `{"label": 1, "label": 0}` would train on 0).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A JSON value read as a data record: a row object, or anything else (refused by the caller
/// with its line).
pub(super) enum JsonRecord {
    Row(Map<String, Value>),
    NotAnObject,
}

impl JsonRecord {
    /// Parses one JSON text; a syntax error and a repeated key are both errors, told apart by
    /// [`json_problem`].
    pub(super) fn parse(text: &str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }
}

/// What is wrong with a JSON text, without serde_json's own line number (the caller names the
/// file's line): a syntax error says "invalid JSON", a repeated key says which. `line` is the
/// text of the line the error is on: serde_json counts its column in bytes, editors and
/// Python's json module in characters, as this does.
pub(super) fn json_problem(e: &serde_json::Error, line: &str) -> String {
    let message = e.to_string();
    let what = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(what, _)| what);
    let column = match e.column() {
        // serde_json's column 0 is the start of a line (an end of file just after a newline);
        // Python and editors number that column 1.
        0 => 1,
        bytes => {
            line.char_indices()
                .take_while(|(i, _)| *i < bytes - 1)
                .count()
                + 1
        }
    };
    // serde_json says "unexpected end of hex escape" for a high half before a closing quote.
    let surrogate = what.contains("hex escape") && has_surrogate_escape(line);
    let why = match surrogate {
        true => {
            "; a `\\uD800`-`\\uDFFF` escape is half of a UTF-16 surrogate pair, valid only \
             as a high half followed by a low one: whatever wrote the file split a character"
        }
        false => "",
    };
    match e.classify() {
        serde_json::error::Category::Data => format!("{what} (column {column}){why}"),
        _ => format!("invalid JSON at column {column}: {what}{why}"),
    }
}

/// Whether `line` holds a `\uD800`-`\uDFFF` escape (a UTF-16 surrogate half). Escapes are
/// walked in order, so an escaped backslash before `uD800` (the text `\uD800`) is none.
fn has_surrogate_escape(line: &str) -> bool {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        if bytes[i + 1] == b'u'
            && bytes
                .get(i + 2)
                .is_some_and(|b| b.eq_ignore_ascii_case(&b'd'))
            && bytes
                .get(i + 3)
                .is_some_and(|b| matches!(b.to_ascii_lowercase(), b'8'..=b'9' | b'a'..=b'f'))
        {
            return true;
        }
        i += 2;
    }
    false
}

/// The value of a row's field. An integer beyond serde_json's integers (past 64 bits) keeps
/// its spelling, as text: as a number it would round to an f64 (`12345678901234567890123`
/// read back as `1.2345678901234568e22`), naming another class than its spelling in a CSV.
fn exact_value(raw: &RawValue) -> serde_json::Result<Value> {
    let text = raw.get();
    let value: Value = serde_json::from_str(text)?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    Ok(match &value {
        Value::Number(n) if n.is_f64() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Value::String(text.to_string())
        }
        _ => value,
    })
}

/// A field's own error without serde_json's position in the field's text, which would not be
/// the file's (the record's reader adds the file's), said as invalid JSON as the file's own
/// syntax errors are (a number out of range).
fn without_position(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let what = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(what, _)| what);
    format!("invalid JSON: {what}")
}

impl<'de> Deserialize<'de> for JsonRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RecordVisitor)
    }
}

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = JsonRecord;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonRecord, A::Error> {
        let mut row = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if row.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "key `{key}` appears twice in this object; give each column once"
                )));
            }
            let raw = map.next_value::<Box<RawValue>>()?;
            let value = exact_value(&raw).map_err(|e| de::Error::custom(without_position(&e)))?;
            row.insert(key, value);
        }
        Ok(JsonRecord::Row(row))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonRecord, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(JsonRecord::NotAnObject)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<JsonRecord, E> {
        Ok(JsonRecord::NotAnObject)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<JsonRecord, E> {
        Ok(JsonRecord::NotAnObject)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<JsonRecord, E> {
        Ok(JsonRecord::NotAnObject)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<JsonRecord, E> {
        Ok(JsonRecord::NotAnObject)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<JsonRecord, E> {
        Ok(JsonRecord::NotAnObject)
    }

    fn visit_unit<E: de::Error>(self) -> Result<JsonRecord, E> {
        Ok(JsonRecord::NotAnObject)
    }
}

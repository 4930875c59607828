//! CSV and TSV tables read row by row: quotes as the csv reader parses them (and where an
//! unclosed or stray one would swallow rows), line endings, a header repeated, lines counted
//! as editors count them.

use std::path::Path;

use super::{Row, RowVisitor, TableFormat, TableSpec};
use crate::error::{Error, Result};

/// A row as its bytes: each field is decoded when read, so a column no command reads (a
/// note, or the labels `predict` ignores) may hold bytes that are not UTF-8.
struct CsvRow<'a> {
    header: &'a [String],
    record: csv::ByteRecord,
}

impl Row for CsvRow<'_> {
    fn get(&self, column: &str) -> std::result::Result<Option<String>, String> {
        let i = self
            .header
            .iter()
            .position(|h| h == column)
            .ok_or_else(|| format!("no column `{column}`"))?;
        self.record
            .get(i)
            .map(|bytes| {
                std::str::from_utf8(bytes)
                    .map(str::to_string)
                    .map_err(|e| field_not_utf8(self.header, i, bytes, e.valid_up_to()))
            })
            .transpose()
    }
}

/// The message for field `field` (named by the header where it names it), whose byte `at`
/// is not UTF-8.
fn field_not_utf8(header: &[String], field: usize, bytes: &[u8], at: usize) -> String {
    let name = header
        .get(field)
        .map_or(format!("field {}", field + 1), |h| format!("field `{h}`"));
    format!(
        "{name}, byte {} of the field: {}",
        at + 1,
        crate::text_file::invalid_utf8(bytes.get(at).copied().unwrap_or(0))
    )
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
        field_not_utf8(header, field, record.get(field).unwrap_or_default(), at)
    })
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

/// Whether the record in `bytes[record]` holds a `\r` outside quotes (a CSV's; a TSV has
/// none) that is not part of a line end.
fn lone_cr_outside_quotes(
    bytes: &[u8],
    record: std::ops::Range<usize>,
    format: TableFormat,
) -> bool {
    let mut quoted = false;
    let start = record.start;
    bytes[record].iter().enumerate().any(|(i, &b)| match b {
        // A doubled quote inside quotes turns the state twice: no change.
        b'"' if format == TableFormat::Csv => {
            quoted = !quoted;
            false
        }
        b'\r' => !quoted && !cr_before_newline(bytes, start + i),
        _ => false,
    })
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
    let text = super::visible(
        &String::from_utf8_lossy(&rest[..end])
            .chars()
            .take(40)
            .collect::<String>(),
    );
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

/// For a TSV whose header holds `col` in quotes (`"text"`, as a CSV writer quoting all
/// fields or every string writes it), why: a TSV is read without quoting.
fn quoted_header_hint(header: &[String], col: &str, format: TableFormat) -> String {
    let in_quotes = |h: &String| h.strip_prefix('"').and_then(|h| h.strip_suffix('"')) == Some(col);
    match format == TableFormat::Tsv && header.iter().any(in_quotes) {
        true => format!(
            "; the header has `\"{col}\"` in quotes, as a CSV writer quotes it: a .tsv is read \
             without quoting, as GLUE's files are, so the quotes stay in the names and texts: \
             save the table as .csv, or write the TSV unquoted (quoting=csv.QUOTE_NONE)"
        ),
        false => String::new(),
    }
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

/// The csv reader would read an unclosed quote's field to the end of the file, swallowing
/// every later row: each such record is emptied to its quote's line end (its line ends kept,
/// so every later line keeps its number) and the file scanned again. Returns the last scan
/// and the records emptied, by line, with why, to be reported where they stand; an unclosed
/// header is an error.
fn empty_unclosed_records(
    path: &Path,
    bytes: &mut Vec<u8>,
    format: TableFormat,
    lone_cr_is_text: bool,
) -> Result<(QuoteScan, Vec<(usize, String)>)> {
    let unclosed_why = |quote_line: usize| {
        format!(
            "a quoted field opens on line {quote_line} and is never closed, so it \
             would take in every line to the end of the file (close the quote, or \
             double a quote meant as text: `\"\"`)"
        )
    };
    let mut unclosed = Vec::new();
    let quotes = loop {
        let scan = match format {
            TableFormat::Csv => scan_quotes(bytes, lone_cr_is_text),
            _ => QuoteScan {
                unclosed: None,
                text_after_closing: Vec::new(),
            },
        };
        let Some((record, quote)) = scan.unclosed else {
            break scan;
        };
        let mut counter = LineCounter::new(bytes);
        let (record_line, quote_line) = (
            counter.line_of(record as u64),
            counter.line_of(quote as u64),
        );
        // Only blank lines before it: the unclosed record is the header.
        if bytes[..record].iter().all(u8::is_ascii_whitespace) {
            return Err(Error::Format {
                path: path.to_path_buf(),
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
    Ok((quotes, unclosed))
}

/// A CSV or TSV file's bytes, refused where it holds no header.
fn table_bytes(path: &Path) -> Result<Vec<u8>> {
    let bytes = crate::text_file::read_bytes(path)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        let what = match bytes.is_empty() {
            true => "the file is empty",
            false => "the file holds only blank lines",
        };
        return Err(Error::Format {
            path: path.to_path_buf(),
            detail: format!("{what}: a table starts with a header line naming its columns"),
        });
    }
    Ok(bytes)
}

/// A reader of `bytes` as `format`, which leaves the header to [`read_header`].
fn csv_reader(bytes: &[u8], format: TableFormat, lone_cr_is_text: bool) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .delimiter(match format {
            TableFormat::Csv => b',',
            _ => b'\t',
        })
        .quoting(format == TableFormat::Csv)
        .flexible(true)
        .terminator(match lone_cr_is_text {
            true => csv::Terminator::Any(b'\n'),
            false => csv::Terminator::CRLF,
        })
        // The header is the first line that is not blank: ending records at `\n`, the
        // reader takes a CRLF file's blank line for a record.
        .has_headers(false)
        .from_reader(bytes)
}

/// The column names: the first record of `bytes` that is not a blank line (the caller has
/// refused a file of blank lines only, so one comes).
fn read_header(
    reader: &mut csv::Reader<&[u8]>,
    bytes: &[u8],
    lone_cr_is_text: bool,
) -> std::result::Result<Vec<String>, String> {
    let mut header = csv::ByteRecord::new();
    loop {
        let read = reader
            .read_byte_record(&mut header)
            .map_err(|e| e.to_string())?;
        if lone_cr_is_text {
            drop_cr_of_crlf(&mut header);
        }
        let blank = header.len() == 1
            && header[0].is_empty()
            && !starts_quoted(bytes, header.position(), lone_cr_is_text);
        if !read || !blank {
            break;
        }
    }
    Ok(decode_record(header, &[])?
        .iter()
        .map(str::to_string)
        .collect())
}

/// What a record read after the header is.
enum Record {
    /// A row to visit.
    Row,
    /// Nothing to visit: an empty line, or spaces after the last row (an editor's leftovers).
    Skipped,
    /// A line that is not a row, and why.
    Malformed(String),
}

/// How the record `r`, ending at byte `end` of `bytes`, stands against the `header`: empty
/// lines are no rows (as for Python's csv and pandas), while a line of spaces is one — the
/// text of a one-column table, a row with too few fields in a wider one.
fn classify_record(
    r: &csv::ByteRecord,
    header: &[String],
    format: TableFormat,
    (bytes, end): (&[u8], usize),
    lone_cr_is_text: bool,
) -> Record {
    let first_field_blank = |blank: fn(&[u8]) -> bool| {
        r.len() == 1 && blank(&r[0]) && !starts_quoted(bytes, r.position(), lone_cr_is_text)
    };
    if first_field_blank(<[u8]>::is_empty) {
        return Record::Skipped;
    }
    if r.len() != header.len() {
        if first_field_blank(|f| f.trim_ascii().is_empty()) {
            return match bytes[end..].trim_ascii().is_empty() {
                true => Record::Skipped,
                false => Record::Malformed(format!(
                    "the line holds only spaces or tabs, where a row of {} fields belongs: \
                     delete the line, or --skip-malformed skips it",
                    header.len()
                )),
            };
        }
        // A TSV saved by a CSV writer (pandas, Python's csv) quotes a field holding a tab
        // or a line break.
        let quoted = format == TableFormat::Tsv && r.iter().any(|field| field.contains(&b'"'));
        // Python's csv module ends a row at any `\r` outside quotes; here one alone is text
        // (see `lone_cr_ends_lines`), so two rows joined by one read as one row too wide.
        let start = r.position().map_or(0, |p| p.byte() as usize);
        let lone_cr = lone_cr_is_text
            && r.len() > header.len()
            && lone_cr_outside_quotes(bytes, start..end, format);
        return Record::Malformed(format!(
            "{} field{}, the header has {}{}{}",
            r.len(),
            if r.len() == 1 { "" } else { "s" },
            header.len(),
            match quoted {
                true =>
                    " (a .tsv is read without quoting, as GLUE's files are: a quoted \
                          field holding a tab or a line break is not one field here; save \
                          the table as .csv to quote fields)",
                false => "",
            },
            match lone_cr {
                true =>
                    " (the row holds a carriage return \\r not followed by \\n, which is \
                          text in a file of \\n or \\r\\n lines, not a line's end: replace \
                          it by a line break where it ends a row)",
                false => "",
            }
        ));
    }
    // Files joined each with its header: that line would be read as a row, its label
    // column's name a class.
    if header.len() > 1 && r.iter().eq(header.iter().map(|h| h.as_bytes())) {
        return Record::Malformed(
            "the line repeats the header (files joined, each with its header?): delete the \
             line"
                .into(),
        );
    }
    Record::Row
}

impl TableSpec {
    /// The rows of a CSV or TSV table, each with its line, to `visit`.
    pub(super) fn for_each_csv_row(
        &self,
        format: TableFormat,
        visit: &mut RowVisitor<'_>,
    ) -> Result<()> {
        let path = &self.path;
        let mut bytes = table_bytes(path)?;
        // In a file of `\n` lines a lone `\r` is a character (a stray one from a
        // pasted text), as editors, `wc -l` and the GLUE reader take it: ending a row
        // there would cut it in two rows, the second one read as data.
        let lone_cr_is_text = !lone_cr_ends_lines(&bytes);
        let (quotes, unclosed) = empty_unclosed_records(path, &mut bytes, format, lone_cr_is_text)?;
        let mut unclosed = unclosed.into_iter().peekable();
        let readable = &bytes[..];
        let mut lines = LineCounter::new(readable);
        let mut reader = csv_reader(readable, format, lone_cr_is_text);
        let line_one = |detail: String| Error::Format {
            path: path.clone(),
            detail: format!("line 1 (the header): {detail}"),
        };
        let header = read_header(&mut reader, readable, lone_cr_is_text).map_err(line_one)?;
        let header_end = reader.position().byte();
        if let Some(stray) = quotes
            .text_after_closing
            .iter()
            .find(|s| (s.text as u64) < header_end)
        {
            return Err(line_one(text_after_quote_why(&bytes, stray)));
        }
        self.check_header(&header, format)?;
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
                Ok(true) => {
                    let end = reader.position().byte();
                    while strays.next_if(|s| (s.text as u64) < start).is_some() {}
                    if let Some(stray) = strays.next_if(|s| (s.text as u64) < end) {
                        while strays.next_if(|s| (s.text as u64) < end).is_some() {}
                        visit(line, Err(text_after_quote_why(&bytes, stray)))?;
                        continue;
                    }
                    let layout = (readable, end as usize);
                    match classify_record(&r, &header, format, layout, lone_cr_is_text) {
                        Record::Skipped => {}
                        Record::Malformed(why) => visit(line, Err(why))?,
                        Record::Row => visit(
                            line,
                            Ok(&CsvRow {
                                header: &header,
                                record: std::mem::take(&mut r),
                            }),
                        )?,
                    }
                }
                Err(e) => visit(line, Err(e.to_string()))?,
            }
        }
        Ok(())
    }

    /// Refuses a header that repeats a column the spec reads, or lacks one it names.
    fn check_header(&self, header: &[String], format: TableFormat) -> Result<()> {
        let line_one = |detail: String| Error::Format {
            path: self.path.clone(),
            detail: format!("line 1 (the header): {detail}"),
        };
        // The columns the spec names (the filter's is checked on its own).
        let named: Vec<&str> = self
            .column_roles()
            .into_iter()
            .filter_map(|(_, _, column)| column)
            .collect();
        // A name given twice is ambiguous only where the command reads it.
        let filter = self.filter.as_ref().map(|(column, _)| column.as_str());
        let mut first_of = std::collections::HashMap::with_capacity(header.len());
        let named_twice = header.iter().enumerate().find_map(|(i, name)| {
            let first = *first_of.entry(name.as_str()).or_insert(i);
            let read = named.contains(&name.as_str()) || filter == Some(name.as_str());
            (first != i && read).then_some((first, i))
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
        let columns =
            || crate::data::brief_list(header.iter().map(|h| format!("`{}`", super::visible(h))));
        if let Some((col, want)) = &self.filter {
            if !header.contains(col) {
                return Err(line_one(format!(
                    "no column `{col}` (columns: {}), which selects the rows to read (those \
                     whose `{col}` is `{want}`)",
                    columns()
                )));
            }
        }
        let Some(col) = named
            .into_iter()
            .find(|col| !header.iter().any(|h| h == col))
        else {
            return Ok(());
        };
        let misread = match header.iter().any(|h| h.contains('\0')) {
            // UTF-16 without its byte-order mark: ASCII letters with a NUL byte beside each.
            true => " (NUL bytes between the letters: the file looks like UTF-16; save it as \
                     UTF-8)"
                .to_string(),
            false => separator_hint(header, format) + &quoted_header_hint(header, col, format),
        };
        // A header misread names no column worth suggesting.
        let likely = match misread.is_empty() {
            true => {
                let columns: Vec<&str> = header.iter().map(String::as_str).collect();
                self.likely_column(col, &columns)
            }
            false => String::new(),
        };
        Err(Error::Format {
            path: self.path.clone(),
            detail: format!(
                "line 1: no column `{col}` (columns: {}){misread}; --text-column, \
                 --text-pair-column and --label-column name the columns{likely}",
                columns(),
            ),
        })
    }
}

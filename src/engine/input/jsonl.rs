//! JSON Lines input: one JSON object per line, its keys the columns.
//!
//! The columns are the union of the keys of every line, in the order they are first seen, so a
//! key that only later lines have is still a column; a line without a key has an empty cell
//! there. Cells are text, as in a CSV: a string as it is; a number or `true`/`false` as its JSON
//! text (`1.50` stays `1.50`); `null` empty; an array or object as its compact JSON text (so a
//! template can still print it, and `{{ tags | fromjson }}`-style parsing is left to the
//! template). Which cells were not strings is remembered, so JSON Lines results can give them
//! back their JSON type. Blank lines are skipped.
//!
//! Like the CSV reader it streams: the file is read a line at a time, once to find the columns
//! (and check every line) and then once per pass, holding one line in memory.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::BufRead;
use std::path::Path;

use csv::StringRecord;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::JsonCells;
use crate::base::error::{Error, Problems};

/// The keys of one line, in order, with their values as written.
struct Object<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Object<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Object<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Object<'a>, M::Error> {
                let mut entries: Vec<(String, &'a RawValue)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format!(
                            "the key {key:?} appears twice in this object"
                        )));
                    }
                    let value: &'a RawValue = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(Object(entries))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A JSON Lines file, read a line at a time.
pub struct Lines {
    reader: super::Source,
    buf: Vec<u8>,
    /// 1-based number of the line in `buf`.
    line: u64,
    /// Byte offset where the line in `buf` starts.
    byte: u64,
    next_byte: u64,
}

impl Lines {
    pub fn open(path: &Path, limits: super::InputLimits) -> Result<Self, Error> {
        let mut reader = super::open_buffered(path, limits)?;
        // A byte-order mark is skipped but still counts for byte offsets.
        let bom = super::skip_bom(&mut reader, path)?;
        Ok(Lines {
            reader,
            buf: Vec::new(),
            line: 0,
            byte: 0,
            next_byte: bom,
        })
    }

    /// The lines from `start` on (a line start recorded by an earlier pass over this file).
    pub fn open_at(
        path: &Path,
        limits: super::InputLimits,
        start: super::Start,
    ) -> Result<Self, Error> {
        let lines_before = start.line.saturating_sub(1);
        Ok(Lines {
            reader: super::open_at(path, limits, start.byte, lines_before)?,
            buf: Vec::new(),
            line: lines_before,
            byte: start.byte,
            next_byte: start.byte,
        })
    }

    /// Reads the next line that is not blank into `buf`; `false` at the end of the file.
    fn advance(&mut self, path: &Path) -> Result<bool, Error> {
        loop {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| super::read_error(path, &e))?;
            if n == 0 {
                return Ok(false);
            }
            self.line += 1;
            self.byte = self.next_byte;
            self.next_byte += n as u64;
            if !self.buf.iter().all(u8::is_ascii_whitespace) {
                return Ok(true);
            }
        }
    }

    fn parse(&self, path: &Path) -> Result<Object<'_>, Error> {
        serde_json::from_slice::<Object>(&self.buf).map_err(|e| {
            // serde_json counts within the line; its line is always 1 here.
            let text = e.to_string();
            let msg = text.split(" at line ").next().unwrap_or(&text);
            let hint = if e.is_data() {
                "; each line must be one JSON object, like {\"id\": 1, \"text\": \"...\"}"
            } else {
                ""
            };
            Error::Input(format!(
                "{}: line {}, column {}: not valid JSON Lines: {msg}{hint}",
                path.display(),
                self.line,
                // A value of the wrong type is reported at column 0: it starts the line.
                e.column().max(1)
            ))
        })
    }
}

/// Reads the whole file once for its columns (the union of the keys in first-seen order) and
/// checks every line; every problem found is reported (the first ten), with line and column.
pub fn columns(path: &Path, limits: super::InputLimits) -> Result<Vec<String>, Error> {
    let mut lines = Lines::open(path, limits)?;
    let mut headers: Vec<String> = Vec::new();
    let mut known: HashMap<String, ()> = HashMap::new();
    let mut problems = Problems::default();
    while lines.advance(path)? {
        match lines.parse(path) {
            Ok(Object(entries)) => {
                for (key, _) in entries {
                    if !known.contains_key(&key) {
                        known.insert(key.clone(), ());
                        headers.push(key);
                    }
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    problems.check()?;
    if lines.line == 0 {
        return Err(Error::Input(format!(
            "{} is empty: it needs one JSON object per line, one line per request",
            path.display()
        )));
    }
    Ok(headers)
}

/// Reads rows of a JSON Lines file into records in the column order of `headers`.
pub struct Reader {
    lines: Lines,
    index: HashMap<String, usize>,
    columns: usize,
}

impl Reader {
    pub fn new(path: &Path, headers: &[String], limits: super::InputLimits) -> Result<Self, Error> {
        Ok(Self::with_lines(Lines::open(path, limits)?, headers))
    }

    /// A reader of `lines` (which may start part-way through the file).
    pub fn with_lines(lines: Lines, headers: &[String]) -> Self {
        Reader {
            lines,
            index: headers
                .iter()
                .enumerate()
                .map(|(i, h)| (h.clone(), i))
                .collect(),
            columns: headers.len(),
        }
    }

    /// Reads the next object into `record` and marks its non-string cells in `cells`. Returns
    /// its line and byte offset, or `None` at the end of the file.
    pub fn read(
        &mut self,
        path: &Path,
        record: &mut StringRecord,
        cells: &mut JsonCells,
    ) -> Option<Result<(u64, u64), Error>> {
        match self.lines.advance(path) {
            Ok(false) => return None,
            Err(e) => return Some(Err(e)),
            Ok(true) => {}
        }
        let at = (self.lines.line, self.lines.byte);
        let Object(entries) = match self.lines.parse(path) {
            Ok(o) => o,
            Err(e) => return Some(Err(e)),
        };
        let mut fields: Vec<Cow<str>> = vec![Cow::Borrowed(""); self.columns];
        *cells = JsonCells::default();
        for (key, value) in entries {
            let Some(&i) = self.index.get(&key) else {
                return Some(Err(Error::Input(format!(
                    "{}: line {}: the key {key:?} was not in the file when its columns were read \
                     (did the file change during the run?)",
                    path.display(),
                    at.0
                ))));
            };
            let (text, json) = cell(value);
            if json {
                cells.insert(i);
            }
            fields[i] = text;
        }
        record.clear();
        for f in &fields {
            record.push_field(f);
        }
        Some(Ok(at))
    }
}

/// A value as cell text, and whether it was something other than a string or null.
fn cell(value: &RawValue) -> (Cow<'_, str>, bool) {
    let raw = value.get();
    match raw.as_bytes().first() {
        // Valid JSON by now, so the string parses.
        Some(b'"') => match serde_json::from_str::<Cow<str>>(raw) {
            Ok(s) => (s, false),
            Err(_) => (Cow::Borrowed(raw), false),
        },
        Some(b'n') => (Cow::Borrowed(""), false),
        Some(b'{' | b'[') => (compact(raw), true),
        _ => (Cow::Borrowed(raw), true),
    }
}

/// JSON text without the whitespace between tokens, keys kept in their order.
fn compact(raw: &str) -> Cow<'_, str> {
    let (mut in_string, mut escaped) = (false, false);
    let needs = raw.bytes().any(|b| b.is_ascii_whitespace());
    if !needs {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_cells_and_remember_their_kind() {
        let raw = |s: &str| serde_json::from_str::<Box<RawValue>>(s).unwrap();
        let cases: [(&str, &str, bool); 7] = [
            (r#""a \"q\"""#, "a \"q\"", false),
            ("1.50", "1.50", true),
            ("-3e5", "-3e5", true),
            ("true", "true", true),
            ("null", "", false),
            (
                r#"{ "b": [1, 2], "a": "x y" }"#,
                r#"{"b":[1,2],"a":"x y"}"#,
                true,
            ),
            ("[ ]", "[]", true),
        ];
        for (json, text, is_json) in cases {
            let v = raw(json);
            assert_eq!(cell(&v), (Cow::Borrowed(text), is_json), "{json}");
        }
    }
}

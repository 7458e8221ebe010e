//! JSON Lines results: one object per row, in input order, with the same fields as the results
//! CSV's columns (the input's first, then the result's).
//!
//! Types: a cell that came from a JSON Lines input as a number, boolean, array or object is
//! written back as that JSON; other input cells are strings. Result fields that are always text
//! (`output`, `error`, `status`, `model`, `finish_reason`) are strings; the others are numbers or
//! booleans when their text is a JSON number or `true`/`false` (`attempts`, `latency_ms`, tokens,
//! `cost_usd`, `cached`, and any column added later). An empty cell is `null`.

use std::io::Write;

use csv::StringRecord;

use crate::engine::input::JsonCells;

/// Result columns that hold free text, whatever it looks like (an answer can be `42`).
const TEXT_COLUMNS: [&str; 5] = ["output", "error", "status", "model", "finish_reason"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An input cell: its JSON type is known from the input.
    Input,
    Text,
    /// Number or boolean if it reads as one.
    Typed,
}

/// Encodes rows as JSON objects, one a line.
pub struct Encoder {
    /// `"name":` for each column, escaped once.
    keys: Vec<String>,
    kinds: Vec<Kind>,
}

impl Encoder {
    /// `header` is the results header; its first `inputs` columns are the input's.
    pub fn new(header: &[String], inputs: usize) -> Self {
        let keys = header
            .iter()
            .map(|h| format!("{}:", serde_json::Value::from(h.as_str())))
            .collect();
        let kinds = header
            .iter()
            .enumerate()
            .map(|(i, h)| {
                if i < inputs {
                    Kind::Input
                } else if TEXT_COLUMNS.contains(&base_name(h)) {
                    Kind::Text
                } else {
                    Kind::Typed
                }
            })
            .collect();
        Encoder { keys, kinds }
    }

    /// Writes one row: `record` holds every column's text, `json_cells` marks the input cells
    /// that were JSON values other than strings.
    pub fn write(
        &self,
        w: &mut impl Write,
        record: &StringRecord,
        json_cells: &JsonCells,
    ) -> std::io::Result<()> {
        w.write_all(b"{")?;
        for (i, (field, key)) in record.iter().zip(&self.keys).enumerate() {
            if i > 0 {
                w.write_all(b",")?;
            }
            w.write_all(key.as_bytes())?;
            let raw = match self.kinds[i] {
                _ if field.is_empty() => Some("null"),
                Kind::Input => json_cells.contains(i).then_some(field),
                Kind::Text => None,
                Kind::Typed => {
                    (is_json_number(field) || field == "true" || field == "false").then_some(field)
                }
            };
            match raw {
                Some(raw) => w.write_all(raw.as_bytes())?,
                None => serde_json::to_writer(&mut *w, field)?,
            }
        }
        w.write_all(b"}\n")
    }
}

/// A result column's name without the `result_` prefixes that keep it from shadowing an input
/// column of the same name.
fn base_name(name: &str) -> &str {
    let mut n = name;
    while let Some(rest) = n.strip_prefix("result_") {
        n = rest;
    }
    n
}

/// Whether `s` is a number in JSON's grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
/// `007` and `1.` are not, so they stay strings.
pub fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if b.first() == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_are_recognised_by_the_grammar() {
        for n in ["0", "-1", "12", "0.5", "1e9", "-2.5E-3", "0.0000001"] {
            assert!(is_json_number(n), "{n}");
        }
        for s in [
            "", "-", "007", "1.", ".5", "1e", "+1", "NaN", "inf", "1 ", "0x1", "1,5",
        ] {
            assert!(!is_json_number(s), "{s}");
        }
    }

    #[test]
    fn fields_get_their_json_types() {
        let header: Vec<String> = [
            "id",
            "n",
            "tags",
            "output",
            "attempts",
            "cost_usd",
            "cached",
            "result_model",
            "error",
        ]
        .map(String::from)
        .to_vec();
        let enc = Encoder::new(&header, 3);
        let mut cells = JsonCells::default();
        cells.insert(1);
        cells.insert(2);
        let record = StringRecord::from(vec![
            "007",
            "1.50",
            "[1,\"a\"]",
            "42",
            "2",
            "0.00001",
            "false",
            "gpt",
            "",
        ]);
        let mut out = Vec::new();
        enc.write(&mut out, &record, &cells).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "007", "n": 1.50, "tags": [1, "a"], "output": "42",
                "attempts": 2, "cost_usd": 0.00001, "cached": false, "result_model": "gpt",
                "error": null})
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("{\"id\":\"007\",\"n\":1.50,") && text.ends_with("}\n"),
            "{text}"
        );
        // Keys keep the header's order.
        let order: Vec<usize> = header
            .iter()
            .map(|h| text.find(&format!("\"{h}\":")).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    }
}

//! Which character separates a CSV's fields: `,` `;` tab or `|`. A spreadsheet in a locale
//! with decimal commas saves `;`, databases export tab or `|`, so the first lines are sniffed (as
//! xsv and qsv do): the candidate that appears in the header and the same number of times in
//! every record of the sample wins. `.tsv` means tab, and `--delimiter` forces one.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

/// The candidates, in the order ties are broken.
const CANDIDATES: [u8; 4] = [b',', b'\t', b';', b'|'];
/// How much of the file is sniffed.
const SAMPLE_BYTES: usize = 64 * 1024;
/// How many records of the sample are compared.
const SAMPLE_RECORDS: usize = 20;

/// A field separator given with `--delimiter`: one ASCII character, or `\t` / `tab`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiter(pub u8);

impl std::str::FromStr for Delimiter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "\\t" | "tab" | "TAB" | "\t" => Ok(Delimiter(b'\t')),
            _ if s.len() == 1 && s.is_ascii() && !matches!(s, "\"" | "\n" | "\r") => {
                Ok(Delimiter(s.as_bytes()[0]))
            }
            _ => Err(format!(
                "{s:?} is not a delimiter; give one character such as , ; | or \\t (tab)"
            )),
        }
    }
}

impl fmt::Display for Delimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            b'\t' => f.write_str("tab"),
            c => write!(f, "{}", c as char),
        }
    }
}

impl<'de> Deserialize<'de> for Delimiter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The delimiter of a CSV at `path` whose first bytes are `head`: tab for `.tsv`, else the
/// sniffed one (`,` when nothing else fits).
pub fn detect(path: &Path, head: &[u8]) -> u8 {
    let tsv = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("tsv") || e.eq_ignore_ascii_case("tab"));
    if tsv {
        return b'\t';
    }
    sniff(&head[..head.len().min(SAMPLE_BYTES)])
}

/// The candidate found in the header the same number of times in every sampled record; the
/// most frequent such one, ties in [`CANDIDATES`] order.
fn sniff(sample: &[u8]) -> u8 {
    let counts = record_counts(sample);
    let Some(header) = counts.first() else {
        return b',';
    };
    let mut best: Option<(usize, u8)> = None;
    for (k, &c) in CANDIDATES.iter().enumerate() {
        let n = header[k];
        let consistent = counts.iter().all(|r| r[k] == n);
        if n > 0 && consistent && best.is_none_or(|(m, _)| n > m) {
            best = Some((n, c));
        }
    }
    best.map_or(b',', |(_, c)| c)
}

/// For each whole record of the sample (quoted line breaks stay inside a record), how many of
/// each candidate it holds outside quotes.
fn record_counts(sample: &[u8]) -> Vec<[usize; 4]> {
    let mut records = Vec::new();
    let (mut current, mut quoted, mut empty) = ([0usize; 4], false, true);
    for &b in sample {
        match b {
            b'"' => quoted = !quoted,
            b'\n' | b'\r' if !quoted => {
                if !empty {
                    records.push(current);
                }
                if records.len() == SAMPLE_RECORDS {
                    return records;
                }
                (current, empty) = ([0; 4], true);
                continue;
            }
            _ if !quoted => {
                if let Some(k) = CANDIDATES.iter().position(|&c| c == b) {
                    current[k] += 1;
                }
            }
            _ => {}
        }
        empty = false;
    }
    // The last record counts only when the sample holds the whole file (it may be cut off).
    if !empty && sample.len() < SAMPLE_BYTES {
        records.push(current);
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sniffed(text: &str) -> char {
        detect(Path::new("in.csv"), text.as_bytes()) as char
    }

    #[test]
    fn the_consistent_separator_of_the_header_wins() {
        assert_eq!(sniffed("id,text\n1,hello\n2,world\n"), ',');
        assert_eq!(sniffed("id;price\n1;1,5\n2;2,25\n"), ';');
        assert_eq!(sniffed("id\ttext\n1\ta, b; c\n"), '\t');
        assert_eq!(sniffed("id|text\n1|x\n2|y\n"), '|');
        assert_eq!(sniffed("text\nhello\nworld\n"), ',');
        assert_eq!(sniffed(""), ',');
        // A quoted cell with other separators and a line break does not count.
        assert_eq!(sniffed("id;text\n1;\"a,b\nc,d\"\n2;\"e,f\"\n"), ';');
        // Commas in the text of a semicolon file vary from row to row.
        assert_eq!(sniffed("id;text\n1;a, b\n2;c\n3;d, e, f\n"), ';');
    }

    #[test]
    fn tsv_by_extension_and_flag_spellings() {
        assert_eq!(detect(Path::new("data.TSV"), b"a,b\n1,2\n"), b'\t');
        for s in ["\\t", "tab", "\t"] {
            assert_eq!(s.parse::<Delimiter>(), Ok(Delimiter(b'\t')), "{s}");
        }
        assert_eq!(";".parse::<Delimiter>(), Ok(Delimiter(b';')));
        for bad in ["", ";;", "\"", "é"] {
            assert!(bad.parse::<Delimiter>().is_err(), "{bad:?}");
        }
    }
}

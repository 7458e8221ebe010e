//! The file formats `batch` reads and writes: CSV, JSON Lines and Parquet.
//!
//! A file's format comes from `--input-format` / `--output-format` when given, else from its
//! extension (`.jsonl` and `.ndjson` are JSON Lines, `.parquet` and `.pq` are Parquet, anything
//! else is CSV). Standard input and
//! output (`-`) have no extension, so they are CSV unless a flag says otherwise (and results on
//! stdout follow the input's format).

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Csv,
    /// JSON Lines: one JSON object per line.
    Jsonl,
    /// Apache Parquet: typed columns, read and written a row group at a time.
    Parquet,
}

impl Format {
    /// The format a path's extension names, if it names one.
    pub fn from_extension(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            "parquet" | "pq" => Some(Format::Parquet),
            _ => None,
        }
    }

    /// The file extension written for this format.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
            Format::Parquet => "parquet",
        }
    }
}

/// Whether `path` stands for standard input or output.
pub fn is_std(path: &Path) -> bool {
    path.as_os_str() == "-"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_name_formats_case_insensitively() {
        assert_eq!(
            Format::from_extension(Path::new("a.jsonl")),
            Some(Format::Jsonl)
        );
        assert_eq!(
            Format::from_extension(Path::new("a.NDJSON")),
            Some(Format::Jsonl)
        );
        assert_eq!(
            Format::from_extension(Path::new("a.csv")),
            Some(Format::Csv)
        );
        assert_eq!(
            Format::from_extension(Path::new("a.Parquet")),
            Some(Format::Parquet)
        );
        assert_eq!(Format::Parquet.extension(), "parquet");
        assert_eq!(Format::from_extension(Path::new("a.txt")), None);
        assert_eq!(Format::from_extension(Path::new("-")), None);
        assert!(is_std(Path::new("-")) && !is_std(Path::new("./-")));
    }
}

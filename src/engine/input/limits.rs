//! Limits on what an input may hold, so an input that never ends (`/dev/zero`, `yes |`), or a
//! file that is not what it claims, fails in a second with a clear error instead of filling
//! memory or the disk.
//!
//! - A field (cell): 10 MB by default (`--max-field-size`). The largest context windows hold
//!   about 2M tokens, roughly 8 MB of text, so a longer cell cannot be sent whole to any model.
//! - A row: 32 MB (`--max-row-size`), Anthropic's limit on a whole request body; no API accepts
//!   more. Enforced as the bytes are read, on each physical line, so a file without line breaks
//!   stops at the limit instead of being read into memory.
//! - The input: 4 GB (`--max-input-size`). A run reads its input in passes and stdin (or a pipe)
//!   is copied to disk first; 4 GB is millions of rows, days of requests at any rate limit.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use crate::base::error::Error;

const MB: u64 = 1024 * 1024;

/// The limits a run reads its input under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    pub field: ByteSize,
    pub row: ByteSize,
    pub file: ByteSize,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits {
            field: ByteSize(10 * MB),
            row: ByteSize(32 * MB),
            file: ByteSize(4 * 1024 * MB),
        }
    }
}

/// A number of bytes, written `10M`, `10MB`, `512K`, `4G` (binary units) or a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let scale = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KB" | "KIB" => 1024,
            "M" | "MB" | "MIB" => MB,
            "G" | "GB" | "GIB" => 1024 * MB,
            _ => 0,
        };
        match digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(scale))
        {
            Some(n) if n > 0 => Ok(ByteSize(n)),
            _ => Err(format!(
                "{s:?} is not a size; give bytes, or a number with K, M or G, such as 10M"
            )),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        match n {
            _ if n >= 1024 * MB && n.is_multiple_of(1024 * MB) => {
                write!(f, "{} GB", n / (1024 * MB))
            }
            _ if n >= MB && n.is_multiple_of(MB) => write!(f, "{} MB", n / MB),
            _ if n >= 1024 && n.is_multiple_of(1024) => write!(f, "{} KB", n / 1024),
            _ => write!(f, "{n} bytes"),
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) if n > 0 => Ok(ByteSize(n)),
            Raw::Bytes(_) => Err(serde::de::Error::custom("a size must be at least 1 byte")),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// What was over a limit, carried inside an `io::Error` out of the readers that wrap a
/// [`Limited`] (csv, a line reader) and turned into a message by [`limit_error`].
#[derive(Debug, thiserror::Error)]
pub enum LimitExceeded {
    #[error(
        "line {line} is longer than {limit} (--max-row-size), so it is not a row that can be \
         sent (is this a CSV or JSON Lines file?); raise --max-row-size if it is meant"
    )]
    Row { line: u64, limit: ByteSize },
    #[error("is larger than {limit} (--max-input-size); raise --max-input-size if it is meant")]
    File { limit: ByteSize },
}

/// The input error for an `io::Error` that is a [`LimitExceeded`], naming `name` (the file, or
/// stdin).
pub fn limit_error(name: &str, e: &std::io::Error) -> Option<Error> {
    let over = e.get_ref()?.downcast_ref::<LimitExceeded>()?;
    Some(Error::Input(match over {
        LimitExceeded::Row { .. } => format!("{name}: {over}"),
        LimitExceeded::File { .. } => format!("{name} {over}"),
    }))
}

/// The input error for a cell over the field limit.
pub fn field_error(path: &Path, line: u64, column: String, len: usize, limit: ByteSize) -> Error {
    Error::Input(format!(
        "{}: line {line}, {column}: the cell is {len} bytes, over the {limit} limit \
         (--max-field-size); no model takes a prompt this long; shorten it, or raise \
         --max-field-size if it is meant",
        path.display()
    ))
}

/// A reader that fails once a physical line (ended by `\n` or `\r`) grows past the row limit,
/// or the whole past the file limit. Lines are a lower bound on rows (a row holds whole
/// lines), so no row under the limit is refused.
pub struct Limited<R> {
    inner: R,
    limits: InputLimits,
    total: u64,
    /// Bytes of the current line read so far.
    line_len: u64,
    /// `\n`s before the current line.
    newlines: u64,
}

impl<R: Read> Limited<R> {
    pub fn new(inner: R, limits: InputLimits) -> Self {
        Limited {
            inner,
            limits,
            total: 0,
            line_len: 0,
            newlines: 0,
        }
    }

    /// A reader of the rest of a file from a point `total` bytes in, after `newlines` line
    /// breaks (a resumed pass that starts at a row, see [`super::Start`]): the file limit
    /// still counts the whole file, and a line over the row limit is named by its line.
    pub fn at(inner: R, limits: InputLimits, total: u64, newlines: u64) -> Self {
        Limited {
            inner,
            limits,
            total,
            line_len: 0,
            newlines,
        }
    }

    fn over_row(&self) -> std::io::Error {
        std::io::Error::other(LimitExceeded::Row {
            line: self.newlines + 1,
            limit: self.limits.row,
        })
    }

    /// Counts `chunk` into the current line, byte by byte: only needed when the line could
    /// pass the limit within it.
    fn count_slowly(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        for &b in chunk {
            if b == b'\n' || b == b'\r' {
                self.newlines += u64::from(b == b'\n');
                self.line_len = 0;
            } else {
                self.line_len += 1;
                if self.line_len > self.limits.row.0 {
                    return Err(self.over_row());
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let chunk = &buf[..n];
        self.total += n as u64;
        if self.total > self.limits.file.0 {
            return Err(std::io::Error::other(LimitExceeded::File {
                limit: self.limits.file,
            }));
        }
        if self.line_len + n as u64 > self.limits.row.0 {
            self.count_slowly(chunk)?;
            return Ok(n);
        }
        // Fast path: the line cannot pass the limit within this chunk.
        match chunk.iter().rposition(|&b| b == b'\n' || b == b'\r') {
            Some(end) => {
                self.newlines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
                self.line_len = (n - end - 1) as u64;
            }
            None => self.line_len += n as u64,
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(row: u64, file: u64) -> InputLimits {
        InputLimits {
            row: ByteSize(row),
            file: ByteSize(file),
            ..Default::default()
        }
    }

    fn read_all(data: &[u8], l: InputLimits) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        // Small reads, so lines cross chunk boundaries.
        let mut r = std::io::BufReader::with_capacity(7, Limited::new(data, l));
        r.read_to_end(&mut out)
            .map(|_| out)
            .map_err(|e| limit_error("in.csv", &e).unwrap().to_string())
    }

    #[test]
    fn sizes_parse_with_binary_units_and_print_back() {
        for (text, bytes) in [
            ("123", 123),
            ("10M", 10 * MB),
            ("10 mb", 10 * MB),
            ("4G", 4096 * MB),
        ] {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
        for bad in ["", "0", "ten", "5 TB", "-1"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
        assert_eq!(ByteSize(10 * MB).to_string(), "10 MB");
        assert_eq!(ByteSize(1500).to_string(), "1500 bytes");
    }

    #[test]
    fn a_line_over_the_row_limit_is_refused_with_its_number() {
        assert_eq!(
            read_all(b"ab\ncd\r\nef\n", limits(2, 100)).unwrap().len(),
            10
        );
        let msg = read_all(b"ab\ncd\nefg\nh\n", limits(2, 100)).unwrap_err();
        assert!(
            msg.contains("in.csv: line 3 is longer than 2 bytes"),
            "{msg}"
        );
        assert!(msg.contains("--max-row-size"), "{msg}");
        let endless = vec![0u8; 1000];
        let msg = read_all(&endless, limits(100, 10_000)).unwrap_err();
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn an_input_over_the_file_limit_is_refused() {
        let msg = read_all(b"a\nb\nc\nd\n", limits(10, 5)).unwrap_err();
        assert!(
            msg.contains("in.csv is larger than 5 bytes (--max-input-size)"),
            "{msg}"
        );
    }
}

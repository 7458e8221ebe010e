//! Streaming input: a CSV with a header row, JSON Lines ([`jsonl`]) or Parquet ([`parquet`]), one
//! request per row, each with a stable row id. Every format gives the same [`Row`]: text cells in
//! column order.
//!
//! A run reads the file in passes, none of which holds it in memory (a million-row input costs
//! the same as a small one): the pre-flight checks every row and renders every prompt before a
//! single request is sent, so a bad line 90,000 fails the run in a second instead of after an
//! hour of spending; the reader streams rows to the scheduler; the final merge writes each row
//! beside its outcome from the journal.

use std::collections::HashSet;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use csv::StringRecord;

use crate::base::error::{Error, describe_io};
use crate::base::format::Format;
use crate::base::human;

pub mod delimiter;
pub mod jsonl;
pub mod limits;
pub mod parquet;

pub use limits::{ByteSize, InputLimits};
use limits::{Limited, limit_error};

/// How an input is read: its limits, and the CSV delimiter when `--delimiter` forces one
/// (else it is detected, see [`delimiter`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    pub limits: InputLimits,
    pub delimiter: Option<u8>,
}

/// An input file read through its limits.
type Source = BufReader<Limited<File>>;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// One input row.
#[derive(Debug, Clone)]
pub struct Row {
    /// 0-based position among data rows; results are written in this order.
    pub seq: u64,
    /// 1-based line of the file where the row starts (for messages); for Parquet, which has no
    /// lines, the 1-based row number (row index + 1).
    pub line: u64,
    /// Byte offset in the file where the row starts (for Parquet, the row index).
    pub byte: u64,
    /// The value of the id column, or the 1-based row number when there is none.
    pub id: String,
    pub record: StringRecord,
    /// Cells that were JSON numbers, booleans, arrays or objects (JSON Lines input only), so
    /// JSON results can give them back their type. Empty for a CSV.
    pub json_cells: JsonCells,
}

/// Where a pass over the input can start instead of at its first row: a row's position, the
/// line it starts on and the byte where it starts (for Parquet, its row index). The pre-flight
/// records one every [`Start::EVERY`] rows in the state file, and a resume whose input is
/// unchanged reads from the last one before its first unfinished row (see
/// [`InputFile::rows_from`]) instead of reading millions of finished rows again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub seq: u64,
    pub line: u64,
    pub byte: u64,
}

impl Start {
    /// Rows between two recorded starts: ten million rows record 153, and a resume reads at
    /// most this many finished rows before its first unfinished one.
    pub const EVERY: u64 = 65_536;

    /// Rows between two recorded starts: [`Start::EVERY`], or `BATCH_CHECKPOINT_ROWS` from
    /// the environment (tests set it, so that a resume from a checkpoint needs a few dozen
    /// rows, not 65,536; nothing else should).
    pub fn every() -> u64 {
        static EVERY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        *EVERY.get_or_init(|| {
            std::env::var(CHECKPOINT_ROWS_VAR)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or(Self::EVERY)
        })
    }

    /// Where `row` starts.
    pub fn of(row: &Row) -> Self {
        Start {
            seq: row.seq,
            line: row.line,
            byte: row.byte,
        }
    }
}

/// The environment variable that sets [`Start::every`].
pub const CHECKPOINT_ROWS_VAR: &str = "BATCH_CHECKPOINT_ROWS";

/// A set of cell positions; allocates nothing while empty (every CSV row).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonCells(Vec<u64>);

impl JsonCells {
    pub fn insert(&mut self, i: usize) {
        let (word, bit) = (i / 64, i % 64);
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << bit;
    }

    pub fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// An input file whose header has been read and checked.
#[derive(Debug, Clone)]
pub struct InputFile {
    pub path: PathBuf,
    pub headers: Vec<String>,
    /// Index of the id column, if any.
    pub id_index: Option<usize>,
    pub format: Format,
    /// The CSV field separator (unused for JSON Lines and Parquet).
    pub delimiter: u8,
    pub limits: InputLimits,
}

impl InputFile {
    /// Opens `path`, reads and checks the header, and finds the id column: `id_column` when
    /// given (it must exist), else a column named `id`, else none (row numbers are the ids).
    pub fn open(path: &Path, id_column: Option<&str>) -> Result<Self, Error> {
        Self::open_as(path, Format::Csv, id_column)
    }

    /// [`InputFile::open`] for a file in `format`. A JSON Lines file is read through once here
    /// to find its columns, and every line is checked on the way.
    pub fn open_as(path: &Path, format: Format, id_column: Option<&str>) -> Result<Self, Error> {
        Self::open_with(path, format, id_column, ReadOptions::default())
    }

    /// [`InputFile::open_as`] under `options` (limits, a forced delimiter).
    pub fn open_with(
        path: &Path,
        format: Format,
        id_column: Option<&str>,
        options: ReadOptions,
    ) -> Result<Self, Error> {
        let limits = options.limits;
        let delimiter = match (format, options.delimiter) {
            (Format::Jsonl | Format::Parquet, _) => b',',
            (Format::Csv, Some(d)) => d,
            (Format::Csv, None) => detect_delimiter(path, limits)?,
        };
        let headers: Vec<String> = match format {
            Format::Jsonl => jsonl::columns(path, limits)?,
            Format::Parquet => parquet::columns(path, limits)?,
            Format::Csv => csv_reader(path, delimiter, limits)?
                .0
                .headers()
                .map_err(|e| csv_error(path, &e, &[]))?
                .iter()
                .map(str::to_string)
                .collect(),
        };
        Self::with_headers(path, format, id_column, delimiter, limits, headers)
    }

    /// [`InputFile::open_with`] of a JSON Lines file whose columns an earlier pass over this
    /// same file found (a resume of an unchanged input): the file is not read through again.
    pub fn open_jsonl_with_columns(
        path: &Path,
        id_column: Option<&str>,
        options: ReadOptions,
        columns: Vec<String>,
    ) -> Result<Self, Error> {
        Self::with_headers(
            path,
            Format::Jsonl,
            id_column,
            b',',
            options.limits,
            columns,
        )
    }

    /// Checks the columns read from the file's header (or its lines) and finds the id column.
    fn with_headers(
        path: &Path,
        format: Format,
        id_column: Option<&str>,
        delimiter: u8,
        limits: InputLimits,
        headers: Vec<String>,
    ) -> Result<Self, Error> {
        if format == Format::Jsonl && headers.is_empty() {
            return Err(Error::Input(format!(
                "{}: every line is an empty object {{}}; give each line the keys the prompt uses",
                path.display()
            )));
        }
        if format == Format::Parquet && headers.is_empty() {
            return Err(Error::Input(format!(
                "{}: the Parquet file has no columns; it needs the columns the prompt uses",
                path.display()
            )));
        }
        if headers.is_empty() || headers.iter().all(|h| h.is_empty()) {
            return Err(Error::Input(format!(
                "{} is empty: it needs a header row naming the columns, then one row per request",
                path.display()
            )));
        }
        let mut seen = HashSet::new();
        for (i, h) in headers.iter().enumerate() {
            if !seen.insert(h.as_str()) {
                return Err(Error::Input(format!(
                    "{}: line 1, column {}: the column name {h:?} appears twice in the header; \
                     rename one so prompts can refer to each",
                    path.display(),
                    i + 1
                )));
            }
        }
        let id_index = match id_column {
            Some(name) => Some(headers.iter().position(|h| h == name).ok_or_else(|| {
                Error::Input(format!(
                    "--id-column {name:?} is not a column of {}; its columns are: {}",
                    path.display(),
                    list_columns(&headers)
                ))
            })?),
            None => headers.iter().position(|h| h == "id"),
        };
        Ok(InputFile {
            path: path.to_path_buf(),
            headers,
            id_index,
            format,
            delimiter,
            limits,
        })
    }

    /// Streams the data rows, in order.
    pub fn rows(&self) -> Result<Rows, Error> {
        let (rows_source, byte_base) = match self.format {
            Format::Csv => {
                let (mut reader, bom) = csv_reader(&self.path, self.delimiter, self.limits)?;
                // Skip the header; it was checked in `open`.
                reader
                    .headers()
                    .map_err(|e| csv_error(&self.path, &e, &[]))?;
                // The reader counts bytes after the byte-order mark; a row's byte is in the file.
                (RowSource::Csv(reader), bom)
            }
            Format::Jsonl => (
                RowSource::Jsonl(jsonl::Reader::new(&self.path, &self.headers, self.limits)?),
                0,
            ),
            Format::Parquet => (
                RowSource::Parquet(parquet::Reader::new(&self.path, self.limits)?),
                0,
            ),
        };
        Ok(Rows {
            input: self.clone(),
            source: rows_source,
            record: StringRecord::new(),
            seq: 0,
            lines_before: 0,
            byte_base,
        })
    }

    /// Streams the data rows from `start` on (a row start recorded by an earlier pass over this
    /// same file), numbered, lined and placed as [`InputFile::rows`] would have them: a CSV or
    /// JSON Lines file is read from `start`'s byte, a Parquet file from its row group.
    pub fn rows_from(&self, start: Start) -> Result<Rows, Error> {
        if start.seq == 0 {
            return self.rows();
        }
        let lines_before = start.line.saturating_sub(1);
        let (source, lines_before, byte_base) = match self.format {
            Format::Csv => {
                let buf = open_at(&self.path, self.limits, start.byte, lines_before)?;
                let reader = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .flexible(false)
                    .delimiter(self.delimiter)
                    .from_reader(buf);
                (RowSource::Csv(reader), lines_before, start.byte)
            }
            Format::Jsonl => {
                let lines = jsonl::Lines::open_at(&self.path, self.limits, start)?;
                let reader = jsonl::Reader::with_lines(lines, &self.headers);
                (RowSource::Jsonl(reader), 0, 0)
            }
            Format::Parquet => {
                let reader = parquet::Reader::new_at(&self.path, self.limits, start.byte)?;
                (RowSource::Parquet(reader), 0, 0)
            }
        };
        Ok(Rows {
            input: self.clone(),
            source,
            record: StringRecord::new(),
            seq: start.seq,
            lines_before,
            byte_base,
        })
    }

    /// An unterminated quoted field runs to the end of the file, swallowing every row after it
    /// into one field, and CSV readers accept that without complaint. Only the last record can be
    /// affected, and in a well-formed record quotes come in pairs (`""` inside a field), so an odd
    /// number of them in the last record's bytes proves the quote was never closed.
    /// `last` is the file's last row, as the caller's pass over the rows saw it.
    pub fn unterminated_quote(&self, last: &Row) -> Result<Option<String>, Error> {
        use std::io::{Read, Seek, SeekFrom};
        if self.format != Format::Csv {
            return Ok(None);
        }
        let mut file = File::open(&self.path).map_err(|e| Error::read(&self.path, &e))?;
        file.seek(SeekFrom::Start(last.byte))
            .map_err(|e| Error::read(&self.path, &e))?;
        let (mut quotes, mut buf) = (0u64, [0u8; 64 * 1024]);
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| Error::read(&self.path, &e))?;
            if n == 0 {
                break;
            }
            quotes += buf[..n].iter().filter(|b| **b == b'"').count() as u64;
        }
        Ok((quotes % 2 == 1).then(|| {
            format!(
                "{}: line {}: a quoted field is never closed, so everything after it was read as \
                 one field; add the missing closing \"",
                self.path.display(),
                last.line
            )
        }))
    }

    pub fn column_name(&self, index: usize) -> &str {
        self.headers.get(index).map(String::as_str).unwrap_or("?")
    }
}

/// Iterator over the rows of an [`InputFile`].
pub struct Rows {
    input: InputFile,
    source: RowSource,
    record: StringRecord,
    seq: u64,
    /// Lines of the file before where the CSV reader started (it counts from 1 where it
    /// starts), and the byte where it started: what makes its positions the file's.
    lines_before: u64,
    byte_base: u64,
}

enum RowSource {
    Csv(csv::Reader<Source>),
    Jsonl(jsonl::Reader),
    Parquet(parquet::Reader),
}

impl Iterator for Rows {
    type Item = Result<Row, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let path = &self.input.path;
        let mut json_cells = JsonCells::default();
        let read = match &mut self.source {
            RowSource::Csv(reader) => match reader.read_record(&mut self.record) {
                Ok(false) => None,
                Err(e) => Some(Err(csv_error_at(
                    path,
                    &e,
                    &self.input.headers,
                    self.lines_before,
                ))),
                Ok(true)
                    if self.lines_before > 0 && self.record.len() != self.input.headers.len() =>
                {
                    // Read from a recorded start, the reader has no header to compare with.
                    let line = self.lines_before + self.record.position().map_or(0, |p| p.line());
                    Some(Err(unequal_lengths(
                        path,
                        line,
                        self.record.len() as u64,
                        self.input.headers.len() as u64,
                    )))
                }
                Ok(true) => Some(Ok(self.record.position().map_or((0, 0), |p| {
                    (self.lines_before + p.line(), self.byte_base + p.byte())
                }))),
            },
            RowSource::Jsonl(reader) => reader.read(path, &mut self.record, &mut json_cells),
            RowSource::Parquet(reader) => reader.read(path, &mut self.record, &mut json_cells),
        };
        match read {
            None => None,
            Some(Err(e)) => Some(Err(e)),
            Some(Ok((line, byte))) => {
                if let Err(e) = self.check_size(line) {
                    return Some(Err(e));
                }
                let seq = self.seq;
                self.seq += 1;
                let id = match self.input.id_index {
                    Some(i) => {
                        let id = self.record.get(i).unwrap_or("").to_string();
                        if id.trim().is_empty() {
                            return Some(Err(Error::Input(format!(
                                "{}: line {line}, column {:?}: the row id is empty; every row \
                                 needs a unique id (or choose another --id-column)",
                                path.display(),
                                self.input.column_name(i)
                            ))));
                        }
                        id
                    }
                    None => (seq + 1).to_string(),
                };
                Some(Ok(Row {
                    seq,
                    line,
                    byte,
                    id,
                    record: std::mem::take(&mut self.record),
                    json_cells,
                }))
            }
        }
    }
}

impl Rows {
    /// The record just read is within the field and row limits (a row over the row limit
    /// that spans several lines gets here; one long line was stopped while reading).
    fn check_size(&self, line: u64) -> Result<(), Error> {
        let limits = self.input.limits;
        for (i, cell) in self.record.iter().enumerate() {
            if cell.len() as u64 > limits.field.0 {
                let column = format!("column {} ({:?})", i + 1, self.input.column_name(i));
                let path = &self.input.path;
                return Err(limits::field_error(
                    path,
                    line,
                    column,
                    cell.len(),
                    limits.field,
                ));
            }
        }
        if self.record.as_slice().len() as u64 > limits.row.0 {
            return Err(Error::Input(format!(
                "{}: the row on line {line} is longer than {} (--max-row-size); raise \
                 --max-row-size if it is meant",
                self.input.path.display(),
                limits.row
            )));
        }
        Ok(())
    }
}

/// Finds duplicate row ids in about 1.3 bytes per row however long the ids are, so checking a
/// ten-million-row file stays small. Each id's 128-bit fingerprint goes into a Bloom filter
/// sized from the file (its length over the first rows' average); an id the filter may have seen
/// makes its fingerprint a candidate. Candidates are few (true duplicates, and about 1% of rows
/// when the filter errs), so one more pass over the file collects their lines, and only then are
/// the ids themselves compared. Ids made from the row number (no id column) are unique as they
/// are, and not checked at all.
#[derive(Default)]
pub struct IdSet {
    /// The input's length in bytes; `None` when its ids need no check.
    file_len: Option<u64>,
    /// The first rows' fingerprints and where they end, until the filter is sized.
    first: Vec<[u64; 2]>,
    filter: Option<Bloom>,
    candidates: HashSet<[u64; 2]>,
    /// Rows whose fingerprint is a candidate, and their lines: filled by the second pass.
    seen: Vec<([u64; 2], u64)>,
}

/// Rows read before the filter is sized from their average length.
const FIRST_ROWS: usize = 4096;

impl IdSet {
    /// A checker for `input`'s ids. The filter is sized from the file's length over the first
    /// rows' average (a Parquet row's "byte" is its index, so there the length is in rows).
    pub fn new(input: &InputFile) -> Self {
        let file_len = input.id_index.map(|_| match input.format {
            Format::Parquet => parquet::row_count(&input.path).unwrap_or(0),
            _ => std::fs::metadata(&input.path).map_or(0, |m| m.len()),
        });
        IdSet {
            file_len,
            ..Default::default()
        }
    }

    pub fn insert(&mut self, row: &Row) {
        if self.file_len.is_none() {
            return;
        }
        let fp = id_fingerprint(&row.id);
        match &mut self.filter {
            Some(filter) => {
                if filter.insert(fp) {
                    self.candidates.insert(fp);
                }
            }
            None => {
                self.first.push(fp);
                if self.first.len() >= FIRST_ROWS {
                    self.size_filter(row.byte);
                }
            }
        }
    }

    /// Sizes the filter for the whole file from the rows read so far (which end near `byte`),
    /// and puts them in it.
    fn size_filter(&mut self, byte: u64) {
        let per_row = (byte / self.first.len().max(1) as u64).max(1);
        let expected = self.file_len.unwrap_or(0) / per_row + self.first.len() as u64;
        let mut filter = Bloom::new(expected + expected / 4);
        for fp in std::mem::take(&mut self.first) {
            if filter.insert(fp) {
                self.candidates.insert(fp);
            }
        }
        self.filter = Some(filter);
    }

    /// The candidates' rows and lines, in one more pass over the file.
    fn collect_candidates(&mut self, input: &InputFile) -> Result<(), Error> {
        if self.filter.is_none() && !self.first.is_empty() {
            self.size_filter(0);
        }
        self.filter = None;
        if self.candidates.is_empty() {
            return Ok(());
        }
        for row in input.rows()?.flatten() {
            let fp = id_fingerprint(&row.id);
            if self.candidates.contains(&fp) {
                self.seen.push((fp, row.line));
            }
        }
        Ok(())
    }

    /// One message per row whose id an earlier row already has, naming both lines.
    pub fn duplicates(mut self, input: &InputFile) -> Result<Vec<String>, Error> {
        self.collect_candidates(input)?;
        self.seen.sort_unstable();
        let mut pairs = Vec::new();
        for group in self.seen.chunk_by(|a, b| a.0 == b.0) {
            for (_, line) in &group[1..] {
                pairs.push((group[0].1, *line));
            }
        }
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: HashSet<u64> = pairs.iter().flat_map(|(a, b)| [*a, *b]).collect();
        let mut ids = std::collections::HashMap::new();
        for row in input.rows()?.flatten() {
            if wanted.contains(&row.line) {
                ids.insert(row.line, row.id);
            }
        }
        let col = input
            .id_index
            .map(|i| format!("column {:?}", input.column_name(i)))
            .unwrap_or_else(|| "id".into());
        pairs.sort_by_key(|(_, dup)| *dup);
        Ok(pairs
            .into_iter()
            // Equal fingerprints of different ids (astronomically rare) are not duplicates.
            .filter(|(a, b)| ids.contains_key(a) && ids.get(a) == ids.get(b))
            .map(|(first, dup)| {
                format!(
                    "{}: line {dup}, {col}: the id {:?} is also on line {first}; row ids must be \
                     unique so results and resumed runs can be matched to rows",
                    input.path.display(),
                    ids[&dup]
                )
            })
            .collect())
    }
}

/// A Bloom filter over 128-bit fingerprints: 10 bits and 7 probes an item (about 1% false
/// positives at capacity), the probes derived from the fingerprint's two halves
/// (Kirsch-Mitzenmacher), which are independent hashes already.
struct Bloom {
    bits: Vec<u64>,
}

impl Bloom {
    const PROBES: u64 = 7;

    fn new(capacity: u64) -> Self {
        let words = (capacity.max(64) * 10).div_ceil(64);
        Bloom {
            bits: vec![0; words as usize],
        }
    }

    /// Adds `fp`; true if every one of its bits was set already (it may have been seen).
    fn insert(&mut self, [a, b]: [u64; 2]) -> bool {
        let m = self.bits.len() as u64 * 64;
        let mut seen = true;
        for i in 0..Self::PROBES {
            let bit = a.wrapping_add(i.wrapping_mul(b)) % m;
            let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
            seen &= self.bits[word] & mask != 0;
            self.bits[word] |= mask;
        }
        seen
    }
}

fn id_fingerprint(id: &str) -> [u64; 2] {
    // Two independently seeded SipHashes: a false "duplicate" needs a collision of both, and is
    // then ruled out by comparing the ids themselves.
    static SEEDS: std::sync::OnceLock<(std::hash::RandomState, std::hash::RandomState)> =
        std::sync::OnceLock::new();
    let (a, b) = SEEDS.get_or_init(Default::default);
    let mut ha = a.build_hasher();
    let mut hb = b.build_hasher();
    ha.write(id.as_bytes());
    hb.write(id.as_bytes());
    [ha.finish(), hb.finish()]
}

/// A CSV reader of `path` from its first byte, and the length of the byte-order mark it
/// skipped (its positions count from after it).
fn csv_reader(
    path: &Path,
    delimiter: u8,
    limits: InputLimits,
) -> Result<(csv::Reader<Source>, u64), Error> {
    let mut buf = open_buffered(path, limits)?;
    let bom = skip_bom(&mut buf, path)?;
    let reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .delimiter(delimiter)
        .from_reader(buf);
    Ok((reader, bom))
}

/// The CSV delimiter of `path`, from its extension or its first lines.
fn detect_delimiter(path: &Path, limits: InputLimits) -> Result<u8, Error> {
    let mut buf = open_buffered(path, limits)?;
    skip_bom(&mut buf, path)?;
    let head = buf.fill_buf().map_err(|e| read_error(path, &e))?;
    Ok(delimiter::detect(path, head))
}

/// A read error, or the limit it ran into.
pub(crate) fn read_error(path: &Path, e: &std::io::Error) -> Error {
    limit_error(&path.display().to_string(), e).unwrap_or_else(|| Error::read(path, e))
}

/// Opens an input file for buffered reading, with a message that says what to do if it cannot.
fn open_buffered(path: &Path, limits: InputLimits) -> Result<Source, Error> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Input(format!(
                "input file {} does not exist; check the path",
                path.display()
            ))
        } else {
            Error::Input(format!(
                "cannot read input file {}: {}",
                path.display(),
                describe_io(&e)
            ))
        }
    })?;
    Ok(BufReader::with_capacity(
        256 * 1024,
        Limited::new(file, limits),
    ))
}

/// Opens an input file for buffered reading from `byte` on, `lines_before` lines into it.
fn open_at(
    path: &Path,
    limits: InputLimits,
    byte: u64,
    lines_before: u64,
) -> Result<Source, Error> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path).map_err(|e| Error::read(path, &e))?;
    file.seek(SeekFrom::Start(byte))
        .map_err(|e| Error::read(path, &e))?;
    Ok(BufReader::with_capacity(
        256 * 1024,
        Limited::at(file, limits, byte, lines_before),
    ))
}

/// Skips a UTF-8 byte-order mark and returns its length (0 when there is none). Spreadsheet
/// programs on Windows start UTF-8 files with one; without this the first column would be named
/// "\u{feff}id".
fn skip_bom(buf: &mut Source, path: &Path) -> Result<u64, Error> {
    let has_bom = buf
        .fill_buf()
        .map_err(|e| read_error(path, &e))?
        .starts_with(UTF8_BOM);
    if has_bom {
        buf.consume(UTF8_BOM.len());
        return Ok(UTF8_BOM.len() as u64);
    }
    Ok(0)
}

/// Turns a csv error into a message with the file, line, column and a hint.
fn csv_error(path: &Path, e: &csv::Error, headers: &[String]) -> Error {
    csv_error_at(path, e, headers, 0)
}

/// [`csv_error`] for a reader that started `lines_before` lines into the file.
fn csv_error_at(path: &Path, e: &csv::Error, headers: &[String], lines_before: u64) -> Error {
    let p = path.display();
    match e.kind() {
        csv::ErrorKind::Io(io) => limit_error(&p.to_string(), io)
            .unwrap_or_else(|| Error::Input(format!("cannot read {p}: {}", describe_io(io)))),
        csv::ErrorKind::Utf8 { pos, err } => {
            let line = lines_before + pos.as_ref().map_or(0, |p| p.line());
            let col = headers
                .get(err.field())
                .map(|h| format!("column {} ({h:?})", err.field() + 1))
                .unwrap_or_else(|| format!("column {}", err.field() + 1));
            Error::Input(format!(
                "{p}: line {line}, {col}: not valid UTF-8; save the file as UTF-8 (in a \
                 spreadsheet: \"CSV UTF-8\")"
            ))
        }
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => {
            let line = lines_before + pos.as_ref().map_or(0, |p| p.line());
            unequal_lengths(path, line, *len, *expected_len)
        }
        _ => Error::Input(format!("{p}: malformed CSV: {e}")),
    }
}

/// A CSV row with more or fewer fields than the header.
fn unequal_lengths(path: &Path, line: u64, len: u64, expected_len: u64) -> Error {
    Error::Input(format!(
        "{}: line {line} has {} but the header has {expected_len}; a field that contains the \
         delimiter, a quote or a line break must be enclosed in double quotes (--delimiter \
         forces the delimiter if it was guessed wrong)",
        path.display(),
        human::count(len, "field")
    ))
}

/// `a`, `b`, `c` for an error message.
pub fn list_columns(headers: &[String]) -> String {
    headers
        .iter()
        .map(|h| format!("{h:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An input and a row built in memory, for unit tests of what reads them.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A CSV input `in.csv` with these columns.
    pub(crate) fn input(headers: &[&str]) -> InputFile {
        InputFile {
            path: "in.csv".into(),
            headers: headers.iter().map(|s| s.to_string()).collect(),
            id_index: None,
            format: Default::default(),
            delimiter: b',',
            limits: Default::default(),
        }
    }

    /// Its first row (line 2), with these cells.
    pub(crate) fn row(fields: &[&str]) -> Row {
        Row {
            seq: 0,
            line: 2,
            byte: 0,
            id: "1".into(),
            record: StringRecord::from(fields.to_vec()),
            json_cells: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        f
    }

    fn read_all(content: &[u8]) -> Result<(InputFile, Vec<Row>), Error> {
        let f = file(content);
        let input = InputFile::open(f.path(), None)?;
        let rows = input.rows()?.collect::<Result<Vec<_>, _>>()?;
        Ok((input, rows))
    }

    #[test]
    fn bom_is_stripped_from_first_header() {
        let (input, rows) = read_all(b"\xEF\xBB\xBFid,text\nA,hello\n").unwrap();
        assert_eq!(input.headers, ["id", "text"]);
        assert_eq!(rows[0].id, "A");
    }

    #[test]
    fn multiline_quoted_fields_keep_their_line_numbers() {
        let (_, rows) = read_all(b"text\n\"two\nlines\"\nnext\n").unwrap();
        assert_eq!(rows[0].record.get(0), Some("two\nlines"));
        assert_eq!((rows[0].line, rows[1].line), (2, 4));
        assert_eq!((rows[0].id.as_str(), rows[1].id.as_str()), ("1", "2"));
    }

    #[test]
    fn ragged_row_names_line_and_counts() {
        let msg = read_all(b"a,b\n1,2\n1,2,3\n").unwrap_err().to_string();
        assert!(
            msg.contains("line 3 has 3 fields but the header has 2"),
            "{msg}"
        );
    }

    #[test]
    fn invalid_utf8_names_line_and_column() {
        let msg = read_all(b"a,b\n1,ok\n2,caf\xE9\n").unwrap_err().to_string();
        assert!(
            msg.contains("line 3") && msg.contains("column 2 (\"b\")"),
            "{msg}"
        );
    }

    #[test]
    fn unterminated_quote_is_found_on_its_line() {
        let f = file(b"id,t\n1,\"fine \"\"quoted\"\"\"\n2,\"never closed\n3,x\n4,y\n");
        let input = InputFile::open(f.path(), None).unwrap();
        let last = input.rows().unwrap().last().unwrap().unwrap();
        let msg = input.unterminated_quote(&last).unwrap().unwrap();
        assert!(
            msg.contains("line 3") && msg.contains("never closed"),
            "{msg}"
        );
        let ok = file(b"id,t\n1,\"a \"\"b\"\" c\"\n2,\"multi\nline\"\n");
        let input = InputFile::open(ok.path(), None).unwrap();
        let last = input.rows().unwrap().last().unwrap().unwrap();
        assert_eq!(input.unterminated_quote(&last).unwrap(), None);
    }

    /// Every row read from each row's start is the row read from the top: same position,
    /// line, byte and cells.
    fn assert_rows_from_every_start(input: &InputFile) {
        let all: Vec<Row> = input.rows().unwrap().map(Result::unwrap).collect();
        assert!(all.len() > 3);
        for (k, row) in all.iter().enumerate() {
            let rest: Vec<Row> = input
                .rows_from(Start::of(row))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(rest.len(), all.len() - k, "from row {k}");
            for (a, b) in all[k..].iter().zip(&rest) {
                assert_eq!(
                    (a.seq, a.line, a.byte),
                    (b.seq, b.line, b.byte),
                    "from row {k}"
                );
                assert_eq!((&a.id, &a.record), (&b.id, &b.record), "from row {k}");
                assert_eq!(a.json_cells, b.json_cells, "from row {k}");
            }
        }
    }

    #[test]
    fn csv_rows_read_from_a_start_are_the_rows_read_from_the_top() {
        // A byte-order mark, CRLF endings and quoted line breaks before later rows.
        let f = file(
            b"\xEF\xBB\xBFid,t\r\na,\"two\r\nlines\"\r\nb,\"x,\"\"y\"\"\"\r\nc,plain\r\nd,\"three\nmore\nlines\"\ne,last\n",
        );
        let input = InputFile::open(f.path(), None).unwrap();
        assert_rows_from_every_start(&input);
    }

    #[test]
    fn a_csv_error_after_a_start_names_the_line_counted_from_the_top() {
        let f = file(b"id,t\na,\"two\nlines\"\nb,x\nc,\"q\nq\"\nd,1,2\ne,caf\xE9\n");
        let input = InputFile::open(f.path(), None).unwrap();
        let rows: Vec<_> = input.rows().unwrap().take(3).map(Result::unwrap).collect();
        assert_eq!(rows[2].line, 5);
        // From row c (line 5, after a quoted line break): d is on line 7, e on line 8.
        let mut from = input.rows_from(Start::of(&rows[2])).unwrap();
        assert_eq!(from.next().unwrap().unwrap().id, "c");
        let msg = from.next().unwrap().unwrap_err().to_string();
        assert!(msg.contains("line 7 has 3 fields"), "{msg}");
        // Started at the ragged row itself, with no header to compare it with.
        let start = Start {
            seq: 3,
            line: 7,
            byte: rows[2].byte + 8,
        };
        let msg = input
            .rows_from(start)
            .unwrap()
            .next()
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 7 has 3 fields"), "{msg}");
        let start = Start {
            seq: 4,
            line: 8,
            byte: start.byte + 6,
        };
        let msg = input
            .rows_from(start)
            .unwrap()
            .next()
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 8") && msg.contains("UTF-8"), "{msg}");
    }

    #[test]
    fn jsonl_rows_read_from_a_start_are_the_rows_read_from_the_top() {
        let f = file(
            b"\xEF\xBB\xBF{\"id\": \"a\", \"n\": 1}\n\n{\"id\": \"b\", \"t\": \"x\\ny\"}\r\n{\"id\": \"c\", \"n\": [1, 2]}\n{\"id\": \"d\"}\n",
        );
        let input = InputFile::open_as(f.path(), Format::Jsonl, None).unwrap();
        assert_rows_from_every_start(&input);
    }

    #[test]
    fn parquet_rows_read_from_a_start_are_the_rows_read_from_the_top() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        // Row groups of 4: starts at a group's first row and inside a group.
        parquet::fixtures::texts(&path, 11, 4);
        let input = InputFile::open_as(&path, Format::Parquet, None).unwrap();
        assert_rows_from_every_start(&input);
    }

    #[test]
    fn empty_file_is_rejected() {
        let msg = read_all(b"").unwrap_err().to_string();
        assert!(msg.contains("is empty"), "{msg}");
    }

    #[test]
    fn duplicate_header_is_rejected() {
        let msg = read_all(b"a,a\n1,2\n").unwrap_err().to_string();
        assert!(msg.contains("appears twice"), "{msg}");
    }

    #[test]
    fn duplicate_ids_are_found_with_both_lines() {
        let f = file(b"id,t\nx,1\ny,2\nx,3\nz,4\nx,5\n");
        let input = InputFile::open(f.path(), None).unwrap();
        let mut ids = IdSet::new(&input);
        for row in input.rows().unwrap() {
            ids.insert(&row.unwrap());
        }
        let msgs = ids.duplicates(&input).unwrap();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(
            msgs[0].contains("line 4") && msgs[0].contains("line 2"),
            "{msgs:?}"
        );
        assert!(
            msgs[1].contains("line 6") && msgs[1].contains("\"x\""),
            "{msgs:?}"
        );
    }

    #[test]
    fn a_parquet_inputs_id_filter_is_sized_by_its_rows_not_its_bytes() {
        use arrow_array::{ArrayRef, RecordBatch, StringArray};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let rows = 10_000;
        // Long ids, each its own: the file is about 200 bytes a row.
        let ids: Vec<String> = (0..rows).map(|i| format!("{i:0>200}")).collect();
        let column = std::sync::Arc::new(StringArray::from(ids)) as ArrayRef;
        let batch = RecordBatch::try_from_iter([("id", column)]).unwrap();
        parquet::fixtures::write(&path, &batch, 4096);
        let input = InputFile::open_as(&path, Format::Parquet, None).unwrap();
        let mut ids = IdSet::new(&input);
        for row in input.rows().unwrap() {
            ids.insert(&row.unwrap());
        }
        let bits = ids.filter.as_ref().map(|f| f.bits.len() * 64).unwrap();
        // Ten bits a row, for the rows expected and the first rows read again, and a quarter
        // more; sized by the file's bytes (read as rows) it was a hundred times that.
        assert!(
            bits <= (rows + FIRST_ROWS) * 10 * 5 / 4 + 64,
            "{bits} bits for {rows} rows"
        );
        assert!(ids.duplicates(&input).unwrap().is_empty());
    }

    #[test]
    fn duplicates_past_the_filter_sizing_are_found_and_nothing_else() {
        let mut text = String::from("id,t\n");
        for i in 0..20_000 {
            text.push_str(&format!("row-{i},x\n"));
        }
        // Line 20,002 repeats line 2 (sized from the first rows), 20,003 repeats line 15,002.
        text.push_str("row-0,y\nrow-15000,y\n");
        let f = file(text.as_bytes());
        let input = InputFile::open(f.path(), None).unwrap();
        let mut ids = IdSet::new(&input);
        for row in input.rows().unwrap() {
            ids.insert(&row.unwrap());
        }
        let msgs = ids.duplicates(&input).unwrap();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(
            msgs[0].contains("line 20002") && msgs[0].contains("line 2;"),
            "{msgs:?}"
        );
        assert!(
            msgs[1].contains("line 20003") && msgs[1].contains("line 15002"),
            "{msgs:?}"
        );
    }

    #[test]
    fn row_number_ids_are_not_checked() {
        let f = file(b"t\nx\nx\n");
        let input = InputFile::open(f.path(), None).unwrap();
        let mut ids = IdSet::new(&input);
        for row in input.rows().unwrap() {
            ids.insert(&row.unwrap());
        }
        assert!(ids.seen.is_empty() && ids.first.is_empty());
        assert!(ids.duplicates(&input).unwrap().is_empty());
    }

    #[test]
    fn unique_ids_give_no_duplicates() {
        let f = file(b"id\na\nb\nc\n");
        let input = InputFile::open(f.path(), None).unwrap();
        let mut ids = IdSet::new(&input);
        for row in input.rows().unwrap() {
            ids.insert(&row.unwrap());
        }
        assert!(ids.duplicates(&input).unwrap().is_empty());
    }

    #[test]
    fn unknown_id_column_lists_columns() {
        let f = file(b"a,b\n1,2\n");
        let msg = InputFile::open(f.path(), Some("key"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("\"a\", \"b\""), "{msg}");
    }

    #[test]
    fn missing_file_says_so() {
        let msg = InputFile::open(Path::new("/nonexistent/x.csv"), None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("does not exist"), "{msg}");
    }
}

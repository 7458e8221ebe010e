//! Parquet input: each row of the file is one request, its columns the columns of the schema.
//!
//! The file is streamed a record batch at a time (1,024 rows, decoded from one row group at a
//! time), never loaded whole, so a million-row file costs what a small one does. Each row
//! becomes the same [`Row`](super::Row) the CSV and JSON Lines readers give: cells are text for
//! the template, as JSON Lines gives them:
//! - strings as they are; integers, floats, booleans, dates and decimals as their usual text
//!   (`42`, `1.5`, `true`, `2024-05-01`); timestamps in ISO 8601 (`2024-05-01T12:00:00`, and
//!   with `Z`/an offset when the column has a time zone, shown in UTC);
//! - a null is an empty cell;
//! - lists, structs and maps as compact JSON text (`[1,2]`, `{"a":"x"}`); binary as hex.
//!
//! Numbers, booleans and nested values are marked as JSON cells, so JSON Lines results give
//! them back their type (Parquet results take the types from the input's schema instead).
//!
//! A Parquet file has no lines: a row's `line` is its 1-based position in the file (row index
//! + 1), which is what every message and `batch status` call "line" for a Parquet input.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{ArrowError, DataType, SchemaRef};
use csv::StringRecord;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::{InputLimits, JsonCells};
use crate::base::error::Error;

/// Rows decoded at a time: one batch of text cells is all that is held in memory.
const BATCH_ROWS: usize = 1024;

/// The column names of a Parquet file, read from its footer (nothing else is read).
pub fn columns(path: &Path, limits: InputLimits) -> Result<Vec<String>, Error> {
    let builder = open(path, limits)?;
    Ok(builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect())
}

/// The Arrow schema of a Parquet file, from its footer: results written as Parquet keep the
/// input columns' types.
pub fn schema(path: &Path) -> Result<SchemaRef, Error> {
    Ok(open(path, InputLimits::default())?.schema().clone())
}

/// How many rows a Parquet file holds, from its footer.
pub fn row_count(path: &Path) -> Result<u64, Error> {
    Ok(open(path, InputLimits::default())?
        .metadata()
        .file_metadata()
        .num_rows()
        .max(0) as u64)
}

fn open(path: &Path, limits: InputLimits) -> Result<ParquetRecordBatchReaderBuilder<File>, Error> {
    let file = File::open(path).map_err(|e| open_error(path, &e))?;
    let len = file.metadata().map_err(|e| open_error(path, &e))?.len();
    if len > limits.file.0 {
        return Err(Error::Input(format!(
            "{} is larger than {} (--max-input-size); raise --max-input-size if it is meant",
            path.display(),
            limits.file
        )));
    }
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
        Error::Input(format!(
            "{}: not a readable Parquet file ({e}); check that it is Parquet and was written \
             completely, or give --input-format for another format",
            path.display()
        ))
    })
}

fn open_error(path: &Path, e: &std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        return Error::Input(format!(
            "input file {} does not exist; check the path",
            path.display()
        ));
    }
    Error::Input(format!(
        "cannot read input file {}: {}",
        path.display(),
        crate::base::error::describe_io(e)
    ))
}

/// Reads the rows of a Parquet file a batch at a time.
pub struct Reader {
    batches: ParquetRecordBatchReader,
    /// The row count of each row group, to name the group a row is in.
    group_rows: Vec<u64>,
    names: Vec<String>,
    /// The current batch's columns as text, and which of them are JSON cells.
    cells: Vec<(StringArray, Kind)>,
    /// Rows in the current batch, and the next one to give.
    batch_len: usize,
    next: usize,
    /// Rows given before the current batch.
    before: u64,
}

impl Reader {
    pub fn new(path: &Path, limits: InputLimits) -> Result<Self, Error> {
        Self::new_at(path, limits, 0)
    }

    /// Reads from row index `first` on: the row groups before its own are not read at all,
    /// and the rows of its group before it are skipped.
    pub fn new_at(path: &Path, limits: InputLimits, first: u64) -> Result<Self, Error> {
        let mut builder = open(path, limits)?;
        let group_rows: Vec<u64> = builder
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows().max(0) as u64)
            .collect();
        let (mut group, mut before) = (0usize, 0u64);
        while group < group_rows.len() && before + group_rows[group] <= first {
            before += group_rows[group];
            group += 1;
        }
        if first > 0 {
            builder = builder
                .with_row_groups((group..group_rows.len()).collect())
                .with_offset((first - before) as usize);
        }
        let names = builder
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let batches = builder
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| read_error(path, &[], 0, &e.to_string()))?;
        Ok(Reader {
            batches,
            group_rows,
            names,
            cells: Vec::new(),
            batch_len: 0,
            next: 0,
            before: first,
        })
    }

    /// Reads the next row into `record` and marks its non-string cells in `cells`. Returns its
    /// line (row index + 1) and row index, or `None` after the last row.
    pub fn read(
        &mut self,
        path: &Path,
        record: &mut StringRecord,
        cells: &mut JsonCells,
    ) -> Option<Result<(u64, u64), Error>> {
        while self.next >= self.batch_len {
            self.before += self.batch_len as u64;
            match self.batches.next()? {
                Ok(batch) => {
                    if let Err(e) = self.load(path, &batch) {
                        return Some(Err(e));
                    }
                }
                Err(e) => {
                    let msg = read_error(path, &self.group_rows, self.before, &e.to_string());
                    return Some(Err(msg));
                }
            }
        }
        let i = self.next;
        self.next += 1;
        record.clear();
        *cells = JsonCells::default();
        for (c, (column, kind)) in self.cells.iter().enumerate() {
            if column.is_null(i) {
                record.push_field("");
                continue;
            }
            let text = column.value(i);
            record.push_field(text);
            let json = match kind {
                Kind::Text => false,
                Kind::Json => true,
                Kind::Float => text.parse::<f64>().is_ok_and(f64::is_finite),
            };
            if json {
                cells.insert(c);
            }
        }
        let index = self.before + i as u64;
        Some(Ok((index + 1, index)))
    }

    /// Turns a decoded batch into text columns.
    fn load(&mut self, path: &Path, batch: &RecordBatch) -> Result<(), Error> {
        self.cells.clear();
        for (c, column) in batch.columns().iter().enumerate() {
            let text = column_text(column).map_err(|e| {
                Error::Input(format!(
                    "{}: rows {}-{}, column {:?}: cannot read the values as text: {e}",
                    path.display(),
                    self.before + 1,
                    self.before + batch.num_rows() as u64,
                    self.names.get(c).map(String::as_str).unwrap_or("?")
                ))
            })?;
            self.cells.push(text);
        }
        self.batch_len = batch.num_rows();
        self.next = 0;
        Ok(())
    }
}

/// A row group's failure, naming the group and the rows it holds.
fn read_error(path: &Path, group_rows: &[u64], before: u64, e: &str) -> Error {
    let (mut group, mut start) = (0usize, 0u64);
    while group + 1 < group_rows.len() && start + group_rows[group] <= before {
        start += group_rows[group];
        group += 1;
    }
    Error::Input(format!(
        "{}: row group {} (rows from {}): cannot read it ({e}); the file is damaged or was not \
         written completely",
        path.display(),
        group + 1,
        before + 1
    ))
}

/// Whether a column's values are JSON other than strings: integers, booleans, nested values
/// (decimals stay strings, so no digit is lost to a reader's float).
fn is_json(t: &DataType) -> bool {
    t.is_integer() || matches!(t, DataType::Boolean) || is_nested(t)
}

fn is_nested(t: &DataType) -> bool {
    matches!(
        t,
        DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(..)
            | DataType::Struct(_)
            | DataType::Map(..)
    )
}

/// What a column's text cells are for JSON Lines results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Strings (and anything JSON has no type for: dates, timestamps, binary).
    Text,
    /// Integers, booleans and nested values: JSON as written.
    Json,
    /// Floats: JSON unless NaN or infinite.
    Float,
}

fn is_float(t: &DataType) -> bool {
    matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64)
}

/// A column as text, one string a row (null stays null), and what its cells are.
fn column_text(column: &ArrayRef) -> Result<(StringArray, Kind), ArrowError> {
    let t = column.data_type();
    if matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
        let text = arrow_cast::cast(column, &DataType::Utf8)?;
        return Ok((text.as_string::<i32>().clone(), Kind::Text));
    }
    let column = utc_timestamps(column)?;
    let mut out = arrow_array::builder::StringBuilder::new();
    let nested = is_nested(t);
    let formatter = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())?;
    let kind = if is_float(t) {
        Kind::Float
    } else if is_json(t) {
        Kind::Json
    } else {
        Kind::Text
    };
    for i in 0..column.len() {
        if column.is_null(i) {
            out.append_null();
        } else if nested {
            out.append_value(json_value(column.as_ref(), i)?.to_string());
        } else {
            out.append_value(formatter.value(i).try_to_string()?);
        }
    }
    Ok((out.finish(), kind))
}

/// A timestamp column with a named time zone (`Europe/Paris`) shown in UTC: the values are
/// instants in UTC already, and time-zone names are not compiled in (see Cargo.toml).
fn utc_timestamps(column: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    match column.data_type() {
        DataType::Timestamp(unit, Some(_)) => {
            let t = DataType::Timestamp(*unit, Some("+00:00".into()));
            let data = column.to_data().into_builder().data_type(t).build()?;
            Ok(arrow_array::make_array(data))
        }
        _ => Ok(Arc::clone(column)),
    }
}

/// Value `i` of `array` as JSON: lists as arrays, structs and maps as objects, numbers and
/// booleans as themselves, anything else as its text.
fn json_value(array: &dyn Array, i: usize) -> Result<serde_json::Value, ArrowError> {
    use serde_json::Value;
    if array.is_null(i) {
        return Ok(Value::Null);
    }
    let items = |a: ArrayRef| -> Result<Value, ArrowError> {
        (0..a.len())
            .map(|j| json_value(a.as_ref(), j))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array)
    };
    match array.data_type() {
        DataType::List(_) => items(array.as_list::<i32>().value(i)),
        DataType::LargeList(_) => items(array.as_list::<i64>().value(i)),
        DataType::FixedSizeList(..) => items(array.as_fixed_size_list().value(i)),
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let mut map = serde_json::Map::new();
            for (f, col) in fields.iter().zip(s.columns()) {
                map.insert(f.name().clone(), json_value(col.as_ref(), i)?);
            }
            Ok(Value::Object(map))
        }
        DataType::Map(..) => {
            let entries = array.as_map().value(i);
            let mut map = serde_json::Map::new();
            for j in 0..entries.len() {
                let key = match json_value(entries.column(0).as_ref(), j)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                map.insert(key, json_value(entries.column(1).as_ref(), j)?);
            }
            Ok(Value::Object(map))
        }
        t => {
            let array = utc_timestamps(&arrow_array::make_array(array.to_data()))?;
            let text = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?
                .value(i)
                .try_to_string()?;
            let number = (t.is_numeric())
                .then(|| text.parse::<serde_json::Number>().ok())
                .flatten();
            Ok(match (t, number) {
                (DataType::Boolean, _) => Value::Bool(text == "true"),
                (_, Some(n)) => Value::Number(n),
                _ => Value::String(text),
            })
        }
    }
}

/// Writes the first `rows` rows of the Parquet file `input` to `dest`, with its schema: the
/// warm-up sample of `batch bench`.
pub fn write_head(input: &Path, rows: u64, dest: &Path) -> Result<u64, Error> {
    let builder = open(input, InputLimits::default())?;
    let schema = builder.schema().clone();
    let reader = builder
        .with_batch_size(BATCH_ROWS)
        .with_limit(rows as usize)
        .build()
        .map_err(|e| read_error(input, &[], 0, &e.to_string()))?;
    let file =
        File::create(dest).map_err(|e| Error::io(format!("cannot write {}", dest.display()), e))?;
    let write = |e: parquet::errors::ParquetError| {
        Error::io(
            format!("cannot write {}", dest.display()),
            std::io::Error::other(e),
        )
    };
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None).map_err(write)?;
    let mut written = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| read_error(input, &[], written, &e.to_string()))?;
        written += batch.num_rows() as u64;
        writer.write(&batch).map_err(write)?;
    }
    writer.close().map_err(write)?;
    Ok(written)
}

/// Parquet files built in memory, for the tests of what reads and writes them.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::types::TimestampMillisecondType;
    use arrow_array::{
        BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array, PrimitiveArray,
    };
    use arrow_schema::{Field, Schema};
    use parquet::file::properties::WriterProperties;

    /// 2024-05-01T12:00:00Z in milliseconds.
    pub(crate) const NOON: i64 = 1_714_564_800_000;

    /// Five rows of many types, in row groups of two rows: `id` int64, `text` string (unicode,
    /// a null), `score` float64 (a NaN, a null), `flag` bool, `at` timestamp(ms, UTC), `local`
    /// timestamp(ms, Europe/Paris), `day` date32, `price` decimal(10,2), `tags` list<string>.
    pub(crate) fn sample(path: &Path) -> RecordBatch {
        let mut tags = ListBuilder::new(StringBuilder::new());
        for row in [&["a", "b"][..], &[], &["ü"], &["x"], &["y", "z"]] {
            for t in row {
                tags.values().append_value(t);
            }
            tags.append(true);
        }
        let at = PrimitiveArray::<TimestampMillisecondType>::from(vec![NOON; 5]);
        let batch = RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])) as ArrayRef,
            ),
            (
                "text",
                Arc::new(StringArray::from(vec![
                    Some("héllo 世界"),
                    None,
                    Some(""),
                    Some("a,\"b\"\nc"),
                    Some("plain"),
                ])),
            ),
            (
                "score",
                Arc::new(Float64Array::from(vec![
                    Some(1.5),
                    Some(f64::NAN),
                    None,
                    Some(-2.0),
                    Some(1e-7),
                ])),
            ),
            (
                "flag",
                Arc::new(BooleanArray::from(vec![
                    Some(true),
                    Some(false),
                    None,
                    Some(true),
                    Some(false),
                ])),
            ),
            ("at", Arc::new(at.clone().with_timezone("UTC"))),
            ("local", Arc::new(at.with_timezone("Europe/Paris"))),
            ("day", Arc::new(Date32Array::from(vec![19844; 5]))),
            (
                "price",
                Arc::new(
                    Decimal128Array::from(vec![1234, -5, 0, 100, 99])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
            ),
            ("tags", Arc::new(tags.finish())),
        ])
        .unwrap();
        write(path, &batch, 2);
        batch
    }

    /// Writes `batch` to `path` in row groups of `group_rows`.
    pub(crate) fn write(path: &Path, batch: &RecordBatch, group_rows: usize) {
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group_rows))
            .build();
        let file = File::create(path).unwrap();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
    }

    /// A file of one string column `text` with `rows` rows.
    pub(crate) fn texts(path: &Path, rows: usize, group_rows: usize) {
        let texts: Vec<String> = (0..rows).map(|i| format!("row {i}")).collect();
        let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(texts)) as ArrayRef])
                .unwrap();
        write(path, &batch, group_rows);
    }

    /// Reads a whole Parquet file back (tests only).
    pub(crate) fn read(path: &Path) -> RecordBatch {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let schema = arrow_array::RecordBatchReader::schema(&reader);
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        arrow_select::concat::concat_batches(&schema, &batches).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::format::Format;
    use crate::engine::input::{InputFile, Row};

    fn rows(path: &Path) -> (InputFile, Vec<Row>) {
        let input = InputFile::open_as(path, Format::Parquet, None).unwrap();
        let rows = input
            .rows()
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        (input, rows)
    }

    #[test]
    fn every_type_reads_as_the_text_a_prompt_sees() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        fixtures::sample(&path);
        let (input, rows) = rows(&path);
        assert_eq!(
            input.headers,
            [
                "id", "text", "score", "flag", "at", "local", "day", "price", "tags"
            ]
        );
        assert_eq!(input.id_index, Some(0));
        let cells: Vec<&str> = rows[0].record.iter().collect();
        assert_eq!(
            cells,
            [
                "1",
                "héllo 世界",
                "1.5",
                "true",
                "2024-05-01T12:00:00Z",
                "2024-05-01T12:00:00Z",
                "2024-05-01",
                "12.34",
                r#"["a","b"]"#
            ]
        );
        // Nulls are empty cells; NaN is text; an empty list is [].
        assert_eq!(rows[1].record.get(1), Some(""));
        assert_eq!(rows[1].record.get(2), Some("NaN"));
        assert_eq!(rows[1].record.get(8), Some("[]"));
        assert_eq!(rows[2].record.get(3), Some(""));
        assert_eq!(rows[3].record.get(1), Some("a,\"b\"\nc"));
        assert_eq!(rows[2].record.get(7), Some("0.00"));
        assert_eq!(rows[4].id, "5");
    }

    #[test]
    fn numbers_booleans_and_lists_are_json_cells() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        fixtures::sample(&path);
        let (_, rows) = rows(&path);
        let json: Vec<bool> = (0..9).map(|i| rows[0].json_cells.contains(i)).collect();
        // id, text, score, flag, at, local, day, price, tags
        assert_eq!(
            json,
            [true, false, true, true, false, false, false, false, true]
        );
        assert!(!rows[1].json_cells.contains(2), "NaN is not a JSON number");
        assert!(!rows[2].json_cells.contains(3), "a null is an empty cell");
    }

    #[test]
    fn rows_stream_across_row_groups_with_row_numbers_as_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        // Several row groups and more than one decoded batch.
        fixtures::texts(&path, 2500, 700);
        let (input, rows) = rows(&path);
        assert_eq!(input.id_index, None);
        assert_eq!(rows.len(), 2500);
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row.seq, i as u64);
            assert_eq!(row.line, i as u64 + 1);
            assert_eq!(row.id, (i + 1).to_string());
            assert_eq!(row.record.get(0), Some(format!("row {i}").as_str()));
        }
    }

    #[test]
    fn a_file_with_no_rows_has_columns_and_no_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        fixtures::texts(&path, 0, 10);
        let (input, rows) = rows(&path);
        assert_eq!(input.headers, ["text"]);
        assert!(rows.is_empty());
    }

    #[test]
    fn not_parquet_and_truncated_files_are_clear_input_errors() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("in.parquet");
        std::fs::write(&csv, "id,text\n1,hello\n").unwrap();
        let e = InputFile::open_as(&csv, Format::Parquet, None).unwrap_err();
        assert!(matches!(e, Error::Input(_)), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("in.parquet") && msg.contains("not a readable Parquet file"));

        let whole = dir.path().join("whole.parquet");
        fixtures::texts(&whole, 100, 10);
        let bytes = std::fs::read(&whole).unwrap();
        let cut = dir.path().join("cut.parquet");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let msg = InputFile::open_as(&cut, Format::Parquet, None)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("cut.parquet") && msg.contains("written completely"),
            "{msg}"
        );
    }

    #[test]
    fn a_damaged_row_group_names_the_group_and_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        fixtures::texts(&path, 100, 10);
        let mut bytes = std::fs::read(&path).unwrap();
        // Garble the data pages but keep the footer: reading finds the damage.
        let footer =
            u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap());
        let data_end = bytes.len() - 8 - footer as usize;
        for b in &mut bytes[4..data_end] {
            *b = 0xff;
        }
        std::fs::write(&path, &bytes).unwrap();
        let input = InputFile::open_as(&path, Format::Parquet, None).unwrap();
        let err = input.rows().unwrap().find_map(Result::err).unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("in.parquet: row group 1 (rows from 1)"),
            "{msg}"
        );
    }

    #[test]
    fn bench_warmups_copy_the_first_rows_with_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        fixtures::sample(&path);
        let head = dir.path().join("head.parquet");
        assert_eq!(write_head(&path, 3, &head).unwrap(), 3);
        let (input, rows) = rows(&head);
        assert_eq!(input.headers.len(), 9);
        assert_eq!(rows.len(), 3);
        assert_eq!(schema(&head).unwrap(), schema(&path).unwrap());
    }
}

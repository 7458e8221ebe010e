//! Parquet results, with typed columns, and the Parquet vector file of `batch embed`.
//!
//! Results have the columns of the CSV and JSON Lines results, typed so pandas, Polars and
//! DuckDB read numbers as numbers: the input's columns keep their types when the input is
//! Parquet (integers, floats, booleans, dates, decimals and timestamps; other types, nested ones
//! included, are written as the text the prompt saw) and are strings otherwise; `attempts`,
//! `latency_ms` and the token counts are int64, `cost_usd` float64, `cached` and `match`
//! booleans, the rest strings. An empty cell is null, as in JSON Lines results.
//!
//! Both writers stream: rows are buffered a batch at a time, encoded into row groups of at most
//! 65,536 rows or about 64 MB, and each group is written out when full, so memory stays bounded
//! however many rows there are. The file is only complete once the footer is written by
//! `finish`: the callers write to a temporary file and rename it over the destination then.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow_cast::{CastOptions, cast_with_options};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use csv::StringRecord;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;

use crate::base::error::{Error, describe_io};
use crate::base::record::RowStatus;

/// Rows encoded at a time (fewer when they are long, see [`BATCH_BYTES`]).
const BATCH_ROWS: usize = 8192;
/// Text buffered before a batch is encoded, whatever its row count.
const BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Rows in a row group, at most.
pub const GROUP_ROWS: usize = 65_536;
/// The encoded size at which a row group is written out, if it has fewer rows.
const GROUP_BYTES: usize = 64 * 1024 * 1024;

fn properties_builder(dictionary: bool) -> WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_enabled(dictionary)
        .set_max_row_group_row_count(Some(GROUP_ROWS))
        .set_max_row_group_bytes(Some(GROUP_BYTES))
}

fn properties(dictionary: bool) -> WriterProperties {
    properties_builder(dictionary).build()
}

fn io(e: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
    std::io::Error::other(e)
}

/// What a results column holds.
#[derive(Debug, Clone, PartialEq)]
enum Column {
    Text,
    Int,
    Float,
    Bool,
    /// An input column of this type, written from its text and converted back.
    Input(DataType),
}

impl Column {
    /// A result column's type, by its name without `result_` prefixes.
    fn of_result(name: &str) -> Column {
        let mut base = name;
        while let Some(rest) = base.strip_prefix("result_") {
            base = rest;
        }
        match base {
            "attempts" | "latency_ms" | "prompt_tokens" | "completion_tokens" | "cached_tokens"
            | "reasoning_tokens" => Column::Int,
            "cost_usd" => Column::Float,
            "cached" | "match" => Column::Bool,
            _ => Column::Text,
        }
    }

    /// An input column of type `t`: its own type when its text converts back exactly.
    fn of_input(t: &DataType) -> Column {
        let keeps = t.is_integer()
            || matches!(
                t,
                DataType::Boolean
                    | DataType::Float32
                    | DataType::Float64
                    | DataType::Date32
                    | DataType::Decimal128(..)
                    | DataType::Timestamp(..)
            );
        if keeps {
            Column::Input(t.clone())
        } else {
            Column::Text
        }
    }

    fn data_type(&self) -> DataType {
        match self {
            Column::Text => DataType::Utf8,
            Column::Int => DataType::Int64,
            Column::Float => DataType::Float64,
            Column::Bool => DataType::Boolean,
            Column::Input(t) => t.clone(),
        }
    }

    fn builder(&self) -> Builder {
        match self {
            Column::Int => Builder::Int(Int64Builder::new()),
            Column::Float => Builder::Float(Float64Builder::new()),
            Column::Bool => Builder::Bool(BooleanBuilder::new()),
            Column::Text | Column::Input(_) => Builder::Text(StringBuilder::new()),
        }
    }
}

/// One column's values of the batch being buffered.
enum Builder {
    Text(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
}

impl Builder {
    /// Appends a cell (empty is null); `None` if its text is not of the column's type.
    fn push(&mut self, cell: &str) -> Option<()> {
        if cell.is_empty() {
            match self {
                Builder::Text(b) => b.append_null(),
                Builder::Int(b) => b.append_null(),
                Builder::Float(b) => b.append_null(),
                Builder::Bool(b) => b.append_null(),
            }
            return Some(());
        }
        match self {
            Builder::Text(b) => b.append_value(cell),
            Builder::Int(b) => b.append_value(cell.parse().ok()?),
            Builder::Float(b) => b.append_value(cell.parse().ok()?),
            Builder::Bool(b) => b.append_value(cell.parse().ok()?),
        }
        Some(())
    }

    fn finish(&mut self, column: &Column) -> Result<ArrayRef, ArrowError> {
        Ok(match self {
            Builder::Text(b) => {
                let text = b.finish();
                match column {
                    Column::Input(t) => from_text(&text, t)?,
                    _ => Arc::new(text),
                }
            }
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
        })
    }
}

/// An input column's text (as the Parquet reader wrote it) back in its type `t`. Timestamps
/// were written in UTC, so they are parsed as such and given back their time zone's name.
fn from_text(text: &StringArray, t: &DataType) -> Result<ArrayRef, ArrowError> {
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    match t {
        DataType::Timestamp(unit, Some(_)) => {
            let utc = cast_with_options(text, &DataType::Timestamp(*unit, None), &strict)?;
            let data = utc.to_data().into_builder().data_type(t.clone()).build()?;
            Ok(arrow_array::make_array(data))
        }
        _ => cast_with_options(text, t, &strict),
    }
}

/// Results in Parquet, behind [`crate::engine::output::ResultsWriter`]. The Parquet writer is
/// made when the first batch is encoded, so the input's types can be given until then.
pub struct ResultsSink {
    /// The file, until the Parquet writer takes it.
    out: Option<BufWriter<File>>,
    writer: Option<(ArrowWriter<BufWriter<File>>, SchemaRef)>,
    names: Vec<String>,
    columns: Vec<Column>,
    builders: Vec<Builder>,
    inputs: usize,
    rows: usize,
    bytes: usize,
}

impl ResultsSink {
    /// `header` is the results header; its first `inputs` columns are the input's.
    pub fn new(out: BufWriter<File>, header: &[String], inputs: usize) -> Self {
        let columns: Vec<Column> = header
            .iter()
            .enumerate()
            .map(|(i, h)| {
                if i < inputs {
                    Column::Text
                } else {
                    Column::of_result(h)
                }
            })
            .collect();
        ResultsSink {
            out: Some(out),
            writer: None,
            names: header.to_vec(),
            builders: columns.iter().map(Column::builder).collect(),
            columns,
            inputs,
            rows: 0,
            bytes: 0,
        }
    }

    /// Gives the input columns the types of `schema` (the input's, when it is Parquet), matched
    /// by name. Only before the first row is written.
    pub fn keep_input_types(&mut self, schema: &Schema) {
        if self.rows > 0 || self.writer.is_some() {
            return;
        }
        for i in 0..self.inputs {
            if let Ok(field) = schema.field_with_name(&self.names[i]) {
                self.columns[i] = Column::of_input(field.data_type());
            }
        }
        self.builders = self.columns.iter().map(Column::builder).collect();
    }

    /// Appends one row: every column's text, in header order.
    pub fn write(&mut self, record: &StringRecord) -> std::io::Result<()> {
        for (i, cell) in record.iter().enumerate() {
            let Some(builder) = self.builders.get_mut(i) else {
                break;
            };
            if builder.push(cell).is_none() {
                return Err(std::io::Error::other(format!(
                    "column {:?}: {cell:?} is not a {} value",
                    self.names[i],
                    self.columns[i].data_type()
                )));
            }
        }
        self.rows += 1;
        self.bytes += record.as_slice().len();
        if self.rows >= BATCH_ROWS || self.bytes >= BATCH_BYTES {
            self.encode()?;
        }
        Ok(())
    }

    /// Encodes the buffered rows; the Parquet writer writes a row group out when it is full.
    fn encode(&mut self) -> std::io::Result<()> {
        let arrays = self
            .builders
            .iter_mut()
            .zip(&self.columns)
            .map(|(b, c)| b.finish(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io)?;
        if self.writer.is_none() {
            let fields: Vec<Field> = (self.names.iter().zip(&arrays))
                .map(|(n, a)| Field::new(n, a.data_type().clone(), true))
                .collect();
            let out = self.out.take().expect("the file is there until the writer");
            let schema = Arc::new(Schema::new(fields));
            let w =
                ArrowWriter::try_new(out, schema.clone(), Some(properties(true))).map_err(io)?;
            self.writer = Some((w, schema));
        }
        let (writer, schema) = self.writer.as_mut().expect("made above");
        let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(io)?;
        writer.write(&batch).map_err(io)?;
        (self.rows, self.bytes) = (0, 0);
        Ok(())
    }

    /// Writes the last rows and the footer, and gives the file back.
    pub fn finish(mut self) -> std::io::Result<BufWriter<File>> {
        if self.rows > 0 || self.writer.is_none() {
            self.encode()?;
        }
        let (writer, _) = self.writer.take().expect("encode made the writer");
        writer.into_inner().map_err(io)
    }
}

/// Writes embeddings as Parquet, a row at a time, to a temporary file renamed over the
/// destination by [`VectorParquetWriter::finish`] (dropped unfinished, it removes it).
///
/// Columns: `line` (uint64), `id`, `status`, `error` (strings, `error` null on success),
/// `tokens` (uint32, null when unknown) and `embedding`, a fixed-size list of float32 (null for
/// a row without a vector). Its size is `dims`, or the first vector's length when `None`;
/// every vector must have it. Memory is bounded by the batch buffered (about 4 MB of floats)
/// and the row group being encoded (about 64 MB), whatever the number of rows.
pub struct VectorParquetWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    writer: Option<ArrowWriter<BufWriter<File>>>,
    dims: Option<usize>,
    lines: UInt64Builder,
    ids: StringBuilder,
    statuses: StringBuilder,
    errors: StringBuilder,
    tokens: UInt32Builder,
    values: Vec<f32>,
    valid: Vec<bool>,
    done: bool,
}

/// Floats buffered before a batch of vectors is encoded.
const VECTOR_BATCH_FLOATS: usize = 1024 * 1024;

/// Rows buffered before a batch is encoded, whatever their vectors: rows without one (failed,
/// skipped) still hold an id and an error text each.
const VECTOR_BATCH_ROWS: usize = 8192;

impl VectorParquetWriter {
    /// Creates the temporary file beside `path` (its folder must exist).
    ///
    /// Pass `dims` whenever it can be known: the list size is part of the schema, written
    /// before the first row group, so with `None` the rows before the first vector are held in
    /// memory until a vector fixes it (or [`Self::finish`]). They cannot be flushed earlier:
    /// any width chosen for them could be refused by the vectors that follow. `batch embed`
    /// always passes it (the first vector of its journal, else `--dimensions` or the model's).
    pub fn create(path: &Path, dims: Option<usize>) -> Result<Self, Error> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "vectors.parquet".into());
        let tmp = path.with_file_name(format!(".{name}.partial"));
        let file = File::create(&tmp).map_err(|e| {
            Error::Usage(format!(
                "cannot write vectors to {}: {}",
                path.display(),
                describe_io(&e)
            ))
        })?;
        Ok(VectorParquetWriter {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1024 * 1024, file)),
            writer: None,
            dims: dims.filter(|d| *d > 0),
            lines: UInt64Builder::new(),
            ids: StringBuilder::new(),
            statuses: StringBuilder::new(),
            errors: StringBuilder::new(),
            tokens: UInt32Builder::new(),
            values: Vec::new(),
            valid: Vec::new(),
            done: false,
        })
    }

    /// Appends one row. A vector whose length differs from the others' is an error.
    pub fn push(
        &mut self,
        line: u64,
        id: &str,
        status: RowStatus,
        error: Option<&str>,
        tokens: Option<u32>,
        embedding: Option<&[f32]>,
    ) -> Result<(), Error> {
        if let Some(v) = embedding {
            let dims = *self.dims.get_or_insert(v.len());
            if v.len() != dims || dims == 0 {
                return Err(self.error(format!(
                    "line {line} (id {id:?}): the vector has {} values but the others have \
                     {dims}; every vector of one file must have the same dimensions",
                    v.len()
                )));
            }
        }
        self.lines.append_value(line);
        self.ids.append_value(id);
        self.statuses.append_value(status.as_str());
        self.errors.append_option(error.filter(|e| !e.is_empty()));
        self.tokens.append_option(tokens);
        match (embedding, self.dims) {
            (Some(v), _) => self.values.extend_from_slice(v),
            (None, Some(d)) => self.values.resize(self.values.len() + d, 0.0),
            (None, None) => {}
        }
        self.valid.push(embedding.is_some());
        // Rows before the first vector wait for it: it fixes the list size.
        if self.dims.is_some()
            && (self.values.len() >= VECTOR_BATCH_FLOATS || self.valid.len() >= VECTOR_BATCH_ROWS)
        {
            self.encode()?;
        }
        Ok(())
    }

    fn encode(&mut self) -> Result<(), Error> {
        // Rows buffered before the first vector get their null vectors' placeholders now; a
        // file with no vector at all has vectors of size 1, all null.
        let dims = self.dims.unwrap_or(1);
        let placeholders = self.valid.len() * dims - self.values.len();
        self.values
            .splice(0..0, std::iter::repeat_n(0.0, placeholders));
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let values = Float32Array::from(std::mem::take(&mut self.values));
        let nulls = Some(std::mem::take(&mut self.valid).into());
        let vectors = FixedSizeListArray::try_new(item, dims as i32, Arc::new(values), nulls)
            .map_err(|e| self.error(e.to_string()))?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.lines.finish()),
            Arc::new(self.ids.finish()),
            Arc::new(self.statuses.finish()),
            Arc::new(self.errors.finish()),
            Arc::new(self.tokens.finish()),
            Arc::new(vectors),
        ];
        let schema = vector_schema(dims);
        let writer = self.writer()?;
        let batch = RecordBatch::try_new(schema, columns);
        let written = batch.map_err(io).and_then(|b| writer.write(&b).map_err(io));
        written.map_err(|e| self.error(e.to_string()))
    }

    fn writer(&mut self) -> Result<&mut ArrowWriter<BufWriter<File>>, Error> {
        if self.writer.is_none() {
            let schema = vector_schema(self.dims.unwrap_or(1));
            let out = self.out.take().expect("the file is there until the writer");
            // Dictionaries do not shrink unique ids or floats, they only cost memory; nor does
            // Snappy shrink floats, it only costs time.
            let floats = ColumnPath::new(["embedding", "list", "item"].map(String::from).to_vec());
            let props = properties_builder(false)
                .set_column_compression(floats, Compression::UNCOMPRESSED)
                .build();
            let w = ArrowWriter::try_new(out, schema, Some(props))
                .map_err(|e| self.error(e.to_string()))?;
            self.writer = Some(w);
        }
        Ok(self.writer.as_mut().expect("made above"))
    }

    /// Writes the last rows and the footer, and renames the file over the destination.
    pub fn finish(mut self) -> Result<(), Error> {
        if !self.valid.is_empty() || self.writer.is_none() {
            self.encode()?;
        }
        let writer = self.writer.take().expect("encode made the writer");
        let file = writer
            .into_inner()
            .map_err(|e| self.error(e.to_string()))?
            .into_inner()
            .map_err(|e| self.error(describe_io(e.error())))?;
        file.sync_all()
            .and_then(|()| std::fs::rename(&self.tmp, &self.path))
            .map_err(|e| self.error(describe_io(&e)))?;
        self.done = true;
        Ok(())
    }

    fn error(&self, msg: String) -> Error {
        Error::io(
            format!("cannot write vectors to {}", self.path.display()),
            std::io::Error::other(msg),
        )
    }
}

impl Drop for VectorParquetWriter {
    fn drop(&mut self) {
        if !self.done {
            drop(self.writer.take());
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The columns of a vector file whose vectors have `dims` floats.
pub fn vector_schema(dims: usize) -> SchemaRef {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    Arc::new(Schema::new(vec![
        Field::new("line", DataType::UInt64, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("tokens", DataType::UInt32, true),
        Field::new(
            "embedding",
            DataType::FixedSizeList(item, dims as i32),
            true,
        ),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::format::Format;
    use crate::base::record::RowResult;
    use crate::base::usage::Usage;
    use crate::engine::input::InputFile;
    use crate::engine::input::parquet::fixtures;
    use crate::engine::output::ResultsWriter;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Float64Type, Int64Type, UInt32Type, UInt64Type};
    use arrow_schema::TimeUnit;

    fn answered(seq: u64, id: &str) -> RowResult {
        let mut r = RowResult::skipped(seq, id.into(), "m", "");
        r.status = RowStatus::Ok;
        r.output = format!("answer {seq} ✓");
        r.attempts = 1;
        r.latency = Some(std::time::Duration::from_millis(120));
        r.usage = Some(Usage {
            prompt_tokens: 10 + seq,
            completion_tokens: 5,
            ..Default::default()
        });
        r.cost = Some(0.000015);
        r.finish_reason = "stop".into();
        r
    }

    /// Runs every row of `input` through a Parquet results writer: odd rows answered, even
    /// rows failed.
    fn results_of(input: &InputFile, dest: &Path) -> RecordBatch {
        let mut w =
            ResultsWriter::create_as(dest, Format::Parquet, &input.headers, true, None).unwrap();
        w.keep_input_types(input).unwrap();
        for row in input.rows().unwrap() {
            let row = row.unwrap();
            let r = if row.seq % 2 == 0 {
                answered(row.seq, &row.id)
            } else {
                let mut r = RowResult::skipped(row.seq, row.id.clone(), "m", "HTTP 500");
                r.status = RowStatus::Failed;
                r
            };
            w.write_row(&row, &r).unwrap();
        }
        w.finish().unwrap();
        fixtures::read(dest)
    }

    #[test]
    fn a_parquet_input_keeps_its_types_and_values_in_the_results() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dest) = (
            dir.path().join("in.parquet"),
            dir.path().join("out.parquet"),
        );
        let original = fixtures::sample(&src);
        let input = InputFile::open_as(&src, Format::Parquet, None).unwrap();
        let out = results_of(&input, &dest);
        assert_eq!(out.num_rows(), 5);
        for (i, field) in original.schema().fields().iter().enumerate() {
            let written = out.schema().field(i).clone();
            assert_eq!(written.name(), field.name());
            if field.name() == "tags" {
                // Nested values are written as the JSON text the prompt saw.
                assert_eq!(written.data_type(), &DataType::Utf8);
                let tags = out.column(i).as_string::<i32>();
                assert_eq!(tags.value(0), r#"["a","b"]"#);
                continue;
            }
            assert_eq!(written.data_type(), field.data_type(), "{}", field.name());
            if field.name() == "score" {
                let (a, b) = (out.column(i), original.column(i));
                let (a, b) = (
                    a.as_primitive::<Float64Type>(),
                    b.as_primitive::<Float64Type>(),
                );
                for r in 0..5 {
                    assert_eq!(a.is_null(r), b.is_null(r));
                    assert!(a.value(r).to_bits() == b.value(r).to_bits() || a.is_null(r));
                }
                continue;
            }
            if field.name() == "text" {
                // An empty string reads as an empty cell, which results write as null.
                let t = out.column(i).as_string::<i32>();
                assert_eq!(t.value(0), "héllo 世界");
                assert!(t.is_null(1) && t.is_null(2));
                assert_eq!(t.value(3), "a,\"b\"\nc");
                continue;
            }
            assert_eq!(out.column(i), original.column(i), "{}", field.name());
        }
        let at = out
            .schema()
            .field_with_name("at")
            .unwrap()
            .data_type()
            .clone();
        assert_eq!(
            at,
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
        );
    }

    #[test]
    fn result_columns_are_typed_and_empty_cells_null() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dest) = (dir.path().join("in.csv"), dir.path().join("out.parquet"));
        std::fs::write(&src, "id,n\na,1\nb,2\nc,\n").unwrap();
        let input = InputFile::open(&src, None).unwrap();
        let out = results_of(&input, &dest);
        let col = |name: &str| out.column_by_name(name).unwrap().clone();
        let types: Vec<(String, DataType)> = out
            .schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        let ty = |name: &str| types.iter().find(|(n, _)| n == name).unwrap().1.clone();
        // A CSV's columns are text.
        assert_eq!(ty("n"), DataType::Utf8);
        assert_eq!(col("n").as_string::<i32>().value(0), "1");
        assert_eq!(ty("attempts"), DataType::Int64);
        assert_eq!(ty("cost_usd"), DataType::Float64);
        assert_eq!(ty("cached"), DataType::Boolean);
        let status = col("status");
        let status = status.as_string::<i32>();
        assert_eq!((status.value(0), status.value(1)), ("ok", "failed"));
        let error = col("error");
        let error = error.as_string::<i32>();
        assert!(error.is_null(0));
        assert_eq!(error.value(1), "HTTP 500");
        let prompt = col("prompt_tokens");
        let prompt = prompt.as_primitive::<Int64Type>();
        assert_eq!(prompt.value(0), 10);
        assert!(prompt.is_null(1));
        assert_eq!(prompt.value(2), 12);
        assert_eq!(col("latency_ms").as_primitive::<Int64Type>().value(0), 120);
        let cost = col("cost_usd");
        assert!((cost.as_primitive::<Float64Type>().value(0) - 0.000015).abs() < 1e-12);
        assert!(!col("cached").as_boolean().value(0));
        assert_eq!(col("output").as_string::<i32>().value(2), "answer 2 ✓");
    }

    #[test]
    fn answers_that_look_like_formulas_are_kept_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.parquet");
        let mut w = ResultsWriter::create(&dest, &["a".into()], true).unwrap();
        let mut r = answered(0, "1");
        r.output = "=1+1".into();
        w.write(&StringRecord::from(vec!["-x"]), &r).unwrap();
        w.finish().unwrap();
        let out = fixtures::read(&dest);
        let output = out.column_by_name("output").unwrap();
        assert_eq!(output.as_string::<i32>().value(0), "=1+1");
    }

    #[test]
    fn zero_rows_still_make_a_file_with_every_column() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dest) = (
            dir.path().join("in.parquet"),
            dir.path().join("out.parquet"),
        );
        fixtures::texts(&src, 0, 10);
        let input = InputFile::open_as(&src, Format::Parquet, None).unwrap();
        let out = results_of(&input, &dest);
        assert_eq!(out.num_rows(), 0);
        assert_eq!(
            out.schema().fields().len(),
            1 + crate::engine::output::RESULT_COLUMNS.len()
        );
    }

    #[test]
    fn many_rows_are_written_in_several_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dest) = (
            dir.path().join("in.parquet"),
            dir.path().join("out.parquet"),
        );
        let rows = GROUP_ROWS + 10;
        fixtures::texts(&src, rows, 50_000);
        let input = InputFile::open_as(&src, Format::Parquet, None).unwrap();
        let out = results_of(&input, &dest);
        assert_eq!(out.num_rows(), rows);
        let text = out.column(0).as_string::<i32>();
        assert_eq!(text.value(rows - 1), format!("row {}", rows - 1));
        let file = File::open(&dest).unwrap();
        let meta = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .metadata()
            .clone();
        assert_eq!(meta.num_row_groups(), 2);
        assert_eq!(meta.row_group(0).num_rows() as usize, GROUP_ROWS);
    }

    #[test]
    fn vectors_are_fixed_size_float32_lists_with_nulls_for_failures() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("v.parquet");
        let mut w = VectorParquetWriter::create(&dest, None).unwrap();
        // A failure before the first vector: its size is not known yet.
        w.push(2, "a", RowStatus::Failed, Some("too long"), None, None)
            .unwrap();
        w.push(
            3,
            "b",
            RowStatus::Ok,
            None,
            Some(7),
            Some(&[0.5, -1.0, 2.0]),
        )
        .unwrap();
        w.push(4, "c", RowStatus::Ok, None, Some(9), Some(&[1.0, 2.0, 3.0]))
            .unwrap();
        let wrong = w.push(5, "d", RowStatus::Ok, None, None, Some(&[1.0]));
        let msg = wrong.unwrap_err().to_string();
        assert!(msg.contains("line 5") && msg.contains("has 1 values but the others have 3"));
        assert!(!dest.exists(), "nothing at the destination before finish");
        w.finish().unwrap();
        let out = fixtures::read(&dest);
        assert_eq!(out.schema(), vector_schema(3));
        assert_eq!(out.num_rows(), 3);
        let lines = out.column(0).as_primitive::<UInt64Type>();
        assert_eq!(lines.values().to_vec(), [2, 3, 4]);
        let errors = out.column(3).as_string::<i32>();
        assert_eq!(errors.value(0), "too long");
        assert!(errors.is_null(1));
        let tokens = out.column(4).as_primitive::<UInt32Type>();
        assert!(tokens.is_null(0));
        assert_eq!(tokens.value(2), 9);
        let vectors = out.column(5).as_fixed_size_list();
        assert!(vectors.is_null(0) && !vectors.is_null(1));
        let v = vectors.value(1);
        assert_eq!(
            v.as_primitive::<Float32Type>().values().to_vec(),
            [0.5, -1.0, 2.0]
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn vectors_stream_in_batches_and_a_file_without_any_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("v.parquet");
        let mut w = VectorParquetWriter::create(&dest, Some(64)).unwrap();
        let rows = 3 * VECTOR_BATCH_FLOATS / 64 + 5;
        let v: Vec<f32> = (0..64).map(|i| i as f32).collect();
        for i in 0..rows {
            w.push(
                i as u64 + 1,
                &i.to_string(),
                RowStatus::Ok,
                None,
                Some(1),
                Some(&v),
            )
            .unwrap();
        }
        w.finish().unwrap();
        let out = fixtures::read(&dest);
        assert_eq!(out.num_rows(), rows);
        let last = out.column(5).as_fixed_size_list().value(rows - 1);
        assert_eq!(last.as_primitive::<Float32Type>().value(63), 63.0);
        let file = File::open(&dest).unwrap();
        let meta = parquet::file::reader::SerializedFileReader::new(file).unwrap();
        let meta = parquet::file::reader::FileReader::metadata(&meta).clone();
        let chunks = meta.row_group(0).columns();
        let floats = chunks
            .iter()
            .find(|c| c.column_path().string() == "embedding.list.item");
        assert_eq!(floats.unwrap().compression(), Compression::UNCOMPRESSED);
        assert_eq!(chunks[1].compression(), Compression::SNAPPY);

        let none = dir.path().join("none.parquet");
        let mut w = VectorParquetWriter::create(&none, None).unwrap();
        w.push(2, "a", RowStatus::Failed, Some("401"), None, None)
            .unwrap();
        w.finish().unwrap();
        let out = fixtures::read(&none);
        assert_eq!(out.num_rows(), 1);
        assert!(out.column(5).is_null(0));
    }

    #[test]
    fn rows_without_vectors_are_encoded_as_they_come_when_the_width_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("v.parquet");
        let mut w = VectorParquetWriter::create(&dest, Some(1536)).unwrap();
        let rows = 3 * VECTOR_BATCH_ROWS + 7;
        let reason = "spend cap reached: the run stopped before this row was sent";
        for i in 0..rows {
            let id = i.to_string();
            let status = RowStatus::Skipped;
            w.push(i as u64 + 2, &id, status, Some(reason), None, None)
                .unwrap();
            assert!(w.valid.len() <= VECTOR_BATCH_ROWS, "row {i} still waits");
        }
        w.finish().unwrap();
        let out = fixtures::read(&dest);
        assert_eq!(out.schema(), vector_schema(1536));
        assert_eq!(out.num_rows(), rows);
        assert_eq!(out.column(5).null_count(), rows);
    }

    #[test]
    fn an_unfinished_vector_file_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("v.parquet");
        let mut w = VectorParquetWriter::create(&dest, Some(2)).unwrap();
        w.push(2, "a", RowStatus::Ok, None, None, Some(&[1.0, 2.0]))
            .unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

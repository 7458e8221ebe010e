//! The results file (CSV, JSON Lines through [`jsonl`], or Parquet through [`parquet`]): the
//! input's columns, then what happened to the row.
//!
//! Rows are written once, in input order, when the run ends (the runner merges the input with
//! its journal), to a temporary file beside the destination that is renamed over it only when
//! the last row is written. A run
//! that dies or is refused half-way never leaves a half-written results file where the user
//! expects a complete one, and never overwrites the previous complete one.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use csv::StringRecord;

use crate::base::error::{Error, describe_io};
use crate::base::format::Format;
use crate::base::money::format_cost;
use crate::base::record::RowResult;
use crate::engine::derived::DerivedColumns;
use crate::engine::expect::PassRate;
use crate::engine::input::{InputFile, JsonCells, Row};

pub mod jsonl;
pub mod parquet;
pub mod vectors;

/// Columns added after the input's own, in this order.
pub const RESULT_COLUMNS: [&str; 13] = [
    "output",
    "status",
    "error",
    "attempts",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_usd",
    "model",
    "finish_reason",
    "cached",
];

/// Writes the results CSV through a temporary file that becomes the destination on
/// [`ResultsWriter::finish`]; dropped unfinished, it removes the temporary file.
pub struct ResultsWriter {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<Sink>,
    buf: StringRecord,
    /// Neutralise cells that a spreadsheet would run as formulas.
    sanitize: bool,
    /// Set once the temporary file has become the destination.
    done: bool,
    /// `out.*` and `match` columns, when the run has `--schema` or `--expect`.
    derived: Option<DerivedColumns>,
}

/// Where the rows go, in the results' format.
enum Sink {
    Csv(Box<csv::Writer<BufWriter<File>>>),
    Jsonl(BufWriter<File>, jsonl::Encoder),
    Parquet(Box<parquet::ResultsSink>),
}

impl ResultsWriter {
    /// Creates the temporary file and writes the header. Called before any request is sent, so
    /// an unwritable destination fails at once. The format follows the extension (CSV unless it
    /// is `.jsonl` or `.ndjson`).
    pub fn create(path: &Path, input_headers: &[String], sanitize: bool) -> Result<Self, Error> {
        Self::create_with(path, input_headers, sanitize, None)
    }

    /// Like [`ResultsWriter::create`], with the derived columns after the standard ones.
    pub fn create_with(
        path: &Path,
        input_headers: &[String],
        sanitize: bool,
        derived: Option<DerivedColumns>,
    ) -> Result<Self, Error> {
        let format = Format::from_extension(path).unwrap_or_default();
        Self::create_as(path, format, input_headers, sanitize, derived)
    }

    /// [`ResultsWriter::create_with`] in `format`. Formula neutralising is for spreadsheets, so
    /// JSON Lines results are written as they are.
    pub fn create_as(
        path: &Path,
        format: Format,
        input_headers: &[String],
        sanitize: bool,
        derived: Option<DerivedColumns>,
    ) -> Result<Self, Error> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(Error::Usage(format!(
                "cannot write results to {}: the folder {} does not exist",
                path.display(),
                dir.display()
            )));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "results.csv".into());
        // A fixed name: a run killed before it could clean up leaves one stale file, which the
        // next run of the same job overwrites.
        let tmp = dir.join(format!(".{name}.partial"));
        Self::open_at(path, tmp, format, input_headers, sanitize, derived)
    }

    /// A writer for results on stdout (`-o -`): they are written to `tmp` and copied to stdout
    /// by [`ResultsWriter::finish`], so a pipeline reads complete results in input order.
    pub fn create_for_stdout(
        tmp: &Path,
        format: Format,
        input_headers: &[String],
        sanitize: bool,
        derived: Option<DerivedColumns>,
    ) -> Result<Self, Error> {
        let path = Path::new("-");
        Self::open_at(
            path,
            tmp.to_path_buf(),
            format,
            input_headers,
            sanitize,
            derived,
        )
    }

    fn open_at(
        path: &Path,
        tmp: PathBuf,
        format: Format,
        input_headers: &[String],
        sanitize: bool,
        derived: Option<DerivedColumns>,
    ) -> Result<Self, Error> {
        let file = File::create(&tmp).map_err(|e| {
            Error::Usage(format!(
                "cannot write results to {}: {}",
                path.display(),
                describe_io(&e)
            ))
        })?;
        let file = BufWriter::with_capacity(256 * 1024, file);
        let mut header = result_header(input_headers);
        for col in derived.iter().flat_map(DerivedColumns::names) {
            let mut name = col;
            while header.contains(&name) {
                name = format!("result_{name}");
            }
            header.push(name);
        }
        let mut this = ResultsWriter {
            path: path.to_path_buf(),
            tmp,
            writer: None,
            buf: StringRecord::new(),
            sanitize: sanitize && format == Format::Csv,
            done: false,
            derived,
        };
        this.writer = Some(match format {
            Format::Csv => {
                let mut writer = csv::Writer::from_writer(file);
                writer
                    .write_record(&header)
                    .map_err(|e| this.write_error(e))?;
                Sink::Csv(Box::new(writer))
            }
            Format::Jsonl => Sink::Jsonl(file, jsonl::Encoder::new(&header, input_headers.len())),
            Format::Parquet => Sink::Parquet(Box::new(parquet::ResultsSink::new(
                file,
                &header,
                input_headers.len(),
            ))),
        });
        Ok(this)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one input row with its result.
    pub fn write_row(&mut self, row: &Row, r: &RowResult) -> Result<(), Error> {
        self.write_cells(&row.record, &row.json_cells, r)
    }

    /// Appends one row: its input fields, then the result columns.
    pub fn write(&mut self, input: &StringRecord, r: &RowResult) -> Result<(), Error> {
        self.write_cells(input, &JsonCells::default(), r)
    }

    fn write_cells(
        &mut self,
        input: &StringRecord,
        json_cells: &JsonCells,
        r: &RowResult,
    ) -> Result<(), Error> {
        let mut cost = String::new();
        if let Some(c) = r.cost {
            cost = format_cost(c);
        }
        // Cached tokens (read from the prompt cache) are part of `prompt_tokens`, reasoning
        // tokens part of `completion_tokens`.
        let [prompt, completion, cached, reasoning] = match r.usage {
            Some(u) => [
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_tokens,
                u.reasoning_tokens,
            ]
            .map(|n| n.to_string()),
            None => Default::default(),
        };
        let latency = r
            .latency
            .map(|l| l.as_millis().to_string())
            .unwrap_or_default();
        let attempts = r.attempts.to_string();
        self.buf.clear();
        for field in input.iter() {
            self.buf.push_field(field);
        }
        // What the server sent is untrusted: a model's answer can carry a formula.
        fn text(s: &str, sanitize: bool) -> std::borrow::Cow<'_, str> {
            if sanitize {
                neutralize_formula(s)
            } else {
                s.into()
            }
        }
        let sanitize = self.sanitize;
        let (output, error) = (text(&r.output, sanitize), text(&r.error, sanitize));
        let (model, finish) = (text(&r.model, sanitize), text(&r.finish_reason, sanitize));
        for field in [
            &*output,
            r.status.as_str(),
            &*error,
            &attempts,
            &latency,
            &prompt,
            &completion,
            &cached,
            &reasoning,
            &cost,
            &*model,
            &*finish,
            if r.cached { "true" } else { "false" },
        ] {
            self.buf.push_field(field);
        }
        if let Some(d) = self.derived.as_mut() {
            for cell in d.cells(input, r) {
                self.buf.push_field(&text(&cell, sanitize));
            }
        }
        let written = match self.writer.as_mut().expect("writer is open until finish") {
            Sink::Csv(w) => w.write_record(&self.buf).map_err(WriteFailure::from),
            Sink::Jsonl(w, enc) => enc.write(w, &self.buf, json_cells).map_err(WriteFailure),
            Sink::Parquet(sink) => sink.write(&self.buf).map_err(WriteFailure),
        };
        written.map_err(|e| self.write_error(e))
    }

    /// Parquet results of a Parquet input keep its columns' types (read from its footer);
    /// otherwise input columns are text. Call before the first row.
    pub fn keep_input_types(&mut self, input: &InputFile) -> Result<(), Error> {
        if let Some(Sink::Parquet(sink)) = self.writer.as_mut()
            && input.format == Format::Parquet
        {
            let schema = crate::engine::input::parquet::schema(&input.path)?;
            sink.keep_input_types(&schema);
        }
        Ok(())
    }

    /// The `--expect` pass rate over the rows written so far.
    pub fn pass_rate(&self) -> Option<PassRate> {
        self.derived.as_ref().and_then(DerivedColumns::pass_rate)
    }

    /// Flushes, syncs and renames the temporary file over the destination.
    pub fn finish(mut self) -> Result<PathBuf, Error> {
        let buffered = match self.writer.take().expect("finish is called once") {
            Sink::Csv(w) => w
                .into_inner()
                .map_err(|e| self.write_error(e.into_error()))?,
            Sink::Jsonl(w, _) => w,
            Sink::Parquet(sink) => sink.finish().map_err(|e| self.write_error(e))?,
        };
        let file = buffered
            .into_inner()
            .map_err(|e| self.write_error(e.into_error()))?;
        if crate::base::format::is_std(&self.path) {
            drop(file);
            crate::engine::stdio::copy_to_stdout(&self.tmp).map_err(|e| self.write_error(e))?;
            // `done` stays false: dropping removes the temporary file.
            return Ok(self.path.clone());
        }
        file.sync_all().map_err(|e| self.write_error(e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| self.write_error(e))?;
        self.done = true;
        Ok(self.path.clone())
    }

    fn write_error(&self, e: impl Into<WriteFailure>) -> Error {
        let e: WriteFailure = e.into();
        Error::Io {
            context: format!("cannot write results to {}", self.path.display()),
            source: e.0,
        }
    }
}

impl Drop for ResultsWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

struct WriteFailure(std::io::Error);

impl From<std::io::Error> for WriteFailure {
    fn from(e: std::io::Error) -> Self {
        WriteFailure(e)
    }
}

impl From<csv::Error> for WriteFailure {
    fn from(e: csv::Error) -> Self {
        WriteFailure(std::io::Error::other(e))
    }
}

/// The results header. A result column whose name the input already uses gets a `result_`
/// prefix, so no column is ever shadowed.
pub fn result_header(input_headers: &[String]) -> Vec<String> {
    let mut header: Vec<String> = input_headers.to_vec();
    for col in RESULT_COLUMNS {
        let mut name = col.to_string();
        while header.contains(&name) {
            name = format!("result_{name}");
        }
        header.push(name);
    }
    header
}

/// Fails now, before anything is spent, if a file given to `flag` could not be written at the
/// end: its folder must exist, it must not be a folder, and it must open for writing (a file
/// created to find out is removed again).
pub fn check_writable(path: &Path, flag: &str) -> Result<(), Error> {
    if crate::base::format::is_std(path) {
        // `-` is stdout, for every output option.
        return Ok(());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Error::Usage(format!(
            "cannot write {flag} {}: the folder {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    if path.is_dir() {
        return Err(Error::Usage(format!(
            "cannot write {flag} {}: it is a folder; give a file name",
            path.display()
        )));
    }
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| {
            Error::Usage(format!(
                "cannot write {flag} {}: {}",
                path.display(),
                describe_io(&e)
            ))
        })?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Prefixes a cell that starts like a spreadsheet formula (`=`, `+`, `-`, `@`, tab, carriage
/// return) with `'`, which spreadsheets show as text. OWASP's advice for CSV injection.
pub fn neutralize_formula(s: &str) -> std::borrow::Cow<'_, str> {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}").into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_neutralised_only_at_the_start() {
        for bad in ["=1+1", "+SUM(A1)", "-2", "@cmd", "\tx", "\rx"] {
            assert_eq!(neutralize_formula(bad), format!("'{bad}"));
        }
        for fine in ["positive", "a=b", " =x", ""] {
            assert_eq!(neutralize_formula(fine), fine);
        }
    }

    #[test]
    fn sanitising_applies_to_answers_not_input_cells() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.csv");
        let mut w = ResultsWriter::create(&dest, &["a".into()], true).unwrap();
        let mut r = RowResult::skipped(0, "1".into(), "m", "");
        r.output = "=HYPERLINK(\"http://x\")".into();
        w.write(&StringRecord::from(vec!["=input"]), &r).unwrap();
        w.finish().unwrap();
        let text = std::fs::read_to_string(&dest).unwrap();
        assert!(text.contains("=input,\"'=HYPERLINK"), "{text}");
    }

    #[test]
    fn colliding_result_columns_are_prefixed() {
        let h = result_header(&["id".into(), "status".into()]);
        assert_eq!(h[0..2], ["id", "status"]);
        assert!(h.contains(&"result_status".to_string()));
        assert_eq!(h.len(), 2 + RESULT_COLUMNS.len());
    }

    #[test]
    fn nothing_appears_at_the_destination_until_finish() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.csv");
        let mut w = ResultsWriter::create(&dest, &["a".into()], true).unwrap();
        let r = RowResult::skipped(0, "1".into(), "m", "stopped");
        w.write(&StringRecord::from(vec!["x"]), &r).unwrap();
        assert!(!dest.exists());
        w.finish().unwrap();
        let text = std::fs::read_to_string(&dest).unwrap();
        assert!(text.starts_with("a,output,status,error"), "{text}");
        assert!(text.contains("x,,skipped,stopped,0"), "{text}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropped_writer_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.csv");
        drop(ResultsWriter::create(&dest, &["a".into()], true).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn missing_folder_is_a_clear_error() {
        let msg = ResultsWriter::create(Path::new("/nonexistent/dir/out.csv"), &[], true)
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("does not exist"), "{msg}");
    }
}

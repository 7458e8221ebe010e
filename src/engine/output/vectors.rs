//! Where `batch embed` writes its vectors: one [`VectorSink`] per format, chosen by the output's
//! extension ([`create`]). Rows arrive once, in input order, when the run ends (as results do).
//!
//! - `.jsonl`: `{"id": .., "status": "ok", "tokens": 7, "embedding": [..]}` a line; a failed row
//!   has `"embedding": null` and its `"error"`.
//! - `.npy`: a float32 matrix in NumPy's format 1.0, one row per input row in input order, a
//!   failed row all NaN; beside it `<out>.ids.csv` (`id,status,error`), its rows in the same order.
//! - `.csv`: `id,status,error,tokens,embedding`, the embedding as a JSON array cell.
//! - `.parquet` or `.pq` (the default): `line, id, status, error, tokens, embedding`, the embedding a
//!   fixed-size list of float32 (null for a failed row), in row groups as rows arrive.
//!
//! Each file is written to a temporary file beside the destination and renamed over it by
//! [`VectorSink::finish`], so a run that dies never leaves half a file where a whole one is
//! expected.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::base::error::{Error, describe_io};
use crate::base::format::is_std;
use crate::base::record::RowStatus;
use crate::engine::output::parquet::VectorParquetWriter;

/// One row's vector (or why it has none), as a sink receives it.
pub struct VectorRow<'a> {
    /// 1-based line of the input where the row starts.
    pub line: u64,
    pub id: &'a str,
    pub status: RowStatus,
    pub error: Option<&'a str>,
    pub tokens: Option<u32>,
    pub embedding: Option<&'a [f32]>,
}

/// Writes vectors, one row at a time, in input order.
pub trait VectorSink {
    fn push(&mut self, row: &VectorRow<'_>) -> Result<(), Error>;
    /// Completes the file and puts it in place.
    fn finish(self: Box<Self>) -> Result<(), Error>;
}

/// The output formats of `batch embed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorFormat {
    Jsonl,
    Npy,
    Csv,
    Parquet,
}

impl VectorFormat {
    /// The format `path`'s extension names; stdout (`-`) is JSON Lines.
    pub fn of(path: &Path) -> Result<Self, Error> {
        if is_std(path) {
            return Ok(VectorFormat::Jsonl);
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("jsonl" | "ndjson") => Ok(VectorFormat::Jsonl),
            Some("npy") => Ok(VectorFormat::Npy),
            Some("csv") => Ok(VectorFormat::Csv),
            // `.pq` as for `batch run` (base::format).
            Some("parquet" | "pq") => Ok(VectorFormat::Parquet),
            _ => Err(Error::Usage(format!(
                "-o {}: name the vectors' format by the extension: .parquet (or .pq), .jsonl, \
                 .npy (with an .ids.csv beside it) or .csv",
                path.display()
            ))),
        }
    }
}

/// The sink for `path`, its temporary file created now (so an unwritable destination fails
/// before anything is sent). `dims`: the vectors' width when known (Parquet fixes it in the
/// schema; see [`VectorParquetWriter::create`]).
pub fn create(path: &Path, dims: Option<usize>) -> Result<Box<dyn VectorSink + Send>, Error> {
    match VectorFormat::of(path)? {
        VectorFormat::Jsonl if is_std(path) => Ok(Box::new(JsonlSink {
            out: Box::new(BufWriter::new(std::io::stdout())),
            file: None,
        })),
        VectorFormat::Jsonl => {
            let file = TempFile::create(path)?;
            Ok(Box::new(JsonlSink {
                out: Box::new(BufWriter::new(file.handle()?)),
                file: Some(file),
            }))
        }
        VectorFormat::Npy => Ok(Box::new(NpySink::create(path)?)),
        VectorFormat::Csv => Ok(Box::new(CsvSink::create(path)?)),
        VectorFormat::Parquet => Ok(Box::new(ParquetSink(VectorParquetWriter::create(
            path, dims,
        )?))),
    }
}

/// `.parquet`: the vectors as a fixed-size list of float32, beside line, id, status, error and
/// tokens ([`VectorParquetWriter`]), written in row groups as rows arrive.
struct ParquetSink(VectorParquetWriter);

impl VectorSink for ParquetSink {
    fn push(&mut self, row: &VectorRow<'_>) -> Result<(), Error> {
        let r = row;
        self.0
            .push(r.line, r.id, r.status, r.error, r.tokens, r.embedding)
    }

    fn finish(self: Box<Self>) -> Result<(), Error> {
        self.0.finish()
    }
}

/// The id list written beside an `.npy`: `out.npy` -> `out.ids.csv`.
pub fn ids_path(npy: &Path) -> PathBuf {
    npy.with_extension("ids.csv")
}

/// A file written under a temporary name and renamed into place on [`TempFile::commit`];
/// removed if dropped before.
struct TempFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
}

impl TempFile {
    fn create(path: &Path) -> Result<Self, Error> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "vectors".into());
        let tmp = path.with_file_name(format!(".{name}.partial"));
        let file = File::create(&tmp).map_err(|e| write_error(path, &e))?;
        Ok(TempFile {
            path: path.to_path_buf(),
            tmp,
            file: Some(file),
        })
    }

    fn handle(&self) -> Result<File, Error> {
        self.file
            .as_ref()
            .expect("open until committed")
            .try_clone()
            .map_err(|e| write_error(&self.path, &e))
    }

    fn commit(mut self) -> Result<(), Error> {
        if let Some(f) = self.file.take() {
            f.sync_all().map_err(|e| write_error(&self.path, &e))?;
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|e| write_error(&self.path, &e))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn write_error(path: &Path, e: &std::io::Error) -> Error {
    Error::Usage(format!(
        "cannot write {}: {}",
        path.display(),
        describe_io(e)
    ))
}

/// `{"id":..,"status":..,"tokens":..,"embedding":[..]}` per line.
struct JsonlSink {
    out: Box<dyn Write + Send>,
    file: Option<TempFile>,
}

impl JsonlSink {
    fn target(&self) -> PathBuf {
        self.file
            .as_ref()
            .map_or_else(|| PathBuf::from("-"), |f| f.path.clone())
    }
}

/// One line of the JSON Lines output; floats are written as float32 (shortest form that reads
/// back to the same value), not widened to float64.
#[derive(serde::Serialize)]
struct Line<'a> {
    id: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    tokens: Option<u32>,
    embedding: Option<&'a [f32]>,
}

impl VectorSink for JsonlSink {
    fn push(&mut self, row: &VectorRow<'_>) -> Result<(), Error> {
        let line = Line {
            id: row.id,
            status: row.status.as_str(),
            error: row.error,
            tokens: row.tokens,
            embedding: row.embedding,
        };
        serde_json::to_writer(&mut self.out, &line)
            .map_err(std::io::Error::from)
            .and_then(|_| self.out.write_all(b"\n"))
            .map_err(|e| write_error(&self.target(), &e))
    }

    fn finish(mut self: Box<Self>) -> Result<(), Error> {
        self.out
            .flush()
            .map_err(|e| write_error(&self.target(), &e))?;
        match self.file.take() {
            Some(f) => f.commit(),
            None => Ok(()),
        }
    }
}

/// Room kept for the `.npy` header, rewritten with the real shape at the end: the shape of a
/// billion rows of 100,000 floats fits with room to spare, and 128 keeps the data 64-aligned.
const NPY_HEADER_LEN: usize = 128;

/// NumPy format 1.0: magic, version, header length, a Python dict literal padded with spaces
/// to [`NPY_HEADER_LEN`], then the rows as little-endian float32.
pub fn npy_header(rows: u64, dims: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dims}), }}");
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    let len = (NPY_HEADER_LEN - 10) as u16;
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.resize(NPY_HEADER_LEN - 1, b' ');
    h.push(b'\n');
    h
}

/// The matrix and its id list. The width is the first vector's; rows failed before it is
/// known are counted and written as NaN once it is.
struct NpySink {
    file: TempFile,
    out: BufWriter<File>,
    ids: csv::Writer<BufWriter<File>>,
    ids_file: TempFile,
    rows: u64,
    dims: Option<usize>,
    /// Rows without a vector not yet written (the width was unknown).
    pending_nan: u64,
}

impl NpySink {
    fn create(path: &Path) -> Result<Self, Error> {
        let file = TempFile::create(path)?;
        let mut out = BufWriter::new(file.handle()?);
        out.write_all(&[0u8; NPY_HEADER_LEN])
            .map_err(|e| write_error(path, &e))?;
        let ids_path = ids_path(path);
        let ids_file = TempFile::create(&ids_path)?;
        let mut ids = csv::Writer::from_writer(BufWriter::new(ids_file.handle()?));
        ids.write_record(["id", "status", "error"])
            .map_err(|e| write_error(&ids_path, &e.into()))?;
        Ok(NpySink {
            file,
            out,
            ids,
            ids_file,
            rows: 0,
            dims: None,
            pending_nan: 0,
        })
    }

    fn write_nan(&mut self, rows: u64) -> Result<(), Error> {
        let nan = f32::NAN.to_le_bytes();
        for _ in 0..rows * self.dims.unwrap_or(0) as u64 {
            self.out
                .write_all(&nan)
                .map_err(|e| write_error(&self.file.path, &e))?;
        }
        Ok(())
    }
}

impl VectorSink for NpySink {
    fn push(&mut self, row: &VectorRow<'_>) -> Result<(), Error> {
        let path = self.file.path.clone();
        match (row.embedding, self.dims) {
            (Some(v), Some(d)) if v.len() != d => {
                return Err(Error::Usage(format!(
                    "{}: row {} has {} dimensions where earlier rows have {d}; a matrix needs \
                     one width (write .jsonl instead)",
                    path.display(),
                    row.id,
                    v.len()
                )));
            }
            (Some(v), dims) => {
                if dims.is_none() {
                    self.dims = Some(v.len());
                    let before = std::mem::take(&mut self.pending_nan);
                    self.write_nan(before)?;
                }
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                self.out
                    .write_all(&bytes)
                    .map_err(|e| write_error(&path, &e))?;
            }
            (None, Some(_)) => self.write_nan(1)?,
            (None, None) => self.pending_nan += 1,
        }
        self.rows += 1;
        self.ids
            .write_record([row.id, row.status.as_str(), row.error.unwrap_or("")])
            .map_err(|e| write_error(&self.ids_file.path, &e.into()))
    }

    fn finish(mut self: Box<Self>) -> Result<(), Error> {
        let path = self.file.path.clone();
        // No row had a vector: every row is NaN of width 0.
        let header = npy_header(self.rows, self.dims.unwrap_or(0));
        let io = |e: std::io::Error| write_error(&path, &e);
        self.out.flush().map_err(io)?;
        let mut f = self.file.handle()?;
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        f.write_all(&header).map_err(io)?;
        self.ids
            .flush()
            .map_err(|e| write_error(&self.ids_file.path, &e))?;
        let NpySink { file, ids_file, .. } = *self;
        ids_file.commit()?;
        file.commit()
    }
}

/// `id,status,error,tokens,embedding` with the embedding as a JSON array cell.
struct CsvSink {
    file: TempFile,
    out: csv::Writer<BufWriter<File>>,
}

impl CsvSink {
    fn create(path: &Path) -> Result<Self, Error> {
        let file = TempFile::create(path)?;
        let mut out = csv::Writer::from_writer(BufWriter::new(file.handle()?));
        out.write_record(["id", "status", "error", "tokens", "embedding"])
            .map_err(|e| write_error(path, &e.into()))?;
        Ok(CsvSink { file, out })
    }
}

impl VectorSink for CsvSink {
    fn push(&mut self, row: &VectorRow<'_>) -> Result<(), Error> {
        let embedding = match row.embedding {
            Some(v) => {
                serde_json::to_string(v).map_err(|e| write_error(&self.file.path, &e.into()))?
            }
            None => String::new(),
        };
        let tokens = row.tokens.map(|t| t.to_string()).unwrap_or_default();
        self.out
            .write_record([
                row.id,
                row.status.as_str(),
                row.error.unwrap_or(""),
                &tokens,
                &embedding,
            ])
            .map_err(|e| write_error(&self.file.path, &e.into()))
    }

    fn finish(mut self: Box<Self>) -> Result<(), Error> {
        self.out
            .flush()
            .map_err(|e| write_error(&self.file.path, &e))?;
        self.file.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(id: &'a str, v: Option<&'a [f32]>) -> VectorRow<'a> {
        VectorRow {
            line: 2,
            id,
            status: if v.is_some() {
                RowStatus::Ok
            } else {
                RowStatus::Failed
            },
            error: v.is_none().then_some("request rejected"),
            tokens: v.map(|_| 3),
            embedding: v,
        }
    }

    /// Reads a format 1.0 `.npy` of float32 as NumPy would: (shape, values).
    fn read_npy(bytes: &[u8]) -> ((u64, u64), Vec<f32>) {
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + len) % 64, 0, "data starts 64-aligned");
        let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
        assert!(header.ends_with('\n') && header.contains("'descr': '<f4'"));
        assert!(header.contains("'fortran_order': False"));
        let shape = header.split("'shape': (").nth(1).unwrap();
        let shape = &shape[..shape.find(')').unwrap()];
        let dims: Vec<u64> = shape
            .split(',')
            .map(|d| d.trim().parse().unwrap())
            .collect();
        let values: Vec<f32> = bytes[10 + len..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(values.len() as u64, dims[0] * dims[1]);
        ((dims[0], dims[1]), values)
    }

    #[test]
    fn npy_is_a_valid_matrix_with_nan_rows_and_an_id_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.npy");
        let mut sink = create(&path, None).unwrap();
        sink.push(&row("a", None)).unwrap();
        sink.push(&row("b", Some(&[1.0, 2.0]))).unwrap();
        sink.push(&row("c", None)).unwrap();
        assert!(!path.exists(), "nothing in place before finish");
        sink.finish().unwrap();
        let ((rows, dims), v) = read_npy(&std::fs::read(&path).unwrap());
        assert_eq!((rows, dims), (3, 2));
        assert!(v[0].is_nan() && v[1].is_nan() && v[4].is_nan() && v[5].is_nan());
        assert_eq!(&v[2..4], &[1.0, 2.0]);
        let ids = std::fs::read_to_string(dir.path().join("v.ids.csv")).unwrap();
        assert_eq!(
            ids,
            "id,status,error\na,failed,request rejected\nb,ok,\nc,failed,request rejected\n"
        );
    }

    #[test]
    fn npy_refuses_rows_of_another_width() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.npy");
        let mut sink = create(&path, None).unwrap();
        sink.push(&row("a", Some(&[1.0]))).unwrap();
        let e = sink.push(&row("b", Some(&[1.0, 2.0]))).unwrap_err();
        assert!(e.to_string().contains("2 dimensions"), "{e}");
        drop(sink);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "no leftovers"
        );
    }

    #[test]
    fn jsonl_and_csv_rows() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["v.jsonl", "v.csv"] {
            let path = dir.path().join(name);
            let mut sink = create(&path, None).unwrap();
            sink.push(&row("a", Some(&[0.5, -1.0]))).unwrap();
            sink.push(&row("b", None)).unwrap();
            sink.finish().unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            if name.ends_with("jsonl") {
                let lines: Vec<serde_json::Value> = text
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
                assert_eq!(lines[0]["embedding"], serde_json::json!([0.5, -1.0]));
                assert_eq!(lines[1]["status"], "failed");
                assert!(lines[1]["embedding"].is_null() && lines[1]["error"].is_string());
            } else {
                assert_eq!(
                    text,
                    "id,status,error,tokens,embedding\na,ok,,3,\"[0.5,-1.0]\"\n\
                     b,failed,request rejected,,\n"
                );
            }
        }
    }

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(
            VectorFormat::of(Path::new("-")).unwrap(),
            VectorFormat::Jsonl
        );
        assert_eq!(
            VectorFormat::of(Path::new("a.NPY")).unwrap(),
            VectorFormat::Npy
        );
        assert!(VectorFormat::of(Path::new("a.txt")).is_err());
        assert_eq!(
            VectorFormat::of(Path::new("a.parquet")).unwrap(),
            VectorFormat::Parquet
        );
        assert_eq!(
            VectorFormat::of(Path::new("a.pq")).unwrap(),
            VectorFormat::Parquet
        );
    }

    #[test]
    fn a_parquet_sink_puts_its_file_in_place_at_the_end_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.parquet");
        let mut sink = create(&path, None).unwrap();
        for (i, v) in [Some([1.0f32, 2.0]), None].iter().enumerate() {
            let row = VectorRow {
                line: i as u64 + 2,
                id: "x",
                status: if v.is_some() {
                    RowStatus::Ok
                } else {
                    RowStatus::Failed
                },
                error: v.is_none().then_some("refused"),
                tokens: Some(3),
                embedding: v.as_ref().map(|a| &a[..]),
            };
            sink.push(&row).unwrap();
        }
        assert!(!path.exists());
        sink.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));
    }
}

//! The rows a sweep sends: the first `--rows` rows of the input, copied into a temporary folder
//! that is removed when the sweep ends (with shorter copies for the warm-up runs), their prompts
//! counted before anything is sent, and messages about those copies turned back into messages
//! about the user's input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::base::error::Error;
use crate::base::format::Format;
use crate::engine::input::InputFile;
use crate::engine::template::Prompts;
use crate::engine::tokens;
use crate::run::settings::RunConfig;

/// The sample of the input every measured run sends, in the sweep's work folder.
pub(super) struct Sample {
    work: WorkDir,
    input: PathBuf,
    format: Format,
    /// The copy of the first rows.
    pub(super) path: PathBuf,
    /// Rows in it: those asked for, or fewer if the input is shorter.
    pub(super) rows: u64,
    /// Prompt tokens of each of its rows.
    pub(super) prompt_tokens: Vec<u64>,
    /// Warm-up copies by their number of rows, each written when first needed.
    warmups: BTreeMap<u64, PathBuf>,
}

impl Sample {
    /// Copies the first `rows` rows of `cfg.input` into a new work folder and counts their
    /// prompts; rendering every prompt now makes a bad template fail before anything is sent.
    pub(super) fn take(cfg: &RunConfig, rows: u64) -> Result<Sample, Error> {
        let work = WorkDir::create()?;
        let path = work
            .path()
            .join(format!("sample.{}", cfg.input_format.extension()));
        let rows = write_head(&cfg.input, cfg.input_format, rows, &path)?;
        let prompt_tokens = count_prompts(cfg, &path).map_err(|e| relabel(e, &path, &cfg.input))?;
        Ok(Sample {
            work,
            input: cfg.input.clone(),
            format: cfg.input_format,
            path,
            rows,
            prompt_tokens,
            warmups: BTreeMap::new(),
        })
    }

    /// The work folder, where the runs write their results and state files.
    pub(super) fn dir(&self) -> &Path {
        self.work.path()
    }

    /// A copy of the first `rows` rows, for a warm-up run; written once for each size.
    pub(super) fn warmup(&mut self, rows: u64) -> Result<PathBuf, Error> {
        if let Some(path) = self.warmups.get(&rows) {
            return Ok(path.clone());
        }
        let path = self
            .work
            .path()
            .join(format!("warmup-{rows}.{}", self.format.extension()));
        write_head(&self.input, self.format, rows, &path)?;
        self.warmups.insert(rows, path.clone());
        Ok(path)
    }

    /// `e`, naming the user's input wherever it names a file of the work folder.
    pub(super) fn relabel(&self, e: Error) -> Error {
        relabel_any(e, self.work.path(), &self.input)
    }
}

/// Writes the header and the first `rows` records of `input` to `dest`, byte for byte as the
/// csv crate reads them (ragged or non-UTF-8 rows are copied as they are, for the runner's
/// pre-flight to report). Returns the number of data rows written.
fn write_head(input: &Path, format: Format, rows: u64, dest: &Path) -> Result<u64, Error> {
    if format == Format::Jsonl {
        return write_head_jsonl(input, rows, dest);
    }
    if format == Format::Parquet {
        return crate::engine::input::parquet::write_head(input, rows, dest);
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(input)
        .map_err(|e| csv_error(input, e))?;
    let mut writer = csv::WriterBuilder::new()
        .flexible(true)
        .from_path(dest)
        .map_err(|e| csv_error(dest, e))?;
    let mut record = csv::ByteRecord::new();
    let mut written = 0u64;
    let mut header = true;
    while written < rows
        && reader
            .read_byte_record(&mut record)
            .map_err(|e| csv_error(input, e))?
    {
        writer
            .write_byte_record(&record)
            .map_err(|e| csv_error(dest, e))?;
        if header {
            header = false;
        } else {
            written += 1;
        }
    }
    writer
        .flush()
        .map_err(|e| Error::io(format!("cannot write {}", dest.display()), e))?;
    if header {
        return Err(Error::Input(format!(
            "{} is empty: it needs a header row naming the columns, then one row per request",
            input.display()
        )));
    }
    Ok(written)
}

/// [`write_head`] for JSON Lines: the first `rows` lines that are not blank, as they are.
fn write_head_jsonl(input: &Path, rows: u64, dest: &Path) -> Result<u64, Error> {
    use std::io::{BufRead, Write};
    let file = std::fs::File::open(input).map_err(|e| Error::read(input, &e))?;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(dest)
            .map_err(|e| Error::io(format!("cannot write {}", dest.display()), e))?,
    );
    let mut written = 0u64;
    for line in std::io::BufReader::new(file).split(b'\n') {
        if written == rows {
            break;
        }
        let line = line.map_err(|e| Error::read(input, &e))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.write_all(&line)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|e| Error::io(format!("cannot write {}", dest.display()), e))?;
        written += 1;
    }
    out.flush()
        .map_err(|e| Error::io(format!("cannot write {}", dest.display()), e))?;
    if written == 0 {
        return Err(Error::Input(format!(
            "{} is empty: it needs one JSON object per line, one line per request",
            input.display()
        )));
    }
    Ok(written)
}

/// A csv crate error about `path`, as a read error or an input error.
fn csv_error(path: &Path, e: csv::Error) -> Error {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => Error::read(path, &io),
        other => Error::Input(format!("{}: {other:?}", path.display())),
    }
}

/// Prompt tokens of every row of the sample, counted as `--dry-run` counts them. Also checks
/// every row and renders every prompt, so a bad template fails before anything is sent.
fn count_prompts(cfg: &RunConfig, sample: &Path) -> Result<Vec<u64>, Error> {
    let input = InputFile::open_as(sample, cfg.input_format, cfg.id_column.as_deref())?;
    let prompts = Prompts::new(&cfg.prompt, cfg.system.as_deref(), &input)?;
    let mut counts = Vec::new();
    for row in input.rows()? {
        let row = row?;
        let r = prompts
            .render(&input, &row)
            .map_err(|e| Error::Input(format!("{}: line {}: {e}", sample.display(), row.line)))?;
        counts.push(u64::from(tokens::count_chat(
            &cfg.model,
            r.system.as_deref(),
            &r.user,
        )));
    }
    Ok(counts)
}

/// Messages about the sample file name the user's input instead (the lines are the same).
fn relabel(e: Error, sample: &Path, input: &Path) -> Error {
    let fix = |m: String| m.replace(&sample.display().to_string(), &input.display().to_string());
    match e {
        Error::Usage(m) => Error::Usage(fix(m)),
        Error::Input(m) => Error::Input(fix(m)),
        other => other,
    }
}

/// Like [`relabel`] for any file of the work folder (sample or warm-up).
fn relabel_any(e: Error, work: &Path, input: &Path) -> Error {
    let prefix = work.display().to_string();
    let fix = |m: String| {
        let mut out = m;
        while let Some(start) = out.find(&prefix) {
            let rest = &out[start + prefix.len()..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == ':' || c == ',')
                .unwrap_or(rest.len());
            out.replace_range(
                start..start + prefix.len() + end,
                &input.display().to_string(),
            );
        }
        out
    };
    match e {
        Error::Usage(m) => Error::Usage(fix(m)),
        Error::Input(m) => Error::Input(fix(m)),
        other => other,
    }
}

/// A folder under the system's temporary folder, removed with everything in it when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> Result<Self, Error> {
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut last = None;
        for i in 0..100u32 {
            let path = base.join(format!(
                "batch-bench-{}-{}",
                std::process::id(),
                nanos.wrapping_add(i)
            ));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(WorkDir(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    return Err(Error::io(
                        format!("cannot create a temporary folder in {}", base.display()),
                        e,
                    ));
                }
            }
        }
        Err(Error::io(
            "cannot create a temporary folder",
            last.unwrap_or_else(|| std::io::Error::other("name clash")),
        ))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_of_the_input_is_copied_with_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.csv");
        std::fs::write(&input, "id,text\n1,\"a, b\"\n2,\"multi\nline\"\n3,c\n").unwrap();
        let out = dir.path().join("head.csv");
        assert_eq!(
            write_head(&input, crate::base::format::Format::Csv, 2, &out).unwrap(),
            2
        );
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "id,text\n1,\"a, b\"\n2,\"multi\nline\"\n"
        );
        assert_eq!(
            write_head(&input, crate::base::format::Format::Csv, 10, &out).unwrap(),
            3
        );
        std::fs::write(&input, "").unwrap();
        assert!(write_head(&input, crate::base::format::Format::Csv, 10, &out).is_err());
    }
}

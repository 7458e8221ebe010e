//! Turning the input into batch input files: every row rendered and checked exactly as `run`
//! does (same pre-flight, same template, same `Provider::body`), the lines cut into batches
//! that fit the provider's limits.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::state::{BatchRecord, Phase, ProviderKind, ranges};
use super::{custom_id, input_line};
use crate::base::error::Error;
use crate::engine::input::InputFile;
use crate::engine::provider::{Provider, Request};
use crate::engine::template::Prompts;
use crate::run::runner::preflight::{PreflightOptions, preflight};
use crate::run::settings::RunConfig;

/// Per-batch limits in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub requests: u64,
    pub bytes: u64,
    /// Texts summed over a batch's requests (embeddings batches; `u64::MAX` for the others).
    pub inputs: u64,
}

/// What the rows come to.
pub struct Plan {
    pub rows: u64,
    /// Prompt tokens of every row (counted only when asked).
    pub prompt_tokens: u64,
    pub batches: Vec<BatchRecord>,
}

/// One line of batch input and what it carries.
pub struct Line<'a> {
    /// The rows it answers (followers of a shared text included).
    pub seqs: &'a [u64],
    /// The texts it sends (1 for a prompt).
    pub inputs: u64,
    pub text: &'a [u8],
    /// Its line in the batch's rows file, if the batches have one (embeddings).
    pub side: Option<&'a [u8]>,
}

/// Cuts lines into batches: a new batch starts when the next line would pass a limit.
pub struct Splitter {
    limits: Limits,
    kind: ProviderKind,
    /// Where the input files go; `None` only counts (dry run).
    dir: Option<PathBuf>,
    /// The number the first batch made here gets.
    first_number: usize,
    done: Vec<BatchRecord>,
    current: Option<Open>,
}

struct Open {
    record: BatchRecord,
    seqs: Vec<u64>,
    inputs: u64,
    writer: Option<BufWriter<File>>,
    /// The rows file beside the input (embeddings batches): which rows each line carries.
    side: Option<BufWriter<File>>,
}

/// The rows file of batch input `input-NNN.jsonl`: `input-NNN.rows.jsonl`.
pub fn rows_file(input_file: &str) -> String {
    match input_file.strip_suffix(".jsonl") {
        Some(stem) => format!("{stem}.rows.jsonl"),
        None => format!("{input_file}.rows.jsonl"),
    }
}

fn create(path: &Path) -> Result<BufWriter<File>, Error> {
    File::create(path)
        .map(BufWriter::new)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

fn write_line(w: &mut BufWriter<File>, line: &[u8]) -> Result<(), Error> {
    w.write_all(line)
        .and_then(|()| w.write_all(b"\n"))
        .map_err(|e| Error::io("cannot write a batch input file", e))
}

fn close_file(w: BufWriter<File>) -> Result<(), Error> {
    let file = w
        .into_inner()
        .map_err(|e| Error::io("cannot write a batch input file", e.into_error()))?;
    file.sync_all()
        .map_err(|e| Error::io("cannot write a batch input file", e))
}

impl Splitter {
    pub fn new(
        kind: ProviderKind,
        limits: Limits,
        dir: Option<&Path>,
        first_number: usize,
    ) -> Self {
        Splitter {
            limits,
            kind,
            dir: dir.map(Path::to_path_buf),
            first_number,
            done: Vec::new(),
            current: None,
        }
    }

    /// Bytes a line adds to a batch: the line and its newline (OpenAI's file), or the request
    /// and its comma in the create body (Anthropic).
    fn cost(&self, line: &[u8]) -> u64 {
        match self.kind {
            ProviderKind::OpenAi
            | ProviderKind::OpenAiResponses
            | ProviderKind::OpenAiEmbeddings
            | ProviderKind::Anthropic => line.len() as u64 + 1,
        }
    }

    /// Adds the line of row `seq`; `where_` names the row for the error if it cannot fit any
    /// batch.
    pub fn push(
        &mut self,
        seq: u64,
        line: &[u8],
        where_: &dyn Fn() -> String,
    ) -> Result<(), Error> {
        self.push_line(
            &Line {
                seqs: &[seq],
                inputs: 1,
                text: line,
                side: None,
            },
            where_,
        )
    }

    /// Adds a line carrying the rows `line.seqs` (an embeddings line carries many), with its
    /// rows-file line if there is one.
    pub fn push_line(&mut self, line: &Line, where_: &dyn Fn() -> String) -> Result<(), Error> {
        let cost = self.cost(line.text);
        if cost > self.limits.bytes {
            return Err(Error::Input(format!(
                "{}: its request is {cost} bytes, more than a batch may hold ({} bytes); shorten \
                 it, or send this input with `batch run`",
                where_(),
                self.limits.bytes
            )));
        }
        if line.inputs > self.limits.inputs {
            return Err(Error::Input(format!(
                "{}: its request holds {} texts, more than a batch may hold ({}); lower \
                 --max-inputs-per-request",
                where_(),
                line.inputs,
                self.limits.inputs
            )));
        }
        let full = self.current.as_ref().is_some_and(|c| {
            c.record.requests >= self.limits.requests
                || c.record.bytes + cost > self.limits.bytes
                || c.inputs + line.inputs > self.limits.inputs
        });
        if full {
            self.close()?;
        }
        if self.current.is_none() {
            self.open(line.side.is_some())?;
        }
        let open = self.current.as_mut().expect("a batch is open");
        if let Some(w) = open.writer.as_mut() {
            write_line(w, line.text)?;
        }
        if let (Some(w), Some(side)) = (open.side.as_mut(), line.side) {
            write_line(w, side)?;
        }
        open.record.requests += 1;
        open.record.bytes += cost;
        open.inputs += line.inputs;
        open.seqs.extend_from_slice(line.seqs);
        Ok(())
    }

    fn open(&mut self, side: bool) -> Result<(), Error> {
        let number = self.first_number + self.done.len();
        let name = format!("input-{number:03}.jsonl");
        let (writer, side) = match &self.dir {
            Some(d) => (
                Some(create(&d.join(&name))?),
                if side {
                    Some(create(&d.join(rows_file(&name)))?)
                } else {
                    None
                },
            ),
            None => (None, None),
        };
        self.current = Some(Open {
            record: BatchRecord {
                number,
                rows: Vec::new(),
                requests: 0,
                inputs: None,
                bytes: 0,
                input_file: name,
                phase: Phase::Written,
                input_file_id: None,
                batch_id: None,
                creating_since: None,
                status: None,
                counts: Default::default(),
                errors: Vec::new(),
                output_file: None,
                error_file: None,
                resubmits: None,
            },
            seqs: Vec::new(),
            inputs: 0,
            writer,
            side,
        });
        Ok(())
    }

    fn close(&mut self) -> Result<(), Error> {
        if let Some(mut open) = self.current.take() {
            for w in [open.writer.take(), open.side.take()].into_iter().flatten() {
                close_file(w)?;
            }
            open.seqs.sort_unstable();
            open.record.rows = ranges(&open.seqs);
            if self.kind == ProviderKind::OpenAiEmbeddings {
                open.record.inputs = Some(open.inputs);
            }
            self.done.push(open.record);
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<Vec<BatchRecord>, Error> {
        self.close()?;
        Ok(self.done)
    }
}

/// Checks and renders every row and cuts the requests into batches; with `dir`, writes the
/// batch input files there. Nothing is sent.
pub fn plan(
    cfg: &RunConfig,
    provider: &dyn Provider,
    kind: ProviderKind,
    limits: Limits,
    dir: Option<&Path>,
    count_tokens: bool,
) -> Result<Plan, Error> {
    let (format, id) = (cfg.input_format, cfg.id_column.as_deref());
    let input = InputFile::open_with(&cfg.input, format, id, cfg.read)?;
    let prompts = Arc::new(Prompts::new(&cfg.prompt, cfg.system.as_deref(), &input)?);
    // The same pre-flight as `run`: every problem listed with its line before anything else,
    // bad `--expect` cells included (answers are compared with them when collected).
    let opts = PreflightOptions::of(cfg, &input, count_tokens)?;
    let checked = preflight(&input, &prompts, &opts)?;
    let mut splitter = Splitter::new(kind, limits, dir, 1);
    let loader = cfg.attach_loader();
    for row in input.rows()? {
        let row = row?;
        let rendered = prompts.render(&input, &row).map_err(|e| {
            Error::Input(format!(
                "{}: line {}: {e} (did the file change while it was read?)",
                input.path.display(),
                row.line
            ))
        })?;
        let mut request = Request {
            model: cfg.model.clone(),
            system: rendered.system,
            user: rendered.user,
            max_tokens: cfg.max_tokens,
            temperature: cfg.temperature,
            schema: cfg.schema.clone(),
            parts: Vec::new(),
        };
        if !rendered.parts.is_empty() {
            request.attach(&rendered.parts, &loader).map_err(|e| {
                Error::Input(format!("{}: line {}: {e}", input.path.display(), row.line))
            })?;
        }
        let body = provider.body(&request);
        let line = input_line(kind, &custom_id(row.seq), &body);
        let (path, line_no) = (&input.path, row.line);
        splitter.push(row.seq, &line, &|| {
            format!("{}: line {line_no}", path.display())
        })?;
    }
    Ok(Plan {
        rows: checked.rows,
        prompt_tokens: checked.prompt_tokens,
        batches: splitter.finish()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_request_count_and_on_bytes() {
        let limits = Limits {
            requests: 3,
            bytes: 1000,
            inputs: u64::MAX,
        };
        let mut s = Splitter::new(ProviderKind::OpenAi, limits, None, 1);
        for seq in 0..7 {
            s.push(seq, b"0123456789", &|| "row".into()).unwrap();
        }
        let b = s.finish().unwrap();
        assert_eq!(b.iter().map(|b| b.requests).collect::<Vec<_>>(), [3, 3, 1]);
        assert_eq!(b[1].rows, vec![[3, 6]]);
        assert_eq!(b[2].number, 3);
        assert_eq!(b[0].bytes, 33);

        let limits = Limits {
            requests: 100,
            bytes: 25,
            inputs: u64::MAX,
        };
        let mut s = Splitter::new(ProviderKind::OpenAi, limits, None, 1);
        for seq in 0..5 {
            s.push(seq, b"0123456789", &|| "row".into()).unwrap();
        }
        let b = s.finish().unwrap();
        assert_eq!(b.iter().map(|b| b.requests).collect::<Vec<_>>(), [2, 2, 1]);
        let e = Splitter::new(ProviderKind::OpenAi, limits, None, 1)
            .push(0, &[b'x'; 40], &|| "in.csv: line 2".into())
            .unwrap_err();
        assert!(e.to_string().contains("in.csv: line 2"), "{e}");
    }

    #[test]
    fn embeddings_lines_split_on_texts_too_and_carry_all_their_rows() {
        let limits = Limits {
            requests: 100,
            bytes: 10_000,
            inputs: 5,
        };
        let mut s = Splitter::new(ProviderKind::OpenAiEmbeddings, limits, None, 1);
        for (k, seqs) in [vec![0, 1], vec![2, 3, 9], vec![4], vec![5, 6]]
            .iter()
            .enumerate()
        {
            let line = Line {
                seqs,
                inputs: 2,
                text: b"{}",
                side: Some(b"{}"),
            };
            s.push_line(&line, &|| format!("line {k}")).unwrap();
        }
        let b = s.finish().unwrap();
        assert_eq!(b.iter().map(|b| b.requests).collect::<Vec<_>>(), [2, 2]);
        assert_eq!(b[0].inputs, Some(4));
        assert_eq!(b[0].rows, vec![[0, 4], [9, 10]]);
        assert_eq!(b[1].rows, vec![[4, 7]]);
        assert_eq!(rows_file("input-002.jsonl"), "input-002.rows.jsonl");
    }

    #[test]
    fn a_line_with_more_texts_than_a_batch_holds_is_refused() {
        let limits = Limits {
            requests: 100,
            bytes: 10_000,
            inputs: 5,
        };
        let mut s = Splitter::new(ProviderKind::OpenAiEmbeddings, limits, None, 1);
        let line = Line {
            seqs: &[0, 1, 2, 3, 4, 5],
            inputs: 6,
            text: b"{}",
            side: Some(b"{}"),
        };
        let e = s.push_line(&line, &|| "in.csv: line 2".into()).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("in.csv: line 2") && e.contains("6 texts"), "{e}");
        assert!(s.finish().unwrap().is_empty(), "nothing was written");
    }
}

//! `batch embed --via batch`: embeddings through the OpenAI Batch API, at half the price.
//!
//! Rows are packed exactly as the live `batch embed` packs them ([`crate::run::embed::pack`]):
//! each line of the batch input is one `/v1/embeddings` body whose `input` holds the texts of
//! many rows, its `custom_id` `req-<n>`. Which rows each line answers (a text shared by several
//! rows answers them all) is written line for line in `input-NNN.rows.jsonl` beside the batch's
//! input file. Lines are cut into batches by OpenAI's per-batch limits: 50,000 requests, 200 MB,
//! and 50,000 texts in all. Rows that can never be sent (an empty text, a text over
//! `--max-input-tokens`) fail at submission and are kept in `local-failures.jsonl`.
//!
//! `collect` reads the output and error files line by line, in input order of the rows, and
//! writes the same vectors file as the live command, priced at the batch discount. A line the
//! provider failed (for example a 400 naming one of its inputs) fails every row it carries with
//! the provider's reason; `collect --resubmit-failed` sends each row of such a line again as a
//! line of its own, so only the row at fault fails again (and, refused alone, is not resent).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::plan::{Limits, Line, Splitter, rows_file};
use super::state::{self, BatchState, EmbedJob, Phase, ProviderKind};
use super::{Api, BATCH_DISCOUNT, Collect, batch_price, human_bytes};
use crate::base::error::{Error, ExitStatus};
use crate::base::human;
use crate::base::record::{RowResult, RowStatus};
use crate::base::secret::ApiKey;
use crate::base::usage::Usage;
use crate::engine::input::InputFile;
use crate::engine::output::vectors::VectorRow;
use crate::engine::provider::embeddings::{Embeddings, body, decode, native_dims, parse};
use crate::run::connection::Connection;
use crate::run::embed::EmbedConfig;
use crate::run::embed::pack::{Item, Pack, Packer};
use crate::run::settings::Resume;
use crate::run::summary::Stats;

/// Where the rows failed at submission are kept, in the files folder.
const LOCAL_FAILURES: &str = "local-failures.jsonl";

/// OpenAI's cap on the texts of one `/v1/embeddings` batch, over all its requests.
pub const MAX_INPUTS_PER_BATCH: u64 = 50_000;

/// The `custom_id` of line `n`.
fn line_id(n: u64) -> String {
    format!("req-{n}")
}

fn line_number(id: &str) -> Option<u64> {
    id.strip_prefix("req-")?.parse().ok()
}

/// A line of a rows file: for each text of line `custom_id`, the rows it answers (the first is
/// the row it was read from, the others rows with the same text) and its tokens.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct LineRows {
    custom_id: String,
    rows: Vec<Vec<u64>>,
    tokens: Vec<u64>,
}

/// A row failed at submission.
#[derive(Serialize, Deserialize)]
struct LocalFailure {
    seq: u64,
    error: String,
}

/// What the rows came to.
struct EmbedPlan {
    rows: u64,
    /// Texts sent, and their tokens.
    inputs: u64,
    tokens: u64,
    lines: u64,
    local_failures: u64,
    batches: Vec<state::BatchRecord>,
}

fn limits(cfg: &EmbedConfig) -> Limits {
    let (requests, bytes) = ProviderKind::OpenAiEmbeddings.limits();
    Limits {
        requests: cfg.run.batch.max_requests.unwrap_or(requests),
        bytes: cfg.run.batch.max_bytes.unwrap_or(bytes),
        inputs: MAX_INPUTS_PER_BATCH,
    }
}

/// Packs every row into lines and cuts them into batches; with `dir`, writes the batch input
/// files, their rows files and the local failures there.
fn plan(cfg: &EmbedConfig, column: usize, dir: Option<&Path>) -> Result<EmbedPlan, Error> {
    let run = &cfg.run;
    let input = run.open_input()?;
    let mut out = Lines {
        cfg,
        splitter: Splitter::new(ProviderKind::OpenAiEmbeddings, limits(cfg), dir, 1),
        lines: 0,
        inputs: 0,
        tokens: 0,
    };
    let mut failures = match dir {
        Some(d) => Some(std::io::BufWriter::new(
            std::fs::File::create(d.join(LOCAL_FAILURES))
                .map_err(|e| Error::io(format!("cannot write {}", d.display()), e))?,
        )),
        None => None,
    };
    let (mut rows, mut local) = (0u64, 0u64);
    let mut packer = Packer::new(cfg.limits, run.dedup);
    for row in input.rows()? {
        let row = row?;
        rows += 1;
        let text = row.record.get(column).unwrap_or("");
        let n = u64::from(crate::engine::tokens::count(&run.model, text));
        if let Some(error) = refusal(cfg, &input, column, text, n) {
            local += 1;
            if let Some(w) = failures.as_mut() {
                let line = serde_json::to_string(&LocalFailure {
                    seq: row.seq,
                    error,
                })
                .expect("serializes");
                writeln!(w, "{line}").map_err(|e| Error::io("cannot write local failures", e))?;
            }
            continue;
        }
        let item = Item {
            seq: row.seq,
            line: row.line,
            id: row.id,
            text: text.to_string(),
            // Identical texts share a vector: the text is its own key here.
            hash: text.to_string(),
            tokens: n,
            followers: Vec::new(),
        };
        if let Some(pack) = packer.push(item) {
            out.push(&pack)?;
        }
    }
    if let Some(pack) = packer.finish() {
        out.push(&pack)?;
    }
    if let Some(w) = failures {
        w.into_inner()
            .map_err(|e| Error::io("cannot write local failures", e.into_error()))?
            .sync_all()
            .map_err(|e| Error::io("cannot write local failures", e))?;
    }
    Ok(EmbedPlan {
        rows,
        inputs: out.inputs,
        tokens: out.tokens,
        lines: out.lines,
        local_failures: local,
        batches: out.splitter.finish()?,
    })
}

/// Why a row is not sent, as the live command says it.
fn refusal(
    cfg: &EmbedConfig,
    input: &InputFile,
    column: usize,
    text: &str,
    tokens: u64,
) -> Option<String> {
    if text.is_empty() {
        return Some(format!(
            "empty text in column {:?}: the embeddings API refuses empty input; fill the cell \
             or remove the row",
            input.column_name(column)
        ));
    }
    (tokens > cfg.limits.max_input_tokens).then(|| {
        format!(
            "input too long: {tokens} tokens, more than the {} an input may have \
             (--max-input-tokens); shorten the text or split it",
            cfg.limits.max_input_tokens
        )
    })
}

/// Turns packs into numbered lines for the splitter.
struct Lines<'a> {
    cfg: &'a EmbedConfig,
    splitter: Splitter,
    lines: u64,
    inputs: u64,
    /// Tokens of the texts sent: a text shared by several rows of a request counts once.
    tokens: u64,
}

impl Lines<'_> {
    fn push(&mut self, pack: &Pack) -> Result<(), Error> {
        let texts: Vec<&str> = pack.items.iter().map(|i| i.text.as_str()).collect();
        let payload = body(&self.cfg.run.model, &texts, self.cfg.dimensions);
        let rows: Vec<Vec<u64>> = pack
            .items
            .iter()
            .map(|i| {
                std::iter::once(i.seq)
                    .chain(i.followers.iter().map(|(s, _)| *s))
                    .collect()
            })
            .collect();
        let tokens = pack.items.iter().map(|i| i.tokens).collect();
        let first = pack.items.first().map_or(0, |i| i.line);
        let path = self.cfg.run.input.display().to_string();
        self.push_body(&payload, rows, tokens, &|| format!("{path}: line {first}"))?;
        self.tokens += pack.tokens;
        Ok(())
    }

    /// Adds one `/v1/embeddings` body as line `req-<n>` carrying `rows`.
    fn push_body(
        &mut self,
        payload: &[u8],
        rows: Vec<Vec<u64>>,
        tokens: Vec<u64>,
        where_: &dyn Fn() -> String,
    ) -> Result<(), Error> {
        let id = line_id(self.lines);
        let text = super::input_line(ProviderKind::OpenAiEmbeddings, &id, payload);
        let seqs: Vec<u64> = rows.iter().flatten().copied().collect();
        let inputs = rows.len() as u64;
        let side = serde_json::to_vec(&LineRows {
            custom_id: id,
            rows,
            tokens,
        })
        .expect("serializes");
        self.splitter.push_line(
            &Line {
                seqs: &seqs,
                inputs,
                text: &text,
                side: Some(&side),
            },
            where_,
        )?;
        self.lines += 1;
        self.inputs += inputs;
        Ok(())
    }
}

/// `batch embed --via batch`: plan, submit, wait, write the vectors (or `--dry-run`).
pub async fn run_via_batch(cfg: EmbedConfig) -> Result<ExitStatus, Error> {
    let printer = cfg.run.printer();
    let column = {
        let run = &cfg.run;
        let input = run.open_input()?;
        let column = crate::run::embed::column_index(&input, &cfg.column)?;
        // Every row read once: a row that cannot be read stops the command before anything.
        crate::run::embed::count_rows(&input)?;
        column
    };
    if cfg.run.dry_run {
        let planned = plan(&cfg, column, None)?;
        printer.report_with(|w| write_dry_run(w, &cfg, &planned));
        return Ok(ExitStatus::Success);
    }
    let conn = Connection::open(&cfg.run.endpoint).await?;
    let (base_url, key) = (conn.base_url.clone(), conn.api_key.clone());
    let path = super::state_path(&cfg.run);
    let _lock = cfg.run.lock(&path)?;
    let mut st = if matches!(cfg.run.resume, Resume::Yes { .. }) {
        BatchState::load(&path)?
    } else {
        submit(&cfg, column, (&base_url, key.as_ref()), &path).await?
    };
    if st.embed.is_none() {
        return Err(not_embeddings(&path));
    }
    super::print_submitted(&st, &path, printer, true);
    let api = Api::new(&st, key.as_ref(), &cfg.run.headers)?;
    let opts = Collect {
        wait: true,
        resubmit_failed: false,
        poll_max: super::DEFAULT_POLL_MAX,
        printer,
        summary_json: cfg.run.summary_json.clone(),
    };
    collect(&api, &mut st, &path, &opts).await
}

fn not_embeddings(path: &Path) -> Error {
    Error::Usage(format!(
        "{} records a `batch run` job, not embeddings: collect it with `batch collect`",
        path.display()
    ))
}

/// Writes the batch inputs and the state, checks the spend cap, then hands every batch over.
async fn submit(
    cfg: &EmbedConfig,
    column: usize,
    (base_url, key): (&str, Option<&ApiKey>),
    path: &Path,
) -> Result<BatchState, Error> {
    let run = &cfg.run;
    super::refuse_recorded_job(path, run.resume)?;
    drop(crate::engine::output::vectors::create(&run.output, None)?);
    let files = state::files_dir(path);
    let existed = files.exists();
    std::fs::create_dir_all(&files)
        .map_err(|e| Error::io(format!("cannot create {}", files.display()), e))?;
    let planned = {
        let (cfg, files) = (cfg.clone(), files.clone());
        tokio::task::spawn_blocking(move || plan(&cfg, column, Some(&files)))
            .await
            .map_err(|e| Error::io("planning the batches failed", std::io::Error::other(e)))
            .and_then(|planned| planned)
    }
    .and_then(|planned| check_cost(cfg, &planned).map(|()| planned));
    // Nothing was submitted: the folder made for it goes (the state file was never written).
    let planned = planned.inspect_err(|_| {
        if !existed {
            let _ = std::fs::remove_dir_all(&files);
        }
    })?;
    let mut st = state_of(cfg, base_url, &files, planned)?;
    st.save(path)?;
    let api = Api::new(&st, key, &run.headers)?;
    for i in 0..st.batches.len() {
        api.submit(&mut st, i, path)
            .await
            .map_err(|e| super::submit_failed(e, i, st.batches.len(), path))?;
    }
    Ok(st)
}

/// `--max-cost`: the whole job's tokens at the batch price, checked before anything is sent.
fn check_cost(cfg: &EmbedConfig, planned: &EmbedPlan) -> Result<(), Error> {
    let (Some(cap), Some(p)) = (cfg.run.max_cost, cfg.run.prices.lookup(&cfg.run.model)) else {
        return Ok(());
    };
    let estimate = batch_price(p).estimate(planned.tokens, 0);
    if estimate > cap {
        return Err(Error::Usage(format!(
            "the job would cost about {} ({} tokens of {} at the batch price), more than \
             --max-cost {}; nothing was submitted (raise the cap, or embed fewer rows)",
            human::usd_micro(estimate),
            planned.tokens,
            cfg.run.model,
            human::usd_micro(cap)
        )));
    }
    Ok(())
}

fn state_of(
    cfg: &EmbedConfig,
    base_url: &str,
    files: &Path,
    planned: EmbedPlan,
) -> Result<BatchState, Error> {
    let run = &cfg.run;
    let limits = limits(cfg);
    Ok(BatchState {
        format: state::FORMAT.into(),
        provider: ProviderKind::OpenAiEmbeddings,
        base_url: base_url.to_string(),
        input: super::absolute(&run.input),
        input_format: run.input_format,
        output_format: run.output_format,
        input_sha256: super::file_sha256(&run.input)?,
        output: super::absolute(&run.output),
        files: super::absolute(files),
        id_column: run.id_column.clone(),
        model: run.model.clone(),
        rows: planned.rows,
        sanitize: false,
        price: run.prices.lookup(&run.model).map(Into::into),
        prices_as_of: run.prices.as_of.clone(),
        submitted_at: state::now(),
        max_requests: limits.requests,
        max_bytes: limits.bytes,
        batches: planned.batches,
        schema: None,
        expect: None,
        api_headers: Vec::new(),
        embed: Some(EmbedJob {
            column: cfg.column.clone(),
            dimensions: cfg.dimensions,
            max_inputs: limits.inputs,
            lines: planned.lines,
            tokens: planned.tokens,
            local_failures: planned.local_failures,
            read: Some(state::ReadRecord::of(run.read)),
        }),
    })
}

/// The dry run: rows, requests, batches, tokens, and the cost live and via batch.
fn write_dry_run(w: &mut dyn Write, cfg: &EmbedConfig, p: &EmbedPlan) -> std::io::Result<()> {
    let limits = limits(cfg);
    writeln!(w, "Dry run: nothing was sent and nothing was written.")?;
    writeln!(
        w,
        "Rows         {} in {}{}",
        p.rows,
        cfg.run.input.display(),
        if p.local_failures > 0 {
            format!(
                " ({} empty or too long, not sent)",
                human::count(p.local_failures, "row")
            )
        } else {
            String::new()
        }
    )?;
    writeln!(
        w,
        "Requests     {} of {} texts (up to {} inputs and {} tokens each)",
        p.lines, p.inputs, cfg.limits.max_inputs, cfg.limits.max_tokens
    )?;
    writeln!(
        w,
        "Batches      {} for the {} (at most {} requests, {} inputs and {} a batch)",
        p.batches.len(),
        ProviderKind::OpenAiEmbeddings.label(),
        limits.requests,
        limits.inputs,
        human_bytes(limits.bytes)
    )?;
    for b in &p.batches {
        writeln!(
            w,
            "  batch {:<4} {}, {} inputs, {}",
            b.number,
            human::count(b.requests, "request"),
            b.inputs.unwrap_or(0),
            human_bytes(b.bytes)
        )?;
    }
    writeln!(w, "Tokens       {}", p.tokens)?;
    match cfg.run.prices.lookup(&cfg.run.model) {
        Some(price) => writeln!(
            w,
            "Cost         {} with `batch embed`, {} via batch ({}%), prices of {} as of {}",
            human::usd_micro(price.estimate(p.tokens, 0)),
            human::usd_micro(batch_price(price).estimate(p.tokens, 0)),
            (BATCH_DISCOUNT * 100.0) as u32,
            cfg.run.model,
            cfg.run.prices.as_of
        ),
        None => writeln!(
            w,
            "Cost         unknown: no price for model {:?}; add one with --price-file",
            cfg.run.model
        ),
    }
}

/// `collect` of an embeddings job: drive the batches, resubmit failed lines' rows if asked,
/// then write the vectors file.
pub(super) async fn collect(
    api: &Api,
    st: &mut BatchState,
    path: &Path,
    opts: &Collect,
) -> Result<ExitStatus, Error> {
    let started = Instant::now();
    super::results::check_input(st)?;
    // Fail on an unwritable vectors file before waiting for hours.
    drop(crate::engine::output::vectors::create(&st.output, None)?);
    super::drive(api, st, path, opts).await?;
    if opts.resubmit_failed && st.batches.iter().all(|b| b.is_final()) {
        resubmit_failed(api, st, path, opts).await?;
    }
    let Written {
        stats,
        saved,
        resendable,
    } = {
        let (st, path) = (st.clone(), path.to_path_buf());
        tokio::task::spawn_blocking(move || write_vectors(&st, &path))
            .await
            .map_err(|e| Error::io("writing the vectors failed", std::io::Error::other(e)))??
    };
    let mut summary = stats.summary(started.elapsed(), &st.output, &st.model);
    summary.through_batch_api();
    if let Some(p) = &opts.summary_json {
        summary.write_json(p)?;
    }
    super::print_collected(opts.printer, &summary, saved, path);
    // Rows failed at submission, or whose text the API refused alone, would fail again.
    if resendable > 0 && !opts.resubmit_failed {
        opts.printer.note(format_args!(
            "Resubmit   `batch collect {} --resubmit-failed --wait` sends each text of the \
             failed requests alone: only a text the API refuses fails again",
            path.display()
        ));
    }
    Ok(if stats.failed + stats.skipped > 0 {
        ExitStatus::RowsFailed
    } else {
        ExitStatus::Success
    })
}

/// Where a row's vector is: line `line`, text `index` of it.
#[derive(Clone, Copy)]
struct Place {
    line: u64,
    index: u32,
    /// The row shares the text of an earlier row of the line (no cost of its own).
    follower: bool,
}

/// What collect knows of the lines: where each row's vector is, each line's batch, texts and
/// tokens, and where each line's result is in the downloaded files.
struct Layout {
    places: Vec<Option<Place>>,
    lines: HashMap<u64, LineInfo>,
    found: HashMap<u64, Found>,
    files: Vec<PathBuf>,
}

struct LineInfo {
    batch: usize,
    tokens: Vec<u64>,
}

/// A result line: in file `file` at `offset`, `len` bytes, and what it came to.
#[derive(Clone, Copy)]
struct Found {
    file: usize,
    offset: u64,
    len: usize,
    verdict: Verdict,
}

/// What a result line came to, which decides whether `--resubmit-failed` sends it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// A 200 whose vectors parse: its rows' answer. The index only reads the status (parsing
    /// every answer twice costs a tenth of a million-row collect): [`confirm_answers`] parses
    /// them before a resubmission, and writing the rows parses each anyway.
    Answer,
    /// A 4xx (other than 408, 429) for a request of one text: the API refuses that text, and
    /// sending it again would fail again.
    Refused,
    /// Anything else (an expiry, a 5xx, a 200 that does not parse, a 4xx for many texts, whose
    /// texts are sent again one a request).
    Failed,
}

/// The request result line `line` answers, and its verdict from its status alone (a 200 is
/// taken for an answer); `inputs(n)`: the texts of request `n`.
fn quick_verdict(line: &[u8], inputs: impl Fn(u64) -> usize) -> Option<(u64, Verdict)> {
    #[derive(Deserialize)]
    struct Head {
        custom_id: String,
        error: Option<serde::de::IgnoredAny>,
        response: Option<Status>,
    }
    #[derive(Deserialize)]
    struct Status {
        status_code: u16,
    }
    let head = serde_json::from_slice::<Head>(line).ok()?;
    let n = line_number(&head.custom_id)?;
    let status = head
        .response
        .filter(|_| head.error.is_none())
        .map(|r| r.status_code);
    let refused = status.is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429);
    let verdict = match status {
        Some(200) => Verdict::Answer,
        _ if refused && inputs(n) == 1 => Verdict::Refused,
        _ => Verdict::Failed,
    };
    Some((n, verdict))
}

/// The verdict on result line `line` of a request of `inputs` texts, its answer parsed.
#[cfg(test)]
fn verdict(line: &[u8], inputs: usize) -> Verdict {
    match quick_verdict(line, |_| inputs) {
        Some((_, Verdict::Answer)) => {
            let parsed = super::openai::parse_line_with(line, line_number, |body, _| {
                parse(body, inputs, None)
            });
            if matches!(parsed, Ok((_, Ok(_)))) {
                Verdict::Answer
            } else {
                Verdict::Failed
            }
        }
        Some((_, v)) => v,
        None => Verdict::Failed,
    }
}

/// Parses every answer the index took on its status, so one that cannot be used (a count of
/// vectors that is not the request's, an empty or unreadable vector) is sent again.
fn confirm_answers(layout: &mut Layout) -> Result<(), Error> {
    let mut answers: Vec<u64> = layout
        .found
        .iter()
        .filter(|(_, f)| f.verdict == Verdict::Answer)
        .map(|(n, _)| *n)
        .collect();
    answers.sort_unstable();
    let mut unusable = Vec::new();
    let mut reader = Reader {
        layout: &*layout,
        open: HashMap::new(),
        last: None,
    };
    for n in answers {
        if let Some(Err(_)) = reader.outcome(n)? {
            unusable.push(n);
        }
    }
    for n in unusable {
        if let Some(f) = layout.found.get_mut(&n) {
            f.verdict = Verdict::Failed;
        }
    }
    Ok(())
}

fn layout(st: &BatchState) -> Result<Layout, Error> {
    let mut places = vec![None; st.rows as usize];
    let mut lines = HashMap::new();
    for (bi, b) in st.batches.iter().enumerate() {
        let path = st.file(&rows_file(&b.input_file));
        let mut bad = None;
        super::results::for_each_line(&path, |l| match serde_json::from_slice::<LineRows>(l) {
            Ok(r) => {
                let Some(n) = line_number(&r.custom_id) else {
                    bad.get_or_insert_with(|| format!("unknown custom_id {:?}", r.custom_id));
                    return;
                };
                for (index, seqs) in r.rows.iter().enumerate() {
                    for (k, seq) in seqs.iter().enumerate() {
                        if let Some(slot) = places.get_mut(*seq as usize) {
                            *slot = Some(Place {
                                line: n,
                                index: index as u32,
                                follower: k > 0,
                            });
                        }
                    }
                }
                lines.insert(
                    n,
                    LineInfo {
                        batch: bi,
                        tokens: r.tokens,
                    },
                );
            }
            Err(e) => {
                bad.get_or_insert_with(|| e.to_string());
            }
        })?;
        if let Some(e) = bad {
            return Err(Error::Input(format!(
                "{} is not a rows file of ours ({e}); it is written by `batch embed --via \
                 batch` and needed until the vectors are collected",
                path.display()
            )));
        }
    }
    let (found, files) = index_results(st, &lines)?;
    Ok(Layout {
        places,
        lines,
        found,
        files,
    })
}

/// Where each line's result is in the downloaded output and error files, and what its status
/// says it came to (an answer wins over any other line for the same request).
fn index_results(
    st: &BatchState,
    lines: &HashMap<u64, LineInfo>,
) -> Result<(HashMap<u64, Found>, Vec<PathBuf>), Error> {
    let mut found: HashMap<u64, Found> = HashMap::new();
    let mut files = Vec::new();
    for b in st.batches.iter().filter(|b| b.phase == Phase::Downloaded) {
        for name in [&b.output_file, &b.error_file] {
            let Some(name) = name else { continue };
            let path = st.file(name);
            let file = files.len();
            super::results::scan_lines(&path, |offset, line| {
                let inputs = |n| lines.get(&n).map_or(0, |l| l.tokens.len());
                let Some((n, verdict)) = quick_verdict(line, inputs) else {
                    return;
                };
                let here = Found {
                    file,
                    offset,
                    len: line.len(),
                    verdict,
                };
                if found.get(&n).is_none_or(|f| f.verdict != Verdict::Answer) {
                    found.insert(n, here);
                }
            })?;
            files.push(path);
        }
    }
    Ok((found, files))
}

/// Reads line results from the downloaded files, keeping the last one read (rows of a line
/// are next to each other in input order, so each line is parsed about once).
struct Reader<'a> {
    layout: &'a Layout,
    open: HashMap<usize, std::fs::File>,
    last: Option<(u64, Result<Embeddings, String>)>,
}

impl Reader<'_> {
    fn outcome(&mut self, line: u64) -> Result<Option<&Result<Embeddings, String>>, Error> {
        if self.last.as_ref().is_none_or(|(n, _)| *n != line) {
            let Some(f) = self.layout.found.get(&line).copied() else {
                return Ok(None);
            };
            let inputs = self.layout.lines.get(&line).map_or(0, |l| l.tokens.len());
            let path = &self.layout.files[f.file];
            let file = match self.open.entry(f.file) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(std::fs::File::open(path).map_err(|e| Error::read(path, &e))?)
                }
            };
            let mut buf = vec![0u8; f.len];
            file.seek(SeekFrom::Start(f.offset))
                .and_then(|_| file.read_exact(&mut buf))
                .map_err(|e| Error::read(path, &e))?;
            let parsed = super::openai::parse_line_with(&buf, line_number, |body, headers| {
                parse(
                    body,
                    inputs,
                    crate::engine::provider::openai::request_id(headers),
                )
            })
            .map(|(_, o)| o)
            .unwrap_or_else(Err);
            self.last = Some((line, parsed));
        }
        Ok(self.last.as_ref().map(|(_, o)| o))
    }
}

/// What writing the vectors came to: the totals, what the batch discount saved (when the model
/// has a price), and how many failed rows `--resubmit-failed` would send again.
struct Written {
    stats: Stats,
    saved: Option<f64>,
    resendable: u64,
}

/// The error for a row, line or text the state's files do not account for: the input was read
/// differently, or changed, since submission, or the files folder was edited.
fn damaged(st: &BatchState, what: String) -> Error {
    Error::Input(format!(
        "{what}: {} has changed since submission, or the files folder {} is damaged; restore \
         the input and the folder as they were submitted, or embed the input again",
        st.input.display(),
        st.files.display()
    ))
}

/// Writes every row's vector (or why it has none) in input order, reading the input as it was
/// read at submission; `path` is the state file, named in the errors' advice.
fn write_vectors(st: &BatchState, path: &Path) -> Result<Written, Error> {
    let job = st.embed.as_ref().ok_or_else(|| not_embeddings(path))?;
    let read = job.read.map(state::ReadRecord::options).unwrap_or_default();
    let input = InputFile::open_with(&st.input, st.input_format, st.id_column.as_deref(), read)?;
    let local = local_failures(st)?;
    let layout = layout(st)?;
    let resend: std::collections::HashSet<u64> = to_resend(st, &layout).into_iter().collect();
    let (owner, _) = st.owners();
    let mut reader = Reader {
        layout: &layout,
        open: HashMap::new(),
        last: None,
    };
    let dims = width(&mut reader, job.dimensions, &st.model)?;
    let mut sink = crate::engine::output::vectors::create(&st.output, Some(dims))?;
    let standard = st.price.map(|p| p.standard());
    let (mut stats, mut saved, mut resendable) = (Stats::default(), 0.0, 0);
    for row in input.rows()? {
        let row = row?;
        let seq = row.seq;
        let place = layout.places.get(seq as usize).ok_or_else(|| {
            damaged(
                st,
                format!("row {} (line {}) is in no batch", row.id, row.line),
            )
        })?;
        let (result, vector) = match (local.get(&seq), *place) {
            (Some(error), _) => (failed(seq, &row.id, &st.model, error.clone()), None),
            (None, None) => (
                RowResult::skipped(seq, row.id.clone(), &st.model, "not in any batch"),
                None,
            ),
            (None, Some(place)) => {
                let owner = owner.get(seq as usize).copied().flatten().unwrap_or(0);
                let at = (seq, row.id.as_str());
                let (r, v) = row_result(st, path, &mut reader, place, owner, at, &mut saved)?;
                // A failed row of a line taken for an answer: the answer could not be used.
                let unusable = r.status == RowStatus::Failed
                    && layout.found.get(&place.line).map(|f| f.verdict) == Some(Verdict::Answer);
                resendable += u64::from(unusable || resend.contains(&place.line));
                (r, v)
            }
        };
        stats.record_row(&result, row.line);
        sink.push(&VectorRow {
            line: row.line,
            id: &row.id,
            status: result.status,
            error: (!result.error.is_empty()).then_some(result.error.as_str()),
            tokens: result
                .usage
                .map(|u| u32::try_from(u.prompt_tokens).unwrap_or(u32::MAX)),
            embedding: vector.as_deref(),
        })?;
    }
    sink.finish()?;
    Ok(Written {
        stats,
        saved: standard.map(|_| saved),
        resendable,
    })
}

fn failed(seq: u64, id: &str, model: &str, error: String) -> RowResult {
    RowResult {
        status: RowStatus::Failed,
        ..RowResult::skipped(seq, id.to_string(), model, &error)
    }
}

/// A failed line's reason for each of its rows, with what `--resubmit-failed` would do about it
/// (nothing, for a text the API refused alone).
fn line_failure(reason: &str, verdict: Option<Verdict>, texts: usize, path: &Path) -> String {
    let command = format!(
        "`batch collect {} --resubmit-failed --wait`",
        path.display()
    );
    match (verdict, texts) {
        (Some(Verdict::Refused), _) => reason.to_string(),
        (_, 1) => format!("{reason} ({command} sends it again)"),
        (_, n) => format!(
            "{reason} (the request of {} failed as a whole; {command} sends each of them alone)",
            human::count(n as u64, "text")
        ),
    }
}

/// One row's result from its line's outcome: its vector, its own tokens and its share of the
/// line's cost at the batch price; or the line's failure, or why the line has no result yet.
fn row_result(
    st: &BatchState,
    path: &Path,
    reader: &mut Reader,
    place: Place,
    owner: usize,
    (seq, id): (u64, &str),
    saved: &mut f64,
) -> Result<(RowResult, Option<Vec<f32>>), Error> {
    let layout = reader.layout;
    let info = layout.lines.get(&place.line).ok_or_else(|| {
        damaged(
            st,
            format!(
                "row {id} is on request {}, in no rows file",
                line_id(place.line)
            ),
        )
    })?;
    let own_tokens = info.tokens.get(place.index as usize).copied().unwrap_or(0);
    let line_tokens: u64 = info.tokens.iter().sum();
    let carried_by = info.batch;
    let rows_in_line = info.tokens.len();
    let outcome = match reader.outcome(place.line)? {
        Some(o) => o,
        None => {
            let (status, reason) = super::results::missing_reason(st, owner.max(carried_by));
            let mut r = RowResult::skipped(seq, id.to_string(), &st.model, &reason);
            r.status = status;
            return Ok((r, None));
        }
    };
    let e = match outcome {
        Ok(e) => e,
        Err(reason) => {
            let verdict = layout.found.get(&place.line).map(|f| f.verdict);
            let error = line_failure(reason, verdict, rows_in_line, path);
            return Ok((failed(seq, id, &st.model, error), None));
        }
    };
    let b64 = e.vectors.get(place.index as usize).ok_or_else(|| {
        damaged(
            st,
            format!(
                "row {id} is text {} of request {}, which has {}",
                place.index,
                line_id(place.line),
                human::count(e.vectors.len() as u64, "text")
            ),
        )
    })?;
    let vector = decode(b64).map_err(|err| {
        Error::Input(format!(
            "the vector of row {id} in the results of {} is unreadable ({err})",
            st.batches[carried_by].name()
        ))
    })?;
    let standard = st.price.map(|p| p.standard());
    let share = own_tokens as f64 / line_tokens.max(1) as f64;
    let cost = standard.map(|p| batch_price(p).cost(&e.usage()) * share);
    if let (Some(p), Some(c)) = (standard, cost)
        && !place.follower
    {
        *saved += p.cost(&e.usage()) * share - c;
    }
    let mut r = RowResult::skipped(seq, id.to_string(), &st.model, "");
    r.status = RowStatus::Ok;
    r.attempts = 1;
    r.usage = Some(Usage {
        prompt_tokens: own_tokens,
        ..Usage::default()
    });
    r.cost = cost;
    r.model = e.model.clone().unwrap_or_else(|| st.model.clone());
    if place.follower {
        r = RowResult::reused(seq, id.to_string(), &r);
    }
    Ok((r, Some(vector)))
}

/// The vectors' width before any row is written: the first answer's, else `--dimensions`, else
/// the model's own, else 1 (a file with no vector at all).
fn width(reader: &mut Reader, dimensions: Option<u32>, model: &str) -> Result<usize, Error> {
    let mut answered: Vec<u64> = reader
        .layout
        .found
        .iter()
        .filter(|(_, f)| f.verdict == Verdict::Answer)
        .map(|(n, _)| *n)
        .collect();
    answered.sort_unstable();
    for n in answered.into_iter().take(8) {
        if let Some(Ok(e)) = reader.outcome(n)?
            && let Some(v) = e.vectors.first()
            && let Ok(v) = decode(v)
            && !v.is_empty()
        {
            return Ok(v.len());
        }
    }
    Ok(dimensions
        .map(|d| d as usize)
        .or_else(|| native_dims(model))
        .unwrap_or(1)
        .max(1))
}

fn local_failures(st: &BatchState) -> Result<HashMap<u64, String>, Error> {
    let path = st.file(LOCAL_FAILURES);
    let mut out = HashMap::new();
    if !path.exists() {
        return Ok(out);
    }
    super::results::for_each_line(&path, |l| {
        if let Ok(f) = serde_json::from_slice::<LocalFailure>(l) {
            out.insert(f.seq, f.error);
        }
    })?;
    Ok(out)
}

/// `collect --resubmit-failed` of an embeddings job: every text of a line that failed or
/// expired goes out again as a line of its own, in new batches, so a text the provider refuses
/// fails alone and the others get their vectors.
async fn resubmit_failed(
    api: &Api,
    st: &mut BatchState,
    path: &Path,
    opts: &Collect,
) -> Result<(), Error> {
    let Some(n) = prepare_resubmission(st, path)? else {
        opts.printer.note(
            "Nothing to resubmit: no request failed or expired but texts the API refused alone, \
             which would fail again.",
        );
        return Ok(());
    };
    for i in st.batches.len() - n..st.batches.len() {
        api.submit(st, i, path).await?;
    }
    opts.printer.note(format_args!(
        "Resubmitted the texts of the failed and expired requests, one a request, as {n} new \
         batch{}",
        if n == 1 { "" } else { "es" }
    ));
    if opts.wait {
        super::drive(api, st, path, opts).await?;
    }
    Ok(())
}

/// The lines `--resubmit-failed` sends again, in order: those of ended batches that still carry
/// a row (a resubmitted line's rows belong to its new lines) and have no answer, except a text
/// the API refused alone, which would fail again.
fn to_resend(st: &BatchState, layout: &Layout) -> Vec<u64> {
    let live: std::collections::HashSet<u64> =
        layout.places.iter().flatten().map(|p| p.line).collect();
    let mut retry: Vec<u64> = layout
        .lines
        .iter()
        .filter(|(n, info)| {
            let verdict = layout.found.get(n).map(|f| f.verdict);
            st.batches[info.batch].is_final()
                && live.contains(n)
                && verdict.is_none_or(|v| v == Verdict::Failed)
        })
        .map(|(n, _)| *n)
        .collect();
    retry.sort_unstable();
    retry
}

/// The lines to resend, split into single-text lines in new batches recorded in the state.
/// Returns how many batches were added (`None`: nothing to resend).
fn prepare_resubmission(st: &mut BatchState, path: &Path) -> Result<Option<usize>, Error> {
    let mut layout = layout(st)?;
    confirm_answers(&mut layout)?;
    let retry = to_resend(st, &layout);
    if retry.is_empty() {
        return Ok(None);
    }
    let mut job = st.embed.clone().ok_or_else(|| not_embeddings(path))?;
    let mut from: Vec<usize> = retry
        .iter()
        .map(|n| st.batches[layout.lines[n].batch].number)
        .collect();
    from.sort_unstable();
    from.dedup();
    let limits = Limits {
        requests: st.max_requests,
        bytes: st.max_bytes,
        inputs: job.max_inputs,
    };
    let first = st.batches.len() + 1;
    let splitter = Splitter::new(st.provider, limits, Some(&st.files), first);
    let mut out = Resplit {
        splitter,
        next: job.lines,
    };
    resplit_lines(st, &layout, &retry, &mut out)?;
    job.lines = out.next;
    let mut added = out.splitter.finish()?;
    for b in &mut added {
        b.resubmits = Some(from.clone());
    }
    let count = added.len();
    st.batches.extend(added);
    st.embed = Some(job);
    st.save(path)?;
    Ok(Some(count))
}

/// Finds the bodies of lines `retry` in the batch input files, one file at a time and one line
/// in memory at a time (only a wanted line's body is parsed), and splits each as it is found.
fn resplit_lines(
    st: &BatchState,
    layout: &Layout,
    retry: &[u64],
    out: &mut Resplit,
) -> Result<(), Error> {
    #[derive(Deserialize)]
    struct InputLine<'a> {
        custom_id: String,
        #[serde(borrow)]
        body: &'a serde_json::value::RawValue,
    }
    let mut wanted: std::collections::HashSet<u64> = retry.iter().copied().collect();
    let mut rows = rows_of_lines(st, layout, &wanted)?;
    let mut batches: Vec<usize> = retry.iter().map(|n| layout.lines[n].batch).collect();
    batches.sort_unstable();
    batches.dedup();
    for b in batches {
        let file = st.file(&st.batches[b].input_file);
        let mut failure = None;
        super::results::scan_lines(&file, |_, l| {
            let Ok(line) = serde_json::from_slice::<InputLine>(l) else {
                return;
            };
            let Some(n) = line_number(&line.custom_id).filter(|n| wanted.remove(n)) else {
                return;
            };
            let split = serde_json::from_str(line.body.get())
                .map_err(|e| {
                    damaged(
                        st,
                        format!("the body of {} is unreadable ({e})", line.custom_id),
                    )
                })
                .and_then(|body| {
                    let r = rows.remove(&n).unwrap_or_default();
                    out.split(n, &body, r, &layout.lines[&n].tokens)
                });
            if let Err(e) = split {
                failure.get_or_insert(e);
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
    }
    match wanted.iter().min() {
        Some(n) => Err(Error::Input(format!(
            "the request {} is in none of the batch input files in {}; were they removed?",
            line_id(*n),
            st.files.display()
        ))),
        None => Ok(()),
    }
}

/// The rows of each text of lines `wanted`, as the layout has them now, in one pass over the
/// rows.
fn rows_of_lines(
    st: &BatchState,
    layout: &Layout,
    wanted: &std::collections::HashSet<u64>,
) -> Result<HashMap<u64, Vec<Vec<u64>>>, Error> {
    let mut out: HashMap<u64, Vec<Vec<u64>>> = HashMap::new();
    for (seq, p) in layout.places.iter().enumerate() {
        let Some(p) = p.filter(|p| wanted.contains(&p.line)) else {
            continue;
        };
        let texts = layout.lines[&p.line].tokens.len();
        let rows = out.entry(p.line).or_insert_with(|| vec![Vec::new(); texts]);
        let slot = rows.get_mut(p.index as usize).ok_or_else(|| {
            damaged(
                st,
                format!(
                    "row {} is text {} of request {}, which has {}",
                    seq + 1,
                    p.index,
                    line_id(p.line),
                    human::count(texts as u64, "text")
                ),
            )
        })?;
        slot.push(seq as u64);
    }
    Ok(out)
}

/// Splits lines into single-text lines for the splitter.
struct Resplit {
    splitter: Splitter,
    next: u64,
}

impl Resplit {
    fn split(
        &mut self,
        line: u64,
        body: &serde_json::Value,
        rows: Vec<Vec<u64>>,
        tokens: &[u64],
    ) -> Result<(), Error> {
        let texts = body["input"].as_array().cloned().unwrap_or_default();
        for (i, seqs) in rows.into_iter().enumerate() {
            if seqs.is_empty() {
                continue;
            }
            let Some(text) = texts.get(i) else { continue };
            let mut one = body.clone();
            one["input"] = serde_json::json!([text]);
            let payload = serde_json::to_vec(&one).expect("serializes");
            let id = line_id(self.next);
            let line_text = super::input_line(ProviderKind::OpenAiEmbeddings, &id, &payload);
            let side = serde_json::to_vec(&LineRows {
                custom_id: id,
                rows: vec![seqs.clone()],
                tokens: vec![tokens.get(i).copied().unwrap_or(0)],
            })
            .expect("serializes");
            self.splitter.push_line(
                &Line {
                    seqs: &seqs,
                    inputs: 1,
                    text: &line_text,
                    side: Some(&side),
                },
                &|| format!("text {i} of {}", line_id(line)),
            )?;
            self.next += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::provider::embeddings::encode;

    #[test]
    fn line_ids_round_trip() {
        for n in [0, 7, 1_234_567] {
            assert_eq!(line_number(&line_id(n)), Some(n));
        }
        assert_eq!(line_number("row-1"), None);
    }

    #[test]
    fn a_failed_line_is_resent_one_text_a_line_keeping_each_texts_rows() {
        let limits = Limits {
            requests: 2,
            bytes: 1_000_000,
            inputs: 100,
        };
        let splitter = Splitter::new(ProviderKind::OpenAiEmbeddings, limits, None, 4);
        let mut out = Resplit { splitter, next: 10 };
        let body = serde_json::json!({"model": "m", "input": ["a", "b", "c"], "dimensions": 4});
        out.split(3, &body, vec![vec![0, 5], vec![1], vec![2]], &[3, 1, 2])
            .unwrap();
        assert_eq!(out.next, 13);
        let b = out.splitter.finish().unwrap();
        assert_eq!(b.iter().map(|b| b.requests).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(b[0].number, 4);
        assert_eq!(b[0].rows, vec![[0, 2], [5, 6]]);
        assert_eq!(b[1].rows, vec![[2, 3]]);
    }

    /// A state of one downloaded batch, written by hand as collect finds it.
    fn job(dir: &Path) -> BatchState {
        let files = dir.join("files");
        std::fs::create_dir_all(&files).unwrap();
        let input = dir.join("in.csv");
        std::fs::write(&input, "id,text\nr0,a\nr1,b\nr2,a\nr3,\nr4,bad\n").unwrap();
        std::fs::write(
            files.join("input-001.rows.jsonl"),
            "{\"custom_id\":\"req-0\",\"rows\":[[0,2],[1]],\"tokens\":[1,3]}\n\
             {\"custom_id\":\"req-1\",\"rows\":[[4]],\"tokens\":[1]}\n",
        )
        .unwrap();
        let mut inputs = Vec::new();
        for (id, texts) in [("req-0", vec!["a", "b"]), ("req-1", vec!["bad"])] {
            let body = serde_json::to_vec(&serde_json::json!({"model": "m", "input": texts}));
            let line = super::super::input_line(ProviderKind::OpenAiEmbeddings, id, &body.unwrap());
            inputs.extend_from_slice(&line);
            inputs.push(b'\n');
        }
        std::fs::write(files.join("input-001.jsonl"), inputs).unwrap();
        let data = |v: &[f32]| serde_json::json!({"index": 0, "embedding": encode(v)});
        let answer = serde_json::json!({"custom_id": "req-0", "error": null, "response": {
            "status_code": 200, "body": {"object": "list", "model": "m",
            "data": [data(&[1.0, 0.0]), {"index": 1, "embedding": encode(&[0.0, 1.0])}],
            "usage": {"prompt_tokens": 4, "total_tokens": 4}}}});
        std::fs::write(files.join("output-001.jsonl"), format!("{answer}\n")).unwrap();
        let refused = serde_json::json!({"custom_id": "req-1", "error": null, "response": {
            "status_code": 400, "body": {"error": {"message": "'$.input[0]' is invalid",
            "type": "invalid_request_error"}}}});
        std::fs::write(files.join("errors-001.jsonl"), format!("{refused}\n")).unwrap();
        std::fs::write(
            files.join(LOCAL_FAILURES),
            "{\"seq\":3,\"error\":\"empty text\"}\n",
        )
        .unwrap();
        let text = format!(
            r#"{{"format":"batch-state/1","provider":"openai-embeddings","base_url":"x",
            "input":{input:?},"input_sha256":"","output":{out:?},"files":{files:?},
            "id_column":null,"model":"m","rows":5,"sanitize":false,
            "price":{{"input":1.0,"output":0.0}},"prices_as_of":"t","submitted_at":0,
            "max_requests":10,"max_bytes":1000,"batches":[{{"number":1,"rows":[[0,3],[4,5]],
            "requests":2,"bytes":10,"input_file":"input-001.jsonl","phase":"downloaded",
            "batch_id":"b1","status":"completed","output_file":"output-001.jsonl",
            "error_file":"errors-001.jsonl"}}],"embed":{{"column":"text","max_inputs":100,
            "lines":2,"tokens":5,"local_failures":1}}}}"#,
            out = dir.join("out.jsonl"),
        );
        serde_json::from_str(&text).unwrap()
    }

    /// Replaces the fixture's answer to `req-0` by one with a single vector for its two texts.
    fn break_the_answer(st: &BatchState) {
        let short = serde_json::json!({"custom_id": "req-0", "error": null, "response": {
            "status_code": 200, "body": {"object": "list", "model": "m",
            "data": [{"index": 0, "embedding": encode(&[1.0, 0.0])}],
            "usage": {"prompt_tokens": 4, "total_tokens": 4}}}});
        std::fs::write(st.file("output-001.jsonl"), format!("{short}\n")).unwrap();
    }

    /// Review finding: a line from the output file counted as answered even when it did not
    /// parse, so `--resubmit-failed` said "Nothing to resubmit" for rows it had failed.
    #[test]
    fn an_answer_that_does_not_parse_is_resent_and_a_text_refused_alone_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.batch.json");
        let mut st = job(dir.path());
        assert_eq!(prepare_resubmission(&mut st, &path).unwrap(), None);
        break_the_answer(&st);
        let written = write_vectors(&st, &path).unwrap();
        assert_eq!((written.stats.ok, written.stats.failed), (0, 5));
        assert_eq!(
            written.resendable, 3,
            "the rows of req-0, not the refused req-1"
        );
        let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
        let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        let error = first["error"].as_str().unwrap();
        assert!(
            error.contains("1 embeddings for 2 inputs")
                && error.contains(&format!(
                    "`batch collect {} --resubmit-failed --wait`",
                    path.display()
                )),
            "{error}"
        );
        assert_eq!(prepare_resubmission(&mut st, &path).unwrap(), Some(1));
        let added = st.batches.last().unwrap();
        assert_eq!((added.number, added.requests), (2, 2));
        let sent = std::fs::read_to_string(st.file(&added.input_file)).unwrap();
        let texts: Vec<serde_json::Value> = sent
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["body"]["input"].clone())
            .collect();
        assert_eq!(texts, [serde_json::json!(["a"]), serde_json::json!(["b"])]);
        let rows = std::fs::read_to_string(st.file("input-002.rows.jsonl")).unwrap();
        assert!(
            rows.contains("\"rows\":[[0,2]]") && rows.contains("\"rows\":[[1]]"),
            "{rows}"
        );
        assert_eq!(st.embed.as_ref().unwrap().lines, 4);
    }

    #[test]
    fn a_verdict_tells_an_answer_a_text_refused_alone_and_a_failure_apart() {
        let line = |status: u16, body: serde_json::Value| {
            serde_json::json!({"custom_id": "req-3", "error": null,
                "response": {"status_code": status, "body": body}})
            .to_string()
        };
        let refused = line(400, serde_json::json!({"error": {"message": "bad"}}));
        assert_eq!(verdict(refused.as_bytes(), 1), Verdict::Refused);
        assert_eq!(
            verdict(refused.as_bytes(), 2),
            Verdict::Failed,
            "split first"
        );
        let limited = line(429, serde_json::json!({"error": {"message": "slow down"}}));
        assert_eq!(verdict(limited.as_bytes(), 1), Verdict::Failed);
        let server = line(500, serde_json::json!({"error": {"message": "oops"}}));
        assert_eq!(verdict(server.as_bytes(), 1), Verdict::Failed);
        let empty = line(
            200,
            serde_json::json!({"data": [{"index": 0, "embedding": ""}]}),
        );
        assert_eq!(verdict(empty.as_bytes(), 1), Verdict::Failed);
        let bad64 = line(
            200,
            serde_json::json!({"data": [{"index": 0, "embedding": "!!"}]}),
        );
        assert_eq!(verdict(bad64.as_bytes(), 1), Verdict::Failed);
        let good = line(
            200,
            serde_json::json!({"data": [{"index": 0, "embedding": encode(&[1.0])}]}),
        );
        assert_eq!(verdict(good.as_bytes(), 1), Verdict::Answer);
        let expired = r#"{"custom_id":"req-3","response":null,
            "error":{"code":"batch_expired","message":"not done in time"}}"#;
        assert_eq!(verdict(expired.as_bytes(), 1), Verdict::Failed);
    }

    /// Review finding: collect read the input with the default settings whatever submit used.
    #[test]
    fn collect_reads_the_input_with_the_settings_submit_read_it_with() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.batch.json");
        let mut st = job(dir.path());
        let mut read = crate::engine::input::ReadOptions::default();
        read.limits.field = crate::engine::input::ByteSize(1);
        let record = state::ReadRecord::of(read);
        assert_eq!(record.options(), read);
        st.embed.as_mut().unwrap().read = Some(record);
        st.save(&path).unwrap();
        let st = BatchState::load(&path).unwrap();
        let e = write_vectors(&st, &path)
            .err()
            .expect("a 1-byte field limit refuses 'bad'");
        assert!(e.to_string().contains("max-field-size"), "{e}");
    }

    /// Review finding: a row past those the state knows panicked (`places[seq]`).
    #[test]
    fn an_input_with_rows_the_state_does_not_know_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let st = job(dir.path());
        std::fs::write(
            &st.input,
            "id,text\nr0,a\nr1,b\nr2,a\nr3,\nr4,bad\nr5,new\n",
        )
        .unwrap();
        let e = write_vectors(&st, &dir.path().join("s.json"))
            .err()
            .unwrap();
        let e = e.to_string();
        assert!(
            e.contains("row r5") && e.contains("changed since submission"),
            "{e}"
        );
        // A rows file naming a text its request does not have.
        std::fs::write(
            st.file("input-001.rows.jsonl"),
            "{\"custom_id\":\"req-0\",\"rows\":[[0,2],[1],[4]],\"tokens\":[1,3]}\n",
        )
        .unwrap();
        let mut st = st;
        std::fs::write(&st.input, "id,text\nr0,a\nr1,b\nr2,a\nr3,\nr4,bad\n").unwrap();
        break_the_answer(&st);
        let e = prepare_resubmission(&mut st, &dir.path().join("s.json")).unwrap_err();
        assert!(e.to_string().contains("is damaged"), "{e}");
    }

    #[test]
    fn collect_puts_each_vector_on_its_rows_and_fails_a_refused_lines_rows() {
        let dir = tempfile::tempdir().unwrap();
        let st = job(dir.path());
        let Written {
            stats,
            saved,
            resendable,
        } = write_vectors(&st, &dir.path().join("out.batch.json")).unwrap();
        assert_eq!(resendable, 0, "the text refused alone would fail again");
        assert_eq!((stats.ok, stats.failed, stats.skipped), (3, 2, 0));
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("out.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let v = |i: usize| lines[i]["embedding"].clone();
        assert_eq!(v(0), serde_json::json!([1.0, 0.0]));
        assert_eq!(v(1), serde_json::json!([0.0, 1.0]));
        assert_eq!(v(2), v(0), "the repeated text shares the vector");
        assert_eq!(lines[3]["error"], "empty text");
        let refused = lines[4]["error"].as_str().unwrap();
        assert!(
            refused.contains("HTTP 400") && refused.contains("input[0]"),
            "{refused}"
        );
        assert_eq!(lines[1]["tokens"], 3);
        // 4 tokens at $1 per 1M, half price: $0.000002, in shares of 1 and 3 tokens; the row
        // sharing row 0's text costs nothing more.
        let cost = stats.cost_usd;
        assert!((cost - 0.000002).abs() < 1e-12, "{cost}");
        assert!((saved.unwrap() - 0.000002).abs() < 1e-12);
    }
}

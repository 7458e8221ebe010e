//! The scheduler: every row of the input through limiter, provider and retry policy into the
//! results, with a bounded number of requests in flight, a journal that makes the run
//! resumable, and a spend cap.
//!
//! Shape of a run:
//!
//! 1. Pre-flight: read the whole input once, check every row and render every prompt. Any error
//!    stops the run here, before a request is sent or a results file is created.
//! 2. The state file is opened: a new run is recorded, or (`--resume`) the recorded one is
//!    continued.
//! 3. A reader thread streams rows and renders them into jobs. When resuming, it sends the rows
//!    that are not finished first, then checks the finished ones and sends again those whose
//!    request changed.
//! 4. The dispatcher takes a slot (at most `--concurrency` rows in flight) and spawns the row's
//!    task (`process_row`); after a stop (Ctrl-C, spend cap, exhausted quota) it marks rows
//!    `skipped` instead of sending them.
//! 5. The journal thread commits every outcome in groups and only then releases the row's slot,
//!    so a `kill -9` loses at most the rows in flight. The collector (this task) keeps live
//!    totals for the progress bar.
//! 6. At the end, one pass merges the input with the journal into the results file, in input
//!    order, and computes the summary. Nothing is held in memory but the current row, however
//!    long the input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rand::SeedableRng;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::cache::{Cache, CachedAnswer};
use crate::concurrency::{Sample, Slots};
use crate::config::{CacheMode, Endpoint, PromptSource, Resume, RunConfig};
use crate::dedup::{Dedup, Turn};
use crate::derived::DerivedColumns;
use crate::error::{Error, ExitStatus};
use crate::expect::Expectation;
use crate::input::{IdSet, InputFile, Row};
use crate::limiter::RateBudget;
use crate::lock::StateLock;
use crate::mock::MockServer;
use crate::output::{ResultsWriter, RowResult, RowStatus, check_writable, format_cost};
use crate::pricing::Price;
use crate::progress::Progress;
use crate::provider::{
    self, Api, CallError, Completion, ErrorKind, Exchange, Provider, Request, Usage, http_client,
};
use crate::retry::RetryPolicy;
use crate::row_settings::RowSettings;
use crate::schema::OutputSchema;
use crate::spend::SpendCap;
use crate::store::{AttemptRecord, Finished, FinishedRows, RunRecord, RunSettings, SeqSet, Store};
use crate::summary::{Stats, Summary};
use crate::template::Prompts;
use crate::tokens;

/// Completion tokens reserved against the token budget before any answer has been seen, when
/// `--max-tokens` is not given; afterwards the reservation follows the answers.
const INITIAL_COMPLETION_ESTIMATE: f64 = 256.0;
/// Input errors listed before "... and N more".
const MAX_LISTED_ERRORS: usize = 10;
/// Row outcomes committed to the journal in one transaction, at most.
const JOURNAL_GROUP: usize = 1024;

/// One row, rendered and ready to send.
struct Job {
    seq: u64,
    id: String,
    request: Request,
    /// The exact body sent, rendered once.
    body: Bytes,
    /// Identifies the request (endpoint and body): a resumed run re-sends a row whose hash
    /// changed.
    request_hash: String,
    /// Prompt tokens, counted on first need (a token budget or the spend cap).
    prompt_tokens: std::sync::OnceLock<u32>,
    /// The price of the row's model (a row can name its own in a `model` column).
    price: Option<Price>,
    /// The cache's answer to this exact request, if it has one.
    cached: Option<CachedAnswer>,
}

impl Job {
    fn prompt_tokens(&self) -> u32 {
        *self.prompt_tokens.get_or_init(|| {
            let r = &self.request;
            tokens::count_chat(&r.model, r.system.as_deref(), &r.user)
        })
    }
}

/// An outcome on its way to the journal.
struct JournalEntry {
    finished: Finished,
    /// The row had a concurrency slot, which the journal releases once the outcome is committed.
    holds_slot: bool,
    /// The row's request was sent for identical ones too, whose answers the journal then writes.
    leads: bool,
}

/// What every row task needs, shared.
struct Shared {
    provider: Arc<dyn Provider>,
    budget: RateBudget,
    slots: Slots,
    retry: RetryPolicy,
    timeout: Duration,
    spend: Option<SpendCap>,
    audit: Option<AuditLog>,
    /// Answers must fit this schema; one that does not is resent up to `schema_retries` times.
    schema: Option<Arc<OutputSchema>>,
    schema_retries: u32,
    /// Identical requests are sent once. `None` with `--no-dedup`.
    dedup: Option<Dedup>,
    /// Completion tokens an answer is expected to need: a running mean of the answers seen.
    completion_estimate: Mutex<f64>,
    /// Cancelled when the run must stop dispatching.
    stop: CancellationToken,
    /// Cancelled when requests in flight must be abandoned (the grace period is over).
    abort: CancellationToken,
    stop_reason: Mutex<Option<String>>,
}

impl Shared {
    /// Stops dispatching; the first reason given is the one reported.
    fn stop_with(&self, reason: String) {
        let mut r = self.stop_reason.lock().expect("stop reason lock");
        if r.is_none() {
            *r = Some(reason);
        }
        self.stop.cancel();
    }

    fn stop_reason(&self) -> String {
        self.stop_reason
            .lock()
            .expect("stop reason lock")
            .clone()
            .unwrap_or_else(|| "the run was stopped".into())
    }

    /// Completion tokens to reserve for one request: the learned mean with a margin, never
    /// more than `--max-tokens` (the most an answer can be).
    fn completion_reservation(&self, max_tokens: Option<u32>) -> u32 {
        let learned = *self.completion_estimate.lock().expect("estimate lock") * 1.25;
        let learned = learned.ceil() as u32 + 1;
        max_tokens.map_or(learned, |m| m.min(learned))
    }

    fn learn_completion(&self, tokens: u64) {
        let mut e = self.completion_estimate.lock().expect("estimate lock");
        *e = if *e == INITIAL_COMPLETION_ESTIMATE {
            tokens as f64
        } else {
            *e * 0.9 + tokens as f64 * 0.1
        };
    }

    /// The most one attempt of `job` can cost: its prompt (with a margin for tokenizer
    /// differences) and a full completion, at full price.
    fn worst_cost(&self, job: &Job) -> f64 {
        let prompt = f64::from(job.prompt_tokens()) * 1.1 + 16.0;
        let completion = job.request.max_tokens.unwrap_or(0);
        job.price.map_or(0.0, |p| {
            p.estimate(prompt.ceil() as u64, u64::from(completion))
        })
    }
}

/// Runs the whole job described by `cfg`.
pub async fn run(cfg: RunConfig) -> Result<ExitStatus, Error> {
    run_to_summary(cfg).await.map(|(status, _)| status)
}

/// Whether the run must learn the server's rate limits from its headers, holding all but one
/// request until the first answer. Not for the embedded mock without limits: the run started
/// it and knows it has none, so the probe would only cost a round trip.
fn learns_limits(endpoint: &Endpoint) -> bool {
    match endpoint {
        Endpoint::Mock(mc) => mc.rpm.is_some() || mc.tpm.is_some(),
        Endpoint::Remote { .. } => true,
    }
}

/// Runs the job and also returns its summary (`None` for a dry run). `batch bench` drives the
/// runner through this, so what it measures is exactly what `batch run` does.
pub async fn run_to_summary(cfg: RunConfig) -> Result<(ExitStatus, Option<Summary>), Error> {
    let started = Instant::now();
    if let Endpoint::Mock(_) = &cfg.endpoint {
        // The embedded mock counts usage with the real tokenizer, which takes a moment to
        // build: start now, so that it overlaps the pre-flight instead of following it.
        let model = cfg.model.clone();
        std::thread::spawn(move || crate::tokens::count(&model, "warm up"));
    }
    let input = InputFile::open_as(&cfg.input, cfg.input_format, cfg.id_column.as_deref())?;
    let prompts = Arc::new(Prompts::new(&cfg.prompt, cfg.system.as_deref(), &input)?);
    let price = cfg.prices.lookup(&cfg.model);
    let expect = match &cfg.expect {
        Some(e) => Some((e.clone(), e.column_index(&input.headers, &cfg.input)?)),
        None => None,
    };
    let plan = {
        let (input, prompts) = (input.clone(), prompts.clone());
        let opts = PreflightOptions {
            model: cfg.model.clone(),
            max_tokens: cfg.max_tokens,
            prices: cfg.prices.clone(),
            capped: cfg.max_cost.is_some(),
            count_tokens: cfg.dry_run,
            expect: expect.clone(),
        };
        tokio::task::spawn_blocking(move || preflight(&input, &prompts, &opts))
            .await
            .map_err(|e| Error::io("pre-flight check failed", std::io::Error::other(e)))??
    };
    if cfg.dry_run {
        if cfg.spooled_stdin {
            let _ = std::fs::remove_file(&cfg.input);
        }
        print_plan(&cfg, &plan);
        return Ok((ExitStatus::Success, None));
    }

    // One process per job: a second one would send the same rows, and write the same files.
    let _lock = StateLock::acquire(&cfg.state)?;
    // Everything that could fail on a path fails now, before anything is spent.
    let derived = DerivedColumns::new(cfg.schema.clone(), expect);
    let writer = if crate::format::is_std(&cfg.output) {
        let tmp = crate::stdio::stdout_partial(&cfg.state);
        let headers = &input.headers;
        ResultsWriter::create_for_stdout(&tmp, cfg.output_format, headers, cfg.sanitize, derived)?
    } else {
        let (out, format, headers) = (&cfg.output, cfg.output_format, &input.headers);
        ResultsWriter::create_as(out, format, headers, cfg.sanitize, derived)?
    };
    if let Some(path) = &cfg.summary_json {
        check_writable(path, "--summary-json")?;
    }
    if matches!(cfg.resume, Resume::Yes { .. }) && !cfg.state.exists() {
        return Err(Error::Usage(format!(
            "nothing to resume: {} does not exist ({})",
            cfg.state.display(),
            if crate::format::is_std(&cfg.output) {
                "with -o -, the state file is kept in the cache folder under a key made from the \
                 input file's path, or from the data piped to stdin: pipe exactly the same data \
                 again, or give --state PATH both times"
            } else {
                "the state file sits beside the results; give the same -o, or --state PATH"
            }
        )));
    }
    let audit = cfg.log.as_deref().map(AuditLog::open).transpose()?;
    let mut store = Store::open(&cfg.state)?;
    let (endpoint, base_url, api_key, _mock) = match &cfg.endpoint {
        Endpoint::Mock(mc) => {
            let server = MockServer::start(mc.clone())
                .await
                .map_err(|e| Error::io("cannot start the mock server on 127.0.0.1", e))?;
            let url = server.base_url();
            // The mock checks that a key is sent, as the real APIs do; any key will do.
            let key = Some(crate::config::ApiKey::placeholder());
            ("mock".to_string(), url, key, Some(server))
        }
        Endpoint::Remote { base_url, api_key } => {
            (base_url.clone(), base_url.clone(), api_key.clone(), None)
        }
    };
    let settings = RunSettings {
        input: canonical(&cfg.input),
        // A run resumed against another API would mix answers to different requests.
        endpoint: match cfg.api {
            Api::OpenAiChat => endpoint,
            api => format!("{endpoint} ({})", api.label()),
        },
        model: cfg.model.clone(),
        prompt: match &cfg.prompt {
            PromptSource::Template(t) => t.clone(),
            PromptSource::PromptColumn => "<column prompt>".into(),
        },
        system: cfg.system.clone(),
        max_tokens: cfg.max_tokens,
        temperature: cfg.temperature,
    };
    let resumed_run = prepare_state(&mut store, &cfg, &settings, plan.rows)?;

    let progress = Progress::new(plan.rows, cfg.quiet);
    // One warning per model that rows go to and that has no price.
    for model in plan.models.keys() {
        if cfg.prices.lookup(model).is_none() {
            progress.println(&format!(
                "warning: no price is known for model {model:?}, so costs will be left empty; \
                 add it with --price-file (prices as of {})",
                cfg.prices.as_of
            ));
        }
    }
    if let Some(run) = &resumed_run {
        progress.println(&format!(
            "resuming: {} rows ok and {} failed of {} are recorded in {}{}",
            run.ok,
            run.failed,
            run.total_rows,
            cfg.state.display(),
            match cfg.resume {
                Resume::Yes {
                    retry_failed: true, ..
                } => "; failed rows will be sent again",
                _ => "",
            }
        ));
    }
    let spend = match cfg.max_cost {
        Some(cap) => Some(SpendCap::new(
            cap,
            if resumed_run.is_some() {
                store.spent()?
            } else {
                0.0
            },
        )),
        None => None,
    };

    let provider = provider::build(
        cfg.api,
        http_client(cfg.concurrency.ceiling()),
        &base_url,
        api_key.as_ref(),
        &cfg.headers,
    );
    let shared = Arc::new(Shared {
        provider: provider.clone(),
        budget: RateBudget::new(cfg.rpm, cfg.tpm, learns_limits(&cfg.endpoint)),
        slots: Slots::new(cfg.concurrency),
        retry: cfg.retry,
        timeout: cfg.timeout,
        spend,
        audit,
        schema: cfg.schema.clone(),
        schema_retries: cfg.schema_retries,
        dedup: if cfg.dedup {
            Some(Dedup::new(FinishedRows::open(&cfg.state)?))
        } else {
            None
        },
        completion_estimate: Mutex::new(INITIAL_COMPLETION_ESTIMATE),
        stop: CancellationToken::new(),
        abort: CancellationToken::new(),
        stop_reason: Mutex::new(None),
    });
    let interrupted = Arc::new(AtomicBool::new(false));
    let signals = tokio::spawn(watch_signals(
        shared.clone(),
        interrupted.clone(),
        cfg.grace,
        cfg.state.clone(),
    ));

    // Reader thread -> dispatcher -> row tasks -> journal thread -> collector.
    let finished = match &resumed_run {
        Some(_) => {
            let retry_failed = matches!(
                cfg.resume,
                Resume::Yes {
                    retry_failed: true,
                    ..
                }
            );
            Some(FinishedRows::open(&cfg.state)?.finished_set(retry_failed)?)
        }
        None => None,
    };
    progress.start_at(finished.as_ref().map_or(0, SeqSet::len));
    let (work_tx, work_rx) = mpsc::channel::<Vec<Result<Job, Error>>>(256 / WORK_CHUNK);
    let reader = {
        // The embedded mock listens on a new port each run; identify it by name so that a
        // resumed run (and the cache) recognise its requests as the same.
        let endpoint = match &cfg.endpoint {
            Endpoint::Mock(_) => provider.endpoint().replacen(&base_url, "mock:", 1),
            Endpoint::Remote { .. } => provider.endpoint().to_string(),
        };
        let cache = match &cfg.cache {
            CacheMode::On {
                dir,
                refresh: false,
                ..
            } => Some(Cache::open(dir)?),
            _ => None,
        };
        let maker = JobMaker {
            input: input.clone(),
            prompts: prompts.clone(),
            provider,
            endpoint,
            cfg: cfg.clone(),
            cache,
            settings: RowSettings::new(&input),
            price,
        };
        let state = cfg.state.clone();
        std::thread::spawn(move || read_work(&maker, finished, &state, work_tx))
    };
    let (result_tx, mut result_rx) = mpsc::unbounded_channel::<RowResult>();
    let (journal_tx, journal_rx) = std::sync::mpsc::channel::<JournalEntry>();
    let journal = {
        let shared = shared.clone();
        let cache = match &cfg.cache {
            CacheMode::On { dir, truncated, .. } => Some((Cache::open(dir)?, *truncated)),
            CacheMode::Off => None,
        };
        std::thread::spawn(move || write_journal(store, cache, journal_rx, &shared, &result_tx))
    };
    let dispatcher = tokio::spawn(dispatch(work_rx, shared.clone(), journal_tx));

    // Collector: live totals for the progress bar.
    let mut live = Stats::default();
    let mut last_draw = Instant::now();
    while let Some(result) = result_rx.recv().await {
        live.record(&result);
        if last_draw.elapsed() >= Duration::from_millis(100) {
            progress.update(&live);
            last_draw = Instant::now();
        }
    }
    // The channel closes once the dispatcher, every row task and the journal are done.
    let read_error = dispatcher
        .await
        .map_err(|e| Error::io("dispatcher failed", std::io::Error::other(e)))?;
    let (store, journal_error) = journal
        .join()
        .map_err(|_| Error::io("journal failed", std::io::Error::other("panic")))?;
    let _ = reader.join();
    signals.abort();
    progress.update(&live);
    progress.finish();
    if let Some(e) = read_error {
        return Err(e);
    }

    // The results file: the input merged with the journal, in input order.
    let missing_reason = journal_error
        .as_ref()
        .map(|e| format!("not recorded: {e}"))
        .unwrap_or_else(|| shared.stop_reason());
    let (stats, output) = {
        let (input, state, model) = (input.clone(), cfg.state.clone(), cfg.model.clone());
        tokio::task::spawn_blocking(move || {
            write_results(&input, &state, writer, &model, &missing_reason)
        })
        .await
        .map_err(|e| Error::io("writing the results failed", std::io::Error::other(e)))??
    };
    let complete = stats.skipped == 0 && journal_error.is_none();
    store.set_finished(complete)?;
    if complete && cfg.spooled_stdin {
        // Nothing is left to resume; the copy of stdin has served its purpose.
        let _ = std::fs::remove_file(&cfg.input);
    }
    if let Some(audit) = Arc::into_inner(shared.clone()).and_then(|s| s.audit) {
        audit.finish()?;
    }
    let mut summary = stats.summary(started.elapsed(), &output, &cfg.model);
    summary.resumed = stats.done().saturating_sub(live.done());
    if plan.models.len() <= 1 {
        // One model asked for (a dated name in some answers is still that one model).
        summary.models.clear();
    }
    if shared.stop.is_cancelled() {
        summary.stopped = Some(shared.stop_reason());
    }
    if let Some(path) = &cfg.summary_json {
        summary.write_json(path)?;
    }
    if !cfg.quiet {
        let _ = summary.print(&mut std::io::stderr().lock());
        if !complete {
            eprintln!(
                "State      {} (run again with --resume to finish)",
                cfg.state.display()
            );
        }
    }
    if let Some(e) = journal_error {
        return Err(e);
    }
    let status = if interrupted.load(Ordering::SeqCst) {
        ExitStatus::Interrupted
    } else if stats.failed + stats.skipped > 0 {
        ExitStatus::RowsFailed
    } else {
        ExitStatus::Success
    };
    Ok((status, Some(summary)))
}

/// Writes the results file from the input and the journal, in input order, and totals it. A row
/// the journal does not have (the run stopped before it, or the journal could not be written)
/// is written as skipped with `missing_reason`.
fn write_results(
    input: &InputFile,
    state: &Path,
    mut writer: ResultsWriter,
    model: &str,
    missing_reason: &str,
) -> Result<(Stats, PathBuf), Error> {
    let mut stats = Stats::default();
    // A row never sent still shows the model it was meant for.
    let settings = RowSettings::new(input);
    let model_of = |row: &Row| -> String {
        settings
            .read(row)
            .ok()
            .and_then(|o| o.model.map(str::to_string))
            .unwrap_or_else(|| model.to_string())
    };
    // Merge: journal rows arrive in seq order; input rows without one are written as skipped,
    // and journal rows past the input's end (a shorter input on resume) find none and are left.
    // The journal is read on its own thread, beside the input's parsing and the results' writing
    // (a third of this step's time each).
    let journal = FinishedRows::open(state)?;
    let (prior_tx, prior_rx) = std::sync::mpsc::sync_channel(1024);
    let journal_reader =
        std::thread::spawn(move || journal.for_each(|prior| prior_tx.send(prior).is_ok()));
    let mut error = None;
    let mut pending_input = input.rows()?;
    let mut next_input = pending_input.next();
    for prior in prior_rx {
        let mut step = || -> Result<(), Error> {
            while let Some(row) = next_input.take() {
                let row = row?;
                if row.seq < prior.result.seq {
                    let r = RowResult::skipped(
                        row.seq,
                        row.id.clone(),
                        &model_of(&row),
                        missing_reason,
                    );
                    stats.record(&r);
                    writer.write_row(&row, &r)?;
                    next_input = pending_input.next();
                } else if row.seq == prior.result.seq {
                    stats.record(&prior.result);
                    writer.write_row(&row, &prior.result)?;
                    next_input = pending_input.next();
                    break;
                } else {
                    // The journal has no row for this input row's position any more (journal
                    // positions are unique and sorted): keep the input row for the next one.
                    next_input = Some(Ok(row));
                    break;
                }
            }
            Ok(())
        };
        if let Err(e) = step() {
            error = Some(e);
            break;
        }
    }
    // Dropping the receiver (on an error) ends the reader at its next row.
    journal_reader
        .join()
        .map_err(|_| Error::io("reading the journal failed", std::io::Error::other("panic")))??;
    if let Some(e) = error {
        return Err(e);
    }
    while let Some(row) = next_input.take() {
        let row = row?;
        let r = RowResult::skipped(row.seq, row.id.clone(), &model_of(&row), missing_reason);
        stats.record(&r);
        writer.write_row(&row, &r)?;
        next_input = pending_input.next();
    }
    stats.expect = writer.pass_rate();
    Ok((stats, writer.finish()?))
}

/// Records a new run in the state file, or checks that the recorded one may be resumed. Returns
/// the recorded run when resuming.
fn prepare_state(
    store: &mut Store,
    cfg: &RunConfig,
    settings: &RunSettings,
    rows: u64,
) -> Result<Option<RunRecord>, Error> {
    let recorded = store.run()?;
    let state = cfg.state.display();
    match (recorded, cfg.resume) {
        (None, Resume::Yes { .. }) => Err(Error::Usage(format!(
            "nothing to resume: {state} records no run (the state file sits beside the results; \
             give the same -o, or --state PATH)"
        ))),
        (Some(run), Resume::No) if !run.finished => Err(Error::Usage(format!(
            "an unfinished run is recorded in {state} ({} ok and {} failed of {} rows); add \
             --resume to continue it without paying again for finished rows, or --restart to \
             discard it",
            run.ok, run.failed, run.total_rows
        ))),
        (Some(run), Resume::Yes { force, .. }) => {
            let changed = run.settings.differences(settings);
            if !changed.is_empty() && !force {
                return Err(Error::Usage(format!(
                    "cannot resume: the run recorded in {state} was made with a different {}; \
                     resuming would mix answers to different requests in one file. Use --force \
                     to resume anyway (rows whose request changed are sent again), or --restart \
                     to start over",
                    changed.join(", ")
                )));
            }
            store.update_settings(settings, rows)?;
            store.set_finished(false)?;
            Ok(Some(run))
        }
        _ => {
            store.start_run(settings, rows)?;
            Ok(None)
        }
    }
}

fn canonical(path: &Path) -> String {
    path.canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// What the pre-flight learned.
pub(crate) struct Plan {
    pub(crate) rows: u64,
    /// Prompt tokens of every row (counted only for a dry run).
    pub(crate) prompt_tokens: u64,
    /// The rows by the model they go to (`--model`, or the row's `model` cell).
    pub(crate) models: BTreeMap<String, ModelPlan>,
}

/// The rows that go to one model.
#[derive(Debug, Default)]
pub(crate) struct ModelPlan {
    rows: u64,
    /// Counted only for a dry run.
    prompt_tokens: u64,
    /// The sum of the rows' completion caps; `None` once a row has no cap.
    completion_cap: Option<u64>,
}

/// What the pre-flight checks beyond the rows themselves.
pub(crate) struct PreflightOptions {
    pub(crate) model: String,
    pub(crate) max_tokens: Option<u32>,
    pub(crate) prices: crate::pricing::PriceTable,
    /// `--max-cost` is set: every row's model needs a price.
    pub(crate) capped: bool,
    pub(crate) count_tokens: bool,
    /// `--expect`: the expectation and its column, whose cells are checked too.
    pub(crate) expect: Option<(Expectation, usize)>,
}

/// Checks every row and renders every prompt without sending anything. Lists the first few
/// problems with their lines so they can all be fixed in one go. `batch submit` checks its
/// input with it too.
pub(crate) fn preflight(
    input: &InputFile,
    prompts: &Prompts,
    opts: &PreflightOptions,
) -> Result<Plan, Error> {
    let settings = RowSettings::new(input);
    let mut ids = IdSet::default();
    let mut errors = Vec::new();
    let mut more = 0usize;
    let mut rows = 0u64;
    let mut prompt_tokens = 0u64;
    let mut models: BTreeMap<String, ModelPlan> = BTreeMap::new();
    let mut last_row = None;
    let at = |row: &Row| format!("{}: line {}", input.path.display(), row.line);
    for row in input.rows()? {
        let problem = match row {
            Err(e) => Some(e.to_string()),
            Ok(row) => {
                rows += 1;
                ids.insert(&row);
                let expected = opts
                    .expect
                    .as_ref()
                    .map(|(e, i)| e.check_expected(row.record.get(*i).unwrap_or("")));
                let checked = prompts
                    .render(input, &row)
                    .map_err(|e| format!("{}: {e}", at(&row)))
                    .and_then(|r| {
                        let o = settings
                            .read(&row)
                            .map_err(|e| format!("{}, {e}", at(&row)))?;
                        if let Some(Err(e)) = &expected {
                            return Err(format!("{}: {e}", at(&row)));
                        }
                        Ok((r, o))
                    });
                let problem = match checked {
                    Err(e) => Some(e),
                    Ok((r, o)) => {
                        let model = o.model(&opts.model);
                        let plan = match models.get_mut(model) {
                            Some(p) => p,
                            None => {
                                let first = ModelPlan {
                                    completion_cap: Some(0),
                                    ..Default::default()
                                };
                                models.entry(model.to_string()).or_insert(first)
                            }
                        };
                        plan.rows += 1;
                        let cap = o.max_tokens.or(opts.max_tokens).map(u64::from);
                        plan.completion_cap = plan.completion_cap.zip(cap).map(|(a, b)| a + b);
                        if opts.count_tokens {
                            let system = o.system.or(r.system.as_deref());
                            let n = u64::from(tokens::count_chat(model, system, &r.user));
                            plan.prompt_tokens += n;
                            prompt_tokens += n;
                        }
                        (opts.capped && opts.prices.lookup(model).is_none()).then(|| {
                            format!(
                                "{}, column \"model\": --max-cost needs a price for model \
                                 {model:?}, and none is known; add it with --price-file",
                                at(&row)
                            )
                        })
                    }
                };
                last_row = Some(row);
                problem
            }
        };
        if let Some(p) = problem {
            if errors.len() < MAX_LISTED_ERRORS {
                errors.push(p);
            } else {
                more += 1;
            }
        }
    }
    if let Some(last) = &last_row
        && let Some(problem) = input.unterminated_quote(last)?
    {
        errors.push(problem);
    }
    for dup in ids.duplicates(input)? {
        if errors.len() < MAX_LISTED_ERRORS {
            errors.push(dup);
        } else {
            more += 1;
        }
    }
    if !errors.is_empty() {
        let mut msg = errors.join("\n");
        if more > 0 {
            msg.push_str(&format!("\n... and {more} more problems"));
        }
        msg.push_str("\nNothing was sent; fix the input and run again.");
        return Err(Error::Input(msg));
    }
    if rows == 0 {
        return Err(Error::Input(format!(
            "{} has a header but no rows; add one row per request",
            input.path.display()
        )));
    }
    Ok(Plan {
        rows,
        prompt_tokens,
        models,
    })
}

/// `--dry-run`: what the run would send and cost, priced per row's model.
fn print_plan(cfg: &RunConfig, plan: &Plan) {
    let dollars = |v: f64| format!("${}", format_cost((v * 1e6).round() / 1e6));
    println!("Dry run: nothing was sent and nothing was written.");
    println!(
        "Rows         {} in {} (every row checked, every prompt rendered)",
        plan.rows,
        cfg.input.display()
    );
    let priced: Vec<(&String, &ModelPlan, Option<Price>)> = plan
        .models
        .iter()
        .map(|(m, p)| (m, p, cfg.prices.lookup(m)))
        .collect();
    let unpriced: Vec<String> = priced
        .iter()
        .filter(|(_, _, p)| p.is_none())
        .map(|(m, _, _)| format!("{m:?}"))
        .collect();
    let completion = priced
        .iter()
        .try_fold(0u64, |sum, (_, p, _)| Some(sum + p.completion_cap?));
    // Per-row caps are possible (a `max_tokens` column), so the cap is named per row only when
    // every row has the flag's.
    let cap_note = match cfg.max_tokens {
        Some(m) if completion == Some(plan.rows * u64::from(m)) => {
            format!("--max-tokens {m} a row")
        }
        _ => "each row's max_tokens".into(),
    };
    if !unpriced.is_empty() {
        println!("Prompts      {} tokens", plan.prompt_tokens);
        println!(
            "Cost         unknown: no price for model {}; add one with --price-file",
            unpriced.join(", ")
        );
        return;
    }
    let prompt_cost: f64 = priced
        .iter()
        .map(|(_, m, p)| p.map_or(0.0, |p| p.estimate(m.prompt_tokens, 0)))
        .sum();
    match priced.as_slice() {
        [(model, _, Some(p))] => println!(
            "Prompts      {} tokens, {} at {model}'s input price (${} per 1M)",
            plan.prompt_tokens,
            dollars(prompt_cost),
            p.input
        ),
        _ => println!(
            "Prompts      {} tokens, {} at each row's model's input price",
            plan.prompt_tokens,
            dollars(prompt_cost),
        ),
    }
    match completion {
        Some(c) => {
            let completion_cost: f64 = priced
                .iter()
                .map(|(_, m, p)| p.map_or(0.0, |p| p.estimate(0, m.completion_cap.unwrap_or(0))))
                .sum();
            println!(
                "Completions  at most {c} tokens ({cap_note}), {}",
                dollars(completion_cost)
            );
            println!(
                "Worst case   {} (prices as of {})",
                dollars(prompt_cost + completion_cost),
                cfg.prices.as_of
            );
        }
        None => println!(
            "Completions  unknown: without --max-tokens an answer's length has no bound{}",
            match priced.as_slice() {
                [(_, _, Some(p))] => format!(" (${} per 1M output tokens)", p.output),
                _ => String::new(),
            }
        ),
    }
    if priced.len() > 1 {
        for (model, m, p) in &priced {
            let worst = p
                .zip(m.completion_cap)
                .map(|(p, c)| dollars(p.estimate(m.prompt_tokens, c)));
            println!(
                "  {model:<22} {} rows, {} prompt tokens{}",
                m.rows,
                m.prompt_tokens,
                worst
                    .map(|w| format!(", worst case {w}"))
                    .unwrap_or_default()
            );
        }
    }
}

/// Renders rows into jobs (shared by the reader thread and nothing else, but kept apart so the
/// merge logic reads plainly).
struct JobMaker {
    input: InputFile,
    prompts: Arc<Prompts>,
    provider: Arc<dyn Provider>,
    /// Where requests go, as it identifies them (stable across runs).
    endpoint: String,
    cfg: RunConfig,
    /// Read for hits, unless the cache is off or being refreshed.
    cache: Option<Cache>,
    settings: RowSettings,
    /// The price of `--model`.
    price: Option<Price>,
}

impl JobMaker {
    fn make(&self, row: Row) -> Result<Job, Error> {
        // The pre-flight rendered this row already; failing now means the file changed.
        let rendered = self.prompts.render(&self.input, &row).map_err(|e| {
            Error::Input(format!(
                "{}: line {}: {e} (did the file change during the run?)",
                self.input.path.display(),
                row.line
            ))
        })?;
        let mut request = Request {
            model: self.cfg.model.clone(),
            system: rendered.system,
            user: rendered.user,
            max_tokens: self.cfg.max_tokens,
            temperature: self.cfg.temperature,
            schema: self.cfg.schema.clone(),
        };
        // The pre-flight checked these cells too.
        self.settings
            .read(&row)
            .map_err(|e| {
                Error::Input(format!(
                    "{}: line {}, {e} (did the file change during the run?)",
                    self.input.path.display(),
                    row.line
                ))
            })?
            .apply(&mut request);
        let price = if request.model == self.cfg.model {
            self.price
        } else {
            self.cfg.prices.lookup(&request.model)
        };
        let body = Bytes::from(self.provider.body(&request));
        let request_hash = request_hash(&self.endpoint, &body);
        let cached = match &self.cache {
            // A cache that cannot be read is a cache that misses.
            Some(c) => c.get(&request_hash).unwrap_or_else(|e| {
                tracing::warn!("{e}");
                None
            }),
            None => None,
        };
        Ok(Job {
            seq: row.seq,
            id: row.id,
            request,
            body,
            request_hash,
            prompt_tokens: std::sync::OnceLock::new(),
            price,
            cached,
        })
    }
}

/// SHA-256 of where a request goes and exactly what it says.
pub fn request_hash(endpoint: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(endpoint.as_bytes());
    h.update(b"\n");
    h.update(body);
    let mut hex = String::with_capacity(64);
    for b in h.finalize() {
        for nibble in [b >> 4, b & 0xf] {
            hex.push(char::from_digit(u32::from(nibble), 16).expect("a nibble is a hex digit"));
        }
    }
    hex
}

/// The reader thread: renders rows into jobs and sends them until the input ends or the
/// dispatcher goes away. With `finished` (a resumed run), the rows not finished go first; then
/// the finished ones are checked against the journal and sent again only if their request
/// changed. So a run that finished 900,000 rows of a million starts sending in the time it takes
/// to read the file, not to re-render 900,000 prompts.
fn read_work(
    maker: &JobMaker,
    finished: Option<SeqSet>,
    state: &Path,
    tx: mpsc::Sender<Vec<Result<Job, Error>>>,
) {
    let tx = std::cell::RefCell::new(WorkSender {
        tx,
        chunk: Vec::with_capacity(WORK_CHUNK),
    });
    let send = |job: Result<Job, Error>| -> bool { tx.borrow_mut().send(job) };
    let rows = match maker.input.rows() {
        Ok(rows) => rows,
        Err(e) => {
            send(Err(e));
            return;
        }
    };
    for row in rows {
        if let Ok(r) = &row
            && finished.as_ref().is_some_and(|f| f.contains(r.seq))
        {
            continue;
        }
        if !send(row.and_then(|r| maker.make(r))) {
            return;
        }
    }
    let Some(finished) = finished else {
        return;
    };
    // The rows left to send go now, not after the recheck of every finished row.
    if !tx.borrow_mut().flush() {
        return;
    }
    let recheck = || -> Result<(), Error> {
        let mut rows = maker.input.rows()?;
        let mut go_on = true;
        let mut error = None;
        FinishedRows::open(state)?.for_each(|prior| {
            if !finished.contains(prior.result.seq) {
                return true;
            }
            for row in rows.by_ref() {
                let row = match row {
                    Ok(row) => row,
                    Err(e) => {
                        error = Some(e);
                        return false;
                    }
                };
                if row.seq < prior.result.seq {
                    continue;
                }
                if row.seq == prior.result.seq {
                    match maker.make(row) {
                        Ok(job) if job.request_hash == prior.request_hash => {}
                        job => go_on = send(job),
                    }
                }
                break;
            }
            go_on
        })?;
        error.map_or(Ok(()), Err)
    };
    if let Err(e) = recheck() {
        send(Err(e));
    }
}

/// Jobs go to the dispatcher in chunks: the reader is faster than the dispatcher and waits on
/// a full channel, and each job sent alone would wake it again (a futex and a context switch
/// per row).
const WORK_CHUNK: usize = 64;

/// The reader's end of the work channel; what is left is sent when it is dropped.
struct WorkSender {
    tx: mpsc::Sender<Vec<Result<Job, Error>>>,
    chunk: Vec<Result<Job, Error>>,
}

impl WorkSender {
    /// Queues a job; false when reading should stop (an error, or the dispatcher is gone).
    /// An error is sent at once, with the jobs before it.
    fn send(&mut self, job: Result<Job, Error>) -> bool {
        let failed = job.is_err();
        self.chunk.push(job);
        if (failed || self.chunk.len() >= WORK_CHUNK) && !self.flush() {
            return false;
        }
        !failed
    }

    fn flush(&mut self) -> bool {
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(WORK_CHUNK));
        chunk.is_empty() || self.tx.blocking_send(chunk).is_ok()
    }
}

impl Drop for WorkSender {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The journal thread: commits outcomes in groups, stores new answers in the cache, releases
/// the slots of the rows that had one, writes the answers of rows that waited for an identical
/// request, and passes every result on. Returns the store (for the final bookkeeping) and the
/// first write error, if any; a journal that cannot be written stops the run.
fn write_journal(
    mut store: Store,
    mut cache: Option<(Cache, bool)>,
    rx: std::sync::mpsc::Receiver<JournalEntry>,
    shared: &Shared,
    results: &mpsc::UnboundedSender<RowResult>,
) -> (Store, Option<Error>) {
    let mut error = None;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < JOURNAL_GROUP {
            match rx.try_recv() {
                Ok(item) => group.push(item),
                Err(_) => break,
            }
        }
        let mut commit = |finished: &[Finished]| {
            if error.is_none()
                && let Err(e) = store.record(finished)
            {
                shared.stop_with(format!("{e}"));
                error = Some(e);
            }
        };
        let (finished, flags): (Vec<_>, Vec<_>) = group
            .into_iter()
            .map(|e| (e.finished, (e.holds_slot, e.leads)))
            .unzip();
        commit(&finished);
        if let Some((c, truncated)) = cache.as_mut() {
            let answers: Vec<(&str, CachedAnswer)> = finished
                .iter()
                .filter(|f| cacheable(&f.result, *truncated))
                .map(|f| (f.request_hash.as_str(), answer_of(&f.result)))
                .collect();
            if !answers.is_empty()
                && let Err(e) = c.put_many(answers.iter().map(|(k, a)| (*k, a)))
            {
                // The run goes on without storing answers rather than stopping for the cache.
                eprintln!("warning: {e}; answers of this run will not be cached");
                cache = None;
            }
        }
        // Rows that waited for an identical request get its answer, now that it is committed
        // (so a later identical row finds it in the journal).
        let mut reused = Vec::new();
        if let Some(dedup) = &shared.dedup {
            for (f, (_, leads)) in finished.iter().zip(&flags) {
                if !*leads {
                    continue;
                }
                for (seq, id) in dedup.answered(&f.request_hash, &f.result) {
                    reused.push(Finished {
                        result: RowResult::reused(seq, id, &f.result),
                        request_hash: f.request_hash.clone(),
                        attempts: Vec::new(),
                    });
                }
            }
        }
        if !reused.is_empty() {
            commit(&reused);
        }
        for (f, (holds_slot, _)) in finished.into_iter().zip(flags) {
            if holds_slot {
                shared.slots.release();
            }
            let _ = results.send(f.result);
        }
        for f in reused {
            let _ = results.send(f.result);
        }
    }
    (store, error)
}

/// Whether an answer may be cached: complete and successful, and not cut off by the token cap
/// unless `truncated` allows it. Answers that came from the cache are there already.
fn cacheable(r: &RowResult, truncated: bool) -> bool {
    r.status == RowStatus::Ok && !r.cached && (truncated || !Api::is_truncated(&r.finish_reason))
}

fn answer_of(r: &RowResult) -> CachedAnswer {
    CachedAnswer {
        text: r.output.clone(),
        finish_reason: r.finish_reason.clone(),
        model: r.model.clone(),
        usage: r.usage.unwrap_or_default(),
        cost_usd: r.cost,
    }
}

/// The result of a row answered from the cache: nothing paid, the original usage kept.
fn cached_result(job: &Job, a: CachedAnswer, priced: bool) -> RowResult {
    RowResult {
        seq: job.seq,
        id: job.id.clone(),
        status: RowStatus::Ok,
        output: a.text,
        error: String::new(),
        attempts: 0,
        throttled: 0,
        latency: None,
        usage: Some(a.usage),
        cost: priced.then_some(0.0),
        model: a.model,
        finish_reason: a.finish_reason,
        cached: true,
        saved_usd: a.cost_usd,
    }
}

/// Starts each job when a slot is free; returns the input error that ended reading, if any.
async fn dispatch(
    mut work: mpsc::Receiver<Vec<Result<Job, Error>>>,
    shared: Arc<Shared>,
    journal: std::sync::mpsc::Sender<JournalEntry>,
) -> Option<Error> {
    let record = |result: RowResult, job: Job, holds_slot: bool, leads: bool| {
        let finished = Finished {
            result,
            request_hash: job.request_hash,
            attempts: Vec::new(),
        };
        let _ = journal.send(JournalEntry {
            finished,
            holds_slot,
            leads,
        });
    };
    let skip = |job: Job, leads: bool| {
        let reason = shared.stop_reason();
        let result = RowResult::skipped(job.seq, job.id.clone(), &job.request.model, &reason);
        record(result, job, false, leads);
    };
    let mut chunk = Vec::new().into_iter();
    loop {
        let Some(item) = chunk.next() else {
            match work.recv().await {
                Some(next) => {
                    chunk = next.into_iter();
                    continue;
                }
                None => break,
            }
        };
        let mut job = match item {
            Ok(job) => job,
            Err(e) => {
                shared.stop_with("the input could not be read".into());
                return Some(e);
            }
        };
        if let Some(answer) = job.cached.take() {
            let result = cached_result(&job, answer, job.price.is_some());
            record(result, job, false, false);
            continue;
        }
        // Identical requests are sent once: wait for the one in flight, or reuse the answer.
        let mut leads = false;
        if let Some(dedup) = &shared.dedup {
            match dedup.turn(job.seq, &job.id, &job.request_hash) {
                Turn::Follow => continue,
                Turn::Reuse(result) => {
                    record(*result, job, false, false);
                    continue;
                }
                Turn::Lead => {}
            }
            leads = true;
        }
        if shared.stop.is_cancelled() {
            skip(job, leads);
            continue;
        }
        tokio::select! {
            _ = shared.slots.acquire() => {}
            _ = shared.stop.cancelled() => {
                skip(job, leads);
                continue;
            }
        }
        let (shared, journal) = (shared.clone(), journal.clone());
        tokio::spawn(async move {
            let (result, attempts) = process_row(&shared, &job).await;
            let finished = Finished {
                result,
                request_hash: job.request_hash,
                attempts,
            };
            // The journal thread releases the slot once the row is committed.
            let entry = JournalEntry {
                finished,
                holds_slot: true,
                leads,
            };
            if journal.send(entry).is_err() {
                shared.slots.release();
            }
        });
    }
    None
}

/// One row's path: reserve spend and rate budget, send, classify, then retry or record.
async fn process_row(shared: &Shared, job: &Job) -> (RowResult, Vec<AttemptRecord>) {
    // Seeded only if the row is retried: most are not, and seeding is a system call.
    let mut rng = None;
    let mut journal = Vec::new();
    let mut tally = Tally::default();
    let mut last_error: Option<CallError> = None;
    let stopped = |attempts: &[AttemptRecord], tally: &Tally, last: Option<&CallError>| {
        let mut reason = shared.stop_reason();
        if let Some(e) = last {
            reason = format!("{reason}; last attempt: {e}");
        }
        let mut r = RowResult::skipped(job.seq, job.id.clone(), &job.request.model, &reason);
        r.attempts = attempts.len() as u32;
        r.throttled = tally.throttled;
        r.usage = tally.billed;
        r.cost = tally.billed_cost;
        r
    };
    loop {
        if shared.stop.is_cancelled() {
            return (stopped(&journal, &tally, last_error.as_ref()), journal);
        }
        let spend = match &shared.spend {
            None => None,
            Some(cap) => match cap.reserve(shared.worst_cost(job)) {
                Ok(r) => Some(r),
                Err((committed, reserved)) => {
                    let usd = |v: f64| format_cost((v * 1e6).round() / 1e6);
                    shared.stop_with(format!(
                        "spend cap reached: ${} spent and ${} reserved by requests in flight, of \
                         --max-cost ${}; the next request could cost up to ${}",
                        usd(committed),
                        usd(reserved),
                        usd(cap.cap()),
                        usd(shared.worst_cost(job))
                    ));
                    return (stopped(&journal, &tally, last_error.as_ref()), journal);
                }
            },
        };
        let reserve = || {
            job.prompt_tokens()
                .saturating_add(shared.completion_reservation(job.request.max_tokens))
        };
        let permit = tokio::select! {
            permit = shared.budget.acquire(reserve) => permit,
            _ = shared.stop.cancelled() => {
                if let (Some(cap), Some(r)) = (&shared.spend, spend) {
                    cap.settle(r, Some(0.0));
                }
                return (stopped(&journal, &tally, last_error.as_ref()), journal);
            }
        };
        // A request larger than a token limit could ever admit fails without being sent.
        let permit = match permit {
            Ok(permit) => permit,
            Err(too_large) => {
                if let (Some(cap), Some(r)) = (&shared.spend, spend) {
                    cap.settle(r, Some(0.0));
                }
                let mut r = RowResult::skipped(
                    job.seq,
                    job.id.clone(),
                    &job.request.model,
                    &too_large.to_string(),
                );
                r.status = RowStatus::Failed;
                r.attempts = journal.len() as u32;
                r.throttled = tally.throttled;
                r.usage = tally.billed;
                r.cost = tally.billed_cost;
                return (r, journal);
            }
        };
        let attempt = journal.len() as u32 + 1;
        let sending = shared.slots.start_sending();
        let started_at = SystemTime::now();
        let sent = Instant::now();
        let call = tokio::time::timeout(shared.timeout, shared.provider.send(job.body.clone()));
        let exchange = tokio::select! {
            r = call => r.unwrap_or_else(|_| Exchange::failed(CallError::new(
                ErrorKind::Timeout,
                format!("no complete response within {:?} (--timeout)", shared.timeout),
            ))),
            _ = shared.abort.cancelled() => Exchange::failed(CallError::new(
                ErrorKind::Timeout,
                "abandoned: still in flight when the --grace period after the interrupt ended",
            )),
        };
        let latency = sent.elapsed();
        let abandoned = shared.abort.is_cancelled() && exchange.outcome.is_err();
        // What this attempt counts as costing: its answer's cost; for a failure, nothing,
        // unless the server may have billed an answer we never saw (then, under a cap, the
        // worst case).
        let charged = match &exchange.outcome {
            Ok(c) => job.price.map(|p| p.cost(&c.usage)),
            Err(e) if cost_unknowable(e) => spend.as_ref().map(|r| r.worst()),
            Err(_) => spend.as_ref().map(|_| 0.0),
        };
        if let (Some(cap), Some(r)) = (&shared.spend, spend) {
            cap.settle(r, charged);
        }
        shared
            .slots
            .finish_sending(sending, concurrency_sample(&exchange.outcome, latency));
        shared.budget.observe(match &exchange.outcome {
            Ok(c) => c.rate_limits.as_ref(),
            Err(e) => e.rate_limits.as_deref(),
        });
        // A complete answer that does not fit the schema was paid for, but fails like an error.
        let invalid = match (&exchange.outcome, &shared.schema) {
            (Ok(c), Some(schema)) => schema.check(&c.text).err().map(|m| CallError {
                request_id: c.request_id.clone(),
                ..CallError::new(ErrorKind::InvalidAnswer, m)
            }),
            _ => None,
        };
        let attempt_error = match (&exchange.outcome, &invalid) {
            (Err(e), _) | (Ok(_), Some(e)) => Some(e),
            (Ok(_), None) => None,
        };
        if let Some(audit) = &shared.audit {
            let error = attempt_error.map(|e| e.to_string());
            audit.attempt(
                started_at,
                &job.id,
                job.seq,
                attempt,
                &job.body,
                Some(&exchange),
                error,
                latency,
            );
        }
        journal.push(AttemptRecord {
            attempt,
            started_at,
            outcome: attempt_error.map_or("ok", |e| e.kind.label()),
            http_status: exchange.status,
            error: attempt_error.map(|e| e.to_string()),
            latency,
            request_id: match &exchange.outcome {
                Ok(c) => c.request_id.clone(),
                Err(e) => e.request_id.clone(),
            },
            charged_usd: charged,
        });
        let err = match exchange.outcome {
            Ok(c) => {
                let used = c.usage.prompt_tokens + c.usage.completion_tokens;
                shared.budget.settle(permit, Some(used));
                shared.learn_completion(c.usage.completion_tokens);
                if let Some(e) = invalid {
                    tally.bill(c.usage, charged);
                    tally.rejected_answer = c.text;
                    e
                } else {
                    // The answers rejected before this one count in the row's tokens and cost.
                    tally.bill(c.usage, charged);
                    let result = RowResult {
                        seq: job.seq,
                        id: job.id.clone(),
                        status: RowStatus::Ok,
                        output: c.text,
                        error: String::new(),
                        attempts: attempt,
                        throttled: tally.throttled,
                        latency: Some(latency),
                        cost: tally.billed_cost,
                        usage: tally.billed,
                        model: c.model.unwrap_or_else(|| job.request.model.clone()),
                        finish_reason: c.finish_reason.unwrap_or_default(),
                        cached: false,
                        saved_usd: None,
                    };
                    return (result, journal);
                }
            }
            Err(e) => {
                // A rejected or failed request is not counted against the server's token
                // budget.
                shared.budget.settle(permit, None);
                e
            }
        };
        if abandoned {
            return (stopped(&journal, &tally, Some(&err)), journal);
        }
        if err.kind == ErrorKind::RateLimited {
            tally.throttled += 1;
            shared.budget.back_off(err.retry_after);
        }
        tracing::debug!(row = %job.id, attempt, error = %err, "attempt failed");
        if err.kind.stops_run() {
            shared.stop_with(stop_message(&err));
        }
        // Answers that do not fit the schema have their own budget of resends, sent at once
        // (nothing is overloaded); the other retries count without them.
        let wait = if err.kind == ErrorKind::InvalidAnswer {
            tally.invalid_answers += 1;
            (tally.invalid_answers <= shared.schema_retries).then_some(Duration::ZERO)
        } else {
            let retries = attempt - 1 - tally.invalid_answers;
            shared.retry.next_delay(
                retries,
                &err,
                rng.get_or_insert_with(rand::rngs::SmallRng::from_os_rng),
            )
        };
        match wait {
            Some(wait) => {
                last_error = Some(err);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shared.stop.cancelled() => {}
                }
            }
            None => {
                let result = RowResult {
                    seq: job.seq,
                    id: job.id.clone(),
                    status: RowStatus::Failed,
                    // The answer that did not fit, to see what went wrong.
                    output: if err.kind == ErrorKind::InvalidAnswer {
                        std::mem::take(&mut tally.rejected_answer)
                    } else {
                        String::new()
                    },
                    error: if attempt > 1 {
                        format!("{err} (after {attempt} attempts)")
                    } else {
                        err.to_string()
                    },
                    attempts: attempt,
                    throttled: tally.throttled,
                    latency: Some(latency),
                    usage: tally.billed,
                    cost: tally.billed_cost,
                    model: job.request.model.clone(),
                    finish_reason: String::new(),
                    cached: false,
                    saved_usd: None,
                };
                return (result, journal);
            }
        }
    }
}

/// What a row's attempts add up to.
#[derive(Default)]
struct Tally {
    /// Attempts answered with a 429.
    throttled: u32,
    /// Answers that did not fit the schema.
    invalid_answers: u32,
    /// Usage and cost of the answers received (rejected ones included: they were paid for).
    billed: Option<Usage>,
    billed_cost: Option<f64>,
    /// The last answer that did not fit the schema.
    rejected_answer: String,
}

impl Tally {
    fn bill(&mut self, usage: Usage, cost: Option<f64>) {
        let b = self.billed.get_or_insert_with(Usage::default);
        b.prompt_tokens += usage.prompt_tokens;
        b.completion_tokens += usage.completion_tokens;
        b.cached_tokens += usage.cached_tokens;
        b.cache_write_tokens += usage.cache_write_tokens;
        b.reasoning_tokens += usage.reasoning_tokens;
        if let Some(c) = cost {
            *self.billed_cost.get_or_insert(0.0) += c;
        }
    }
}

/// Whether a failed attempt may have been billed all the same: it timed out, or its answer was
/// lost or garbled after the server produced it. An HTTP refusal costs nothing.
fn cost_unknowable(e: &CallError) -> bool {
    matches!(
        e.kind,
        ErrorKind::Timeout | ErrorKind::Connection | ErrorKind::InvalidResponse
    )
}

/// What an attempt tells the concurrency controller: 429s, timeouts and 503s are overload.
fn concurrency_sample(outcome: &Result<Completion, CallError>, latency: Duration) -> Sample {
    match outcome {
        Err(e) if matches!(e.kind, ErrorKind::RateLimited | ErrorKind::Timeout) => Sample::Dropped,
        Err(e) if e.status == Some(503) => Sample::Dropped,
        _ => Sample::Answered(latency),
    }
}

/// What to tell the user when the API says no request can succeed.
fn stop_message(err: &CallError) -> String {
    match err.kind {
        ErrorKind::QuotaExhausted => format!(
            "the API reports the account is out of quota or credit ({err}); add credit or raise \
             the limit, then run again with --resume"
        ),
        ErrorKind::Auth => format!(
            "the API rejected the key ({err}); check OPENAI_API_KEY or --api-key-file and the \
             key's access to this model"
        ),
        _ => err.to_string(),
    }
}

/// First Ctrl-C or SIGTERM: stop dispatching, give requests in flight `grace` to finish, then
/// abandon them; the run writes what it has. Second: leave at once (the journal is consistent:
/// every commit is atomic).
async fn watch_signals(
    shared: Arc<Shared>,
    interrupted: Arc<AtomicBool>,
    grace: Duration,
    state: PathBuf,
) {
    for n in 0.. {
        if !wait_for_signal().await {
            return;
        }
        if n > 0 {
            eprintln!(
                "\nsecond interrupt: exiting now; finished rows are saved in {}, run again with \
                 --resume",
                state.display()
            );
            std::process::exit(ExitStatus::Interrupted as i32);
        }
        eprintln!(
            "\ninterrupted: finishing requests in flight (up to {grace:?}); press Ctrl-C again to \
             quit now"
        );
        interrupted.store(true, Ordering::SeqCst);
        shared.stop_with("interrupted".into());
        let abort = shared.abort.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            abort.cancel();
        });
    }
}

/// Waits for Ctrl-C or SIGTERM; `false` if signals cannot be watched. (`batch watch` waits with
/// it too; the run in progress sees the same signal and stops by itself after its grace.)
pub(crate) async fn wait_for_signal() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return tokio::signal::ctrl_c().await.is_ok();
        };
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.is_ok(),
            r = term.recv() => r.is_some(),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_hash_covers_endpoint_and_body() {
        assert_ne!(request_hash("a", b"x"), request_hash("b", b"x"));
        assert_ne!(request_hash("a", b"x"), request_hash("a", b"y"));
        assert_eq!(request_hash("a", b"x").len(), 64);
        // SHA-256 of "\nabc", in the lowercase hex the state files and caches already hold.
        assert_eq!(
            request_hash("", b"abc"),
            "f39d39bfc99287b848780d4110eb663f0e7c344ae41f46a390c4135b89dc2756"
        );
    }
}

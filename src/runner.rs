//! The scheduler: every row of the input through limiter, provider and retry policy into the
//! results, with a bounded number of requests in flight.
//!
//! Shape of a run:
//!
//! 1. Pre-flight: read the whole input once, check every row and render every prompt. Any error
//!    stops the run here, before a request is sent or a results file is created.
//! 2. A reader thread streams rows, renders them and hands [`Job`]s to the dispatcher.
//! 3. The dispatcher takes a slot (at most `--concurrency` rows in flight) and spawns the row's
//!    task ([`process_row`]); after a stop (Ctrl-C, exhausted quota) it marks rows `skipped`
//!    instead of sending them.
//! 4. The collector (this task) puts results back in input order, writes them, and keeps the
//!    totals and the progress bar.
//!
//! Reordering needs a buffer; a second semaphore (the window) bounds it, so memory stays flat
//! however long the input and however slow one unlucky row is.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use csv::StringRecord;
use rand::SeedableRng;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::concurrency::{Sample, Slots};
use crate::config::{Endpoint, RunConfig};
use crate::error::{Error, ExitStatus};
use crate::input::{IdSet, InputFile};
use crate::limiter::RateBudget;
use crate::mock::MockServer;
use crate::output::{ResultsWriter, RowResult, RowStatus};
use crate::pricing::Price;
use crate::progress::Progress;
use crate::provider::openai::OpenAiChat;
use crate::provider::{CallError, Completion, ErrorKind, Provider, Request, http_client};
use crate::retry::RetryPolicy;
use crate::summary::Stats;
use crate::template::Prompts;
use crate::tokens;

/// Completion tokens reserved against the token budget before any answer has been seen, when
/// `--max-tokens` is not given; afterwards the reservation follows the answers.
const INITIAL_COMPLETION_ESTIMATE: f64 = 256.0;
/// Input errors listed before "... and N more".
const MAX_LISTED_ERRORS: usize = 10;

/// One row, rendered and ready to send.
struct Job {
    seq: u64,
    id: String,
    record: StringRecord,
    request: Request,
    /// Prompt tokens as counted before sending, for the token budget.
    prompt_tokens: u32,
}

/// What every row task needs, shared.
struct Shared {
    provider: Box<dyn Provider>,
    budget: RateBudget,
    slots: Slots,
    /// Completion tokens an answer is expected to need: a running mean of the answers seen.
    completion_estimate: Mutex<f64>,
    retry: RetryPolicy,
    timeout: Duration,
    price: Option<Price>,
    model: String,
    /// Cancelled when the run must stop dispatching.
    stop: CancellationToken,
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

    fn stop_reason(&self) -> String {
        self.stop_reason
            .lock()
            .expect("stop reason lock")
            .clone()
            .unwrap_or_else(|| "the run was stopped".into())
    }
}

/// Runs the whole job described by `cfg`.
pub async fn run(cfg: RunConfig) -> Result<ExitStatus, Error> {
    let started = Instant::now();
    let input = InputFile::open(&cfg.input, cfg.id_column.as_deref())?;
    let prompts = Arc::new(Prompts::new(&cfg.prompt, cfg.system.as_deref(), &input)?);
    let total = {
        let (input, prompts) = (input.clone(), prompts.clone());
        tokio::task::spawn_blocking(move || preflight(&input, &prompts))
            .await
            .map_err(|e| Error::io("pre-flight check failed", std::io::Error::other(e)))??
    };
    let mut writer = ResultsWriter::create(&cfg.output, &input.headers)?;
    if let Some(path) = &cfg.summary_json {
        check_writable_folder(path, "--summary-json")?;
    }

    let price = cfg.prices.lookup(&cfg.model);
    let progress = Progress::new(total, cfg.quiet);
    if price.is_none() {
        progress.println(&format!(
            "warning: no price is known for model {:?}, so costs will be left empty; add it with \
             --price-file (prices as of {})",
            cfg.model, cfg.prices.as_of
        ));
    }

    // Keep the mock alive for the whole run.
    let (_mock, base_url, api_key) = match &cfg.endpoint {
        Endpoint::Mock(mc) => {
            let server = MockServer::start(mc.clone())
                .await
                .map_err(|e| Error::io("cannot start the mock server on 127.0.0.1", e))?;
            let url = server.base_url();
            (Some(server), url, None)
        }
        Endpoint::Remote { base_url, api_key } => (None, base_url.clone(), api_key.clone()),
    };
    let shared = Arc::new(Shared {
        provider: Box::new(OpenAiChat::new(
            http_client(cfg.concurrency.ceiling()),
            &base_url,
            api_key.as_ref(),
        )),
        budget: RateBudget::new(cfg.rpm, cfg.tpm, true),
        slots: Slots::new(cfg.concurrency),
        completion_estimate: Mutex::new(INITIAL_COMPLETION_ESTIMATE),
        retry: cfg.retry,
        timeout: cfg.timeout,
        price,
        model: cfg.model.clone(),
        stop: CancellationToken::new(),
        stop_reason: Mutex::new(None),
    });
    let interrupted = Arc::new(AtomicBool::new(false));
    let signals = tokio::spawn(watch_signals(shared.clone(), interrupted.clone()));

    // Reader thread -> dispatcher.
    let (job_tx, job_rx) = mpsc::channel::<Result<Job, Error>>(256);
    let reader = {
        let (input, prompts, cfg) = (input.clone(), prompts.clone(), cfg.clone());
        std::thread::spawn(move || read_jobs(&input, &prompts, &cfg, job_tx))
    };
    // Dispatcher -> collector.
    let (result_tx, mut result_rx) = mpsc::unbounded_channel::<(StringRecord, RowResult)>();
    let window = Arc::new(Semaphore::new(reorder_window(cfg.concurrency.ceiling())));
    let dispatcher = tokio::spawn(dispatch(job_rx, shared.clone(), window.clone(), result_tx));

    // Collector: write results in input order.
    let mut stats = Stats::default();
    let mut pending: BTreeMap<u64, (StringRecord, RowResult)> = BTreeMap::new();
    let mut next_seq = 0u64;
    let mut last_draw = Instant::now();
    while let Some((record, result)) = result_rx.recv().await {
        stats.record(&result);
        pending.insert(result.seq, (record, result));
        let mut flushed = 0;
        while let Some((record, result)) = pending.remove(&next_seq) {
            writer.write(&record, &result)?;
            next_seq += 1;
            flushed += 1;
        }
        window.add_permits(flushed);
        if last_draw.elapsed() >= Duration::from_millis(100) {
            progress.update(&stats);
            last_draw = Instant::now();
        }
    }
    // The channel closes when the dispatcher and every row task are done.
    let read_error = dispatcher
        .await
        .map_err(|e| Error::io("dispatcher failed", std::io::Error::other(e)))?;
    let _ = reader.join();
    signals.abort();
    progress.update(&stats);
    progress.finish();
    if let Some(e) = read_error {
        return Err(e);
    }
    debug_assert!(pending.is_empty(), "every result was written");

    let output = writer.finish()?;
    let mut summary = stats.summary(started.elapsed(), &output, &cfg.model);
    if shared.stop.is_cancelled() {
        summary.stopped = Some(shared.stop_reason());
    }
    if let Some(path) = &cfg.summary_json {
        summary.write_json(path)?;
    }
    if !cfg.quiet {
        let _ = summary.print(&mut std::io::stderr().lock());
    }
    Ok(if interrupted.load(Ordering::SeqCst) {
        ExitStatus::Interrupted
    } else if stats.failed + stats.skipped > 0 {
        ExitStatus::RowsFailed
    } else {
        ExitStatus::Success
    })
}

/// Fails now, before anything is spent, if `path` could not be written at the end.
fn check_writable_folder(path: &std::path::Path, flag: &str) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if dir.is_dir() {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "cannot write {flag} {}: the folder {} does not exist",
            path.display(),
            dir.display()
        )))
    }
}

/// Checks every row and renders every prompt without sending anything; returns the row count.
/// Lists the first few problems with their lines so they can all be fixed in one go.
fn preflight(input: &InputFile, prompts: &Prompts) -> Result<u64, Error> {
    let mut ids = IdSet::default();
    let mut errors = Vec::new();
    let mut more = 0usize;
    let mut rows = 0u64;
    for row in input.rows()? {
        let problem = match row {
            Err(e) => Some(e.to_string()),
            Ok(row) => {
                rows += 1;
                match ids.insert(input, &row) {
                    Err(e) => Some(e.to_string()),
                    Ok(()) => prompts
                        .render(input, &row)
                        .err()
                        .map(|e| format!("{}: line {}: {e}", input.path.display(), row.line)),
                }
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
    Ok(rows)
}

/// The reader thread: streams rows, renders them and sends jobs until the input ends or the
/// dispatcher goes away.
fn read_jobs(
    input: &InputFile,
    prompts: &Prompts,
    cfg: &RunConfig,
    tx: mpsc::Sender<Result<Job, Error>>,
) {
    let rows = match input.rows() {
        Ok(rows) => rows,
        Err(e) => {
            let _ = tx.blocking_send(Err(e));
            return;
        }
    };
    for row in rows {
        let job = row.and_then(|row| {
            // The pre-flight rendered this row already; failing now means the file changed.
            let rendered = prompts.render(input, &row).map_err(|e| {
                Error::Input(format!(
                    "{}: line {}: {e} (did the file change during the run?)",
                    input.path.display(),
                    row.line
                ))
            })?;
            let prompt_tokens =
                tokens::count_chat(&cfg.model, rendered.system.as_deref(), &rendered.user);
            Ok(Job {
                seq: row.seq,
                id: row.id,
                record: row.record,
                request: Request {
                    model: cfg.model.clone(),
                    system: rendered.system,
                    user: rendered.user,
                    max_tokens: cfg.max_tokens,
                    temperature: cfg.temperature,
                },
                prompt_tokens,
            })
        });
        let failed = job.is_err();
        if tx.blocking_send(job).is_err() || failed {
            return;
        }
    }
}

/// Rows that may be finished but not yet written, beyond those in flight.
fn reorder_window(concurrency: usize) -> usize {
    concurrency.saturating_mul(8).max(4096)
}

/// Starts each job when a slot is free; returns the input error that ended reading, if any.
async fn dispatch(
    mut jobs: mpsc::Receiver<Result<Job, Error>>,
    shared: Arc<Shared>,
    window: Arc<Semaphore>,
    results: mpsc::UnboundedSender<(StringRecord, RowResult)>,
) -> Option<Error> {
    while let Some(job) = jobs.recv().await {
        let job = match job {
            Ok(job) => job,
            Err(e) => {
                shared.stop_with("the input could not be read".into());
                return Some(e);
            }
        };
        // Bound the reorder buffer: wait until the row `window` places back has been written.
        window
            .acquire()
            .await
            .expect("window semaphore is never closed")
            .forget();
        if shared.stop.is_cancelled() {
            let reason = shared.stop_reason();
            let r = RowResult::skipped(job.seq, job.id, &shared.model, &reason);
            let _ = results.send((job.record, r));
            continue;
        }
        tokio::select! {
            _ = shared.slots.acquire() => {}
            _ = shared.stop.cancelled() => {
                let reason = shared.stop_reason();
                let r = RowResult::skipped(job.seq, job.id, &shared.model, &reason);
                let _ = results.send((job.record, r));
                continue;
            }
        };
        let (shared, results) = (shared.clone(), results.clone());
        tokio::spawn(async move {
            let record = job.record.clone();
            let result = process_row(&shared, job).await;
            shared.slots.release();
            let _ = results.send((record, result));
        });
    }
    None
}

/// One row's path: reserve budget, send, classify, then retry or record.
async fn process_row(shared: &Shared, job: Job) -> RowResult {
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    let mut attempts = 0u32;
    let mut throttled = 0u32;
    let mut last_error: Option<CallError> = None;
    loop {
        if shared.stop.is_cancelled() {
            return stopped(shared, &job, attempts, throttled, last_error.as_ref());
        }
        let reserve = job
            .prompt_tokens
            .saturating_add(shared.completion_reservation(job.request.max_tokens));
        let permit = tokio::select! {
            permit = shared.budget.acquire(reserve) => permit,
            _ = shared.stop.cancelled() => {
                return stopped(shared, &job, attempts, throttled, last_error.as_ref());
            }
        };
        attempts += 1;
        let sending = shared.slots.start_sending();
        let sent = Instant::now();
        let outcome = tokio::time::timeout(shared.timeout, shared.provider.complete(&job.request))
            .await
            .unwrap_or_else(|_| {
                Err(CallError::new(
                    ErrorKind::Timeout,
                    format!(
                        "no complete response within {:?} (--timeout)",
                        shared.timeout
                    ),
                ))
            });
        let latency = sent.elapsed();
        shared
            .slots
            .finish_sending(sending, concurrency_sample(&outcome, latency));
        shared.budget.observe(match &outcome {
            Ok(c) => c.rate_limits.as_ref(),
            Err(e) => e.rate_limits.as_deref(),
        });
        let err = match outcome {
            Ok(c) => {
                let used = c.usage.prompt_tokens + c.usage.completion_tokens;
                shared.budget.settle(permit, Some(used));
                shared.learn_completion(c.usage.completion_tokens);
                return RowResult {
                    seq: job.seq,
                    id: job.id,
                    status: RowStatus::Ok,
                    output: c.text,
                    error: String::new(),
                    attempts,
                    throttled,
                    latency: Some(latency),
                    cost: shared.price.map(|p| p.cost(&c.usage)),
                    usage: Some(c.usage),
                    model: c.model.unwrap_or_else(|| job.request.model.clone()),
                    finish_reason: c.finish_reason.unwrap_or_default(),
                };
            }
            Err(e) => e,
        };
        // A rejected or failed request is not counted against the server's token budget.
        shared.budget.settle(permit, None);
        if err.kind == ErrorKind::RateLimited {
            throttled += 1;
            shared.budget.back_off(err.retry_after);
        }
        tracing::debug!(row = %job.id, attempt = attempts, error = %err, "attempt failed");
        if err.kind.stops_run() {
            shared.stop_with(stop_message(&err));
        }
        match shared.retry.next_delay(attempts - 1, &err, &mut rng) {
            Some(wait) => {
                last_error = Some(err);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shared.stop.cancelled() => {}
                }
            }
            None => {
                return RowResult {
                    seq: job.seq,
                    id: job.id,
                    status: RowStatus::Failed,
                    output: String::new(),
                    error: if attempts > 1 {
                        format!("{err} (after {attempts} attempts)")
                    } else {
                        err.to_string()
                    },
                    attempts,
                    throttled,
                    latency: Some(latency),
                    usage: None,
                    cost: None,
                    model: job.request.model.clone(),
                    finish_reason: String::new(),
                };
            }
        }
    }
}

/// What an attempt tells the concurrency controller: 429s, timeouts and 503s are overload.
fn concurrency_sample(outcome: &Result<Completion, CallError>, latency: Duration) -> Sample {
    match outcome {
        Err(e) if matches!(e.kind, ErrorKind::RateLimited | ErrorKind::Timeout) => Sample::Dropped,
        Err(e) if e.status == Some(503) => Sample::Dropped,
        _ => Sample::Answered(latency),
    }
}

/// The result of a row whose run stopped before it got an answer.
fn stopped(
    shared: &Shared,
    job: &Job,
    attempts: u32,
    throttled: u32,
    last: Option<&CallError>,
) -> RowResult {
    let mut reason = shared.stop_reason();
    if let Some(e) = last {
        reason = format!("{reason}; last attempt: {e}");
    }
    let mut r = RowResult::skipped(job.seq, job.id.clone(), &shared.model, &reason);
    r.attempts = attempts;
    r.throttled = throttled;
    r
}

/// What to tell the user when the API says no request can succeed.
fn stop_message(err: &CallError) -> String {
    match err.kind {
        ErrorKind::QuotaExhausted => format!(
            "the API reports the account is out of quota or credit ({err}); add credit or raise \
             the limit, then run again"
        ),
        ErrorKind::Auth => format!(
            "the API rejected the key ({err}); check OPENAI_API_KEY or --api-key-file and the \
             key's access to this model"
        ),
        _ => err.to_string(),
    }
}

/// First Ctrl-C or SIGTERM: stop dispatching and let the run write what it has. Second: leave at
/// once.
async fn watch_signals(shared: Arc<Shared>, interrupted: Arc<AtomicBool>) {
    for n in 0.. {
        if !wait_for_signal().await {
            return;
        }
        if n > 0 {
            eprintln!("\nsecond interrupt: exiting now without writing results");
            std::process::exit(ExitStatus::Interrupted as i32);
        }
        eprintln!("\ninterrupted: finishing requests in flight; press Ctrl-C again to quit now");
        interrupted.store(true, Ordering::SeqCst);
        shared.stop_with("interrupted".into());
    }
}

/// Waits for Ctrl-C or SIGTERM; `false` if signals cannot be watched.
async fn wait_for_signal() -> bool {
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

//! The scheduler: every row of the input through limiter, provider and retry policy into the
//! results, with a bounded number of requests in flight, a journal that makes the run
//! resumable, and a spend cap. [`run_to_summary`] is the whole run in order; one row's path is
//! [`attempt`] (reserve, send, classify, retry or record).
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
//! 4. The dispatcher takes a slot (at most `--concurrency` rows in flight) and hands the row to
//!    a row worker, a long-lived task that runs one row at a time (`process_row`); after a stop
//!    (Ctrl-C, spend cap, exhausted quota) it marks rows `skipped` instead of sending them
//!    ([`dispatch`]).
//! 5. The journal thread commits every outcome in groups and only then releases the row's slot,
//!    so a `kill -9` loses at most the rows in flight. The collector (this task) keeps live
//!    totals for the progress bar.
//! 6. At the end, one pass merges the input with the journal into the results file, in input
//!    order, and computes the summary. Nothing is held in memory but the current row, however
//!    long the input.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::base::error::{Error, ExitStatus};
use crate::base::record::RowResult;
use crate::engine::audit::AuditLog;
use crate::engine::cache::Cache;
use crate::engine::concurrency::Slots;
use crate::engine::dedup::Dedup;
use crate::engine::derived::DerivedColumns;
use crate::engine::expect::Expectation;
use crate::engine::input::InputFile;
use crate::engine::limiter::RateBudget;
use crate::engine::output::{ResultsWriter, check_writable};
use crate::engine::provider::{self, http_client};
use crate::engine::row_settings::RowSettings;
use crate::engine::spend::SpendCap;
use crate::engine::store::{FinishedRows, ReservationLog, RunRecord, RunSettings, SeqSet, Store};
use crate::engine::template::Prompts;
use crate::run::connection::Connection;
use crate::run::progress::Progress;
use crate::run::settings::{CacheMode, Resume, RunConfig};
use crate::run::summary::{Stats, Summary};

mod attempt;
mod dispatch;
mod failfast;
mod job;
mod journal;
pub(crate) mod preflight;
pub(crate) mod results;
mod resume;
mod shared;
mod signals;

use dispatch::dispatch;
use job::{Job, JobMaker, WORK_CHUNK, read_work};
use journal::{JOURNAL_QUEUE, JournalEntry, canonical, prepare_state, write_journal};
use preflight::{Plan, PreflightOptions, preflight, print_plan};
use results::write_results;
use shared::{INITIAL_COMPLETION_ESTIMATE, Shared};
pub(crate) use signals::wait_for_signal;
use signals::watch_signals;

/// Runs the whole job described by `cfg`.
pub async fn run(cfg: RunConfig) -> Result<ExitStatus, Error> {
    run_to_summary(cfg).await.map(|(status, _)| status)
}

/// Runs the job and also returns its summary (`None` for a dry run). `batch bench` drives the
/// runner through this, so what it measures is exactly what `batch run` does.
pub async fn run_to_summary(cfg: RunConfig) -> Result<(ExitStatus, Option<Summary>), Error> {
    let started = Instant::now();
    warm_up_mock(&cfg);
    let settings = cfg.request_settings(&canonical(&cfg.input));
    // A resume reads the rows it finished once, before the pre-flight, which then checks only
    // the rows that will be sent (when nothing their requests are made of changed). The input's
    // fingerprint is taken as the input is read, not when it is recorded (see key_to_record).
    let key = resume::checked_key(&cfg, &settings);
    let before = resume::finished_before(&cfg, &settings, key.as_deref())?;
    let unchanged = before.as_ref().is_some_and(|b| b.unchanged);
    let checked = check_input(&cfg, before.as_ref().filter(|b| b.unchanged)).await?;
    if cfg.dry_run {
        return Ok(dry_run(&cfg, &checked));
    }
    // A results path that cannot be written is named as such, not by the lock file beside it.
    if !crate::base::format::is_std(&cfg.output) {
        check_writable(&cfg.output, "-o")?;
    }
    // One process per job: a second one would send the same rows, and write the same files.
    let _lock = cfg.lock(&cfg.state)?;
    let (writer, mut store) = open_files(&cfg, &checked)?;
    let conn = Connection::open(&cfg.endpoint).await?;
    let as_read = (unchanged, key.as_deref());
    let resumed = prepare_state(&mut store, &cfg, &settings, checked.plan.rows, as_read)?;
    resume::record_plan(&mut store, &checked.plan, &checked.input)?;
    let progress = Progress::new(checked.plan.rows, cfg.quiet);
    announce(&cfg, &checked, resumed.as_ref(), &progress);
    let shared = share(&cfg, &conn, resumed.is_some(), &store)?;
    let interrupted = Arc::new(AtomicBool::new(false));
    let signals = tokio::spawn(watch_signals(
        shared.clone(),
        interrupted.clone(),
        cfg.grace,
        cfg.state.clone(),
    ));
    let finished = finished_rows(&cfg, resumed.is_some(), before)?;
    progress.start_at(finished.as_deref().map_or(0, SeqSet::len));
    let recheck = !unchanged;
    crate::engine::render_guard::requests_may_be_sent();
    let mut pipeline = Pipeline::start(&cfg, &checked, &conn, &shared, store, finished, recheck)?;
    let live = pipeline.collect(&progress).await;
    let (store, journal_error) = pipeline.join().await;
    signals.abort();
    progress.update(&live);
    progress.finish();
    let (mut store, journal_error) = (store.map_err(Error::after_sending)?, journal_error);
    let storage_error = shared.storage_error.lock().expect("lock").clone();
    if storage_error.is_none() {
        skip_rows_of_the_stop(&shared, &mut store).map_err(Error::after_sending)?;
    }
    let stopped = shared.stop.is_cancelled().then(|| shared.stop_reason());
    let missing_reason = journal_error
        .as_ref()
        .map(|e| format!("not recorded: {e}"))
        .unwrap_or_else(|| shared.stop_reason());
    let (stats, output) = merge_results(&cfg, &checked, writer, missing_reason)
        .await
        .map_err(Error::after_sending)?;
    let complete = stats.skipped == 0 && storage_error.is_none();
    if complete {
        mark_complete(&store, &cfg, &settings, key.as_deref()).map_err(Error::after_sending)?;
    }
    if complete && cfg.spooled_stdin {
        // Nothing is left to resume; the copy of stdin has served its purpose.
        let _ = std::fs::remove_file(&cfg.input);
    }
    let failed_fast = shared.failed_fast.load(Ordering::SeqCst);
    let stop_announced = shared.stop_announced.load(Ordering::SeqCst);
    if let Some(audit) = Arc::into_inner(shared).and_then(|s| s.audit) {
        audit.finish().map_err(Error::after_sending)?;
    }
    let mut summary = stats.summary(started.elapsed(), &output, &cfg.model);
    summary.resumed = stats.done().saturating_sub(live.done());
    summary.count_only(&live);
    if stats.failed + stats.skipped > 0 {
        let retry_failed = stats.failed > 0;
        summary.next = cfg.continue_with.as_ref().map(|c| c.command(retry_failed));
    }
    if checked.plan.models.len() <= 1 {
        // One model asked for (a dated name in some answers is still that one model).
        summary.models.clear();
    }
    summary.stopped = stopped;
    if cfg.max_cost.is_some() {
        summary.spent_usd = store.spent_at_most().ok();
    }
    // -q hides the summary, never why the run stopped (unless it was said as the run stopped,
    // or the storage error below says it).
    let stop_said = failed_fast || stop_announced || storage_error.is_some();
    report(&cfg, &summary, complete, stop_said).map_err(Error::after_sending)?;
    let ended = Ended {
        storage_error,
        interrupted: interrupted.load(Ordering::SeqCst),
        failed_fast_with_nothing_done: failed_fast && live.ok == 0,
        rows_left: stats.failed + stats.skipped > 0,
    };
    let status = ended.status(&cfg, &summary);
    Ok((status, Some(summary)))
}

/// How a run ended, for its exit status.
struct Ended {
    storage_error: Option<String>,
    interrupted: bool,
    /// Stopped by an error no request could get past, with nothing done.
    failed_fast_with_nothing_done: bool,
    /// Rows failed or skipped.
    rows_left: bool,
}

impl Ended {
    fn status(self, cfg: &RunConfig, summary: &Summary) -> ExitStatus {
        if let Some(e) = self.storage_error {
            // Requests were sent: not exit 2, which says nothing was. What is journaled is
            // kept. Said once: the summary's "Stopped early" line has it unless -q hid it.
            if cfg.quiet || summary.stopped.as_deref() != Some(e.as_str()) {
                cfg.printer().say(format_args!("error: {e}"));
            }
            ExitStatus::RowsFailed
        } else if self.interrupted {
            ExitStatus::Interrupted
        } else if self.failed_fast_with_nothing_done {
            ExitStatus::Error
        } else if self.rows_left {
            ExitStatus::RowsFailed
        } else {
            ExitStatus::Success
        }
    }
}

/// `--dry-run`: the plan is shown and nothing is sent (the copy of stdin is not needed again).
fn dry_run(cfg: &RunConfig, checked: &Checked) -> (ExitStatus, Option<Summary>) {
    if cfg.spooled_stdin {
        let _ = std::fs::remove_file(&cfg.input);
    }
    print_plan(cfg, &checked.plan);
    (ExitStatus::Success, None)
}

/// The embedded mock counts usage with the real tokenizer, which takes a moment to build:
/// start now, so that it overlaps the pre-flight instead of following it.
fn warm_up_mock(cfg: &RunConfig) {
    if cfg.endpoint.is_mock() {
        let model = cfg.model.clone();
        std::thread::spawn(move || crate::engine::tokens::count(&model, "warm up"));
    }
}

/// The input, opened and checked: every row read and rendered once before anything is sent.
struct Checked {
    input: InputFile,
    prompts: Arc<Prompts>,
    /// `--expect` and the index of its column.
    expect: Option<(Expectation, usize)>,
    plan: Plan,
}

/// Step 1, the pre-flight (on a blocking thread: it reads the whole input). The rows in
/// `finished` (a resume's, unchanged) are read but not checked: none of them will be sent;
/// when the state file records the pre-flight of that unchanged input, none is run.
async fn check_input(
    cfg: &RunConfig,
    finished: Option<&resume::Finished>,
) -> Result<Checked, Error> {
    let input = resume::open_input(cfg, finished)?;
    let prompts = Arc::new(Prompts::new(&cfg.prompt, cfg.system.as_deref(), &input)?);
    let mut opts = PreflightOptions::of(cfg, &input, cfg.dry_run)?;
    opts.finished = finished.map(|f| f.rows.clone());
    let expect = opts.expect.clone();
    if let Some(recorded) = finished.and_then(|f| f.plan.as_ref())
        && let Some(plan) = recorded.plan(cfg, &prompts)?
    {
        return Ok(Checked {
            input,
            prompts,
            expect,
            plan,
        });
    }
    let (i, p) = (input.clone(), prompts.clone());
    let plan = tokio::task::spawn_blocking(move || preflight(&i, &p, &opts))
        .await
        .map_err(|e| Error::io("pre-flight check failed", std::io::Error::other(e)))??;
    Ok(Checked {
        input,
        prompts,
        expect,
        plan,
    })
}

/// Step 2: everything that could fail on a path fails now, before anything is spent: the
/// results file (written through a temporary file), `--summary-json`, the state file.
fn open_files(cfg: &RunConfig, checked: &Checked) -> Result<(ResultsWriter, Store), Error> {
    let derived = DerivedColumns::new(cfg.schema.clone(), checked.expect.clone());
    let headers = &checked.input.headers;
    let stdout = crate::base::format::is_std(&cfg.output);
    let writer = if stdout {
        let tmp = crate::engine::stdio::stdout_partial(&cfg.state);
        ResultsWriter::create_for_stdout(&tmp, cfg.output_format, headers, cfg.sanitize, derived)?
    } else {
        let (out, format) = (&cfg.output, cfg.output_format);
        ResultsWriter::create_as(out, format, headers, cfg.sanitize, derived)?
    };
    if let Some(path) = &cfg.summary_json {
        check_writable(path, "--summary-json")?;
    }
    if matches!(cfg.resume, Resume::Yes { .. }) && !cfg.state.exists() {
        return Err(Error::Usage(format!(
            "nothing to resume: {} does not exist ({})",
            cfg.state.display(),
            if stdout {
                "with -o -, the state file is kept in the cache folder under a key made from the \
                 input file's path, or from the data piped to stdin: pipe exactly the same data \
                 again, or give --state PATH both times"
            } else {
                "the state file sits beside the results; give the same -o, or --state PATH"
            }
        )));
    }
    Ok((writer, Store::open(&cfg.state)?))
}

/// Warns once per model that has no price, and says what a resumed run picks up.
fn announce(cfg: &RunConfig, checked: &Checked, resumed: Option<&RunRecord>, progress: &Progress) {
    for model in checked.plan.models.keys() {
        if cfg.prices.lookup(model).is_none() {
            progress.println(&format!(
                "warning: no price is known for model {model:?}, so costs will be left empty; \
                 add it with --price-file (prices as of {})",
                cfg.prices.as_of
            ));
        }
    }
    if let Some(run) = resumed {
        progress.println(&format!(
            "resuming: {} ok and {} failed of {} are recorded in {}{}",
            crate::base::human::count(run.ok, "row"),
            run.failed,
            run.total_rows,
            cfg.state.display(),
            if retry_failed(cfg) {
                "; failed rows will be sent again"
            } else {
                ""
            }
        ));
    }
}

fn retry_failed(cfg: &RunConfig) -> bool {
    matches!(
        cfg.resume,
        Resume::Yes {
            retry_failed: true,
            ..
        }
    )
}

/// What every row worker shares: the provider on the connection, the budgets and the policies.
fn share(
    cfg: &RunConfig,
    conn: &Connection,
    resumed: bool,
    store: &Store,
) -> Result<Arc<Shared>, Error> {
    // Under a cap, what earlier parts of the run may have spent: their charges, and the worst
    // case of every request sent whose answer never reached the journal.
    let spend = match cfg.max_cost {
        Some(cap) => Some(SpendCap::new(
            cap,
            if resumed { store.spent_at_most()? } else { 0.0 },
        )),
        None => None,
    };
    let reservations = match cfg.max_cost {
        Some(_) => Some(Arc::new(Mutex::new(ReservationLog::open(&cfg.state)?))),
        None => None,
    };
    let provider = provider::build(
        cfg.api,
        http_client(cfg.concurrency.ceiling()),
        &conn.base_url,
        conn.api_key.as_ref(),
        &cfg.headers,
    );
    Ok(Arc::new(Shared {
        printer: cfg.printer(),
        budget: long_waits_told(
            RateBudget::new(cfg.rpm, cfg.tpm, cfg.endpoint.learns_limits()),
            cfg,
        ),
        slots: Slots::new(cfg.concurrency),
        retry: cfg.retry,
        timeout: cfg.timeout,
        spend,
        reservations,
        audit: cfg.log.as_deref().map(AuditLog::open).transpose()?,
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
        fail_fast: failfast::FailFast::new(provider.endpoint(), &conn.base_url),
        failed_fast: AtomicBool::new(false),
        started: std::time::Instant::now(),
        last_answer_ms: AtomicU64::new(0),
        storage_error: Mutex::new(None),
        stop_announced: AtomicBool::new(false),
        long_retry_after_told: AtomicBool::new(false),
        key_env: cfg.api.key_env(),
        provider,
    }))
}

/// A wait the server's limits impose that is longer than a minute is said once, even with
/// `-q` and without a terminal; one longer than `--max-stall` stops the run instead.
fn long_waits_told(budget: RateBudget, cfg: &RunConfig) -> RateBudget {
    let printer = cfg.printer();
    budget.on_long_wait(cfg.retry.max_stall, move |long| {
        printer.warn(format_args!(
            "{long}; waiting (Ctrl-C, then --resume later, to stop instead)"
        ))
    })
}

/// On resume, the rows the journal has finished (failed ones too, unless `--retry-failed`).
/// `before`: as read before the pre-flight (read again if it was not).
fn finished_rows(
    cfg: &RunConfig,
    resumed: bool,
    before: Option<resume::Finished>,
) -> Result<Option<Arc<SeqSet>>, Error> {
    match (resumed, before) {
        (false, _) => Ok(None),
        (true, Some(before)) => Ok(Some(before.rows)),
        (true, None) => Ok(Some(Arc::new(
            FinishedRows::open(&cfg.state)?.finished_set(retry_failed(cfg))?,
        ))),
    }
}

/// Every row is done: the run is finished, and every row's request is the one these settings
/// make (what the next resume checks, see `resume.rs`).
fn mark_complete(
    store: &Store,
    cfg: &RunConfig,
    settings: &RunSettings,
    key: Option<&str>,
) -> Result<(), Error> {
    store.set_finished(true)?;
    let key = resume::key_to_record(cfg, settings, key);
    store.set_meta(resume::META_CHECKED, &key)
}

/// Reader thread -> dispatcher -> row workers -> journal thread -> collector (the caller).
struct Pipeline {
    reader: std::thread::JoinHandle<()>,
    dispatcher: tokio::task::JoinHandle<Option<Error>>,
    journal: std::thread::JoinHandle<(Store, Option<Error>)>,
    results: mpsc::Receiver<Vec<RowResult>>,
}

impl Pipeline {
    /// Starts the reader and journal threads and the dispatcher task.
    fn start(
        cfg: &RunConfig,
        checked: &Checked,
        conn: &Connection,
        shared: &Arc<Shared>,
        store: Store,
        finished: Option<Arc<SeqSet>>,
        recheck: bool,
    ) -> Result<Self, Error> {
        let (work_tx, work_rx) = mpsc::channel::<Vec<Result<Job, Error>>>(256 / WORK_CHUNK);
        let maker = JobMaker {
            input: checked.input.clone(),
            prompts: checked.prompts.clone(),
            provider: shared.provider.clone(),
            endpoint: conn.stable_url(shared.provider.endpoint()),
            cfg: cfg.clone(),
            cache: match &cfg.cache {
                CacheMode::On {
                    dir,
                    refresh: false,
                    ..
                } => Some(Cache::open(dir)?),
                _ => None,
            },
            settings: RowSettings::new(&checked.input),
            price: cfg.prices.lookup(&cfg.model),
        };
        let state = cfg.state.clone();
        let reader =
            std::thread::spawn(move || read_work(&maker, finished, recheck, &state, work_tx));
        // Both queues bounded: nothing grows with the input (see `JOURNAL_QUEUE`).
        // In groups (a journal commit's): a few groups' worth, as the journal's own queue.
        let (result_tx, results) = mpsc::channel::<Vec<RowResult>>(4);
        let (journal_tx, journal_rx) = mpsc::channel::<JournalEntry>(JOURNAL_QUEUE);
        let cache = match &cfg.cache {
            CacheMode::On { dir, truncated, .. } => Some((Cache::open(dir)?, *truncated)),
            CacheMode::Off => None,
        };
        let s = shared.clone();
        let journal =
            std::thread::spawn(move || write_journal(store, cache, journal_rx, &s, &result_tx));
        let dispatcher = tokio::spawn(dispatch(work_rx, shared.clone(), journal_tx));
        Ok(Pipeline {
            reader,
            dispatcher,
            journal,
            results,
        })
    }

    /// The collector: live totals for the progress bar, until every row is journaled. The
    /// channel closes once the dispatcher, every row worker and the journal are done.
    async fn collect(&mut self, progress: &Progress) -> Stats {
        let mut live = Stats::default();
        let mut last_draw = Instant::now();
        while let Some(results) = self.results.recv().await {
            for result in &results {
                live.record(result);
            }
            if last_draw.elapsed() >= Duration::from_millis(100) {
                progress.update(&live);
                last_draw = Instant::now();
            }
        }
        live
    }

    /// Waits for the threads; returns the store, and the error that ended the run early (the
    /// input could not be read, or the journal could not be written).
    async fn join(self) -> (Result<Store, Error>, Option<Error>) {
        let read_error = self
            .dispatcher
            .await
            .unwrap_or_else(|e| Some(Error::io("dispatcher failed", std::io::Error::other(e))));
        let joined = self
            .journal
            .join()
            .map_err(|_| Error::io("journal failed", std::io::Error::other("panic")));
        let _ = self.reader.join();
        match (joined, read_error) {
            (Err(e), _) => (Err(e), None),
            (Ok(_), Some(e)) => (Err(e), None),
            (Ok((store, journal_error)), None) => (Ok(store), journal_error),
        }
    }
}

/// After a stop for an error no request could get past ([`failfast`]): the rows that failed
/// of it before the stop are made `skipped`, as those after it are, so `--resume` sends them.
fn skip_rows_of_the_stop(shared: &Shared, store: &mut Store) -> Result<(), Error> {
    let hashes = shared.fail_fast.rows_to_skip();
    if shared.failed_fast.load(Ordering::SeqCst) && !hashes.is_empty() {
        let hashes: Vec<&str> = hashes.iter().map(String::as_str).collect();
        store.skip_failed(&hashes, &shared.stop_reason())?;
    }
    Ok(())
}

/// The results file: the input merged with the journal, in input order (on a blocking thread).
async fn merge_results(
    cfg: &RunConfig,
    checked: &Checked,
    writer: ResultsWriter,
    missing_reason: String,
) -> Result<(Stats, std::path::PathBuf), Error> {
    let (input, model) = (checked.input.clone(), cfg.model.clone());
    let journal = FinishedRows::open(&cfg.state)?;
    tokio::task::spawn_blocking(move || {
        let missing = results::Missing {
            status: crate::base::record::RowStatus::Skipped,
            reason: &missing_reason,
        };
        write_results(&input, journal, writer, &model, missing)
    })
    .await
    .map_err(|e| Error::io("writing the results failed", std::io::Error::other(e)))?
}

/// The summary: to `--summary-json`, and to stderr unless `-q`.
/// `stop_said`: the reason was printed when the run stopped (fail fast), even with `-q`.
fn report(
    cfg: &RunConfig,
    summary: &Summary,
    complete: bool,
    stop_said: bool,
) -> Result<(), Error> {
    if let Some(path) = &cfg.summary_json {
        summary.write_json(path)?;
    }
    let printer = cfg.printer();
    if printer.is_quiet() {
        // -q hides the summary, never why the run stopped or failed.
        printer.say_with(|mut w| summary.print_problems(&mut w, stop_said));
    } else {
        printer.note_with(|mut w| summary.print(&mut w));
    }
    if !complete {
        printer.note(format_args!(
            "State      {} (run again with --resume to finish)",
            cfg.state.display()
        ));
    }
    Ok(())
}

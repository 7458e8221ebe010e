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

use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::engine::input::InputFile;
use crate::engine::limiter::RateBudget;
use crate::engine::lock::StateLock;
use crate::engine::output::{ResultsWriter, check_writable};
use crate::engine::provider::{self, Api, http_client};
use crate::engine::row_settings::RowSettings;
use crate::engine::spend::SpendCap;
use crate::engine::store::{FinishedRows, RunSettings, SeqSet, Store};
use crate::engine::template::PromptSource;
use crate::engine::template::Prompts;
use crate::run::connection::Connection;
use crate::run::progress::Progress;
use crate::run::settings::{CacheMode, Resume, RunConfig};
use crate::run::summary::{Stats, Summary};

mod attempt;
mod dispatch;
mod job;
mod journal;
pub(crate) mod preflight;
mod results;
mod shared;
mod signals;

use dispatch::dispatch;
use job::{Job, JobMaker, WORK_CHUNK, read_work};
use journal::{JournalEntry, canonical, prepare_state, write_journal};
use preflight::{PreflightOptions, preflight, print_plan};
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
    if cfg.endpoint.is_mock() {
        // The embedded mock counts usage with the real tokenizer, which takes a moment to
        // build: start now, so that it overlaps the pre-flight instead of following it.
        let model = cfg.model.clone();
        std::thread::spawn(move || crate::engine::tokens::count(&model, "warm up"));
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
    let writer = if crate::base::format::is_std(&cfg.output) {
        let tmp = crate::engine::stdio::stdout_partial(&cfg.state);
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
            if crate::base::format::is_std(&cfg.output) {
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
    let conn = Connection::open(&cfg.endpoint).await?;
    let endpoint = conn.name.clone();
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
        &conn.base_url,
        conn.api_key.as_ref(),
        &cfg.headers,
    );
    let shared = Arc::new(Shared {
        provider: provider.clone(),
        budget: RateBudget::new(cfg.rpm, cfg.tpm, cfg.endpoint.learns_limits()),
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
        let endpoint = conn.stable_url(provider.endpoint());
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

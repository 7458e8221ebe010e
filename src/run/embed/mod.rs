//! `batch embed`: the vectors of one column of every row, many rows per request.
//!
//! The steps, in order ([`embed`]): read the whole input once (a bad row fails before anything
//! is sent), open the state file (new run or `--resume`), then three parts at once: the reader
//! thread ([`read`]) hashes and counts each row's text, answers what it can without a request
//! (done before, cached, empty, too long) and packs the rest ([`pack`]) up to the per-request
//! limits; the dispatcher hands each pack to a task ([`send`]) under `-j` concurrency, the spend
//! cap and the rate budget (the pack's summed tokens), with retries and halving of refused
//! requests; the journal thread ([`journal`]) commits every row to the state file and the
//! cache. Last, the vectors file is merged from the input and the journal ([`merge`]) and the
//! summary printed, as `batch run` prints it.

mod journal;
mod merge;
pub mod pack;
mod read;
mod send;
mod state;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::base::error::{Error, ExitStatus};
use crate::base::human;
use crate::engine::cache::{Cache, CacheWriter};
use crate::engine::input::InputFile;
use crate::engine::limiter::RateBudget;
use crate::engine::provider::embeddings::EmbeddingsProvider;
use crate::engine::provider::http_client;
use crate::engine::spend::SpendCap;
use crate::engine::store::{Finished, Store};
use crate::run::connection::Connection;
use crate::run::progress::Progress;
use crate::run::runner::wait_for_signal;
use crate::run::settings::{CacheMode, RunConfig};
use crate::run::summary::Summary;

pub use pack::PackLimits;
use pack::{Pack, Packer};
use read::{ReadOut, ReadPlan};
use send::{Ctx, send_pack};

/// The settings of `batch embed`: a run's, and what is its own.
#[derive(Debug, Clone)]
pub struct EmbedConfig {
    pub run: RunConfig,
    /// The column whose text is embedded.
    pub column: String,
    /// `dimensions` sent with each request (`text-embedding-3-*` only).
    pub dimensions: Option<u32>,
    pub limits: PackLimits,
}

/// `batch embed`, to its exit status.
pub async fn embed(cfg: EmbedConfig) -> Result<ExitStatus, Error> {
    let started = Instant::now();
    let run = &cfg.run;
    let input = run.open_input()?;
    let column = column_index(&input, &cfg.column)?;
    let total = count_rows(&input)?;
    if run.dry_run {
        return dry_run(&cfg, &input, column, total);
    }
    // An output that cannot be written fails now, not after the requests.
    drop(crate::engine::output::vectors::create(&run.output, None)?);
    // The lock taken to copy stdin, if it was (`batch embed -`), or a new one.
    let _lock = run.lock(&run.state)?;
    let mut store = Store::open(&run.state)?;
    let conn = Connection::open(&run.endpoint).await?;
    let client = http_client(run.concurrency.ceiling());
    let provider =
        EmbeddingsProvider::new(client, &conn.base_url, conn.api_key.as_ref(), &run.headers);
    let endpoint = conn.stable_url(provider.endpoint());
    let prior = state::prepare(&mut store, &cfg, &input, total)?;
    let spent = store.spent()?;
    let progress = Arc::new(Progress::new(total, run.quiet));
    progress.start_at(prior.len() as u64);
    let resumed = prior.len() as u64;
    let plan = ReadPlan {
        input: input.clone(),
        column,
        model: run.model.clone(),
        dimensions: cfg.dimensions,
        endpoint,
        limits: cfg.limits,
        dedup: run.dedup,
        prior,
        cache: read_cache(run)?,
    };
    let (ctx, journal_rx) = context(&cfg, provider, spent);
    let store_path = run.state.clone();
    let cache = write_cache(run)?;
    let journal = {
        let progress = progress.clone();
        let stop = journal::Stopper {
            stopped: ctx.stopped.clone(),
            reason: ctx.stop_reason.clone(),
        };
        std::thread::spawn(move || journal::journal(store, journal_rx, cache, progress, stop))
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    let signals = tokio::spawn(watch_signals(
        ctx.clone(),
        run.grace,
        interrupted.clone(),
        run.printer(),
    ));
    let read_error = dispatch(&ctx, plan, run.concurrency.ceiling()).await;
    signals.abort();
    let _ = signals.await;
    let stop_reason = ctx.stop_reason.clone();
    let requests = ctx.requests.load(Ordering::Relaxed);
    drop(ctx);
    let journaled = journal
        .join()
        .map_err(|_| Error::Usage("the journal thread failed".into()))?;
    // Read after the journal is done: its storage error may be the reason.
    let stop = stop_reason.lock().expect("stop lock").clone();
    progress.finish();
    let stop = stop.or(read_error.map(|e| e.to_string()));
    let not_sent = stop.clone().unwrap_or_else(|| "not sent".into());
    let finished = Ended {
        stop,
        requests,
        interrupted: interrupted.load(Ordering::SeqCst),
    };
    if journaled.error.is_none() {
        journaled.store.set_finished(finished.stop.is_none())?;
    }
    drop(journaled.store);
    let mut stats = merge::write_vectors(
        &input,
        &store_path,
        &run.output,
        (&run.model, cfg.dimensions),
        &not_sent,
    )?;
    stats.resumed = resumed;
    let mut summary = stats.summary(started.elapsed(), &run.output, &run.model);
    summary.count_only(&journaled.live);
    summary.stopped = finished.stop.clone();
    report(run, &summary, &finished)?;
    Ok(finished.status(&summary))
}

/// How the run ended, beyond its rows.
struct Ended {
    stop: Option<String>,
    requests: u64,
    interrupted: bool,
}

impl Ended {
    fn status(&self, s: &Summary) -> ExitStatus {
        if self.interrupted {
            ExitStatus::Interrupted
        } else if s.failed + s.skipped > 0 {
            ExitStatus::RowsFailed
        } else {
            ExitStatus::Success
        }
    }
}

/// The position of `name` among the input's columns.
pub fn column_index(input: &InputFile, name: &str) -> Result<usize, Error> {
    input.headers.iter().position(|h| h == name).ok_or_else(|| {
        Error::Input(format!(
            "--column {name:?} is not a column of {}; its columns are: {}",
            input.path.display(),
            crate::engine::input::list_columns(&input.headers)
        ))
    })
}

/// Reads every row once: a row that cannot be read stops the command before anything is sent.
pub fn count_rows(input: &InputFile) -> Result<u64, Error> {
    let mut n = 0;
    let mut last = None;
    for row in input.rows()? {
        last = Some(row?);
        n += 1;
    }
    if let Some(last) = last
        && let Some(problem) = input.unterminated_quote(&last)?
    {
        return Err(Error::Input(problem));
    }
    Ok(n)
}

/// The cache the reader answers from: none when off or with `--refresh`.
fn read_cache(run: &RunConfig) -> Result<Option<Cache>, Error> {
    match &run.cache {
        CacheMode::On {
            dir,
            refresh: false,
            ..
        } => Cache::open(dir).map(Some),
        _ => Ok(None),
    }
}

/// The cache the journal stores new vectors in.
fn write_cache(run: &RunConfig) -> Result<Option<CacheWriter>, Error> {
    match &run.cache {
        CacheMode::On { dir, .. } => Ok(Some(CacheWriter::new(Cache::open(dir)?))),
        CacheMode::Off => Ok(None),
    }
}

/// What the pack tasks share, and the journal's receiving end.
fn context(
    cfg: &EmbedConfig,
    provider: EmbeddingsProvider,
    spent: f64,
) -> (Arc<Ctx>, std::sync::mpsc::Receiver<Vec<Finished>>) {
    let run = &cfg.run;
    let (tx, rx) = std::sync::mpsc::channel();
    let printer = run.printer();
    let limiter = RateBudget::new(run.rpm, run.tpm, run.endpoint.learns_limits())
        .on_long_wait(run.retry.max_stall, move |w| {
            printer.warn(format_args!("waiting: {w}"))
        });
    let ctx = Ctx {
        provider,
        model: run.model.clone(),
        dimensions: cfg.dimensions,
        price: run.prices.lookup(&run.model),
        limiter,
        spend: run.max_cost.map(|cap| SpendCap::new(cap, spent)),
        retry: run.retry,
        timeout: run.timeout,
        journal: tx,
        stopped: Arc::new(AtomicBool::new(false)),
        stop_reason: Arc::new(Mutex::new(None)),
        abort: CancellationToken::new(),
        last_answer: Mutex::new(Instant::now()),
        requests: AtomicU64::new(0),
    };
    (Arc::new(ctx), rx)
}

/// Runs the reader and sends its packs, at most `-j` at once; returns the reader's error.
/// `slots`: `-j` (`auto` is taken as its ceiling: embeddings requests are few and large).
async fn dispatch(ctx: &Arc<Ctx>, plan: ReadPlan, slots: usize) -> Option<Error> {
    let slots = slots.max(1);
    let (packs_tx, mut packs) = tokio::sync::mpsc::channel::<Pack>(slots * 2);
    let out = ReadOut {
        packs: packs_tx,
        journal: ctx.journal.clone(),
        stop: ctx.stopped.clone(),
    };
    let reader = tokio::task::spawn_blocking(move || read::read_rows(plan, out));
    let sem = Arc::new(Semaphore::new(slots));
    let mut tasks = JoinSet::new();
    while let Some(pack) = packs.recv().await {
        let permit = sem.clone().acquire_owned().await.expect("never closed");
        let ctx = ctx.clone();
        tasks.spawn(async move {
            send_pack(ctx, pack, None).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    match reader.await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(e) => Some(Error::Usage(format!("the input reader failed: {e}"))),
    }
}

/// First Ctrl-C or SIGTERM: stop sending, give requests in flight `grace`, then abandon them.
/// Second: leave at once (every commit of the journal is whole).
async fn watch_signals(
    ctx: Arc<Ctx>,
    grace: Duration,
    interrupted: Arc<AtomicBool>,
    printer: crate::base::printer::Printer,
) {
    if !wait_for_signal().await {
        return;
    }
    printer.say(format_args!(
        "\ninterrupted: finishing requests in flight (up to {grace:?}); press Ctrl-C again to \
         quit now"
    ));
    interrupted.store(true, Ordering::SeqCst);
    ctx.stop("interrupted".into());
    let abort = ctx.abort.clone();
    drop(ctx);
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        abort.cancel();
    });
    if wait_for_signal().await {
        crate::engine::stdio::remove_spools();
        std::process::exit(ExitStatus::Interrupted as i32);
    }
}

/// `--dry-run`: the rows, the requests they pack into, their tokens and what they would cost.
fn dry_run(
    cfg: &EmbedConfig,
    input: &InputFile,
    column: usize,
    total: u64,
) -> Result<ExitStatus, Error> {
    let model = &cfg.run.model;
    let mut packer = Packer::new(cfg.limits, false);
    let (mut requests, mut tokens, mut too_long) = (0u64, 0u64, 0u64);
    for row in input.rows()? {
        let row = row?;
        let text = row.record.get(column).unwrap_or("");
        let n = u64::from(crate::engine::tokens::count(model, text));
        if n > cfg.limits.max_input_tokens || text.is_empty() {
            too_long += 1;
            continue;
        }
        tokens += n;
        let item = pack::Item {
            seq: row.seq,
            line: row.line,
            id: row.id,
            text: String::new(),
            hash: row.seq.to_string(),
            tokens: n,
            followers: Vec::new(),
        };
        requests += u64::from(packer.push(item).is_some());
    }
    requests += u64::from(packer.finish().is_some());
    let cost = cfg.run.prices.lookup(model).map(|p| p.estimate(tokens, 0));
    cfg.run.printer().report(format_args!(
        "Dry run: {} of {model} in {} (up to {} inputs and {} tokens each), {} tokens, {}{}",
        human::count(total, "row"),
        human::count(requests, "request"),
        cfg.limits.max_inputs,
        cfg.limits.max_tokens,
        tokens,
        cost.map_or_else(
            || "cost unknown (no price for the model)".into(),
            |c| format!("about {}", human::usd_micro(c))
        ),
        if too_long > 0 {
            format!(
                "; {} empty or too long, not sent",
                human::count(too_long, "row")
            )
        } else {
            String::new()
        },
    ));
    Ok(ExitStatus::Success)
}

/// The summary (or, with `-q`, only what went wrong), the requests sent, the state file.
fn report(run: &RunConfig, summary: &Summary, ended: &Ended) -> Result<(), Error> {
    if let Some(path) = &run.summary_json {
        summary.write_json(path)?;
    }
    let printer = run.printer();
    if printer.is_quiet() {
        printer.say_with(|mut w| summary.print_problems(&mut w, false));
    } else {
        printer.note_with(|mut w| summary.print(&mut w));
    }
    let sent = summary.sent_rows;
    if ended.requests > 0 {
        printer.note(format_args!(
            "Requests   {} for {} ({:.1} rows a request)",
            ended.requests,
            human::count(sent, "row"),
            sent as f64 / ended.requests as f64
        ));
    }
    if ended.stop.is_some() || summary.skipped > 0 {
        printer.note(format_args!(
            "State      {} (run again with --resume to finish)",
            run.state.display()
        ));
    }
    Ok(())
}

//! The dispatcher: takes each job, answers it from the cache or an identical request where it can, waits for a concurrency slot, and hands the row to a row worker; after a stop it marks rows skipped instead.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::FutureExt;
use tokio::sync::mpsc;

use super::attempt::process_row;
use super::job::Job;
use super::journal::{JournalEntry, cached_result};
use super::shared::Shared;
use crate::base::error::Error;
use crate::base::record::{RowResult, RowStatus};
use crate::engine::dedup::Turn;
use crate::engine::store::Finished;

/// Journals the outcome of a row that was not sent. The journal's queue is bounded, so after a
/// stop, when every row left is skipped at once, they wait here rather than pile up in memory.
async fn record(journal: &mpsc::Sender<JournalEntry>, result: RowResult, job: Job, leads: bool) {
    let finished = Finished {
        result,
        request_hash: job.request_hash,
        attempts: Vec::new(),
    };
    let entry = JournalEntry {
        finished,
        holds_slot: false,
        leads,
    };
    let _ = journal.send(entry).await;
}

/// Starts each job when a slot is free; returns the input error that ended reading, if any.
pub(super) async fn dispatch(
    mut work: mpsc::Receiver<Vec<Result<Job, Error>>>,
    shared: Arc<Shared>,
    journal: mpsc::Sender<JournalEntry>,
) -> Option<Error> {
    let skipped = |job: &Job| {
        let reason = shared.stop_reason();
        RowResult::skipped(job.seq, job.id.clone(), &job.request.model, &reason)
    };
    let workers = Workers::new();
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
            record(&journal, result, job, false).await;
            continue;
        }
        // Identical requests are sent once: wait for the one in flight, or reuse the answer.
        let mut leads = false;
        if let Some(dedup) = &shared.dedup {
            match dedup.turn(job.seq, &job.id, &job.request_hash) {
                Turn::Follow => continue,
                Turn::Reuse(result) => {
                    record(&journal, *result, job, false).await;
                    continue;
                }
                Turn::Lead => {}
            }
            leads = true;
        }
        if shared.stop.is_cancelled() {
            record(&journal, skipped(&job), job, leads).await;
            continue;
        }
        tokio::select! {
            _ = shared.slots.acquire() => {}
            _ = shared.stop.cancelled() => {
                record(&journal, skipped(&job), job, leads).await;
                continue;
            }
        }
        // Started: its body no longer counts against the bytes made ahead.
        drop(job.queued.take());
        workers.start(job, leads, &shared, &journal);
    }
    None
}

/// The row workers: long-lived tasks, each taking a started row, running its path and handing
/// the outcome to the journal, then waiting for the next. Against a task spawned per row, this
/// took 9-12% off the runner's CPU a row at 64 rows in flight on a zero-latency server (a task's
/// start and end, and the wake-ups around them, once per row instead of once per run). There are
/// about as many as rows were ever in flight at once (a few more at most): one is added when every
/// worker is busy, and a worker counts as free again once it has handed its row to the journal.
struct Workers {
    rows: mpsc::UnboundedSender<(Job, bool)>,
    next: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<(Job, bool)>>>,
    /// Workers that will be free for a row not yet handed out: each row sent takes one, so a
    /// row never waits in the queue behind another while a slot is held for it.
    idle: Arc<AtomicUsize>,
}

impl Workers {
    fn new() -> Self {
        let (rows, next) = mpsc::unbounded_channel();
        Workers {
            rows,
            next: Arc::new(tokio::sync::Mutex::new(next)),
            idle: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Hands a row that holds a slot to a free worker, adding one if none is. The queue is
    /// unbounded but never longer than the slots held: every row in it has its worker.
    fn start(
        &self,
        job: Job,
        leads: bool,
        shared: &Arc<Shared>,
        journal: &mpsc::Sender<JournalEntry>,
    ) {
        let taken = self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if taken.is_err() {
            let (next, idle) = (self.next.clone(), self.idle.clone());
            tokio::spawn(work(next, idle, shared.clone(), journal.clone()));
        }
        // The queue's receiver lives as long as `self`, so this cannot fail; were it to, the
        // slot is given back rather than held for a row that never runs.
        if self.rows.send((job, leads)).is_err() {
            shared.slots.release();
        }
    }
}

/// One row worker: runs each row it takes to its outcome, until the dispatcher is done.
async fn work(
    next: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<(Job, bool)>>>,
    idle: Arc<AtomicUsize>,
    shared: Arc<Shared>,
    journal: mpsc::Sender<JournalEntry>,
) {
    loop {
        let Some((job, leads)) = next.lock().await.recv().await else {
            // `shared` first: once the last journal sender is gone the run may be wound up,
            // which needs every other hold on `shared` gone.
            drop(shared);
            return;
        };
        // A bug in a row's path fails that row (the panic's message is on stderr) rather than
        // holding its slot for good, which would stall the run at `-j 1`.
        let (result, attempts) = AssertUnwindSafe(process_row(&shared, &job))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| (internal_error(&job), Vec::new()));
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
        if journal.send(entry).await.is_err() {
            shared.slots.release();
        }
        idle.fetch_add(1, Ordering::AcqRel);
    }
}

/// The result of a row whose path panicked.
fn internal_error(job: &Job) -> RowResult {
    RowResult {
        status: RowStatus::Failed,
        error: "internal error: the row's processing stopped unexpectedly (a bug in batch; \
                please report it with the message printed above)"
            .to_string(),
        ..RowResult::skipped(job.seq, job.id.clone(), &job.request.model, "")
    }
}

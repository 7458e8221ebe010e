//! The dispatcher: takes each job, answers it from the cache or an identical request where it can, waits for a concurrency slot, and starts its row task; after a stop it marks rows skipped instead.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::attempt::process_row;
use super::job::Job;
use super::journal::{JournalEntry, cached_result};
use super::shared::Shared;
use crate::base::error::Error;
use crate::base::record::RowResult;
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
            if journal.send(entry).await.is_err() {
                shared.slots.release();
            }
        });
    }
    None
}

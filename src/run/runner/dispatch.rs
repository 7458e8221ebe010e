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

/// Starts each job when a slot is free; returns the input error that ended reading, if any.
pub(super) async fn dispatch(
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

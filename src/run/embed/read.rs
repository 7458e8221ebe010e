//! The reader: every input row's text, hashed, counted and either answered without a request
//! (done in an earlier part of the run, in the cache, or refused here: empty or too long) or
//! packed into a request for the dispatcher.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;

use crate::base::error::Error;
use crate::base::record::{RowResult, RowStatus};
use crate::engine::cache::Cache;
use crate::engine::input::InputFile;
use crate::engine::provider::embeddings::row_hash;
use crate::engine::store::{Finished, request_key};
use crate::engine::tokens;

use super::pack::{Item, Pack, PackLimits, Packer};

/// What the reader needs to know about the run.
pub struct ReadPlan {
    pub input: InputFile,
    pub column: usize,
    pub model: String,
    pub dimensions: Option<u32>,
    /// The stable name of the endpoint (see `Connection::stable_url`).
    pub endpoint: String,
    pub limits: PackLimits,
    pub dedup: bool,
    /// Rows an earlier part of the run finished, with their request keys.
    pub prior: HashMap<u64, [u8; 16]>,
    /// The cache to answer from (`None`: off, or `--refresh`).
    pub cache: Option<Cache>,
}

/// Where the reader sends what it made.
pub struct ReadOut {
    pub packs: tokio::sync::mpsc::Sender<Pack>,
    pub journal: Sender<Vec<Finished>>,
    pub stop: Arc<AtomicBool>,
}

/// Rows answered by the reader are handed to the journal in groups of this many.
const GROUP: usize = 256;

/// Reads every row; returns when the input is done or the run stops.
pub fn read_rows(plan: ReadPlan, out: ReadOut) -> Result<(), Error> {
    let mut packer = Packer::new(plan.limits, plan.dedup);
    let mut local: Vec<Finished> = Vec::new();
    for row in plan.input.rows()? {
        if out.stop.load(Ordering::Relaxed) {
            break;
        }
        let row = row?;
        let text = row.record.get(plan.column).unwrap_or("");
        let hash = row_hash(&plan.endpoint, &plan.model, plan.dimensions, text);
        if plan
            .prior
            .get(&row.seq)
            .is_some_and(|k| *k == request_key(&hash))
        {
            continue;
        }
        if let Some(done) = answer_here(&plan, row.seq, &row.id, text, &hash)? {
            local.push(done);
            if local.len() >= GROUP {
                let _ = out.journal.send(std::mem::take(&mut local));
            }
            continue;
        }
        let tokens = u64::from(tokens::count(&plan.model, text));
        if tokens > plan.limits.max_input_tokens {
            let error = format!(
                "input too long: {tokens} tokens, more than the {} an input may have \
                 (--max-input-tokens); shorten the text or split it",
                plan.limits.max_input_tokens
            );
            local.push(local_failure(row.seq, &row.id, &plan.model, &hash, error));
            continue;
        }
        let item = Item {
            seq: row.seq,
            line: row.line,
            id: row.id,
            text: text.to_string(),
            hash,
            tokens,
            followers: Vec::new(),
        };
        if let Some(pack) = packer.push(item)
            && out.packs.blocking_send(pack).is_err()
        {
            break;
        }
    }
    if !local.is_empty() {
        let _ = out.journal.send(local);
    }
    if let Some(pack) = packer.finish() {
        let _ = out.packs.blocking_send(pack);
    }
    Ok(())
}

/// A row answered without a request: an empty text fails (the API refuses it), a cached vector
/// is taken.
fn answer_here(
    plan: &ReadPlan,
    seq: u64,
    id: &str,
    text: &str,
    hash: &str,
) -> Result<Option<Finished>, Error> {
    if text.is_empty() {
        let column = plan.input.column_name(plan.column);
        let error = format!(
            "empty text in column {column:?}: the embeddings API refuses empty input; fill the \
             cell or remove the row"
        );
        return Ok(Some(local_failure(seq, id, &plan.model, hash, error)));
    }
    let Some(cache) = &plan.cache else {
        return Ok(None);
    };
    Ok(cache.get(hash)?.map(|hit| Finished {
        result: RowResult {
            status: RowStatus::Ok,
            output: hit.text,
            usage: Some(hit.usage),
            cost: hit.cost_usd.map(|_| 0.0),
            saved_usd: hit.cost_usd,
            cached: true,
            model: hit.model,
            ..RowResult::skipped(seq, id.to_string(), &plan.model, "")
        },
        request_hash: hash.to_string(),
        attempts: Vec::new(),
    }))
}

/// A row that failed before any request: nothing was sent or spent.
fn local_failure(seq: u64, id: &str, model: &str, hash: &str, error: String) -> Finished {
    Finished {
        result: RowResult {
            status: RowStatus::Failed,
            ..RowResult::skipped(seq, id.to_string(), model, &error)
        },
        request_hash: hash.to_string(),
        attempts: Vec::new(),
    }
}

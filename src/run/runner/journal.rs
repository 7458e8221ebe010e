//! The journal: every outcome committed to the state file in groups (a `kill -9` loses at most the rows in flight), answers stored in the cache, slots released, and rows that waited for an identical request answered. Also the start of a run in the state file: new, or resumed after checking that the settings match.

use std::path::Path;

use tokio::sync::mpsc;

use super::job::Job;
use super::shared::Shared;
use crate::base::error::Error;
use crate::base::record::RowResult;
use crate::base::record::RowStatus;
use crate::engine::cache::{Cache, CacheWriter, CachedAnswer};
use crate::engine::provider::Api;
use crate::engine::store::{Finished, META_MAX_COST, RunRecord, RunSettings, Store};
use crate::run::settings::{Resume, RunConfig};

/// Row outcomes committed to the journal in one transaction, at most.
pub(super) const JOURNAL_GROUP: usize = 1024;

/// Outcomes waiting for the journal, at most: a few groups. Bounded so that rows decided
/// faster than they are committed (after a stop, every row left is skipped at once) wait
/// upstream, where the reader's queue bounds them too, instead of piling up here (a stopped
/// run of ten million rows grew to 100 MB).
pub(super) const JOURNAL_QUEUE: usize = 4 * JOURNAL_GROUP;

/// An outcome on its way to the journal.
pub(super) struct JournalEntry {
    pub(super) finished: Finished,
    /// The row had a concurrency slot, which the journal releases once the outcome is committed.
    pub(super) holds_slot: bool,
    /// The row's request was sent for identical ones too, whose answers the journal then writes.
    pub(super) leads: bool,
}

/// The journal thread: commits outcomes in groups, stores new answers in the cache, releases
/// the slots of the rows that had one, writes the answers of rows that waited for an identical
/// request, and passes every result on. Returns the store (for the final bookkeeping) and the
/// first write error, if any; a journal that cannot be written stops the run.
pub(super) fn write_journal(
    mut store: Store,
    cache: Option<(Cache, bool)>,
    mut rx: mpsc::Receiver<JournalEntry>,
    shared: &Shared,
    results: &mpsc::Sender<Vec<RowResult>>,
) -> (Store, Option<Error>) {
    let mut error = None;
    let mut cache = cache.map(|(c, truncated)| (CacheWriter::new(c), truncated));
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < JOURNAL_GROUP {
            match rx.try_recv() {
                Ok(item) => group.push(item),
                Err(_) => break,
            }
        }
        // Under a cap, a row's attempts, once committed, settle their journaled reservations.
        let capped = shared.reservations.is_some();
        let mut commit = |finished: &[Finished]| {
            if error.is_some() {
                return;
            }
            let written = store.record(finished).and_then(|()| match capped {
                true => store.settle_reservations(finished),
                false => Ok(()),
            });
            if let Err(e) = written {
                shared.storage_failed(format!("{e}"));
                error = Some(e);
            }
        };
        let (finished, flags): (Vec<_>, Vec<_>) = group
            .into_iter()
            .map(|e| (e.finished, (e.holds_slot, e.leads)))
            .unzip();
        commit(&finished);
        if let Some((c, truncated)) = cache.as_mut() {
            for f in finished.iter().filter(|f| cacheable(&f.result, *truncated)) {
                c.add(&f.request_hash, answer_of(&f.result));
            }
            if let Err(e) = c.journaled(finished.len()) {
                cache_failed(shared, &e);
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
        // Slots and results are handed on once a group, not once a row: each hand-off may
        // wake a thread, and wake-ups per row showed as futex and scheduler time in every
        // thread of a run against a zero-latency server.
        let slots = flags.iter().filter(|(holds_slot, _)| *holds_slot).count();
        shared.slots.release_many(slots);
        let done = finished.into_iter().chain(reused).map(|f| f.result);
        let _ = results.blocking_send(done.collect());
    }
    if let Some((mut c, _)) = cache
        && let Err(e) = c.flush()
    {
        cache_failed(shared, &e);
    }
    (store, error)
}

/// The run goes on without storing answers rather than stopping for the cache.
fn cache_failed(shared: &Shared, e: &Error) {
    shared
        .printer
        .warn(format_args!("{e}; answers of this run will not be cached"));
}

/// Whether an answer may be cached: complete and successful, and not cut off by the token cap
/// unless `truncated` allows it. Answers that came from the cache are there already.
pub(super) fn cacheable(r: &RowResult, truncated: bool) -> bool {
    r.status == RowStatus::Ok && !r.cached && (truncated || !Api::is_truncated(&r.finish_reason))
}

pub(super) fn answer_of(r: &RowResult) -> CachedAnswer {
    CachedAnswer {
        text: r.output.clone(),
        finish_reason: r.finish_reason.clone(),
        model: r.model.clone(),
        usage: r.usage.unwrap_or_default(),
        cost_usd: r.cost,
    }
}

/// The result of a row answered from the cache: nothing paid, the original usage kept.
pub(super) fn cached_result(job: &Job, a: CachedAnswer, priced: bool) -> RowResult {
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

/// Records a new run in the state file, or checks that the recorded one may be resumed, and
/// records the spend cap (for `batch status`) and what its requests are made of (for the next
/// resume, see `resume.rs`). Returns the recorded run when resuming. `unchanged`: a resume whose
/// finished rows' requests cannot have changed; `key`: the input's as it was read.
pub(super) fn prepare_state(
    store: &mut Store,
    cfg: &RunConfig,
    settings: &RunSettings,
    rows: u64,
    (unchanged, key): (bool, Option<&str>),
) -> Result<Option<RunRecord>, Error> {
    let resumed = start_or_resume(store, cfg, settings, rows)?;
    let cap = cfg.max_cost.map(|c| c.to_string()).unwrap_or_default();
    store.set_meta(META_MAX_COST, &cap)?;
    // After a change, finished rows answered to other requests remain until the recheck has
    // sent them again: no key until the run completes (it is set then).
    let key = match resumed.is_none() || unchanged {
        true => super::resume::key_to_record(cfg, settings, key),
        false => String::new(),
    };
    store.set_meta(super::resume::META_CHECKED, &key)?;
    Ok(resumed)
}

fn start_or_resume(
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
            // With no answer recorded (a run stopped by a wrong --base-url, --api or --model,
            // say), there is nothing to mix: the fix is resumed as it is.
            if !changed.is_empty() && !force && run.ok == 0 {
                cfg.printer().note(format_args!(
                    "resuming with a different {}: the recorded run has no answers to mix with \
                     the new ones",
                    changed.join(", ")
                ));
            } else if !changed.is_empty() && !force {
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
            // A new run: what an earlier one reserved against its cap is not this one's.
            store.clear_reservations()?;
            Ok(None)
        }
    }
}

pub(super) fn canonical(path: &Path) -> String {
    path.canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

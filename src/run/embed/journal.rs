//! The journal thread: every finished row into the state file, committed in groups (what has
//! arrived since the last commit goes in one transaction), its vector into the cache, and the
//! live totals for the progress line.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use crate::base::error::Error;
use crate::base::record::RowStatus;
use crate::engine::cache::{CacheWriter, CachedAnswer};
use crate::engine::store::{Finished, Store};
use crate::run::progress::Progress;
use crate::run::summary::Stats;

/// What the journal thread hands back: the store, the live totals, and the first storage error.
pub struct Journaled {
    pub store: Store,
    pub live: Stats,
    pub error: Option<Error>,
}

/// How the journal stops the run: the run's stop flag and reason (the pack tasks' own; the
/// journal cannot hold their context, whose sender would keep its channel open).
pub struct Stopper {
    pub stopped: Arc<AtomicBool>,
    pub reason: Arc<Mutex<Option<String>>>,
}

impl Stopper {
    /// The state file could not be written: nothing more is sent, since an answer that cannot
    /// be journaled would be paid for again on resume; `reason` names the file and why.
    fn stop(&self, reason: String) {
        self.reason.lock().expect("stop lock").get_or_insert(reason);
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// Records everything `rx` brings until every sender is gone. The first storage error stops
/// the run (through `stop`); later groups are not recorded, their rows end `skipped`.
pub fn journal(
    mut store: Store,
    rx: Receiver<Vec<Finished>>,
    mut cache: Option<CacheWriter>,
    progress: Arc<Progress>,
    stop: Stopper,
) -> Journaled {
    let mut live = Stats::default();
    let mut error = None;
    while let Ok(first) = rx.recv() {
        let mut group = first;
        while let Ok(more) = rx.try_recv() {
            group.extend(more);
        }
        if error.is_none()
            && let Err(e) = store.record(&group)
        {
            stop.stop(e.to_string());
            error = Some(e);
        }
        if let Some(c) = cache.as_mut() {
            for f in group
                .iter()
                .filter(|f| f.result.status == RowStatus::Ok && !f.result.cached)
            {
                c.add(&f.request_hash, answer_of(f));
            }
            if let Err(e) = c.journaled(group.len()) {
                tracing::warn!("cache write failed, cache off for the rest of the run: {e}");
                cache = None;
            }
        }
        for f in &group {
            live.record(&f.result);
        }
        progress.update(&live);
    }
    if let Some(mut c) = cache
        && let Err(e) = c.flush()
    {
        tracing::warn!("cache write failed: {e}");
    }
    Journaled { store, live, error }
}

fn answer_of(f: &Finished) -> CachedAnswer {
    let r = &f.result;
    CachedAnswer {
        text: r.output.clone(),
        finish_reason: String::new(),
        model: r.model.clone(),
        usage: r.usage.unwrap_or_default(),
        cost_usd: r.cost,
    }
}

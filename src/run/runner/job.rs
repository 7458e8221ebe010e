//! Job making: the reader thread turns rows into jobs (rendered request, exact body, request hash, cached answer) and hands them to the dispatcher in chunks. On resume, unfinished rows go first.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::base::error::Error;
use crate::engine::cache::{Cache, CachedAnswer};
use crate::engine::input::{InputFile, Row};
use crate::engine::pricing::Price;
use crate::engine::provider::Provider;
use crate::engine::provider::{self, Request};
use crate::engine::row_settings::RowSettings;
use crate::engine::store::{FinishedRows, SeqSet};
use crate::engine::template::Prompts;
use crate::engine::tokens;
use crate::run::settings::RunConfig;

/// One row, rendered and ready to send.
pub(super) struct Job {
    pub(super) seq: u64,
    pub(super) id: String,
    pub(super) request: Request,
    /// The exact body sent, rendered once.
    pub(super) body: Bytes,
    /// Identifies the request (endpoint and body): a resumed run re-sends a row whose hash
    /// changed.
    pub(super) request_hash: String,
    /// Prompt tokens, counted on first need (a token budget or the spend cap).
    pub(super) prompt_tokens: std::sync::OnceLock<u32>,
    /// The price of the row's model (a row can name its own in a `model` column).
    pub(super) price: Option<Price>,
    /// The cache's answer to this exact request, if it has one.
    pub(super) cached: Option<CachedAnswer>,
    /// The body's share of [`QUEUED_BYTES`] while the job waits for the dispatcher; dropped
    /// when it starts (or when the job is dropped).
    pub(super) queued: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Job {
    pub(super) fn prompt_tokens(&self) -> u32 {
        *self.prompt_tokens.get_or_init(|| {
            let r = &self.request;
            tokens::count_chat(&r.model, r.system.as_deref(), &r.user)
                .saturating_add(r.attachment_tokens())
        })
    }

    /// At least [`Self::prompt_tokens`], counted without a tokenizer (see
    /// [`tokens::chat_bound`]).
    pub(super) fn prompt_tokens_bound(&self) -> u32 {
        let r = &self.request;
        tokens::chat_bound(r.system.as_deref(), &r.user).saturating_add(r.attachment_tokens())
    }
}

/// Renders rows into jobs (shared by the reader thread and nothing else, but kept apart so the
/// merge logic reads plainly).
pub(super) struct JobMaker {
    pub(super) input: InputFile,
    pub(super) prompts: Arc<Prompts>,
    pub(super) provider: Arc<dyn Provider>,
    /// Where requests go, as it identifies them (stable across runs).
    pub(super) endpoint: String,
    pub(super) cfg: RunConfig,
    /// Read for hits, unless the cache is off or being refreshed.
    pub(super) cache: Option<Cache>,
    pub(super) settings: RowSettings,
    /// The price of `--model`.
    pub(super) price: Option<Price>,
}

impl JobMaker {
    pub(super) fn make(&self, row: Row) -> Result<Job, Error> {
        // The pre-flight rendered this row already; failing now means the file changed.
        let rendered = self.prompts.render(&self.input, &row).map_err(|e| {
            Error::Input(format!(
                "{}: line {}: {e} (did the file change during the run?)",
                self.input.path.display(),
                row.line
            ))
        })?;
        let mut request = Request {
            model: self.cfg.model.clone(),
            system: rendered.system,
            user: rendered.user,
            max_tokens: self.cfg.max_tokens,
            temperature: self.cfg.temperature,
            schema: self.cfg.schema.clone(),
            parts: Vec::new(),
        };
        // Attachments are read and encoded here, on the reader thread, for rows about to be
        // sent (the pre-flight checked them).
        if !rendered.parts.is_empty() {
            let loader = self.cfg.attach_loader();
            request.attach(&rendered.parts, &loader).map_err(|e| {
                Error::Input(format!(
                    "{}: line {}: {e} (did the file change during the run?)",
                    self.input.path.display(),
                    row.line
                ))
            })?;
        }
        // The pre-flight checked these cells too.
        self.settings
            .read(&row)
            .map_err(|e| {
                Error::Input(format!(
                    "{}: line {}, {e} (did the file change during the run?)",
                    self.input.path.display(),
                    row.line
                ))
            })?
            .apply(&mut request);
        let price = if request.model == self.cfg.model {
            self.price
        } else {
            self.cfg.prices.lookup(&request.model)
        };
        let body = Bytes::from(self.provider.body(&request));
        let request_hash = provider::request_hash(&self.endpoint, &body);
        request.strip_payloads();
        let cached = match &self.cache {
            // A cache that cannot be read is a cache that misses.
            Some(c) => c.get_in_snapshot(&request_hash).unwrap_or_else(|e| {
                tracing::warn!("{e}");
                None
            }),
            None => None,
        };
        Ok(Job {
            seq: row.seq,
            id: row.id,
            request,
            body,
            request_hash,
            prompt_tokens: std::sync::OnceLock::new(),
            price,
            cached,
            queued: None,
        })
    }
}

/// The reader thread: renders rows into jobs and sends them until the input ends or the
/// dispatcher goes away. With `finished` (a resumed run), the rows not finished go first; then
/// the finished ones are checked against the journal and sent again only if their request
/// changed. So a run that finished 900,000 rows of a million starts sending in the time it takes
/// to read the file, not to re-render 900,000 prompts. Without `recheck` (nothing a request is
/// made of changed since they were answered, see `resume.rs`) the finished rows are not looked
/// at again.
pub(super) fn read_work(
    maker: &JobMaker,
    finished: Option<Arc<SeqSet>>,
    recheck: bool,
    state: &Path,
    tx: mpsc::Sender<Vec<Result<Job, Error>>>,
) {
    let tx = std::cell::RefCell::new(WorkSender {
        tx,
        chunk: Vec::with_capacity(WORK_CHUNK),
        room: QueueRoom::new(QUEUED_BYTES),
        cache: maker.cache.as_ref(),
    });
    let send = |job: Result<Job, Error>| -> bool { tx.borrow_mut().send(job) };
    let rows = match first_rows(maker, finished.as_deref(), recheck, state) {
        Ok(rows) => rows,
        Err(e) => {
            send(Err(e));
            return;
        }
    };
    for row in rows {
        if let Ok(r) = &row
            && finished.as_ref().is_some_and(|f| f.contains(r.seq))
        {
            continue;
        }
        if !send(row.and_then(|r| maker.make(r))) {
            return;
        }
    }
    let Some(finished) = finished.filter(|_| recheck) else {
        return;
    };
    // The rows left to send go now, not after the recheck of every finished row.
    if !tx.borrow_mut().flush() {
        return;
    }
    let recheck = || -> Result<(), Error> {
        let mut rows = maker.input.rows()?;
        let mut go_on = true;
        let mut error = None;
        FinishedRows::open(state)?.for_each(|prior| {
            if !finished.contains(prior.result.seq) {
                return true;
            }
            for row in rows.by_ref() {
                let row = match row {
                    Ok(row) => row,
                    Err(e) => {
                        error = Some(e);
                        return false;
                    }
                };
                if row.seq < prior.result.seq {
                    continue;
                }
                if row.seq == prior.result.seq {
                    match maker.make(row) {
                        Ok(job) if prior.is_request(&job.request_hash) => {}
                        job => go_on = send(job),
                    }
                }
                break;
            }
            go_on
        })?;
        error.map_or(Ok(()), Err)
    };
    if let Err(e) = recheck() {
        send(Err(e));
    }
}

/// The rows the reader starts with: all of them, or (a resume whose finished rows need no
/// recheck) those from the last checkpoint before the first unfinished row, so that the rows
/// finished before it are not read at all.
fn first_rows(
    maker: &JobMaker,
    finished: Option<&SeqSet>,
    recheck: bool,
    state: &Path,
) -> Result<crate::engine::input::Rows, Error> {
    let start = match finished {
        Some(f) if !recheck => FinishedRows::open(state)?.checkpoint_before(f.first_missing())?,
        _ => None,
    };
    match start.filter(|s| same_row_at(maker, s, state)) {
        Some(start) => {
            tracing::info!(
                "reading {} from line {} (row {}), the last checkpoint before the first unfinished row",
                maker.input.path.display(),
                start.line,
                start.seq + 1
            );
            maker.input.rows_from(start)
        }
        None => maker.input.rows(),
    }
}

/// Whether the row the input has at checkpoint `start` is the one the state file recorded
/// there (by id), when it recorded one. A guard against an input rewritten in a way its
/// fingerprint missed: a row other than the recorded one (or none) and the reader starts from
/// the top instead. Reading the row again is cheap: one seek and one row.
fn same_row_at(maker: &JobMaker, start: &crate::engine::input::Start, state: &Path) -> bool {
    let recorded = match FinishedRows::open(state).and_then(|f| f.row(start.seq)) {
        Ok(Some(prior)) => prior.result.id,
        Ok(None) => return true,
        Err(_) => return false,
    };
    let here = maker
        .input
        .rows_from(*start)
        .ok()
        .and_then(|mut r| r.next());
    let same = matches!(&here, Some(Ok(row)) if row.seq == start.seq && row.id == recorded);
    if !same {
        tracing::info!(
            "the input's row {} is not the one recorded there: reading from the top",
            start.seq + 1
        );
    }
    same
}

/// Jobs go to the dispatcher in chunks: the reader is faster than the dispatcher and waits on
/// a full channel, and each job sent alone would wake it again (a futex and a context switch
/// per row).
pub(super) const WORK_CHUNK: usize = 64;

/// The most body bytes made ahead of the dispatcher (queued, not yet started). Text jobs are
/// bounded by the channel's 256 jobs long before this; jobs with images or PDFs (hundreds of
/// kB to 32 MB of base64 each) are bounded by it, so memory follows what is in flight (at most
/// `-j` bodies) plus this, not the input.
pub(super) const QUEUED_BYTES: usize = 32 * 1024 * 1024;

/// A budget of bytes for jobs made ahead: the reader takes a body's share before queueing it
/// and the dispatcher gives it back when the job starts.
pub(super) struct QueueRoom {
    room: Arc<tokio::sync::Semaphore>,
    size: usize,
}

impl QueueRoom {
    pub(super) fn new(size: usize) -> Self {
        QueueRoom {
            room: Arc::new(tokio::sync::Semaphore::new(size)),
            size,
        }
    }

    /// A share of `bytes` (a body larger than the whole budget waits for an empty queue).
    /// When there is no room, `before_wait` runs first (it hands the jobs held back to the
    /// dispatcher, or the wait would never end); `None` if it fails or the budget is closed.
    fn reserve(
        &self,
        bytes: usize,
        before_wait: impl FnOnce() -> bool,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let n = u32::try_from(bytes.min(self.size)).unwrap_or(u32::MAX);
        if let Ok(permit) = self.room.clone().try_acquire_many_owned(n) {
            return Some(permit);
        }
        if !before_wait() {
            return None;
        }
        futures::executor::block_on(self.room.clone().acquire_many_owned(n)).ok()
    }
}

/// The reader's end of the work channel; what is left is sent when it is dropped.
pub(super) struct WorkSender<'a> {
    pub(super) tx: mpsc::Sender<Vec<Result<Job, Error>>>,
    pub(super) chunk: Vec<Result<Job, Error>>,
    pub(super) room: QueueRoom,
    /// The cache the jobs were looked up in: its read snapshot ends with each chunk handed
    /// over, before the reader may wait (see [`Cache::get_in_snapshot`]).
    pub(super) cache: Option<&'a Cache>,
}

impl WorkSender<'_> {
    /// Queues a job; false when reading should stop (an error, or the dispatcher is gone).
    /// An error is sent at once, with the jobs before it. Waits while [`QUEUED_BYTES`] of
    /// bodies are queued.
    fn send(&mut self, mut job: Result<Job, Error>) -> bool {
        if let Ok(j) = &mut job {
            let (room, tx, chunk, cache) = (&self.room, &self.tx, &mut self.chunk, self.cache);
            let flush = || flush(tx, chunk, cache);
            match room.reserve(j.body.len(), flush) {
                Some(permit) => j.queued = Some(permit),
                None => return false,
            }
        }
        let failed = job.is_err();
        self.chunk.push(job);
        if (failed || self.chunk.len() >= WORK_CHUNK) && !self.flush() {
            return false;
        }
        !failed
    }

    fn flush(&mut self) -> bool {
        flush(&self.tx, &mut self.chunk, self.cache)
    }
}

/// Sends the jobs of `chunk`, after ending the cache's read snapshot; false when the
/// dispatcher is gone.
fn flush(
    tx: &mpsc::Sender<Vec<Result<Job, Error>>>,
    chunk: &mut Vec<Result<Job, Error>>,
    cache: Option<&Cache>,
) -> bool {
    if let Some(c) = cache {
        c.end_snapshot();
    }
    let chunk = std::mem::replace(chunk, Vec::with_capacity(WORK_CHUNK));
    chunk.is_empty() || tx.blocking_send(chunk).is_ok()
}

impl Drop for WorkSender<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_waits_for_room_after_handing_over_what_it_holds() {
        let room = Arc::new(QueueRoom::new(100));
        let first = room.reserve(60, || panic!("there was room")).unwrap();
        assert_eq!(room.room.available_permits(), 40);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let room = room.clone();
            std::thread::spawn(move || {
                // Larger than the whole budget: waits for an empty queue, then takes it all.
                room.reserve(500, || tx.send("flushed").is_ok())
            })
        };
        // The held jobs are handed over before the wait (else the wait could never end).
        assert_eq!(rx.recv().unwrap(), "flushed");
        drop(first);
        let second = waiter.join().unwrap().unwrap();
        assert_eq!(room.room.available_permits(), 0);
        drop(second);
        assert_eq!(room.room.available_permits(), 100);
        // A failed hand-over (the dispatcher is gone) stops the reader instead of waiting.
        let _all = room.reserve(100, || panic!("there was room")).unwrap();
        assert!(room.reserve(1, || false).is_none());
    }
}

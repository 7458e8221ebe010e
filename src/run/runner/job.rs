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
}

impl Job {
    pub(super) fn prompt_tokens(&self) -> u32 {
        *self.prompt_tokens.get_or_init(|| {
            let r = &self.request;
            tokens::count_chat(&r.model, r.system.as_deref(), &r.user)
                .saturating_add(r.attachment_tokens())
        })
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
            Some(c) => c.get(&request_hash).unwrap_or_else(|e| {
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
    });
    let send = |job: Result<Job, Error>| -> bool { tx.borrow_mut().send(job) };
    let rows = match maker.input.rows() {
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

/// Jobs go to the dispatcher in chunks: the reader is faster than the dispatcher and waits on
/// a full channel, and each job sent alone would wake it again (a futex and a context switch
/// per row).
pub(super) const WORK_CHUNK: usize = 64;

/// The reader's end of the work channel; what is left is sent when it is dropped.
pub(super) struct WorkSender {
    pub(super) tx: mpsc::Sender<Vec<Result<Job, Error>>>,
    pub(super) chunk: Vec<Result<Job, Error>>,
}

impl WorkSender {
    /// Queues a job; false when reading should stop (an error, or the dispatcher is gone).
    /// An error is sent at once, with the jobs before it.
    fn send(&mut self, job: Result<Job, Error>) -> bool {
        let failed = job.is_err();
        self.chunk.push(job);
        if (failed || self.chunk.len() >= WORK_CHUNK) && !self.flush() {
            return false;
        }
        !failed
    }

    fn flush(&mut self) -> bool {
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(WORK_CHUNK));
        chunk.is_empty() || self.tx.blocking_send(chunk).is_ok()
    }
}

impl Drop for WorkSender {
    fn drop(&mut self) {
        self.flush();
    }
}

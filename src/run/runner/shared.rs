//! What every row worker shares: the provider, budgets, slots, policies, and the stop signals.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::failfast::{FailFast, Verdict};
use super::job::Job;
use crate::base::printer::Printer;
use crate::engine::audit::AuditLog;
use crate::engine::concurrency::Slots;
use crate::engine::dedup::Dedup;
use crate::engine::limiter::RateBudget;
use crate::engine::provider::{CallError, Provider};
use crate::engine::retry::RetryPolicy;
use crate::engine::schema::OutputSchema;
use crate::engine::spend::SpendCap;
use crate::engine::store::ReservationLog;

/// Completion tokens reserved against the token budget before any answer has been seen, when
/// `--max-tokens` is not given; afterwards the reservation follows the answers.
pub(super) const INITIAL_COMPLETION_ESTIMATE: f64 = 256.0;

/// What every row worker needs, shared.
pub(super) struct Shared {
    pub(super) printer: Printer,
    pub(super) provider: Arc<dyn Provider>,
    pub(super) budget: RateBudget,
    pub(super) slots: Slots,
    pub(super) retry: RetryPolicy,
    pub(super) timeout: Duration,
    pub(super) spend: Option<SpendCap>,
    /// Under a cap, where each reservation is journaled before its request is sent.
    pub(super) reservations: Option<Arc<Mutex<ReservationLog>>>,
    pub(super) audit: Option<AuditLog>,
    /// Answers must fit this schema; one that does not is resent up to `schema_retries` times.
    pub(super) schema: Option<Arc<OutputSchema>>,
    pub(super) schema_retries: u32,
    /// Identical requests are sent once. `None` with `--no-dedup`.
    pub(super) dedup: Option<Dedup>,
    /// Completion tokens an answer is expected to need: a running mean of the answers seen.
    pub(super) completion_estimate: Mutex<f64>,
    /// Cancelled when the run must stop dispatching.
    pub(super) stop: CancellationToken,
    /// Cancelled when requests in flight must be abandoned (the grace period is over).
    pub(super) abort: CancellationToken,
    pub(super) stop_reason: Mutex<Option<String>>,
    /// Until the first answer, watches for errors that no request can get past.
    pub(super) fail_fast: FailFast,
    /// The run was stopped by such an error (see [`Shared::fails_fast`]).
    pub(super) failed_fast: AtomicBool,
    /// When the run started, and milliseconds after it of the last answer: how long
    /// the run has gone without one is the rate-limit retries' budget (`--max-stall`).
    pub(super) started: Instant,
    pub(super) last_answer_ms: AtomicU64,
    /// The state file could not be written (a full disk): why. The run stops at once.
    pub(super) storage_error: Mutex<Option<String>>,
    /// A stop reason was printed as the run stopped (a long wait beyond --max-stall), so the
    /// end need not say it again under -q.
    pub(super) stop_announced: AtomicBool,
    /// A 429's `retry-after` beyond a minute has been said (once a run).
    pub(super) long_retry_after_told: AtomicBool,
    /// The API's key variable, named when the key is rejected.
    pub(super) key_env: &'static str,
}

impl Shared {
    /// Notes that an answer arrived.
    /// Notes that a row was answered: the clock of `--max-stall` starts again, and from the
    /// first answer on, errors are the rows' own (fail fast is over).
    pub(super) fn answered(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_answer_ms.fetch_max(ms, Ordering::Relaxed);
        self.fail_fast.answered();
    }

    /// How long the run has gone without an answer (since its start, before the first).
    pub(super) fn stalled(&self) -> Duration {
        let last = Duration::from_millis(self.last_answer_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Stops dispatching; the first reason given is the one reported. Returns whether it is
    /// this one.
    pub(super) fn stop_with(&self, reason: String) -> bool {
        let mut r = self.stop_reason.lock().expect("stop reason lock");
        let first = r.is_none();
        if first {
            *r = Some(reason);
        }
        self.stop.cancel();
        first
    }

    /// The state file could not be written: stops dispatching at once, with `error` (which
    /// names the file and why) as the reason; what is journaled stays.
    pub(super) fn storage_failed(&self, error: String) {
        let mut e = self.storage_error.lock().expect("storage error lock");
        if e.is_none() {
            *e = Some(error.clone());
        }
        drop(e);
        self.stop_with(error);
    }

    /// After a failed attempt of `job`: whether the row is skipped because `err` is the run's,
    /// not the row's (see [`super::failfast`]). The first such error stops the run and says
    /// why, once, even with `-q`.
    pub(super) fn fails_fast(&self, job: &Job, err: &CallError) -> bool {
        match self.fail_fast.attempt_failed(err, &job.request.model) {
            Verdict::Row => false,
            Verdict::Stopped => true,
            Verdict::Stop(reason) => {
                if self.stop_with(reason.clone()) {
                    self.failed_fast.store(true, Ordering::SeqCst);
                    self.printer.say(format_args!(
                        "error: {reason}\nstopping: the rows not answered are left skipped; \
                         once this is fixed, run again with --resume to send them"
                    ));
                }
                true
            }
        }
    }

    pub(super) fn stop_reason(&self) -> String {
        self.stop_reason
            .lock()
            .expect("stop reason lock")
            .clone()
            .unwrap_or_else(|| "the run was stopped".into())
    }

    /// Completion tokens to reserve for one request: the learned mean with a margin, never
    /// more than `--max-tokens` (the most an answer can be).
    pub(super) fn completion_reservation(&self, max_tokens: Option<u32>) -> u32 {
        let learned = *self.completion_estimate.lock().expect("estimate lock") * 1.25;
        let learned = learned.ceil() as u32 + 1;
        max_tokens.map_or(learned, |m| m.min(learned))
    }

    pub(super) fn learn_completion(&self, tokens: u64) {
        let mut e = self.completion_estimate.lock().expect("estimate lock");
        *e = if *e == INITIAL_COMPLETION_ESTIMATE {
            tokens as f64
        } else {
            *e * 0.9 + tokens as f64 * 0.1
        };
    }

    /// The most one attempt of `job` can cost: its prompt (with a margin for tokenizer
    /// differences) and a full completion, at full price.
    pub(super) fn worst_cost(&self, job: &Job) -> f64 {
        let prompt = f64::from(job.prompt_tokens()) * 1.1 + 16.0;
        let completion = job.request.max_tokens.unwrap_or(0);
        job.price.map_or(0.0, |p| {
            p.estimate(prompt.ceil() as u64, u64::from(completion))
        })
    }
}

//! One row's path, top to bottom: reserve spend and rate budget, send one attempt, classify the
//! answer, then retry or record. Each step is a function below, in that order.

use std::time::{Duration, Instant, SystemTime};

use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::job::Job;
use super::shared::Shared;
use crate::base::record::{RowResult, RowStatus};
use crate::base::usage::Usage;
use crate::engine::concurrency::Sample;
use crate::engine::limiter::{Permit, Refused, TooLarge};
use crate::engine::provider::{CallError, Completion, ErrorKind, Exchange};
use crate::engine::spend::Reservation;
use crate::engine::store::AttemptRecord;

/// One row's path: reserve, send, classify, then retry or record. Returns the row's result and
/// the record of every attempt, for the journal.
pub(super) async fn process_row(shared: &Shared, job: &Job) -> (RowResult, Vec<AttemptRecord>) {
    let mut row = Tally::default();
    loop {
        if shared.stop.is_cancelled() {
            return row.stopped(shared, job, None);
        }
        let attempt = row.attempts.len() as u32 + 1;
        let reserved = match reserve(shared, job, attempt).await {
            Reserve::Held(reserved) => reserved,
            Reserve::Stopped => return row.stopped(shared, job, None),
            Reserve::TooLarge(e) => return row.refused(job, &e),
        };
        let sent = send(shared, job, reserved.started_at).await;
        // An answer no request can get past (a 401 or 403, out of credit) stops dispatch before
        // anything else is done with it, so that no other request leaves after it.
        if let Err(e) = &sent.exchange.outcome
            && e.kind.stops_run()
        {
            shared.stop_with(stop_message(e, shared.key_env));
        }
        let (abandoned, latency) = (sent.abandoned, sent.latency);
        let err = match classify(shared, job, reserved, sent, &mut row) {
            Verdict::Answered(result) => {
                shared.answered();
                return (result, row.attempts);
            }
            Verdict::Failed(err) => err,
        };
        // The row was never answered because the run stopped: skipped, so --resume sends it.
        if err.kind.stops_run() || abandoned || shared.fails_fast(job, &err) {
            return row.stopped(shared, job, Some(&err));
        }
        match retry_wait(shared, job, &err, &mut row) {
            Some(wait) => {
                row.last_error = Some(err);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shared.stop.cancelled() => {}
                }
            }
            None => {
                shared.fail_fast.row_failed(&err, &job.request_hash);
                return row.failed(job, err, latency);
            }
        }
    }
}

/// What one attempt holds while it is in flight: its share of the spend cap and of the rate
/// budget, both settled by [`classify`] with what the answer really cost.
struct Reserved {
    spend: Option<Reservation>,
    permit: Permit,
    /// When the attempt starts: with the row and attempt number, the key of its journaled
    /// reservation.
    started_at: SystemTime,
}

/// What reserving came to.
enum Reserve {
    Held(Reserved),
    /// The run stopped first (the cap is reached, or a stop came while waiting).
    Stopped,
    /// The request costs more than a rate limit admits in a window: it can never be sent.
    TooLarge(TooLarge),
}

/// Reserves the worst case of attempt number `attempt` against the spend cap (waiting for room
/// while requests in flight settle), then waits for the rate budget; journals the spend
/// reservation, and looks a last time for a stop, before the request may leave.
async fn reserve(shared: &Shared, job: &Job, attempt: u32) -> Reserve {
    let Some(spend) = reserve_spend(shared, job).await else {
        return Reserve::Stopped;
    };
    let tokens = || {
        job.prompt_tokens()
            .saturating_add(shared.completion_reservation(job.request.max_tokens))
    };
    // The start gate takes a bound instead of a count: no tokenizer is built for a run without
    // a token budget.
    let bound = job
        .prompt_tokens_bound()
        .saturating_add(shared.completion_reservation(job.request.max_tokens));
    let acquired = tokio::select! {
        acquired = shared.budget.acquire_bounded(tokens, Some(bound)) => Some(acquired),
        _ = shared.stop.cancelled() => None,
    };
    match acquired {
        Some(Ok(permit)) => leave(shared, job, attempt, spend, permit).await,
        unsent => {
            if let (Some(cap), Some(r)) = (&shared.spend, spend) {
                cap.settle(r, Some(0.0));
            }
            match unsent {
                Some(Err(Refused::TooLarge(too_large))) => Reserve::TooLarge(too_large),
                Some(Err(Refused::Exhausted(long))) => {
                    let reason = format!(
                        "{long}, later than --max-stall allows; run again then with --resume"
                    );
                    if shared.stop_with(reason.clone()) {
                        shared.printer.say(format_args!("stopping: {reason}"));
                        shared
                            .stop_announced
                            .store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    Reserve::Stopped
                }
                _ => Reserve::Stopped,
            }
        }
    }
}

/// The last step before the request leaves: journals the spend reservation; a stop since (a
/// 401 in another row, the cap, a signal, a storage error) wins up to this moment.
async fn leave(
    shared: &Shared,
    job: &Job,
    attempt: u32,
    spend: Option<Reservation>,
    permit: Permit,
) -> Reserve {
    let started_at = SystemTime::now();
    let key = (job.seq, attempt, started_at);
    let journaled = !shared.stop.is_cancelled()
        && match &spend {
            Some(r) => journal_reservation(shared, key, Some(r.worst())).await,
            None => true,
        };
    let stopped = shared.stop.is_cancelled();
    if journaled && stopped && spend.is_some() {
        // Not sent after all: a resume must not count it.
        journal_reservation(shared, key, None).await;
    }
    if !journaled || stopped {
        release_spend(shared, spend);
        shared.budget.settle(permit, None);
        return Reserve::Stopped;
    }
    Reserve::Held(Reserved {
        spend,
        permit,
        started_at,
    })
}

/// The spend-cap reservation of one attempt (`Some(None)` without a cap), or `None` when the
/// run stopped first: the cap can no longer fit the request even with nothing in flight, or
/// another stop came while it waited for room.
async fn reserve_spend(shared: &Shared, job: &Job) -> Option<Option<Reservation>> {
    let Some(cap) = &shared.spend else {
        return Some(None);
    };
    let worst = shared.worst_cost(job);
    let held = tokio::select! {
        held = cap.reserve(worst) => held,
        _ = shared.stop.cancelled() => return None,
    };
    match held {
        Ok(r) => Some(Some(r)),
        Err(exhausted) => {
            let usd = crate::base::human::usd_micro;
            shared.stop_with(format!(
                "spend cap reached: {} spent of --max-cost {}, and the next request could cost \
                 up to {}",
                usd(exhausted.committed),
                usd(cap.cap()),
                usd(exhausted.worst)
            ));
            None
        }
    }
}

/// Gives back a reservation whose request was never sent.
fn release_spend(shared: &Shared, spend: Option<Reservation>) {
    if let (Some(cap), Some(r)) = (&shared.spend, spend) {
        cap.settle(r, Some(0.0));
    }
}

/// Journals a reservation (`worst`) in the state file before its request is sent, so a resume
/// after a `kill -9` counts it (see [`crate::engine::store::ReservationLog`]), or forgets one
/// (`None`) whose request was not sent after all. A failure to write stops the run, naming the
/// file and why; returns whether the write succeeded.
async fn journal_reservation(
    shared: &Shared,
    (seq, attempt, started_at): (u64, u32, SystemTime),
    worst: Option<f64>,
) -> bool {
    let Some(log) = &shared.reservations else {
        return true;
    };
    let log = log.clone();
    let written = tokio::task::spawn_blocking(move || {
        let log = log.lock().expect("reservation log lock");
        match worst {
            Some(worst) => log.record(seq, attempt, started_at, worst),
            None => log.forget(seq, attempt, started_at),
        }
    })
    .await;
    let error = match written {
        Ok(Ok(())) => return true,
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("journaling a reservation failed: {e}"),
    };
    shared.storage_failed(error);
    false
}

/// One attempt as it went on the wire.
struct Sent {
    exchange: Exchange,
    started_at: SystemTime,
    latency: Duration,
    /// Still in flight when the grace period after an interrupt ended.
    abandoned: bool,
}

/// Sends the row's body once, within `--timeout`, abandoning it if the grace period after an
/// interrupt ends first; tells the concurrency controller how it went.
async fn send(shared: &Shared, job: &Job, started_at: SystemTime) -> Sent {
    let sending = shared.slots.start_sending();
    let sent = Instant::now();
    let call = tokio::time::timeout(shared.timeout, shared.provider.send(job.body.clone()));
    let exchange = tokio::select! {
        r = call => r.unwrap_or_else(|_| Exchange::failed(CallError::new(
            ErrorKind::Timeout,
            format!("no complete response within {:?} (--timeout)", shared.timeout),
        ))),
        _ = shared.abort.cancelled() => Exchange::failed(CallError::new(
            ErrorKind::Timeout,
            "abandoned: still in flight when the --grace period after the interrupt ended",
        )),
    };
    let latency = sent.elapsed();
    shared
        .slots
        .finish_sending(sending, concurrency_sample(&exchange.outcome, latency));
    Sent {
        abandoned: shared.abort.is_cancelled() && exchange.outcome.is_err(),
        exchange,
        started_at,
        latency,
    }
}

/// An attempt, classified.
enum Verdict {
    /// The row is done: a complete answer that fits the schema (if any).
    Answered(RowResult),
    /// The attempt failed; [`retry_wait`] decides whether another follows.
    Failed(CallError),
}

/// Settles the reservations with what the attempt cost, feeds the rate-limit headers to the
/// budget, checks the answer against the schema, and records the attempt (journal and audit).
fn classify(
    shared: &Shared,
    job: &Job,
    reserved: Reserved,
    sent: Sent,
    row: &mut Tally,
) -> Verdict {
    let exchange = &sent.exchange;
    let charged = settle_spend(shared, job, reserved.spend, &exchange.outcome);
    shared.budget.observe(match &exchange.outcome {
        Ok(c) => c.rate_limits.as_ref(),
        Err(e) => e.rate_limits.as_deref(),
    });
    // A complete answer that does not fit the schema was paid for, but fails like an error.
    let invalid = match (&exchange.outcome, &shared.schema) {
        (Ok(c), Some(schema)) => schema.check(&c.text).err().map(|m| CallError {
            request_id: c.request_id.clone(),
            ..CallError::new(ErrorKind::InvalidAnswer, m)
        }),
        _ => None,
    };
    let attempt_error = match (&exchange.outcome, &invalid) {
        (Err(e), _) | (Ok(_), Some(e)) => Some(e),
        (Ok(_), None) => None,
    };
    row.record_attempt(shared, job, &sent, attempt_error, charged);
    let latency = sent.latency;
    match sent.exchange.outcome {
        Ok(c) => {
            let used = c.usage.prompt_tokens + c.usage.completion_tokens;
            shared.budget.settle(reserved.permit, Some(used));
            shared.learn_completion(c.usage.completion_tokens);
            // The answers rejected before this one count in the row's tokens and cost.
            row.bill(c.usage, charged);
            match invalid {
                Some(e) => {
                    row.rejected_answer = c.text;
                    Verdict::Failed(e)
                }
                None => Verdict::Answered(row.answered(job, c, latency)),
            }
        }
        Err(e) => {
            // A rejected or failed request is not counted against the server's token budget.
            shared.budget.settle(reserved.permit, None);
            Verdict::Failed(e)
        }
    }
}

/// Settles the spend reservation and returns what the attempt counts as costing: its answer's
/// cost; for a failure, nothing, unless the server may have billed an answer we never saw
/// (then, under a cap, the worst case).
fn settle_spend(
    shared: &Shared,
    job: &Job,
    spend: Option<Reservation>,
    outcome: &Result<Completion, CallError>,
) -> Option<f64> {
    let charged = match outcome {
        Ok(c) => job.price.map(|p| p.cost(&c.usage)),
        Err(e) if e.kind.may_have_been_billed() => spend.as_ref().map(|r| r.worst()),
        Err(_) => spend.as_ref().map(|_| 0.0),
    };
    if let (Some(cap), Some(r)) = (&shared.spend, spend) {
        cap.settle(r, charged);
    }
    charged
}

/// After a failed attempt: how long to wait before the next one, or `None` when the row has
/// failed. A rate limit slows the whole run; an error that no request can get past stops it.
fn retry_wait(shared: &Shared, job: &Job, err: &CallError, row: &mut Tally) -> Option<Duration> {
    let attempt = row.attempts.len() as u32;
    if err.kind == ErrorKind::RateLimited {
        row.throttled += 1;
        shared.budget.back_off(err.retry_after);
    }
    tracing::debug!(row = %job.id, attempt, error = %err, "attempt failed");
    // Answers that do not fit the schema have their own budget of resends, sent at once
    // (nothing is overloaded); the other retries count without them.
    if err.kind == ErrorKind::InvalidAnswer {
        row.invalid_answers += 1;
        return (row.invalid_answers <= shared.schema_retries).then_some(Duration::ZERO);
    }
    // Seeded only if the row is retried: most are not, and seeding is a system call.
    let rng = row.rng.get_or_insert_with(SmallRng::from_os_rng);
    if err.kind == ErrorKind::RateLimited && err.retryable() {
        // Rate limiting is waiting, not failing: bounded by the run's time without an answer.
        tell_long_retry_after(shared, err);
        let stalled = shared.stalled();
        return match shared
            .retry
            .next_throttled_delay(row.throttled, err, stalled, rng)
        {
            Some(wait) => Some(wait),
            None => {
                shared.stop_with(format!(
                    "no answer for {} s and the server asks for more waiting than --max-stall \
                     allows ({err}); run again later with --resume",
                    stalled.as_secs()
                ));
                // The row is skipped with the run's stop reason, so --resume sends it.
                Some(Duration::ZERO)
            }
        };
    }
    let retries = attempt - 1 - row.invalid_answers - row.throttled;
    shared.retry.next_delay(retries, err, rng)
}

/// A 429 whose `retry-after` is longer than a minute (a quota, not a burst) is said once, even
/// with `-q`: the run waits, at most `--max-stall` without an answer, and a user watching a
/// still progress line should know why and until when.
fn tell_long_retry_after(shared: &Shared, err: &CallError) {
    use std::sync::atomic::Ordering::SeqCst;
    let Some(wait) = err
        .retry_after
        .filter(|w| *w > crate::engine::limiter::LONG_WAIT)
    else {
        return;
    };
    if shared.long_retry_after_told.swap(true, SeqCst) {
        return;
    }
    let until = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + wait);
    shared.printer.warn(format_args!(
        "the server asks to wait {} before sending again (a 429's retry-after, until \
         {until}); retrying at most every {}, for up to --max-stall ({}) without an answer \
         (Ctrl-C, then --resume later, to stop instead)",
        crate::base::human::duration(wait),
        crate::base::human::duration(shared.retry.max_retry_after.min(wait)),
        crate::base::human::duration(shared.retry.max_stall),
    ));
}

/// What a row's attempts add up to.
#[derive(Default)]
struct Tally {
    /// Every attempt so far, for the journal.
    attempts: Vec<AttemptRecord>,
    /// Attempts answered with a 429.
    throttled: u32,
    /// Answers that did not fit the schema.
    invalid_answers: u32,
    /// Usage and cost of the answers received (rejected ones included: they were paid for).
    billed: Option<Usage>,
    billed_cost: Option<f64>,
    /// The last answer that did not fit the schema.
    rejected_answer: String,
    /// The error that the row is waiting to retry, named if the run stops meanwhile.
    last_error: Option<CallError>,
    rng: Option<SmallRng>,
}

impl Tally {
    fn bill(&mut self, usage: Usage, cost: Option<f64>) {
        let b = self.billed.get_or_insert_with(Usage::default);
        b.prompt_tokens += usage.prompt_tokens;
        b.completion_tokens += usage.completion_tokens;
        b.cached_tokens += usage.cached_tokens;
        b.cache_write_tokens += usage.cache_write_tokens;
        b.reasoning_tokens += usage.reasoning_tokens;
        if let Some(c) = cost {
            *self.billed_cost.get_or_insert(0.0) += c;
        }
    }

    /// Journals the attempt and writes it to the audit log.
    fn record_attempt(
        &mut self,
        shared: &Shared,
        job: &Job,
        sent: &Sent,
        error: Option<&CallError>,
        charged: Option<f64>,
    ) {
        let Sent {
            exchange,
            started_at,
            latency,
            ..
        } = sent;
        let (started_at, latency) = (*started_at, *latency);
        let attempt = self.attempts.len() as u32 + 1;
        if let Some(audit) = &shared.audit {
            let error = error.map(|e| e.to_string());
            let (id, seq, body) = (&job.id, job.seq, &job.body);
            audit.attempt(
                started_at,
                id,
                seq,
                attempt,
                body,
                Some(exchange),
                error,
                latency,
            );
        }
        self.attempts.push(AttemptRecord {
            attempt,
            started_at,
            outcome: error.map_or("ok", |e| e.kind.label()),
            http_status: exchange.status,
            error: error.map(|e| e.to_string()),
            latency,
            request_id: match &exchange.outcome {
                Ok(c) => c.request_id.clone(),
                Err(e) => e.request_id.clone(),
            },
            charged_usd: charged,
        });
    }

    /// The row's result when it is answered.
    fn answered(&self, job: &Job, c: Completion, latency: Duration) -> RowResult {
        RowResult {
            status: RowStatus::Ok,
            output: c.text,
            latency: Some(latency),
            model: c.model.unwrap_or_else(|| job.request.model.clone()),
            finish_reason: c.finish_reason.unwrap_or_default(),
            ..self.result(job)
        }
    }

    /// The row's result when it has failed for good.
    fn failed(
        mut self,
        job: &Job,
        err: CallError,
        latency: Duration,
    ) -> (RowResult, Vec<AttemptRecord>) {
        let attempt = self.attempts.len();
        let result = RowResult {
            status: RowStatus::Failed,
            // The answer that did not fit, to see what went wrong.
            output: if err.kind == ErrorKind::InvalidAnswer {
                std::mem::take(&mut self.rejected_answer)
            } else {
                String::new()
            },
            error: if attempt > 1 {
                format!("{err} (after {attempt} attempts)")
            } else {
                err.to_string()
            },
            latency: Some(latency),
            ..self.result(job)
        };
        (result, self.attempts)
    }

    /// The row's result when its request is larger than a rate limit could ever admit: failed
    /// without being sent.
    fn refused(self, job: &Job, e: &TooLarge) -> (RowResult, Vec<AttemptRecord>) {
        let result = RowResult {
            error: e.to_string(),
            ..self.result(job)
        };
        (result, self.attempts)
    }

    /// The row's result when the run stopped before it was answered: skipped, with the reason
    /// (and the last error it was waiting to retry), so that a resumed run sends it again.
    fn stopped(
        self,
        shared: &Shared,
        job: &Job,
        last: Option<&CallError>,
    ) -> (RowResult, Vec<AttemptRecord>) {
        let mut reason = shared.stop_reason();
        if let Some(e) = last.or(self.last_error.as_ref()) {
            reason = format!("{reason}; last attempt: {e}");
        }
        let mut r = RowResult::skipped(job.seq, job.id.clone(), &job.request.model, &reason);
        r.attempts = self.attempts.len() as u32;
        r.throttled = self.throttled;
        r.usage = self.billed;
        r.cost = self.billed_cost;
        (r, self.attempts)
    }

    /// The fields every outcome of the row shares.
    fn result(&self, job: &Job) -> RowResult {
        RowResult {
            seq: job.seq,
            id: job.id.clone(),
            status: RowStatus::Failed,
            output: String::new(),
            error: String::new(),
            attempts: self.attempts.len() as u32,
            throttled: self.throttled,
            latency: None,
            usage: self.billed,
            cost: self.billed_cost,
            model: job.request.model.clone(),
            finish_reason: String::new(),
            cached: false,
            saved_usd: None,
        }
    }
}

/// What an attempt tells the concurrency controller: 429s, timeouts and 503s are overload.
fn concurrency_sample(outcome: &Result<Completion, CallError>, latency: Duration) -> Sample {
    match outcome {
        Err(e) if matches!(e.kind, ErrorKind::RateLimited | ErrorKind::Timeout) => Sample::Dropped,
        Err(e) if e.status == Some(503) => Sample::Dropped,
        _ => Sample::Answered(latency),
    }
}

/// What to tell the user when the API says no request can succeed.
/// `key_env` is the API's key variable (`OPENAI_API_KEY` or `ANTHROPIC_API_KEY`).
fn stop_message(err: &CallError, key_env: &str) -> String {
    match err.kind {
        ErrorKind::QuotaExhausted => format!(
            "the API reports the account is out of quota or credit ({err}); add credit or raise \
             the limit, then run again with --resume"
        ),
        ErrorKind::Auth => format!(
            "the API rejected the key ({err}); check {key_env} or --api-key-file and the \
             key's access to this model"
        ),
        _ => err.to_string(),
    }
}

//! One row's path, top to bottom: reserve spend and rate budget, send one attempt, classify the answer, then retry or record.

use std::time::{Duration, Instant, SystemTime};

use rand::SeedableRng;

use super::job::Job;
use super::shared::Shared;
use crate::base::money::format_cost;
use crate::base::record::RowResult;
use crate::base::record::RowStatus;
use crate::base::usage::Usage;
use crate::engine::concurrency::Sample;
use crate::engine::provider::{CallError, Completion, ErrorKind, Exchange};
use crate::engine::store::AttemptRecord;

/// One row's path: reserve spend and rate budget, send, classify, then retry or record.
pub(super) async fn process_row(shared: &Shared, job: &Job) -> (RowResult, Vec<AttemptRecord>) {
    // Seeded only if the row is retried: most are not, and seeding is a system call.
    let mut rng = None;
    let mut journal = Vec::new();
    let mut tally = Tally::default();
    let mut last_error: Option<CallError> = None;
    let stopped = |attempts: &[AttemptRecord], tally: &Tally, last: Option<&CallError>| {
        let mut reason = shared.stop_reason();
        if let Some(e) = last {
            reason = format!("{reason}; last attempt: {e}");
        }
        let mut r = RowResult::skipped(job.seq, job.id.clone(), &job.request.model, &reason);
        r.attempts = attempts.len() as u32;
        r.throttled = tally.throttled;
        r.usage = tally.billed;
        r.cost = tally.billed_cost;
        r
    };
    loop {
        if shared.stop.is_cancelled() {
            return (stopped(&journal, &tally, last_error.as_ref()), journal);
        }
        let spend = match &shared.spend {
            None => None,
            Some(cap) => match cap.reserve(shared.worst_cost(job)) {
                Ok(r) => Some(r),
                Err((committed, reserved)) => {
                    let usd = |v: f64| format_cost((v * 1e6).round() / 1e6);
                    shared.stop_with(format!(
                        "spend cap reached: ${} spent and ${} reserved by requests in flight, of \
                         --max-cost ${}; the next request could cost up to ${}",
                        usd(committed),
                        usd(reserved),
                        usd(cap.cap()),
                        usd(shared.worst_cost(job))
                    ));
                    return (stopped(&journal, &tally, last_error.as_ref()), journal);
                }
            },
        };
        let reserve = || {
            job.prompt_tokens()
                .saturating_add(shared.completion_reservation(job.request.max_tokens))
        };
        let permit = tokio::select! {
            permit = shared.budget.acquire(reserve) => permit,
            _ = shared.stop.cancelled() => {
                if let (Some(cap), Some(r)) = (&shared.spend, spend) {
                    cap.settle(r, Some(0.0));
                }
                return (stopped(&journal, &tally, last_error.as_ref()), journal);
            }
        };
        let attempt = journal.len() as u32 + 1;
        let sending = shared.slots.start_sending();
        let started_at = SystemTime::now();
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
        let abandoned = shared.abort.is_cancelled() && exchange.outcome.is_err();
        // What this attempt counts as costing: its answer's cost; for a failure, nothing,
        // unless the server may have billed an answer we never saw (then, under a cap, the
        // worst case).
        let charged = match &exchange.outcome {
            Ok(c) => job.price.map(|p| p.cost(&c.usage)),
            Err(e) if e.kind.may_have_been_billed() => spend.as_ref().map(|r| r.worst()),
            Err(_) => spend.as_ref().map(|_| 0.0),
        };
        if let (Some(cap), Some(r)) = (&shared.spend, spend) {
            cap.settle(r, charged);
        }
        shared
            .slots
            .finish_sending(sending, concurrency_sample(&exchange.outcome, latency));
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
        if let Some(audit) = &shared.audit {
            let error = attempt_error.map(|e| e.to_string());
            audit.attempt(
                started_at,
                &job.id,
                job.seq,
                attempt,
                &job.body,
                Some(&exchange),
                error,
                latency,
            );
        }
        journal.push(AttemptRecord {
            attempt,
            started_at,
            outcome: attempt_error.map_or("ok", |e| e.kind.label()),
            http_status: exchange.status,
            error: attempt_error.map(|e| e.to_string()),
            latency,
            request_id: match &exchange.outcome {
                Ok(c) => c.request_id.clone(),
                Err(e) => e.request_id.clone(),
            },
            charged_usd: charged,
        });
        let err = match exchange.outcome {
            Ok(c) => {
                let used = c.usage.prompt_tokens + c.usage.completion_tokens;
                shared.budget.settle(permit, Some(used));
                shared.learn_completion(c.usage.completion_tokens);
                if let Some(e) = invalid {
                    tally.bill(c.usage, charged);
                    tally.rejected_answer = c.text;
                    e
                } else {
                    // The answers rejected before this one count in the row's tokens and cost.
                    tally.bill(c.usage, charged);
                    let result = RowResult {
                        seq: job.seq,
                        id: job.id.clone(),
                        status: RowStatus::Ok,
                        output: c.text,
                        error: String::new(),
                        attempts: attempt,
                        throttled: tally.throttled,
                        latency: Some(latency),
                        cost: tally.billed_cost,
                        usage: tally.billed,
                        model: c.model.unwrap_or_else(|| job.request.model.clone()),
                        finish_reason: c.finish_reason.unwrap_or_default(),
                        cached: false,
                        saved_usd: None,
                    };
                    return (result, journal);
                }
            }
            Err(e) => {
                // A rejected or failed request is not counted against the server's token
                // budget.
                shared.budget.settle(permit, None);
                e
            }
        };
        if abandoned {
            return (stopped(&journal, &tally, Some(&err)), journal);
        }
        if err.kind == ErrorKind::RateLimited {
            tally.throttled += 1;
            shared.budget.back_off(err.retry_after);
        }
        tracing::debug!(row = %job.id, attempt, error = %err, "attempt failed");
        if err.kind.stops_run() {
            shared.stop_with(stop_message(&err));
        }
        // Answers that do not fit the schema have their own budget of resends, sent at once
        // (nothing is overloaded); the other retries count without them.
        let wait = if err.kind == ErrorKind::InvalidAnswer {
            tally.invalid_answers += 1;
            (tally.invalid_answers <= shared.schema_retries).then_some(Duration::ZERO)
        } else {
            let retries = attempt - 1 - tally.invalid_answers;
            shared.retry.next_delay(
                retries,
                &err,
                rng.get_or_insert_with(rand::rngs::SmallRng::from_os_rng),
            )
        };
        match wait {
            Some(wait) => {
                last_error = Some(err);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shared.stop.cancelled() => {}
                }
            }
            None => {
                let result = RowResult {
                    seq: job.seq,
                    id: job.id.clone(),
                    status: RowStatus::Failed,
                    // The answer that did not fit, to see what went wrong.
                    output: if err.kind == ErrorKind::InvalidAnswer {
                        std::mem::take(&mut tally.rejected_answer)
                    } else {
                        String::new()
                    },
                    error: if attempt > 1 {
                        format!("{err} (after {attempt} attempts)")
                    } else {
                        err.to_string()
                    },
                    attempts: attempt,
                    throttled: tally.throttled,
                    latency: Some(latency),
                    usage: tally.billed,
                    cost: tally.billed_cost,
                    model: job.request.model.clone(),
                    finish_reason: String::new(),
                    cached: false,
                    saved_usd: None,
                };
                return (result, journal);
            }
        }
    }
}

/// What a row's attempts add up to.
#[derive(Default)]
pub(super) struct Tally {
    /// Attempts answered with a 429.
    pub(super) throttled: u32,
    /// Answers that did not fit the schema.
    pub(super) invalid_answers: u32,
    /// Usage and cost of the answers received (rejected ones included: they were paid for).
    pub(super) billed: Option<Usage>,
    pub(super) billed_cost: Option<f64>,
    /// The last answer that did not fit the schema.
    pub(super) rejected_answer: String,
}

impl Tally {
    pub(super) fn bill(&mut self, usage: Usage, cost: Option<f64>) {
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
}

/// What an attempt tells the concurrency controller: 429s, timeouts and 503s are overload.
pub(super) fn concurrency_sample(
    outcome: &Result<Completion, CallError>,
    latency: Duration,
) -> Sample {
    match outcome {
        Err(e) if matches!(e.kind, ErrorKind::RateLimited | ErrorKind::Timeout) => Sample::Dropped,
        Err(e) if e.status == Some(503) => Sample::Dropped,
        _ => Sample::Answered(latency),
    }
}

/// What to tell the user when the API says no request can succeed.
pub(super) fn stop_message(err: &CallError) -> String {
    match err.kind {
        ErrorKind::QuotaExhausted => format!(
            "the API reports the account is out of quota or credit ({err}); add credit or raise \
             the limit, then run again with --resume"
        ),
        ErrorKind::Auth => format!(
            "the API rejected the key ({err}); check OPENAI_API_KEY or --api-key-file and the \
             key's access to this model"
        ),
        _ => err.to_string(),
    }
}

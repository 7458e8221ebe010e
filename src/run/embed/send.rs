//! One pack's way to its vectors: the spend cap, the rate budget (its summed tokens), the
//! request, and then retry, split or give up. A request the server refuses (a 4xx other than
//! a rate limit) is split in halves and each half sent again, until the row it refuses fails
//! alone with the server's reason: one bad row never fails its neighbours.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio_util::sync::CancellationToken;

use crate::base::record::{RowResult, RowStatus};
use crate::base::usage::Usage;
use crate::engine::limiter::{RateBudget, Refused};
use crate::engine::pricing::Price;
use crate::engine::provider::embeddings::{Embeddings, EmbeddingsProvider, body};
use crate::engine::provider::{CallError, ErrorKind};
use crate::engine::retry::RetryPolicy;
use crate::engine::spend::{Reservation, SpendCap};
use crate::engine::store::{AttemptRecord, Finished};

use super::pack::Pack;

/// What every pack's task shares.
pub struct Ctx {
    pub provider: EmbeddingsProvider,
    pub model: String,
    pub dimensions: Option<u32>,
    pub price: Option<Price>,
    pub limiter: RateBudget,
    pub spend: Option<SpendCap>,
    pub retry: RetryPolicy,
    pub timeout: Duration,
    pub journal: Sender<Vec<Finished>>,
    /// Set when the run must send nothing more; the reason is in `stop_reason`.
    pub stopped: Arc<AtomicBool>,
    /// Shared with the journal thread, which stops the run when the state file fails.
    pub stop_reason: Arc<Mutex<Option<String>>>,
    /// Cancelled when the grace after Ctrl-C is over: requests in flight are abandoned.
    pub abort: CancellationToken,
    /// When the last answer arrived, for `--max-stall`.
    pub last_answer: Mutex<Instant>,
    /// Requests sent (attempts included).
    pub requests: AtomicU64,
}

impl Ctx {
    /// Stops the run for `reason` (the first reason wins).
    pub fn stop(&self, reason: String) {
        let mut r = self.stop_reason.lock().expect("stop lock");
        r.get_or_insert(reason);
        self.stopped.store(true, Ordering::SeqCst);
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

/// The attempts of one pack so far, for the journal (each row gets its share).
#[derive(Default)]
struct Tally {
    attempts: Vec<AttemptRecord>,
    throttled: u32,
    retries: u32,
}

/// Sends `pack` until its rows have vectors, have failed, or the run stops. Returns the
/// message its request was refused with (a 4xx other than a rate limit), if it was.
/// `refused_like`: the message the parent and the left sibling were both refused with; the
/// pack being refused with it too stops the run (see [`refused_by_every_request`]).
pub fn send_pack(
    ctx: Arc<Ctx>,
    pack: Pack,
    refused_like: Option<String>,
) -> BoxFuture<'static, Option<String>> {
    Box::pin(async move {
        let mut tally = Tally::default();
        let mut rng = SmallRng::from_os_rng();
        let payload = bytes::Bytes::from(body(
            &ctx.model,
            &pack
                .items
                .iter()
                .map(|i| i.text.as_str())
                .collect::<Vec<_>>(),
            ctx.dimensions,
        ));
        loop {
            if ctx.is_stopped() {
                finish(&ctx, &pack, &tally, Outcome::Skipped(stop_reason(&ctx)));
                return None;
            }
            let (permit, reservation) = match admit(&ctx, &pack).await {
                Ok(admitted) => admitted,
                Err(Admit::Split) => {
                    split(ctx, pack, None).await;
                    return None;
                }
                Err(Admit::Fail(e)) => {
                    finish(&ctx, &pack, &tally, Outcome::Failed(e));
                    return None;
                }
                Err(Admit::Stop) => continue,
            };
            let started = (Instant::now(), SystemTime::now());
            let attempt = tokio::select! {
                a = tokio::time::timeout(ctx.timeout, ctx.provider.send(payload.clone(), pack.len())) => a,
                _ = ctx.abort.cancelled() => {
                    ctx.limiter.settle(permit, None);
                    settle_spend(&ctx, reservation, None);
                    finish(&ctx, &pack, &tally, Outcome::Skipped("interrupted".into()));
                    return None;
                }
            };
            ctx.requests.fetch_add(1, Ordering::Relaxed);
            let (outcome, status) = match attempt {
                Ok(a) => (a.outcome, a.status),
                Err(_) => (Err(timeout_error(ctx.timeout)), None),
            };
            let charged = charge(&ctx, &pack, reservation, &outcome);
            settle_budget(&ctx, permit, &outcome);
            tally
                .attempts
                .push(record(&tally, started, status, &outcome, charged));
            match outcome {
                Ok(answer) => {
                    *ctx.last_answer.lock().expect("answer lock") = Instant::now();
                    let latency = started.0.elapsed();
                    let ok = Outcome::Ok(Box::new(answer), latency, charged);
                    finish(&ctx, &pack, &tally, ok);
                    return None;
                }
                Err(e)
                    if e.kind == ErrorKind::Rejected
                        && refused_by_every_request(refused_like.as_deref(), &e.to_string()) =>
                {
                    ctx.stop(format!(
                        "every request is refused: {e} (the same for a request and both its \
                         halves, so it is not one row's)"
                    ));
                    finish(&ctx, &pack, &tally, Outcome::Skipped(stop_reason(&ctx)));
                    return Some(e.to_string());
                }
                Err(e) if e.kind == ErrorKind::Rejected && pack.len() > 1 => {
                    split(ctx, pack, Some(e.to_string())).await;
                    return Some(e.to_string());
                }
                Err(e) => match next_wait(&ctx, &mut tally, &e, &mut rng) {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => {
                        finish(&ctx, &pack, &tally, Outcome::Failed(e.to_string()));
                        return (e.kind == ErrorKind::Rejected).then(|| e.to_string());
                    }
                },
            }
        }
    })
}

/// Both halves of a refused pack, one after the other (they hold the pack's concurrency slot).
/// `refused`: the pack's refusal, if the server refused it (not the rate budget); when the left
/// half is refused with the same message, the right half is sent knowing it.
async fn split(ctx: Arc<Ctx>, pack: Pack, refused: Option<String>) {
    let (left, right) = pack.split();
    tracing::debug!(
        left = left.len(),
        right = right.len(),
        "refused request split"
    );
    let mut left_refused = None;
    if !left.is_empty() {
        left_refused = send_pack(ctx.clone(), left, None).await;
    }
    if !right.is_empty() {
        let like = refused.filter(|m| left_refused.as_ref() == Some(m));
        send_pack(ctx, right, like).await;
    }
}

/// Whether a refusal is the run's, not a row's: a request and both its halves refused with the
/// same message (`like` is the parent's and left half's, `message` the right half's). A bad
/// `--dimensions` or an unknown model is refused for every request, and halving down to single
/// rows would send about two requests a row to learn nothing. A row's refusal that names the
/// input (`'$.input[3]' is invalid`) is never taken for the run's: two bad rows at matching
/// places of both halves would give the same message.
fn refused_by_every_request(like: Option<&str>, message: &str) -> bool {
    like == Some(message) && !message.contains("input[")
}

enum Admit {
    /// Too large for the rate budget as one request: send it in halves.
    Split,
    Fail(String),
    /// The run stopped while waiting.
    Stop,
}

/// The spend reservation (the pack's tokens at the model's price), then the rate budget.
async fn admit(
    ctx: &Ctx,
    pack: &Pack,
) -> Result<(crate::engine::limiter::Permit, Option<Reservation>), Admit> {
    let reservation = match (&ctx.spend, ctx.price) {
        (Some(cap), Some(price)) => match cap.reserve(price.estimate(pack.tokens, 0)).await {
            Ok(r) => Some(r),
            Err(e) => {
                ctx.stop(format!(
                    "spend cap reached: ${:.6} spent of --max-cost ${:.6}, and the next request \
                     could cost ${:.6}",
                    e.committed,
                    cap.cap(),
                    e.worst
                ));
                return Err(Admit::Stop);
            }
        },
        _ => None,
    };
    let tokens = u32::try_from(pack.tokens).unwrap_or(u32::MAX);
    match ctx.limiter.acquire(|| tokens).await {
        Ok(permit) => Ok((permit, reservation)),
        Err(refused) => {
            settle_spend(ctx, reservation, Some(0.0));
            match refused {
                Refused::TooLarge(_) if pack.len() > 1 => Err(Admit::Split),
                Refused::TooLarge(t) => Err(Admit::Fail(t.to_string())),
                Refused::Exhausted(wait) => {
                    ctx.stop(wait.to_string());
                    Err(Admit::Stop)
                }
            }
        }
    }
}

fn settle_spend(ctx: &Ctx, r: Option<Reservation>, actual: Option<f64>) {
    if let (Some(cap), Some(r)) = (&ctx.spend, r) {
        cap.settle(r, actual);
    }
}

/// What the attempt counts as costing: the answer's tokens at the model's price; for a failure,
/// nothing, unless the server may have billed an answer that was lost (then the worst case).
fn charge(
    ctx: &Ctx,
    pack: &Pack,
    r: Option<Reservation>,
    outcome: &Result<Embeddings, CallError>,
) -> Option<f64> {
    let charged = match outcome {
        Ok(e) => ctx.price.map(|p| p.cost(&e.usage())),
        Err(e) if e.kind.may_have_been_billed() => ctx.price.map(|p| p.estimate(pack.tokens, 0)),
        Err(_) => ctx.price.map(|_| 0.0),
    };
    settle_spend(ctx, r, charged);
    charged
}

fn settle_budget(
    ctx: &Ctx,
    permit: crate::engine::limiter::Permit,
    outcome: &Result<Embeddings, CallError>,
) {
    ctx.limiter.observe(match outcome {
        Ok(e) => e.rate_limits.as_ref(),
        Err(e) => e.rate_limits.as_deref(),
    });
    match outcome {
        Ok(e) => ctx.limiter.settle(permit, Some(e.prompt_tokens)),
        Err(_) => ctx.limiter.settle(permit, None),
    }
}

/// The wait before the next attempt, or `None` when the pack has failed. Rate limits slow the
/// whole run and are retried while answers still arrive (`--max-stall`); an error no request
/// can get past stops the run.
fn next_wait(ctx: &Ctx, tally: &mut Tally, e: &CallError, rng: &mut SmallRng) -> Option<Duration> {
    if e.kind.stops_run() {
        ctx.stop(e.to_string());
        return Some(Duration::ZERO);
    }
    if e.kind == ErrorKind::RateLimited {
        tally.throttled += 1;
        ctx.limiter.back_off(e.retry_after);
        let stalled = ctx.last_answer.lock().expect("answer lock").elapsed();
        let wait = ctx
            .retry
            .next_throttled_delay(tally.throttled, e, stalled, rng);
        if wait.is_none() {
            ctx.stop(format!(
                "rate limited for longer than --max-stall ({:?}) without an answer: {e}",
                ctx.retry.max_stall
            ));
            return Some(Duration::ZERO);
        }
        return wait;
    }
    let wait = ctx.retry.next_delay(tally.retries, e, rng)?;
    tally.retries += 1;
    Some(wait)
}

fn timeout_error(limit: Duration) -> CallError {
    CallError::new(
        ErrorKind::Timeout,
        format!(
            "no complete answer within --timeout {}s",
            limit.as_secs_f64()
        ),
    )
}

fn record(
    tally: &Tally,
    started: (Instant, SystemTime),
    status: Option<u16>,
    outcome: &Result<Embeddings, CallError>,
    charged: Option<f64>,
) -> AttemptRecord {
    AttemptRecord {
        attempt: tally.attempts.len() as u32 + 1,
        started_at: started.1,
        outcome: match outcome {
            Ok(_) => "ok",
            Err(e) => e.kind.label(),
        },
        http_status: status,
        error: outcome.as_ref().err().map(|e| e.to_string()),
        latency: started.0.elapsed(),
        request_id: match outcome {
            Ok(e) => e.request_id.clone(),
            Err(e) => e.request_id.clone(),
        },
        charged_usd: charged,
    }
}

fn stop_reason(ctx: &Ctx) -> String {
    ctx.stop_reason
        .lock()
        .expect("stop lock")
        .clone()
        .unwrap_or_else(|| "the run stopped".into())
}

/// How a pack ended.
enum Outcome {
    Ok(Box<Embeddings>, Duration, Option<f64>),
    Failed(String),
    Skipped(String),
}

/// Rows handed to the journal at once: a pack answering many rows (followers of a repeated
/// text) does not hold a copy of the vector for each of them in one message.
const JOURNAL_CHUNK: usize = 256;

/// `row` into `rows`; the rows to the journal once there are [`JOURNAL_CHUNK`] of them.
fn push_row(ctx: &Ctx, rows: &mut Vec<Finished>, row: Finished) {
    rows.push(row);
    if rows.len() >= JOURNAL_CHUNK {
        let _ = ctx.journal.send(std::mem::take(rows));
    }
}

/// Every row of the pack (followers too) to the journal, in chunks. A row's share of the
/// request's tokens and cost is in proportion to its own tokens.
fn finish(ctx: &Ctx, pack: &Pack, tally: &Tally, outcome: Outcome) {
    let mut rows = Vec::with_capacity(pack.rows().min(JOURNAL_CHUNK));
    for (i, item) in pack.items.iter().enumerate() {
        let share = item.tokens as f64 / pack.tokens.max(1) as f64;
        let mut r = RowResult::skipped(item.seq, item.id.clone(), &ctx.model, "");
        r.attempts = tally.attempts.len() as u32;
        r.throttled = tally.throttled;
        match &outcome {
            Outcome::Ok(e, latency, charged) => {
                r.status = RowStatus::Ok;
                r.output = e.vectors[i].clone();
                r.latency = Some(*latency);
                r.usage = Some(Usage {
                    prompt_tokens: item.tokens,
                    ..Usage::default()
                });
                r.cost = charged.map(|c| c * share);
                r.model = e.model.clone().unwrap_or_else(|| ctx.model.clone());
            }
            Outcome::Failed(error) => {
                r.status = RowStatus::Failed;
                r.error = error.clone();
            }
            Outcome::Skipped(reason) => r.error = reason.clone(),
        }
        let attempts = tally
            .attempts
            .iter()
            .map(|a| AttemptRecord {
                charged_usd: a.charged_usd.map(|c| c * share),
                ..a.clone()
            })
            .collect();
        for (seq, id) in &item.followers {
            let reused = Finished {
                result: RowResult::reused(*seq, id.clone(), &r),
                request_hash: item.hash.clone(),
                attempts: Vec::new(),
            };
            push_row(ctx, &mut rows, reused);
        }
        let own = Finished {
            result: r,
            request_hash: item.hash.clone(),
            attempts,
        };
        push_row(ctx, &mut rows, own);
    }
    if !rows.is_empty() {
        let _ = ctx.journal.send(rows);
    }
}

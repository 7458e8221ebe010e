//! Request and token budgets, shared by every task of a run.
//!
//! Every budget is a token bucket ([`bucket::Bucket`]) paced at 99% of its limit, and requests
//! take from them first come, first served. A budget counted over a minute or less holds about
//! half a second of burst: providers enforce per-minute limits over short windows (a minute's
//! worth of requests in one second is answered with 429s), and the 1% slack plus the small
//! burst absorb the jitter between when we send and when the server counts. A budget counted
//! over a longer window (Groq's requests per day) is a quota: what is left may be spent at once,
//! at the pace of the other budgets, and comes back at the quota's rate or by its reset.
//!
//! A request larger than a bucket's burst waits for a full bucket and then goes into debt for
//! the rest, as on a server, so requests of any size are paced to the limit. One that is larger
//! than a limit could ever admit (more tokens than the TPM limit) is refused ([`TooLarge`]).
//!
//! A request's token cost is estimated before it is sent (prompt tokens plus the completion
//! reservation) and reconciled with the real `usage` afterwards ([`RateBudget::settle`]), giving
//! back what was over-reserved. The limits the user gives (`--rpm`, `--tpm`) are ceilings kept
//! as budgets of their own; the server's are learned from its rate-limit headers
//! ([`RateBudget::observe`]) as separate budgets, so a stricter server is never ignored and a
//! laxer one never lifts the user's limit. Until the first answer arrives, a few requests go and
//! then one a second ([`probe`]), so a run neither opens with a burst into an unknown limit nor
//! hangs on one request. Nothing learned from headers
//! makes a request wait longer than the server's reset. A 429 pauses every task
//! ([`RateBudget::back_off`]) and empties the buckets, so dispatch resumes at the paced rate
//! rather than with a burst.
//!
//! A wait the server's limits impose that is longer than [`LONG_WAIT`] (a per-day quota used
//! up, typically) is not silent: it is announced once ([`RateBudget::on_long_wait`]); and one
//! longer than the run may stall (`--max-stall`) is not waited out at all: the request is
//! refused ([`Refused::Exhausted`]) so the run can stop at once, resumable, instead of sleeping
//! for hours.

pub mod bucket;
pub mod headers;
pub mod probe;

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use bucket::Bucket;
use headers::LimitSnapshot;
pub use headers::RateLimitHeaders;
use probe::{Admitted, Gate, Probing};

/// Fraction of a limit we pace at.
const PACE: f64 = 0.99;
/// Seconds of refill the client-side bucket may burst (the server's is assumed to be about 1 s).
const BURST_SECS: f64 = 0.5;
/// Pause after a 429 that named no wait: the next window of a server counting per second.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause a 429 imposes on every task, the longest `retry-after` the retry policy
/// honours ([`crate::engine::retry::RetryPolicy`]): beyond it, waiting blindly helps nobody.
const MAX_PAUSE: Duration = Duration::from_secs(120);
const MINUTE: Duration = Duration::from_secs(60);
/// A wait imposed by the server's limits beyond which the user is told.
pub const LONG_WAIT: Duration = MINUTE;

const REQUESTS: usize = 0;
const TOKENS: usize = 1;

/// What a request took from the budgets; handed back to [`RateBudget::settle`].
#[derive(Debug)]
#[must_use = "settle the permit with the real usage"]
pub struct Permit {
    tokens: f64,
    /// [`State::created`] when it was taken: budgets created later started from headers that
    /// already counted this request (the probe's, typically), so settling leaves them alone.
    seen: u64,
    /// Sent before the limits were known (see [`probe`]), with the tokens the gate let out
    /// (the bound, the count, or none), which it takes back when the request is settled.
    probe: Option<(Admitted, f64)>,
}

/// A request no budget could ever admit: it costs more tokens than a limit allows per window.
#[derive(Debug, Clone, PartialEq)]
pub struct TooLarge {
    /// The request's estimated cost.
    pub tokens: u64,
    /// The limit it exceeds, per `window`.
    pub limit: u64,
    pub window: Duration,
    /// Whether the limit is the user's `--tpm` (else the server's).
    pub given: bool,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let window = window_name(self.window);
        write!(
            f,
            "request too large for the rate limit: it needs about {} tokens (prompt plus \
             completion reservation), more than {} of {} tokens per {window}, so it could never \
             be admitted; shorten the prompt or lower --max-tokens",
            self.tokens,
            if self.given {
                "the --tpm limit"
            } else {
                "the server's limit"
            },
            self.limit,
        )
    }
}

impl std::error::Error for TooLarge {}

/// A long wait the server's limits impose: its budget is used up until `until`.
#[derive(Debug, Clone, PartialEq)]
pub struct LongWait {
    /// `request` or `token`.
    pub what: &'static str,
    pub limit: u64,
    pub window: Duration,
    /// From now until a request fits again.
    pub wait: Duration,
    pub until: std::time::SystemTime,
}

impl fmt::Display for LongWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Whole seconds, whole minutes beyond ten: "in 8h 0m", not "in 7h 59m 59s 999ms".
        let step = if self.wait >= 10 * MINUTE { 60 } else { 1 };
        let rounded = Duration::from_secs(self.wait.as_secs().div_ceil(step) * step);
        let at = humantime::format_rfc3339_seconds(self.until + (rounded - self.wait));
        write!(
            f,
            "the server's {} limit ({} per {}) is used up; it resets at {at} (in {})",
            self.what,
            self.limit,
            window_name(self.window),
            humantime::format_duration(rounded),
        )
    }
}

/// Why a request is not admitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// No budget could ever admit it.
    TooLarge(TooLarge),
    /// The server's budget will not admit it for longer than the run may stall.
    Exhausted(LongWait),
}

/// `second`, `minute`, `hour`, `day`, or the window as a duration.
fn window_name(window: Duration) -> String {
    match window.as_secs() {
        1 => "second".to_string(),
        60 => "minute".to_string(),
        3600 => "hour".to_string(),
        86_400 => "day".to_string(),
        _ => humantime::format_duration(window).to_string(),
    }
}

/// One limit: its bucket, and the limit as stated, per window.
#[derive(Debug)]
struct Budget {
    bucket: Bucket,
    limit: f64,
    window: Duration,
    /// When it was created, in [`State::created`] counts.
    created: u64,
}

impl Budget {
    fn new(limit: f64, window: Duration, now: Instant) -> Self {
        let (rate, capacity) = Self::shape(limit, window);
        Budget {
            bucket: Bucket::new(rate, capacity, now),
            limit,
            window,
            created: 0,
        }
    }

    /// The paced rate per second, and the burst: a quota (a window longer than a minute) may be
    /// spent at once; a short window only with the small burst that servers counting per
    /// second accept.
    fn shape(limit: f64, window: Duration) -> (f64, f64) {
        let rate = limit / window.as_secs_f64() * PACE;
        let capacity = if window > MINUTE { limit } else { burst(rate) };
        (rate, capacity)
    }

    /// The most one request may cost: the limit of its window, or a minute's worth for windows
    /// shorter than that (a per-minute limit enforced per second still admits a request larger
    /// than the second's share, repaid as debt).
    fn most(&self) -> f64 {
        self.limit * (MINUTE.as_secs_f64() / self.window.as_secs_f64()).max(1.0)
    }

    /// Starts from (or, for a quota, follows) what the server says: what it has used up is not
    /// ours to use, and all of it is back by the reset. A bucket that refills continuously is
    /// as far from full as its reset says (it may be in debt after a large request); a fixed
    /// window's reset says nothing about that, only when all of it is back; nor does the reset
    /// of a per-minute limit enforced over short windows ([`LimitSnapshot::short_window`]),
    /// read as a bucket's it opened a run against such a server with a second's debt.
    fn sync(&mut self, seen: &LimitSnapshot, now: Instant) {
        let mut level = self.bucket.level(now);
        if let Some(remaining) = seen.remaining {
            level = level.min(remaining as f64);
        }
        let refills = seen.time_to_full && !seen.short_window();
        if let (Some(reset), true) = (seen.reset, refills) {
            level = level.min(self.bucket.capacity() - self.bucket.rate() * reset.as_secs_f64());
        }
        self.bucket.set_level(level, now);
        if let Some(reset) = seen.reset {
            self.bucket.full_by(now + reset, now);
        }
    }
}

/// What is known of a request's token cost.
#[derive(Clone, Copy)]
enum Known {
    Unknown,
    /// At least the count (cheap, from the bytes): what the start gate takes instead of
    /// counting. Never charged to a budget: a bound about four times the count would refuse a
    /// request the limit admits, or reserve four times its share.
    Bounded(f64),
    Counted(f64),
}

/// A request's token cost, counted when first needed (the counter is kept until then), with
/// the bound the start gate may take instead.
struct Cost<F> {
    known: Known,
    counter: Option<F>,
    bound: Option<u32>,
}

impl<F: FnOnce() -> u32> Cost<F> {
    fn new(counter: F, bound: Option<u32>) -> Self {
        Cost {
            known: Known::Unknown,
            counter: Some(counter),
            bound,
        }
    }

    fn count(&mut self) {
        if !matches!(self.known, Known::Counted(_)) {
            let n = self.counter.take().map_or(0, |f| f());
            self.known = Known::Counted(f64::from(n));
        }
    }

    /// For the start gate: the bound if there is one, else the count.
    fn bound_or_count(&mut self) {
        match (self.bound, self.known) {
            (Some(bound), Known::Unknown) => self.known = Known::Bounded(f64::from(bound)),
            _ => self.count(),
        }
    }

    /// What the start gate goes by: the bound or the count, if either is known.
    fn for_gate(&self) -> Option<f64> {
        match self.known {
            Known::Unknown => None,
            Known::Bounded(n) | Known::Counted(n) => Some(n),
        }
    }

    fn counted(&self) -> Option<f64> {
        match self.known {
            Known::Counted(n) => Some(n),
            _ => None,
        }
    }
}

/// Told once of a [`LongWait`].
type LongWaitHandler = Box<dyn Fn(&LongWait) + Send + Sync>;

/// The limits of one run.
pub struct RateBudget {
    state: Mutex<State>,
    /// Waits longer than this are refused ([`Refused::Exhausted`]), not waited out.
    patience: Duration,
    on_long_wait: Option<LongWaitHandler>,
    /// Wakes the requests held back while the first answer is awaited.
    learned: Notify,
    /// Wakes the queue when its head leaves or the budgets gain room.
    turn: Notify,
}

/// A place in the budget's queue; leaving (or being dropped) lets the next one go.
struct Ticket<'a>(u64, &'a RateBudget);

impl<'a> Ticket<'a> {
    fn join(budget: &'a RateBudget) -> Self {
        let mut s = budget.state.lock().expect("budget lock");
        let id = s.next_ticket;
        s.next_ticket += 1;
        s.queue.push_back(id);
        Ticket(id, budget)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut s = self.1.state.lock().expect("budget lock");
        if let Some(pos) = s.queue.iter().position(|t| *t == self.0) {
            s.queue.remove(pos);
        }
        drop(s);
        self.1.turn.notify_waiters();
    }
}

/// Why a request cannot go now: a wait (and, if the server's budgets impose a long one, what
/// it is), or never.
enum Blocked {
    Wait(Duration, Option<LongWait>),
    Never(TooLarge),
}

/// Takes one request and `tokens` tokens from every budget, or none of it and says how long
/// until all of it fits (or that it never will).
fn take_all(s: &mut State, tokens: f64, now: Instant) -> Result<(), Blocked> {
    let given = s.given[TOKENS].iter().map(|b| (true, b));
    for (given, b) in given.chain(s.learned[TOKENS].iter().map(|b| (false, b))) {
        if tokens > b.most() {
            return Err(Blocked::Never(TooLarge {
                tokens: tokens as u64,
                limit: b.limit as u64,
                window: b.window,
                given,
            }));
        }
    }
    let cost = [1.0, tokens];
    let mut wait = Duration::ZERO;
    for kind in [REQUESTS, TOKENS] {
        for b in s.budgets(kind) {
            b.bucket.refill_to(now);
            wait = wait.max(b.bucket.shortfall(cost[kind]));
        }
    }
    if !wait.is_zero() {
        return Err(Blocked::Wait(wait, long_wait(s, cost)));
    }
    for kind in [REQUESTS, TOKENS] {
        for b in s.budgets(kind) {
            let taken = b.bucket.try_take(cost[kind], now);
            debug_assert!(taken.is_ok(), "checked above");
        }
    }
    Ok(())
}

/// The longest wait of the server's budgets, if longer than [`LONG_WAIT`] (the buckets are
/// up to date).
fn long_wait(s: &State, cost: [f64; 2]) -> Option<LongWait> {
    let mut longest: Option<LongWait> = None;
    for (kind, what) in [(REQUESTS, "request"), (TOKENS, "token")] {
        let Some(b) = &s.learned[kind] else { continue };
        let wait = b.bucket.shortfall(cost[kind]);
        if wait > LONG_WAIT && longest.as_ref().is_none_or(|l| wait > l.wait) {
            longest = Some(LongWait {
                what,
                limit: b.limit as u64,
                window: b.window,
                wait,
                until: std::time::SystemTime::now() + wait,
            });
        }
    }
    longest
}

struct State {
    /// The per-minute limits the user gave, by kind: never exceeded, whatever the server says.
    given: [Option<Budget>; 2],
    /// The limits the server reported, by kind.
    learned: [Option<Budget>; 2],
    /// Until the first answer: the gate that lets a few requests out to learn the limits.
    probing: Option<Probing>,
    paused_until: Option<Instant>,
    /// Tickets of the requests waiting, first come first served.
    queue: std::collections::VecDeque<u64>,
    next_ticket: u64,
    /// Budgets learned so far (see [`Permit::seen`]).
    created: u64,
    /// A long wait was announced.
    announced: bool,
}

impl State {
    /// The budgets of one kind (requests or tokens).
    fn budgets(&mut self, kind: usize) -> impl Iterator<Item = &mut Budget> {
        self.given[kind]
            .iter_mut()
            .chain(self.learned[kind].iter_mut())
    }
}

impl RateBudget {
    /// `learn`: whether to learn limits that were not given from the server's headers (and
    /// send only a few probe requests until the first answer tells them).
    pub fn new(rpm: Option<u32>, tpm: Option<u32>, learn: bool) -> Self {
        let now = Instant::now();
        let per_minute = |limit: u32| Budget::new(f64::from(limit), MINUTE, now);
        RateBudget {
            state: Mutex::new(State {
                given: [rpm.map(per_minute), tpm.map(per_minute)],
                learned: [None, None],
                probing: (learn && (rpm.is_none() || tpm.is_none()))
                    .then(|| Probing::new(rpm.is_some(), tpm.is_some())),
                paused_until: None,
                queue: Default::default(),
                next_ticket: 0,
                created: 0,
                announced: false,
            }),
            patience: Duration::MAX,
            on_long_wait: None,
            learned: Notify::new(),
            turn: Notify::new(),
        }
    }

    /// A wait the server's limits impose beyond [`LONG_WAIT`] is told to `handler`, once; one
    /// beyond `patience` is refused instead ([`Refused::Exhausted`]).
    pub fn on_long_wait(
        mut self,
        patience: Duration,
        handler: impl Fn(&LongWait) + Send + Sync + 'static,
    ) -> Self {
        self.patience = patience;
        self.on_long_wait = Some(Box::new(handler));
        self
    }

    /// Whether requests must say how many tokens they take: there is a token budget.
    fn counts_tokens(&self) -> bool {
        let mut s = self.state.lock().expect("budget lock");
        s.budgets(TOKENS).next().is_some()
    }

    /// Until the first answer, waits for the start gate ([`probe`]) to let the request out,
    /// counting its tokens if the gate needs them; returns how it went as a probe, if it did.
    async fn pass_start<F: FnOnce() -> u32>(&self, cost: &mut Cost<F>) -> Option<Admitted> {
        loop {
            let notified = self.learned.notified();
            let wait = {
                let mut s = self.state.lock().expect("budget lock");
                let probing = s.probing.as_mut()?;
                match probing.admit(cost.for_gate(), Instant::now()) {
                    Ok(admitted) => return Some(admitted),
                    Err(Gate::Count) => None,
                    Err(Gate::Wait(wait)) => Some(wait),
                }
            };
            let Some(wait) = wait else {
                cost.bound_or_count();
                continue;
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The long-run rates now in force, per minute: (requests, tokens), each the strictest of
    /// the user's and the server's.
    pub fn limits(&self) -> (Option<f64>, Option<f64>) {
        let mut s = self.state.lock().expect("budget lock");
        let mut per_min = |kind| {
            s.budgets(kind)
                .map(|b| b.bucket.rate() * 60.0)
                .min_by(f64::total_cmp)
        };
        (per_min(REQUESTS), per_min(TOKENS))
    }

    /// Waits until a request of `tokens()` tokens fits every budget, and takes it; or refuses
    /// it at once if no budget could ever admit it. Requests are served first come, first
    /// served, so a large one is not starved by a stream of small ones. Cancel-safe: a dropped
    /// call leaves the queue.
    ///
    /// `tokens` is called only if there is a token budget or the start gate needs it (not for
    /// the first request): counting costs more than anything else a row does before it is sent
    /// (and the first count builds the tokenizer, a fifth of a second), so it is skipped when
    /// nothing needs it. The probes reserve nothing from the learned budgets: those start from headers that
    /// counted them already.
    pub async fn acquire(&self, tokens: impl FnOnce() -> u32) -> Result<Permit, Refused> {
        self.acquire_bounded(tokens, None).await
    }

    /// [`Self::acquire`], where the start gate takes `bound` (at least the count, and cheap)
    /// instead of counting: a run with no token budget then never builds a tokenizer.
    pub async fn acquire_bounded(
        &self,
        tokens: impl FnOnce() -> u32,
        bound: Option<u32>,
    ) -> Result<Permit, Refused> {
        let mut cost = Cost::new(tokens, bound);
        if self.counts_tokens() {
            cost.count();
        }
        let probe = self.pass_start(&mut cost).await;
        let probe = probe.map(|a| (a, cost.for_gate().unwrap_or(0.0)));
        let ticket = Ticket::join(self);
        loop {
            let turn = self.turn.notified();
            let wait = {
                let mut s = self.state.lock().expect("budget lock");
                let now = Instant::now();
                // A token budget (there from the start or learned while this one waited)
                // charges the count, never the gate's bound: counted outside the lock.
                let uncounted = cost.counted().is_none() && s.budgets(TOKENS).next().is_some();
                let tokens = cost.counted().unwrap_or(0.0);
                if uncounted {
                    drop(s);
                    cost.count();
                    continue;
                } else if s.queue.front() != Some(&ticket.0) {
                    None
                } else if let Some(until) = s.paused_until.filter(|t| *t > now) {
                    // A 429 pause ends sooner than a quota used up: no need to wait for it to
                    // learn that the run cannot go on.
                    for b in s.learned.iter_mut().flatten() {
                        b.bucket.refill_to(now);
                    }
                    match long_wait(&s, [1.0, tokens]) {
                        Some(long) if long.wait > self.patience => {
                            drop(s);
                            drop(ticket);
                            return Err(Refused::Exhausted(long));
                        }
                        _ => Some(until - now),
                    }
                } else {
                    match take_all(&mut s, tokens, now) {
                        Ok(()) => {
                            let seen = s.created;
                            drop(s);
                            drop(ticket);
                            return Ok(Permit {
                                tokens,
                                seen,
                                probe,
                            });
                        }
                        Err(Blocked::Wait(_, Some(long))) if long.wait > self.patience => {
                            drop(s);
                            drop(ticket);
                            return Err(Refused::Exhausted(long));
                        }
                        Err(Blocked::Wait(wait, long)) => {
                            if let Some(long) = long.filter(|_| !s.announced) {
                                s.announced = true;
                                drop(s);
                                if let Some(tell) = &self.on_long_wait {
                                    tell(&long);
                                }
                            }
                            Some(wait)
                        }
                        Err(Blocked::Never(e)) => {
                            // A probe that will not be sent hands its turn to another request.
                            if let (Some((a, out)), Some(p)) = (probe, s.probing.as_mut()) {
                                p.release(a, out, true);
                                self.learned.notify_waiters();
                            }
                            drop(s);
                            drop(ticket);
                            return Err(Refused::TooLarge(e));
                        }
                    }
                }
            };
            match wait {
                // Not our turn: wait for the queue to move.
                None => turn.await,
                // Our turn, not enough yet. A refund or a new limit may shorten the wait.
                Some(wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = turn => {}
                    }
                }
            }
        }
    }

    /// Reconciles a request's reservation with the tokens the server actually counted (`None`
    /// when the request was not counted at all: rejected or never answered).
    pub fn settle(&self, permit: Permit, actual_tokens: Option<u64>) {
        let mut s = self.state.lock().expect("budget lock");
        let now = Instant::now();
        let actual = actual_tokens.map_or(0.0, |t| t as f64);
        for b in s.budgets(TOKENS).filter(|b| b.created <= permit.seen) {
            b.bucket.give_back(permit.tokens - actual, now);
        }
        if let (Some((a, out)), Some(p)) = (permit.probe, s.probing.as_mut()) {
            p.release(a, out, false);
            self.learned.notify_waiters();
        }
        drop(s);
        self.turn.notify_waiters();
    }

    /// Learns from a response's rate-limit headers (`None`: the response had none).
    pub fn observe(&self, headers: Option<&RateLimitHeaders>) {
        let mut s = self.state.lock().expect("budget lock");
        let now = Instant::now();
        if let Some(h) = headers {
            let State {
                learned, created, ..
            } = &mut *s;
            let [requests, tokens] = learned;
            learn(requests, &h.requests, now, created);
            learn(tokens, &h.tokens, now, created);
            self.turn.notify_waiters();
        }
        if s.probing.take().is_some() {
            drop(s);
            self.learned.notify_waiters();
        }
    }

    /// A 429: every task waits `wait` (or a default, at most [`MAX_PAUSE`]), and the buckets
    /// restart empty so that dispatch comes back at the paced rate instead of in a burst.
    pub fn back_off(&self, wait: Option<Duration>) {
        let mut s = self.state.lock().expect("budget lock");
        let now = Instant::now();
        let until = now + wait.unwrap_or(DEFAULT_PAUSE).min(MAX_PAUSE);
        s.paused_until = Some(s.paused_until.map_or(until, |t| t.max(until)));
        for kind in [REQUESTS, TOKENS] {
            for b in s.budgets(kind) {
                b.bucket.drain(now);
            }
        }
    }
}

fn burst(rate_per_sec: f64) -> f64 {
    (rate_per_sec * BURST_SECS).max(1.0)
}

/// Updates the server's budget of one kind from what it said about it. A new limit or window
/// starts a new budget from what is left; the same limit keeps its bucket (the headers of an
/// answer are older than the requests sent since), except that a quota follows the server.
/// What the server says is left still bounds what the bucket holds: a server that enforces a
/// per-minute limit over one-second windows reports what is left of the second (the mock's
/// `--rate-window`, OpenAI's quantized limits), and a bucket that sent its half second of burst
/// into the end of such a window was answered with 429s. Against a server that counts over the
/// whole minute, `remaining` is far above the burst and changes nothing.
fn learn(slot: &mut Option<Budget>, seen: &LimitSnapshot, now: Instant, created: &mut u64) {
    let Some(limit) = seen.limit.filter(|l| *l > 0) else {
        return;
    };
    let (limit, window) = (limit as f64, seen.window());
    match slot {
        Some(b) if b.window == window && (b.limit - limit).abs() <= limit * 1e-6 => {
            if window > MINUTE {
                b.sync(seen, now);
            } else if let Some(remaining) = seen.remaining {
                let level = b.bucket.level(now).min(remaining as f64);
                b.bucket.set_level(level, now);
            }
        }
        Some(b) if b.window == window => {
            let (rate, capacity) = Budget::shape(limit, window);
            b.bucket.set_rate(rate, capacity, now);
            b.limit = limit;
        }
        _ => {
            let mut b = Budget::new(limit, window, now);
            b.sync(seen, now);
            *created += 1;
            b.created = *created;
            *slot = Some(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use headers::LimitSnapshot;

    fn snapshot(rpm: u64, tpm: u64) -> RateLimitHeaders {
        RateLimitHeaders {
            requests: LimitSnapshot {
                limit: Some(rpm),
                remaining: Some(rpm),
                ..Default::default()
            },
            tokens: LimitSnapshot {
                limit: Some(tpm),
                remaining: Some(tpm),
                ..Default::default()
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn given_limits_are_never_exceeded_in_any_window() {
        // 600 rpm = 10/s: over any 1 s window at most ~ 0.99 * 10 + burst requests start.
        let budget = RateBudget::new(Some(600), None, false);
        let start = tokio::time::Instant::now();
        let mut times = Vec::new();
        for _ in 0..100 {
            let p = budget.acquire(|| 1).await.unwrap();
            budget.settle(p, Some(1));
            times.push(start.elapsed().as_secs_f64());
        }
        let burst = burst(10.0 * PACE);
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..].iter().take_while(|u| **u < t + 1.0).count();
            assert!(
                in_window as f64 <= 10.0 * PACE + burst + 1.0,
                "{in_window} at {t}"
            );
        }
        // And the pace is the limit's: 100 requests need about 100 / 9.9 - burst seconds.
        let total = *times.last().unwrap();
        assert!((9.0..=10.5).contains(&total), "{total}");
    }

    #[tokio::test(start_paused = true)]
    async fn token_refunds_make_room() {
        // 6000 tpm = 100/s paced at 99, burst 49.5: reserve 49.5, use 10, the rest comes back.
        let budget = RateBudget::new(None, Some(6000), false);
        let p = budget.acquire(|| 49).await.unwrap();
        budget.settle(p, Some(10));
        let start = tokio::time::Instant::now();
        let _p = budget.acquire(|| 39).await.unwrap();
        assert!(start.elapsed() < Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_few_probes_go_then_one_a_second_until_the_first_answer() {
        let budget = std::sync::Arc::new(RateBudget::new(None, None, true));
        // The first requests go at once: a hanging one does not hold the others back.
        let mut probes = Vec::new();
        for _ in 0..probe::PROBES {
            probes.push(budget.acquire(|| 10).await.unwrap());
        }
        let b = budget.clone();
        let next = tokio::spawn(async move { b.acquire(|| 10).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !next.is_finished(),
            "a fifth request went before any answer"
        );
        // With no answer, one more a second.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(next.is_finished(), "the run stalled on requests that hang");
        probes.push(next.await.unwrap());
        // The first answer ends the start: its limits pace the rest.
        let b = budget.clone();
        let waiting = tokio::spawn(async move { b.acquire(|| 10).await.unwrap() });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        budget.observe(Some(&snapshot(600, 100_000)));
        let first = probes.remove(0);
        budget.settle(first, Some(10));
        let start = Instant::now();
        let _ = waiting.await.unwrap();
        assert!(start.elapsed() < Duration::from_millis(10));
        let (rpm, tpm) = budget.limits();
        assert!((rpm.unwrap() - 600.0 * PACE).abs() < 1e-6);
        assert!((tpm.unwrap() - 100_000.0 * PACE).abs() < 1e-6);
    }

    #[tokio::test(start_paused = true)]
    async fn long_prompts_are_probed_one_at_a_time() {
        let budget = std::sync::Arc::new(RateBudget::new(None, None, true));
        let first = budget.acquire(|| 3_000).await.unwrap();
        let b = budget.clone();
        let second = tokio::spawn(async move { b.acquire(|| 2_500).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !second.is_finished(),
            "6,000 tokens went into an unknown limit"
        );
        // The first failed without headers (a 500, say): that ends the start too.
        budget.observe(None);
        budget.settle(first, None);
        let second = tokio::time::timeout(Duration::from_millis(10), second)
            .await
            .expect("the answer let the second go")
            .unwrap();
        budget.settle(second, Some(2_500));
    }

    #[tokio::test(start_paused = true)]
    async fn the_start_gate_takes_a_bound_instead_of_counting() {
        let budget = std::sync::Arc::new(RateBudget::new(None, None, true));
        let uncounted = || -> u32 { panic!("counted: the tokenizer would have been built") };
        let mut probes = Vec::new();
        for _ in 0..probe::PROBES {
            probes.push(budget.acquire_bounded(uncounted, Some(900)).await.unwrap());
        }
        // Bounds too large for the probes' tokens hold the next one back, as counts would.
        let b = budget.clone();
        let big = tokio::spawn(async move { b.acquire_bounded(uncounted, Some(3_000)).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!big.is_finished(), "went past the probes' tokens");
        budget.observe(None);
        for p in probes {
            budget.settle(p, Some(20));
        }
        let big = tokio::time::timeout(Duration::from_millis(10), big)
            .await
            .expect("the first answer let it go")
            .unwrap()
            .unwrap();
        budget.settle(big, Some(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bound_held_at_the_gate_is_counted_before_the_learned_limit_charges_it() {
        // 20,000 tpm learned; the prompt's bytes bound it at 30,000 tokens but it counts 100.
        let budget = std::sync::Arc::new(RateBudget::new(None, None, true));
        let first = budget.acquire_bounded(|| 100, Some(30_000)).await.unwrap();
        let b = budget.clone();
        let held = tokio::spawn(async move { b.acquire_bounded(|| 100, Some(30_000)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!held.is_finished(), "the gate let a 30,000-token bound out");
        let level = |b: &RateBudget| {
            let mut s = b.state.lock().unwrap();
            let now = Instant::now();
            s.learned[TOKENS].as_mut().unwrap().bucket.level(now)
        };
        budget.observe(Some(&snapshot(600, 20_000)));
        let before = level(&budget);
        let held = tokio::time::timeout(Duration::from_millis(10), held)
            .await
            .expect("the first answer let it go")
            .unwrap()
            .expect("refused for its bound, not its count");
        assert_eq!(held.tokens, 100.0);
        assert!((before - level(&budget) - 100.0).abs() < 1e-6);
        budget.settle(first, Some(100));
        budget.settle(held, Some(100));
    }

    #[tokio::test(start_paused = true)]
    async fn server_limits_only_lower_given_ones() {
        let budget = RateBudget::new(Some(100), None, true);
        budget.observe(Some(&snapshot(5000, 1000)));
        assert!((budget.limits().0.unwrap() - 100.0 * PACE).abs() < 1e-6);
        budget.observe(Some(&snapshot(50, 1000)));
        assert!((budget.limits().0.unwrap() - 50.0 * PACE).abs() < 1e-6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_everyone() {
        let budget = RateBudget::new(None, None, false);
        budget.back_off(Some(Duration::from_secs(2)));
        let start = tokio::time::Instant::now();
        let _p = budget.acquire(|| 1).await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(2));
    }

    /// A server that counts `limit` per minute in a bucket holding one second of it, admitting a
    /// request when it holds the request's cost or is full, like the mock (and OpenAI).
    struct ServerBucket {
        limit: f64,
        level: f64,
        at: Instant,
        refused: u32,
    }

    impl ServerBucket {
        fn new(limit: f64) -> Self {
            ServerBucket {
                limit,
                level: limit / 60.0,
                at: Instant::now(),
                refused: 0,
            }
        }

        fn admit(&mut self, n: f64) {
            let now = Instant::now();
            let cap = self.limit / 60.0;
            self.level = (self.level + (now - self.at).as_secs_f64() * cap).min(cap);
            self.at = now;
            if self.level + 1e-6 >= n.min(cap) {
                self.level -= n;
            } else {
                self.refused += 1;
            }
        }

        /// What its headers would say now, OpenAI's way.
        fn snapshot(&self) -> LimitSnapshot {
            let cap = self.limit / 60.0;
            let missing = cap - self.level;
            LimitSnapshot {
                limit: Some(self.limit as u64),
                remaining: Some((self.limit - missing).max(0.0) as u64),
                reset: Some(Duration::from_secs_f64(missing.max(0.0) / cap)),
                time_to_full: true,
                ..Default::default()
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_one_second_window_never_makes_a_wait_longer_than_its_reset() {
        // The server of issue 13: 3000 rpm enforced per second, reporting the second's
        // remaining against the minute's limit, and the same for tokens. It used to stall a
        // run for 59 s; 1,500 requests must take 30 s, with --rpm given or not.
        let second = |limit: u64, remaining: u64| LimitSnapshot {
            limit: Some(limit),
            remaining: Some(remaining),
            reset: Some(Duration::from_secs(1)),
            time_to_full: true,
            ..Default::default()
        };
        let headers = RateLimitHeaders {
            requests: second(3000, 49),
            tokens: second(150_000, 2_450),
        };
        for given in [None, Some(3000)] {
            let budget = RateBudget::new(given, None, true);
            let start = Instant::now();
            let mut longest = Duration::ZERO;
            for _ in 0..1500 {
                let before = Instant::now();
                let p = budget.acquire(|| 40).await.unwrap();
                longest = longest.max(before.elapsed());
                budget.observe(Some(&headers));
                budget.settle(p, Some(40));
            }
            let total = start.elapsed().as_secs_f64();
            assert!(
                longest <= Duration::from_secs(1),
                "{given:?}: waited {longest:?}"
            );
            // 1500 at 49.5 a second, less the bursts: about 30 s.
            assert!((29.0..=31.0).contains(&total), "{given:?}: {total} s");
        }
    }

    /// Requests of 2,000 to 3,000 tokens, far more than the half-second burst, against a
    /// server bucket: tokens admitted per minute over half an hour, and the server's refusals.
    async fn paced_big_requests(budget: &RateBudget, tpm: f64, learn: bool) -> (f64, u32) {
        let mut server = ServerBucket::new(tpm);
        let start = Instant::now();
        let mut admitted = 0.0;
        let mut i = 0u32;
        while start.elapsed() < Duration::from_secs(1800) {
            let n = 2000 + (i * 7919) % 1001;
            i += 1;
            let p = budget.acquire(|| n).await.unwrap();
            if start.elapsed() >= Duration::from_secs(1800) {
                break;
            }
            server.admit(f64::from(n));
            admitted += f64::from(n);
            if learn {
                budget.observe(Some(&RateLimitHeaders {
                    tokens: server.snapshot(),
                    ..Default::default()
                }));
            }
            budget.settle(p, Some(u64::from(n)));
        }
        (admitted / 30.0, server.refused)
    }

    #[tokio::test(start_paused = true)]
    async fn requests_larger_than_the_burst_are_paced_to_the_limit() {
        for tpm in [30_000u32, 60_000] {
            let limit = f64::from(tpm);
            let given = RateBudget::new(None, Some(tpm), false);
            let learned = RateBudget::new(None, None, true);
            for (name, budget, learn) in [("given", given, false), ("learned", learned, true)] {
                let (per_minute, refused) = paced_big_requests(&budget, limit, learn).await;
                assert_eq!(refused, 0, "{name} {tpm}: the server refused requests");
                assert!(
                    (0.97 * limit..=limit).contains(&per_minute),
                    "{name} {tpm}: {per_minute} tokens a minute"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_no_limit_admits_is_refused() {
        let budget = RateBudget::new(None, Some(30_000), false);
        let Err(Refused::TooLarge(e)) = budget.acquire(|| 30_001).await else {
            panic!("admitted");
        };
        assert!(e.given && e.limit == 30_000 && e.window == MINUTE, "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("30001 tokens") && text.contains("--tpm"),
            "{text}"
        );
        // As large as the limit is fine: it waits for a full bucket.
        let p = budget.acquire(|| 30_000).await.unwrap();
        budget.settle(p, Some(30_000));
        // A server's limit too, once learned.
        let budget = RateBudget::new(None, None, false);
        budget.observe(Some(&RateLimitHeaders {
            tokens: LimitSnapshot {
                limit: Some(10_000),
                ..Default::default()
            },
            ..Default::default()
        }));
        let Err(Refused::TooLarge(e)) = budget.acquire(|| 20_000).await else {
            panic!("admitted");
        };
        assert!(!e.given && e.to_string().contains("server"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_probe_hands_the_probe_to_the_next_request() {
        let budget = std::sync::Arc::new(RateBudget::new(None, Some(1000), true));
        // The probe waits out a pause, then turns out too large; meanwhile another waits for
        // the probe's answer, which will never come.
        budget.back_off(Some(Duration::from_secs(2)));
        let b1 = budget.clone();
        let first = tokio::spawn(async move { b1.acquire(|| 5000).await.map(|_| ()) });
        tokio::task::yield_now().await;
        let b2 = budget.clone();
        let second = tokio::spawn(async move { b2.acquire(|| 10).await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert!(first.await.unwrap().is_err());
        tokio::time::timeout(Duration::from_secs(1), second)
            .await
            .expect("the second request became the probe")
            .unwrap()
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_daily_budget_is_a_quota_back_by_its_reset() {
        // Groq: requests per day under OpenAI's names, tokens per minute.
        let budget = RateBudget::new(None, None, true);
        let probe = budget.acquire(|| 1).await.unwrap();
        let groq = |remaining: u64, reset: Duration| RateLimitHeaders {
            requests: LimitSnapshot {
                limit: Some(14_400),
                remaining: Some(remaining),
                reset: Some(reset),
                time_to_full: true,
                ..Default::default()
            },
            tokens: LimitSnapshot {
                limit: Some(18_000),
                remaining: Some(17_997),
                reset: Some(Duration::from_millis(10)),
                time_to_full: true,
                ..Default::default()
            },
        };
        budget.observe(Some(&groq(14_399, Duration::from_secs(6))));
        budget.settle(probe, Some(3));
        let (rpm, tpm) = budget.limits();
        assert!((rpm.unwrap() - 10.0 * PACE).abs() < 1e-6, "{rpm:?}");
        assert!((tpm.unwrap() - 18_000.0 * PACE).abs() < 1e-6, "{tpm:?}");
        // What is left of the day may be spent now, paced only by the token budget.
        let start = Instant::now();
        for _ in 0..100 {
            let p = budget.acquire(|| 1).await.unwrap();
            budget.settle(p, Some(1));
        }
        assert!(start.elapsed() < Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_quota_is_back_by_its_reset() {
        // Cerebras: a daily request budget whose window ends in 3 s, used up.
        let budget = RateBudget::new(None, None, false);
        budget.observe(Some(&RateLimitHeaders {
            requests: LimitSnapshot {
                limit: Some(14_400),
                remaining: Some(0),
                reset: Some(Duration::from_secs(3)),
                stated_window: Some(Duration::from_secs(86_400)),
                time_to_full: false,
            },
            ..Default::default()
        }));
        // It waits 3 s, not the 6 s a request takes to come back at 10 a minute; then the
        // whole day's budget is there.
        let start = Instant::now();
        for _ in 0..100 {
            let p = budget.acquire(|| 1).await.unwrap();
            budget.settle(p, None);
        }
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    /// A daily request budget of 10, used up, back in full after `reset`.
    fn used_up_for(reset: Duration) -> RateLimitHeaders {
        RateLimitHeaders {
            requests: LimitSnapshot {
                limit: Some(10),
                remaining: Some(0),
                reset: Some(reset),
                stated_window: Some(Duration::from_secs(86_400)),
                time_to_full: false,
            },
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_longer_than_the_patience_is_refused_at_once() {
        let told = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let t = told.clone();
        let budget =
            RateBudget::new(None, None, false).on_long_wait(Duration::from_secs(600), move |_| {
                t.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        budget.observe(Some(&used_up_for(Duration::from_secs(7200))));
        let start = Instant::now();
        let Err(Refused::Exhausted(long)) = budget.acquire(|| 1).await else {
            panic!("a two-hour wait was accepted");
        };
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(long.wait, Duration::from_secs(7200));
        let text = long.to_string();
        assert!(
            text.contains("request limit (10 per day) is used up")
                && text.contains("resets at")
                && text.contains("(in 2h)"),
            "{text}"
        );
        assert_eq!(told.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_used_up_quota_is_refused_during_a_429_pause_too() {
        let budget =
            RateBudget::new(None, None, false).on_long_wait(Duration::from_secs(600), |_| {});
        budget.observe(Some(&used_up_for(Duration::from_secs(7200))));
        budget.back_off(Some(Duration::from_secs(100)));
        let start = Instant::now();
        let refused = budget.acquire(|| 1).await;
        assert!(matches!(refused, Err(Refused::Exhausted(_))), "{refused:?}");
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_wait_within_the_patience_is_told_once_and_waited_out() {
        let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let t = told.clone();
        let budget = RateBudget::new(None, None, false)
            .on_long_wait(Duration::from_secs(600), move |long| {
                t.lock().unwrap().push(long.to_string())
            });
        budget.observe(Some(&used_up_for(Duration::from_secs(300))));
        let start = Instant::now();
        let p = budget.acquire(|| 1).await.unwrap();
        budget.settle(p, None);
        assert_eq!(start.elapsed(), Duration::from_secs(300));
        // Used up again: waited out again, not told again.
        budget.observe(Some(&used_up_for(Duration::from_secs(300))));
        let p = budget.acquire(|| 1).await.unwrap();
        budget.settle(p, None);
        let told = told.lock().unwrap().clone();
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(told[0].contains("(in 5m)"), "{told:?}");
        // A short wait is nobody's business.
        let budget = RateBudget::new(None, None, false)
            .on_long_wait(Duration::from_secs(600), |long| panic!("told of {long}"));
        budget.observe(Some(&used_up_for(Duration::from_secs(30))));
        let p = budget.acquire(|| 1).await.unwrap();
        budget.settle(p, None);
    }

    #[tokio::test(start_paused = true)]
    async fn what_a_short_window_has_left_bounds_the_burst() {
        let budget = RateBudget::new(None, None, false);
        let window = |remaining: u64| RateLimitHeaders {
            requests: LimitSnapshot {
                limit: Some(3000),
                remaining: Some(remaining),
                ..Default::default()
            },
            ..Default::default()
        };
        budget.observe(Some(&window(3000)));
        // A full bucket holds half a second (about 25 requests); the window has 2 left.
        tokio::time::sleep(Duration::from_secs(1)).await;
        budget.observe(Some(&window(2)));
        let start = Instant::now();
        for _ in 0..3 {
            let p = budget.acquire(|| 1).await.unwrap();
            budget.settle(p, None);
        }
        // Two at once, the third at the paced rate (3000 a minute at 99%).
        let third = start.elapsed().as_secs_f64();
        assert!((third - 60.0 / 3000.0 / PACE).abs() < 1e-3, "{third}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_windows_reset_is_not_read_as_a_debt() {
        // 3000 rpm enforced per second: 46 left of this second, which ends in 0.7 s. Read as a
        // bucket's time to full, that was 0.7 s of debt before the first paced request.
        let budget = RateBudget::new(None, None, false);
        budget.observe(Some(&RateLimitHeaders {
            requests: LimitSnapshot {
                limit: Some(3000),
                remaining: Some(46),
                reset: Some(Duration::from_millis(700)),
                time_to_full: true,
                ..Default::default()
            },
            ..Default::default()
        }));
        let start = Instant::now();
        let p = budget.acquire(|| 1).await.unwrap();
        budget.settle(p, None);
        assert_eq!(start.elapsed(), Duration::ZERO);
        // A server that counts over the minute: 40 missing, full in 0.8 s, is a bucket that
        // far from full (OpenAI's meaning).
        let budget = RateBudget::new(None, None, false);
        budget.observe(Some(&RateLimitHeaders {
            requests: LimitSnapshot {
                limit: Some(3000),
                remaining: Some(2960),
                reset: Some(Duration::from_millis(800)),
                time_to_full: true,
                ..Default::default()
            },
            ..Default::default()
        }));
        let start = Instant::now();
        let p = budget.acquire(|| 1).await.unwrap();
        budget.settle(p, None);
        assert!(
            start.elapsed() > Duration::from_millis(100),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pause_is_capped() {
        let budget = RateBudget::new(None, None, false);
        budget.back_off(Some(Duration::from_secs(3600)));
        let start = tokio::time::Instant::now();
        let _p = budget.acquire(|| 1).await.unwrap();
        assert_eq!(start.elapsed(), MAX_PAUSE);
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_budget_never_waits() {
        let budget = RateBudget::new(None, None, false);
        let start = tokio::time::Instant::now();
        for _ in 0..10_000 {
            let p = budget.acquire(|| 1_000_000).await.unwrap();
            budget.settle(p, None);
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}

//! Requests-per-minute and tokens-per-minute budgets, shared by every task of a run.
//!
//! The budgets are token buckets that refill continuously with about half a second of burst,
//! paced at 99% of the limit, and requests take from them first come, first served: providers enforce per-minute limits over short windows (a minute's
//! worth of requests in one second is answered with 429s), and the 1% slack plus the small burst
//! absorb the jitter between when we send and when the server counts.
//!
//! A request's token cost is estimated before it is sent (prompt tokens plus the completion
//! reservation) and reconciled with the real `usage` afterwards ([`RateBudget::settle`]), giving
//! back what was over-reserved. Limits not given on the command line are learned from the
//! server's rate-limit headers ([`RateBudget::observe`]); until the first answer arrives only one
//! request is sent, so a run never opens with a burst into an unknown limit. A 429 pauses every
//! task ([`RateBudget::back_off`]) and empties the buckets, so dispatch resumes at the paced
//! rate rather than with a burst.

pub mod bucket;
pub mod headers;

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use bucket::Bucket;
pub use headers::RateLimitHeaders;

/// Fraction of a limit we pace at.
const PACE: f64 = 0.99;
/// Seconds of refill the client-side bucket may burst (the server's is assumed to be about 1 s).
const BURST_SECS: f64 = 0.5;
/// Pause after a 429 that named no wait.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);

/// What a request took from the budgets; handed back to [`RateBudget::settle`].
#[derive(Debug)]
#[must_use = "settle the permit with the real usage"]
pub struct Permit {
    tokens: f64,
}

/// The limits of one run.
pub struct RateBudget {
    state: Mutex<State>,
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

/// Takes one request and `tokens` tokens from the budgets, or none of it and says how long until
/// all of it fits.
fn take_both(s: &mut State, tokens: f64, now: Instant) -> Result<(), Duration> {
    let mut wait = Duration::ZERO;
    if let Some(b) = s.requests.as_mut() {
        b.refill_to(now);
        wait = wait.max(b.shortfall(1.0));
    }
    if let Some(b) = s.tokens.as_mut() {
        b.refill_to(now);
        wait = wait.max(b.shortfall(tokens));
    }
    if !wait.is_zero() {
        return Err(wait);
    }
    for (b, n) in [(s.requests.as_mut(), 1.0), (s.tokens.as_mut(), tokens)] {
        if let Some(b) = b {
            b.try_take(n, now).expect("checked above");
        }
    }
    Ok(())
}

struct State {
    /// Per-minute limits given by the user: never exceeded, whatever the server says.
    given_rpm: Option<u32>,
    given_tpm: Option<u32>,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    /// While true, one request is out to learn the limits and the others wait.
    probing: bool,
    probe_sent: bool,
    paused_until: Option<Instant>,
    /// Tickets of the requests waiting, first come first served.
    queue: std::collections::VecDeque<u64>,
    next_ticket: u64,
}

impl RateBudget {
    /// `learn`: whether to learn limits that were not given from the server's headers (and
    /// send a single probe request first to hear them).
    pub fn new(rpm: Option<u32>, tpm: Option<u32>, learn: bool) -> Self {
        let now = Instant::now();
        let bucket = |per_min: u32| {
            let rate = f64::from(per_min) / 60.0 * PACE;
            Bucket::new(rate, burst(rate), now)
        };
        RateBudget {
            state: Mutex::new(State {
                given_rpm: rpm,
                given_tpm: tpm,
                requests: rpm.map(bucket),
                tokens: tpm.map(bucket),
                probing: learn && (rpm.is_none() || tpm.is_none()),
                probe_sent: false,
                paused_until: None,
                queue: Default::default(),
                next_ticket: 0,
            }),
            learned: Notify::new(),
            turn: Notify::new(),
        }
    }

    /// Whether requests must say how many tokens they take: there is a token budget.
    fn counts_tokens(&self) -> bool {
        self.state.lock().expect("budget lock").tokens.is_some()
    }

    /// The paced limits now in force, per minute: (requests, tokens).
    pub fn limits(&self) -> (Option<f64>, Option<f64>) {
        let s = self.state.lock().expect("budget lock");
        let per_min = |b: &Option<Bucket>| b.as_ref().map(|b| b.rate() * 60.0);
        (per_min(&s.requests), per_min(&s.tokens))
    }

    /// Waits until a request of `tokens()` tokens fits every budget, and takes it. Requests are
    /// served first come, first served, so a large one is not starved by a stream of small ones.
    /// Cancel-safe: a dropped call leaves the queue.
    ///
    /// `tokens` is called only if there is a token budget once the limits are known: counting
    /// costs more than anything else a row does before it is sent (and the first count builds
    /// the tokenizer, a fifth of a second), so it is skipped when nothing needs it. The probe
    /// itself reserves nothing; if the server then turns out to have a token limit, settling
    /// the probe takes its real usage from the new budget, a slight over-count on the safe side.
    pub async fn acquire(&self, tokens: impl FnOnce() -> u32) -> Permit {
        // Hold back everyone but the first request until the server has told us its limits.
        loop {
            let notified = self.learned.notified();
            {
                let mut s = self.state.lock().expect("budget lock");
                if !s.probing {
                    break;
                }
                if !s.probe_sent {
                    s.probe_sent = true;
                    break;
                }
            }
            notified.await;
        }
        let tokens = if self.counts_tokens() {
            f64::from(tokens())
        } else {
            0.0
        };
        let ticket = Ticket::join(self);
        loop {
            let turn = self.turn.notified();
            let wait = {
                let mut s = self.state.lock().expect("budget lock");
                let now = Instant::now();
                if s.queue.front() != Some(&ticket.0) {
                    None
                } else if let Some(until) = s.paused_until.filter(|t| *t > now) {
                    Some(until - now)
                } else {
                    match take_both(&mut s, tokens, now) {
                        Ok(()) => {
                            drop(s);
                            drop(ticket);
                            return Permit { tokens };
                        }
                        Err(wait) => Some(wait),
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
        if let Some(b) = s.tokens.as_mut() {
            let actual = actual_tokens.map_or(0.0, |t| t as f64);
            b.give_back(permit.tokens - actual, Instant::now());
        }
        drop(s);
        self.turn.notify_waiters();
    }

    /// Learns from a response's rate-limit headers (`None`: the response had none). Budgets the
    /// user gave are only ever lowered by what the server says, never raised.
    pub fn observe(&self, headers: Option<&RateLimitHeaders>) {
        let mut s = self.state.lock().expect("budget lock");
        let now = Instant::now();
        if let Some(h) = headers {
            let State {
                given_rpm,
                given_tpm,
                requests,
                tokens,
                ..
            } = &mut *s;
            learn(requests, *given_rpm, &h.requests, now);
            learn(tokens, *given_tpm, &h.tokens, now);
            self.turn.notify_waiters();
        }
        if s.probing {
            s.probing = false;
            drop(s);
            self.learned.notify_waiters();
        }
    }

    /// A 429: every task waits `wait` (or a default), and the buckets restart empty so that
    /// dispatch comes back at the paced rate instead of in a burst.
    pub fn back_off(&self, wait: Option<Duration>) {
        let mut s = self.state.lock().expect("budget lock");
        let now = Instant::now();
        let until = now + wait.unwrap_or(DEFAULT_PAUSE);
        s.paused_until = Some(s.paused_until.map_or(until, |t| t.max(until)));
        let State {
            requests, tokens, ..
        } = &mut *s;
        for b in [requests, tokens].into_iter().flatten() {
            b.drain(now);
        }
    }
}

fn burst(rate_per_sec: f64) -> f64 {
    (rate_per_sec * BURST_SECS).max(1.0)
}

/// Updates one budget from what the server said about it.
fn learn(
    bucket: &mut Option<Bucket>,
    given: Option<u32>,
    seen: &headers::LimitSnapshot,
    now: Instant,
) {
    let Some(limit) = seen.limit.filter(|l| *l > 0) else {
        return;
    };
    let limit = given.map_or(limit, |g| limit.min(u64::from(g))) as f64;
    let rate = limit / 60.0 * PACE;
    match bucket {
        Some(b) => {
            if (b.rate() - rate).abs() > rate * 1e-6 {
                b.set_rate(rate, burst(rate), now);
            }
        }
        None => {
            let mut b = Bucket::new(rate, burst(rate), now);
            // Start from what the server says is left: what it has used up is not ours to use.
            if let Some(remaining) = seen.remaining {
                let used = (limit - remaining as f64).max(0.0);
                b.set_level(b.capacity() - used, now);
            }
            *bucket = Some(b);
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
            let p = budget.acquire(|| 1).await;
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
        let p = budget.acquire(|| 49).await;
        budget.settle(p, Some(10));
        let start = tokio::time::Instant::now();
        let _p = budget.acquire(|| 39).await;
        assert!(start.elapsed() < Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn probe_holds_others_until_the_first_answer() {
        let budget = std::sync::Arc::new(RateBudget::new(None, None, true));
        let first = budget.acquire(|| 1).await;
        let b2 = budget.clone();
        let second = tokio::spawn(async move { b2.acquire(|| 1).await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !second.is_finished(),
            "second request went before the probe answered"
        );
        budget.observe(Some(&snapshot(600, 100_000)));
        budget.settle(first, Some(1));
        let _ = second.await.unwrap();
        let (rpm, tpm) = budget.limits();
        assert!((rpm.unwrap() - 600.0 * PACE).abs() < 1e-6);
        assert!((tpm.unwrap() - 100_000.0 * PACE).abs() < 1e-6);
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
        let _p = budget.acquire(|| 1).await;
        assert!(start.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_budget_never_waits() {
        let budget = RateBudget::new(None, None, false);
        let start = tokio::time::Instant::now();
        for _ in 0..10_000 {
            let p = budget.acquire(|| 1_000_000).await;
            budget.settle(p, None);
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}

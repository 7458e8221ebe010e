//! When to try a failed request again, and how long to wait first.
//!
//! One policy for every provider and every error: the kind of failure decides whether it is
//! worth another attempt ([`crate::engine::provider::ErrorKind::retryable`], overridden by the server's
//! `x-should-retry`), and the wait is the server's hint when it gives a sane one
//! ([`crate::engine::provider::retry_after`]), else exponential backoff with jitter so that a crowd of
//! failed requests does not come back in lockstep.
//!
//! A refusal for load (429, 503, 529) without a hint backs off to the server's next window: at
//! least a second (servers count per second at the finest), doubling up to a minute (a
//! per-minute window), jittered upwards. Retrying such a refusal after half a second mostly
//! meets the same full window. Other failures (a 500, a timeout) retry sooner.
//!
//! Rate limiting is waiting, not failing: a 429 that is a rate limit (not quota or billing,
//! which are other kinds) does not count against `--max-retries`. Those retries have their own
//! budget, `--max-stall`: time without a single answer in the whole run. While answers still
//! arrive, a throttled row waits its turn however long the queue is.

use std::time::Duration;

use rand::Rng;

use crate::engine::provider::{CallError, ErrorKind};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Backoff ceiling of the first retry; doubles each time.
    pub base: Duration,
    /// Largest backoff ceiling.
    pub cap: Duration,
    /// A `retry-after` longer than this is ignored in favour of backoff (the OpenAI SDK's rule).
    pub max_retry_after: Duration,
    /// First backoff after a refusal for load that named no wait; doubles each time.
    pub window_base: Duration,
    /// Longest such backoff (before jitter).
    pub window_cap: Duration,
    /// Rate-limited retries give up only after this long without an answer in the run.
    pub max_stall: Duration,
}

impl RetryPolicy {
    pub fn new(max_retries: u32) -> Self {
        RetryPolicy {
            max_retries,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
            window_base: Duration::from_secs(1),
            window_cap: Duration::from_secs(60),
            max_stall: Duration::from_secs(600),
        }
    }

    /// The wait before the next attempt, or `None` to give up. `retries_done` counts the retries
    /// already made for this row.
    pub fn next_delay(
        &self,
        retries_done: u32,
        err: &CallError,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        if !err.retryable() || retries_done >= self.max_retries {
            return None;
        }
        if let Some(wait) = err.retry_after.filter(|w| *w <= self.max_retry_after) {
            return Some(wait);
        }
        let refused_for_load =
            err.kind == ErrorKind::RateLimited || matches!(err.status, Some(503 | 529));
        if refused_for_load {
            return Some(self.window_backoff(retries_done, rng));
        }
        Some(self.backoff(retries_done, rng))
    }

    /// The wait before retrying a row refused by a rate limit (429), or `None` when the run,
    /// which has had no answer for `stalled`, would go past `max_stall` before the retry: the
    /// server keeps refusing everything, or asks for a wait longer than the budget allows. Not
    /// bounded by `max_retries`; `throttled` counts this row's rate-limited attempts so far.
    pub fn next_throttled_delay(
        &self,
        throttled: u32,
        err: &CallError,
        stalled: Duration,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        let wait = match err.retry_after {
            Some(w) => w.min(self.max_retry_after),
            None => self.window_backoff(throttled.saturating_sub(1), rng),
        };
        (stalled + wait < self.max_stall).then_some(wait)
    }

    /// Backoff to the next window: `min(cap, base * 2^n)`, plus up to half of it again.
    pub fn window_backoff(&self, retries_done: u32, rng: &mut impl Rng) -> Duration {
        let wait = self
            .window_base
            .saturating_mul(2u32.saturating_pow(retries_done.min(30)))
            .min(self.window_cap);
        wait + Duration::from_nanos(rng.random_range(0..=wait.as_nanos() as u64 / 2))
    }

    /// Full jitter: uniform in `0..=min(cap, base * 2^n)`.
    pub fn backoff(&self, retries_done: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(retries_done.min(30)))
            .min(self.cap);
        Duration::from_nanos(rng.random_range(0..=ceiling.as_nanos() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_retries_wait_until_the_run_stalls_not_until_max_retries() {
        use rand::SeedableRng;
        let policy = RetryPolicy::new(0);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let limited = CallError {
            retry_after: Some(Duration::from_secs(3)),
            ..CallError::new(ErrorKind::RateLimited, "429")
        };
        // --max-retries 0 would give up at once; a rate limit waits the server's time instead.
        assert_eq!(policy.next_delay(0, &limited, &mut rng), None);
        let wait = policy.next_throttled_delay(50, &limited, Duration::from_secs(30), &mut rng);
        assert_eq!(wait, Some(Duration::from_secs(3)));
        // Without a hint: the next window.
        let bare = CallError::new(ErrorKind::RateLimited, "429");
        let w = policy
            .next_throttled_delay(1, &bare, Duration::ZERO, &mut rng)
            .unwrap();
        assert!(
            w >= Duration::from_secs(1) && w <= Duration::from_millis(1500),
            "{w:?}"
        );
        // A wait that would take the run past --max-stall without an answer: give up now.
        let near = policy.max_stall - Duration::from_millis(200);
        assert_eq!(policy.next_throttled_delay(1, &bare, near, &mut rng), None);
        let short = RetryPolicy {
            max_stall: Duration::from_secs(2),
            ..policy
        };
        let waits_3s = short.next_throttled_delay(1, &limited, Duration::ZERO, &mut rng);
        assert_eq!(waits_3s, None);
        // No answer in the run for --max-stall: give up.
        assert_eq!(
            policy.next_throttled_delay(1, &bare, policy.max_stall, &mut rng),
            None
        );
    }
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(1)
    }

    #[test]
    fn backoff_stays_under_a_doubling_ceiling_and_the_cap() {
        let p = RetryPolicy::new(10);
        let mut r = rng();
        for n in 0..12 {
            let ceiling = (p.base * 2u32.pow(n)).min(p.cap);
            for _ in 0..200 {
                assert!(p.backoff(n, &mut r) <= ceiling);
            }
        }
        // Jitter actually spreads the waits.
        let waits: Vec<_> = (0..50).map(|_| p.backoff(3, &mut r)).collect();
        assert!(waits.iter().any(|w| *w < Duration::from_secs(2)));
        assert!(waits.iter().any(|w| *w > Duration::from_secs(2)));
    }

    #[test]
    fn gives_up_after_max_retries_and_on_permanent_errors() {
        let p = RetryPolicy::new(2);
        let server = CallError::new(ErrorKind::Server, "boom");
        let mut r = rng();
        assert!(p.next_delay(0, &server, &mut r).is_some());
        assert!(p.next_delay(1, &server, &mut r).is_some());
        assert!(p.next_delay(2, &server, &mut r).is_none());
        for kind in [
            ErrorKind::Rejected,
            ErrorKind::Auth,
            ErrorKind::QuotaExhausted,
        ] {
            assert!(
                p.next_delay(0, &CallError::new(kind, "x"), &mut r)
                    .is_none()
            );
        }
    }

    #[test]
    fn honours_sane_retry_after_only() {
        let p = RetryPolicy::new(5);
        let mut r = rng();
        let mut e = CallError::new(ErrorKind::RateLimited, "slow down");
        e.retry_after = Some(Duration::from_millis(1500));
        assert_eq!(
            p.next_delay(0, &e, &mut r),
            Some(Duration::from_millis(1500))
        );
        e.retry_after = Some(Duration::from_secs(3600));
        let wait = p.next_delay(0, &e, &mut r).unwrap();
        assert!(
            (p.window_base..=p.window_base * 3 / 2).contains(&wait),
            "{wait:?}"
        );
    }

    #[test]
    fn refusals_for_load_without_a_hint_wait_for_the_next_window() {
        let p = RetryPolicy::new(20);
        let mut r = rng();
        let mut overloaded = CallError::new(ErrorKind::Server, "overloaded");
        overloaded.status = Some(529);
        for e in [
            CallError::new(ErrorKind::RateLimited, "slow down"),
            overloaded,
        ] {
            for n in 0..12 {
                let floor = (p.window_base * 2u32.pow(n)).min(p.window_cap);
                for _ in 0..50 {
                    let wait = p.next_delay(n, &e, &mut r).unwrap();
                    assert!((floor..=floor * 3 / 2).contains(&wait), "{n}: {wait:?}");
                }
            }
        }
        // A plain server error still retries sooner.
        let server = CallError::new(ErrorKind::Server, "boom");
        assert!(p.next_delay(0, &server, &mut r).unwrap() <= p.base);
    }
}

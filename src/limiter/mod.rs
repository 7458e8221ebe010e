//! Requests-per-minute and tokens-per-minute budgets, shared by every task of a run.
//!
//! Each budget is a governor GCRA bucket that refills continuously and allows about one second
//! of burst, the way providers enforce their limits: a minute's worth of requests sent in the
//! first second would be answered with 429s. A request waits here until both budgets have room
//! for it; its token cost is the prompt (counted before sending) plus the completion reservation.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// The limits of one run; `None` budgets are unlimited.
pub struct RateBudget {
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
}

impl RateBudget {
    pub fn new(rpm: Option<u32>, tpm: Option<u32>) -> Self {
        RateBudget {
            requests: rpm.map(|n| RateLimiter::direct(per_minute(n, 1))),
            // A single request may need more than one second's worth of tokens; allow at least
            // a small request's worth so it can ever pass.
            tokens: tpm.map(|n| {
                let quota = per_minute(n, n.min(8192));
                (RateLimiter::direct(quota), quota.burst_size())
            }),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }

    /// Waits until one request of `tokens` tokens fits both budgets, and takes it from them.
    pub async fn acquire(&self, tokens: u32) {
        if let Some(r) = &self.requests {
            r.until_ready().await;
        }
        if let Some((t, burst)) = &self.tokens {
            // Larger than the bucket: take the whole bucket, the most that can ever be waited for.
            let n = NonZeroU32::new(tokens.max(1))
                .unwrap_or(NonZeroU32::MIN)
                .min(*burst);
            // Cannot fail: n <= burst.
            let _ = t.until_n_ready(n).await;
        }
    }
}

/// A quota of `per_minute` cells refilling evenly, with a burst of one second's worth (at least
/// `min_burst`).
fn per_minute(per_minute: u32, min_burst: u32) -> Quota {
    let per_minute = per_minute.max(1);
    let period = Duration::from_secs(60) / per_minute;
    let burst = (per_minute / 60).max(min_burst).max(1);
    Quota::with_period(period)
        .expect("period is positive")
        .allow_burst(NonZeroU32::new(burst).expect("burst is at least 1"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn burst_is_about_one_second() {
        assert_eq!(per_minute(3000, 1).burst_size().get(), 50);
        assert_eq!(per_minute(30, 1).burst_size().get(), 1);
        assert_eq!(per_minute(60_000, 8192).burst_size().get(), 8192);
    }

    #[tokio::test]
    async fn requests_beyond_the_burst_wait_for_refill() {
        // 6000/min = 100/s with a burst of 100: 150 requests need about half a second.
        let budget = RateBudget::new(Some(6000), None);
        let start = Instant::now();
        for _ in 0..150 {
            budget.acquire(1).await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(400), "{took:?}");
    }

    #[tokio::test]
    async fn unlimited_budget_never_waits() {
        let budget = RateBudget::new(None, None);
        assert!(budget.is_unlimited());
        for _ in 0..10_000 {
            budget.acquire(1_000_000).await;
        }
    }
}

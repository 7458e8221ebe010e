//! A token bucket that can be refunded and re-rated while in use.
//!
//! governor's GCRA cannot give back what a request over-reserved, nor change its quota once
//! built; both are needed here (reconciling with real `usage`, and limits learned from headers
//! mid-run), so this small bucket replaces it.
//!
//! A request larger than the bucket waits for a full bucket and then takes all it costs, going
//! into debt, which later requests wait out: the rule of a server's own bucket (the mock's,
//! OpenAI's, which admit a request bigger than their burst). Taking only the bucket's worth,
//! as this bucket once did, under-counted every large request: with 1,900-token prompts and a
//! half-second burst of 250 tokens (30,000 TPM) a run sent 3.9 times the limit.
//!
//! Debt comes only from requests actually sent. A version that let queued reservations take
//! their tokens ahead of time, into debt, over-sent: tokens refunded while in debt were banked,
//! so the client later spent budget from seconds that a server's bucket, capped at its burst,
//! had already let lapse. Queueing is the caller's job ([`super::RateBudget`]).
//!
//! Why this never sends more than a server's bucket admits: if the server's bucket refills at
//! least as fast and holds at least as much, and starts no emptier, then what it is missing
//! never exceeds what this one is missing (both lose the same requests, and refilling shrinks
//! the larger gap at least as fast). So when this bucket is full, the server's is; when it holds
//! `n`, the server's holds `n` as well. Refunds keep that: capped at the capacity, they leave this
//! bucket where it would be had it taken the smaller amount in the first place.

use std::time::Duration;

use tokio::time::Instant;

/// Units a level may fall short of a need and still count as meeting it (float rounding).
const EPSILON: f64 = 1e-6;

#[derive(Debug, Clone)]
pub struct Bucket {
    /// Units added per second.
    rate: f64,
    /// Most units the bucket holds (the burst).
    capacity: f64,
    /// Units available now; negative while a request larger than the bucket is repaid.
    level: f64,
    updated: Instant,
    /// When the server said its budget would be full again: the bucket is full by then, however
    /// slowly it refills on its own, so no wait ever outlasts the server's reset.
    full_by: Option<Instant>,
}

impl Bucket {
    /// A full bucket refilling at `rate` units per second.
    pub fn new(rate: f64, capacity: f64, now: Instant) -> Self {
        let capacity = capacity.max(1.0);
        Bucket {
            rate: rate.max(f64::MIN_POSITIVE),
            capacity,
            level: capacity,
            updated: now,
            full_by: None,
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn capacity(&self) -> f64 {
        self.capacity
    }

    /// Brings the level up to date.
    pub fn refill_to(&mut self, now: Instant) {
        self.refill(now);
    }

    /// What a request of `n` units must find in the bucket: `n`, or a full bucket if `n` is more.
    fn need(&self, n: f64) -> f64 {
        n.min(self.capacity)
    }

    /// How long until a request of `n` units may go (zero if it may), judged at the last refill.
    pub fn shortfall(&self, n: f64) -> Duration {
        let need = self.need(n);
        if self.level + EPSILON >= need {
            return Duration::ZERO;
        }
        let wait = Duration::from_secs_f64(((need - self.level) / self.rate).min(1e9));
        match self.full_by {
            Some(t) => wait.min(t.saturating_duration_since(self.updated)),
            None => wait,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.rate).min(self.capacity);
        self.updated = self.updated.max(now);
        if self.full_by.is_some_and(|t| t <= now) {
            self.level = self.capacity;
            self.full_by = None;
        }
    }

    /// Takes `n` units if the request may go (see [`Self::shortfall`]), else says how long until
    /// it may. A request larger than the bucket takes its whole cost from a full bucket.
    pub fn try_take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        match self.shortfall(n) {
            Duration::ZERO => {
                self.level -= n;
                Ok(())
            }
            wait => Err(wait),
        }
    }

    /// Returns `n` units (an over-reservation, or a reservation that was never used), never
    /// above the capacity; a negative `n` takes more, into debt if need be.
    pub fn give_back(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.level = (self.level + n).min(self.capacity);
    }

    /// Empties whatever is available (after a 429: the server's bucket is empty, so ours is too,
    /// whatever an earlier reset promised).
    pub fn drain(&mut self, now: Instant) {
        self.refill(now);
        self.level = self.level.min(0.0);
        self.full_by = None;
    }

    /// Changes rate and capacity, keeping the current debt or credit.
    pub fn set_rate(&mut self, rate: f64, capacity: f64, now: Instant) {
        self.refill(now);
        self.rate = rate.max(f64::MIN_POSITIVE);
        self.capacity = capacity.max(1.0);
        self.level = self.level.min(self.capacity);
    }

    /// Sets the available units (to match what the server says is left).
    pub fn set_level(&mut self, level: f64, now: Instant) {
        self.refill(now);
        self.level = level.min(self.capacity);
    }

    /// The bucket is full at `at` at the latest (the server's reset).
    pub fn full_by(&mut self, at: Instant, now: Instant) {
        self.refill(now);
        if at <= now {
            self.level = self.capacity;
            self.full_by = None;
        } else {
            self.full_by = Some(at);
        }
    }

    pub fn level(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_paced() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 5.0, t0);
        for _ in 0..5 {
            assert_eq!(b.try_take(1.0, t0), Ok(()));
        }
        assert_eq!(b.try_take(1.0, t0), Err(Duration::from_millis(100)));
        assert_eq!(b.try_take(1.0, t0 + Duration::from_millis(100)), Ok(()));
        // Idle time refills to the capacity and no further.
        let later = t0 + Duration::from_secs(10);
        assert!((b.level(later) - 5.0).abs() < 1e-9);
    }

    #[test]
    fn refunds_are_capped_at_the_capacity() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100.0, 100.0, t0);
        assert_eq!(b.try_take(100.0, t0), Ok(()));
        b.give_back(500.0, t0);
        assert!((b.level(t0) - 100.0).abs() < 1e-9);
        b.give_back(-150.0, t0);
        assert_eq!(b.try_take(10.0, t0), Err(Duration::from_millis(600)));
    }

    #[test]
    fn oversized_requests_wait_for_a_full_bucket_and_go_into_debt() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 10.0, t0);
        assert_eq!(b.try_take(1.0, t0), Ok(()));
        // 1000 units: needs the full bucket (0.1 s away), then takes all 1000.
        assert_eq!(b.try_take(1000.0, t0), Err(Duration::from_millis(100)));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.try_take(1000.0, t1), Ok(()));
        assert!((b.level(t1) + 990.0).abs() < 1e-9);
        // The next request, however small, waits until the debt is repaid and one unit is back.
        assert_eq!(b.try_take(1.0, t1), Err(Duration::from_millis(99_100)));
        // Over the long run: 1000 units per 100 s, the rate.
        assert_eq!(b.try_take(1000.0, t1 + Duration::from_secs(100)), Ok(()));
    }

    #[test]
    fn the_servers_reset_bounds_every_wait() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1.0, 100.0, t0);
        b.set_level(0.0, t0);
        b.full_by(t0 + Duration::from_secs(2), t0);
        // 50 units would take 50 s of refill; the server said full in 2 s.
        assert_eq!(b.try_take(50.0, t0), Err(Duration::from_secs(2)));
        assert_eq!(b.try_take(50.0, t0 + Duration::from_secs(2)), Ok(()));
        assert!((b.level(t0 + Duration::from_secs(2)) - 50.0).abs() < 1e-9);
        // A 429 cancels the promise.
        let mut b = Bucket::new(1.0, 100.0, t0);
        b.full_by(t0 + Duration::from_secs(2), t0);
        b.drain(t0);
        assert_eq!(b.try_take(50.0, t0), Err(Duration::from_secs(50)));
    }

    #[test]
    fn drain_and_rerate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 10.0, t0);
        b.drain(t0);
        assert_eq!(b.try_take(1.0, t0), Err(Duration::from_millis(100)));
        b.set_rate(20.0, 10.0, t0);
        assert_eq!(b.try_take(1.0, t0), Err(Duration::from_millis(50)));
    }
}

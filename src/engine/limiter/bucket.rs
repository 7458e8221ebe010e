//! A token bucket that can be refunded and re-rated while in use.
//!
//! governor's GCRA cannot give back what a request over-reserved, nor change its quota once
//! built; both are needed here (reconciling with real `usage`, and limits learned from headers
//! mid-run), so this small bucket replaces it.
//!
//! The bucket never goes into debt: a request takes its tokens only when they are there. A
//! version that let reservations queue as debt was tried and over-sent: tokens refunded while in
//! debt were banked, so the client later spent budget from seconds that a server's bucket, capped
//! at its burst, had already let lapse. Queueing is the caller's job ([`super::RateBudget`]).

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Bucket {
    /// Units added per second.
    rate: f64,
    /// Most units the bucket holds (the burst).
    capacity: f64,
    /// Units available now; negative while reservations are queued.
    level: f64,
    updated: Instant,
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

    /// How long until `n` units are there (zero if they are), judged at the last refill.
    pub fn shortfall(&self, n: f64) -> Duration {
        let n = n.min(self.capacity);
        if self.level >= n {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((n - self.level) / self.rate)
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.rate).min(self.capacity);
        self.updated = self.updated.max(now);
    }

    /// Takes `n` units if they are there, else says how long until they will be. A request
    /// larger than the bucket needs a full bucket, and takes it all.
    pub fn try_take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let n = n.min(self.capacity);
        if self.level >= n {
            self.level -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.level) / self.rate))
        }
    }

    /// Returns `n` units (an over-reservation, or a reservation that was never used), never
    /// above the capacity; a negative `n` takes more, into debt if need be.
    pub fn give_back(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.level = (self.level + n).min(self.capacity);
    }

    /// Empties whatever is available (after a 429: the server's bucket is empty, so ours is too).
    pub fn drain(&mut self, now: Instant) {
        self.refill(now);
        self.level = self.level.min(0.0);
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
    fn oversized_requests_take_the_whole_bucket() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 10.0, t0);
        assert_eq!(b.try_take(1000.0, t0), Ok(()));
        assert_eq!(b.try_take(1.0, t0), Err(Duration::from_millis(100)));
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

//! The spend cap: the run's total cost can never exceed `--max-cost`, however many requests are
//! in flight, and the cap is used up rather than abandoned half-spent.
//!
//! Before each attempt a request reserves its worst case: its prompt tokens plus the completion
//! cap, at the model's full price. When the answer arrives the reservation is replaced by the real
//! cost. An attempt whose cost is unknowable (it timed out, or its answer was lost or garbled
//! after the server may have billed it) is charged its worst case. Anything else refused at the
//! HTTP level costs nothing.
//!
//! A reservation that does not fit beside those in flight waits for them to settle (most cost
//! far less than their worst case), so near the cap only as many requests are in flight as the
//! remaining budget covers at their worst. The run stops only when a request cannot fit even
//! with nothing in flight: what is committed never shrinks, so it never will.

use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Debug)]
pub struct SpendCap {
    cap: f64,
    state: Mutex<Spend>,
    /// Woken on every settlement: a reservation waiting for room looks again.
    settled: Notify,
}

#[derive(Debug, Default)]
struct Spend {
    /// Cost of finished attempts (and worst cases of the unknowable ones).
    committed: f64,
    /// Worst cases of the attempts in flight.
    reserved: f64,
}

/// A reservation, to be settled with the real cost.
#[derive(Debug)]
#[must_use = "settle the reservation"]
pub struct Reservation {
    worst: f64,
}

impl Reservation {
    pub fn worst(&self) -> f64 {
        self.worst
    }
}

/// A request that can never fit: even with nothing in flight, what is committed plus its worst
/// case is over the cap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exhausted {
    /// What is committed (spent, or counted as spent).
    pub committed: f64,
    /// The request's worst case.
    pub worst: f64,
}

/// What one look at the cap says about a reservation.
#[derive(Debug, PartialEq)]
enum Fit {
    Now,
    /// Once reservations in flight settle for less than their worst case.
    Later,
    Never,
}

impl Spend {
    fn fit(&self, cap: f64, worst: f64) -> Fit {
        if self.committed + worst > cap {
            Fit::Never
        } else if self.committed + self.reserved + worst > cap {
            Fit::Later
        } else {
            Fit::Now
        }
    }
}

impl SpendCap {
    /// A cap of `cap` USD of which `already` was spent by an earlier part of the run.
    pub fn new(cap: f64, already: f64) -> Self {
        SpendCap {
            cap,
            state: Mutex::new(Spend {
                committed: already,
                reserved: 0.0,
            }),
            settled: Notify::new(),
        }
    }

    pub fn cap(&self) -> f64 {
        self.cap
    }

    /// Reserves `worst` USD, waiting while it fits only once requests in flight settle; fails
    /// when it cannot fit even with nothing in flight.
    pub async fn reserve(&self, worst: f64) -> Result<Reservation, Exhausted> {
        loop {
            // Registered before looking, so a settlement between the look and the wait wakes it.
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            match self.try_reserve(worst) {
                Ok(r) => return Ok(r),
                Err(Some(exhausted)) => return Err(exhausted),
                Err(None) => settled.await,
            }
        }
    }

    /// Reserves `worst` USD if it fits now; `Err(None)` if it would fit once requests in flight
    /// settle, `Err(Some(_))` if it never will.
    pub fn try_reserve(&self, worst: f64) -> Result<Reservation, Option<Exhausted>> {
        let mut s = self.state.lock().expect("spend lock");
        match s.fit(self.cap, worst) {
            Fit::Now => {
                s.reserved += worst;
                Ok(Reservation { worst })
            }
            Fit::Later => Err(None),
            Fit::Never => Err(Some(Exhausted {
                committed: s.committed,
                worst,
            })),
        }
    }

    /// Replaces a reservation by what the attempt cost (`None`: unknowable, so its worst case).
    pub fn settle(&self, r: Reservation, actual: Option<f64>) {
        {
            let mut s = self.state.lock().expect("spend lock");
            s.reserved = (s.reserved - r.worst).max(0.0);
            s.committed += actual.unwrap_or(r.worst);
        }
        self.settled.notify_waiters();
    }

    pub fn committed(&self) -> f64 {
        self.state.lock().expect("spend lock").committed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn reservations_in_flight_count_against_the_cap() {
        let cap = SpendCap::new(1.0, 0.25);
        let a = cap.try_reserve(0.5).unwrap();
        // Fits once `a` settles for less than its worst case: wait, do not give up.
        assert!(matches!(cap.try_reserve(0.5), Err(None)));
        cap.settle(a, Some(0.1));
        let b = cap.try_reserve(0.5).unwrap();
        cap.settle(b, None);
        assert!((cap.committed() - 0.85).abs() < 1e-12);
        assert_eq!(
            cap.try_reserve(0.2).unwrap_err(),
            Some(Exhausted {
                committed: cap.committed(),
                worst: 0.2
            })
        );
    }

    #[tokio::test]
    async fn a_reservation_that_does_not_fit_waits_for_one_in_flight_to_settle() {
        let cap = Arc::new(SpendCap::new(1.0, 0.0));
        let first = cap.reserve(0.6).await.unwrap();
        let waiting = tokio::spawn({
            let cap = cap.clone();
            async move { cap.reserve(0.6).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "it must wait, not fail or pass");
        cap.settle(first, Some(0.2));
        let second = waiting.await.unwrap().expect("fits once the first settled");
        cap.settle(second, Some(0.2));
        assert!((cap.committed() - 0.4).abs() < 1e-12);
    }

    #[tokio::test]
    async fn a_waiting_reservation_fails_once_it_can_never_fit() {
        let cap = Arc::new(SpendCap::new(1.0, 0.0));
        let first = cap.reserve(0.6).await.unwrap();
        let waiting = tokio::spawn({
            let cap = cap.clone();
            async move { cap.reserve(0.6).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Unknowable: charged its worst case, which leaves too little for the second.
        cap.settle(first, None);
        let refused = waiting.await.unwrap().unwrap_err();
        assert!((refused.committed - 0.6).abs() < 1e-12 && refused.worst == 0.6);
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_cap_and_use_it_up() {
        let cap = Arc::new(SpendCap::new(10.0, 0.0));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let cap = cap.clone();
                std::thread::spawn(move || {
                    // Worst case 0.3, real cost 0.1: 100 answers fit.
                    loop {
                        match cap.try_reserve(0.3) {
                            Ok(r) => cap.settle(r, Some(0.1)),
                            Err(None) => std::thread::yield_now(),
                            Err(Some(_)) => break,
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(cap.committed() <= 10.0 + 1e-9);
        // Stops only when the worst case no longer fits: within one worst case of the cap.
        assert!(cap.committed() > 10.0 - 0.3 - 1e-9, "{}", cap.committed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_waiting_tasks_keep_within_the_cap_and_in_flight_shrinks_near_it() {
        let cap = Arc::new(SpendCap::new(2.0, 0.0));
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (cap, in_flight) = (cap.clone(), in_flight.clone());
                tokio::spawn(async move {
                    let mut most = 0;
                    while let Ok(r) = cap.reserve(0.25).await {
                        let n = in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        most = most.max(n);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        cap.settle(r, Some(0.05));
                    }
                    most
                })
            })
            .collect();
        let mut most = 0;
        for t in tasks {
            most = most.max(t.await.unwrap());
        }
        // Never more in flight than the cap covers at the worst case (2.0 / 0.25).
        assert!(most <= 8, "{most} in flight");
        assert!(cap.committed() <= 2.0 + 1e-9);
        assert!(cap.committed() > 2.0 - 0.25 - 1e-9, "{}", cap.committed());
    }
}

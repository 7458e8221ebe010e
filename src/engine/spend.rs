//! The spend cap: the run's total cost can never exceed `--max-cost`, however many requests are
//! in flight.
//!
//! Before each attempt a request reserves its worst case: its prompt tokens plus the completion
//! cap, at the model's full price. When the answer arrives the reservation is replaced by the real
//! cost. An attempt whose cost is unknowable (it timed out, or its answer was lost or garbled
//! after the server may have billed it) is charged its worst case. Anything else refused at the
//! HTTP level costs nothing. A request that does not fit is not sent, and the run stops.

use std::sync::Mutex;

#[derive(Debug)]
pub struct SpendCap {
    cap: f64,
    state: Mutex<Spend>,
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

impl SpendCap {
    /// A cap of `cap` USD of which `already` was spent by an earlier part of the run.
    pub fn new(cap: f64, already: f64) -> Self {
        SpendCap {
            cap,
            state: Mutex::new(Spend {
                committed: already,
                reserved: 0.0,
            }),
        }
    }

    pub fn cap(&self) -> f64 {
        self.cap
    }

    /// Reserves `worst` USD, or says what is committed and what is reserved by requests in
    /// flight if it does not fit.
    pub fn reserve(&self, worst: f64) -> Result<Reservation, (f64, f64)> {
        let mut s = self.state.lock().expect("spend lock");
        if s.committed + s.reserved + worst > self.cap {
            return Err((s.committed, s.reserved));
        }
        s.reserved += worst;
        Ok(Reservation { worst })
    }

    /// Replaces a reservation by what the attempt cost (`None`: unknowable, so its worst case).
    pub fn settle(&self, r: Reservation, actual: Option<f64>) {
        let mut s = self.state.lock().expect("spend lock");
        s.reserved = (s.reserved - r.worst).max(0.0);
        s.committed += actual.unwrap_or(r.worst);
    }

    pub fn committed(&self) -> f64 {
        self.state.lock().expect("spend lock").committed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_in_flight_count_against_the_cap() {
        let cap = SpendCap::new(1.0, 0.25);
        let a = cap.reserve(0.5).unwrap();
        assert_eq!(cap.reserve(0.5).unwrap_err(), (0.25, 0.5));
        cap.settle(a, Some(0.1));
        let b = cap.reserve(0.5).unwrap();
        cap.settle(b, None);
        assert!((cap.committed() - 0.85).abs() < 1e-12);
        assert!(cap.reserve(0.2).is_err());
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_cap() {
        let cap = std::sync::Arc::new(SpendCap::new(10.0, 0.0));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let cap = cap.clone();
                std::thread::spawn(move || {
                    while let Ok(r) = cap.reserve(0.3) {
                        cap.settle(r, Some(0.3));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(cap.committed() <= 10.0 + 1e-9);
        assert!(cap.committed() > 9.5);
    }
}

//! When the mock's completion requests arrived and finished: what a client's pacing looks like
//! from the server's side (`GET /stats`), for the tests and benchmarks of issue 13: how many
//! requests a client sends before it has heard anything, how evenly it sends, and how long it
//! takes from its first request to its last answer.

use std::time::{Duration, Instant};

/// The figures, as `/stats` reports them (milliseconds since the mock started; 0 if none).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Figures {
    pub first_request_ms: u64,
    pub last_answer_ms: u64,
    pub longest_gap_ms: u64,
    pub max_in_flight_before_first_answer: u64,
}

#[derive(Debug)]
pub(super) struct Timeline {
    start: Instant,
    first_request: Option<Instant>,
    last_request: Option<Instant>,
    last_answer: Option<Instant>,
    /// The longest time between two arrivals.
    longest_gap: Duration,
    /// Requests in flight at most while none had finished.
    max_before_answer: u64,
}

impl Timeline {
    pub fn new(start: Instant) -> Self {
        Timeline {
            start,
            first_request: None,
            last_request: None,
            last_answer: None,
            longest_gap: Duration::ZERO,
            max_before_answer: 0,
        }
    }

    /// A request arrived, making `in_flight` in flight.
    pub fn arrived(&mut self, now: Instant, in_flight: u64) {
        self.first_request.get_or_insert(now);
        if let Some(last) = self.last_request {
            self.longest_gap = self.longest_gap.max(now.saturating_duration_since(last));
        }
        self.last_request = Some(now);
        if self.last_answer.is_none() {
            self.max_before_answer = self.max_before_answer.max(in_flight);
        }
    }

    /// A request finished (answered, or given up by the client).
    pub fn finished(&mut self, now: Instant) {
        self.last_answer = Some(now);
    }

    pub fn figures(&self) -> Figures {
        let ms = |t: Option<Instant>| {
            t.map_or(0, |t| {
                t.saturating_duration_since(self.start).as_millis() as u64
            })
        };
        Figures {
            first_request_ms: ms(self.first_request),
            last_answer_ms: ms(self.last_answer),
            longest_gap_ms: self.longest_gap.as_millis() as u64,
            max_in_flight_before_first_answer: self.max_before_answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_went_before_the_first_answer_and_the_longest_gap() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut t = Timeline::new(t0);
        t.arrived(at(10), 1);
        t.arrived(at(20), 2);
        t.arrived(at(30), 3);
        t.finished(at(200));
        t.arrived(at(1500), 3);
        t.finished(at(1700));
        assert_eq!(
            t.figures(),
            Figures {
                first_request_ms: 10,
                last_answer_ms: 1700,
                longest_gap_ms: 1470,
                max_in_flight_before_first_answer: 3,
            }
        );
    }
}

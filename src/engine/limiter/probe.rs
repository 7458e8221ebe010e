//! The start of a run whose limits are not all given: what may be sent before the server has
//! said anything about its limits.
//!
//! One probe request alone let a hanging first request hold the whole run for `--timeout`, and
//! opened every run with a full round trip of nothing in flight (issue 13). So a few requests
//! go at once ([`PROBES`], at most [`PROBE_TOKENS`] tokens between them, so that documents as
//! prompts do not open with a burst into a low token limit), and while no answer has come, one
//! more every [`PROBE_INTERVAL`]: a conservative pace that no tier of any provider we know
//! refuses, which keeps a run going when its first requests hang. The first answer ends the
//! start; from then on the budgets learned from its headers pace the run, starting from what
//! the server says is left and with half a second of burst at most, so the run ramps up to the
//! limit instead of opening at it (providers penalise cold starts at the full rate: see
//! `shared/reference/rate-limit-headers.md`, ramp-up).
//!
//! The first request goes without counting its tokens: the first count builds the tokenizer (a
//! fifth of a second), which would delay the whole run. The requests after it count theirs, and
//! the first is taken to cost what the second does (rows of one input are alike) until it is
//! settled.

use std::time::Duration;

use tokio::time::Instant;

/// Requests that may be out at once before the first answer.
pub const PROBES: u32 = 4;
/// Tokens those requests may cost between them (the first goes whatever it costs): about what
/// a 30,000-TPM tier admits in eight seconds, the lowest token limit we know of.
pub const PROBE_TOKENS: f64 = 4_000.0;
/// Beyond the probes, one request per interval until the first answer.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Why a request may not go yet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gate {
    /// Until the next probe may go, if no answer comes first.
    Wait(Duration),
    /// The request's tokens must be counted to decide.
    Count,
}

/// A request let out: whether it is the first, sent with its tokens not counted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Admitted {
    pub uncounted: bool,
}

/// The start gate's state.
#[derive(Debug, Default)]
pub struct Probing {
    /// Requests sent (or reserved) so far.
    sent: u32,
    /// Tokens of the probes not settled yet.
    tokens_out: f64,
    /// The first probe went uncounted and is not settled yet.
    uncounted_out: bool,
    /// Whether the user gave the request (resp. token) limit, which then paces that side.
    requests_given: bool,
    tokens_given: bool,
    last: Option<Instant>,
}

impl Probing {
    pub fn new(requests_given: bool, tokens_given: bool) -> Self {
        Probing {
            requests_given,
            tokens_given,
            ..Default::default()
        }
    }

    /// Lets a request of `tokens` (`None`: not counted yet) go, or says why not.
    pub fn admit(&mut self, tokens: Option<f64>, now: Instant) -> Result<Admitted, Gate> {
        let few = self.requests_given || self.sent < PROBES;
        let small = if self.tokens_given || self.sent == 0 {
            true
        } else {
            let Some(t) = tokens else {
                return Err(Gate::Count);
            };
            // The uncounted first is taken to cost what this one does.
            let first = if self.uncounted_out { t } else { 0.0 };
            self.tokens_out + first + t <= PROBE_TOKENS
        };
        let next = self.last.map_or(now, |t| t + PROBE_INTERVAL);
        if !((few && small) || next <= now) {
            return Err(Gate::Wait(next - now));
        }
        let uncounted = tokens.is_none();
        self.uncounted_out |= uncounted;
        self.sent += 1;
        self.tokens_out += tokens.unwrap_or(0.0);
        self.last = Some(now);
        Ok(Admitted { uncounted })
    }

    /// A probe admitted with `tokens` was settled or never sent: its tokens are no longer out.
    /// `unsent`: it never went, so it does not count as sent either.
    pub fn release(&mut self, admitted: Admitted, tokens: f64, unsent: bool) {
        self.tokens_out = (self.tokens_out - tokens).max(0.0);
        if admitted.uncounted {
            self.uncounted_out = false;
        }
        if unsent {
            self.sent = self.sent.saturating_sub(1);
            if self.sent == 0 {
                self.last = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COUNTED: Result<Admitted, Gate> = Ok(Admitted { uncounted: false });
    const UNCOUNTED: Result<Admitted, Gate> = Ok(Admitted { uncounted: true });

    #[test]
    fn a_few_go_at_once_then_one_per_interval() {
        let t0 = Instant::now();
        let mut p = Probing::new(false, false);
        for _ in 0..PROBES {
            assert_eq!(p.admit(Some(100.0), t0), COUNTED);
        }
        assert_eq!(p.admit(Some(100.0), t0), Err(Gate::Wait(PROBE_INTERVAL)));
        let t1 = t0 + PROBE_INTERVAL;
        assert_eq!(p.admit(Some(100.0), t1), COUNTED);
        assert_eq!(p.admit(Some(100.0), t1), Err(Gate::Wait(PROBE_INTERVAL)));
    }

    #[test]
    fn large_prompts_go_one_at_a_time() {
        let t0 = Instant::now();
        let mut p = Probing::new(false, false);
        // The first goes whatever it costs, uncounted; the next must be counted, and is taken
        // to cost what the first does: together more than the probes may.
        assert_eq!(p.admit(None, t0), UNCOUNTED);
        assert_eq!(p.admit(None, t0), Err(Gate::Count));
        assert_eq!(p.admit(Some(2_500.0), t0), Err(Gate::Wait(PROBE_INTERVAL)));
        // The first failed: the second may go.
        p.release(Admitted { uncounted: true }, 0.0, false);
        assert_eq!(p.admit(Some(2_500.0), t0), COUNTED);
        assert_eq!(p.admit(Some(2_000.0), t0), Err(Gate::Wait(PROBE_INTERVAL)));
        p.release(Admitted { uncounted: false }, 2_500.0, false);
        assert_eq!(p.admit(Some(2_000.0), t0), COUNTED);
    }

    #[test]
    fn a_given_limit_paces_its_side() {
        let t0 = Instant::now();
        let mut p = Probing::new(true, false);
        // More than PROBES requests, as many as PROBE_TOKENS pays for.
        let fit = (PROBE_TOKENS / 300.0) as u32;
        assert!(fit > PROBES);
        for _ in 0..fit {
            assert_eq!(p.admit(Some(300.0), t0), COUNTED);
        }
        assert!(
            p.admit(Some(300.0), t0).is_err(),
            "the probes' tokens are out"
        );
        // A given token limit: nothing to count.
        let mut p = Probing::new(false, true);
        for _ in 0..PROBES {
            assert_eq!(p.admit(None, t0), UNCOUNTED);
        }
        assert!(p.admit(None, t0).is_err());
    }

    #[test]
    fn an_unsent_probe_does_not_count() {
        let t0 = Instant::now();
        let mut p = Probing::new(false, false);
        assert_eq!(p.admit(None, t0), UNCOUNTED);
        p.release(Admitted { uncounted: true }, 0.0, true);
        assert_eq!(p.admit(None, t0), UNCOUNTED);
    }
}

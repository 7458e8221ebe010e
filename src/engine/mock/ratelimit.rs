//! The mock's rate limits: one token bucket per per-minute budget, shaped like OpenAI's.
//!
//! A bucket holds about one second's worth of its limit (at least 1), refills continuously at
//! limit/60 per second and starts full. A request is checked on arrival: it needs one request
//! and, of the tokens bucket, its full cost or a full bucket, whichever is less (so a request
//! bigger than the burst can still pass when the bucket is full, leaving a debt). A rejected
//! request takes nothing.

use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, HeaderValue};
use serde_json::json;

/// Which per-minute budget a bucket enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Budget {
    Requests,
    Tokens,
}

impl Budget {
    fn name(self) -> &'static str {
        match self {
            Budget::Requests => "requests",
            Budget::Tokens => "tokens",
        }
    }

    fn abbreviation(self) -> &'static str {
        match self {
            Budget::Requests => "RPM",
            Budget::Tokens => "TPM",
        }
    }
}

#[derive(Debug)]
struct Bucket {
    /// The per-minute limit.
    limit: u32,
    capacity: f64,
    /// Refill per second.
    rate: f64,
    /// May go negative (a debt) after a request bigger than what was left.
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(limit: u32, now: Instant) -> Self {
        let rate = f64::from(limit) / 60.0;
        let capacity = rate.max(1.0);
        Bucket {
            limit,
            capacity,
            rate,
            level: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.rate).min(self.capacity);
        self.at = self.at.max(now);
    }

    /// What `x-ratelimit-remaining-*` says: the limit less what the bucket is missing.
    fn remaining(&self) -> u64 {
        (f64::from(self.limit) - (self.capacity - self.level))
            .floor()
            .max(0.0) as u64
    }

    /// How long until the bucket holds `level`.
    fn until(&self, level: f64) -> Duration {
        let missing = (level - self.level).max(0.0);
        Duration::from_secs_f64(missing / self.rate)
    }

    /// The share of the burst in use, scaled to the per-minute limit, so that a drained bucket
    /// reads "Used <limit>" in a 429 message as OpenAI's do.
    fn used(&self) -> u64 {
        ((self.capacity - self.level) / self.capacity * f64::from(self.limit))
            .round()
            .max(0.0) as u64
    }
}

/// A request the limits turned away.
#[derive(Debug)]
pub(super) struct Rejection {
    pub budget: Budget,
    limit: u32,
    used: u64,
    requested: u64,
    /// Until the bucket holds what the request needs.
    wait: Duration,
}

impl Rejection {
    /// The 429 body, headers included, in OpenAI's shape.
    pub fn body(&self, model: &str) -> String {
        let message = format!(
            "Rate limit reached for {model} in organization org-mock on {} per min ({}): Limit \
             {}, Used {}, Requested {}. Please try again in {}.",
            self.budget.name(),
            self.budget.abbreviation(),
            self.limit,
            self.used,
            self.requested,
            go_duration(self.wait_ms()),
        );
        json!({"error": {"message": message, "type": self.budget.name(), "param": null,
            "code": "rate_limit_exceeded"}})
        .to_string()
    }

    /// The 429 body in Anthropic's shape.
    pub fn anthropic_body(&self) -> String {
        let message = format!(
            "This request would exceed the rate limit for your organization (org-mock) of {} {} \
             per minute. For details, refer to: \
             https://docs.claude.com/en/api/rate-limits. You can see the response headers for \
             current usage. Please reduce the prompt length or the maximum tokens requested, or \
             try again later.",
            self.limit,
            match self.budget {
                Budget::Requests => "requests",
                Budget::Tokens => "tokens",
            }
        );
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": message},
            "request_id": "req_mock_ratelimited"})
        .to_string()
    }

    /// Anthropic sends only `retry-after`, in whole seconds.
    pub fn anthropic_retry_headers(&self, headers: &mut HeaderMap) {
        let ms = self.wait_ms().as_millis().max(1);
        headers.insert(
            "retry-after",
            HeaderValue::from(ms.div_ceil(1000).max(1) as u64),
        );
    }

    /// `retry-after-ms` and `retry-after` (whole seconds, at least 1).
    pub fn retry_headers(&self, headers: &mut HeaderMap) {
        let ms = self.wait_ms().as_millis().max(1);
        headers.insert("retry-after-ms", HeaderValue::from(ms as u64));
        headers.insert(
            "retry-after",
            HeaderValue::from(ms.div_ceil(1000).max(1) as u64),
        );
    }

    fn wait_ms(&self) -> Duration {
        ceil_ms(self.wait).max(Duration::from_millis(1))
    }
}

/// The requests and tokens buckets of one mock server.
#[derive(Debug)]
pub(super) struct Limits {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

impl Limits {
    pub fn new(rpm: Option<u32>, tpm: Option<u32>, now: Instant) -> Self {
        Limits {
            requests: rpm.map(|l| Bucket::new(l, now)),
            tokens: tpm.map(|l| Bucket::new(l, now)),
        }
    }

    pub fn is_active(&self) -> bool {
        self.requests.is_some() || self.tokens.is_some()
    }

    /// Admits a request that costs one request and `tokens` tokens, taking both, or says which
    /// budget it would exceed and takes nothing.
    pub fn admit(&mut self, tokens: u64, now: Instant) -> Result<(), Rejection> {
        if let Some(b) = &mut self.requests {
            b.refill(now);
            if b.level < 1.0 {
                return Err(Rejection {
                    budget: Budget::Requests,
                    limit: b.limit,
                    used: b.used(),
                    requested: 1,
                    wait: b.until(1.0),
                });
            }
        }
        if let Some(b) = &mut self.tokens {
            b.refill(now);
            let need = (tokens as f64).min(b.capacity);
            if b.level < need {
                return Err(Rejection {
                    budget: Budget::Tokens,
                    limit: b.limit,
                    used: b.used(),
                    requested: tokens,
                    wait: b.until(need),
                });
            }
        }
        if let Some(b) = &mut self.requests {
            b.level -= 1.0;
        }
        if let Some(b) = &mut self.tokens {
            b.level -= tokens as f64;
        }
        Ok(())
    }

    /// Adds the `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers of the budgets
    /// that are configured, as they stand at `now`.
    pub fn headers(&mut self, now: Instant, headers: &mut HeaderMap) {
        for (budget, bucket) in [
            (Budget::Requests, &mut self.requests),
            (Budget::Tokens, &mut self.tokens),
        ] {
            let Some(b) = bucket else { continue };
            b.refill(now);
            let name = budget.name();
            let reset = go_duration(ceil_ms(b.until(b.capacity)));
            for (what, value) in [
                ("limit", b.limit.to_string()),
                ("remaining", b.remaining().to_string()),
                ("reset", reset),
            ] {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(
                        axum::http::HeaderName::try_from(format!("x-ratelimit-{what}-{name}"))
                            .expect("valid header name"),
                        v,
                    );
                }
            }
        }
    }
}

impl Limits {
    /// Anthropic's `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` headers, the
    /// resets as RFC 3339 times (`wall` is the wall-clock time of `now`).
    pub fn anthropic_headers(&mut self, now: Instant, wall: SystemTime, headers: &mut HeaderMap) {
        for (budget, bucket) in [
            (Budget::Requests, &mut self.requests),
            (Budget::Tokens, &mut self.tokens),
        ] {
            let Some(b) = bucket else { continue };
            b.refill(now);
            let name = budget.name();
            let reset = humantime::format_rfc3339_millis(wall + ceil_ms(b.until(b.capacity)));
            for (what, value) in [
                ("limit", b.limit.to_string()),
                ("remaining", b.remaining().to_string()),
                ("reset", reset.to_string()),
            ] {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(
                        axum::http::HeaderName::try_from(format!(
                            "anthropic-ratelimit-{name}-{what}"
                        ))
                        .expect("valid header name"),
                        v,
                    );
                }
            }
        }
    }
}

/// Rounds up to whole milliseconds, as OpenAI's reset and retry values are.
fn ceil_ms(d: Duration) -> Duration {
    let ms = d.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// `d` as Go's `time.Duration.String()` writes it, which is what OpenAI's
/// `x-ratelimit-reset-*` headers carry: "0s", "20ms", "1.5s", "6m0s", "1m30s", "1h0m0s".
pub fn go_duration(d: Duration) -> String {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    if ns == 0 {
        return "0s".to_string();
    }
    if ns < 1_000_000_000 {
        let (digits, unit) = if ns < 1_000 {
            (0, "ns")
        } else if ns < 1_000_000 {
            (3, "µs")
        } else {
            (6, "ms")
        };
        let (int, frac) = split_fraction(ns, digits);
        return format!("{int}{frac}{unit}");
    }
    let (secs, frac) = split_fraction(ns, 9);
    let mut out = String::new();
    let minutes = secs / 60;
    if minutes > 0 {
        let hours = minutes / 60;
        if hours > 0 {
            out.push_str(&format!("{hours}h"));
        }
        out.push_str(&format!("{}m", minutes % 60));
    }
    out.push_str(&format!("{}{frac}s", secs % 60));
    out
}

/// Splits `v` into its integer part and `.fraction` (trailing zeros dropped, empty when zero),
/// where the last `digits` digits are the fraction.
fn split_fraction(v: u64, digits: u32) -> (u64, String) {
    let scale = 10u64.pow(digits);
    let frac = v % scale;
    if frac == 0 {
        return (v / scale, String::new());
    }
    let text = format!("{frac:0width$}", width = digits as usize);
    (v / scale, format!(".{}", text.trim_end_matches('0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_duration_writes_what_go_writes() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_nanos(500)), "500ns");
        assert_eq!(go_duration(Duration::from_micros(999)), "999µs");
        assert_eq!(go_duration(Duration::from_nanos(1_500)), "1.5µs");
        assert_eq!(go_duration(ms(1)), "1ms");
        assert_eq!(go_duration(ms(20)), "20ms");
        assert_eq!(go_duration(Duration::from_micros(1_500)), "1.5ms");
        assert_eq!(go_duration(ms(999)), "999ms");
        assert_eq!(go_duration(ms(1_000)), "1s");
        assert_eq!(go_duration(ms(1_500)), "1.5s");
        assert_eq!(go_duration(ms(16_062)), "16.062s");
        assert_eq!(go_duration(ms(60_000)), "1m0s");
        assert_eq!(go_duration(ms(90_000)), "1m30s");
        assert_eq!(go_duration(ms(90_500)), "1m30.5s");
        assert_eq!(go_duration(ms(360_000)), "6m0s");
        assert_eq!(go_duration(ms(3_600_000)), "1h0m0s");
        assert_eq!(go_duration(ms(3_661_000)), "1h1m1s");
    }

    #[test]
    fn buckets_hold_a_second_of_burst_and_refill() {
        let t0 = Instant::now();
        let mut l = Limits::new(Some(600), None, t0);
        for _ in 0..10 {
            l.admit(0, t0).unwrap();
        }
        let r = l.admit(0, t0).unwrap_err();
        assert_eq!(r.budget, Budget::Requests);
        assert_eq!(r.wait_ms(), Duration::from_millis(100));
        assert_eq!(r.used, 600);
        // 100 ms later one request's worth is back.
        l.admit(0, t0 + Duration::from_millis(100)).unwrap();

        let mut h = HeaderMap::new();
        l.headers(t0 + Duration::from_millis(100), &mut h);
        assert_eq!(h["x-ratelimit-limit-requests"], "600");
        assert_eq!(h["x-ratelimit-remaining-requests"], "590");
        assert_eq!(h["x-ratelimit-reset-requests"], "1s");
        assert!(h.get("x-ratelimit-limit-tokens").is_none());
    }

    #[test]
    fn a_big_request_passes_a_full_tokens_bucket_and_leaves_a_debt() {
        let t0 = Instant::now();
        let mut l = Limits::new(None, Some(600), t0);
        l.admit(25, t0).unwrap();
        let r = l.admit(1, t0).unwrap_err();
        assert_eq!(r.budget, Budget::Tokens);
        // 16 tokens to repay at 10 per second.
        assert_eq!(r.wait_ms(), Duration::from_millis(1_600));
        let mut h = HeaderMap::new();
        l.headers(t0, &mut h);
        assert_eq!(h["x-ratelimit-remaining-tokens"], "575");
        assert_eq!(h["x-ratelimit-reset-tokens"], "2.5s");
        let mut h = HeaderMap::new();
        r.retry_headers(&mut h);
        assert_eq!(h["retry-after-ms"], "1600");
        assert_eq!(h["retry-after"], "2");
    }
}

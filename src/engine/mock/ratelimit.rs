//! The mock's rate limits: one budget per limit, shaped like the servers the mock imitates.
//!
//! By default a per-minute budget is a token bucket, shaped like OpenAI's: it holds about one
//! second's worth of its limit (at least 1), refills continuously at limit/60 per second and
//! starts full. With a window (`--rate-window 1s`) it is enforced instead in fixed windows of
//! that length, each allowing limit x window / 60 (at least 1), like servers that quantize
//! 3000 rpm to 50 per second (or Azure's 10-second windows); `remaining` then counts down within
//! the window and `reset` is the time to its end. A per-day request budget (`--rpd`, Groq-style)
//! is a bucket holding the whole day's limit that refills continuously; it takes over the
//! `*-requests` headers, whose `reset` is then its time-to-full (`2m59.56s`).
//!
//! A request is checked on arrival: it needs one request of each request budget and, of the
//! tokens budget, its full cost or a full budget, whichever is less (so a request bigger than
//! the burst can still pass when the budget is full, leaving a debt). A rejected request takes
//! nothing.

use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;

/// Which budget a limit enforces.
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
}

/// The period a limit is stated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Per {
    Minute,
    Day,
}

impl Per {
    fn seconds(self) -> f64 {
        match self {
            Per::Minute => 60.0,
            Per::Day => 86_400.0,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Per::Minute => "min",
            Per::Day => "day",
        }
    }
}

/// Which headers a 429 over the rate limits carries (`--retry-after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RetryAfter {
    /// The vendor's own: OpenAI's `retry-after-ms` and `retry-after`, Anthropic's `retry-after`.
    #[default]
    Standard,
    /// Only `retry-after`, in whole seconds (as Groq sends it).
    Seconds,
    /// None at all.
    None,
    /// Only `llm_provider-retry-after` (whole seconds), as a LiteLLM proxy forwards it.
    Litellm,
}

#[derive(Debug)]
enum Shape {
    /// Refills continuously; `level` may go negative (a debt) after a request bigger than what
    /// was left.
    Refill {
        capacity: f64,
        /// Per second.
        rate: f64,
        level: f64,
        at: Instant,
    },
    /// Fixed windows of `len` from `start`, each allowing `allowance`.
    Window {
        len: Duration,
        allowance: f64,
        used: f64,
        start: Instant,
    },
}

#[derive(Debug)]
struct Bucket {
    /// The limit as stated (per minute or per day).
    limit: u32,
    per: Per,
    shape: Shape,
}

impl Bucket {
    /// A per-minute limit: a bucket of one second's worth, or fixed windows of `window`.
    fn per_minute(limit: u32, window: Option<Duration>, now: Instant) -> Self {
        let shape = match window {
            None => {
                let rate = f64::from(limit) / 60.0;
                let capacity = rate.max(1.0);
                Shape::Refill {
                    capacity,
                    rate,
                    level: capacity,
                    at: now,
                }
            }
            Some(len) => Shape::Window {
                len,
                allowance: (f64::from(limit) * len.as_secs_f64() / 60.0)
                    .floor()
                    .max(1.0),
                used: 0.0,
                start: now,
            },
        };
        Bucket {
            limit,
            per: Per::Minute,
            shape,
        }
    }

    /// A per-day limit: a bucket of the whole day's limit, refilling continuously.
    fn per_day(limit: u32, now: Instant) -> Self {
        let capacity = f64::from(limit);
        Bucket {
            limit,
            per: Per::Day,
            shape: Shape::Refill {
                capacity,
                rate: capacity / Per::Day.seconds(),
                level: capacity,
                at: now,
            },
        }
    }

    fn advance(&mut self, now: Instant) {
        match &mut self.shape {
            Shape::Refill {
                capacity,
                rate,
                level,
                at,
            } => {
                let elapsed = now.saturating_duration_since(*at).as_secs_f64();
                *level = (*level + elapsed * *rate).min(*capacity);
                *at = (*at).max(now);
            }
            Shape::Window {
                len, used, start, ..
            } => {
                let elapsed = now.saturating_duration_since(*start);
                if elapsed >= *len {
                    let windows = (elapsed.as_nanos() / len.as_nanos().max(1)) as u32;
                    *start += *len * windows;
                    *used = 0.0;
                }
            }
        }
    }

    /// What a full budget holds.
    fn capacity(&self) -> f64 {
        match self.shape {
            Shape::Refill { capacity, .. } => capacity,
            Shape::Window { allowance, .. } => allowance,
        }
    }

    /// What is left now.
    fn level(&self) -> f64 {
        match self.shape {
            Shape::Refill { level, .. } => level,
            Shape::Window {
                allowance, used, ..
            } => allowance - used,
        }
    }

    fn take(&mut self, amount: f64) {
        match &mut self.shape {
            Shape::Refill { level, .. } => *level -= amount,
            Shape::Window { used, .. } => *used += amount,
        }
    }

    /// What `x-ratelimit-remaining-*` says: for a bucket the limit less what it is missing, for
    /// a window what is left of this window.
    fn remaining(&self) -> u64 {
        let left = match self.shape {
            Shape::Refill { .. } => f64::from(self.limit) - (self.capacity() - self.level()),
            Shape::Window { .. } => self.level(),
        };
        left.floor().max(0.0) as u64
    }

    /// How long until the budget holds `level`.
    fn until(&self, level: f64, now: Instant) -> Duration {
        match self.shape {
            Shape::Refill { rate, .. } => {
                let missing = (level - self.level()).max(0.0);
                Duration::from_secs_f64(missing / rate)
            }
            Shape::Window { .. } if self.level() >= level => Duration::ZERO,
            Shape::Window { .. } => self.window_end(now),
        }
    }

    fn window_end(&self, now: Instant) -> Duration {
        match self.shape {
            Shape::Window { len, start, .. } => (start + len).saturating_duration_since(now),
            Shape::Refill { .. } => Duration::ZERO,
        }
    }

    /// What `x-ratelimit-reset-*` says: the time until the budget is full again (a bucket) or
    /// until the window ends.
    fn reset(&self, now: Instant) -> Duration {
        match self.shape {
            Shape::Refill { .. } => self.until(self.capacity(), now),
            Shape::Window { .. } => self.window_end(now),
        }
    }

    /// The reset as the header writes it: Go-style, to the millisecond, or to the hundredth of
    /// a second for a per-day budget, as Groq writes it.
    fn reset_text(&self, now: Instant) -> String {
        let reset = self.reset(now);
        match self.per {
            Per::Minute => go_duration(ceil_ms(reset)),
            Per::Day => go_duration(ceil_to(reset, Duration::from_millis(10))),
        }
    }

    /// The share of the budget in use, scaled to the stated limit, so that a drained budget
    /// reads "Used <limit>" in a 429 message as OpenAI's do.
    fn used(&self) -> u64 {
        let capacity = self.capacity();
        ((capacity - self.level()) / capacity * f64::from(self.limit))
            .round()
            .max(0.0) as u64
    }

    /// A request that needs `need` of what is left is turned away: the rejection, or none.
    fn check(&self, budget: Budget, need: f64, requested: u64, now: Instant) -> Option<Rejection> {
        (self.level() < need).then(|| Rejection {
            budget,
            per: self.per,
            limit: self.limit,
            used: self.used(),
            requested,
            wait: self.until(need, now),
            style: RetryAfter::Standard,
        })
    }
}

/// A request the limits turned away.
#[derive(Debug)]
pub(super) struct Rejection {
    pub budget: Budget,
    per: Per,
    limit: u32,
    used: u64,
    requested: u64,
    /// Until the budget holds what the request needs.
    wait: Duration,
    style: RetryAfter,
}

impl Rejection {
    fn abbreviation(&self) -> &'static str {
        match (self.budget, self.per) {
            (Budget::Requests, Per::Minute) => "RPM",
            (Budget::Tokens, Per::Minute) => "TPM",
            (Budget::Requests, Per::Day) => "RPD",
            (Budget::Tokens, Per::Day) => "TPD",
        }
    }

    /// The 429 body, headers included, in OpenAI's shape.
    pub fn body(&self, model: &str) -> String {
        let message = format!(
            "Rate limit reached for {model} in organization org-mock on {} per {} ({}): Limit \
             {}, Used {}, Requested {}. Please try again in {}.",
            self.budget.name(),
            self.per.name(),
            self.abbreviation(),
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
             per {}. For details, refer to: \
             https://docs.claude.com/en/api/rate-limits. You can see the response headers for \
             current usage. Please reduce the prompt length or the maximum tokens requested, or \
             try again later.",
            self.limit,
            self.budget.name(),
            match self.per {
                Per::Minute => "minute",
                Per::Day => "day",
            }
        );
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": message},
            "request_id": "req_mock_ratelimited"})
        .to_string()
    }

    /// Anthropic sends only `retry-after`, in whole seconds (unless `--retry-after` says
    /// otherwise).
    pub fn anthropic_retry_headers(&self, headers: &mut HeaderMap) {
        match self.style {
            RetryAfter::Standard => self.retry_headers_as(RetryAfter::Seconds, headers),
            style => self.retry_headers_as(style, headers),
        }
    }

    /// By default `retry-after-ms` and `retry-after` (whole seconds, at least 1).
    pub fn retry_headers(&self, headers: &mut HeaderMap) {
        self.retry_headers_as(self.style, headers);
    }

    fn retry_headers_as(&self, style: RetryAfter, headers: &mut HeaderMap) {
        let ms = self.wait_ms().as_millis().max(1);
        let secs = HeaderValue::from(ms.div_ceil(1000).max(1) as u64);
        match style {
            RetryAfter::Standard => {
                headers.insert("retry-after-ms", HeaderValue::from(ms as u64));
                headers.insert("retry-after", secs);
            }
            RetryAfter::Seconds => {
                headers.insert("retry-after", secs);
            }
            RetryAfter::None => {}
            RetryAfter::Litellm => {
                headers.insert("llm_provider-retry-after", secs);
            }
        }
    }

    fn wait_ms(&self) -> Duration {
        ceil_ms(self.wait).max(Duration::from_millis(1))
    }
}

/// The budgets of one mock server.
#[derive(Debug)]
pub(super) struct Limits {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    /// Requests per day: enforced with the others, and reported in the `*-requests` headers
    /// in place of the per-minute budget (which is then enforced unreported, as Groq does).
    daily: Option<Bucket>,
    style: RetryAfter,
}

/// What the limits are made from.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LimitSpec {
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub rpd: Option<u32>,
    /// Fixed windows for the per-minute budgets instead of buckets.
    pub window: Option<Duration>,
    pub retry_after: RetryAfter,
}

impl Limits {
    pub fn new(spec: LimitSpec, now: Instant) -> Self {
        Limits {
            requests: spec.rpm.map(|l| Bucket::per_minute(l, spec.window, now)),
            tokens: spec.tpm.map(|l| Bucket::per_minute(l, spec.window, now)),
            daily: spec.rpd.map(|l| Bucket::per_day(l, now)),
            style: spec.retry_after,
        }
    }

    pub fn is_active(&self) -> bool {
        self.requests.is_some() || self.tokens.is_some() || self.daily.is_some()
    }

    /// Admits a request that costs one request and `tokens` tokens, taking both, or says which
    /// budget it would exceed and takes nothing.
    pub fn admit(&mut self, tokens: u64, now: Instant) -> Result<(), Rejection> {
        for b in [&mut self.requests, &mut self.daily, &mut self.tokens]
            .into_iter()
            .flatten()
        {
            b.advance(now);
        }
        let mut rejection = None;
        for b in [&self.requests, &self.daily].into_iter().flatten() {
            rejection = rejection.or_else(|| b.check(Budget::Requests, 1.0, 1, now));
        }
        if let Some(b) = &self.tokens {
            let need = (tokens as f64).min(b.capacity());
            rejection = rejection.or_else(|| b.check(Budget::Tokens, need, tokens, now));
        }
        if let Some(mut r) = rejection {
            r.style = self.style;
            return Err(r);
        }
        for b in [&mut self.requests, &mut self.daily].into_iter().flatten() {
            b.take(1.0);
        }
        if let Some(b) = &mut self.tokens {
            b.take(tokens as f64);
        }
        Ok(())
    }

    /// The budgets the headers report: the per-day one in place of the per-minute requests.
    fn reported(&mut self, now: Instant) -> [(Budget, Option<&mut Bucket>); 2] {
        let requests = match &mut self.daily {
            Some(d) => Some(d),
            None => self.requests.as_mut(),
        };
        let tokens = self.tokens.as_mut();
        let mut out = [(Budget::Requests, requests), (Budget::Tokens, tokens)];
        for (_, b) in out.iter_mut() {
            if let Some(b) = b {
                b.advance(now);
            }
        }
        out
    }

    /// Adds the `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers of the budgets
    /// that are configured, as they stand at `now`.
    pub fn headers(&mut self, now: Instant, headers: &mut HeaderMap) {
        for (budget, bucket) in self.reported(now) {
            let Some(b) = bucket else { continue };
            let name = budget.name();
            for (what, value) in [
                ("limit", b.limit.to_string()),
                ("remaining", b.remaining().to_string()),
                ("reset", b.reset_text(now)),
            ] {
                insert(headers, format!("x-ratelimit-{what}-{name}"), &value);
            }
        }
    }

    /// Anthropic's `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` headers, the
    /// resets as RFC 3339 times (`wall` is the wall-clock time of `now`).
    pub fn anthropic_headers(&mut self, now: Instant, wall: SystemTime, headers: &mut HeaderMap) {
        for (budget, bucket) in self.reported(now) {
            let Some(b) = bucket else { continue };
            let name = budget.name();
            let reset = humantime::format_rfc3339_millis(wall + ceil_ms(b.reset(now)));
            for (what, value) in [
                ("limit", b.limit.to_string()),
                ("remaining", b.remaining().to_string()),
                ("reset", reset.to_string()),
            ] {
                insert(
                    headers,
                    format!("anthropic-ratelimit-{name}-{what}"),
                    &value,
                );
            }
        }
    }
}

fn insert(headers: &mut HeaderMap, name: String, value: &str) {
    if let (Ok(k), Ok(v)) = (HeaderName::try_from(name), HeaderValue::from_str(value)) {
        headers.insert(k, v);
    }
}

/// Rounds up to a whole number of `step`s, after rounding to the microsecond so that float noise
/// (179.56000000001 s) does not add a step.
fn ceil_to(d: Duration, step: Duration) -> Duration {
    let step_ns = step.as_nanos().max(1);
    let micros = d.as_nanos().div_euclid(1_000) + u128::from(d.as_nanos() % 1_000 >= 500);
    let n = (micros * 1_000).div_ceil(step_ns) * step_ns;
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
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

    fn spec(rpm: Option<u32>, tpm: Option<u32>) -> LimitSpec {
        LimitSpec {
            rpm,
            tpm,
            ..Default::default()
        }
    }

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
        let mut l = Limits::new(spec(Some(600), None), t0);
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
        let mut l = Limits::new(spec(None, Some(600)), t0);
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_window_quantizes_the_minute_and_counts_down_within_it() {
        let t0 = Instant::now();
        let mut l = Limits::new(
            LimitSpec {
                rpm: Some(3000),
                window: Some(Duration::from_secs(1)),
                ..Default::default()
            },
            t0,
        );
        let mut h = HeaderMap::new();
        l.headers(t0, &mut h);
        assert_eq!(h["x-ratelimit-limit-requests"], "3000");
        assert_eq!(h["x-ratelimit-remaining-requests"], "50");
        assert_eq!(h["x-ratelimit-reset-requests"], "1s");
        for _ in 0..50 {
            l.admit(0, t0 + ms(100)).unwrap();
        }
        let r = l.admit(0, t0 + ms(400)).unwrap_err();
        assert_eq!(r.budget, Budget::Requests);
        // Not a refill: the whole window's allowance comes back when it ends.
        assert_eq!(r.wait_ms(), ms(600));
        assert_eq!(r.used, 3000);
        let mut h = HeaderMap::new();
        l.headers(t0 + ms(400), &mut h);
        assert_eq!(h["x-ratelimit-remaining-requests"], "0");
        assert_eq!(h["x-ratelimit-reset-requests"], "600ms");
        // The next window starts afresh, and a later one too, skipping the empty ones.
        l.admit(0, t0 + ms(1000)).unwrap();
        let mut h = HeaderMap::new();
        l.headers(t0 + ms(1250), &mut h);
        assert_eq!(h["x-ratelimit-remaining-requests"], "49");
        assert_eq!(h["x-ratelimit-reset-requests"], "750ms");
        l.admit(0, t0 + ms(3500)).unwrap();
        let mut h = HeaderMap::new();
        l.headers(t0 + ms(3500), &mut h);
        assert_eq!(h["x-ratelimit-remaining-requests"], "49");
        assert_eq!(h["x-ratelimit-reset-requests"], "500ms");
    }

    #[test]
    fn a_window_of_tokens_admits_one_big_request_then_waits_for_the_next() {
        let t0 = Instant::now();
        let mut l = Limits::new(
            LimitSpec {
                tpm: Some(600),
                window: Some(Duration::from_secs(10)),
                ..Default::default()
            },
            t0,
        );
        // 100 tokens per 10 s window.
        l.admit(150, t0).unwrap();
        let r = l.admit(1, t0 + ms(2000)).unwrap_err();
        assert_eq!(r.budget, Budget::Tokens);
        assert_eq!(r.wait_ms(), ms(8000));
        let mut h = HeaderMap::new();
        l.headers(t0 + ms(2000), &mut h);
        assert_eq!(h["x-ratelimit-limit-tokens"], "600");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "0");
        assert_eq!(h["x-ratelimit-reset-tokens"], "8s");
        l.admit(1, t0 + ms(10_000)).unwrap();
    }

    #[test]
    fn a_daily_budget_fills_the_requests_headers_groq_style() {
        let t0 = Instant::now();
        let mut l = Limits::new(
            LimitSpec {
                rpm: Some(1_800),
                rpd: Some(14_400),
                tpm: Some(18_000),
                ..Default::default()
            },
            t0,
        );
        for _ in 0..30 {
            l.admit(1, t0).unwrap();
        }
        // The per-minute limit (a burst of 30) is still enforced, though not reported.
        let r = l.admit(1, t0).unwrap_err();
        let body: serde_json::Value = serde_json::from_str(&r.body("m")).unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains("(RPM)"));
        let mut h = HeaderMap::new();
        l.headers(t0 + ms(440), &mut h);
        assert_eq!(h["x-ratelimit-limit-requests"], "14400");
        assert_eq!(h["x-ratelimit-remaining-requests"], "14370");
        // 6 s per request come back: 30 used, less 0.44 s, is 179.56 s to full.
        assert_eq!(h["x-ratelimit-reset-requests"], "2m59.56s");
        assert_eq!(h["x-ratelimit-limit-tokens"], "18000");

        let mut l = Limits::new(
            LimitSpec {
                rpd: Some(2),
                ..Default::default()
            },
            t0,
        );
        l.admit(0, t0).unwrap();
        l.admit(0, t0).unwrap();
        let r = l.admit(0, t0).unwrap_err();
        assert_eq!(r.wait_ms(), Duration::from_secs(43_200));
        let body: serde_json::Value = serde_json::from_str(&r.body("m")).unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("on requests per day (RPD): Limit 2, Used 2, Requested 1"),
            "{message}"
        );
    }

    #[test]
    fn retry_after_styles_pick_the_headers_of_a_429() {
        let t0 = Instant::now();
        let styles = [
            (
                RetryAfter::Standard,
                vec!["retry-after-ms", "retry-after"],
                vec!["retry-after"],
            ),
            (
                RetryAfter::Seconds,
                vec!["retry-after"],
                vec!["retry-after"],
            ),
            (RetryAfter::None, vec![], vec![]),
            (
                RetryAfter::Litellm,
                vec!["llm_provider-retry-after"],
                vec!["llm_provider-retry-after"],
            ),
        ];
        for (style, openai, anthropic) in styles {
            let mut l = Limits::new(
                LimitSpec {
                    rpm: Some(60),
                    retry_after: style,
                    ..Default::default()
                },
                t0,
            );
            l.admit(0, t0).unwrap();
            let r = l.admit(0, t0).unwrap_err();
            let mut h = HeaderMap::new();
            r.retry_headers(&mut h);
            let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            names.sort();
            let mut expected = openai.clone();
            expected.sort();
            assert_eq!(names, expected, "{style:?}");
            let mut h = HeaderMap::new();
            r.anthropic_retry_headers(&mut h);
            let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            assert_eq!(names, anthropic, "{style:?}");
            for v in h.values() {
                assert_eq!(v, "1");
            }
        }
    }
}

//! What servers say about their rate limits and about when to retry, parsed from response headers.
//!
//! Every header format this client understands is in one of two tables below, [`FORMATS`] (the
//! budgets: limit, remaining, reset) and [`RETRY_AFTER`] (how long to wait after a refusal), one
//! entry per provider or format with where it is documented or was seen. Servers disagree on
//! everything a client needs to know (see `shared/reference/rate-limit-headers.md`):
//!
//! - the window a limit counts: a minute (OpenAI, Anthropic), a day (Groq's requests, under the
//!   same header names as OpenAI's), a second (Together), or named in the header (Cerebras);
//! - what `reset` means: the time until the budget is full again (OpenAI, Groq, Anthropic) or
//!   the end of a fixed window (OpenRouter, Cerebras);
//! - how `reset` is written: Go durations, RFC 3339 times (possibly in the past), epoch
//!   milliseconds, float seconds;
//! - placeholders (`-1`) for "unknown", and proxies (LiteLLM) that pass upstream headers on
//!   under an `llm_provider-` prefix.
//!
//! Nothing here fails on what a server sends: a value that does not parse is treated as absent.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// How a format writes its reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResetFormat {
    /// A Go `time.Duration` (`1s`, `6m0s`, `12ms`), or a bare number of seconds.
    GoDuration,
    /// An RFC 3339 time, possibly already past.
    Rfc3339,
    /// Unix time in milliseconds. A value too small to be one does not match the format.
    EpochMillis,
    /// Seconds from now, possibly fractional (`33011.38`).
    Seconds,
}

/// One way of reporting rate limits.
struct Format {
    /// Who sends it, and where that is documented or was seen.
    #[allow(dead_code)]
    source: &'static str,
    /// `[limit, remaining, reset]` header names of the request budget (empty: not reported).
    requests: [&'static str; 3],
    /// The same for the token budget.
    tokens: [&'static str; 3],
    reset: ResetFormat,
    /// The window the limit counts, when the names or the vendor say it; `None`: inferred.
    window: Option<Duration>,
    /// Whether reset is the time until the budget is full again (else: until a window ends).
    time_to_full: bool,
}

/// The formats, in the order they are tried; for each of the two budgets the first format that
/// has it wins. A format whose reset header is present but not in its format does not match, so
/// formats that share names (OpenRouter and Together) are told apart by their resets.
const FORMATS: &[Format] = &[
    Format {
        source: "OpenAI (platform.openai.com/docs/guides/rate-limits): per minute, reset = time \
                 to full. Also Groq under the same names with requests per DAY \
                 (console.groq.com/docs/rate-limits), Azure OpenAI (-1 placeholders, 10 s \
                 request windows), and LiteLLM, which forwards them without the resets: so the \
                 window is inferred from limit, remaining and reset",
        requests: [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ],
        tokens: [
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ],
        reset: ResetFormat::GoDuration,
        window: None,
        time_to_full: true,
    },
    Format {
        source: "Anthropic (docs.anthropic.com/en/api/rate-limits): per minute, buckets refilled \
                 continuously, reset = RFC 3339 time when full (1 s resolution, may be past)",
        requests: [
            "anthropic-ratelimit-requests-limit",
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset",
        ],
        tokens: [
            "anthropic-ratelimit-tokens-limit",
            "anthropic-ratelimit-tokens-remaining",
            "anthropic-ratelimit-tokens-reset",
        ],
        reset: ResetFormat::Rfc3339,
        window: Some(MINUTE),
        time_to_full: true,
    },
    Format {
        source: "Anthropic without the combined token budget: its input-token budget (ITPM), \
                 the one a prompt-heavy batch job runs into",
        requests: ["", "", ""],
        tokens: [
            "anthropic-ratelimit-input-tokens-limit",
            "anthropic-ratelimit-input-tokens-remaining",
            "anthropic-ratelimit-input-tokens-reset",
        ],
        reset: ResetFormat::Rfc3339,
        window: Some(MINUTE),
        time_to_full: true,
    },
    Format {
        source: "Cerebras (inference-docs.cerebras.ai/support/rate-limits): window in the name, \
                 reset in float seconds",
        requests: [
            "x-ratelimit-limit-requests-minute",
            "x-ratelimit-remaining-requests-minute",
            "x-ratelimit-reset-requests-minute",
        ],
        tokens: [
            "x-ratelimit-limit-tokens-minute",
            "x-ratelimit-remaining-tokens-minute",
            "x-ratelimit-reset-tokens-minute",
        ],
        reset: ResetFormat::Seconds,
        window: Some(MINUTE),
        time_to_full: false,
    },
    Format {
        source: "Cerebras, hourly budgets",
        requests: [
            "x-ratelimit-limit-requests-hour",
            "x-ratelimit-remaining-requests-hour",
            "x-ratelimit-reset-requests-hour",
        ],
        tokens: [
            "x-ratelimit-limit-tokens-hour",
            "x-ratelimit-remaining-tokens-hour",
            "x-ratelimit-reset-tokens-hour",
        ],
        reset: ResetFormat::Seconds,
        window: Some(HOUR),
        time_to_full: false,
    },
    Format {
        source: "Cerebras, daily budgets (x-ratelimit-reset-requests-day: 33011.38)",
        requests: [
            "x-ratelimit-limit-requests-day",
            "x-ratelimit-remaining-requests-day",
            "x-ratelimit-reset-requests-day",
        ],
        tokens: [
            "x-ratelimit-limit-tokens-day",
            "x-ratelimit-remaining-tokens-day",
            "x-ratelimit-reset-tokens-day",
        ],
        reset: ResetFormat::Seconds,
        window: Some(DAY),
        time_to_full: false,
    },
    Format {
        source: "OpenRouter (openrouter.ai/docs/api-reference/limits), on its own 429s only: \
                 reset = end of the window in epoch milliseconds; window not stated",
        requests: [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ],
        tokens: ["", "", ""],
        reset: ResetFormat::EpochMillis,
        window: None,
        time_to_full: false,
    },
    Format {
        source: "Together AI (docs.together.ai, rate limits): the same names as OpenRouter's with \
                 a reset in seconds, and x-tokenlimit-*; limits per SECOND",
        requests: [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ],
        tokens: [
            "x-tokenlimit-limit",
            "x-tokenlimit-remaining",
            "x-tokenlimit-reset",
        ],
        reset: ResetFormat::Seconds,
        window: Some(SECOND),
        time_to_full: true,
    },
    Format {
        source: "LiteLLM proxy's own limiter (litellm source): fixed windows, 60 s by default, \
                 no reset header",
        requests: [
            "x-ratelimit-api_key-limit-requests",
            "x-ratelimit-api_key-remaining-requests",
            "",
        ],
        tokens: [
            "x-ratelimit-api_key-limit-tokens",
            "x-ratelimit-api_key-remaining-tokens",
            "",
        ],
        reset: ResetFormat::Seconds,
        window: Some(MINUTE),
        time_to_full: false,
    },
];

/// How a retry-after header writes its wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitFormat {
    Millis,
    /// Seconds (integer or fractional), or an HTTP date.
    SecondsOrDate,
}

/// Headers that say how long to wait after a refusal, most precise first. LiteLLM passes the
/// upstream's on with an `llm_provider-` prefix and may leave out the bare one (litellm issue
/// 21553).
const RETRY_AFTER: &[(&str, WaitFormat)] = &[
    // OpenAI and Azure (non-standard, read first by the official SDKs).
    ("retry-after-ms", WaitFormat::Millis),
    // RFC 9110: OpenAI, Anthropic, Groq, OpenRouter, Azure.
    ("retry-after", WaitFormat::SecondsOrDate),
    ("llm_provider-retry-after-ms", WaitFormat::Millis),
    ("llm_provider-retry-after", WaitFormat::SecondsOrDate),
];

/// One budget as the server described it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LimitSnapshot {
    /// What the budget admits per window.
    pub limit: Option<u64>,
    /// What is left of it now.
    pub remaining: Option<u64>,
    /// Time until the budget is full again, or (see `time_to_full`) until its window ends;
    /// never negative.
    pub reset: Option<Duration>,
    /// The window `limit` counts, when the format states it (else see [`Self::window`]).
    pub stated_window: Option<Duration>,
    /// Whether `reset` is the time until the budget is full again (a bucket refilling
    /// continuously) rather than the end of a fixed window.
    pub time_to_full: bool,
}

impl LimitSnapshot {
    fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset.is_none()
    }

    /// The window the limit counts. Stated by the format, or else inferred: a budget that
    /// refills continuously is full again after `T = W * (L - R) / L`, so `W ~ T * L / (L - R)`
    /// (OpenAI: 12 ms * 5000 / 1 = 60 s; Groq's requests: 179.56 s * 14400 / 30 ~ 86,200 s).
    ///
    /// The estimate is snapped to a minute, an hour or a day and is never below a minute: a
    /// per-minute limit enforced over one-second windows reports `remaining` of the second
    /// against the limit of the minute (limit 3000, remaining 49, reset 1s), which the formula
    /// would read as 3000 per second, sixty times too fast. Resets are rounded (to 1 ms, or 1 s
    /// by Anthropic, whose window is stated), and the snapping leaves a factor of 7 of room.
    /// A window-end reset only says the window is at least that long.
    pub fn window(&self) -> Duration {
        if let Some(w) = self.stated_window {
            return w;
        }
        let estimate = match (self.limit, self.remaining, self.reset) {
            (Some(l), Some(r), Some(t)) if self.time_to_full && r < l && !t.is_zero() => {
                t.as_secs_f64() * l as f64 / (l - r) as f64
            }
            (_, _, Some(t)) if !self.time_to_full => t.as_secs_f64(),
            _ => return MINUTE,
        };
        if self.time_to_full {
            // The nearest window; the limits are the geometric means of the neighbours.
            if estimate <= (60.0f64 * 3600.0).sqrt() {
                MINUTE
            } else if estimate <= (3600.0f64 * 86_400.0).sqrt() {
                HOUR
            } else {
                DAY
            }
        } else if estimate <= 60.0 {
            MINUTE
        } else if estimate <= 3600.0 {
            HOUR
        } else {
            DAY
        }
    }

    /// Whether the limit, stated per minute or longer, is enforced over a window much shorter
    /// than that: a bucket refilling over the whole window would be full again far sooner
    /// than `reset` says (`W ~ T * L / (L - R)` well under a minute: limit 3000, remaining 46,
    /// reset 0.7 s is a one-second window), so `reset` is when that short window ends, not a
    /// measure of how empty a bucket is.
    pub fn short_window(&self) -> bool {
        match (self.limit, self.remaining, self.reset) {
            (Some(l), Some(r), Some(t))
                if self.time_to_full && r < l && self.stated_window.is_none() =>
            {
                t.as_secs_f64() * (l as f64) / ((l - r) as f64) < 30.0
            }
            _ => false,
        }
    }

    /// Whether the budget is (nearly) used up: nothing left, or less than 1% of the limit
    /// (a token budget refuses a request larger than what is left).
    fn exhausted(&self) -> bool {
        match (self.remaining, self.limit) {
            (Some(0), _) => true,
            (Some(r), Some(l)) => (r as f64) < l as f64 / 100.0,
            _ => false,
        }
    }
}

/// The request and token budgets a response reported.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateLimitHeaders {
    pub requests: LimitSnapshot,
    pub tokens: LimitSnapshot,
}

impl RateLimitHeaders {
    /// Reads the budgets in any format of [`FORMATS`]; `None` when there are none.
    pub fn parse(headers: &HeaderMap, now: SystemTime) -> Option<Self> {
        // Most responses of a server without limits have none: one pass over the names
        // settles that, before the lookups below.
        let (mut limited, mut proxied) = (false, false);
        for k in headers.keys() {
            let k = k.as_str();
            let bare = k.strip_prefix("llm_provider-");
            proxied |= bare.is_some();
            let k = bare.unwrap_or(k);
            limited |= k.starts_with("x-ratelimit-")
                || k.starts_with("anthropic-ratelimit-")
                || k.starts_with("x-tokenlimit-");
        }
        if !limited {
            return None;
        }
        let lookup = |names: [&str; 3], f: &Format| {
            let [limit, remaining, reset] = names.map(|n| header(headers, n, proxied));
            let reset = match reset {
                // Absent, or a placeholder such as Azure's -1: unknown.
                None => None,
                Some(v) if v.starts_with('-') => None,
                // Present but not in this format: not this format.
                Some(v) => Some(parse_reset(v, f.reset, now)?),
            };
            let s = LimitSnapshot {
                limit: limit.and_then(parse_count),
                remaining: remaining.and_then(parse_count),
                reset,
                stated_window: f.window,
                time_to_full: f.time_to_full,
            };
            (!s.is_empty()).then_some(s)
        };
        let first = |pick: fn(&Format) -> [&'static str; 3]| {
            FORMATS
                .iter()
                .find_map(|f| lookup(pick(f), f))
                .unwrap_or_default()
        };
        let parsed = RateLimitHeaders {
            requests: first(|f| f.requests),
            tokens: first(|f| f.tokens),
        };
        (!parsed.requests.is_empty() || !parsed.tokens.is_empty()).then_some(parsed)
    }

    /// On a refusal: the time until the exhausted budget is back (the longest, if both are),
    /// for servers that say no more than that (litellm forwards resets but no `retry-after`).
    pub fn exhausted_reset(&self) -> Option<Duration> {
        [self.requests, self.tokens]
            .iter()
            .filter(|s| s.exhausted())
            .filter_map(|s| s.reset)
            .max()
    }
}

/// A header's value, or (if `proxied`: there are such headers) that of its copy under
/// LiteLLM's `llm_provider-` prefix.
fn header<'a>(headers: &'a HeaderMap, name: &str, proxied: bool) -> Option<&'a str> {
    if name.is_empty() {
        return None;
    }
    let value = headers.get(name).or_else(|| {
        proxied
            .then(|| headers.get(format!("llm_provider-{name}").as_str()))
            .flatten()
    })?;
    value.to_str().ok().map(str::trim)
}

/// The wait a refusal's headers ask for: the first of [`RETRY_AFTER`] present and valid.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    RETRY_AFTER.iter().find_map(|(name, format)| {
        let v = headers.get(*name)?.to_str().ok()?.trim();
        match format {
            WaitFormat::Millis => seconds(v).map(|ms| Duration::from_secs_f64(ms / 1000.0)),
            WaitFormat::SecondsOrDate => seconds(v).map(Duration::from_secs_f64).or_else(|| {
                let at = httpdate::parse_http_date(v).ok()?;
                Some(at.duration_since(now).unwrap_or(Duration::ZERO))
            }),
        }
    })
}

/// A non-negative, finite number (not too large to be a `Duration`).
fn seconds(s: &str) -> Option<f64> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && (0.0..1e12).contains(v))
}

fn parse_reset(s: &str, format: ResetFormat, now: SystemTime) -> Option<Duration> {
    match format {
        ResetFormat::GoDuration => parse_go_duration(s),
        ResetFormat::Rfc3339 => parse_rfc3339_reset(s, now),
        ResetFormat::Seconds => seconds(s).map(Duration::from_secs_f64),
        ResetFormat::EpochMillis => {
            let ms = s.parse::<u64>().ok().filter(|ms| *ms >= 100_000_000_000)?;
            let at = SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms))?;
            Some(at.duration_since(now).unwrap_or(Duration::ZERO))
        }
    }
}

/// A count; `-1` (Azure, "unknown") and other negatives are treated as absent.
fn parse_count(s: &str) -> Option<u64> {
    s.parse::<u64>().ok().or_else(|| {
        s.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| v as u64)
    })
}

/// Parses a Go `time.Duration` string: a sequence of decimal numbers, each with a unit of `h`,
/// `m`, `s`, `ms`, `us`/`µs` or `ns` (`1m30.5s`, `20ms`, `0s`). A bare number is seconds.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && (0.0..1e12).contains(&secs))
            .then(|| Duration::from_secs_f64(secs));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    (total.is_finite() && total < 1e12).then(|| Duration::from_secs_f64(total))
}

/// Time from `now` until an RFC 3339 timestamp (zero if it has passed).
pub fn parse_rfc3339_reset(s: &str, now: SystemTime) -> Option<Duration> {
    let at = humantime::parse_rfc3339_weak(s.trim_end_matches('Z').trim_end_matches('z'))
        .ok()
        .or_else(|| humantime::parse_rfc3339(s).ok())?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn ms(v: u64) -> Option<Duration> {
        Some(Duration::from_millis(v))
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn go_durations_in_every_format() {
        assert_eq!(parse_go_duration("1s"), ms(1000));
        assert_eq!(parse_go_duration("6m0s"), ms(360_000));
        assert_eq!(parse_go_duration("20ms"), ms(20));
        assert_eq!(parse_go_duration("12ms"), ms(12));
        assert_eq!(parse_go_duration("1.5s"), ms(1500));
        assert_eq!(parse_go_duration("1m30.5s"), ms(90_500));
        assert_eq!(parse_go_duration("2m59.56s"), ms(179_560));
        assert_eq!(parse_go_duration("1h2m3s"), ms(3_723_000));
        assert_eq!(parse_go_duration("0s"), ms(0));
        assert_eq!(parse_go_duration("250us"), Some(Duration::from_micros(250)));
        assert_eq!(parse_go_duration("250µs"), Some(Duration::from_micros(250)));
        assert_eq!(parse_go_duration("7"), ms(7000));
        for bad in ["", "s", "5x", "1m-3s", "abc", "-1", "1e300", "NaN", "inf"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_resets_are_relative_to_now() {
        let now = at("2026-11-26T01:00:00Z");
        assert_eq!(
            parse_rfc3339_reset("2026-11-26T01:00:01Z", now),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            parse_rfc3339_reset("2026-11-26T01:00:00.250Z", now),
            ms(250)
        );
        // Anthropic's resets may lie in the past: the budget is full now.
        assert_eq!(
            parse_rfc3339_reset("2026-11-26T00:59:00Z", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_rfc3339_reset("yesterday", now), None);
    }

    /// Headers as in shared/reference/examples/openai-ratelimit-headers.txt.
    fn reference_headers(keep: impl Fn(&str) -> bool) -> HeaderMap {
        let text = include_str!("../../../tests/fixtures/reference/openai-ratelimit-headers.txt");
        let pairs: Vec<_> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(": "))
            .filter(|(k, _)| keep(k))
            .collect();
        map(&pairs)
    }

    #[test]
    fn openai_reference_headers() {
        let h = reference_headers(|k| k.starts_with("x-ratelimit"));
        let r = RateLimitHeaders::parse(&h, SystemTime::now()).unwrap();
        assert_eq!(r.requests.limit, Some(5000));
        assert_eq!(r.requests.remaining, Some(4999));
        assert_eq!(r.requests.reset, ms(12));
        assert_eq!(r.tokens.limit, Some(2_000_000));
        assert_eq!(r.tokens.remaining, Some(1_999_200));
        assert_eq!(r.tokens.reset, ms(24));
        // 12 ms * 5000 / 1 = 60 s; 24 ms * 2e6 / 800 = 60 s.
        assert_eq!(r.requests.window(), MINUTE);
        assert_eq!(r.tokens.window(), MINUTE);
    }

    #[test]
    fn anthropic_reference_headers() {
        let h = reference_headers(|k| k.starts_with("anthropic-"));
        let r = RateLimitHeaders::parse(&h, at("2026-11-26T01:00:00Z")).unwrap();
        assert_eq!(r.requests.limit, Some(4000));
        assert_eq!(r.requests.reset, Some(Duration::from_secs(1)));
        // No combined token budget: the input-token one.
        assert_eq!(r.tokens.limit, Some(400_000));
        assert_eq!(r.tokens.remaining, Some(399_000));
        // Stated, not inferred: 1 s * 4000 / 1 would read as more than an hour.
        assert_eq!(r.requests.window(), MINUTE);
    }

    #[test]
    fn anthropic_combined_token_budget_first_and_past_resets() {
        let h = map(&[
            ("anthropic-ratelimit-tokens-limit", "96000"),
            ("anthropic-ratelimit-tokens-remaining", "0"),
            ("anthropic-ratelimit-tokens-reset", "2026-11-26T00:59:59Z"),
            ("anthropic-ratelimit-input-tokens-limit", "80000"),
        ]);
        let r = RateLimitHeaders::parse(&h, at("2026-11-26T01:00:00Z")).unwrap();
        assert_eq!(r.tokens.limit, Some(96_000));
        assert_eq!(r.tokens.reset, Some(Duration::ZERO));
    }

    #[test]
    fn groq_requests_per_day_are_inferred_from_the_reset() {
        // console.groq.com/docs/rate-limits: requests per day, tokens per minute, same names.
        let h = map(&[
            ("x-ratelimit-limit-requests", "14400"),
            ("x-ratelimit-remaining-requests", "14370"),
            ("x-ratelimit-reset-requests", "2m59.56s"),
            ("x-ratelimit-limit-tokens", "18000"),
            ("x-ratelimit-remaining-tokens", "17997"),
            ("x-ratelimit-reset-tokens", "10ms"),
        ]);
        let r = RateLimitHeaders::parse(&h, SystemTime::now()).unwrap();
        assert_eq!(r.requests.reset, ms(179_560));
        assert_eq!(r.requests.window(), DAY);
        assert_eq!(r.tokens.window(), MINUTE);
    }

    #[test]
    fn a_one_second_window_is_read_as_a_minute_limit() {
        // A per-minute limit enforced per second: remaining counts the second.
        let h = map(&[
            ("x-ratelimit-limit-requests", "3000"),
            ("x-ratelimit-remaining-requests", "49"),
            ("x-ratelimit-reset-requests", "1s"),
        ]);
        let r = RateLimitHeaders::parse(&h, SystemTime::now()).unwrap();
        assert_eq!(r.requests.reset, ms(1000));
        assert_eq!(r.requests.window(), MINUTE);
        assert_eq!(r.tokens, LimitSnapshot::default());
    }

    #[test]
    fn cerebras_names_the_window_and_writes_float_seconds() {
        let h = map(&[
            ("x-ratelimit-limit-requests-day", "14400"),
            ("x-ratelimit-remaining-requests-day", "14399"),
            ("x-ratelimit-reset-requests-day", "33011.38"),
            ("x-ratelimit-limit-tokens-minute", "60000"),
            ("x-ratelimit-remaining-tokens-minute", "59000"),
            ("x-ratelimit-reset-tokens-minute", "11.5"),
        ]);
        let r = RateLimitHeaders::parse(&h, SystemTime::now()).unwrap();
        assert_eq!(r.requests.limit, Some(14_400));
        assert_eq!(r.requests.reset, ms(33_011_380));
        assert_eq!(r.requests.window(), DAY);
        assert_eq!(r.tokens.remaining, Some(59_000));
        assert_eq!(r.tokens.reset, ms(11_500));
        assert_eq!(r.tokens.window(), MINUTE);
    }

    #[test]
    fn openrouter_resets_are_epoch_milliseconds() {
        let now = at("2026-11-26T01:00:00Z");
        let reset = now + Duration::from_millis(12_500);
        let epoch_ms = reset
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            .to_string();
        let h = map(&[
            ("X-RateLimit-Limit", "20"),
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", &epoch_ms),
        ]);
        let r = RateLimitHeaders::parse(&h, now).unwrap();
        assert_eq!(r.requests.limit, Some(20));
        assert_eq!(r.requests.reset, ms(12_500));
        assert!(!r.requests.time_to_full);
        assert_eq!(r.requests.window(), MINUTE);
        assert_eq!(r.exhausted_reset(), ms(12_500));
        // A daily budget's window ends hours away: at least an hour, read as a day.
        let later = (now + Duration::from_secs(5 * 3600))
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            .to_string();
        let h = map(&[("X-RateLimit-Limit", "50"), ("X-RateLimit-Reset", &later)]);
        let r = RateLimitHeaders::parse(&h, now).unwrap();
        assert_eq!(r.requests.window(), DAY);
    }

    #[test]
    fn together_shares_the_names_but_counts_seconds() {
        let h = map(&[
            ("x-ratelimit-limit", "10"),
            ("x-ratelimit-remaining", "9"),
            ("x-ratelimit-reset", "0.1"),
            ("x-tokenlimit-limit", "2000"),
            ("x-tokenlimit-remaining", "1900"),
        ]);
        let r = RateLimitHeaders::parse(&h, SystemTime::now()).unwrap();
        assert_eq!(r.requests.limit, Some(10));
        assert_eq!(r.requests.reset, ms(100));
        assert_eq!(r.requests.window(), SECOND);
        assert_eq!(r.tokens.limit, Some(2000));
        assert_eq!(r.tokens.window(), SECOND);
    }

    #[test]
    fn litellm_prefixed_and_descriptor_headers() {
        // Upstream limits forwarded bare, their resets only under the llm_provider- prefix.
        let h = map(&[
            ("x-ratelimit-limit-requests", "5000"),
            ("x-ratelimit-remaining-requests", "4999"),
            ("llm_provider-x-ratelimit-reset-requests", "12ms"),
        ]);
        let r = RateLimitHeaders::parse(&h, SystemTime::now()).unwrap();
        assert_eq!(r.requests.reset, ms(12));
        // LiteLLM's own limiter.
        let h = map(&[
            ("x-ratelimit-api_key-limit-requests", "100"),
            ("x-ratelimit-api_key-remaining-requests", "97"),
        ]);
        let r = RateLimitHeaders::parse(&h, SystemTime::now()).unwrap();
        assert_eq!(r.requests.limit, Some(100));
        assert_eq!(r.requests.window(), MINUTE);
    }

    #[test]
    fn placeholders_and_garbage_are_unknown() {
        assert_eq!(
            RateLimitHeaders::parse(&HeaderMap::new(), SystemTime::now()),
            None
        );
        // Azure's Responses API sends -1 placeholders.
        let h = map(&[
            ("x-ratelimit-limit-requests", "-1"),
            ("x-ratelimit-remaining-requests", "-1"),
            ("x-ratelimit-reset-requests", "-1"),
        ]);
        assert_eq!(RateLimitHeaders::parse(&h, SystemTime::now()), None);
        let h = map(&[
            ("x-ratelimit-limit-tokens", "lots"),
            ("x-ratelimit-remaining-tokens", "1e400"),
        ]);
        assert_eq!(RateLimitHeaders::parse(&h, SystemTime::now()), None);
    }

    #[test]
    fn window_inference_edge_cases() {
        let s = |l, r, t: u64, ttf| LimitSnapshot {
            limit: Some(l),
            remaining: Some(r),
            reset: Some(Duration::from_millis(t)),
            stated_window: None,
            time_to_full: ttf,
        };
        // Nothing used, or a zero reset: nothing to infer from.
        assert_eq!(s(100, 100, 5000, true).window(), MINUTE);
        assert_eq!(s(100, 50, 0, true).window(), MINUTE);
        // 36 s to refill 1 of 100: per hour.
        assert_eq!(s(100, 99, 36_000, true).window(), HOUR);
        // Window ends: at least that long.
        assert_eq!(s(100, 0, 30_000, false).window(), MINUTE);
        assert_eq!(s(100, 0, 600_000, false).window(), HOUR);
        assert_eq!(s(100, 0, 7_200_000, false).window(), DAY);
    }

    #[test]
    fn exhausted_budget_reset() {
        let h = map(&[
            ("x-ratelimit-limit-requests", "5000"),
            ("x-ratelimit-remaining-requests", "4000"),
            ("x-ratelimit-reset-requests", "12s"),
            ("x-ratelimit-limit-tokens", "200000"),
            ("x-ratelimit-remaining-tokens", "500"),
            ("x-ratelimit-reset-tokens", "90ms"),
        ]);
        let r = RateLimitHeaders::parse(&h, SystemTime::now()).unwrap();
        assert_eq!(r.exhausted_reset(), ms(90));
        let h = map(&[
            ("x-ratelimit-limit-requests", "5000"),
            ("x-ratelimit-remaining-requests", "4000"),
            ("x-ratelimit-reset-requests", "12s"),
        ]);
        let r = RateLimitHeaders::parse(&h, SystemTime::now()).unwrap();
        assert_eq!(r.exhausted_reset(), None);
    }

    #[test]
    fn retry_after_in_every_form() {
        let now = at("2015-10-21T07:28:00Z");
        let wait = |pairs: &[(&str, &str)]| retry_after(&map(pairs), now);
        assert_eq!(wait(&[("retry-after", "2")]), ms(2000));
        assert_eq!(wait(&[("retry-after", "1.5")]), ms(1500));
        assert_eq!(
            wait(&[("retry-after", "2"), ("retry-after-ms", "90")]),
            ms(90)
        );
        assert_eq!(
            wait(&[("retry-after", "2"), ("retry-after-ms", "junk")]),
            ms(2000)
        );
        assert_eq!(
            wait(&[("retry-after", "Wed, 21 Oct 2015 07:28:30 GMT")]),
            ms(30_000)
        );
        assert_eq!(
            wait(&[("retry-after", "Wed, 21 Oct 2015 07:27:00 GMT")]),
            Some(Duration::ZERO)
        );
        assert_eq!(wait(&[("llm_provider-retry-after", "60")]), ms(60_000));
        assert_eq!(wait(&[("llm_provider-retry-after-ms", "250")]), ms(250));
        assert_eq!(
            wait(&[("retry-after", "5"), ("llm_provider-retry-after", "60")]),
            ms(5000)
        );
        for bad in ["-1", "soon", "NaN", "1e300", ""] {
            assert_eq!(wait(&[("retry-after", bad)]), None, "{bad}");
        }
    }
}

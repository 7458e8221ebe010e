//! What servers say about their rate limits, parsed from response headers.
//!
//! OpenAI sends `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` with resets as Go-style
//! durations (`1s`, `6m0s`, `20ms`, `1m30.5s`): the time until the bucket is full again.
//! Anthropic sends `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-*` with
//! resets as RFC 3339 timestamps. Both become one [`RateLimitHeaders`].

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

/// One budget as the server described it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LimitSnapshot {
    /// The per-minute limit.
    pub limit: Option<u64>,
    /// What is left of it now.
    pub remaining: Option<u64>,
    /// Time until the budget is fully replenished.
    pub reset: Option<Duration>,
}

impl LimitSnapshot {
    fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset.is_none()
    }
}

/// The request and token budgets a response reported.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateLimitHeaders {
    pub requests: LimitSnapshot,
    pub tokens: LimitSnapshot,
}

impl RateLimitHeaders {
    /// Reads OpenAI's or Anthropic's headers; `None` when there are none.
    pub fn parse(headers: &HeaderMap, now: SystemTime) -> Option<Self> {
        // Most responses of a server without limits have none: one pass over the names
        // settles that, before the eighteen lookups below.
        let limited = headers.keys().any(|k| {
            let k = k.as_str();
            k.starts_with("x-ratelimit-") || k.starts_with("anthropic-ratelimit-")
        });
        if !limited {
            return None;
        }
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let number = |name: &str| get(name).and_then(parse_count);
        let openai = |[limit, remaining, reset]: [&str; 3]| LimitSnapshot {
            limit: number(limit),
            remaining: number(remaining),
            reset: get(reset).and_then(parse_go_duration),
        };
        let anthropic = |[limit, remaining, reset]: [&str; 3]| LimitSnapshot {
            limit: number(limit),
            remaining: number(remaining),
            reset: get(reset).and_then(|s| parse_rfc3339_reset(s, now)),
        };
        let first = |a: LimitSnapshot, b: LimitSnapshot| if a.is_empty() { b } else { a };
        let parsed = RateLimitHeaders {
            requests: first(
                openai([
                    "x-ratelimit-limit-requests",
                    "x-ratelimit-remaining-requests",
                    "x-ratelimit-reset-requests",
                ]),
                anthropic([
                    "anthropic-ratelimit-requests-limit",
                    "anthropic-ratelimit-requests-remaining",
                    "anthropic-ratelimit-requests-reset",
                ]),
            ),
            // Anthropic's combined token budget when present, else its input-token budget (the
            // one a prompt-heavy batch job runs into).
            tokens: first(
                openai([
                    "x-ratelimit-limit-tokens",
                    "x-ratelimit-remaining-tokens",
                    "x-ratelimit-reset-tokens",
                ]),
                first(
                    anthropic([
                        "anthropic-ratelimit-tokens-limit",
                        "anthropic-ratelimit-tokens-remaining",
                        "anthropic-ratelimit-tokens-reset",
                    ]),
                    anthropic([
                        "anthropic-ratelimit-input-tokens-limit",
                        "anthropic-ratelimit-input-tokens-remaining",
                        "anthropic-ratelimit-input-tokens-reset",
                    ]),
                ),
            ),
        };
        (!parsed.requests.is_empty() || !parsed.tokens.is_empty()).then_some(parsed)
    }
}

/// A count; Azure sends `-1` for "no limit", which is treated as absent.
fn parse_count(s: &str) -> Option<u64> {
    s.parse::<u64>().ok().or_else(|| {
        s.parse::<f64>()
            .ok()
            .filter(|v| *v >= 0.0)
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
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
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
    Some(Duration::from_secs_f64(total))
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

    #[test]
    fn go_durations_in_every_format() {
        let ms = |v: u64| Some(Duration::from_millis(v));
        assert_eq!(parse_go_duration("1s"), ms(1000));
        assert_eq!(parse_go_duration("6m0s"), ms(360_000));
        assert_eq!(parse_go_duration("20ms"), ms(20));
        assert_eq!(parse_go_duration("12ms"), ms(12));
        assert_eq!(parse_go_duration("1.5s"), ms(1500));
        assert_eq!(parse_go_duration("1m30.5s"), ms(90_500));
        assert_eq!(parse_go_duration("1h2m3s"), ms(3_723_000));
        assert_eq!(parse_go_duration("0s"), ms(0));
        assert_eq!(parse_go_duration("250us"), Some(Duration::from_micros(250)));
        assert_eq!(parse_go_duration("250µs"), Some(Duration::from_micros(250)));
        assert_eq!(parse_go_duration("7"), ms(7000));
        for bad in ["", "s", "5x", "1m-3s", "abc"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_resets_are_relative_to_now() {
        let now = humantime::parse_rfc3339("2026-11-26T01:00:00Z").unwrap();
        assert_eq!(
            parse_rfc3339_reset("2026-11-26T01:00:01Z", now),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            parse_rfc3339_reset("2026-11-26T01:00:00.250Z", now),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_rfc3339_reset("2026-11-26T00:59:00Z", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_rfc3339_reset("yesterday", now), None);
    }

    /// Headers as in shared/reference/examples/openai-ratelimit-headers.txt.
    fn reference_headers() -> Vec<(String, String)> {
        let text = include_str!("../../../tests/fixtures/reference/openai-ratelimit-headers.txt");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn header_map(pairs: &[(String, String)], keep: impl Fn(&str) -> bool) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs.iter().filter(|(k, _)| keep(k)) {
            h.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn openai_reference_headers() {
        let h = header_map(&reference_headers(), |k| k.starts_with("x-ratelimit"));
        let r = RateLimitHeaders::parse(&h, SystemTime::now()).unwrap();
        assert_eq!(r.requests.limit, Some(5000));
        assert_eq!(r.requests.remaining, Some(4999));
        assert_eq!(r.requests.reset, Some(Duration::from_millis(12)));
        assert_eq!(r.tokens.limit, Some(2_000_000));
        assert_eq!(r.tokens.remaining, Some(1_999_200));
        assert_eq!(r.tokens.reset, Some(Duration::from_millis(24)));
    }

    #[test]
    fn anthropic_reference_headers() {
        let h = header_map(&reference_headers(), |k| k.starts_with("anthropic-"));
        let now = humantime::parse_rfc3339("2026-11-26T01:00:00Z").unwrap();
        let r = RateLimitHeaders::parse(&h, now).unwrap();
        assert_eq!(r.requests.limit, Some(4000));
        assert_eq!(r.requests.reset, Some(Duration::from_secs(1)));
        assert_eq!(r.tokens.limit, Some(400_000));
        assert_eq!(r.tokens.remaining, Some(399_000));
    }

    #[test]
    fn no_headers_no_snapshot() {
        assert_eq!(
            RateLimitHeaders::parse(&HeaderMap::new(), SystemTime::now()),
            None
        );
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit-requests", HeaderValue::from_static("-1"));
        assert_eq!(RateLimitHeaders::parse(&h, SystemTime::now()), None);
    }
}

//! The providers: one module per wire format, each mapping its API to one [`Completion`] and
//! classifying its failures into an [`ErrorKind`] that says whether to retry.
//!
//! The scheduler only ever sees these types, so adding a provider means adding a module, not
//! touching the run loop.

pub mod openai;

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;

pub use crate::limiter::RateLimitHeaders;
use reqwest::header::HeaderMap;
use serde::Serialize;

/// One request, as rendered from a row; each provider turns it into its own wire format.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    pub model: String,
    pub system: Option<String>,
    pub user: String,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    /// The `--schema` the answer must fit, sent the provider's native way (shared by every
    /// row's request).
    #[serde(skip)]
    pub schema: Option<std::sync::Arc<crate::schema::OutputSchema>>,
}

/// Token usage as the server reported it, normalised: `prompt_tokens` is all input tokens, and
/// `cached_tokens` and `cache_write_tokens` are parts of it; `reasoning_tokens` is part of
/// `completion_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub usage: Usage,
    /// `stop`, `length`, ... as the server said it.
    pub finish_reason: Option<String>,
    /// The model that answered (often a dated name such as `gpt-4.1-mini-2025-04-14`).
    pub model: Option<String>,
    pub request_id: Option<String>,
    /// The rate-limit headers that came with the answer.
    pub rate_limits: Option<RateLimitHeaders>,
}

/// What went wrong with one attempt, in the terms that decide what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The attempt took longer than `--timeout`.
    Timeout,
    /// Could not connect, or the connection broke before a whole response arrived.
    Connection,
    /// 429 rate limit: slow down and try again.
    RateLimited,
    /// 5xx, 408 or 409: the server's trouble, worth another try.
    Server,
    /// 200, but the body is not a usable answer (malformed JSON, missing fields).
    InvalidResponse,
    /// A complete, billed answer that does not fit `--schema` (not JSON, or not valid against
    /// it). Retried up to `--schema-retries`, apart from the other retries.
    InvalidAnswer,
    /// Out of credit or over a billing limit: no request can succeed, so the run stops.
    QuotaExhausted,
    /// 401/403: the key is wrong or lacks access; the run stops.
    Auth,
    /// Any other 4xx: this request is wrong and sending it again will not help.
    Rejected,
}

impl ErrorKind {
    /// Whether this kind is retried by default (a server's `x-should-retry` overrides it).
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Timeout
                | ErrorKind::Connection
                | ErrorKind::RateLimited
                | ErrorKind::Server
                | ErrorKind::InvalidResponse
        )
    }

    /// Whether no later request can succeed either, so dispatching must stop.
    pub fn stops_run(self) -> bool {
        matches!(self, ErrorKind::QuotaExhausted | ErrorKind::Auth)
    }

    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection error",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::Server => "server error",
            ErrorKind::InvalidResponse => "invalid response",
            ErrorKind::InvalidAnswer => "invalid answer",
            ErrorKind::QuotaExhausted => "quota exhausted",
            ErrorKind::Auth => "authentication error",
            ErrorKind::Rejected => "request rejected",
        }
    }
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    pub kind: ErrorKind,
    pub status: Option<u16>,
    /// The server's message or the transport error, never containing the API key.
    pub message: String,
    /// How long the server asked us to wait (`retry-after-ms`, `retry-after`).
    pub retry_after: Option<Duration>,
    /// The server's `x-should-retry` verdict, which overrides the default for `kind`.
    pub should_retry: Option<bool>,
    pub request_id: Option<String>,
    /// The rate-limit headers that came with the error response (boxed: errors travel in
    /// `Result`s and should stay small).
    pub rate_limits: Option<Box<RateLimitHeaders>>,
}

impl CallError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CallError {
            kind,
            status: None,
            message: message.into(),
            retry_after: None,
            should_retry: None,
            request_id: None,
            rate_limits: None,
        }
    }

    pub fn retryable(&self) -> bool {
        self.should_retry.unwrap_or_else(|| self.kind.retryable())
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "{} (HTTP {s}): {}", self.kind.label(), self.message),
            None => write!(f, "{}: {}", self.kind.label(), self.message),
        }
    }
}

/// One attempt on the wire: the outcome, plus what came back raw, for the audit log.
#[derive(Debug)]
pub struct Exchange {
    pub outcome: Result<Completion, CallError>,
    /// The HTTP status, if a response arrived.
    pub status: Option<u16>,
    /// The response body as received (possibly cut short).
    pub body: Option<bytes::Bytes>,
    /// The response headers worth keeping (see [`kept_headers`]).
    pub headers: Vec<(String, String)>,
}

impl Exchange {
    /// An attempt that failed before any response arrived.
    pub fn failed(e: CallError) -> Self {
        Exchange {
            outcome: Err(e),
            status: None,
            body: None,
            headers: Vec::new(),
        }
    }
}

/// Sends requests of one wire format.
pub trait Provider: Send + Sync {
    /// Where requests go; with the body, it identifies a request (resume, cache).
    fn endpoint(&self) -> &str;
    /// The exact JSON body sent for `req`. Rendered once per row and reused for every attempt.
    fn body(&self, req: &Request) -> Vec<u8>;
    /// Sends one attempt.
    fn send(&self, body: bytes::Bytes) -> BoxFuture<'_, Exchange>;
}

/// Response headers that say something about the request or the limits; the rest (and every
/// request header, the key among them) is never kept.
pub fn kept_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| {
            let n = name.as_str();
            n.starts_with("x-ratelimit-")
                || n.starts_with("anthropic-ratelimit-")
                || n.starts_with("retry-after")
                || n.starts_with("openai-")
                || matches!(n, "x-request-id" | "request-id" | "x-should-retry")
        })
        .filter_map(|(name, v)| Some((name.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// The HTTP client every provider shares: connection pool sized for the run, no overall timeout
/// (the scheduler times each attempt, body included).
pub fn http_client(concurrency: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency.max(1))
        .pool_idle_timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .user_agent(concat!("batch/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a TLS backend is compiled in")
}

/// Classifies a transport-level failure.
pub fn transport_error(e: &reqwest::Error) -> CallError {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connection
    };
    // The chain holds the useful part ("connection refused", "connection reset").
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    CallError::new(kind, msg)
}

/// The server's requested wait: `retry-after-ms` first (OpenAI), then `retry-after` in seconds.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    let secs = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
    if let Some(ms) = header("retry-after-ms").and_then(secs) {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    header("retry-after")
        .and_then(secs)
        .map(Duration::from_secs_f64)
}

/// The server's `x-should-retry` verdict, if it gave one.
pub fn should_retry(headers: &HeaderMap) -> Option<bool> {
    match headers.get("x-should-retry")?.to_str().ok()? {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Keeps error messages from servers to a readable size.
pub fn truncate_message(s: &str) -> String {
    const MAX: usize = 500;
    let s = s.trim();
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_prefers_milliseconds() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("90"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(90)));
        h.insert("retry-after-ms", HeaderValue::from_static("junk"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after", HeaderValue::from_static("1.5"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn should_retry_header_overrides_kind() {
        let mut e = CallError::new(ErrorKind::Rejected, "x");
        assert!(!e.retryable());
        e.should_retry = Some(true);
        assert!(e.retryable());
        let mut e = CallError::new(ErrorKind::Server, "x");
        e.should_retry = Some(false);
        assert!(!e.retryable());
    }

    #[test]
    fn long_messages_are_cut_on_char_boundaries() {
        let s = "é".repeat(400);
        let t = truncate_message(&s);
        assert!(t.ends_with('…') && t.len() < s.len());
    }
}

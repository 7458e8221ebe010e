//! The three wire formats the mock serves, and where each one's shapes are built: OpenAI Chat
//! Completions (in `mock.rs`), OpenAI Responses (`responses.rs`) and Anthropic Messages
//! (`messages.rs`). The serving machinery (limits, latency, errors, faults) is shared; only the
//! bodies, error shapes and header names differ.

use std::time::{Instant, SystemTime};

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::ratelimit::{Limits, Rejection};
use super::{Answer, error_body, fault, messages, reply, responses, routes, stream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wire {
    Chat,
    Responses,
    Messages,
}

/// What a request asked for, or the error status and body it gets.
pub(super) type Parsed = Result<(Incoming, Answer), (StatusCode, String)>;

/// The parts of a request the mock needs after parsing it.
pub(super) struct Incoming {
    pub model: String,
    /// `stream: true`: the answer goes out as server-sent events.
    pub stream: bool,
    /// Chat's `stream_options.include_usage`: a last chunk carries the usage.
    pub stream_usage: bool,
    /// Chat's `n`: how many choices the answer has (each the same).
    pub choices: u32,
}

impl Incoming {
    pub fn new(model: String) -> Self {
        Incoming {
            model,
            stream: false,
            stream_usage: false,
            choices: 1,
        }
    }
}

impl Wire {
    /// Checks the request's shape (headers and body) as the real API would, and works out the
    /// answer it gets.
    /// `spoil` spoils the answer of a request with a schema (`--invalid-json-rate`).
    pub fn parse(self, headers: &HeaderMap, body: &[u8], spoil: Option<f64>) -> Parsed {
        match self {
            Wire::Chat => super::parse(body, spoil).map_err(|e| (StatusCode::BAD_REQUEST, e)),
            Wire::Responses => responses::parse(body, spoil),
            Wire::Messages => messages::parse(headers, body, spoil),
        }
    }

    /// The 401 for a request without a key, where this format checks it here: OpenAI's with
    /// `--require-key` (Anthropic's key is checked with the rest of the request).
    pub fn missing_key(self, headers: &HeaderMap, required: bool) -> Option<(StatusCode, String)> {
        match self {
            Wire::Chat | Wire::Responses if required && !routes::has_bearer(headers) => {
                Some((StatusCode::UNAUTHORIZED, routes::missing_key_body()))
            }
            _ => None,
        }
    }

    /// The 200 body for answer `a` to request number `n`.
    pub fn success(self, req: &Incoming, a: &Answer, n: u64) -> String {
        match self {
            Wire::Chat => super::completion(req, a, n),
            Wire::Responses => responses::body(&req.model, a, n),
            Wire::Messages => messages::body(&req.model, a, n),
        }
    }

    /// The 200 `body` (from [`Wire::success`]) as the server-sent events of a streamed answer.
    pub fn stream(self, req: &Incoming, body: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        match self {
            Wire::Chat => stream::chat(&v, req.stream_usage),
            Wire::Responses => stream::responses(&v),
            Wire::Messages => stream::messages(&v),
        }
    }

    /// An injected 500 or 503; Anthropic's 503 is its 529 `overloaded_error`.
    pub fn server_error(self, status: StatusCode) -> (StatusCode, String) {
        match self {
            Wire::Chat | Wire::Responses => (status, super::server_error_body(status)),
            Wire::Messages => messages::server_error(status),
        }
    }

    /// The answer once the quota is spent (`--quota-exhausted-after`).
    pub fn quota_error(self) -> (StatusCode, String) {
        match self {
            Wire::Chat | Wire::Responses => (
                StatusCode::TOO_MANY_REQUESTS,
                error_body(
                    "You exceeded your current quota, please check your plan and billing details.",
                    "insufficient_quota",
                    Some("insufficient_quota"),
                ),
            ),
            Wire::Messages => messages::credit_error(),
        }
    }

    /// The 429 body for a request over the limits.
    pub fn rate_limited(self, r: &Rejection, model: &str) -> String {
        match self {
            Wire::Chat | Wire::Responses => r.body(model),
            Wire::Messages => r.anthropic_body(),
        }
    }

    pub fn retry_headers(self, r: &Rejection, headers: &mut HeaderMap) {
        match self {
            Wire::Chat | Wire::Responses => r.retry_headers(headers),
            Wire::Messages => r.anthropic_retry_headers(headers),
        }
    }

    /// The rate-limit headers every response carries while limits are set.
    pub fn limit_headers(self, limits: &mut Limits, headers: &mut HeaderMap) {
        match self {
            Wire::Chat | Wire::Responses => limits.headers(Instant::now(), headers),
            Wire::Messages => limits.anthropic_headers(Instant::now(), SystemTime::now(), headers),
        }
    }

    /// A 200 whose JSON lacks the answer and the usage (`--fault missing-fields`).
    pub fn missing_fields(self, model: &str, n: u64) -> Response {
        let body = match self {
            Wire::Chat => return fault::missing_fields(model, n),
            Wire::Responses => responses::missing_fields(model, n),
            Wire::Messages => messages::missing_fields(model, n),
        };
        reply(StatusCode::OK, body)
    }

    pub fn request_id_header(self) -> &'static str {
        match self {
            Wire::Chat | Wire::Responses => "x-request-id",
            Wire::Messages => "request-id",
        }
    }
}

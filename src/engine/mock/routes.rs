//! What every request meets before its endpoint, and the answers for the paths and methods the
//! mock does not serve: the paths made to 404 (`--not-found`, to imitate a server without
//! `/v1/responses`, say), the key the OpenAI endpoints want (`--require-key`), and 404 / 405 for
//! anything else, as a real server answers them (a path without the `/v1` prefix is a 404 too).
//! Each answer comes in the error shape of the API the path belongs to.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::Response;

use super::{Shared, error_body, messages, reply};

/// Whose error shapes a path answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    OpenAi,
    Anthropic,
    /// The mock's own endpoints (`/stats`), which no option touches.
    Mock,
}

impl Dialect {
    /// `/v1/messages...` is Anthropic's; `/v1/models` is both vendors', told apart by the
    /// headers only Anthropic's clients send.
    pub fn of(path: &str, headers: &HeaderMap) -> Dialect {
        if path == "/stats" || path.starts_with("/stats/") {
            Dialect::Mock
        } else if covers("/v1/messages", path)
            || (covers("/v1/models", path) && is_anthropic_client(headers))
        {
            Dialect::Anthropic
        } else {
            Dialect::OpenAi
        }
    }
}

/// Whether the request comes from an Anthropic client: it names an `anthropic-version` or
/// carries an `x-api-key`.
pub(super) fn is_anthropic_client(headers: &HeaderMap) -> bool {
    headers.contains_key("anthropic-version") || headers.contains_key("x-api-key")
}

/// Whether `prefix` is `path` or one of its parent paths.
fn covers(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// An `Authorization: Bearer <key>` header with a key in it.
pub(super) fn has_bearer(headers: &HeaderMap) -> bool {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, key)| {
            scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty()
        })
}

/// The 401 OpenAI answers a request without a key.
pub(super) fn missing_key_body() -> String {
    error_body(
        "You didn't provide an API key. You need to provide your API key in an Authorization \
         header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field \
         (with blank username) if you're accessing the API from your browser and are prompted \
         for a username. You can obtain an API key from \
         https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        None,
    )
}

/// The endpoints that check the key themselves, so that their 401s count in `/stats`.
const COUNTED: [&str; 2] = ["/v1/chat/completions", "/v1/responses"];

/// Middleware: `--not-found` paths, then `--require-key` for the OpenAI endpoints.
pub(super) async fn gate(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let dialect = Dialect::of(path, req.headers());
    if dialect != Dialect::Mock && s.cfg.server.not_found.iter().any(|p| covers(p, path)) {
        s.unserved.fetch_add(1, Ordering::Relaxed);
        return not_found(dialect, req.method(), path);
    }
    if dialect == Dialect::OpenAi
        && s.cfg.server.require_key
        && !COUNTED.contains(&path)
        && !has_bearer(req.headers())
    {
        return reply(StatusCode::UNAUTHORIZED, missing_key_body());
    }
    next.run(req).await
}

/// 404 for a path no endpoint serves, as OpenAI (`Invalid URL (POST /chat/completions)`) or
/// Anthropic (`not_found_error`) answers it.
fn not_found(dialect: Dialect, method: &Method, path: &str) -> Response {
    let body = match dialect {
        Dialect::Anthropic => messages::error_body("not_found_error", "Not Found"),
        Dialect::OpenAi | Dialect::Mock => error_body(
            &format!("Invalid URL ({method} {path})"),
            "invalid_request_error",
            None,
        ),
    };
    reply(StatusCode::NOT_FOUND, body)
}

/// The router's fallback: no route has this path.
pub(super) async fn fallback(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    s.unserved.fetch_add(1, Ordering::Relaxed);
    not_found(Dialect::of(uri.path(), &headers), &method, uri.path())
}

/// A route has this path, but not for this method.
pub(super) async fn wrong_method(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    s.unserved.fetch_add(1, Ordering::Relaxed);
    let path = uri.path();
    let body = match Dialect::of(path, &headers) {
        Dialect::Anthropic => messages::error_body(
            "invalid_request_error",
            &format!("Method {method} is not allowed for {path}"),
        ),
        Dialect::OpenAi | Dialect::Mock => error_body(
            &format!("Invalid method for URL ({method} {path})"),
            "invalid_request_error",
            None,
        ),
    };
    reply(StatusCode::METHOD_NOT_ALLOWED, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_covers_itself_and_what_is_below_it_only() {
        assert!(covers("/v1/responses", "/v1/responses"));
        assert!(covers("/v1/responses/", "/v1/responses"));
        assert!(covers("/v1/batches", "/v1/batches/batch_1/cancel"));
        assert!(!covers("/v1/batches", "/v1/batchesx"));
        assert!(!covers("/v1/responses", "/v1/chat/completions"));
    }

    #[test]
    fn bearer_needs_a_key() {
        let mut h = HeaderMap::new();
        assert!(!has_bearer(&h));
        h.insert(AUTHORIZATION, "Bearer ".parse().unwrap());
        assert!(!has_bearer(&h));
        h.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(!has_bearer(&h));
        h.insert(AUTHORIZATION, "bearer sk-1".parse().unwrap());
        assert!(has_bearer(&h));
    }
}

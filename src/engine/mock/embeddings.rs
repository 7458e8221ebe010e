//! `POST /v1/embeddings`: deterministic unit vectors made from a hash of each text, so a test
//! can recompute the vector a row should get ([`vector`]) and prove it landed on its own row.
//!
//! The request is checked as OpenAI checks it: a string or an array of at most 2,048 non-empty
//! strings, each within 8,192 tokens and 300,000 in all, `dimensions` only for the
//! `text-embedding-3` models and at most their width. A text containing `BAD_EMBEDDING` makes
//! the whole request a 400 naming its index (`'$.input[3]' is invalid`), as OpenAI answers an
//! input it refuses. Usage is counted with the real tokenizer; the mock's latency, rate limits,
//! injected errors, quota and faults apply as for chat (see the parent module).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::wire::Wire;
use super::{FaultKind, InFlight, Shared, error_body, fault, json_reply, reply, routes, take_turn};
use crate::engine::provider::embeddings::encode;
use crate::engine::tokens;

/// The text that makes a request fail, as an input OpenAI refuses would.
pub const BAD_INPUT_MARKER: &str = "BAD_EMBEDDING";
/// OpenAI's per-request limits.
pub const MAX_INPUTS: usize = 2048;
pub const MAX_INPUT_TOKENS: u64 = 8192;
pub const MAX_REQUEST_TOKENS: u64 = 300_000;

#[derive(Deserialize)]
struct EmbeddingRequest {
    model: String,
    input: serde_json::Value,
    dimensions: Option<u32>,
    encoding_format: Option<String>,
}

/// A request that passed the checks.
struct Asked {
    model: String,
    texts: Vec<String>,
    tokens: u64,
    dims: usize,
    base64: bool,
}

/// The width of `model`'s vectors: 3,072 for `-large`, else 1,536.
pub fn native_dims(model: &str) -> usize {
    if model.contains("large") { 3072 } else { 1536 }
}

/// The mock's vector for `text`: `dims` values from a generator seeded with the text's
/// SHA-256, scaled to length 1 (OpenAI's vectors are unit length too).
pub fn vector(text: &str, dims: usize) -> Vec<f32> {
    let digest = Sha256::digest(text.as_bytes());
    let mut state = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            // SplitMix64: fast, and the same on every machine.
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

fn invalid(message: &str) -> (StatusCode, String) {
    (
        StatusCode::BAD_REQUEST,
        error_body(message, "invalid_request_error", None),
    )
}

/// Checks a request body as OpenAI does.
fn parse(body: &[u8]) -> Result<Asked, (StatusCode, String)> {
    let req: EmbeddingRequest = serde_json::from_slice(body).map_err(|e| {
        invalid(&format!(
            "We could not parse the JSON body of your request: {e}"
        ))
    })?;
    let texts: Vec<String> = match req.input {
        serde_json::Value::String(s) => vec![s],
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                _ => Err(invalid(
                    "'$.input' is invalid. Please check the API reference.",
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(invalid(
                "'$.input' is invalid. Please check the API reference.",
            ));
        }
    };
    if texts.is_empty() || texts.len() > MAX_INPUTS {
        return Err(invalid(&format!(
            "'$.input' must hold 1 to {MAX_INPUTS} inputs; it holds {}",
            texts.len()
        )));
    }
    let mut total = 0;
    for (i, t) in texts.iter().enumerate() {
        if t.is_empty() || t.contains(BAD_INPUT_MARKER) {
            return Err(invalid(&format!(
                "'$.input[{i}]' is invalid. Please check the API reference: \
                 https://platform.openai.com/docs/api-reference."
            )));
        }
        let n = u64::from(tokens::count(&req.model, t));
        if n > MAX_INPUT_TOKENS {
            return Err(invalid(&format!(
                "This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however you \
                 requested {n} tokens in input {i}. Please reduce your prompt."
            )));
        }
        total += n;
    }
    if total > MAX_REQUEST_TOKENS {
        return Err(invalid(&format!(
            "Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per request"
        )));
    }
    let native = native_dims(&req.model);
    let dims = match req.dimensions {
        None => native,
        Some(_) if !req.model.contains("text-embedding-3") => {
            return Err(invalid(
                "This model does not support specifying dimensions.",
            ));
        }
        Some(d) if d == 0 || d as usize > native => {
            return Err(invalid(&format!(
                "'$.dimensions' must be from 1 to {native} for {}",
                req.model
            )));
        }
        Some(d) => d as usize,
    };
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(invalid(&format!(
                "'{other}' is not one of ['float', 'base64'] - 'encoding_format'"
            )));
        }
    };
    Ok(Asked {
        model: req.model,
        texts,
        tokens: total,
        dims,
        base64,
    })
}

/// The 200 body: one vector per input, base64 or floats as asked.
fn success(a: &Asked) -> String {
    let data: Vec<serde_json::Value> = a
        .texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let v = vector(t, a.dims);
            let embedding = if a.base64 {
                json!(encode(&v))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    json!({"object": "list", "data": data, "model": a.model,
        "usage": {"prompt_tokens": a.tokens, "total_tokens": a.tokens}})
    .to_string()
}

/// A request of an embeddings batch: the body `/v1/embeddings` would answer it with and its
/// tokens, or the error status and body it would get.
pub(super) fn batch_answer(
    body: &serde_json::Value,
) -> Result<(serde_json::Value, u64), (StatusCode, String)> {
    let raw = serde_json::to_vec(body).unwrap_or_default();
    let asked = parse(&raw)?;
    let answer = serde_json::from_str(&success(&asked)).unwrap_or_default();
    Ok((answer, asked.tokens))
}

/// The texts a request body carries (a string is one), for the per-batch cap.
pub(super) fn inputs_of(body: &serde_json::Value) -> u64 {
    match &body["input"] {
        serde_json::Value::Array(a) => a.len() as u64,
        _ => 1,
    }
}

/// The route's handler.
pub(super) async fn serve(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (guard, n) = InFlight::enter(&s);
    let (mut resp, status) = if s.cfg.server.require_key && !routes::has_bearer(&headers) {
        json_reply(StatusCode::UNAUTHORIZED, routes::missing_key_body())
    } else {
        respond(&s, n, &body, guard).await
    };
    if let Some(status) = status {
        *s.responses
            .lock()
            .expect("stats lock")
            .entry(status.as_u16())
            .or_default() += 1;
    }
    if let Ok(v) = HeaderValue::from_str(&format!("req_mock_{n}")) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let mut limits = s.limits.lock().expect("limits lock");
    if limits.is_active() && !s.cfg.server.no_limit_headers {
        limits.headers(Instant::now(), resp.headers_mut());
    }
    resp
}

/// Answers request number `n`: quota, limits, latency, injected errors, the checks, faults.
async fn respond(
    s: &Arc<Shared>,
    n: u64,
    body: &[u8],
    guard: InFlight,
) -> (Response, Option<StatusCode>) {
    if s.cfg.quota_exhausted_after.is_some_and(|max| n > max) {
        s.quota_rejected.fetch_add(1, Ordering::Relaxed);
        let (status, body) = Wire::Chat.quota_error();
        return json_reply(status, body);
    }
    let parsed = parse(body);
    if let Ok(a) = &parsed {
        let verdict = s
            .limits
            .lock()
            .expect("limits lock")
            .admit(a.tokens, Instant::now());
        if let Err(rejection) = verdict {
            s.rate_limited.fetch_add(1, Ordering::Relaxed);
            let (mut resp, status) =
                json_reply(StatusCode::TOO_MANY_REQUESTS, rejection.body(&a.model));
            rejection.retry_headers(resp.headers_mut());
            return (resp, status);
        }
    }
    let (permit, plan) = match take_turn(s, parsed.is_ok(), Wire::Chat).await {
        Ok(turn) => turn,
        Err(reply) => return reply,
    };
    let asked = match parsed {
        Ok(a) => a,
        Err((status, body)) => return json_reply(status, body),
    };
    bill(s, &asked);
    let json = success(&asked);
    let Some(kind) = plan.fault else {
        return json_reply(StatusCode::OK, json);
    };
    s.faults[kind.index()].fetch_add(1, Ordering::Relaxed);
    let resp = match kind {
        FaultKind::Reset => return (fault::reset(), None),
        FaultKind::Hang => {
            std::future::pending::<()>().await;
            unreachable!("pending never resolves")
        }
        FaultKind::Truncated => fault::truncated(json),
        FaultKind::Malformed => fault::malformed(json),
        FaultKind::MissingFields => reply(
            StatusCode::OK,
            json!({"object": "list", "model": asked.model}).to_string(),
        ),
        FaultKind::Trickle => fault::trickle(json, s.cfg.trickle, (guard, permit), || {}),
    };
    (resp, Some(StatusCode::OK))
}

/// Counts the request's tokens and what it costs, as the chat endpoints do.
fn bill(s: &Shared, a: &Asked) {
    s.prompt_tokens.fetch_add(a.tokens, Ordering::Relaxed);
    if let Some(price) = s.prices.lookup(&a.model) {
        *s.billed_usd.lock().expect("billed lock") += price.estimate(a.tokens, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_unit_vectors_that_differ_by_text() {
        let a = vector("hello", 64);
        assert_eq!(a, vector("hello", 64));
        assert_ne!(a, vector("hello!", 64));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }

    #[test]
    fn requests_are_checked_as_openai_checks_them() {
        let ok = parse(br#"{"model":"text-embedding-3-small","input":["a b","c"],"dimensions":8,"encoding_format":"base64"}"#)
            .ok()
            .unwrap();
        assert_eq!((ok.texts.len(), ok.dims, ok.base64), (2, 8, true));
        assert!(ok.tokens >= 2);
        for (body, says) in [
            (
                r#"{"model":"m","input":["ok","x BAD_EMBEDDING"]}"#,
                "'$.input[1]' is invalid",
            ),
            (r#"{"model":"m","input":[""]}"#, "'$.input[0]' is invalid"),
            (r#"{"model":"m","input":[]}"#, "1 to 2048"),
            (
                r#"{"model":"text-embedding-ada-002","input":"a","dimensions":8}"#,
                "does not support",
            ),
            (
                r#"{"model":"text-embedding-3-small","input":"a","dimensions":9999}"#,
                "1 to 1536",
            ),
            (
                r#"{"model":"m","input":"a","encoding_format":"hex"}"#,
                "'hex' is not one of",
            ),
        ] {
            let (status, msg) = parse(body.as_bytes()).err().unwrap();
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(msg.contains(says), "{says}: {msg}");
        }
    }

    #[test]
    fn answers_in_the_asked_encoding() {
        let mut a = parse(br#"{"model":"m","input":["x"],"encoding_format":"base64"}"#)
            .ok()
            .unwrap();
        a.dims = 4;
        let v: serde_json::Value = serde_json::from_str(&success(&a)).unwrap();
        let b64 = v["data"][0]["embedding"].as_str().unwrap();
        let decoded = crate::engine::provider::embeddings::decode(b64).unwrap();
        assert_eq!(decoded, vector("x", 4));
        a.base64 = false;
        let v: serde_json::Value = serde_json::from_str(&success(&a)).unwrap();
        assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 4);
        assert_eq!(v["usage"]["prompt_tokens"], a.tokens);
    }
}

//! Anthropic Messages, native (`POST {base}/v1/messages`): `x-api-key` and `anthropic-version`
//! headers, `max_tokens` required, the system prompt at the top level, usage split into fresh,
//! cache-read and cache-write input tokens, and Anthropic's own error shape (529
//! `overloaded_error` among the retryable ones).

use reqwest::header::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

use super::openai::Content;
use super::{
    CallError, Completion, ErrorKind, ExtraHeaders, HttpProvider, Part, RateLimitHeaders, Request,
    Transport, retry_after, secret_header, should_retry, truncate_message,
};
use crate::base::secret::ApiKey;
use crate::base::usage::Usage;
use crate::engine::attach::Kind;

/// The API version every request names, with the key as `x-api-key`: what this client's wire
/// format was written against and what Anthropic's API reference and the 1.x SDKs send.
///
/// Checked against the current official Python SDK (anthropic 2.10.0 on PyPI, November 2026):
/// it sends the key as `Authorization: Bearer <key>` (`_api_key_auth` in `_client.py`) and
/// `anthropic-version: 2026-10-21` (`ANTHROPIC_API_VERSION` in `_constants.py`), and still
/// accepts an `X-Api-Key` header as authentication. A dated version pins the response shapes
/// a client parses, so this one stays until the parser is checked against the newer version;
/// `--header 'anthropic-version: 2026-10-21'` (or an `anthropic-beta` header) goes on top, for
/// direct requests and the Message Batches client alike.
pub const API_VERSION: &str = "2023-06-01";

/// `max_tokens` when `--max-tokens` is not given: the Messages API refuses requests without one,
/// and 1024 leaves room for a paragraph while bounding the worst-case cost.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// A system prompt at least this long (by our estimate) is marked for Anthropic's prompt cache.
/// In a batch the same system prompt usually precedes every row, so after the first write (1.25x
/// the input price) each row reads it at 0.1x. Anthropic ignores the mark below its per-model
/// minimum (1024 to 4096 tokens), at no charge.
pub const CACHE_MIN_TOKENS: u32 = 1024;

/// `base_url` is the host part (`https://api.anthropic.com`, as in `ANTHROPIC_BASE_URL`); a
/// base that already ends in `/v1` is taken as it is.
pub fn messages(
    client: reqwest::Client,
    base_url: &str,
    key: Option<&ApiKey>,
    extra: &ExtraHeaders,
) -> HttpProvider {
    let mut headers = HeaderMap::new();
    headers.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
    if let Some(k) = key {
        headers.insert("x-api-key", secret_header(k.expose()));
    }
    let transport = Transport::new(client, messages_url(base_url), headers, extra);
    HttpProvider::new(
        transport,
        |req: &Request| serde_json::to_vec(&request_body(req)).expect("a request body serializes"),
        parse_message,
        classify_error,
    )
}

/// `{base}/v1/messages`, without doubling a `/v1` the base already has.
pub fn messages_url(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/messages")
    } else {
        format!("{base}/v1/messages")
    }
}

/// The body of one Messages request (also the `params` of a Message Batches request).
#[derive(Debug, Serialize)]
pub struct MessagesBody<'a> {
    pub model: &'a str,
    pub max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<Vec<SystemBlock<'a>>>,
    pub messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// `--schema`: one tool whose input is the schema, which the model is forced to call; its
    /// input is the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice<'a>>,
}

#[derive(Debug, Serialize)]
pub struct Tool<'a> {
    pub name: &'a str,
    pub description: &'static str,
    pub input_schema: &'a serde_json::Value,
}

#[derive(Debug, Serialize)]
pub struct ToolChoice<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: &'a str,
}

/// What the forced tool says it is for (the model reads it).
const TOOL_DESCRIPTION: &str = "Record the answer. Call this with the answer as its input.";

/// The system prompt as a text block, which (unlike a plain string) can carry a cache mark.
#[derive(Debug, Serialize)]
pub struct SystemBlock<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<CacheControl>,
}

#[derive(Debug, Serialize)]
pub struct CacheControl {
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Message<'a> {
    pub role: &'static str,
    pub content: Content<'a, Block<'a>>,
}

/// Messages content blocks: `text`, `image` and `document` (a PDF), each file as a `base64`
/// source with its media type, or a `url` source.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block<'a> {
    Text { text: &'a str },
    Image { source: Source<'a> },
    Document { source: Source<'a> },
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Source<'a> {
    Base64 {
        media_type: &'static str,
        data: &'a str,
    },
    Url {
        url: String,
    },
}

fn blocks(req: &Request) -> Vec<Block<'_>> {
    req.parts
        .iter()
        .map(|p| match p {
            Part::Text(text) => Block::Text { text },
            Part::Attach(a) => {
                let source = match (&a.url, a.media) {
                    (Some(url), _) => Source::Url { url: url.clone() },
                    (None, media) => Source::Base64 {
                        media_type: media.map_or("application/octet-stream", |m| m.mime()),
                        data: &a.base64,
                    },
                };
                match a.kind {
                    Kind::Image => Block::Image { source },
                    Kind::File => Block::Document { source },
                }
            }
        })
        .collect()
}

pub fn request_body(req: &Request) -> MessagesBody<'_> {
    let system = req.system.as_deref().map(|s| {
        let long = crate::engine::tokens::count(&req.model, s) >= CACHE_MIN_TOKENS;
        vec![SystemBlock {
            kind: "text",
            text: s,
            cache_control: long.then_some(CacheControl { kind: "ephemeral" }),
        }]
    });
    MessagesBody {
        model: &req.model,
        max_tokens: req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        system,
        messages: vec![Message {
            role: "user",
            content: match req.parts.is_empty() {
                true => Content::Text(&req.user),
                false => Content::Parts(blocks(req)),
            },
        }],
        temperature: req.temperature,
        tools: req.schema.as_deref().map(|s| {
            vec![Tool {
                name: &s.name,
                description: TOOL_DESCRIPTION,
                input_schema: &s.schema,
            }]
        }),
        tool_choice: req.schema.as_deref().map(|s| ToolChoice {
            kind: "tool",
            name: &s.name,
        }),
    }
}

#[derive(Deserialize)]
struct MessageResponse {
    id: Option<String>,
    model: Option<String>,
    content: Option<Vec<ContentBlock>>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    /// A `tool_use` block's input: the answer when a schema forced the tool.
    #[serde(default)]
    input: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireUsage {
    input_tokens: u64,
    output_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

/// Parses a 200 response. Anthropic's `input_tokens` leaves out the cache reads and writes, so
/// the three add up to the prompt; the text is every `text` block joined.
pub fn parse_message(body: &[u8], headers: &HeaderMap) -> Result<Completion, CallError> {
    let request_id = request_id(headers);
    let invalid =
        |msg: String| CallError::in_200(ErrorKind::InvalidResponse, request_id.clone(), msg);
    let resp: MessageResponse = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("response is not valid Anthropic message JSON: {e}")))?;
    let content = resp
        .content
        .ok_or_else(|| invalid("response has no content".into()))?;
    let u = resp
        .usage
        .ok_or_else(|| invalid("response has no usage".into()))?;
    // A forced tool's input is the answer (as JSON text, key order kept); otherwise the text
    // blocks (a model that answered in prose instead fails the schema check).
    let tool_input = content
        .iter()
        .find(|b| b.kind == "tool_use")
        .and_then(|b| b.input.as_ref())
        .map(|v| v.to_string());
    let text: String = match tool_input {
        Some(t) => t,
        None => content
            .into_iter()
            .filter(|b| b.kind == "text")
            .filter_map(|b| b.text)
            .collect(),
    };
    let cached = u.cache_read_input_tokens.unwrap_or(0);
    let written = u.cache_creation_input_tokens.unwrap_or(0);
    Ok(Completion {
        text,
        usage: Usage {
            prompt_tokens: u.input_tokens + cached + written,
            completion_tokens: u.output_tokens,
            cached_tokens: cached,
            cache_write_tokens: written,
            reasoning_tokens: 0,
        },
        finish_reason: resp.stop_reason,
        model: resp.model,
        request_id: request_id.or(resp.id),
        rate_limits: RateLimitHeaders::parse(headers, std::time::SystemTime::now()),
    })
}

#[derive(Deserialize)]
struct ErrorBody {
    error: WireError,
    request_id: Option<String>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<String>,
    details: Option<ErrorDetails>,
}

#[derive(Deserialize)]
struct ErrorDetails {
    error_code: Option<String>,
}

/// Classifies a non-200 response. Retried: 408, 409, 429 `rate_limit_error`, 5xx and 529
/// `overloaded_error`. Stops the run: 401/403 and anything about money (402 `billing_error`, a
/// spent credit balance, a reached spend limit), since no later request can succeed either.
pub fn classify_error(status: u16, body: &[u8], headers: &HeaderMap) -> CallError {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
    let (wire, body_request_id) = match parsed {
        Some(b) => (Some(b.error), b.request_id),
        None => (None, None),
    };
    let typ = wire
        .as_ref()
        .and_then(|w| w.kind.clone())
        .unwrap_or_default();
    let message = wire.as_ref().and_then(|w| w.message.clone());
    let code = wire
        .as_ref()
        .and_then(|w| w.details.as_ref())
        .and_then(|d| d.error_code.clone())
        .unwrap_or_default();
    let lower = message.as_deref().unwrap_or("").to_ascii_lowercase();
    let about_money = typ == "billing_error"
        || code == "enforced_spend_limit_reached"
        || lower.contains("credit balance")
        || lower.contains("spend limit")
        || lower.contains("usage limit");
    let kind = match status {
        _ if about_money && status < 500 => ErrorKind::QuotaExhausted,
        402 => ErrorKind::QuotaExhausted,
        429 => ErrorKind::RateLimited,
        401 | 403 => ErrorKind::Auth,
        408 | 409 | 500.. => ErrorKind::Server,
        _ => ErrorKind::Rejected,
    };
    let message = message
        .map(|m| truncate_message(&m))
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| {
            let text = truncate_message(&String::from_utf8_lossy(body));
            if text.is_empty() {
                reqwest::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or(if status == 529 {
                        "Overloaded"
                    } else {
                        "no body"
                    })
                    .to_string()
            } else {
                text
            }
        });
    let message = if typ.is_empty() {
        message
    } else {
        format!("{typ}: {message}")
    };
    CallError {
        kind,
        status: Some(status),
        message,
        retry_after: retry_after(status, headers, body),
        should_retry: should_retry(headers),
        request_id: request_id(headers).or(body_request_id),
        rate_limits: RateLimitHeaders::parse(headers, std::time::SystemTime::now()).map(Box::new),
    }
}

/// Anthropic names the request in `request-id`.
fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("request-id")
        .or_else(|| headers.get("x-request-id"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    #[test]
    fn attachments_have_the_shape_of_anthropics_examples() {
        use crate::engine::provider::openai::vision_fixtures::{fixture, request_for, shape};
        for name in [
            "anthropic_image",
            "anthropic_image_url",
            "anthropic_document",
            "anthropic_document_url",
        ] {
            let want = fixture(name);
            let content = &want["messages"][0]["content"];
            let req = request_for("claude-sonnet-4-5", content);
            let body = serde_json::to_value(request_body(&req)).unwrap();
            assert_eq!(shape(&body["messages"]), shape(&want["messages"]), "{name}");
        }
    }

    use super::*;

    /// Copies of the examples in `shared/reference/examples`.
    const REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/reference/");

    fn reference(name: &str) -> Vec<u8> {
        std::fs::read(format!("{REF}{name}")).unwrap()
    }

    fn request(system: Option<&str>, max_tokens: Option<u32>) -> Request {
        Request {
            model: "claude-haiku-4-5".into(),
            system: system.map(str::to_string),
            user: "Classify: great".into(),
            max_tokens,
            temperature: Some(0.0),
            schema: None,
            parts: Vec::new(),
        }
    }

    #[test]
    fn parses_the_reference_message() {
        let c = parse_message(&reference("anthropic-message.json"), &HeaderMap::new()).unwrap();
        assert_eq!(c.text, "positive");
        assert_eq!(c.usage.prompt_tokens, 38);
        assert_eq!(c.usage.completion_tokens, 4);
        assert_eq!(c.usage.cached_tokens, 0);
        assert_eq!(c.finish_reason.as_deref(), Some("end_turn"));
        assert_eq!(c.model.as_deref(), Some("claude-haiku-4-5"));
        assert_eq!(c.request_id.as_deref(), Some("msg_01Example"));
    }

    #[test]
    fn cache_reads_and_writes_are_parts_of_the_prompt() {
        let body = br#"{"id":"m","type":"message","role":"assistant","model":"claude-sonnet-4-5",
            "content":[{"type":"text","text":"a"},{"type":"text","text":"b"}],
            "stop_reason":"max_tokens","usage":{"input_tokens":10,"output_tokens":3,
            "cache_creation_input_tokens":null,"cache_read_input_tokens":2048}}"#;
        let c = parse_message(body, &HeaderMap::new()).unwrap();
        assert_eq!(c.text, "ab");
        assert_eq!(c.usage.prompt_tokens, 2058);
        assert_eq!(c.usage.cached_tokens, 2048);
        assert_eq!(c.usage.cache_write_tokens, 0);
        assert!(super::super::Api::is_truncated(
            c.finish_reason.as_deref().unwrap()
        ));

        let body = br#"{"content":[],"usage":{"input_tokens":5,"output_tokens":0,
            "cache_creation_input_tokens":1500}}"#;
        let u = parse_message(body, &HeaderMap::new()).unwrap().usage;
        assert_eq!((u.prompt_tokens, u.cache_write_tokens), (1505, 1500));
    }

    #[test]
    fn overloaded_529_is_retried() {
        let mut h = HeaderMap::new();
        h.insert("request-id", HeaderValue::from_static("req_h"));
        let e = classify_error(529, &reference("anthropic-error-529.json"), &h);
        assert_eq!(e.kind, ErrorKind::Server);
        assert!(e.retryable());
        assert!(e.message.contains("overloaded_error"), "{}", e.message);
        assert_eq!(e.request_id.as_deref(), Some("req_h"));
        let e = classify_error(
            529,
            &reference("anthropic-error-529.json"),
            &HeaderMap::new(),
        );
        assert_eq!(e.request_id.as_deref(), Some("req_01Example"));
    }

    fn error(typ: &str, message: &str) -> Vec<u8> {
        serde_json::json!({"type": "error", "error": {"type": typ, "message": message},
            "request_id": "req_1"})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn error_classes() {
        let h = HeaderMap::new();
        for (status, typ, message, kind) in [
            (
                429,
                "rate_limit_error",
                "Number of requests has exceeded your rate limit",
                ErrorKind::RateLimited,
            ),
            (500, "api_error", "Internal server error", ErrorKind::Server),
            (
                401,
                "authentication_error",
                "invalid x-api-key",
                ErrorKind::Auth,
            ),
            (
                403,
                "permission_error",
                "no access to this model",
                ErrorKind::Auth,
            ),
            (
                402,
                "billing_error",
                "payment required",
                ErrorKind::QuotaExhausted,
            ),
            (
                400,
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.",
                ErrorKind::QuotaExhausted,
            ),
            (
                400,
                "invalid_request_error",
                "max_tokens: Field required",
                ErrorKind::Rejected,
            ),
            (
                404,
                "not_found_error",
                "model: claude-nope",
                ErrorKind::Rejected,
            ),
            (
                413,
                "request_too_large",
                "Request exceeds the maximum size",
                ErrorKind::Rejected,
            ),
        ] {
            let e = classify_error(status, &error(typ, message), &h);
            assert_eq!(e.kind, kind, "{status} {typ}");
            assert_eq!(e.retryable(), kind.retryable());
        }
        // A spend limit comes as a 429 that must not be retried.
        let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"limit",
            "details":{"error_code":"enforced_spend_limit_reached"}}}"#;
        let e = classify_error(429, body, &h);
        assert_eq!(e.kind, ErrorKind::QuotaExhausted);
        assert!(e.kind.stops_run());
    }

    #[test]
    fn retry_after_and_ratelimit_headers_are_read() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        h.insert(
            "anthropic-ratelimit-requests-limit",
            HeaderValue::from_static("50"),
        );
        h.insert(
            "anthropic-ratelimit-input-tokens-remaining",
            HeaderValue::from_static("20000"),
        );
        let e = classify_error(429, &error("rate_limit_error", "slow down"), &h);
        assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(7)));
        let limits = e.rate_limits.unwrap();
        assert_eq!(limits.requests.limit, Some(50));
        assert_eq!(limits.tokens.remaining, Some(20_000));
    }

    #[test]
    fn body_has_the_required_fields_and_a_top_level_system() {
        let v = serde_json::to_value(request_body(&request(Some("Be brief."), None))).unwrap();
        assert_eq!(v["model"], "claude-haiku-4-5");
        assert_eq!(v["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(v["system"][0]["text"], "Be brief.");
        assert!(v["system"][0].get("cache_control").is_none());
        assert_eq!(
            v["messages"],
            serde_json::json!([{"role": "user", "content": "Classify: great"}])
        );
        assert_eq!(v["temperature"], 0.0);
        let v = serde_json::to_value(request_body(&request(None, Some(5)))).unwrap();
        assert_eq!(v["max_tokens"], 5);
        assert!(v.get("system").is_none());

        let long = "word ".repeat(CACHE_MIN_TOKENS as usize + 10);
        let v = serde_json::to_value(request_body(&request(Some(&long), None))).unwrap();
        assert_eq!(v["system"][0]["cache_control"]["type"], "ephemeral");
    }

    #[test]
    fn url_gets_one_v1() {
        assert_eq!(
            messages_url("https://api.anthropic.com"),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(
            messages_url("https://api.anthropic.com/"),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(
            messages_url("http://127.0.0.1:9/v1"),
            "http://127.0.0.1:9/v1/messages"
        );
    }

    #[test]
    fn a_schema_is_a_forced_tool_and_its_input_is_the_answer() {
        let schema = serde_json::json!({"type": "object",
            "properties": {"b": {"type": "string"}, "a": {"type": "integer"}},
            "required": ["b", "a"]});
        let s = crate::engine::schema::OutputSchema::new("review".into(), schema.clone(), false)
            .unwrap();
        let req = Request {
            model: "claude-haiku-4-5".into(),
            system: None,
            user: "u".into(),
            max_tokens: Some(100),
            temperature: None,
            schema: Some(std::sync::Arc::new(s)),
            parts: Vec::new(),
        };
        let v = serde_json::to_value(request_body(&req)).unwrap();
        assert_eq!(v["tools"][0]["name"], "review");
        assert_eq!(v["tools"][0]["input_schema"], schema);
        assert_eq!(
            v["tool_choice"],
            serde_json::json!({"type": "tool", "name": "review"})
        );
        let body = br#"{"id":"msg_1","model":"claude-haiku-4-5","stop_reason":"tool_use",
            "content":[{"type":"tool_use","id":"toolu_1","name":"review",
            "input":{"b":"x","a":2}}],"usage":{"input_tokens":10,"output_tokens":5}}"#;
        let c = parse_message(body, &HeaderMap::new()).unwrap();
        assert_eq!(c.text, r#"{"b":"x","a":2}"#);
        assert_eq!(c.finish_reason.as_deref(), Some("tool_use"));
    }
}

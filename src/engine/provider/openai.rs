//! OpenAI Chat Completions (`POST {base}/chat/completions`), also spoken by vLLM, Ollama, LiteLLM,
//! OpenRouter and the mock server.

use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde::{Deserialize, Serialize};

use super::{
    CallError, Completion, ErrorKind, ExtraHeaders, HttpProvider, RateLimitHeaders, Request,
    Transport, retry_after, secret_header, should_retry, truncate_message,
};
use crate::base::secret::ApiKey;
use crate::base::usage::Usage;

/// 429 codes that mean "no more money" rather than "slow down": retrying them only burns time.
const QUOTA_CODES: &[&str] = &[
    "insufficient_quota",
    "billing_hard_limit_reached",
    "billing_not_active",
    "access_terminated",
];

pub fn chat(
    client: reqwest::Client,
    base_url: &str,
    key: Option<&ApiKey>,
    extra: &ExtraHeaders,
) -> HttpProvider {
    let base = base_url.trim_end_matches('/');
    let max_completion_tokens = is_openai(base);
    let transport = Transport::new(
        client,
        format!("{base}/chat/completions"),
        auth_headers(key),
        extra,
    );
    HttpProvider::new(
        transport,
        move |req: &Request| {
            serde_json::to_vec(&request_body(req, max_completion_tokens))
                .expect("a request body serializes")
        },
        parse_completion,
        classify_error,
    )
}

/// `Authorization: Bearer <key>`, the way every OpenAI-compatible server takes a key.
pub(crate) fn auth_headers(key: Option<&ApiKey>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(k) = key {
        headers.insert(
            AUTHORIZATION,
            secret_header(&format!("Bearer {}", k.expose())),
        );
    }
    headers
}

/// Whether `base` is OpenAI's own API (which knows the newest field names).
pub(crate) fn is_openai(base: &str) -> bool {
    base.contains("api.openai.com")
}

#[derive(Debug, Serialize)]
pub struct ChatBody<'a> {
    pub model: &'a str,
    pub messages: Vec<ChatMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat<'a>>,
}

/// `response_format: {type: "json_schema", json_schema: {name, schema, strict}}`.
#[derive(Debug, Serialize)]
pub struct ResponseFormat<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub json_schema: JsonSchemaFormat<'a>,
}

#[derive(Debug, Serialize)]
pub struct JsonSchemaFormat<'a> {
    pub name: &'a str,
    pub schema: &'a serde_json::Value,
    pub strict: bool,
}

#[derive(Debug, Serialize)]
pub struct ChatMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
}

pub fn request_body(req: &Request, use_max_completion_tokens: bool) -> ChatBody<'_> {
    let mut messages = Vec::with_capacity(2);
    if let Some(s) = &req.system {
        messages.push(ChatMessage {
            role: "system",
            content: s,
        });
    }
    messages.push(ChatMessage {
        role: "user",
        content: &req.user,
    });
    let (max_completion_tokens, max_tokens) = if use_max_completion_tokens {
        (req.max_tokens, None)
    } else {
        (None, req.max_tokens)
    };
    ChatBody {
        model: &req.model,
        messages,
        max_completion_tokens,
        max_tokens,
        temperature: req.temperature,
        response_format: req.schema.as_deref().map(|s| ResponseFormat {
            kind: "json_schema",
            json_schema: JsonSchemaFormat {
                name: &s.name,
                schema: &s.schema,
                strict: s.strict,
            },
        }),
    }
}

#[derive(Deserialize)]
struct ChatResponse {
    id: Option<String>,
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<WireMessage>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    content: Option<String>,
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
    cache_write_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    reasoning_tokens: Option<u64>,
}

/// Parses a 200 response. A body that is not a complete answer is an `InvalidResponse`, which
/// is retried: truncated and garbled bodies are usually transient.
pub fn parse_completion(body: &[u8], headers: &HeaderMap) -> Result<Completion, CallError> {
    let request_id = request_id(headers);
    let invalid =
        |msg: String| CallError::in_200(ErrorKind::InvalidResponse, request_id.clone(), msg);
    let resp: ChatResponse = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("response is not valid chat-completion JSON: {e}")))?;
    let choice = resp
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| invalid("response has no choices".into()))?;
    let message = choice
        .message
        .ok_or_else(|| invalid("response choice has no message".into()))?;
    let text = match (message.content, message.refusal) {
        (Some(c), _) => c,
        (None, Some(r)) => r,
        (None, None) => return Err(invalid("response message has no content".into())),
    };
    let u = resp
        .usage
        .ok_or_else(|| invalid("response has no usage".into()))?;
    let prompt = u.prompt_tokens_details.unwrap_or(PromptDetails {
        cached_tokens: None,
        cache_write_tokens: None,
    });
    Ok(Completion {
        text,
        usage: Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: prompt.cached_tokens.unwrap_or(0),
            cache_write_tokens: prompt.cache_write_tokens.unwrap_or(0),
            reasoning_tokens: u
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        },
        finish_reason: choice.finish_reason,
        model: resp.model,
        request_id: request_id.or(resp.id),
        rate_limits: RateLimitHeaders::parse(headers, std::time::SystemTime::now()),
    })
}

#[derive(Deserialize)]
struct ErrorBody {
    error: WireError,
}

#[derive(Deserialize)]
struct WireError {
    message: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<serde_json::Value>,
}

/// Classifies a non-200 response.
pub fn classify_error(status: u16, body: &[u8], headers: &HeaderMap) -> CallError {
    let wire = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    let code = wire
        .as_ref()
        .and_then(|w| w.code.as_ref())
        .and_then(|c| c.as_str())
        .unwrap_or("")
        .to_string();
    let typ = wire
        .as_ref()
        .and_then(|w| w.kind.clone())
        .unwrap_or_default();
    let kind = match status {
        429 if QUOTA_CODES.contains(&code.as_str()) || QUOTA_CODES.contains(&typ.as_str()) => {
            ErrorKind::QuotaExhausted
        }
        429 => ErrorKind::RateLimited,
        401 | 403 => ErrorKind::Auth,
        402 => ErrorKind::QuotaExhausted,
        408 | 409 | 500.. => ErrorKind::Server,
        _ => ErrorKind::Rejected,
    };
    let message = wire
        .and_then(|w| w.message)
        .map(|m| truncate_message(&m))
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| {
            let text = truncate_message(&String::from_utf8_lossy(body));
            if text.is_empty() {
                reqwest::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("no body")
                    .to_string()
            } else {
                text
            }
        });
    let message = if code.is_empty() {
        message
    } else {
        format!("{code}: {message}")
    };
    CallError {
        kind,
        status: Some(status),
        message,
        retry_after: retry_after(status, headers, body),
        should_retry: should_retry(headers),
        request_id: request_id(headers),
        rate_limits: RateLimitHeaders::parse(headers, std::time::SystemTime::now()).map(Box::new),
    }
}

pub(crate) fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    /// Copies of the examples in `shared/reference/examples`.
    const REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/reference/");

    fn reference(name: &str) -> Vec<u8> {
        std::fs::read(format!("{REF}{name}")).unwrap()
    }

    #[test]
    fn parses_the_reference_chat_completion() {
        let body = reference("openai-chat-completion.json");
        let c = parse_completion(&body, &HeaderMap::new()).unwrap();
        assert_eq!(c.text, "positive");
        assert_eq!(c.usage.prompt_tokens, 42);
        assert_eq!(c.usage.completion_tokens, 2);
        assert_eq!(c.finish_reason.as_deref(), Some("stop"));
        assert_eq!(c.model.as_deref(), Some("gpt-4.1-mini-2025-04-14"));
    }

    #[test]
    fn quota_429_stops_and_rate_limit_429_retries() {
        let quota = reference("openai-error-429-quota.json");
        let e = classify_error(429, &quota, &HeaderMap::new());
        assert_eq!(e.kind, ErrorKind::QuotaExhausted);
        assert!(!e.retryable() && e.kind.stops_run());

        let rate = reference("openai-error-429-rate-limit.json");
        let mut h = HeaderMap::new();
        h.insert("retry-after-ms", HeaderValue::from_static("90"));
        let e = classify_error(429, &rate, &h);
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert!(e.retryable());
        assert_eq!(e.retry_after, Some(std::time::Duration::from_millis(90)));
    }

    #[test]
    fn status_classes() {
        let h = HeaderMap::new();
        for (status, kind) in [
            (500, ErrorKind::Server),
            (503, ErrorKind::Server),
            (408, ErrorKind::Server),
            (409, ErrorKind::Server),
            (400, ErrorKind::Rejected),
            (404, ErrorKind::Rejected),
            (401, ErrorKind::Auth),
        ] {
            assert_eq!(classify_error(status, b"", &h).kind, kind, "{status}");
        }
        // A proxy's HTML error page still gives a readable message.
        let e = classify_error(502, b"<html>Bad Gateway</html>", &h);
        assert!(e.message.contains("Bad Gateway"));
    }

    #[test]
    fn incomplete_200_bodies_are_invalid_and_retryable() {
        let h = HeaderMap::new();
        for body in [
            &b"{\"choices\":[{\"message\":{\"content\":\"x\"}}]"[..],
            b"{\"choices\":[]}",
            b"{\"choices\":[{\"message\":{\"content\":\"x\"}}]}",
            b"not json",
        ] {
            let e = parse_completion(body, &h).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidResponse);
            assert!(e.retryable());
        }
    }

    #[test]
    fn max_tokens_field_depends_on_server() {
        let req = Request {
            model: "m".into(),
            system: Some("s".into()),
            user: "u".into(),
            max_tokens: Some(5),
            temperature: None,
            schema: None,
        };
        let v = serde_json::to_value(request_body(&req, true)).unwrap();
        assert_eq!(v["max_completion_tokens"], 5);
        assert!(v.get("max_tokens").is_none() && v.get("temperature").is_none());
        assert_eq!(v["messages"][0]["role"], "system");
        let v = serde_json::to_value(request_body(&req, false)).unwrap();
        assert_eq!(v["max_tokens"], 5);
        assert!(v.get("response_format").is_none());
    }

    #[test]
    fn schema_goes_in_response_format_strict() {
        let schema = serde_json::json!({"type": "object",
            "properties": {"z": {"type": "string"}, "a": {"type": "integer"}},
            "required": ["z", "a"], "additionalProperties": false});
        let s = crate::engine::schema::OutputSchema::new("review".into(), schema.clone(), true)
            .unwrap();
        let req = Request {
            model: "m".into(),
            system: None,
            user: "u".into(),
            max_tokens: None,
            temperature: None,
            schema: Some(std::sync::Arc::new(s)),
        };
        let body = serde_json::to_string(&request_body(&req, true)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let f = &v["response_format"];
        assert_eq!(f["type"], "json_schema");
        assert_eq!(f["json_schema"]["name"], "review");
        assert_eq!(f["json_schema"]["strict"], true);
        assert_eq!(f["json_schema"]["schema"], schema);
        // The schema's key order is kept: strict mode answers in the order given.
        assert!(
            body.find("\"z\"").unwrap() < body.find("\"a\"").unwrap(),
            "{body}"
        );
    }
}

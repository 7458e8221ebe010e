//! OpenAI Chat Completions (`POST {base}/chat/completions`), also spoken by vLLM, Ollama, LiteLLM,
//! OpenRouter and the mock server.

use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde::{Deserialize, Serialize};

use super::{
    CallError, Completion, ErrorKind, ExtraHeaders, HttpProvider, Part, RateLimitHeaders, Request,
    Transport, retry_after, secret_header, should_retry, truncate_message,
};
use crate::base::secret::ApiKey;
use crate::base::usage::Usage;
use crate::engine::attach::Kind;

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
    pub content: Content<'a, ChatPart<'a>>,
}

/// A message's content: a string (every text-only request, unchanged), or content parts when
/// the prompt attaches files.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Content<'a, P> {
    Text(&'a str),
    Parts(Vec<P>),
}

/// Chat content parts: `text`, `image_url` (a data: URL for local files) and `file` (a PDF as
/// base64, named by its content hash).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatPart<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: ImageUrl },
    File { file: FileData },
}

#[derive(Debug, Serialize)]
pub struct ImageUrl {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct FileData {
    pub filename: String,
    pub file_data: String,
}

/// The user message's content parts for `req` (which has attachments).
fn chat_parts(req: &Request) -> Vec<ChatPart<'_>> {
    req.parts
        .iter()
        .map(|p| match p {
            Part::Text(text) => ChatPart::Text { text },
            Part::Attach(a) if a.kind == Kind::Image => ChatPart::ImageUrl {
                image_url: ImageUrl {
                    url: a.url.clone().unwrap_or_else(|| a.data_url()),
                    detail: a.detail.map(|d| d.as_str()),
                },
            },
            Part::Attach(a) => ChatPart::File {
                file: FileData {
                    filename: a.filename(),
                    file_data: a.data_url(),
                },
            },
        })
        .collect()
}

pub fn request_body(req: &Request, use_max_completion_tokens: bool) -> ChatBody<'_> {
    let mut messages = Vec::with_capacity(2);
    if let Some(s) = &req.system {
        messages.push(ChatMessage {
            role: "system",
            content: Content::Text(s),
        });
    }
    messages.push(ChatMessage {
        role: "user",
        content: match req.parts.is_empty() {
            true => Content::Text(&req.user),
            false => Content::Parts(chat_parts(req)),
        },
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
    #[test]
    fn attachments_have_the_shape_of_openais_examples() {
        use super::vision_fixtures::{fixture, request_for, shape};
        for name in ["openai_chat_image", "openai_chat_file"] {
            let want = fixture(name);
            let content = &want["messages"][0]["content"];
            let req = request_for("gpt-4.1", content);
            let body = serde_json::to_value(request_body(&req, true)).unwrap();
            assert_eq!(
                shape(&body["messages"][0]["content"]),
                shape(content),
                "{name}"
            );
        }
        // The file is named by its content hash, never by its path.
        let req = request_for(
            "gpt-4.1",
            &fixture("openai_chat_file")["messages"][0]["content"],
        );
        let body = serde_json::to_value(request_body(&req, true)).unwrap();
        let part = &body["messages"][0]["content"][0]["file"];
        assert_eq!(part["filename"], format!("{}.pdf", "ab".repeat(8)));
        assert_eq!(part["file_data"], "data:application/pdf;base64,AAAA");
    }

    #[test]
    fn a_text_only_request_keeps_its_string_content() {
        let mut req = super::vision_fixtures::request_for("gpt-4.1", &serde_json::json!([]));
        req.user = "hi".into();
        let body = String::from_utf8(serde_json::to_vec(&request_body(&req, true)).unwrap());
        assert!(
            body.unwrap()
                .contains(r#""messages":[{"role":"user","content":"hi"}]"#)
        );
    }

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
            parts: Vec::new(),
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
            parts: Vec::new(),
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

/// The official examples of content parts under `tests/fixtures/vision/`, turned into requests
/// whose bodies each provider's tests compare with them, shape for shape.
#[cfg(test)]
pub(crate) mod vision_fixtures {
    use std::sync::Arc;

    use serde_json::Value;

    use crate::engine::attach::{Attachment, Detail, Kind, Media};
    use crate::engine::provider::{Part, Request};

    pub fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/vision/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// The structure of `v`: every key, and the values of `type` and `role`, but no other
    /// values (payloads, prompts and names differ by design).
    pub fn shape(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| {
                        let keep = matches!(k.as_str(), "type" | "role" | "detail");
                        (k.clone(), if keep { v.clone() } else { shape(v) })
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(shape).collect()),
            Value::String(_) => Value::String(String::new()),
            other => other.clone(),
        }
    }

    /// A request whose user message has the parts of `content` (a fixture's), in order.
    pub fn request_for(model: &str, content: &Value) -> Request {
        let parts = content
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let kind = p["type"].as_str().unwrap();
                if matches!(kind, "text" | "input_text") {
                    return Part::Text(p["text"].as_str().unwrap().to_string());
                }
                let file = matches!(kind, "file" | "input_file" | "document");
                let url = p.to_string().contains("\"https://");
                let media = if file { Media::Pdf } else { Media::Jpeg };
                Part::Attach(Arc::new(Attachment {
                    kind: if file { Kind::File } else { Kind::Image },
                    media: (!url).then_some(media),
                    url: url.then(|| "https://example.com/x".to_string()),
                    base64: Arc::from("AAAA"),
                    sha256: "ab".repeat(32),
                    bytes: 3,
                    size: Some((10, 10)),
                    pages: 1,
                    detail: p.to_string().contains("\"detail\"").then_some(Detail::High),
                    scaled_from: None,
                }))
            })
            .collect();
        Request {
            model: model.into(),
            system: None,
            user: "text".into(),
            max_tokens: Some(1024),
            temperature: None,
            schema: None,
            parts,
        }
    }
}

//! The mock's Anthropic Messages endpoint (`POST /v1/messages`): the request checked the way
//! Anthropic checks it (so a test passing here proves our requests are well formed), and every
//! answer and error in Anthropic's shapes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::prompt_cache::Prefix;
use super::wire::{Incoming, Parsed};
use super::{Answer, Shared, reply};

/// The `anthropic-version`s the mock accepts by name. Newer SDKs send newer dated versions (the
/// Python SDK 2.x sends `2026-10-21`), so any well-formed date from [`FIRST_DATED`] on passes too.
const VERSIONS: &[&str] = &["2023-06-01", "2023-01-01"];
const FIRST_DATED: &str = "2023-01-01";

/// Whether the mock takes `v` as an `anthropic-version`: a known one, or a `YYYY-MM-DD` date
/// from [`FIRST_DATED`] on.
fn known_version(v: &str) -> bool {
    let number = |r: std::ops::Range<usize>| {
        v.get(r)
            .filter(|p| p.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|p| p.parse::<u32>().ok())
    };
    let dated = v.len() == 10
        && v.get(4..5) == Some("-")
        && v.get(7..8) == Some("-")
        && number(0..4).is_some()
        && number(5..7).is_some_and(|m| (1..=12).contains(&m))
        && number(8..10).is_some_and(|d| (1..=31).contains(&d));
    VERSIONS.contains(&v) || (dated && v >= FIRST_DATED)
}

/// Top-level request fields the Messages API knows; any other is refused, as Anthropic does.
const FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "messages",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "metadata",
    "stream",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "output_config",
    "container",
    "mcp_servers",
];

/// Top-level fields `POST /v1/messages/count_tokens` knows.
const COUNT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
    "mcp_servers",
];

/// `{"type":"error","error":{"type":..,"message":..},"request_id":..}`.
pub(super) fn error_body(kind: &str, message: &str) -> String {
    json!({"type": "error", "error": {"type": kind, "message": message},
        "request_id": "req_mock_error"})
    .to_string()
}

fn invalid(message: impl Into<String>) -> (StatusCode, String) {
    (
        StatusCode::BAD_REQUEST,
        error_body("invalid_request_error", &message.into()),
    )
}

/// Anthropic takes a key as `x-api-key` (SDK 1.x, and `batch`) or as `Authorization: Bearer`
/// (SDK 2.x); without either, 401.
pub(super) fn check_key(headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    let api_key = headers
        .get("x-api-key")
        .is_some_and(|k| !k.as_bytes().is_empty());
    if api_key || super::routes::has_bearer(headers) {
        return Ok(());
    }
    Err((
        StatusCode::UNAUTHORIZED,
        error_body("authentication_error", "x-api-key header is required"),
    ))
}

/// What a body is checked for: a message to create, or one whose tokens are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Create,
    Count,
}

/// Checks headers and body; returns what was asked, or Anthropic's error for the first problem.
pub(super) fn parse(headers: &HeaderMap, body: &[u8], spoil: Option<f64>) -> Parsed {
    parse_for(Purpose::Create, headers, body, spoil)
}

/// `POST /v1/messages/count_tokens`: the body checked as for a message (less `max_tokens`),
/// and its `input_tokens`: what `usage` would report for it, cache reads and writes included.
pub(super) async fn count_tokens(
    State(_s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (status, body) = match parse_for(Purpose::Count, &headers, &body, None) {
        Ok((_, a)) => (
            StatusCode::OK,
            json!({"input_tokens": a.prompt_tokens}).to_string(),
        ),
        Err(e) => e,
    };
    reply(status, body)
}

fn parse_for(purpose: Purpose, headers: &HeaderMap, body: &[u8], spoil: Option<f64>) -> Parsed {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    check_key(headers)?;
    match header("anthropic-version") {
        None => return Err(invalid("anthropic-version: header is required")),
        Some(v) if !known_version(v) => {
            return Err(invalid(format!("anthropic-version: invalid version {v:?}")));
        }
        Some(_) => {}
    }
    if !header("content-type").is_some_and(|c| c.starts_with("application/json")) {
        return Err(invalid("content-type: must be application/json"));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("There was an error parsing the body: {e}")))?;
    let Value::Object(req) = value else {
        return Err(invalid("body: Input should be a valid dictionary"));
    };
    let fields = match purpose {
        Purpose::Create => FIELDS,
        Purpose::Count => COUNT_FIELDS,
    };
    if let Some(extra) = req.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(invalid(format!("{extra}: Extra inputs are not permitted")));
    }
    let model = match req.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => return Err(invalid("model: Input should be a valid string")),
        None => return Err(invalid("model: Field required")),
    };
    if !model.starts_with("claude-") {
        return Err((
            StatusCode::NOT_FOUND,
            error_body("not_found_error", &format!("model: {model}")),
        ));
    }
    let max_tokens = match req.get("max_tokens") {
        None if purpose == Purpose::Count => None,
        None => return Err(invalid("max_tokens: Field required")),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Some(n),
            _ => {
                return Err(invalid(
                    "max_tokens: Input should be an integer greater than or equal to 1",
                ));
            }
        },
    };
    let stream = match req.get("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err(invalid("stream: Input should be a valid boolean")),
    };
    if let Some(t) = req.get("temperature")
        && !t.as_f64().is_some_and(|t| (0.0..=1.0).contains(&t))
    {
        return Err(invalid(
            "temperature: Input should be a number between 0 and 1",
        ));
    }
    let (system, marked) = system(&req)?;
    let user = last_user_text(&req)?;
    let max = max_tokens.map(|m| u32::try_from(m).unwrap_or(u32::MAX));
    let mut a = match (forced_tool(&req)?, output_schema(&req)?) {
        (Some((name, schema)), _) => {
            let mut a =
                super::structured_answer(&model, system.as_deref(), &user, max, schema, spoil);
            a.tool = Some(name);
            a
        }
        (None, Some(schema)) => {
            super::structured_answer(&model, system.as_deref(), &user, max, schema, spoil)
        }
        (None, None) => Answer::new(&model, system.as_deref(), &user, max),
    };
    if marked && let Some(s) = &system {
        a.prefix = Some(Prefix::marked(&model, s));
    }
    a.prompt_tokens += file_tokens(&req, &model)?;
    let mut incoming = Incoming::new(model);
    incoming.stream = stream;
    Ok((incoming, a))
}

/// The schema of structured outputs (`output_config.format` of type `json_schema`), which the
/// answer's text then fits.
fn output_schema(req: &Map<String, Value>) -> Result<Option<&Value>, (StatusCode, String)> {
    let format = match req.get("output_config").and_then(|c| c.get("format")) {
        None | Some(Value::Null) => return Ok(None),
        Some(f) => f,
    };
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return Err(invalid(
            "output_config.format.type: Input should be 'json_schema'",
        ));
    }
    match format.get("schema") {
        Some(s) if s.is_object() && jsonschema::validator_for(s).is_ok() => Ok(Some(s)),
        Some(_) => Err(invalid(
            "output_config.format.schema: JSON schema is invalid",
        )),
        None => Err(invalid("output_config.format.schema: Field required")),
    }
}

/// The tool `tool_choice` forces (`{"type": "tool", "name"}`), with its input schema, checked the
/// way Anthropic checks tools: a name, an `input_schema` of type object, a forced name that is
/// one of the tools.
fn forced_tool(req: &Map<String, Value>) -> Result<Option<(String, &Value)>, (StatusCode, String)> {
    static NO_TOOLS: Vec<Value> = Vec::new();
    let tools = match req.get("tools") {
        None => &NO_TOOLS,
        Some(Value::Array(t)) => t,
        Some(_) => return Err(invalid("tools: Input should be a valid list")),
    };
    for (i, t) in tools.iter().enumerate() {
        if !t.get("name").is_some_and(Value::is_string) {
            return Err(invalid(format!("tools.{i}.name: Field required")));
        }
        match t.get("input_schema") {
            None => return Err(invalid(format!("tools.{i}.input_schema: Field required"))),
            Some(s) if s.get("type") != Some(&json!("object")) => {
                return Err(invalid(format!(
                    "tools.{i}.input_schema.type: Input should be 'object'"
                )));
            }
            Some(s) if jsonschema::validator_for(s).is_err() => {
                return Err(invalid(format!(
                    "tools.{i}.input_schema: JSON schema is invalid"
                )));
            }
            Some(_) => {}
        }
    }
    let Some(choice) = req.get("tool_choice") else {
        return Ok(None);
    };
    match choice.get("type").and_then(Value::as_str) {
        Some("tool") => {}
        // "any" makes the model call one of the tools: the mock calls the first.
        Some("any") => {
            let Some(first) = tools.first() else {
                return Err(invalid(
                    "tool_choice: 'any' needs at least one tool in tools",
                ));
            };
            let name = first["name"].as_str().unwrap_or_default().to_string();
            return Ok(Some((name, &first["input_schema"])));
        }
        Some("auto") | Some("none") => return Ok(None),
        _ => {
            return Err(invalid(
                "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'",
            ));
        }
    }
    let Some(name) = choice.get("name").and_then(Value::as_str) else {
        return Err(invalid("tool_choice.tool.name: Field required"));
    };
    let tool = tools
        .iter()
        .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
        .ok_or_else(|| invalid(format!("tool_choice: tool {name:?} not found in tools")))?;
    Ok(Some((name.to_string(), &tool["input_schema"])))
}

/// The system prompt (a string or text blocks) and whether a block asks to be cached.
fn system(req: &Map<String, Value>) -> Result<(Option<String>, bool), (StatusCode, String)> {
    match req.get("system") {
        None => Ok((None, false)),
        Some(Value::String(s)) => Ok((Some(s.clone()), false)),
        Some(Value::Array(blocks)) => {
            let mut text = String::new();
            let mut marked = false;
            for (i, b) in blocks.iter().enumerate() {
                if b.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(invalid(format!("system.{i}.type: Input should be 'text'")));
                }
                let Some(t) = b.get("text").and_then(Value::as_str) else {
                    return Err(invalid(format!("system.{i}.text: Field required")));
                };
                if let Some(c) = b.get("cache_control") {
                    if c.get("type").and_then(Value::as_str) != Some("ephemeral") {
                        return Err(invalid(format!(
                            "system.{i}.cache_control.type: Input should be 'ephemeral'"
                        )));
                    }
                    marked = true;
                }
                text.push_str(t);
            }
            Ok((Some(text), marked))
        }
        Some(_) => Err(invalid(
            "system: Input should be a valid string or a list of text blocks",
        )),
    }
}

/// Prompt tokens of the images and documents of the last user turn.
fn file_tokens(req: &Map<String, Value>, model: &str) -> Result<u64, (StatusCode, String)> {
    let last_user = req
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| {
            m.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array);
    match last_user {
        Some(blocks) => super::vision::tokens(super::vision::Flavor::Messages, model, blocks)
            .map_err(|e| invalid(format!("messages: {e}"))),
        None => Ok(0),
    }
}

/// Checks `messages` and returns the text of the last user turn.
fn last_user_text(req: &Map<String, Value>) -> Result<String, (StatusCode, String)> {
    let messages = match req.get("messages") {
        None => return Err(invalid("messages: Field required")),
        Some(Value::Array(m)) if m.is_empty() => {
            return Err(invalid("messages: at least one message is required"));
        }
        Some(Value::Array(m)) => m,
        Some(_) => return Err(invalid("messages: Input should be a valid list")),
    };
    let mut last_user = None;
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str);
        match role {
            Some("user") | Some("assistant") => {}
            Some("system") => {
                return Err(invalid(format!(
                    "messages.{i}.role: Unexpected role \"system\". The Messages API accepts a \
                     top-level `system` parameter, not \"system\" as an input message role."
                )));
            }
            _ => {
                return Err(invalid(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                )));
            }
        }
        if i == 0 && role != Some("user") {
            return Err(invalid(
                "messages: first message must use the \"user\" role",
            ));
        }
        let text = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(blocks)) => blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect(),
            Some(_) => {
                return Err(invalid(format!(
                    "messages.{i}.content: Input should be a valid string or list of blocks"
                )));
            }
            None => return Err(invalid(format!("messages.{i}.content: Field required"))),
        };
        let files = m.get("content").and_then(Value::as_array).is_some_and(|b| {
            b.iter()
                .any(|b| b.get("type").and_then(Value::as_str) != Some("text"))
        });
        if text.is_empty() && !files {
            return Err(invalid(format!(
                "messages.{i}: text content blocks must be non-empty"
            )));
        }
        if role == Some("user") {
            last_user = Some(text);
        }
    }
    last_user.ok_or_else(|| invalid("messages: a user message is required"))
}

/// The 200 body: a `message` with text content, `stop_reason` and Anthropic's usage, where
/// `input_tokens` leaves out the tokens read from or written to the cache.
pub(super) fn body(model: &str, a: &Answer, n: u64) -> String {
    let cache = a.cache_read_tokens + a.cache_write_tokens;
    // A forced tool's answer is a tool_use block; one that is not a JSON object (spoilt, or cut
    // off by max_tokens) comes back as prose, as from a model that ignored the tool.
    let tool_input = a.tool.as_ref().zip(
        serde_json::from_str::<Value>(&a.text)
            .ok()
            .filter(Value::is_object),
    );
    let (content, stop) = match tool_input {
        Some((name, input)) => (
            json!([{"type": "tool_use", "id": format!("toolu_mock{n}"), "name": name,
                "input": input}]),
            "tool_use",
        ),
        None => (
            json!([{"type": "text", "text": a.text}]),
            if a.finish == "length" {
                "max_tokens"
            } else {
                "end_turn"
            },
        ),
    };
    json!({
        "id": format!("msg_mock{n}"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": {
            "input_tokens": a.prompt_tokens - cache.min(a.prompt_tokens),
            "cache_creation_input_tokens": a.cache_write_tokens,
            "cache_read_input_tokens": a.cache_read_tokens,
            "output_tokens": a.completion_tokens,
            "service_tier": "standard",
        },
    })
    .to_string()
}

/// Injected server errors: 500 `api_error`, and Anthropic's 529 `overloaded_error` for the 503s.
pub(super) fn server_error(status: StatusCode) -> (StatusCode, String) {
    if status == StatusCode::SERVICE_UNAVAILABLE {
        let overloaded = StatusCode::from_u16(529).expect("529 is a valid status");
        (overloaded, error_body("overloaded_error", "Overloaded"))
    } else {
        (status, error_body("api_error", "Internal server error"))
    }
}

/// What Anthropic answers once the prepaid credit is gone: a 400, not a 429.
pub(super) fn credit_error() -> (StatusCode, String) {
    invalid(
        "Your credit balance is too low to access the Anthropic API. Please go to Plans & \
         Billing to upgrade or purchase credits.",
    )
}

pub(super) fn missing_fields(model: &str, n: u64) -> String {
    json!({"id": format!("msg_mock{n}"), "type": "message", "role": "assistant", "model": model})
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::super::{MockConfig, MockServer};
    use crate::base::secret::ApiKey;
    use crate::engine::provider::{ErrorKind, ExtraHeaders, Provider, Request};
    use serde_json::{Value, json};

    fn request(system: Option<String>, max_tokens: Option<u32>) -> Request {
        Request {
            model: "claude-haiku-4-5".into(),
            system,
            user: "hello world".into(),
            max_tokens,
            temperature: Some(0.5),
            schema: None,
            parts: Vec::new(),
        }
    }

    fn provider(server: &MockServer, headers: &[&str]) -> crate::engine::provider::HttpProvider {
        let extra = ExtraHeaders::parse(&headers.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .unwrap();
        crate::engine::provider::anthropic::messages(
            reqwest::Client::new(),
            &server.base_url(),
            Some(&ApiKey::placeholder()),
            &extra,
        )
    }

    #[tokio::test]
    async fn our_requests_pass_the_checks_and_get_anthropic_answers() {
        let server = MockServer::start(MockConfig::default()).await.unwrap();
        let p = provider(&server, &[]);
        let x = p
            .send(p.body(&request(Some("Be brief.".into()), None)).into())
            .await;
        let c = x.outcome.unwrap();
        assert_eq!(c.text, "mock answer to \"hello world\"");
        assert_eq!(c.finish_reason.as_deref(), Some("end_turn"));
        assert_eq!(c.request_id.as_deref(), Some("req_mock_1"));
        let stats = server.stats();
        assert_eq!(c.usage.prompt_tokens, stats.prompt_tokens);
        assert_eq!(c.usage.completion_tokens, stats.completion_tokens);

        let x = p.send(p.body(&request(None, Some(2))).into()).await;
        let c = x.outcome.unwrap();
        assert_eq!(c.usage.completion_tokens, 2);
        assert_eq!(c.finish_reason.as_deref(), Some("max_tokens"));
    }

    #[tokio::test]
    async fn a_long_marked_system_prompt_is_written_once_then_read() {
        let server = MockServer::start(MockConfig::default()).await.unwrap();
        let p = provider(&server, &[]);
        let system = "The quick brown fox jumps over the lazy dog. ".repeat(150);
        let body = bytes::Bytes::from(p.body(&request(Some(system.clone()), None)));
        let system_tokens = u64::from(crate::engine::tokens::count("claude-haiku-4-5", &system));
        assert!(system_tokens >= super::super::prompt_cache::MIN_TOKENS);
        let first = p.send(body.clone()).await.outcome.unwrap().usage;
        assert_eq!(first.cache_write_tokens, system_tokens);
        assert_eq!(first.cached_tokens, 0);
        let second = p.send(body).await.outcome.unwrap().usage;
        assert_eq!(second.cached_tokens, system_tokens);
        assert_eq!(second.cache_write_tokens, 0);
        assert_eq!(first.prompt_tokens, second.prompt_tokens);
        assert_eq!(server.stats().cached_tokens, system_tokens);
    }

    async fn post(server: &MockServer, headers: &[(&str, &str)], body: Value) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .post(format!("{}/messages", server.base_url()))
            .json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    #[tokio::test]
    async fn wrong_shapes_are_refused_in_anthropic_error_format() {
        let server = MockServer::start(MockConfig::default()).await.unwrap();
        let good = json!({"model": "claude-haiku-4-5", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]});
        let key = ("x-api-key", "k");
        let version = ("anthropic-version", "2023-06-01");
        assert_eq!(post(&server, &[key, version], good.clone()).await.0, 200);

        let (status, v) = post(&server, &[version], good.clone()).await;
        assert_eq!(status, 401);
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");

        type Case<'a> = (Vec<(&'a str, &'a str)>, Value, &'a str);
        let cases: Vec<Case> = vec![
            (vec![key], good.clone(), "anthropic-version"),
            (
                vec![key, ("anthropic-version", "1999-01-01")],
                good.clone(),
                "invalid version",
            ),
            (
                vec![key, version],
                json!({"model": "claude-haiku-4-5",
                    "messages": [{"role": "user", "content": "hi"}]}),
                "max_tokens: Field required",
            ),
            (
                vec![key, version],
                json!({"model": "claude-haiku-4-5", "max_completion_tokens": 5,
                    "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
                "max_completion_tokens: Extra inputs are not permitted",
            ),
            (
                vec![key, version],
                json!({"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi"}]}),
                "Unexpected role \"system\"",
            ),
            (
                vec![key, version],
                json!({"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []}),
                "at least one message",
            ),
            (
                vec![key, version],
                json!({"model": "claude-haiku-4-5", "max_tokens": 5,
                    "messages": [{"role": "user", "content": ""}]}),
                "non-empty",
            ),
            (
                vec![key, version],
                json!({"model": "claude-haiku-4-5", "max_tokens": 5, "temperature": 1.5,
                    "messages": [{"role": "user", "content": "hi"}]}),
                "temperature",
            ),
        ];
        for (headers, body, expected) in cases {
            let (status, v) = post(&server, &headers, body.clone()).await;
            assert_eq!(status, 400, "{body}");
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], "invalid_request_error");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(message.contains(expected), "{message} / {expected}");
        }

        let (status, v) = post(
            &server,
            &[key, version],
            json!({"model": "gpt-4o", "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_eq!(
            (status, v["error"]["type"].as_str()),
            (404, Some("not_found_error"))
        );
    }

    #[tokio::test]
    async fn version_header_can_be_replaced_and_a_bad_one_is_rejected_not_retried() {
        let server = MockServer::start(MockConfig::default()).await.unwrap();
        let p = provider(&server, &["anthropic-version: 2023-01-01"]);
        let body = bytes::Bytes::from(p.body(&request(None, None)));
        assert!(p.send(body).await.outcome.is_ok());
        let p = provider(&server, &["anthropic-version: 1999-01-01"]);
        let body = bytes::Bytes::from(p.body(&request(None, None)));
        let e = p.send(body).await.outcome.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected);
        assert!(!e.retryable());
    }

    #[tokio::test]
    async fn injected_errors_limits_and_credit_come_in_anthropic_shapes() {
        let cfg = MockConfig {
            error_rate: 1.0,
            ..Default::default()
        };
        let server = MockServer::start(cfg).await.unwrap();
        let p = provider(&server, &[]);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let e = p
                .send(p.body(&request(None, None)).into())
                .await
                .outcome
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::Server);
            assert!(e.retryable());
            seen.insert(e.status.unwrap());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [500, 529]);

        let cfg = MockConfig {
            rpm: Some(60),
            quota_exhausted_after: Some(2),
            ..Default::default()
        };
        let server = MockServer::start(cfg).await.unwrap();
        let p = provider(&server, &[]);
        let ok = p.send(p.body(&request(None, None)).into()).await;
        let limits = ok.outcome.unwrap().rate_limits.unwrap();
        assert_eq!(limits.requests.limit, Some(60));
        assert!(
            ok.headers
                .iter()
                .any(|(k, _)| k == "anthropic-ratelimit-requests-reset")
        );
        let limited = p
            .send(p.body(&request(None, None)).into())
            .await
            .outcome
            .unwrap_err();
        assert_eq!(limited.kind, ErrorKind::RateLimited);
        assert!(limited.retry_after.is_some());
        assert!(
            limited.message.contains("rate_limit_error"),
            "{}",
            limited.message
        );
        let broke = p
            .send(p.body(&request(None, None)).into())
            .await
            .outcome
            .unwrap_err();
        assert_eq!(broke.kind, ErrorKind::QuotaExhausted, "{broke}");
        assert!(broke.kind.stops_run());
    }

    #[tokio::test]
    async fn the_current_sdk_auth_and_version_pass_and_tokens_can_be_counted() {
        let server = MockServer::start(MockConfig::default()).await.unwrap();
        let good = json!({"model": "claude-haiku-4-5", "max_tokens": 10, "system": "Be brief.",
            "messages": [{"role": "user", "content": "hi"}]});
        // SDK 2.x: Authorization: Bearer and a newer dated version.
        let bearer = ("authorization", "Bearer sk-ant");
        let version = ("anthropic-version", "2026-10-21");
        let (status, v) = post(&server, &[bearer, version], good.clone()).await;
        assert_eq!(status, 200, "{v}");
        for bad in [
            "2026-13-01",
            "yesterday",
            "2022-12-31",
            "2023-06-01x",
            "2é23-06-01",
        ] {
            let (status, v) =
                post(&server, &[bearer, ("anthropic-version", bad)], good.clone()).await;
            assert_eq!(status, 400, "{bad}: {v}");
        }
        let (status, _) = post(
            &server,
            &[("authorization", "Bearer "), version],
            good.clone(),
        )
        .await;
        assert_eq!(status, 401);

        let count = |body: Value, headers: Vec<(&'static str, &'static str)>| {
            let server = &server;
            async move {
                let mut req = reqwest::Client::new()
                    .post(format!("{}/messages/count_tokens", server.base_url()))
                    .json(&body);
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                let resp = req.send().await.unwrap();
                (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
            }
        };
        let mut counted = good.clone();
        counted.as_object_mut().unwrap().remove("max_tokens");
        let (status, n) = count(counted.clone(), vec![bearer, version]).await;
        assert_eq!(status, 200, "{n}");
        let (_, message) = post(&server, &[bearer, version], good.clone()).await;
        assert_eq!(n["input_tokens"], message["usage"]["input_tokens"]);
        let (status, v) = count(good.clone(), vec![bearer, version]).await;
        assert_eq!(status, 400);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("max_tokens")
        );
        let (status, v) = count(counted, vec![version]).await;
        assert_eq!(
            (status, &v["error"]["type"]),
            (401, &json!("authentication_error"))
        );
    }

    #[tokio::test]
    async fn structured_output_tool_choice_any_and_streams() {
        let server = MockServer::start(MockConfig::default()).await.unwrap();
        let headers = [("x-api-key", "k"), ("anthropic-version", "2023-06-01")];
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}},
            "required": ["n"], "additionalProperties": false});
        let (status, v) = post(
            &server,
            &headers,
            json!({"model": "claude-haiku-4-5", "max_tokens": 200,
                "output_config": {"format": {"type": "json_schema", "schema": schema}},
                "messages": [{"role": "user", "content": "count"}]}),
        )
        .await;
        assert_eq!(status, 200);
        let text: Value = serde_json::from_str(v["content"][0]["text"].as_str().unwrap()).unwrap();
        assert!(text["n"].is_i64(), "{text}");

        let (_, v) = post(
            &server,
            &headers,
            json!({"model": "claude-haiku-4-5", "max_tokens": 200,
                "tools": [{"name": "f", "input_schema": schema}], "tool_choice": {"type": "any"},
                "messages": [{"role": "user", "content": "count"}]}),
        )
        .await;
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["content"][0]["name"], "f");

        let mut req = reqwest::Client::new()
            .post(format!("{}/messages", server.base_url()))
            .json(
                &json!({"model": "claude-haiku-4-5", "max_tokens": 20, "stream": true,
                "messages": [{"role": "user", "content": "hello world"}]}),
            );
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let text = resp.text().await.unwrap();
        assert!(text.starts_with("event: message_start\n"), "{text}");
        assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        let deltas: String = text
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|d| serde_json::from_str::<Value>(d).unwrap())
            .filter(|d| d["type"] == "content_block_delta")
            .map(|d| d["delta"]["text"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(deltas, "mock answer to \"hello world\"");
    }
}

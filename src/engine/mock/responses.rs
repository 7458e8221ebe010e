//! The mock's OpenAI Responses endpoint (`POST /v1/responses`): the request checked the way
//! OpenAI checks it (unknown parameters, required ones, `max_output_tokens` of 16 or more), and
//! the answer as a `response` object whose text sits in `output[]`.

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::prompt_cache::Prefix;
use super::tools::{self, Flavor};
use super::wire::{Incoming, Parsed};
use super::{Answer, Ask, invalid_param, is_json_object, unix_now, unparsable_body};

/// Request fields the Responses API knows; any other is refused, as OpenAI does.
const FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "store",
    "text",
    "reasoning",
    "metadata",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "previous_response_id",
    "conversation",
    "service_tier",
    "stream",
    "truncation",
    "user",
    "include",
    "background",
    "prompt",
    "prompt_cache_key",
    "safety_identifier",
    "max_tool_calls",
    "top_logprobs",
];

/// The smallest `max_output_tokens` OpenAI accepts.
const MIN_OUTPUT_TOKENS: u64 = 16;

/// OpenAI's 400: `{"error":{"message","type":"invalid_request_error","param","code"}}`.
fn invalid(message: String, param: Option<&str>, code: &str) -> (StatusCode, String) {
    (
        StatusCode::BAD_REQUEST,
        invalid_param(&message, param, code),
    )
}

/// What a Responses request asks for and the answer the mock gives it, or the error.
pub(super) fn parse(body: &[u8], spoil: Option<f64>) -> Parsed {
    let req = request(body)?;
    let model = model(&req)?;
    let max = max_output_tokens(&req)?;
    check_temperature(&req)?;
    let instructions = instructions(&req)?;
    let user = input_text(req.get("input"))?;
    let stream = stream(&req)?;
    let call = tools::forced(Flavor::Responses, req.get("tools"), req.get("tool_choice"))
        .map_err(|(message, param, code)| invalid(message, Some(&param), code))?;
    let (schema, json_object) = text_format(&req, instructions.as_deref())?;
    let system = instructions.as_deref();
    let ask = Ask::of(call.as_ref(), schema.as_ref(), json_object);
    let mut a = Answer::asked(&model, system, &user, max, ask, spoil);
    a.tool = call.map(|c| c.name);
    a.prefix = system.map(|s| Prefix::automatic(&model, s));
    a.prompt_tokens += file_tokens(req.get("input"), &model)?;
    let mut incoming = Incoming::new(model);
    incoming.stream = stream;
    Ok((incoming, a))
}

/// The request object in `body`, refused when it is no JSON object or has a field the
/// Responses API does not know.
fn request(body: &[u8]) -> Result<Map<String, Value>, (StatusCode, String)> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| (StatusCode::BAD_REQUEST, unparsable_body(&e)))?;
    let Value::Object(req) = value else {
        return Err(invalid(
            "Invalid body: expected an object.".into(),
            None,
            "invalid_type",
        ));
    };
    if let Some(extra) = req.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(invalid(
            format!("Unknown parameter: '{extra}'."),
            Some(extra),
            "unknown_parameter",
        ));
    }
    Ok(req)
}

/// The `model`, which is required and may not be empty.
fn model(req: &Map<String, Value>) -> Result<String, (StatusCode, String)> {
    match req.get("model").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => Ok(m.to_string()),
        _ => Err(invalid(
            "Missing required parameter: 'model'.".into(),
            Some("model"),
            "missing_required_parameter",
        )),
    }
}

/// The cap on the answer's tokens, `max_output_tokens`: none, or [`MIN_OUTPUT_TOKENS`] or more.
fn max_output_tokens(req: &Map<String, Value>) -> Result<Option<u32>, (StatusCode, String)> {
    let v = match req.get("max_output_tokens") {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    match v.as_u64() {
        Some(n) if n >= MIN_OUTPUT_TOKENS => Ok(Some(u32::try_from(n).unwrap_or(u32::MAX))),
        _ => Err(invalid(
            format!(
                "Invalid 'max_output_tokens': integer below minimum value. Expected a \
                 value >= {MIN_OUTPUT_TOKENS}, but got {v} instead."
            ),
            Some("max_output_tokens"),
            "integer_below_min_value",
        )),
    }
}

/// Refuses a `temperature` that is no number from 0 to 2; the mock's answer ignores it.
fn check_temperature(req: &Map<String, Value>) -> Result<(), (StatusCode, String)> {
    match req.get("temperature") {
        Some(t) if !t.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t)) => Err(invalid(
            format!("Invalid 'temperature': {t}. Expected a number from 0 to 2."),
            Some("temperature"),
            "invalid_value",
        )),
        _ => Ok(()),
    }
}

/// The `instructions` (the system prompt), a string when given.
fn instructions(req: &Map<String, Value>) -> Result<Option<String>, (StatusCode, String)> {
    match req.get("instructions") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(
            "Invalid type for 'instructions': expected a string.".into(),
            Some("instructions"),
            "invalid_type",
        )),
    }
}

/// Whether the answer is streamed (`stream`, a boolean when given).
fn stream(req: &Map<String, Value>) -> Result<bool, (StatusCode, String)> {
    match req.get("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(false),
        Some(Value::Bool(true)) => Ok(true),
        Some(v) => Err(invalid(
            format!("Invalid type for 'stream': expected a boolean, but got {v} instead."),
            Some("stream"),
            "invalid_type",
        )),
    }
}

/// What `text.format` asks for: the schema of json_schema, and whether it is json_object,
/// which OpenAI takes only when the instructions or input say "json".
fn text_format(
    req: &Map<String, Value>,
    instructions: Option<&str>,
) -> Result<(Option<Value>, bool), (StatusCode, String)> {
    // The Responses API's format is Chat's json_schema object with the type beside it.
    let format = req.get("text").and_then(|t| t.get("format"));
    let as_chat = match format {
        None | Some(Value::Null) => None,
        Some(format) if format.get("type").and_then(Value::as_str) == Some("json_schema") => {
            Some(json!({"type": "json_schema", "json_schema": format}))
        }
        Some(format) => Some(format.clone()),
    };
    let schema = match &as_chat {
        None => None,
        Some(f) => super::schema::requested_schema(f)
            .map_err(|m| invalid(m, Some("text.format"), "invalid_value"))?
            .cloned(),
    };
    let json_object = is_json_object(format);
    if json_object
        && !format!("{} {}", instructions.unwrap_or_default(), input_all(req))
            .to_lowercase()
            .contains("json")
    {
        return Err(invalid(
            "Response input messages must contain the word 'json' in some form to use 'text.format' of type 'json_object'."
                .into(),
            Some("input"),
            "invalid_value",
        ));
    }
    Ok((schema, json_object))
}

/// All the text of `input`, for the json_object check.
fn input_all(req: &Map<String, Value>) -> String {
    match req.get("input") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

/// The user text of `input`: a plain string, or the last user item of a list.
fn input_text(input: Option<&Value>) -> Result<String, (StatusCode, String)> {
    let bad = |message: &str| invalid(message.into(), Some("input"), "invalid_type");
    match input {
        None | Some(Value::Null) => Err(invalid(
            "Missing required parameter: 'input'.".into(),
            Some("input"),
            "missing_required_parameter",
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(items)) => {
            let mut user = None;
            for item in items {
                let role = item.get("role").and_then(Value::as_str);
                let text = match item.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .filter(|p| p.get("type").and_then(Value::as_str) == Some("input_text"))
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect(),
                    _ => return Err(bad("Invalid 'input': each item needs a 'content'.")),
                };
                if role == Some("user") {
                    user = Some(text);
                }
            }
            user.ok_or_else(|| bad("Invalid 'input': no item has the role 'user'."))
        }
        Some(_) => Err(bad(
            "Invalid type for 'input': expected a string or an array of input items.",
        )),
    }
}

/// Prompt tokens of the files the last user item of `input` attaches.
fn file_tokens(input: Option<&Value>, model: &str) -> Result<u64, (StatusCode, String)> {
    let last_user = input
        .and_then(Value::as_array)
        .and_then(|items| {
            items
                .iter()
                .rev()
                .find(|i| i.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|i| i.get("content"))
        .and_then(Value::as_array);
    match last_user {
        Some(parts) => super::vision::tokens(super::vision::Flavor::Responses, model, parts)
            .map_err(|e| invalid(e, Some("input"), "invalid_value")),
        None => Ok(0),
    }
}

/// The 200 body: a `response` with a reasoning item for reasoning models, then the message.
pub(super) fn body(model: &str, a: &Answer, n: u64) -> String {
    let truncated = a.finish == "length";
    let mut output = Vec::new();
    if a.reasoning_tokens > 0 {
        output.push(json!({"id": format!("rs_mock{n}"), "type": "reasoning", "summary": []}));
    }
    if let Some(name) = &a.tool {
        output.push(json!({
            "id": format!("fc_mock{n}"),
            "type": "function_call",
            "status": if truncated { "incomplete" } else { "completed" },
            "call_id": format!("call_mock{n}"),
            "name": name,
            "arguments": a.text,
        }));
    } else if !a.text.is_empty() {
        output.push(json!({
            "id": format!("msg_mock{n}"),
            "type": "message",
            "role": "assistant",
            "status": if truncated { "incomplete" } else { "completed" },
            "content": [{"type": "output_text", "text": a.text, "annotations": []}],
        }));
    }
    json!({
        "id": format!("resp_mock{n}"),
        "object": "response",
        "created_at": unix_now(),
        "status": if truncated { "incomplete" } else { "completed" },
        "incomplete_details": if truncated {
            json!({"reason": "max_output_tokens"})
        } else {
            Value::Null
        },
        "error": null,
        "model": model,
        "output": output,
        "usage": {
            "input_tokens": a.prompt_tokens,
            "input_tokens_details": {"cached_tokens": a.cached_tokens},
            "output_tokens": a.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": a.reasoning_tokens},
            "total_tokens": a.prompt_tokens + a.completion_tokens,
        },
    })
    .to_string()
}

pub(super) fn missing_fields(model: &str, n: u64) -> String {
    json!({"id": format!("resp_mock{n}"), "object": "response", "status": "completed",
        "model": model})
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::super::{MockConfig, MockServer};
    use crate::engine::provider::{ErrorKind, ExtraHeaders, Provider, Request};
    use serde_json::json;

    fn request(model: &str, system: Option<String>, max_tokens: Option<u32>) -> Request {
        Request {
            model: model.into(),
            system,
            user: "hello world".into(),
            max_tokens,
            temperature: None,
            schema: None,
            parts: Vec::new(),
        }
    }

    fn provider(server: &MockServer) -> crate::engine::provider::HttpProvider {
        crate::engine::provider::responses::responses(
            reqwest::Client::new(),
            &server.base_url(),
            None,
            &ExtraHeaders::default(),
        )
    }

    #[tokio::test]
    async fn our_requests_pass_the_checks_and_reasoning_models_reason() {
        let server = MockServer::start(MockConfig::default()).await.unwrap();
        let p = provider(&server);
        let c = p
            .send(
                p.body(&request("gpt-4.1-mini", Some("Be brief.".into()), None))
                    .into(),
            )
            .await
            .outcome
            .unwrap();
        assert_eq!(c.text, "mock answer to \"hello world\"");
        assert_eq!(c.finish_reason.as_deref(), Some("completed"));
        assert_eq!(c.usage.reasoning_tokens, 0);

        let c = p
            .send(p.body(&request("gpt-5-mini", None, None)).into())
            .await
            .outcome
            .unwrap();
        assert_eq!(c.text, "mock answer to \"hello world\"");
        assert_eq!(c.usage.reasoning_tokens, 64);
        let visible = u64::from(crate::engine::tokens::count("gpt-5-mini", &c.text));
        assert_eq!(c.usage.completion_tokens, 64 + visible);

        // The cap covers the reasoning too: 70 leaves 6 visible tokens.
        let c = p
            .send(p.body(&request("gpt-5-mini", None, Some(70))).into())
            .await
            .outcome
            .unwrap();
        assert_eq!(c.finish_reason.as_deref(), Some("max_output_tokens"));
        assert_eq!(c.usage.completion_tokens, 70);
        assert_eq!(
            u64::from(crate::engine::tokens::count("gpt-5-mini", &c.text)),
            6
        );
        let stats = server.stats();
        assert_eq!(stats.reasoning_tokens, 128);
    }

    #[tokio::test]
    async fn a_long_system_prompt_seen_before_is_cached_in_128_token_steps() {
        let server = MockServer::start(MockConfig::default()).await.unwrap();
        let p = provider(&server);
        let system = "The quick brown fox jumps over the lazy dog. ".repeat(130);
        let tokens = u64::from(crate::engine::tokens::count("gpt-4.1-mini", &system));
        assert!(tokens >= 1024 && tokens % 128 != 0, "{tokens}");
        let body = bytes::Bytes::from(p.body(&request("gpt-4.1-mini", Some(system), None)));
        let first = p.send(body.clone()).await.outcome.unwrap().usage;
        assert_eq!(first.cached_tokens, 0);
        let second = p.send(body).await.outcome.unwrap().usage;
        assert_eq!(second.cached_tokens, tokens / 128 * 128);
        assert_eq!(first.prompt_tokens, second.prompt_tokens);
    }

    #[tokio::test]
    async fn wrong_shapes_are_refused_in_openai_error_format() {
        let server = MockServer::start(MockConfig::default()).await.unwrap();
        let url = format!("{}/responses", server.base_url());
        let client = reqwest::Client::new();
        for (body, param, code) in [
            (
                json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
                "messages",
                "unknown_parameter",
            ),
            (
                json!({"model": "gpt-4o", "input": "hi", "max_tokens": 20}),
                "max_tokens",
                "unknown_parameter",
            ),
            (
                json!({"input": "hi"}),
                "model",
                "missing_required_parameter",
            ),
            (
                json!({"model": "gpt-4o"}),
                "input",
                "missing_required_parameter",
            ),
            (
                json!({"model": "gpt-4o", "input": "hi", "max_output_tokens": 8}),
                "max_output_tokens",
                "integer_below_min_value",
            ),
        ] {
            let resp = client.post(&url).json(&body).send().await.unwrap();
            assert_eq!(resp.status(), 400, "{body}");
            let v: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
            assert_eq!(v["error"]["param"], param, "{v}");
            assert_eq!(v["error"]["code"], code, "{v}");
            let e = crate::engine::provider::openai::classify_error(
                400,
                v.to_string().as_bytes(),
                &reqwest::header::HeaderMap::new(),
            );
            assert_eq!(e.kind, ErrorKind::Rejected);
        }
    }

    #[tokio::test]
    async fn function_tools_json_object_and_streams() {
        let server = MockServer::start(MockConfig::default()).await.unwrap();
        let url = format!("{}/responses", server.base_url());
        let client = reqwest::Client::new();
        let post = |body: serde_json::Value| {
            let req = client.post(&url).json(&body);
            async move {
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                (status, resp.text().await.unwrap())
            }
        };
        let tool = json!({"type": "function", "name": "f", "parameters": {"type": "object",
            "properties": {"s": {"type": "string"}}, "required": ["s"]}});
        let (status, text) = post(json!({"model": "gpt-4o", "input": "hi", "tools": [tool],
            "tool_choice": {"type": "function", "name": "f"}}))
        .await;
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let call = &v["output"][0];
        assert_eq!(call["type"], "function_call");
        assert_eq!(call["name"], "f");
        let args: serde_json::Value =
            serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert!(args["s"].is_string());

        let (status, text) = post(json!({"model": "gpt-4o", "input": "give JSON",
            "text": {"format": {"type": "json_object"}}}))
        .await;
        assert_eq!(status, 200, "{text}");
        let (status, text) = post(json!({"model": "gpt-4o", "input": "hi",
            "text": {"format": {"type": "json_object"}}}))
        .await;
        assert_eq!(status, 400, "{text}");

        let (status, text) = post(json!({"model": "gpt-4o", "input": "hello world",
            "stream": true}))
        .await;
        assert_eq!(status, 200);
        let events: Vec<serde_json::Value> = text
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(events[0]["type"], "response.created");
        assert_eq!(events[0]["response"]["status"], "in_progress");
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.completed");
        let delta: String = events
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(delta, "mock answer to \"hello world\"");
        assert_eq!(
            last["response"]["output"][0]["content"][0]["text"],
            "mock answer to \"hello world\""
        );
    }
}

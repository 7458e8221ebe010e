//! OpenAI Responses (`POST {base}/responses`, `--api responses`): `input` and `instructions`
//! instead of messages, `max_output_tokens`, the answer spread over `output[]` items, and usage
//! named `input_tokens`/`output_tokens`. Errors have the chat API's shape and are classified by
//! the same code.

use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};

use super::openai::{Content, auth_headers, classify_error, request_id};
use super::{
    CallError, Completion, ErrorKind, ExtraHeaders, HttpProvider, Part, RateLimitHeaders, Request,
    Transport,
};
use crate::base::secret::ApiKey;
use crate::base::usage::Usage;
use crate::engine::attach::{Detail, Kind};

pub fn responses(
    client: reqwest::Client,
    base_url: &str,
    key: Option<&ApiKey>,
    extra: &ExtraHeaders,
) -> HttpProvider {
    let base = base_url.trim_end_matches('/');
    let transport = Transport::new(
        client,
        format!("{base}/responses"),
        auth_headers(key),
        extra,
    );
    HttpProvider::new(
        transport,
        |req: &Request| serde_json::to_vec(&request_body(req)).expect("a request body serializes"),
        parse_response,
        classify_error,
    )
}

#[derive(Debug, Serialize)]
pub struct ResponsesBody<'a> {
    pub model: &'a str,
    /// The user prompt as a plain string (the API's shorthand for one user message), or one
    /// user message of content parts when the prompt attaches files.
    pub input: Content<'a, InputMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// A batch job never refers back to a response, so there is no reason to have OpenAI keep
    /// each one (the default) for 30 days.
    pub store: bool,
    /// `--schema`: `text: {format: {type: "json_schema", name, schema, strict}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<TextConfig<'a>>,
}

#[derive(Debug, Serialize)]
pub struct TextConfig<'a> {
    pub format: TextFormat<'a>,
}

#[derive(Debug, Serialize)]
pub struct TextFormat<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: &'a str,
    pub schema: &'a serde_json::Value,
    pub strict: bool,
}

/// `{"role": "user", "content": [...]}`.
#[derive(Debug, Serialize)]
pub struct InputMessage<'a> {
    pub role: &'static str,
    pub content: Vec<InputPart<'a>>,
}

/// Responses content parts: `input_text`, `input_image` (`image_url` a data: URL or a URL;
/// `detail` is required here, `auto` unless `--image-detail` says otherwise) and `input_file`
/// (a PDF as base64 named by its content hash, or a `file_url`).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InputPart<'a> {
    InputText {
        text: &'a str,
    },
    InputImage {
        image_url: String,
        detail: &'static str,
    },
    InputFile {
        #[serde(skip_serializing_if = "Option::is_none")]
        filename: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        file_data: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        file_url: Option<String>,
    },
}

fn input_parts(req: &Request) -> Vec<InputPart<'_>> {
    req.parts
        .iter()
        .map(|p| match p {
            Part::Text(text) => InputPart::InputText { text },
            Part::Attach(a) if a.kind == Kind::Image => InputPart::InputImage {
                image_url: a.url.clone().unwrap_or_else(|| a.data_url()),
                detail: a.detail.unwrap_or(Detail::Auto).as_str(),
            },
            Part::Attach(a) => match &a.url {
                Some(url) => InputPart::InputFile {
                    filename: None,
                    file_data: None,
                    file_url: Some(url.clone()),
                },
                None => InputPart::InputFile {
                    filename: Some(a.filename()),
                    file_data: Some(a.data_url()),
                    file_url: None,
                },
            },
        })
        .collect()
}

pub fn request_body(req: &Request) -> ResponsesBody<'_> {
    ResponsesBody {
        model: &req.model,
        input: match req.parts.is_empty() {
            true => Content::Text(&req.user),
            false => Content::Parts(vec![InputMessage {
                role: "user",
                content: input_parts(req),
            }]),
        },
        instructions: req.system.as_deref(),
        max_output_tokens: req.max_tokens,
        temperature: req.temperature,
        store: false,
        text: req.schema.as_deref().map(|s| TextConfig {
            format: TextFormat {
                kind: "json_schema",
                name: &s.name,
                schema: &s.schema,
                strict: s.strict,
            },
        }),
    }
}

#[derive(Deserialize)]
struct ResponseObject {
    id: Option<String>,
    model: Option<String>,
    status: Option<String>,
    incomplete_details: Option<IncompleteDetails>,
    error: Option<ResponseError>,
    output: Option<Vec<OutputItem>>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct IncompleteDetails {
    reason: Option<String>,
}

#[derive(Deserialize)]
struct ResponseError {
    code: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct OutputItem {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    content: Vec<OutputContent>,
}

#[derive(Deserialize)]
struct OutputContent {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    input_tokens: u64,
    output_tokens: u64,
    input_tokens_details: Option<InputDetails>,
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Deserialize)]
struct InputDetails {
    cached_tokens: Option<u64>,
    cache_write_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct OutputDetails {
    reasoning_tokens: Option<u64>,
}

/// Parses a 200 response. The text is every `output_text` part of every `message` item, joined
/// (`output_text` in the SDKs is a convenience, not a field). `finish_reason` is the status, or
/// for an incomplete answer the reason it stopped (`max_output_tokens`, `content_filter`).
pub fn parse_response(body: &[u8], headers: &HeaderMap) -> Result<Completion, CallError> {
    let request_id = request_id(headers);
    let fail = |kind: ErrorKind, msg: String| CallError::in_200(kind, request_id.clone(), msg);
    let resp: ResponseObject = serde_json::from_slice(body).map_err(|e| {
        fail(
            ErrorKind::InvalidResponse,
            format!("response is not valid Responses API JSON: {e}"),
        )
    })?;
    let status = resp.status.unwrap_or_else(|| "completed".into());
    if status == "failed" {
        // The model failed after the request was accepted: the server's trouble.
        let e = resp.error.unwrap_or(ResponseError {
            code: None,
            message: None,
        });
        return Err(fail(
            ErrorKind::Server,
            format!(
                "response failed: {}{}",
                e.code.map(|c| format!("{c}: ")).unwrap_or_default(),
                e.message.unwrap_or_default()
            ),
        ));
    }
    if status != "completed" && status != "incomplete" {
        return Err(fail(
            ErrorKind::InvalidResponse,
            format!("response status is {status:?}, not completed"),
        ));
    }
    let output = resp
        .output
        .ok_or_else(|| fail(ErrorKind::InvalidResponse, "response has no output".into()))?;
    let u = resp
        .usage
        .ok_or_else(|| fail(ErrorKind::InvalidResponse, "response has no usage".into()))?;
    let parts: Vec<OutputContent> = output
        .into_iter()
        .filter(|item| item.kind == "message")
        .flat_map(|item| item.content)
        .collect();
    let mut text: String = parts
        .iter()
        .filter(|p| p.kind == "output_text")
        .filter_map(|p| p.text.as_deref())
        .collect();
    if text.is_empty() {
        // A refusal is the answer there is.
        text = parts.iter().filter_map(|p| p.refusal.as_deref()).collect();
    }
    let finish_reason = match (status.as_str(), resp.incomplete_details) {
        ("incomplete", Some(IncompleteDetails { reason: Some(r) })) => r,
        _ => status,
    };
    let input = u.input_tokens_details;
    Ok(Completion {
        text,
        usage: Usage {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            cached_tokens: input.as_ref().and_then(|d| d.cached_tokens).unwrap_or(0),
            cache_write_tokens: input.and_then(|d| d.cache_write_tokens).unwrap_or(0),
            reasoning_tokens: u
                .output_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        },
        finish_reason: Some(finish_reason),
        model: resp.model,
        request_id: request_id.or(resp.id),
        rate_limits: RateLimitHeaders::parse(headers, std::time::SystemTime::now()),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn attachments_have_the_shape_of_openais_examples() {
        use crate::engine::provider::openai::vision_fixtures::{fixture, request_for, shape};
        for name in ["responses_image", "responses_file", "responses_file_url"] {
            let want = fixture(name);
            let content = &want["input"][0]["content"];
            let req = request_for("gpt-4.1", content);
            let body = serde_json::to_value(request_body(&req)).unwrap();
            assert_eq!(shape(&body["input"]), shape(&want["input"]), "{name}");
        }
    }

    use super::*;

    const REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/reference/");

    #[test]
    fn parses_the_reference_response() {
        let body = std::fs::read(format!("{REF}openai-responses.json")).unwrap();
        let c = parse_response(&body, &HeaderMap::new()).unwrap();
        assert_eq!(c.text, "positive");
        assert_eq!(c.usage.prompt_tokens, 40);
        assert_eq!(c.usage.completion_tokens, 70);
        assert_eq!(c.usage.reasoning_tokens, 64);
        assert_eq!(c.usage.cached_tokens, 0);
        assert_eq!(c.finish_reason.as_deref(), Some("completed"));
        assert_eq!(c.model.as_deref(), Some("gpt-5-mini-2025-08-07"));
        assert_eq!(c.request_id.as_deref(), Some("resp_example123"));
    }

    #[test]
    fn incomplete_answers_say_why_and_keep_their_text() {
        let body = br#"{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},
            "output":[{"type":"message","content":[{"type":"output_text","text":"par"},
            {"type":"output_text","text":"tial"}]}],
            "usage":{"input_tokens":1200,"output_tokens":16,
            "input_tokens_details":{"cached_tokens":1024},"output_tokens_details":{"reasoning_tokens":0}}}"#;
        let c = parse_response(body, &HeaderMap::new()).unwrap();
        assert_eq!(c.text, "partial");
        assert_eq!(c.finish_reason.as_deref(), Some("max_output_tokens"));
        assert!(super::super::Api::is_truncated("max_output_tokens"));
        assert_eq!(c.usage.cached_tokens, 1024);
    }

    #[test]
    fn failed_and_unfinished_responses_are_retryable_errors() {
        let h = HeaderMap::new();
        let failed =
            br#"{"status":"failed","error":{"code":"server_error","message":"boom"},"output":[]}"#;
        let e = parse_response(failed, &h).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Server);
        assert!(e.message.contains("server_error: boom"), "{}", e.message);
        for body in [
            &br#"{"status":"in_progress","output":[]}"#[..],
            br#"{"status":"completed","output":[]}"#,
            br#"{"status":"completed","usage":{"input_tokens":1,"output_tokens":1}}"#,
            b"{",
        ] {
            let e = parse_response(body, &h).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidResponse);
            assert!(e.retryable());
        }
    }

    #[test]
    fn errors_are_classified_like_chat() {
        let quota = std::fs::read(format!("{REF}openai-error-429-quota.json")).unwrap();
        assert_eq!(
            classify_error(429, &quota, &HeaderMap::new()).kind,
            ErrorKind::QuotaExhausted
        );
    }

    #[test]
    fn body_uses_the_responses_field_names() {
        let req = Request {
            model: "gpt-5-mini".into(),
            system: Some("Be brief.".into()),
            user: "hello".into(),
            max_tokens: Some(64),
            temperature: None,
            schema: None,
            parts: Vec::new(),
        };
        let v = serde_json::to_value(request_body(&req)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model": "gpt-5-mini", "input": "hello",
                "instructions": "Be brief.", "max_output_tokens": 64, "store": false})
        );
    }

    #[test]
    fn a_schema_goes_in_text_format() {
        let schema = serde_json::json!({"type": "object",
            "properties": {"a": {"type": "string"}}, "required": ["a"],
            "additionalProperties": false});
        let s = crate::engine::schema::OutputSchema::new("r".into(), schema.clone(), true).unwrap();
        let req = Request {
            model: "gpt-4.1-mini".into(),
            system: None,
            user: "u".into(),
            max_tokens: None,
            temperature: None,
            schema: Some(std::sync::Arc::new(s)),
            parts: Vec::new(),
        };
        let v = serde_json::to_value(request_body(&req)).unwrap();
        assert_eq!(
            v["text"],
            serde_json::json!({"format": {"type": "json_schema", "name": "r",
                "schema": schema, "strict": true}})
        );
    }
}

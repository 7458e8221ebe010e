//! The OpenAI Batch API: the JSONL input line, files and batches endpoints, and the output
//! and error lines mapped back to rows.
//!
//! Wire facts (see `shared/reference/llm-api-facts.md`, section 4): the input is uploaded with
//! `POST /v1/files` (multipart, `purpose=batch`), the batch is created with `POST /v1/batches`
//! (`completion_window: "24h"`), polled with `GET /v1/batches/{id}` and its files fetched with
//! `GET /v1/files/{id}/content`. Output order is not input order: lines are matched by
//! `custom_id`.

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::json;

use super::state::{Counts, ProviderKind};
use super::{Outcome, RemoteBatch, custom_id_seq};
use crate::base::secret::ApiKey;
use crate::engine::provider::openai::classify_error;
use crate::engine::provider::{CallError, ExtraHeaders, ParseFn, transport_error};

/// The endpoint every request of a batch goes to: the one `run` would send it to.
pub fn endpoint(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::OpenAiResponses => "/v1/responses",
        ProviderKind::OpenAiEmbeddings => "/v1/embeddings",
        _ => "/v1/chat/completions",
    }
}

/// One line of the batch input: the row's id and the exact body `run` would send.
pub fn input_line(endpoint: &str, custom_id: &str, body: &[u8]) -> Vec<u8> {
    // Written around the body's bytes rather than re-serialized, so the request is byte for
    // byte the one `Provider::body` made.
    let mut line = Vec::with_capacity(body.len() + 96);
    line.extend_from_slice(b"{\"custom_id\":");
    line.extend_from_slice(json!(custom_id).to_string().as_bytes());
    line.extend_from_slice(b",\"method\":\"POST\",\"url\":");
    line.extend_from_slice(json!(endpoint).to_string().as_bytes());
    line.extend_from_slice(b",\"body\":");
    line.extend_from_slice(body);
    line.push(b'}');
    line
}

pub struct OpenAiBatches {
    client: reqwest::Client,
    base: String,
    /// The key as `Authorization`, and the `--header`s.
    headers: HeaderMap,
    endpoint: &'static str,
    /// The key and the `--header` values, removed from whatever the server answers (#19:
    /// echoed secrets).
    scrubber: crate::base::secret::Scrubber,
}

#[derive(Deserialize)]
struct WireFile {
    id: String,
}

#[derive(Deserialize)]
struct WireBatch {
    id: String,
    status: String,
    #[serde(default)]
    input_file_id: Option<String>,
    #[serde(default)]
    output_file_id: Option<String>,
    #[serde(default)]
    error_file_id: Option<String>,
    #[serde(default)]
    request_counts: Option<WireCounts>,
    #[serde(default)]
    errors: Option<WireErrors>,
}

#[derive(Deserialize)]
struct WireCounts {
    #[serde(default)]
    total: u64,
    #[serde(default)]
    completed: u64,
    #[serde(default)]
    failed: u64,
}

#[derive(Deserialize)]
struct WireErrors {
    #[serde(default)]
    data: Vec<WireValidationError>,
}

#[derive(Deserialize)]
struct WireValidationError {
    code: Option<String>,
    message: Option<String>,
    line: Option<u64>,
}

#[derive(Deserialize)]
struct WireList {
    #[serde(default)]
    data: Vec<WireBatch>,
    #[serde(default)]
    has_more: bool,
}

impl From<WireBatch> for RemoteBatch {
    fn from(b: WireBatch) -> Self {
        let counts = b.request_counts.map_or_else(Counts::default, |c| Counts {
            total: c.total,
            succeeded: c.completed,
            failed: c.failed,
            ..Counts::default()
        });
        let ended = matches!(
            b.status.as_str(),
            "completed" | "failed" | "expired" | "cancelled"
        );
        let errors = b
            .errors
            .map(|e| e.data)
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                let mut s = e.code.unwrap_or_default();
                if let Some(line) = e.line {
                    s = format!("{s} (input line {line})");
                }
                if let Some(m) = e.message {
                    s = format!("{s}: {m}");
                }
                s
            })
            .collect();
        RemoteBatch {
            id: b.id,
            status: b.status,
            ended,
            counts,
            output_file_id: b.output_file_id,
            error_file_id: b.error_file_id,
            errors,
        }
    }
}

impl OpenAiBatches {
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        key: Option<&ApiKey>,
        endpoint: &'static str,
        extra: &ExtraHeaders,
    ) -> Self {
        let mut headers = HeaderMap::new();
        if let Some(k) = key {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", k.expose()))
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-key-characters"));
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        extra.apply(&mut headers);
        OpenAiBatches {
            client,
            base: base_url.trim_end_matches('/').to_string(),
            scrubber: crate::engine::provider::scrubber_of(&headers),
            headers,
            endpoint,
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.base);
        self.client
            .request(method, url)
            .headers(self.headers.clone())
    }

    /// Sends and reads the whole body; a non-2xx answer is classified like a run's.
    async fn send(&self, builder: reqwest::RequestBuilder) -> Result<Bytes, CallError> {
        let resp = builder.send().await.map_err(|e| transport_error(&e))?;
        let status = resp.status().as_u16();
        let headers: HeaderMap = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| transport_error(&e))?;
        let answer = if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(classify_error(status, &body, &headers))
        };
        crate::engine::provider::scrubbed(&self.scrubber, answer)
    }

    async fn send_json<T: for<'de> Deserialize<'de>>(
        &self,
        builder: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<T, CallError> {
        let body = self.send(builder).await?;
        serde_json::from_slice(&body).map_err(|e| {
            CallError::new(
                crate::engine::provider::ErrorKind::InvalidResponse,
                format!("the {what} answer is not the expected JSON: {e}"),
            )
        })
    }

    /// `POST /files` with `purpose=batch`; returns the file id.
    pub async fn upload(&self, name: &str, data: Vec<u8>) -> Result<String, CallError> {
        let part = reqwest::multipart::Part::bytes(data)
            .file_name(name.to_string())
            .mime_str("application/jsonl")
            .expect("a valid MIME type");
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part("file", part);
        let req = self
            .request(reqwest::Method::POST, "/files")
            .multipart(form);
        let f: WireFile = self.send_json(req, "file upload").await?;
        Ok(f.id)
    }

    /// `POST /batches` for an uploaded file.
    pub async fn create(
        &self,
        input_file_id: &str,
        metadata: serde_json::Value,
    ) -> Result<RemoteBatch, CallError> {
        let req = self
            .request(reqwest::Method::POST, "/batches")
            .json(&json!({
                "input_file_id": input_file_id,
                "endpoint": self.endpoint,
                "completion_window": "24h",
                "metadata": metadata,
            }));
        let b: WireBatch = self.send_json(req, "batch creation").await?;
        Ok(b.into())
    }

    pub async fn get(&self, id: &str) -> Result<RemoteBatch, CallError> {
        let req = self.request(reqwest::Method::GET, &format!("/batches/{id}"));
        let b: WireBatch = self.send_json(req, "batch").await?;
        Ok(b.into())
    }

    pub async fn cancel(&self, id: &str) -> Result<RemoteBatch, CallError> {
        let req = self.request(reqwest::Method::POST, &format!("/batches/{id}/cancel"));
        let b: WireBatch = self.send_json(req, "batch cancel").await?;
        Ok(b.into())
    }

    pub async fn content(&self, file_id: &str) -> Result<Bytes, CallError> {
        let req = self.request(reqwest::Method::GET, &format!("/files/{file_id}/content"));
        self.send(req).await
    }

    /// The batch made from `input_file_id`, if one exists: after a kill between sending the
    /// create request and saving its answer, this is how the batch is found instead of being
    /// created (and paid for) twice. Looks through the most recent batches (newest first).
    pub async fn find_by_input_file(
        &self,
        input_file_id: &str,
    ) -> Result<Option<RemoteBatch>, CallError> {
        const PAGES: usize = 20;
        let mut after: Option<String> = None;
        for _ in 0..PAGES {
            let mut path = "/batches?limit=100".to_string();
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let req = self.request(reqwest::Method::GET, &path);
            let list: WireList = self.send_json(req, "batch list").await?;
            after = list.data.last().map(|b| b.id.clone());
            if let Some(b) = list
                .data
                .into_iter()
                .find(|b| b.input_file_id.as_deref() == Some(input_file_id))
            {
                return Ok(Some(b.into()));
            }
            if !list.has_more || after.is_none() {
                break;
            }
        }
        Ok(None)
    }
}

#[derive(Deserialize)]
struct OutputLine {
    custom_id: String,
    #[serde(default)]
    response: Option<OutputResponse>,
    #[serde(default)]
    error: Option<OutputError>,
}

#[derive(Deserialize)]
struct OutputResponse {
    status_code: u16,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    body: serde_json::Value,
}

#[derive(Deserialize)]
struct OutputError {
    code: Option<String>,
    message: Option<String>,
}

/// One line of an output or error file: the row it answers and what happened. Lines that name
/// no row of ours come back as `Err` with a reason (reported, never fatal).
pub fn parse_line(line: &[u8], parse: ParseFn) -> Result<(u64, Outcome), String> {
    let (seq, outcome) = parse_line_with(line, custom_id_seq, parse)?;
    Ok((
        seq,
        match outcome {
            Ok(c) => Outcome::Answered(Box::new(c)),
            Err(reason) => Outcome::Failed(reason),
        },
    ))
}

/// One line of an output or error file, its `custom_id` read with `id_seq` and a 200 body with
/// `parse`: the number the id names, and the answer or why there is none.
pub fn parse_line_with<T>(
    line: &[u8],
    id_seq: fn(&str) -> Option<u64>,
    parse: impl Fn(&[u8], &HeaderMap) -> Result<T, CallError>,
) -> Result<(u64, Result<T, String>), String> {
    let l: OutputLine =
        serde_json::from_slice(line).map_err(|e| format!("unreadable result line: {e}"))?;
    let seq = id_seq(&l.custom_id)
        .ok_or_else(|| format!("result for an unknown custom_id {:?}", l.custom_id))?;
    if let Some(e) = l.error {
        let code = e.code.unwrap_or_else(|| "error".into());
        let message = e.message.unwrap_or_default();
        return Ok((seq, Err(format!("{code}: {message}"))));
    }
    let Some(r) = l.response else {
        return Ok((
            seq,
            Err("the batch returned neither a response nor an error".into()),
        ));
    };
    let body = serde_json::to_vec(&r.body).unwrap_or_default();
    let mut headers = HeaderMap::new();
    if let Some(id) = r.request_id.as_deref().and_then(|i| i.parse().ok()) {
        headers.insert("x-request-id", id);
    }
    let outcome = if r.status_code == 200 {
        parse(&body, &headers).map_err(|e| e.to_string())
    } else {
        Err(classify_error(r.status_code, &body, &headers).to_string())
    };
    Ok((seq, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::provider::openai::parse_completion as chat;

    const REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/reference/");

    #[test]
    fn input_line_has_the_reference_shape() {
        let body = br#"{"model":"gpt-4.1-mini","messages":[{"role":"user","content":"Classify: great product"}],"max_completion_tokens":16}"#;
        let line = input_line(endpoint(ProviderKind::OpenAi), "r000001", body);
        let ours: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let reference =
            std::fs::read_to_string(format!("{REF}openai-batch-input-line.jsonl")).unwrap();
        let reference: serde_json::Value = serde_json::from_str(reference.trim()).unwrap();
        assert_eq!(ours, reference);
    }

    #[test]
    fn reference_output_lines_map_to_an_answer_and_an_expiry() {
        let text = std::fs::read_to_string(format!("{REF}openai-batch-output-line.jsonl")).unwrap();
        // The reference ids are r000001...; ours are row-<seq>.
        let text = text
            .replace("\"r000001\"", "\"row-0\"")
            .replace("\"r000002\"", "\"row-1\"");
        let mut lines = text.lines();
        let (seq, ok) = parse_line(lines.next().unwrap().as_bytes(), chat).unwrap();
        assert_eq!(seq, 0);
        let Outcome::Answered(c) = ok else {
            panic!("not answered: {ok:?}")
        };
        assert_eq!(c.text, "positive");
        assert_eq!((c.usage.prompt_tokens, c.usage.completion_tokens), (14, 1));
        let (seq, expired) = parse_line(lines.next().unwrap().as_bytes(), chat).unwrap();
        assert_eq!(seq, 1);
        let Outcome::Failed(reason) = expired else {
            panic!("not failed")
        };
        assert!(reason.starts_with("batch_expired: This request could not be executed"));
    }

    #[test]
    fn error_file_lines_with_a_4xx_response_are_failures_with_the_message() {
        let line = br#"{"id":"x","custom_id":"row-7","response":{"status_code":400,"request_id":"req_1","body":{"error":{"message":"bad model","type":"invalid_request_error","code":"model_not_found"}}},"error":null}"#;
        let (seq, o) = parse_line(line, chat).unwrap();
        assert_eq!(seq, 7);
        let Outcome::Failed(reason) = o else { panic!() };
        assert!(reason.contains("HTTP 400") && reason.contains("model_not_found: bad model"));
        assert!(parse_line(br#"{"custom_id":"elsewhere"}"#, chat).is_err());
        assert!(parse_line(b"not json", chat).is_err());
    }
}

//! Anthropic Message Batches: the requests go in the body of `POST /v1/messages/batches` as
//! `{custom_id, params}` (params being exactly the Messages body `run` sends), the batch is
//! polled with `GET /v1/messages/batches/{id}` until `processing_status` is `ended`, and its
//! results are JSONL from `.../results`, one `{custom_id, result}` line per request in no
//! particular order.

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::json;

use super::state::Counts;
use super::{Outcome, RemoteBatch, custom_id_seq};
use crate::base::secret::ApiKey;
use crate::engine::provider::anthropic::{API_VERSION, classify_error, parse_message};
use crate::engine::provider::{CallError, ErrorKind, ExtraHeaders, transport_error};

/// One request of a batch, as stored in the batch input file: the row's id and the exact body
/// `run` would send.
pub fn input_line(custom_id: &str, body: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(body.len() + 48);
    line.extend_from_slice(b"{\"custom_id\":");
    line.extend_from_slice(json!(custom_id).to_string().as_bytes());
    line.extend_from_slice(b",\"params\":");
    line.extend_from_slice(body);
    line.push(b'}');
    line
}

/// The create body from the stored input file: its lines as the `requests` array.
pub fn create_body(input_file: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(input_file.len() + 16);
    body.extend_from_slice(b"{\"requests\":[");
    let mut first = true;
    for line in input_file.split(|b| *b == b'\n') {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if !first {
            body.push(b',');
        }
        first = false;
        body.extend_from_slice(line);
    }
    body.extend_from_slice(b"]}");
    body
}

/// `{base}/v1/messages/batches`, without doubling a `/v1` the base already has.
fn batches_url(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/messages/batches")
    } else {
        format!("{base}/v1/messages/batches")
    }
}

pub struct AnthropicBatches {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    /// The key, removed from whatever the server answers (#19: echoed secrets).
    scrubber: crate::base::secret::Scrubber,
}

#[derive(Deserialize)]
struct WireBatch {
    id: String,
    processing_status: String,
    #[serde(default)]
    request_counts: WireCounts,
    #[serde(default)]
    created_at: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireCounts {
    #[serde(default)]
    processing: u64,
    #[serde(default)]
    succeeded: u64,
    #[serde(default)]
    errored: u64,
    #[serde(default)]
    canceled: u64,
    #[serde(default)]
    expired: u64,
}

#[derive(Deserialize)]
struct WireList {
    #[serde(default)]
    data: Vec<WireBatch>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    last_id: Option<String>,
}

impl From<WireBatch> for RemoteBatch {
    fn from(b: WireBatch) -> Self {
        let c = b.request_counts;
        RemoteBatch {
            ended: b.processing_status == "ended",
            id: b.id,
            status: b.processing_status,
            counts: Counts {
                total: c.processing + c.succeeded + c.errored + c.canceled + c.expired,
                succeeded: c.succeeded,
                failed: c.errored,
                expired: c.expired,
                cancelled: c.canceled,
                processing: c.processing,
            },
            output_file_id: None,
            error_file_id: None,
            errors: Vec::new(),
        }
    }
}

impl AnthropicBatches {
    /// Authenticates and names the version as the Messages client does (see
    /// [`API_VERSION`] for how that compares with the official SDK); `extra` (`--header`)
    /// goes on top, so a newer `anthropic-version` or an `anthropic-beta` reaches the batch
    /// endpoints and, through them, every request of the batch.
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        key: Option<&ApiKey>,
        extra: &ExtraHeaders,
    ) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
        if let Some(k) = key {
            let mut v = HeaderValue::from_str(k.expose())
                .unwrap_or_else(|_| HeaderValue::from_static("invalid-key-characters"));
            v.set_sensitive(true);
            headers.insert("x-api-key", v);
        }
        extra.apply(&mut headers);
        AnthropicBatches {
            client,
            url: batches_url(base_url),
            scrubber: crate::engine::provider::scrubber_of(&headers),
            headers,
        }
    }

    async fn send(&self, builder: reqwest::RequestBuilder) -> Result<Bytes, CallError> {
        let resp = builder
            .headers(self.headers.clone())
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| transport_error(&e))?;
        let answer = if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(classify_error(status, &body, &headers))
        };
        crate::engine::provider::scrubbed(&self.scrubber, answer)
    }

    async fn send_batch(&self, builder: reqwest::RequestBuilder) -> Result<RemoteBatch, CallError> {
        let body = self.send(builder).await?;
        serde_json::from_slice::<WireBatch>(&body)
            .map(Into::into)
            .map_err(|e| {
                CallError::new(
                    ErrorKind::InvalidResponse,
                    format!("the message batch answer is not the expected JSON: {e}"),
                )
            })
    }

    /// `POST /v1/messages/batches` with the requests of one stored input file.
    pub async fn create(&self, input_file: &[u8]) -> Result<RemoteBatch, CallError> {
        let req = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(create_body(input_file));
        self.send_batch(req).await
    }

    pub async fn get(&self, id: &str) -> Result<RemoteBatch, CallError> {
        self.send_batch(self.client.get(format!("{}/{id}", self.url)))
            .await
    }

    pub async fn cancel(&self, id: &str) -> Result<RemoteBatch, CallError> {
        self.send_batch(self.client.post(format!("{}/{id}/cancel", self.url)))
            .await
    }

    pub async fn results(&self, id: &str) -> Result<Bytes, CallError> {
        self.send(self.client.get(format!("{}/{id}/results", self.url)))
            .await
    }

    /// Batches created since `since` (unix seconds) with `requests` requests, newest first: after
    /// a kill between sending the create request and saving its answer, the candidates for the
    /// batch that request made. Anthropic's batches carry no metadata, so this is the best
    /// match there is; the caller adopts only an unambiguous one.
    pub async fn candidates(
        &self,
        since: u64,
        requests: u64,
    ) -> Result<Vec<RemoteBatch>, CallError> {
        const PAGES: usize = 20;
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..PAGES {
            let mut url = format!("{}?limit=100", self.url);
            if let Some(a) = &after {
                url.push_str(&format!("&after_id={a}"));
            }
            let body = self.send(self.client.get(url)).await?;
            let list: WireList = serde_json::from_slice(&body).map_err(|e| {
                CallError::new(
                    ErrorKind::InvalidResponse,
                    format!("the message batch list is not the expected JSON: {e}"),
                )
            })?;
            let mut older = false;
            for b in list.data {
                let created = b.created_at.as_deref().and_then(rfc3339_seconds);
                if created.is_some_and(|c| c + 5 < since) {
                    older = true;
                    continue;
                }
                let b = RemoteBatch::from(b);
                if b.counts.total == requests {
                    found.push(b);
                }
            }
            after = list.last_id;
            if older || !list.has_more || after.is_none() {
                break;
            }
        }
        Ok(found)
    }
}

/// Seconds since the epoch of an RFC 3339 UTC time such as `2024-08-20T18:37:24.100435Z` (the
/// civil-from-days arithmetic of Howard Hinnant's date algorithms).
fn rfc3339_seconds(s: &str) -> Option<u64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let mut t = time.get(..8)?.split(':');
    let (h, mi, sec): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3_600 + mi * 60 + sec).ok()
}

#[derive(Deserialize)]
struct ResultLine {
    custom_id: String,
    result: ResultBody,
}

#[derive(Deserialize)]
struct ResultBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// One line of a batch's results: the row it answers and what happened.
pub fn parse_line(line: &[u8]) -> Result<(u64, Outcome), String> {
    let l: ResultLine =
        serde_json::from_slice(line).map_err(|e| format!("unreadable result line: {e}"))?;
    let seq = custom_id_seq(&l.custom_id)
        .ok_or_else(|| format!("result for an unknown custom_id {:?}", l.custom_id))?;
    let outcome = match l.result.kind.as_str() {
        "succeeded" => {
            let body = l
                .result
                .message
                .map(|m| serde_json::to_vec(&m).unwrap_or_default())
                .unwrap_or_default();
            match parse_message(&body, &HeaderMap::new()) {
                Ok(c) => Outcome::Answered(Box::new(c)),
                Err(e) => Outcome::Failed(e.to_string()),
            }
        }
        "errored" => {
            // The error is an ErrorResponse: {"type": "error", "error": {"type", "message"}}.
            let e = l.result.error.unwrap_or_default();
            let inner = if e["error"].is_object() {
                &e["error"]
            } else {
                &e
            };
            let kind = inner["type"].as_str().unwrap_or("error");
            let message = inner["message"].as_str().unwrap_or_default();
            Outcome::Failed(format!("errored: {kind}: {message}"))
        }
        "canceled" => {
            Outcome::Failed("canceled: the batch was cancelled before this request ran".into())
        }
        "expired" => {
            Outcome::Failed("expired: the batch's 24 h window ended before this request ran".into())
        }
        other => Outcome::Failed(format!("unknown result type {other:?}")),
    };
    Ok((seq, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/reference/");

    #[test]
    fn reference_result_lines_map_to_an_answer_and_an_error() {
        let text =
            std::fs::read_to_string(format!("{REF}anthropic-batch-result-line.jsonl")).unwrap();
        let text = text
            .replace("\"r000001\"", "\"row-0\"")
            .replace("\"r000002\"", "\"row-1\"");
        let mut lines = text.lines();
        let (seq, ok) = parse_line(lines.next().unwrap().as_bytes()).unwrap();
        assert_eq!(seq, 0);
        let Outcome::Answered(c) = ok else {
            panic!("not answered: {ok:?}")
        };
        assert_eq!(c.text, "positive");
        assert_eq!((c.usage.prompt_tokens, c.usage.completion_tokens), (12, 2));
        let (seq, failed) = parse_line(lines.next().unwrap().as_bytes()).unwrap();
        assert_eq!(seq, 1);
        let Outcome::Failed(reason) = failed else {
            panic!("not failed")
        };
        assert_eq!(
            reason,
            "errored: invalid_request_error: max_tokens: Field required"
        );
        let (_, expired) =
            parse_line(br#"{"custom_id":"row-2","result":{"type":"expired"}}"#).unwrap();
        assert!(matches!(expired, Outcome::Failed(r) if r.starts_with("expired")));
    }

    #[test]
    fn create_body_wraps_the_stored_lines() {
        let file =
            b"{\"custom_id\":\"row-0\",\"params\":{}}\n{\"custom_id\":\"row-1\",\"params\":{}}\n";
        let v: serde_json::Value = serde_json::from_slice(&create_body(file)).unwrap();
        assert_eq!(v["requests"].as_array().unwrap().len(), 2);
        assert_eq!(v["requests"][1]["custom_id"], "row-1");
        let line = input_line("row-3", br#"{"model":"claude-haiku-4-5","max_tokens":5}"#);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["params"]["max_tokens"], 5);
    }

    #[test]
    fn rfc3339_times_read_as_epoch_seconds() {
        assert_eq!(
            rfc3339_seconds("2024-08-20T18:37:24.100435Z"),
            Some(1_724_179_044)
        );
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_seconds("yesterday"), None);
    }
}

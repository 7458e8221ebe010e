//! The audit log (`--log FILE.jsonl`): one JSON line per attempt, written as attempts finish, so
//! a user can prove afterwards what was sent and what came back.
//!
//! A line holds the time, the row, the attempt number, the request body exactly as sent, the
//! HTTP status, the response body (as JSON when it parses, else as text) or the error, the
//! response headers that matter (request id, rate limits), and the latency. Request headers are
//! never logged, so the API key cannot appear. Attached files are not logged either: each
//! base64 payload in the body (a `data:` URL, or Anthropic's `base64` source) is replaced by
//! `{"sha256", "bytes"}` of the file, enough to tell which file was sent without its bytes.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;

use crate::base::error::{Error, describe_io};
use crate::engine::provider::Exchange;

/// Appends lines from any task; a thread does the writing.
pub struct AuditLog {
    tx: Option<mpsc::Sender<String>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

/// The request body as logged: JSON, its file payloads replaced by their hash and size.
fn logged_request(request: &[u8]) -> Value {
    let mut v = serde_json::from_slice(request).unwrap_or(Value::Null);
    if request
        .windows(7)
        .any(|w| w == b"base64\"" || w == b";base64")
    {
        redact_payloads(&mut v);
    }
    v
}

/// `{"sha256", "bytes"}` of base64 `data`, or `None` when it is not base64.
fn digest(data: &str) -> Option<Value> {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .ok()?;
    let sha = crate::engine::attach::hex(&Sha256::digest(&bytes));
    Some(serde_json::json!({"sha256": sha, "bytes": bytes.len()}))
}

/// Replaces every `data:<type>;base64,...` string and every `"data"` of a `"type": "base64"`
/// object with [`digest`].
fn redact_payloads(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Some((head, data)) = s.strip_prefix("data:").and_then(|r| r.split_once(','))
                && head.ends_with(";base64")
                && let Some(mut d) = digest(data)
            {
                d["media_type"] = Value::String(head.trim_end_matches(";base64").to_string());
                *v = d;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_payloads),
        Value::Object(map) => {
            let base64_source = map.get("type").and_then(Value::as_str) == Some("base64");
            for (k, item) in map.iter_mut() {
                let payload = base64_source && k == "data";
                match payload.then(|| item.as_str().and_then(digest)).flatten() {
                    Some(d) => *item = d,
                    None => redact_payloads(item),
                }
            }
        }
        _ => {}
    }
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    row_id: &'a str,
    /// 1-based position among the input's data rows.
    row: u64,
    attempt: u32,
    request: Value,
    status: Option<u16>,
    response: Option<Value>,
    error: Option<String>,
    headers: serde_json::Map<String, Value>,
    latency_ms: u64,
}

impl AuditLog {
    /// Opens `path` for appending (a resumed run adds to the same log).
    /// `-` is stdout, as for every output option.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file: Box<dyn Write + Send> = if crate::base::format::is_std(path) {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        Error::Usage(format!(
                            "cannot write --log {}: {}",
                            path.display(),
                            describe_io(&e)
                        ))
                    })?,
            )
        };
        let (tx, rx) = mpsc::channel::<String>();
        let thread = std::thread::spawn(move || {
            let mut w = BufWriter::new(file);
            while let Ok(line) = rx.recv() {
                w.write_all(line.as_bytes())?;
                // Whatever else is queued goes in the same write, then it is flushed.
                while let Ok(line) = rx.try_recv() {
                    w.write_all(line.as_bytes())?;
                }
                w.flush()?;
            }
            w.flush()
        });
        Ok(AuditLog {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Records one attempt. `exchange` is `None` when the attempt was cut off by the timeout
    /// or abandoned, with `error` saying so.
    #[allow(clippy::too_many_arguments)]
    pub fn attempt(
        &self,
        started: SystemTime,
        row_id: &str,
        seq: u64,
        attempt: u32,
        request: &[u8],
        exchange: Option<&Exchange>,
        error: Option<String>,
        latency: Duration,
    ) {
        let response = exchange.and_then(|x| x.body.as_ref()).map(|b| {
            serde_json::from_slice(b)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned()))
        });
        let line = Line {
            time: humantime::format_rfc3339_millis(started).to_string(),
            row_id,
            row: seq + 1,
            attempt,
            request: logged_request(request),
            status: exchange.and_then(|x| x.status),
            response,
            error,
            headers: exchange
                .map(|x| {
                    x.headers
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect()
                })
                .unwrap_or_default(),
            latency_ms: latency.as_millis() as u64,
        };
        let mut text = serde_json::to_string(&line).expect("a log line serializes");
        text.push('\n');
        if let Some(tx) = &self.tx {
            let _ = tx.send(text);
        }
    }

    /// Writes what is queued and closes the file.
    pub fn finish(mut self) -> Result<(), Error> {
        self.tx.take();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => Err(Error::io("cannot write the --log file", e)),
            _ => Ok(()),
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::provider::{CallError, ErrorKind};

    #[test]
    fn file_payloads_are_logged_as_hash_and_size() {
        let body = serde_json::json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                "data": "aGVsbG8="}},
            {"type": "text", "text": "data: not a payload"}]}]});
        let v = logged_request(body.to_string().as_bytes());
        let text = v.to_string();
        assert!(!text.contains("aGVsbG8="), "{text}");
        // sha256("hello")
        let sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let parts = &v["messages"][0]["content"];
        assert_eq!(parts[0]["image_url"]["url"]["sha256"], sha);
        assert_eq!(parts[0]["image_url"]["url"]["bytes"], 5);
        assert_eq!(parts[1]["source"]["data"]["sha256"], sha);
        assert_eq!(parts[2]["text"], "data: not a payload");
    }

    #[test]
    fn lines_hold_request_response_and_kept_headers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let x = Exchange {
            outcome: Err(CallError::new(ErrorKind::Server, "busy")),
            status: Some(503),
            body: Some(bytes::Bytes::from_static(
                b"{\"error\":{\"message\":\"busy\"}}",
            )),
            headers: vec![("x-request-id".into(), "req_1".into())],
        };
        let body = br#"{"model":"m","messages":[]}"#;
        log.attempt(
            SystemTime::now(),
            "r1",
            0,
            1,
            body,
            Some(&x),
            Some("busy".into()),
            Duration::from_millis(7),
        );
        log.attempt(
            SystemTime::now(),
            "r1",
            0,
            2,
            body,
            None,
            Some("timeout".into()),
            Duration::from_secs(1),
        );
        log.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["request"]["model"], "m");
        assert_eq!(lines[0]["status"], 503);
        assert_eq!(lines[0]["response"]["error"]["message"], "busy");
        assert_eq!(lines[0]["headers"]["x-request-id"], "req_1");
        assert_eq!(lines[1]["attempt"], 2);
        assert!(lines[1]["response"].is_null());
        assert_eq!(lines[1]["latency_ms"], 1000);
    }
}

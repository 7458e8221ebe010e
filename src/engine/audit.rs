//! The audit log (`--log FILE.jsonl`): one JSON line per attempt, written as attempts finish, so
//! a user can prove afterwards what was sent and what came back.
//!
//! A line holds the time, the row, the attempt number, the request body exactly as sent, the
//! HTTP status, the response body (as JSON when it parses, else as text) or the error, the
//! response headers that matter (request id, rate limits), and the latency. Request headers are
//! never logged, so the API key cannot appear.

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
            request: serde_json::from_slice(request).unwrap_or(Value::Null),
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

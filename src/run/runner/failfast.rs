//! Failing fast on what cannot succeed: until the first answer of the run, an error that says
//! no request will be answered stops the run with one message that names the fix, instead of
//! failing every row the same way. Such errors are:
//!
//! - nothing answers at the base URL (the connection is refused, the host is unknown), a few
//!   attempts in a row ([`UNREACHABLE_LIMIT`]);
//! - a 404 or 405: the endpoint is not there (a `--base-url` without `/v1`, a server without
//!   the Responses API) or the model is unknown;
//! - the same rejection (a 400 for the request's shape, say) of the first rows
//!   ([`SAME_REJECTION_LIMIT`]).
//!
//! The rows that got the error, and those never sent, are `skipped` with the reason (so
//! `--resume` sends them after the fix), not `failed`. Once any request has been answered the
//! server is known to work, and a row's error is that row's: it fails alone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::engine::provider::{CallError, ErrorKind};

/// Attempts in a row that could not connect, before any answer, that stop the run.
pub(super) const UNREACHABLE_LIMIT: u32 = 3;
/// Rows rejected with the same error, before any answer, that stop the run.
pub(super) const SAME_REJECTION_LIMIT: u32 = 3;
/// Distinct rejections, and failed rows, remembered until the first answer (a bound on memory
/// for a run whose rows fail in ever new ways).
const REMEMBERED: usize = 1000;

/// What an error says about the run, if anything.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Cause {
    /// No connection could be made.
    Unreachable,
    /// The server refused the request, and would refuse it again: its status and message.
    Rejected(Option<u16>, String),
}

impl Cause {
    fn of(err: &CallError) -> Option<Cause> {
        if err.is_unreachable() {
            Some(Cause::Unreachable)
        } else if err.kind == ErrorKind::Rejected && !err.retryable() {
            Some(Cause::Rejected(err.status, err.message.clone()))
        } else {
            None
        }
    }
}

/// What a failed attempt means for the run.
#[derive(Debug, PartialEq)]
pub(super) enum Verdict {
    /// Nothing: the row goes on (is retried, or fails) as it would.
    Row,
    /// The run must stop, for this reason; the row is skipped.
    Stop(String),
    /// The run was stopped for this same error; the row is skipped.
    Stopped,
}

/// The [`Tracker`] shared by the row workers, with a way around its lock once it has nothing
/// left to do: after the first answer, unless the run was stopped before it.
pub(super) struct FailFast {
    tracker: Mutex<Tracker>,
    /// An answer came before any stop: from now on every verdict is [`Verdict::Row`].
    settled: AtomicBool,
}

impl FailFast {
    pub(super) fn new(endpoint: &str, base_url: &str) -> Self {
        FailFast {
            tracker: Mutex::new(Tracker::new(endpoint, base_url)),
            settled: AtomicBool::new(false),
        }
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().expect("fail-fast lock")
    }

    pub(super) fn answered(&self) {
        if !self.settled.load(Ordering::Relaxed) {
            let mut t = self.tracker();
            t.answered();
            if !t.stopped() {
                self.settled.store(true, Ordering::Relaxed);
            }
        }
    }

    pub(super) fn attempt_failed(&self, err: &CallError, model: &str) -> Verdict {
        if self.settled.load(Ordering::Relaxed) {
            return Verdict::Row;
        }
        self.tracker().attempt_failed(err, model)
    }

    pub(super) fn row_failed(&self, err: &CallError, request_hash: &str) {
        if !self.settled.load(Ordering::Relaxed) {
            self.tracker().row_failed(err, request_hash);
        }
    }

    pub(super) fn rows_to_skip(&self) -> Vec<String> {
        let t = self.tracker();
        t.rows_to_skip().into_iter().map(str::to_string).collect()
    }
}

/// Watches the attempts of a run until the first answer. Pure: the runner feeds it outcomes
/// and acts on its verdicts.
#[derive(Debug)]
pub(super) struct Tracker {
    /// Where requests go, and the base URL they were made from (for the messages).
    endpoint: String,
    base_url: String,
    answered: bool,
    /// Attempts in a row that could not connect.
    unreachable: u32,
    /// Rows rejected so far, by rejection.
    rejections: HashMap<Cause, u32>,
    /// The request hashes of the rows that failed of a cause before the stop, by cause: those
    /// of the stopping cause are made `skipped` at the end.
    failed_rows: Vec<(Cause, String)>,
    stopped_by: Option<Cause>,
}

impl Tracker {
    pub(super) fn new(endpoint: &str, base_url: &str) -> Self {
        Tracker {
            endpoint: endpoint.to_string(),
            base_url: base_url.to_string(),
            answered: false,
            unreachable: 0,
            rejections: HashMap::new(),
            failed_rows: Vec::new(),
            stopped_by: None,
        }
    }

    /// A request was answered: the server works, so errors from now on are the rows' own.
    pub(super) fn answered(&mut self) {
        if !self.answered {
            self.answered = true;
            self.rejections = HashMap::new();
            if self.stopped_by.is_none() {
                self.failed_rows = Vec::new();
            }
        }
    }

    /// Whether the run was stopped by an error of this tracker.
    pub(super) fn stopped(&self) -> bool {
        self.stopped_by.is_some()
    }

    /// An attempt of a row asking for `model` failed with `err`.
    pub(super) fn attempt_failed(&mut self, err: &CallError, model: &str) -> Verdict {
        // A complete answer that does not fit the schema still shows the server works.
        if err.kind == ErrorKind::InvalidAnswer {
            self.answered();
            return Verdict::Row;
        }
        let Some(cause) = Cause::of(err) else {
            // Something else went wrong; if a response came, something is listening.
            if err.status.is_some() {
                self.unreachable = 0;
            }
            return Verdict::Row;
        };
        if self.stopped_by.as_ref() == Some(&cause) {
            return Verdict::Stopped;
        }
        if self.answered || self.stopped_by.is_some() {
            return Verdict::Row;
        }
        let stops = match &cause {
            Cause::Unreachable => {
                self.unreachable += 1;
                self.unreachable >= UNREACHABLE_LIMIT
            }
            Cause::Rejected(status, _) => {
                self.unreachable = 0;
                matches!(status, Some(404 | 405)) || self.count(&cause) >= SAME_REJECTION_LIMIT
            }
        };
        if !stops {
            return Verdict::Row;
        }
        let reason = self.reason(&cause, err, model);
        self.stopped_by = Some(cause);
        Verdict::Stop(reason)
    }

    /// Counts one more row rejected with `cause`; returns how many there are.
    fn count(&mut self, cause: &Cause) -> u32 {
        if let Some(n) = self.rejections.get_mut(cause) {
            *n += 1;
            return *n;
        }
        if self.rejections.len() < REMEMBERED {
            self.rejections.insert(cause.clone(), 1);
        }
        1
    }

    /// A row failed for good with `err` (after its retries): remembered, in case `err` turns
    /// out to be the run's and the row must be skipped instead.
    pub(super) fn row_failed(&mut self, err: &CallError, request_hash: &str) {
        if (self.answered && self.stopped_by.is_none()) || self.failed_rows.len() >= REMEMBERED {
            return;
        }
        if let Some(cause) = Cause::of(err) {
            self.failed_rows.push((cause, request_hash.to_string()));
        }
    }

    /// The requests of the rows that failed of the error that stopped the run.
    pub(super) fn rows_to_skip(&self) -> Vec<&str> {
        match &self.stopped_by {
            None => Vec::new(),
            Some(stop) => self
                .failed_rows
                .iter()
                .filter(|(cause, _)| cause == stop)
                .map(|(_, hash)| hash.as_str())
                .collect(),
        }
    }

    /// What is wrong and what to try, for an error that stops the run.
    fn reason(&self, cause: &Cause, err: &CallError, model: &str) -> String {
        let url = &self.endpoint;
        let lacks_version = !has_version_segment(url);
        let base = self.base_url.trim_end_matches('/');
        let status = match cause {
            Cause::Unreachable => {
                return format!(
                    "nothing answers at {base}: is the server running? check --base-url ({})",
                    innermost(&err.message)
                );
            }
            Cause::Rejected(status, _) => *status,
        };
        match status {
            Some(404) if err.message.to_ascii_lowercase().contains("model") => format!(
                "the server does not know the model {model:?} (HTTP 404: {}); check the model \
                 name (--model, or the input's model column)",
                err.message
            ),
            Some(status @ (404 | 405)) if lacks_version => format!(
                "the server has no such endpoint (HTTP {status}): --base-url probably lacks /v1 \
                 (requests went to {url}); try --base-url {base}/v1"
            ),
            Some(404) if url.ends_with("/responses") => {
                format!("this server has no Responses API (HTTP 404 for {url}); use --api chat")
            }
            Some(status @ (404 | 405)) => format!(
                "the server has no such endpoint (HTTP {status} for POST {url}: {}); check \
                 --base-url",
                err.message
            ),
            _ => format!(
                "the server rejected the first {SAME_REJECTION_LIMIT} requests the same way, so \
                 it would reject the others too: {err}; fix what it names"
            ),
        }
    }
}

/// Whether the URL's path has a version segment (`/v1`, `/v1beta`, `/api/v2`).
fn has_version_segment(url: &str) -> bool {
    let path = url.split_once("://").map_or(url, |(_, rest)| rest);
    path.split('/').skip(1).any(|segment| {
        let mut chars = segment.chars();
        chars.next() == Some('v') && chars.next().is_some_and(|c| c.is_ascii_digit())
    })
}

/// The innermost cause of a transport error (`Connection refused (os error 111)`).
fn innermost(message: &str) -> &str {
    message.rsplit(": ").next().unwrap_or(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(status: u16, message: &str) -> CallError {
        CallError {
            status: Some(status),
            ..CallError::new(ErrorKind::Rejected, message)
        }
    }

    fn refused() -> CallError {
        let mut e = CallError::new(ErrorKind::Connection, "");
        // As the transport words it (the only way to make one outside a real connection).
        e.message = "cannot connect: error sending request for url (http://127.0.0.1:9/v1/chat/\
                     completions): client error (Connect): tcp connect error: Connection \
                     refused (os error 111)"
            .into();
        assert!(e.is_unreachable());
        e
    }

    fn chat() -> Tracker {
        Tracker::new(
            "http://127.0.0.1:9/v1/chat/completions",
            "http://127.0.0.1:9/v1",
        )
    }

    fn stop_reason(v: Verdict) -> String {
        match v {
            Verdict::Stop(reason) => reason,
            other => panic!("expected a stop, got {other:?}"),
        }
    }

    #[test]
    fn the_same_rejection_of_the_first_rows_stops_the_run() {
        let mut t = chat();
        let bad = rejected(400, "max_tokens: too small");
        assert_eq!(t.attempt_failed(&bad, "m"), Verdict::Row);
        t.row_failed(&bad, "h1");
        // Another rejection, and errors that are no rejection, do not count.
        let other = rejected(400, "prompt too long: 9000 tokens");
        assert_eq!(t.attempt_failed(&other, "m"), Verdict::Row);
        t.row_failed(&other, "h2");
        let busy = CallError {
            status: Some(503),
            ..CallError::new(ErrorKind::Server, "busy")
        };
        assert_eq!(t.attempt_failed(&busy, "m"), Verdict::Row);
        assert_eq!(t.attempt_failed(&bad, "m"), Verdict::Row);
        t.row_failed(&bad, "h3");
        let reason = stop_reason(t.attempt_failed(&bad, "m"));
        assert!(
            reason.contains("first 3 requests") && reason.contains("max_tokens: too small"),
            "{reason}"
        );
        assert!(t.stopped());
        // Rows in flight that get it too are skipped; the rows that failed of it before the stop
        // are made skipped, and the one that failed of another error stays failed.
        assert_eq!(t.attempt_failed(&bad, "m"), Verdict::Stopped);
        assert_eq!(t.attempt_failed(&other, "m"), Verdict::Row);
        assert_eq!(t.rows_to_skip(), ["h1", "h3"]);
    }

    #[test]
    fn after_an_answer_a_rejection_is_the_rows_own() {
        let mut t = chat();
        let bad = rejected(400, "bad");
        assert_eq!(t.attempt_failed(&bad, "m"), Verdict::Row);
        t.row_failed(&bad, "h1");
        t.answered();
        for _ in 0..5 {
            assert_eq!(t.attempt_failed(&bad, "m"), Verdict::Row);
            t.row_failed(&bad, "h");
        }
        assert_eq!(
            t.attempt_failed(&rejected(404, "Not Found"), "m"),
            Verdict::Row
        );
        assert_eq!(t.attempt_failed(&refused(), "m"), Verdict::Row);
        assert_eq!(t.attempt_failed(&refused(), "m"), Verdict::Row);
        assert_eq!(t.attempt_failed(&refused(), "m"), Verdict::Row);
        assert!(!t.stopped() && t.rows_to_skip().is_empty());
        // So does a complete answer that did not fit the schema.
        let mut t = chat();
        t.attempt_failed(&CallError::new(ErrorKind::InvalidAnswer, "not JSON"), "m");
        assert_eq!(
            t.attempt_failed(&rejected(404, "Not Found"), "m"),
            Verdict::Row
        );
    }

    #[test]
    fn a_404_or_405_before_any_answer_stops_at_once_naming_the_fix() {
        let mut t = Tracker::new("http://127.0.0.1:9/chat/completions", "http://127.0.0.1:9");
        let reason = stop_reason(t.attempt_failed(&rejected(404, "Invalid URL"), "m"));
        assert!(
            reason.contains(
                "--base-url probably lacks /v1 (requests went to \
                 http://127.0.0.1:9/chat/completions)"
            ) && reason.contains("try --base-url http://127.0.0.1:9/v1"),
            "{reason}"
        );
        let mut t = Tracker::new("http://h/chat/completions", "http://h/");
        let reason = stop_reason(t.attempt_failed(&rejected(405, "Method Not Allowed"), "m"));
        assert!(reason.contains("lacks /v1"), "{reason}");

        let mut t = Tracker::new("http://h/v1/responses", "http://h/v1");
        let reason = stop_reason(t.attempt_failed(&rejected(404, "Invalid URL"), "m"));
        assert!(
            reason.contains("no Responses API") && reason.contains("use --api chat"),
            "{reason}"
        );

        let mut t = Tracker::new("http://h/api/v1/chat/completions", "http://h/api/v1");
        let reason = stop_reason(t.attempt_failed(&rejected(404, "Not Found"), "m"));
        assert!(
            reason.contains("HTTP 404 for POST http://h/api/v1/chat/completions")
                && reason.contains("check --base-url"),
            "{reason}"
        );

        for message in [
            "model_not_found: The model `gpt-nope` does not exist or you do not have access to it.",
            "not_found_error: model: gpt-nope",
        ] {
            let mut t = chat();
            let reason = stop_reason(t.attempt_failed(&rejected(404, message), "gpt-nope"));
            assert!(
                reason.contains("does not know the model \"gpt-nope\"")
                    && reason.contains("--model"),
                "{reason}"
            );
        }
    }

    #[test]
    fn nothing_listening_stops_after_a_few_attempts_in_a_row() {
        let mut t = chat();
        assert_eq!(t.attempt_failed(&refused(), "m"), Verdict::Row);
        // A response in between: something is there after all.
        let busy = CallError {
            status: Some(503),
            ..CallError::new(ErrorKind::Server, "busy")
        };
        assert_eq!(t.attempt_failed(&busy, "m"), Verdict::Row);
        assert_eq!(t.attempt_failed(&refused(), "m"), Verdict::Row);
        t.row_failed(&refused(), "h1");
        assert_eq!(t.attempt_failed(&refused(), "m"), Verdict::Row);
        let reason = stop_reason(t.attempt_failed(&refused(), "m"));
        assert_eq!(
            reason,
            "nothing answers at http://127.0.0.1:9/v1: is the server running? check --base-url \
             (Connection refused (os error 111))"
        );
        assert_eq!(t.attempt_failed(&refused(), "m"), Verdict::Stopped);
        assert_eq!(t.rows_to_skip(), ["h1"]);
        // A connection that broke off after the request went is no sign of an empty port.
        let mut t = chat();
        let reset = CallError::new(ErrorKind::Connection, "connection reset by peer");
        for _ in 0..5 {
            assert_eq!(t.attempt_failed(&reset, "m"), Verdict::Row);
        }
    }

    #[test]
    fn version_segments() {
        assert!(has_version_segment("http://h:1/v1/chat/completions"));
        assert!(has_version_segment(
            "https://g.com/v1beta/openai/chat/completions"
        ));
        assert!(has_version_segment(
            "https://api.groq.com/openai/v1/responses"
        ));
        assert!(!has_version_segment("http://h:1/chat/completions"));
        assert!(!has_version_segment(
            "http://v1.example.com/chat/completions"
        ));
        assert!(!has_version_segment("http://h/videos/chat/completions"));
    }
}

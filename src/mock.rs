//! An OpenAI-compatible mock server: a real HTTP server on 127.0.0.1, so `--mock` runs and every
//! test exercise the whole client path (connection pool, timeouts, status codes, JSON parsing).
//!
//! Answers are deterministic and quote the start and end of the prompt they answer, so a test can
//! prove that each output landed on its own row. Usage is counted with the real tokenizer. Latency,
//! jitter, slow responses and 500/503 errors are injected on request; `GET /stats` reports what
//! the server saw, including the most requests it ever had in flight at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;

use crate::cli::MockArgs;
use crate::error::{Error, ExitStatus};
use crate::tokens;

/// How the mock behaves.
#[derive(Debug, Clone)]
pub struct MockConfig {
    pub port: u16,
    pub latency: Duration,
    pub jitter: Duration,
    pub error_rate: f64,
    pub slow_rate: f64,
    pub slow: Duration,
    pub seed: Option<u64>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            port: 0,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            error_rate: 0.0,
            slow_rate: 0.0,
            slow: Duration::from_secs(30),
            seed: None,
        }
    }
}

impl From<MockArgs> for MockConfig {
    fn from(a: MockArgs) -> Self {
        MockConfig {
            port: a.port,
            latency: Duration::from_millis(a.latency_ms),
            jitter: Duration::from_millis(a.jitter_ms),
            error_rate: a.error_rate.clamp(0.0, 1.0),
            slow_rate: a.slow_rate.clamp(0.0, 1.0),
            slow: Duration::from_millis(a.slow_ms),
            seed: a.seed,
        }
    }
}

/// What `GET /stats` returns.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MockStats {
    /// Requests received on the completion endpoint.
    pub requests: u64,
    /// Responses sent, by HTTP status.
    pub responses: BTreeMap<String, u64>,
    pub in_flight: u64,
    pub max_in_flight: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

struct Shared {
    cfg: MockConfig,
    rng: Mutex<StdRng>,
    requests: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    responses: Mutex<BTreeMap<u16, u64>>,
}

impl Shared {
    fn stats(&self) -> MockStats {
        MockStats {
            requests: self.requests.load(Ordering::Relaxed),
            responses: self
                .responses
                .lock()
                .expect("stats lock")
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            max_in_flight: self.max_in_flight.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
        }
    }
}

/// Counts a request in flight for as long as it lives, including when the client gives up and
/// the handler is dropped mid-way.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(s: &'a Shared) -> Self {
        s.requests.fetch_add(1, Ordering::Relaxed);
        let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(s)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running mock server; stops when dropped.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl MockServer {
    /// Binds 127.0.0.1:`cfg.port` and serves in the background of the current runtime.
    pub async fn start(cfg: MockConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", cfg.port)).await?;
        let addr = listener.local_addr()?;
        let rng = match cfg.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        let shared = Arc::new(Shared {
            cfg,
            rng: Mutex::new(rng),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            responses: Mutex::new(BTreeMap::new()),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/stats", get(stats))
            .with_state(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let server = axum::serve(listener, app);
            tokio::select! {
                _ = server => {}
                _ = rx => {}
            }
        });
        // The tokenizer takes a moment to build; do it now rather than in the first request.
        tokio::task::spawn_blocking(|| tokens::count("gpt-4o", "warm up"))
            .await
            .ok();
        Ok(MockServer {
            addr,
            shared,
            shutdown: Some(tx),
        })
    }

    /// The base URL clients use, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn stats(&self) -> MockStats {
        self.shared.stats()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// `batch mock`: serve until Ctrl-C, printing the base URL first so scripts can read it.
pub async fn serve_forever(cfg: MockConfig) -> Result<ExitStatus, Error> {
    let port = cfg.port;
    let server = MockServer::start(cfg)
        .await
        .map_err(|e| Error::Usage(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", server.base_url());
        let _ = out.flush();
    }
    eprintln!(
        "mock server listening; stats at http://{}/stats; Ctrl-C to stop",
        server.addr
    );
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| Error::io("cannot wait for Ctrl-C", e))?;
    Ok(ExitStatus::Success)
}

async fn stats(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(s.stats()).into_response()
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: serde_json::Value,
}

impl ChatMessage {
    /// Content as text: a string, or the text parts of a content array.
    fn text(&self) -> String {
        match &self.content {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                .collect::<Vec<_>>()
                .join(""),
            _ => String::new(),
        }
    }
}

/// What the dice said for one request.
struct Plan {
    delay: Duration,
    error: Option<StatusCode>,
}

fn plan(s: &Shared) -> Plan {
    let cfg = &s.cfg;
    let mut rng = s.rng.lock().expect("rng lock");
    let mut delay = cfg.latency;
    if !cfg.jitter.is_zero() {
        delay += Duration::from_micros(rng.random_range(0..=cfg.jitter.as_micros() as u64));
    }
    if cfg.slow_rate > 0.0 && rng.random_bool(cfg.slow_rate) {
        delay += cfg.slow;
    }
    let error = (cfg.error_rate > 0.0 && rng.random_bool(cfg.error_rate)).then(|| {
        if rng.random_bool(0.5) {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    });
    Plan { delay, error }
}

async fn chat_completions(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let _guard = InFlight::enter(&s);
    let n = s.requests.load(Ordering::Relaxed);
    let plan = plan(&s);
    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }
    let (status, body) = match plan.error {
        Some(status) => (status, server_error_body(status)),
        None => match serde_json::from_slice::<ChatRequest>(&body) {
            Err(e) => (
                StatusCode::BAD_REQUEST,
                error_body(
                    &format!("We could not parse the JSON body of your request: {e}"),
                    "invalid_request_error",
                    None,
                ),
            ),
            Ok(req) if req.messages.is_empty() => (
                StatusCode::BAD_REQUEST,
                error_body(
                    "[] is too short - 'messages'",
                    "invalid_request_error",
                    None,
                ),
            ),
            Ok(req) => (StatusCode::OK, completion(&s, &req, n)),
        },
    };
    *s.responses
        .lock()
        .expect("stats lock")
        .entry(status.as_u16())
        .or_default() += 1;
    let mut resp = (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("req_mock_{n}")) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

fn completion(s: &Shared, req: &ChatRequest, n: u64) -> String {
    let system = req
        .messages
        .iter()
        .filter(|m| m.role == "system" || m.role == "developer")
        .map(ChatMessage::text)
        .collect::<Vec<_>>();
    let user = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(ChatMessage::text)
        .unwrap_or_default();
    let system = (!system.is_empty()).then(|| system.join("\n"));
    let prompt_tokens = u64::from(tokens::count_chat(&req.model, system.as_deref(), &user));
    let mut text = answer(&user);
    let mut finish = "stop";
    let encoding = tokens::encoding_for(&req.model);
    let mut ids = encoding.encode_ordinary(&text);
    if let Some(max) = req.max_completion_tokens.or(req.max_tokens)
        && ids.len() > max as usize
    {
        ids.truncate(max as usize);
        text = encoding.decode(&ids).unwrap_or_default();
        finish = "length";
    }
    let completion_tokens = ids.len() as u64;
    s.prompt_tokens.fetch_add(prompt_tokens, Ordering::Relaxed);
    s.completion_tokens
        .fetch_add(completion_tokens, Ordering::Relaxed);
    json!({
        "id": format!("chatcmpl-mock{n}"),
        "object": "chat.completion",
        "created": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "model": req.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null},
            "logprobs": null,
            "finish_reason": finish,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_mock",
    })
    .to_string()
}

/// The deterministic answer to `prompt`: it quotes the prompt's start and end (whitespace folded)
/// so the answer can be traced back to its row.
pub fn answer(prompt: &str) -> String {
    const EDGE: usize = 40;
    let folded = prompt.split_whitespace().collect::<Vec<_>>().join(" ");
    let chars: Vec<char> = folded.chars().collect();
    let quote = if chars.len() <= 2 * EDGE {
        folded
    } else {
        let head: String = chars[..EDGE].iter().collect();
        let tail: String = chars[chars.len() - EDGE..].iter().collect();
        format!("{head}…{tail}")
    };
    format!("mock answer to \"{quote}\"")
}

fn server_error_body(status: StatusCode) -> String {
    let message = if status == StatusCode::SERVICE_UNAVAILABLE {
        "The engine is currently overloaded, please try again later"
    } else {
        "The server had an error while processing your request. Sorry about that!"
    };
    error_body(message, "server_error", None)
}

fn error_body(message: &str, kind: &str, code: Option<&str>) -> String {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_quotes_both_ends_of_long_prompts() {
        assert_eq!(answer("short  one\n"), "mock answer to \"short one\"");
        let long = format!("{} middle {}", "a".repeat(50), "z".repeat(50));
        let a = answer(&long);
        assert!(a.contains(&"a".repeat(40)) && a.contains(&"z".repeat(40)) && a.contains('…'));
        assert!(!a.contains("middle"));
    }

    #[tokio::test]
    async fn serves_completions_with_real_usage_and_counts_them() {
        let server = MockServer::start(MockConfig::default()).await.unwrap();
        let client = reqwest::Client::new();
        let url = format!("{}/chat/completions", server.base_url());
        let body =
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world"}]});
        let v: serde_json::Value = client
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "mock answer to \"hello world\""
        );
        assert_eq!(v["usage"]["prompt_tokens"], 9);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");

        let capped = json!({"model": "gpt-4o", "max_tokens": 2,
            "messages": [{"role": "user", "content": "hello world"}]});
        let v: serde_json::Value = client
            .post(&url)
            .json(&capped)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 2);
        assert_eq!(v["choices"][0]["finish_reason"], "length");

        let bad = client.post(&url).body("{").send().await.unwrap();
        assert_eq!(bad.status(), 400);

        let stats: MockStats = client
            .get(format!("http://{}/stats", server.addr))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(stats.requests, 3);
        assert_eq!(stats.responses.get("200"), Some(&2));
        assert_eq!(stats.responses.get("400"), Some(&1));
        assert_eq!(stats.in_flight, 0);
    }

    #[tokio::test]
    async fn injected_errors_have_the_openai_shape() {
        let cfg = MockConfig {
            error_rate: 1.0,
            ..Default::default()
        };
        let server = MockServer::start(cfg).await.unwrap();
        let resp = reqwest::Client::new()
            .post(format!("{}/chat/completions", server.base_url()))
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
            .send()
            .await
            .unwrap();
        assert!(resp.status() == 500 || resp.status() == 503);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "server_error");
    }
}

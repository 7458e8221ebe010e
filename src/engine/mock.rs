//! The mock server: a real HTTP server on 127.0.0.1, so `--mock` runs and every test exercise the
//! whole client path (connection pool, timeouts, status codes, JSON parsing). It speaks OpenAI
//! Chat Completions, OpenAI Responses and Anthropic Messages (see `mock/wire.rs`), checks each
//! request's shape as the real API does, and reports prompt-cache and reasoning tokens. It is a
//! drop-in for the official SDKs (`tests/sdk_conformance/` proves it with the Python ones):
//! `stream: true` gets server-sent events (`mock/stream.rs`), `n` several choices, forced
//! function tools a tool call (`mock/tools.rs`), and `/v1/models` and
//! `/v1/messages/count_tokens` are served (`mock/models.rs`, `mock/messages.rs`).
//!
//! Answers are deterministic and quote the start and end of the prompt they answer, so a test can
//! prove that each output landed on its own row; a request with a JSON schema (`response_format`
//! json_schema) gets JSON generated from it instead (see `mock/schema.rs`), some of it spoilt on
//! request. Usage is counted with the real tokenizer. Latency,
//! jitter, slow responses and 500/503 errors are injected on request; so are OpenAI-style rate
//! limits (429 with `x-ratelimit-*` and `retry-after` headers, see `mock/ratelimit.rs`), an exhausted
//! quota, a bounded serving capacity and transport faults (see `mock/fault.rs`). Other servers'
//! ways are imitated on request ([`ServerOptions`]): limits in fixed windows or per day, other
//! retry headers, a required key, missing endpoints (see `mock/routes.rs`). `GET /stats` reports
//! what the server saw, including the most requests it ever had in flight at once. The Batch API
//! (files and batches endpoints) is in `mock/batches.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::base::error::{Error, ExitStatus};
use crate::engine::tokens;

mod batches;
pub mod embeddings;
mod fault;
mod messages;
mod models;
mod prompt_cache;
mod ratelimit;
mod responses;
mod routes;
pub mod schema;
mod stream;
mod timeline;
mod tools;
mod vision;
mod wire;

pub use fault::{FaultKind, FaultSpec};
pub use ratelimit::{RetryAfter, go_duration};

use ratelimit::{LimitSpec, Limits};
use wire::Wire;

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
    /// Requests per minute accepted; more is answered 429 rate_limit_exceeded (type requests).
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute accepted; more is answered 429 (type tokens).
    pub tpm: Option<u32>,
    /// Completion requests after this many are answered 429 insufficient_quota.
    pub quota_exhausted_after: Option<u64>,
    /// Requests served at once at most; the rest wait their turn.
    pub capacity: Option<usize>,
    /// Faults injected into accepted requests; their rates add up to 1 at most.
    pub faults: Vec<FaultSpec>,
    /// How long the body of a `trickle` fault takes.
    pub trickle: Duration,
    /// Fraction of answers to schema requests that are spoilt (not JSON, or not fitting).
    pub invalid_json_rate: f64,
    /// Batch API: processing time of a batch, share of its requests that fail or expire, and
    /// the most requests one batch may hold.
    pub batch_latency: Duration,
    pub batch_failure_rate: f64,
    pub batch_expire_rate: f64,
    pub batch_max_requests: u64,
    /// How the server departs from the plain OpenAI-like one, to imitate others.
    pub server: Box<ServerOptions>,
}

/// The options that make the mock behave like other servers: other rate-limit schemes and
/// headers, a key requirement, missing endpoints. Boxed in [`MockConfig`] to keep it small.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Requests per day accepted (Groq-style); reported in the `*-requests` headers.
    pub rpd: Option<u32>,
    /// Enforce `rpm` and `tpm` in fixed windows of this length instead of a refilling bucket.
    pub rate_window: Option<Duration>,
    /// The retry headers of a 429 over the rate limits.
    pub retry_after: RetryAfter,
    /// OpenAI endpoints refuse requests without an `Authorization: Bearer` key (401).
    pub require_key: bool,
    /// Paths answered 404, with the paths below them, like a server without those endpoints.
    pub not_found: Vec<String>,
    /// Enforce the limits without stating them: no `x-ratelimit-*` headers on any response
    /// (vLLM, Ollama, many proxies), so a client learns of them only from 429s.
    pub no_limit_headers: bool,
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
            rpm: None,
            tpm: None,
            quota_exhausted_after: None,
            capacity: None,
            faults: Vec::new(),
            trickle: Duration::from_secs(10),
            invalid_json_rate: 0.0,
            batch_latency: Duration::ZERO,
            batch_failure_rate: 0.0,
            batch_expire_rate: 0.0,
            batch_max_requests: 50_000,
            server: Box::default(),
        }
    }
}

impl MockConfig {
    /// Checks what the flag parsers cannot check one value at a time.
    pub fn validate(&self) -> Result<(), String> {
        if self.rpm == Some(0) || self.tpm == Some(0) || self.server.rpd == Some(0) {
            return Err("--rpm, --tpm and --rpd must be at least 1".into());
        }
        if let Some(w) = self.server.rate_window {
            if w.is_zero() {
                return Err("--rate-window must be longer than 0s".into());
            }
            if self.rpm.is_none() && self.tpm.is_none() {
                return Err("--rate-window needs --rpm or --tpm to enforce".into());
            }
        }
        if let Some(p) = self.server.not_found.iter().find(|p| !p.starts_with('/')) {
            return Err(format!(
                "--not-found {p:?}: give a path that starts with /, e.g. /v1/responses"
            ));
        }
        if self.capacity == Some(0) {
            return Err("--capacity must be at least 1".into());
        }
        for (name, rate) in [
            ("--batch-failure-rate", self.batch_failure_rate),
            ("--batch-expire-rate", self.batch_expire_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} {rate} must be between 0 and 1"));
            }
        }
        if let Some(f) = self.faults.iter().find(|f| !(0.0..=1.0).contains(&f.rate)) {
            return Err(format!(
                "--fault {}={}: the rate must be between 0 and 1",
                f.kind, f.rate
            ));
        }
        let total: f64 = self.faults.iter().map(|f| f.rate).sum();
        if total > 1.0 + 1e-9 {
            return Err(format!(
                "the --fault rates add up to {total}, more than 1 (a request gets one fault at most)"
            ));
        }
        Ok(())
    }
}

/// What `GET /stats` returns.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MockStats {
    /// Requests received on the completion endpoint.
    pub requests: u64,
    /// Responses sent, by HTTP status. A fault that sends a status line (truncated, malformed,
    /// missing-fields, trickle) counts as the 200 it claims to be; reset and hang send none.
    pub responses: BTreeMap<String, u64>,
    pub in_flight: u64,
    pub max_in_flight: u64,
    /// Tokens of the complete, well-formed answers sent (trickled ones once fully sent).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// 429 rate_limit_exceeded answers (--rpm, --tpm).
    #[serde(default)]
    pub rate_limited: u64,
    /// 429 insufficient_quota answers (--quota-exhausted-after).
    #[serde(default)]
    pub quota_rejected: u64,
    /// Injected faults by kind; every kind is listed.
    #[serde(default)]
    pub faults: BTreeMap<String, u64>,
    /// The parts of `prompt_tokens` answered from the prompt cache, and of `completion_tokens`
    /// spent reasoning.
    #[serde(default)]
    pub cached_tokens: u64,
    #[serde(default)]
    pub reasoning_tokens: u64,
    /// Answers to schema requests sent spoilt on purpose (--invalid-json-rate).
    #[serde(default)]
    pub invalid_answers: u64,
    /// What the answers produced would be billed, in USD, at the embedded prices of the model
    /// asked for: every accepted request whose answer was made, its usage as returned, whether
    /// or not it reached the client (a fault may lose it after the "server" billed it). What a
    /// spend cap is checked against.
    #[serde(default)]
    pub billed_usd: f64,
    /// Requests answered 404 or 405 because nothing is served at their path for their method
    /// (a path without `/v1`, a `--not-found` path); not counted in `requests`.
    #[serde(default)]
    pub unserved: u64,
    /// When the first completion request arrived and the last finished, in milliseconds since
    /// the mock started; the longest time between two arrivals; and the most requests in flight
    /// before the first finished (how many a client sends before it hears anything).
    #[serde(default)]
    pub first_request_ms: u64,
    #[serde(default)]
    pub last_answer_ms: u64,
    #[serde(default)]
    pub longest_gap_ms: u64,
    #[serde(default)]
    pub max_in_flight_before_first_answer: u64,
}

struct Shared {
    cfg: MockConfig,
    rng: Mutex<StdRng>,
    limits: Mutex<Limits>,
    capacity: Option<Arc<Semaphore>>,
    requests: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    rate_limited: AtomicU64,
    quota_rejected: AtomicU64,
    faults: [AtomicU64; FaultKind::ALL.len()],
    responses: Mutex<BTreeMap<u16, u64>>,
    prompt_cache: prompt_cache::PromptCache,
    cached_tokens: AtomicU64,
    reasoning_tokens: AtomicU64,
    invalid_answers: AtomicU64,
    prices: crate::engine::pricing::PriceTable,
    billed_usd: Mutex<f64>,
    unserved: AtomicU64,
    batches: batches::BatchStore,
    timeline: Mutex<timeline::Timeline>,
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
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            quota_rejected: self.quota_rejected.load(Ordering::Relaxed),
            faults: FaultKind::ALL
                .iter()
                .map(|k| {
                    let n = self.faults[k.index()].load(Ordering::Relaxed);
                    (k.name().to_string(), n)
                })
                .collect(),
            cached_tokens: self.cached_tokens.load(Ordering::Relaxed),
            reasoning_tokens: self.reasoning_tokens.load(Ordering::Relaxed),
            billed_usd: *self.billed_usd.lock().expect("billed lock"),
            invalid_answers: self.invalid_answers.load(Ordering::Relaxed),
            unserved: self.unserved.load(Ordering::Relaxed),
            ..self.timeline()
        }
    }

    /// The [`timeline`] figures, as stats.
    fn timeline(&self) -> MockStats {
        let f = self.timeline.lock().expect("timeline lock").figures();
        MockStats {
            first_request_ms: f.first_request_ms,
            last_answer_ms: f.last_answer_ms,
            longest_gap_ms: f.longest_gap_ms,
            max_in_flight_before_first_answer: f.max_in_flight_before_first_answer,
            ..Default::default()
        }
    }

    /// Bills the answer made for `model`, as a real API would once it has produced it.
    fn bill(&self, model: &str, a: &Answer) {
        let Some(price) = self.prices.lookup(model) else {
            return;
        };
        let usage = crate::base::usage::Usage {
            prompt_tokens: a.prompt_tokens,
            completion_tokens: a.completion_tokens,
            cached_tokens: a.cached_tokens + a.cache_read_tokens,
            cache_write_tokens: a.cache_write_tokens,
            reasoning_tokens: a.reasoning_tokens,
        };
        *self.billed_usd.lock().expect("billed lock") += price.cost(&usage);
    }

    fn count_tokens(&self, a: &Answer) {
        self.cached_tokens
            .fetch_add(a.cached_tokens + a.cache_read_tokens, Ordering::Relaxed);
        self.reasoning_tokens
            .fetch_add(a.reasoning_tokens, Ordering::Relaxed);
        self.prompt_tokens
            .fetch_add(a.prompt_tokens, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(a.completion_tokens, Ordering::Relaxed);
        if a.spoilt {
            self.invalid_answers.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counts a request in flight for as long as it lives, including when the client gives up and
/// the handler (or the body it streams) is dropped mid-way.
struct InFlight(Arc<Shared>);

impl InFlight {
    /// Also counts the request; returns its number (1-based).
    fn enter(s: &Arc<Shared>) -> (Self, u64) {
        let n = s.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let mut timeline = s.timeline.lock().expect("timeline lock");
        timeline.arrived(Instant::now(), now);
        drop(timeline);
        (InFlight(s.clone()), n)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Ok(mut timeline) = self.0.timeline.lock() {
            timeline.finished(Instant::now());
        }
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
        cfg.validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", cfg.port)).await?;
        let addr = listener.local_addr()?;
        let rng = match cfg.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        let shared = Arc::new(Shared {
            rng: Mutex::new(rng),
            limits: Mutex::new(Limits::new(
                LimitSpec {
                    rpm: cfg.rpm,
                    tpm: cfg.tpm,
                    rpd: cfg.server.rpd,
                    window: cfg.server.rate_window,
                    retry_after: cfg.server.retry_after,
                },
                Instant::now(),
            )),
            capacity: cfg.capacity.map(|n| Arc::new(Semaphore::new(n))),
            cfg,
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            quota_rejected: AtomicU64::new(0),
            faults: Default::default(),
            responses: Mutex::new(BTreeMap::new()),
            prompt_cache: Default::default(),
            cached_tokens: AtomicU64::new(0),
            reasoning_tokens: AtomicU64::new(0),
            invalid_answers: AtomicU64::new(0),
            prices: crate::engine::pricing::PriceTable::embedded(),
            billed_usd: Mutex::new(0.0),
            unserved: AtomicU64::new(0),
            batches: Default::default(),
            timeline: Mutex::new(timeline::Timeline::new(Instant::now())),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/responses", post(responses_api))
            .route("/v1/embeddings", post(embeddings::serve))
            .route("/v1/messages", post(messages_api))
            .route("/v1/messages/count_tokens", post(messages::count_tokens))
            .route("/v1/models", get(models::list))
            .route("/v1/models/{id}", get(models::retrieve))
            .route("/stats", get(stats))
            .merge(batches::routes())
            .fallback(routes::fallback)
            .method_not_allowed_fallback(routes::wrong_method)
            .layer(axum::middleware::from_fn_with_state(
                shared.clone(),
                routes::gate,
            ))
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
    cfg.validate().map_err(Error::Usage)?;
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
    response_format: Option<serde_json::Value>,
    n: Option<serde_json::Value>,
    stream: Option<bool>,
    stream_options: Option<serde_json::Value>,
    tools: Option<serde_json::Value>,
    tool_choice: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
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
    fault: Option<FaultKind>,
}

/// A request the rate limits let in takes its turn: a slot of `--capacity`, the latency the dice
/// give it, then the injected server error (`Err`, in `wire`'s form) or the plan to answer.
async fn take_turn(
    s: &Arc<Shared>,
    valid: bool,
    wire: Wire,
) -> Result<(Option<OwnedSemaphorePermit>, Plan), (Response, Option<StatusCode>)> {
    let permit = match &s.capacity {
        Some(sem) => Some(sem.clone().acquire_owned().await.expect("never closed")),
        None => None,
    };
    let plan = plan(s, valid);
    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }
    match plan.error {
        Some(status) => {
            let (status, body) = wire.server_error(status);
            Err(json_reply(status, body))
        }
        None => Ok((permit, plan)),
    }
}

/// Rolls latency and injected errors; faults only for `valid` requests. A fault replaces an
/// injected 5xx.
fn plan(s: &Shared, valid: bool) -> Plan {
    let cfg = &s.cfg;
    let mut rng = s.rng.lock().expect("rng lock");
    let mut delay = cfg.latency;
    if !cfg.jitter.is_zero() {
        delay += Duration::from_micros(rng.random_range(0..=cfg.jitter.as_micros() as u64));
    }
    if cfg.slow_rate > 0.0 && rng.random_bool(cfg.slow_rate) {
        delay += cfg.slow;
    }
    let mut error = (cfg.error_rate > 0.0 && rng.random_bool(cfg.error_rate)).then(|| {
        if rng.random_bool(0.5) {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    });
    let fault = (valid && !cfg.faults.is_empty())
        .then(|| fault::pick(&cfg.faults, rng.random::<f64>()))
        .flatten();
    if fault.is_some() {
        error = None;
    }
    Plan {
        delay,
        error,
        fault,
    }
}

async fn chat_completions(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(s, Wire::Chat, headers, body).await
}

async fn responses_api(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    serve(s, Wire::Responses, headers, body).await
}

async fn messages_api(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    serve(s, Wire::Messages, headers, body).await
}

/// Serves one request of any wire format: the same limits, latency, errors and faults, each
/// in the format's own shape.
async fn serve(s: Arc<Shared>, wire: Wire, headers: HeaderMap, body: Bytes) -> Response {
    let (guard, n) = InFlight::enter(&s);
    let (mut resp, status) = match wire.missing_key(&headers, s.cfg.server.require_key) {
        Some((status, body)) => json_reply(status, body),
        None => respond(&s, wire, n, &headers, &body, guard).await,
    };
    if let Some(status) = status {
        *s.responses
            .lock()
            .expect("stats lock")
            .entry(status.as_u16())
            .or_default() += 1;
    }
    if let Ok(v) = HeaderValue::from_str(&format!("req_mock_{n}")) {
        resp.headers_mut().insert(wire.request_id_header(), v);
    }
    let mut limits = s.limits.lock().expect("limits lock");
    if limits.is_active() && !s.cfg.server.no_limit_headers {
        wire.limit_headers(&mut limits, resp.headers_mut());
    }
    resp
}

/// Answers request number `n`, with the status to count (none when no status line is sent).
async fn respond(
    s: &Arc<Shared>,
    wire: Wire,
    n: u64,
    headers: &HeaderMap,
    body: &[u8],
    guard: InFlight,
) -> (Response, Option<StatusCode>) {
    let cfg = &s.cfg;
    if cfg.quota_exhausted_after.is_some_and(|max| n > max) {
        s.quota_rejected.fetch_add(1, Ordering::Relaxed);
        let (status, body) = wire.quota_error();
        return json_reply(status, body);
    }

    // The answer is deterministic, so its cost is known on arrival, when a real API checks the
    // rate limits (and rejects at once, without the latency).
    // Dice for --invalid-json-rate are rolled for every request, but only a request with a schema
    // can have its answer spoilt.
    let spoil = roll_spoil(s);
    let parsed = wire.parse(headers, body, spoil);
    if let Ok((req, answer)) = &parsed {
        let cost = answer.prompt_tokens + answer.completion_tokens;
        let verdict = s
            .limits
            .lock()
            .expect("limits lock")
            .admit(cost, Instant::now());
        if let Err(rejection) = verdict {
            s.rate_limited.fetch_add(1, Ordering::Relaxed);
            let (mut resp, status) = json_reply(
                StatusCode::TOO_MANY_REQUESTS,
                wire.rate_limited(&rejection, &req.model),
            );
            wire.retry_headers(&rejection, resp.headers_mut());
            return (resp, status);
        }
    }

    let (permit, plan) = match take_turn(s, parsed.is_ok(), wire).await {
        Ok(turn) => turn,
        Err(reply) => return reply,
    };
    let (req, mut answer) = match parsed {
        Ok(ok) => ok,
        Err((status, reply)) => return json_reply(status, reply),
    };
    // Accepted: from now on the prompt is in the cache for the requests that follow.
    s.prompt_cache.serve(&mut answer);
    s.bill(&req.model, &answer);
    let mut json = wire.success(&req, &answer, n);
    if req.stream {
        json = wire.stream(&req, &json);
    }
    let Some(kind) = plan.fault else {
        s.count_tokens(&answer);
        let (mut resp, status) = json_reply(StatusCode::OK, json);
        if req.stream {
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        }
        return (resp, status);
    };
    s.faults[kind.index()].fetch_add(1, Ordering::Relaxed);
    let mut resp = match kind {
        FaultKind::Reset => return (fault::reset(), None),
        FaultKind::Hang => {
            // Holds the permit and the in-flight count until the client gives up, which drops
            // this future.
            std::future::pending::<()>().await;
            unreachable!("pending never resolves")
        }
        FaultKind::Truncated => fault::truncated(json),
        FaultKind::Malformed => fault::malformed(json),
        FaultKind::MissingFields => wire.missing_fields(&req.model, n),
        FaultKind::Trickle => {
            let shared = s.clone();
            let keep: (InFlight, Option<OwnedSemaphorePermit>) = (guard, permit);
            fault::trickle(json, cfg.trickle, keep, move || {
                shared.count_tokens(&answer)
            })
        }
    };
    if req.stream && kind != FaultKind::MissingFields {
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    }
    (resp, Some(StatusCode::OK))
}

/// A JSON answer with the status to count, as [`respond`] returns it.
fn json_reply(status: StatusCode, body: String) -> (Response, Option<StatusCode>) {
    (reply(status, body), Some(status))
}

/// A JSON answer of any endpoint.
fn reply(status: StatusCode, body: String) -> Response {
    (status, [(CONTENT_TYPE, "application/json")], body).into_response()
}

/// One page of a list endpoint, paged as `dialect`'s lists are: the items after the one whose
/// id is `after` (from the first when none is given, none when no item has that id), at most
/// `limit` of them, with `has_more` and the first and last ids; OpenAI's says `"object": "list"`.
fn list_page<T>(
    dialect: routes::Dialect,
    items: &[T],
    after: Option<&str>,
    limit: usize,
    id: impl Fn(&T) -> &str,
    to_json: impl Fn(&T) -> serde_json::Value,
) -> serde_json::Value {
    let start = match after {
        Some(after) => items
            .iter()
            .position(|x| id(x) == after)
            .map_or(items.len(), |p| p + 1),
        None => 0,
    };
    let page: Vec<serde_json::Value> = items.iter().skip(start).take(limit).map(to_json).collect();
    let has_more = start + page.len() < items.len();
    let first_id = page.first().map(|x| x["id"].clone());
    let last_id = page.last().map(|x| x["id"].clone());
    let mut body = serde_json::Map::new();
    if dialect == routes::Dialect::OpenAi {
        body.insert("object".into(), json!("list"));
    }
    body.insert("data".into(), json!(page));
    body.insert("has_more".into(), json!(has_more));
    body.insert("first_id".into(), json!(first_id));
    body.insert("last_id".into(), json!(last_id));
    serde_json::Value::Object(body)
}

/// The most choices (`n`) one request may ask for.
const MAX_CHOICES: u64 = 128;

/// What a Chat request asks for and the answer the mock gives it, or the 400 body.
fn parse(body: &[u8], spoil: Option<f64>) -> Result<(wire::Incoming, Answer), String> {
    let req = chat_request(body)?;
    let choices = choices(req.n.as_ref())?;
    let stream = req.stream.unwrap_or(false);
    let stream_usage = stream_usage(req.stream_options.as_ref(), stream)?;
    let call = tools::forced(
        tools::Flavor::Chat,
        req.tools.as_ref(),
        req.tool_choice.as_ref(),
    )
    .map_err(|(message, param, code)| invalid_param(&message, Some(&param), code))?;
    let (schema, json_object) = chat_format(&req)?;
    let mut answer = Answer::to(&req, Ask::of(call.as_ref(), schema, json_object), spoil);
    answer.prompt_tokens += chat_file_tokens(&req)?;
    answer.tool = call.map(|c| c.name);
    // Every choice is the same answer, and costs the same.
    answer.completion_tokens *= u64::from(choices);
    answer.reasoning_tokens *= u64::from(choices);
    let mut incoming = wire::Incoming::new(req.model);
    incoming.stream = stream;
    incoming.stream_usage = stream_usage;
    incoming.choices = choices;
    Ok((incoming, answer))
}

/// Prompt tokens of the files the last user message attaches (checked by [`vision::tokens`]).
fn chat_file_tokens(req: &ChatRequest) -> Result<u64, String> {
    match req.messages.iter().rev().find(|m| m.role == "user") {
        Some(ChatMessage {
            content: serde_json::Value::Array(parts),
            ..
        }) => vision::tokens(vision::Flavor::Chat, &req.model, parts)
            .map_err(|e| invalid_param(&e, Some("messages"), "invalid_value")),
        _ => Ok(0),
    }
}

/// The Chat request in `body`, refused when it is no JSON of its shape or has no messages.
fn chat_request(body: &[u8]) -> Result<ChatRequest, String> {
    match serde_json::from_slice::<ChatRequest>(body) {
        Err(e) => Err(unparsable_body(&e)),
        Ok(req) if req.messages.is_empty() => Err(error_body(
            "[] is too short - 'messages'",
            "invalid_request_error",
            None,
        )),
        Ok(req) => Ok(req),
    }
}

/// How many choices `n` asks for: 1 when not given, else 1 to [`MAX_CHOICES`].
fn choices(n: Option<&serde_json::Value>) -> Result<u32, String> {
    let v = match n {
        None | Some(serde_json::Value::Null) => return Ok(1),
        Some(v) => v,
    };
    match v.as_u64() {
        Some(n) if (1..=MAX_CHOICES).contains(&n) => Ok(n as u32),
        Some(0) => Err(invalid_param(
            "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead.",
            Some("n"),
            "integer_below_min_value",
        )),
        _ => Err(invalid_param(
            &format!(
                "Invalid 'n': expected an integer from 1 to {MAX_CHOICES}, but got {v} instead."
            ),
            Some("n"),
            "invalid_value",
        )),
    }
}

/// Whether a streamed answer ends with a usage chunk (`stream_options.include_usage`);
/// `stream_options` without `stream` is refused, as OpenAI refuses it.
fn stream_usage(options: Option<&serde_json::Value>, stream: bool) -> Result<bool, String> {
    match options {
        None | Some(serde_json::Value::Null) => Ok(false),
        Some(_) if !stream => Err(invalid_param(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            Some("stream_options"),
            "invalid_value",
        )),
        Some(o) => Ok(o.get("include_usage") == Some(&json!(true))),
    }
}

/// What `response_format` asks for: the schema of json_schema, and whether it is json_object,
/// which OpenAI takes only when the messages say "json".
fn chat_format(req: &ChatRequest) -> Result<(Option<&serde_json::Value>, bool), String> {
    let format = req.response_format.as_ref();
    let json_object = is_json_object(format);
    if json_object
        && !req
            .messages
            .iter()
            .any(|m| m.text().to_lowercase().contains("json"))
    {
        return Err(invalid_param(
            "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
            Some("messages"),
            "invalid_value",
        ));
    }
    let schema = match format.map(schema::requested_schema) {
        Some(Err(message)) => return Err(error_body(&message, "invalid_request_error", None)),
        Some(Ok(schema)) => schema,
        None => None,
    };
    Ok((schema, json_object))
}

/// Whether a response format (Chat's `response_format`, Responses' `text.format`) is of type
/// json_object.
fn is_json_object(format: Option<&serde_json::Value>) -> bool {
    format
        .and_then(|f| f.get("type"))
        .is_some_and(|t| t == "json_object")
}

/// What shape an OpenAI answer (Chat or Responses) takes.
enum Ask<'a> {
    Text,
    /// A json_object response format: some JSON object.
    JsonObject,
    /// JSON that fits this schema (a json_schema response format, or a tool's parameters).
    Schema(&'a serde_json::Value),
}

impl<'a> Ask<'a> {
    /// What a request asks for: a forced tool call's arguments, else the response format's
    /// schema, else a JSON object (json_object), else text.
    fn of(
        call: Option<&'a tools::Call>,
        schema: Option<&'a serde_json::Value>,
        json_object: bool,
    ) -> Self {
        match (call, schema) {
            (Some(call), _) => Ask::Schema(&call.parameters),
            (None, Some(schema)) => Ask::Schema(schema),
            (None, None) if json_object => Ask::JsonObject,
            (None, None) => Ask::Text,
        }
    }
}

/// Whether this request's answer is to be spoilt if it has a schema (`--invalid-json-rate`),
/// with the roll that picks how.
fn roll_spoil(s: &Shared) -> Option<f64> {
    let rate = s.cfg.invalid_json_rate;
    if rate <= 0.0 {
        return None;
    }
    let mut rng = s.rng.lock().expect("rng lock");
    rng.random_bool(rate).then(|| rng.random::<f64>())
}

/// The answer to a request that asks for `schema`, with `spoil` as for [`roll_spoil`].
fn structured_answer(
    model: &str,
    system: Option<&str>,
    user: &str,
    max: Option<u32>,
    schema: &serde_json::Value,
    spoil: Option<f64>,
) -> Answer {
    Answer::asked(model, system, user, max, Ask::Schema(schema), spoil)
}

/// The text of an answer that must fit `schema`: JSON generated from it, spoilt when a `spoil`
/// roll is given.
fn structured_text(schema: &serde_json::Value, user: &str, spoil: Option<f64>) -> String {
    let valid = schema::generate(schema, user);
    match spoil {
        Some(roll) => schema::break_answer(schema, &valid, roll),
        None => valid.to_string(),
    }
}

/// The deterministic answer to one request, with its usage.
struct Answer {
    text: String,
    finish: &'static str,
    /// Every input token, cached ones included.
    prompt_tokens: u64,
    /// Visible and reasoning tokens.
    completion_tokens: u64,
    /// OpenAI-style automatic prompt caching: the part of `prompt_tokens` read from the cache.
    cached_tokens: u64,
    /// Anthropic-style explicit caching: the parts of `prompt_tokens` read from and written to
    /// the cache.
    cache_read_tokens: u64,
    cache_write_tokens: u64,
    /// The part of `completion_tokens` a reasoning model spent thinking.
    reasoning_tokens: u64,
    /// The prompt prefix the cache may hold, set by the wire format that can cache it.
    prefix: Option<prompt_cache::Prefix>,
    /// Spoilt on purpose (`--invalid-json-rate`).
    spoilt: bool,
    /// The tool the answer calls, its text being the tool's input (arguments).
    tool: Option<String>,
}

impl Answer {
    /// The answer to `req`: JSON generated from a schema when it asks for one (spoilt when a
    /// `spoil` roll is given), a JSON object holding the plain answer for json_object, else the
    /// plain quoting answer.
    fn to(req: &ChatRequest, ask: Ask, spoil: Option<f64>) -> Self {
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
        let max = req.max_completion_tokens.or(req.max_tokens);
        let mut a = Answer::asked(&req.model, system.as_deref(), &user, max, ask, spoil);
        a.prefix = system
            .as_deref()
            .map(|sys| prompt_cache::Prefix::automatic(&req.model, sys));
        a
    }

    /// The answer of the shape `ask` calls for, cut to `max` tokens: JSON generated from a
    /// schema (spoilt when a `spoil` roll is given), a JSON object holding the plain answer, or
    /// the plain quoting answer.
    fn asked(
        model: &str,
        system: Option<&str>,
        user: &str,
        max: Option<u32>,
        ask: Ask,
        spoil: Option<f64>,
    ) -> Self {
        let text = match ask {
            Ask::Schema(schema) => structured_text(schema, user, spoil),
            Ask::JsonObject => json!({"answer": answer(user)}).to_string(),
            Ask::Text => answer(user),
        };
        let schema = matches!(ask, Ask::Schema(_));
        let mut a = Answer::with_text(model, system, user, max, text);
        a.spoilt = schema && spoil.is_some();
        a
    }

    /// The answer to a prompt in any wire format: the quoting text, cut to `max` tokens.
    fn new(model: &str, system: Option<&str>, user: &str, max: Option<u32>) -> Self {
        Answer::with_text(model, system, user, max, answer(user))
    }

    /// The answer `text` to a prompt, cut to `max` tokens. A reasoning model (o-series, gpt-5)
    /// first spends [`reasoning_tokens`] thinking, which count against `max` as they do on
    /// OpenAI, so a small cap can leave no visible text at all.
    fn with_text(
        model: &str,
        system: Option<&str>,
        user: &str,
        max: Option<u32>,
        mut text: String,
    ) -> Self {
        let prompt_tokens = u64::from(tokens::count_chat(model, system, user));
        let mut finish = "stop";
        let encoding = tokens::encoding_for(model);
        let mut ids = encoding.encode_ordinary(&text);
        let mut reasoning = reasoning_tokens(model, user);
        if let Some(max) = max.map(u64::from)
            && ids.len() as u64 + reasoning > max
        {
            reasoning = reasoning.min(max);
            ids.truncate((max - reasoning) as usize);
            text = encoding.decode(&ids).unwrap_or_default();
            finish = "length";
        }
        Answer {
            text,
            finish,
            prompt_tokens,
            completion_tokens: ids.len() as u64 + reasoning,
            cached_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: reasoning,
            prefix: None,
            spoilt: false,
            tool: None,
        }
    }
}

/// What a reasoning model (o1, o3, o4-mini, gpt-5...) of the mock spends thinking before it
/// answers: 64 tokens per started 64 tokens of the user prompt. Other models do not reason.
pub fn reasoning_tokens(model: &str, user: &str) -> u64 {
    let m = model.rsplit('/').next().unwrap_or(model);
    let reasons = m.starts_with("gpt-5")
        || (m.starts_with('o') && m[1..].starts_with(|c: char| c.is_ascii_digit()));
    if !reasons {
        return 0;
    }
    u64::from(tokens::count(model, user)).div_ceil(64).max(1) * 64
}

fn completion(req: &wire::Incoming, a: &Answer, n: u64) -> String {
    let (message, finish) = match &a.tool {
        Some(name) => (
            json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [{
                "id": format!("call_mock{n}"), "type": "function",
                "function": {"name": name, "arguments": a.text}}]}),
            if a.finish == "length" {
                "length"
            } else {
                "tool_calls"
            },
        ),
        None => (
            json!({"role": "assistant", "content": a.text, "refusal": null}),
            a.finish,
        ),
    };
    let choices: Vec<serde_json::Value> = (0..req.choices)
        .map(|i| json!({"index": i, "message": message, "logprobs": null, "finish_reason": finish}))
        .collect();
    json!({
        "id": format!("chatcmpl-mock{n}"),
        "object": "chat.completion",
        "created": unix_now(),
        "model": req.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": a.prompt_tokens,
            "completion_tokens": a.completion_tokens,
            "total_tokens": a.prompt_tokens + a.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": a.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": a.reasoning_tokens, "audio_tokens": 0,
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

/// OpenAI's 400 body for a request that breaks a rule: an `invalid_request_error` naming the
/// `param` at fault and the `code` of the rule.
fn invalid_param(message: &str, param: Option<&str>, code: &str) -> String {
    json!({"error": {"message": message, "type": "invalid_request_error", "param": param,
        "code": code}})
    .to_string()
}

/// OpenAI's 400 body for a request body that is no JSON (or not of the endpoint's shape).
fn unparsable_body(e: &serde_json::Error) -> String {
    error_body(
        &format!("We could not parse the JSON body of your request: {e}"),
        "invalid_request_error",
        None,
    )
}

/// The time now in seconds since the Unix epoch, as the APIs write `created` times.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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

    fn chat(content: &str) -> serde_json::Value {
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": content}]})
    }

    async fn post(client: &reqwest::Client, server: &MockServer) -> reqwest::Response {
        client
            .post(format!("{}/chat/completions", server.base_url()))
            .json(&chat("hello world"))
            .send()
            .await
            .unwrap()
    }

    fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
        r.headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    fn with_fault(kind: FaultKind) -> MockConfig {
        MockConfig {
            faults: vec![FaultSpec { kind, rate: 1.0 }],
            trickle: Duration::from_millis(300),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn rpm_admits_a_second_of_burst_then_answers_429_like_openai() {
        let cfg = MockConfig {
            rpm: Some(300),
            ..Default::default()
        };
        let server = MockServer::start(cfg).await.unwrap();
        let client = reqwest::Client::new();
        let replies = futures::future::join_all((0..12).map(|_| post(&client, &server))).await;
        let (ok, limited): (Vec<_>, Vec<_>) = replies.into_iter().partition(|r| r.status() == 200);
        // A 5-request bucket, plus one refilled every 200 ms while the burst arrives.
        assert!((5..=7).contains(&ok.len()), "{} accepted", ok.len());
        let r = limited.into_iter().next().unwrap();
        assert_eq!(r.status(), 429);
        let ms: u64 = header(&r, "retry-after-ms").parse().unwrap();
        assert!((1..=200).contains(&ms), "retry-after-ms {ms}");
        assert_eq!(header(&r, "retry-after"), "1");
        assert_eq!(header(&r, "x-ratelimit-limit-requests"), "300");
        assert!(header(&r, "x-ratelimit-reset-requests").ends_with('s'));
        assert!(r.headers().get("x-ratelimit-limit-tokens").is_none());
        let v: serde_json::Value = r.json().await.unwrap();
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(
                "Rate limit reached for gpt-4o in organization org-mock on requests per min \
                 (RPM): Limit 300, Used "
            ) && message.contains(", Requested 1. Please try again in ")
                && message.ends_with("ms."),
            "{message}"
        );
        assert_eq!(v["error"]["type"], "requests");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert!(v["error"]["param"].is_null());

        let stats = server.stats();
        assert_eq!(stats.rate_limited, 12 - ok.len() as u64);
        assert_eq!(stats.responses.get("429"), Some(&stats.rate_limited));
        // Rejected requests cost no tokens.
        assert_eq!(stats.prompt_tokens, 9 * ok.len() as u64);
    }

    #[tokio::test]
    async fn limits_can_be_enforced_without_being_stated() {
        let cfg = MockConfig {
            rpm: Some(60),
            server: Box::new(ServerOptions {
                no_limit_headers: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let server = MockServer::start(cfg).await.unwrap();
        let client = reqwest::Client::new();
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let r = post(&client, &server).await;
            assert!(
                !r.headers()
                    .keys()
                    .any(|k| k.as_str().starts_with("x-ratelimit-")),
                "{:?}",
                r.headers()
            );
            statuses.push(r.status().as_u16());
        }
        assert_eq!(statuses[0], 200);
        assert!(
            statuses.contains(&429),
            "60 rpm still enforced: {statuses:?}"
        );
    }

    #[tokio::test]
    async fn every_response_carries_the_ratelimit_headers() {
        let cfg = MockConfig {
            rpm: Some(600),
            tpm: Some(6_000),
            ..Default::default()
        };
        let server = MockServer::start(cfg).await.unwrap();
        let client = reqwest::Client::new();
        let r = post(&client, &server).await;
        assert_eq!(r.status(), 200);
        let remaining: u64 = header(&r, "x-ratelimit-remaining-requests")
            .parse()
            .unwrap();
        assert!((598..=599).contains(&remaining), "{remaining}");
        let reset = header(&r, "x-ratelimit-reset-requests").to_string();
        let reset_ms: u64 = reset.strip_suffix("ms").unwrap().parse().unwrap();
        assert!((1..=100).contains(&reset_ms), "{reset}");
        assert_eq!(header(&r, "x-ratelimit-limit-tokens"), "6000");
        let remaining: u64 = header(&r, "x-ratelimit-remaining-tokens").parse().unwrap();
        assert!(r.headers().contains_key("x-ratelimit-reset-tokens"));
        assert!(!r.headers().contains_key("retry-after"));
        let v: serde_json::Value = r.json().await.unwrap();
        let cost = v["usage"]["total_tokens"].as_u64().unwrap();
        // 100 tokens a second come back, so the cost shows for about 170 ms.
        assert!(
            (6_000 - cost..6_000).contains(&remaining),
            "{remaining} after {cost}"
        );

        // Also on errors.
        let bad = client
            .post(format!("{}/chat/completions", server.base_url()))
            .body("{")
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400);
        assert_eq!(header(&bad, "x-ratelimit-limit-requests"), "600");
    }

    #[tokio::test]
    async fn tpm_over_budget_is_a_tokens_429() {
        let cfg = MockConfig {
            tpm: Some(600),
            ..Default::default()
        };
        let server = MockServer::start(cfg).await.unwrap();
        let client = reqwest::Client::new();
        // The first request costs more than the 10-token bucket but finds it full.
        let first = post(&client, &server).await;
        assert_eq!(first.status(), 200);
        let r = post(&client, &server).await;
        assert_eq!(r.status(), 429);
        assert_eq!(header(&r, "x-ratelimit-limit-tokens"), "600");
        assert!(r.headers().contains_key("retry-after-ms"));
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "tokens");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("on tokens per min (TPM): Limit 600, Used "),
            "{message}"
        );
        let stats = server.stats();
        assert_eq!(stats.rate_limited, 1);
        assert_eq!(stats.responses.get("200"), Some(&1));
    }

    #[tokio::test]
    async fn quota_runs_out_after_n_requests() {
        let cfg = MockConfig {
            quota_exhausted_after: Some(2),
            ..Default::default()
        };
        let server = MockServer::start(cfg).await.unwrap();
        let client = reqwest::Client::new();
        for _ in 0..2 {
            assert_eq!(post(&client, &server).await.status(), 200);
        }
        for _ in 0..2 {
            let r = post(&client, &server).await;
            assert_eq!(r.status(), 429);
            assert!(!r.headers().contains_key("retry-after"));
            assert!(!r.headers().contains_key("retry-after-ms"));
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["error"]["type"], "insufficient_quota");
            assert_eq!(v["error"]["code"], "insufficient_quota");
            assert_eq!(
                v["error"]["message"],
                "You exceeded your current quota, please check your plan and billing details."
            );
        }
        let stats = server.stats();
        assert_eq!(stats.quota_rejected, 2);
        assert_eq!(stats.rate_limited, 0);
        assert_eq!(stats.requests, 4);
    }

    #[tokio::test]
    async fn capacity_bounds_the_requests_served_at_once() {
        let cfg = MockConfig {
            capacity: Some(2),
            latency: Duration::from_millis(100),
            ..Default::default()
        };
        let server = MockServer::start(cfg).await.unwrap();
        let client = reqwest::Client::new();
        let started = std::time::Instant::now();
        let replies = futures::future::join_all((0..6).map(|_| post(&client, &server))).await;
        let took = started.elapsed();
        assert!(replies.iter().all(|r| r.status() == 200));
        // Three rounds of two.
        assert!(took >= Duration::from_millis(290), "took {took:?}");
        let stats = server.stats();
        // The waiting ones count as in flight.
        assert!(stats.max_in_flight > 2, "{stats:?}");
        assert_eq!(stats.in_flight, 0);
    }

    #[tokio::test]
    async fn reset_closes_the_connection_without_a_response() {
        let server = MockServer::start(with_fault(FaultKind::Reset))
            .await
            .unwrap();
        let client = reqwest::Client::new();
        let sent = client
            .post(format!("{}/chat/completions", server.base_url()))
            .json(&chat("x"))
            .send()
            .await;
        assert!(sent.is_err(), "got a response: {sent:?}");
        let stats = server.stats();
        assert_eq!(stats.faults["reset"], 1);
        assert!(stats.responses.is_empty());
        assert_eq!(stats.prompt_tokens, 0);
    }

    #[tokio::test]
    async fn truncated_body_fails_to_read() {
        let server = MockServer::start(with_fault(FaultKind::Truncated))
            .await
            .unwrap();
        let r = post(&reqwest::Client::new(), &server).await;
        assert_eq!(r.status(), 200);
        let len = r.content_length().unwrap();
        assert!(len > 100);
        assert!(r.bytes().await.is_err());
        assert_eq!(server.stats().faults["truncated"], 1);
    }

    #[tokio::test]
    async fn malformed_and_missing_fields_are_200s_without_a_usable_completion() {
        let server = MockServer::start(with_fault(FaultKind::Malformed))
            .await
            .unwrap();
        let r = post(&reqwest::Client::new(), &server).await;
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.unwrap();
        assert!(body.starts_with(b"{"));
        assert!(serde_json::from_slice::<serde_json::Value>(&body).is_err());
        assert_eq!(server.stats().faults["malformed"], 1);

        let server = MockServer::start(with_fault(FaultKind::MissingFields))
            .await
            .unwrap();
        let r = post(&reqwest::Client::new(), &server).await;
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert!(v.get("choices").is_none() && v.get("usage").is_none());
        let stats = server.stats();
        assert_eq!(stats.faults["missing-fields"], 1);
        assert_eq!(stats.responses.get("200"), Some(&1));
        assert_eq!(stats.completion_tokens, 0);
    }

    #[tokio::test]
    async fn trickle_takes_trickle_ms_to_send_the_body() {
        let server = MockServer::start(with_fault(FaultKind::Trickle))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let r = post(&reqwest::Client::new(), &server).await;
        assert_eq!(r.status(), 200);
        // In flight while the body trickles.
        assert_eq!(server.stats().in_flight, 1);
        let v: serde_json::Value = r.json().await.unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "took {took:?}");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "mock answer to \"hello world\""
        );
        let stats = server.stats();
        assert_eq!(stats.faults["trickle"], 1);
        assert_eq!(stats.prompt_tokens, 9);
        assert_eq!(stats.in_flight, 0);
    }

    #[tokio::test]
    async fn hang_holds_until_the_client_gives_up_then_leaves_flight() {
        let cfg = MockConfig {
            capacity: Some(1),
            ..with_fault(FaultKind::Hang)
        };
        let server = MockServer::start(cfg).await.unwrap();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let err = client
            .post(format!("{}/chat/completions", server.base_url()))
            .json(&chat("x"))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert_eq!(server.stats().faults["hang"], 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while server.stats().in_flight != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "still in flight after the client left"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The hung request gave its capacity back too.
        let permits = server.shared.capacity.as_ref().unwrap().available_permits();
        assert_eq!(permits, 1);
    }

    #[tokio::test]
    async fn stats_json_has_the_new_counters() {
        let cfg = MockConfig {
            rpm: Some(60),
            quota_exhausted_after: Some(2),
            faults: vec![FaultSpec {
                kind: FaultKind::MissingFields,
                rate: 1.0,
            }],
            ..Default::default()
        };
        let server = MockServer::start(cfg).await.unwrap();
        let client = reqwest::Client::new();
        assert_eq!(post(&client, &server).await.status(), 200);
        assert_eq!(post(&client, &server).await.status(), 429);
        assert_eq!(post(&client, &server).await.status(), 429);
        let v: serde_json::Value = client
            .get(format!("http://{}/stats", server.addr))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["requests"], 3);
        assert_eq!(v["rate_limited"], 1);
        assert_eq!(v["quota_rejected"], 1);
        assert_eq!(v["responses"]["429"], 2);
        assert_eq!(
            v["faults"],
            json!({"reset": 0, "truncated": 0, "malformed": 0, "missing-fields": 1,
                "trickle": 0, "hang": 0})
        );
    }

    #[tokio::test]
    async fn fault_rates_over_one_are_refused() {
        let cfg = MockConfig {
            faults: vec![
                FaultSpec {
                    kind: FaultKind::Reset,
                    rate: 0.7,
                },
                FaultSpec {
                    kind: FaultKind::Hang,
                    rate: 0.7,
                },
            ],
            ..Default::default()
        };
        assert!(MockServer::start(cfg).await.is_err());
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

    fn shaped(server: ServerOptions) -> MockConfig {
        MockConfig {
            server: Box::new(server),
            ..Default::default()
        }
    }

    async fn send(
        client: &reqwest::Client,
        server: &MockServer,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
        let mut req = client.request(method, format!("http://{}{path}", server.addr));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, headers, v)
    }

    #[tokio::test]
    async fn rate_window_enforces_fixed_windows_with_window_relative_headers() {
        let cfg = MockConfig {
            rpm: Some(12),
            ..shaped(ServerOptions {
                rate_window: Some(Duration::from_secs(10)),
                ..Default::default()
            })
        };
        let server = MockServer::start(cfg).await.unwrap();
        let client = reqwest::Client::new();
        // 12 a minute in 10-second windows: 2 per window.
        let first = post(&client, &server).await;
        assert_eq!(first.status(), 200);
        assert_eq!(header(&first, "x-ratelimit-limit-requests"), "12");
        assert_eq!(header(&first, "x-ratelimit-remaining-requests"), "1");
        assert_eq!(post(&client, &server).await.status(), 200);
        let r = post(&client, &server).await;
        assert_eq!(r.status(), 429);
        assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "0");
        // The reset and the wait are the time to the window's end, not a refill.
        let reset = header(&r, "x-ratelimit-reset-requests");
        let reset_ms = match reset.strip_suffix("ms") {
            Some(ms) => ms.parse::<f64>().unwrap(),
            None => reset.strip_suffix('s').unwrap().parse::<f64>().unwrap() * 1000.0,
        };
        let wait: u64 = header(&r, "retry-after-ms").parse().unwrap();
        assert!((9_000..=10_000).contains(&wait), "{wait}");
        assert!((reset_ms - wait as f64).abs() <= 50.0, "{reset} / {wait}");
        assert_eq!(header(&r, "retry-after"), "10");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    }

    #[tokio::test]
    async fn rpd_fills_the_requests_headers_groq_style_and_runs_out() {
        let cfg = shaped(ServerOptions {
            rpd: Some(14_400),
            ..Default::default()
        });
        let server = MockServer::start(cfg).await.unwrap();
        let client = reqwest::Client::new();
        let r = post(&client, &server).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit-requests"), "14400");
        assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "14399");
        // One request takes 6 s to come back (86400 s / 14400), written to the 1/100 s.
        let reset = header(&r, "x-ratelimit-reset-requests");
        assert!(reset == "6s" || reset == "5.99s", "{reset}");

        let cfg = shaped(ServerOptions {
            rpd: Some(1),
            ..Default::default()
        });
        let server = MockServer::start(cfg).await.unwrap();
        assert_eq!(post(&client, &server).await.status(), 200);
        let r = post(&client, &server).await;
        assert_eq!(r.status(), 429);
        assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "0");
        let reset = header(&r, "x-ratelimit-reset-requests");
        assert!(
            reset == "24h0m0s" || reset.starts_with("23h59m59."),
            "{reset}"
        );
        let v: serde_json::Value = r.json().await.unwrap();
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("requests per day (RPD): Limit 1"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn retry_after_none_and_litellm_change_the_headers_of_a_429() {
        let client = reqwest::Client::new();
        for (style, present, absent) in [
            (
                RetryAfter::None,
                None,
                ["retry-after", "retry-after-ms", "llm_provider-retry-after"],
            ),
            (
                RetryAfter::Litellm,
                Some("llm_provider-retry-after"),
                ["retry-after", "retry-after-ms", "x-none"],
            ),
            (
                RetryAfter::Seconds,
                Some("retry-after"),
                ["retry-after-ms", "llm_provider-retry-after", "x-none"],
            ),
        ] {
            let cfg = MockConfig {
                rpm: Some(60),
                ..shaped(ServerOptions {
                    retry_after: style,
                    ..Default::default()
                })
            };
            let server = MockServer::start(cfg).await.unwrap();
            assert_eq!(post(&client, &server).await.status(), 200);
            let r = post(&client, &server).await;
            assert_eq!(r.status(), 429, "{style:?}");
            for name in absent {
                assert!(!r.headers().contains_key(name), "{style:?}: {name}");
            }
            if let Some(name) = present {
                assert_eq!(header(&r, name), "1", "{style:?}");
            }
            // The rate-limit headers are still there.
            assert_eq!(header(&r, "x-ratelimit-limit-requests"), "60");
        }
    }

    #[tokio::test]
    async fn require_key_refuses_openai_requests_without_a_bearer_key() {
        let cfg = shaped(ServerOptions {
            require_key: true,
            ..Default::default()
        });
        let server = MockServer::start(cfg).await.unwrap();
        let client = reqwest::Client::new();
        let r = post(&client, &server).await;
        assert_eq!(r.status(), 401);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("API key"));
        for (method, path) in [
            (reqwest::Method::GET, "/v1/models"),
            (reqwest::Method::GET, "/v1/files"),
            (reqwest::Method::GET, "/v1/batches"),
            (reqwest::Method::POST, "/v1/responses"),
        ] {
            let (status, _, v) = send(&client, &server, method, path, Some(json!({}))).await;
            assert_eq!(status, 401, "{path}");
            assert!(v["error"]["message"].is_string(), "{path}: {v}");
        }
        let ok = client
            .post(format!("{}/chat/completions", server.base_url()))
            .bearer_auth("any-key")
            .json(&chat("hello world"))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        // The completion endpoints count their 401s.
        let stats = server.stats();
        assert_eq!(stats.responses.get("401"), Some(&2));
        assert_eq!(stats.responses.get("200"), Some(&1));
    }

    #[tokio::test]
    async fn not_found_paths_and_paths_outside_v1_are_404s_in_the_api_shape() {
        let cfg = shaped(ServerOptions {
            not_found: vec!["/v1/responses".into(), "/v1/messages/batches".into()],
            ..Default::default()
        });
        let server = MockServer::start(cfg).await.unwrap();
        let client = reqwest::Client::new();
        let input = json!({"model": "gpt-4o", "input": "hi"});
        let (status, _, v) = send(
            &client,
            &server,
            reqwest::Method::POST,
            "/v1/responses",
            Some(input),
        )
        .await;
        assert_eq!(status, 404);
        assert_eq!(v["error"]["message"], "Invalid URL (POST /v1/responses)");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(post(&client, &server).await.status(), 200);
        let (status, _, v) = send(
            &client,
            &server,
            reqwest::Method::GET,
            "/v1/messages/batches/msgbatch_1",
            None,
        )
        .await;
        assert_eq!(status, 404);
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "not_found_error");

        // Without the option: paths without /v1, and unknown ones, are 404s too.
        let server = MockServer::start(MockConfig::default()).await.unwrap();
        for path in [
            "/chat/completions",
            "/v2/chat/completions",
            "/v1/audio/speech",
        ] {
            let (status, _, v) = send(
                &client,
                &server,
                reqwest::Method::POST,
                path,
                Some(chat("x")),
            )
            .await;
            assert_eq!(status, 404, "{path}");
            assert_eq!(
                v["error"]["message"],
                format!("Invalid URL (POST {path})"),
                "{path}"
            );
        }
        let (status, _, v) = send(
            &client,
            &server,
            reqwest::Method::POST,
            "/v1/messages/x",
            None,
        )
        .await;
        assert_eq!(
            (status, &v["error"]["type"]),
            (404, &json!("not_found_error"))
        );
        let (status, _, v) = send(
            &client,
            &server,
            reqwest::Method::GET,
            "/v1/chat/completions",
            None,
        )
        .await;
        assert_eq!(status, 405);
        assert_eq!(
            v["error"]["message"],
            "Invalid method for URL (GET /v1/chat/completions)"
        );
        // The mock's own /stats is not an API path.
        let (status, _, v) = send(&client, &server, reqwest::Method::GET, "/stats", None).await;
        assert_eq!(status, 200);
        assert_eq!(
            (v["requests"].as_u64(), v["unserved"].as_u64()),
            (Some(0), Some(5))
        );
    }

    #[tokio::test]
    async fn chat_serves_n_choices_json_object_and_tool_calls() {
        let server = MockServer::start(MockConfig::default()).await.unwrap();
        let client = reqwest::Client::new();
        let url = "/v1/chat/completions";
        let post_json = |body: serde_json::Value| {
            let client = client.clone();
            let server = &server;
            async move { send(&client, server, reqwest::Method::POST, url, Some(body)).await }
        };
        let one = post_json(chat("hello world")).await.2;
        let mut body = chat("hello world");
        body["n"] = json!(2);
        let (status, _, v) = post_json(body).await;
        assert_eq!(status, 200);
        assert_eq!(v["choices"].as_array().unwrap().len(), 2);
        assert_eq!(v["choices"][1]["index"], 1);
        assert_eq!(v["choices"][1]["message"], one["choices"][0]["message"]);
        assert_eq!(
            v["usage"]["completion_tokens"],
            2 * one["usage"]["completion_tokens"].as_u64().unwrap()
        );
        for n in [json!(0), json!(129), json!("2")] {
            let mut body = chat("x");
            body["n"] = n.clone();
            let (status, _, v) = post_json(body).await;
            assert_eq!(status, 400, "{n}");
            assert_eq!(v["error"]["param"], "n");
        }

        let mut body = chat("answer in JSON");
        body["response_format"] = json!({"type": "json_object"});
        let v = post_json(body).await.2;
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        let object: serde_json::Value = serde_json::from_str(content).unwrap();
        assert_eq!(object["answer"], "mock answer to \"answer in JSON\"");
        let mut body = chat("no magic word");
        body["response_format"] = json!({"type": "json_object"});
        let (status, _, v) = post_json(body).await;
        assert_eq!(status, 400);
        assert_eq!(v["error"]["param"], "messages");

        let tool = json!({"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}});
        let mut body = chat("call it");
        body["tools"] = json!([tool]);
        body["tool_choice"] = json!("required");
        let v = post_json(body.clone()).await.2;
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert!(choice["message"]["content"].is_null());
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "f");
        let args: serde_json::Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert!(args["n"].is_i64(), "{args}");
        body["tool_choice"] = json!("auto");
        let v = post_json(body.clone()).await.2;
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "mock answer to \"call it\""
        );
        body["tools"] = json!([{"type": "custom", "custom": {"name": "g"}}]);
        let (status, _, v) = post_json(body).await;
        assert_eq!(status, 400);
        assert_eq!(v["error"]["param"], "tools[0].type");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("function tools only")
        );
    }

    #[tokio::test]
    async fn chat_streams_server_sent_events_when_asked() {
        let server = MockServer::start(MockConfig {
            rpm: Some(600),
            ..Default::default()
        })
        .await
        .unwrap();
        let client = reqwest::Client::new();
        let mut body = chat("hello world");
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let r = client
            .post(format!("{}/chat/completions", server.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-type"), "text/event-stream");
        assert!(r.headers().contains_key("x-ratelimit-remaining-requests"));
        let text = r.text().await.unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        let chunks: Vec<serde_json::Value> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, "mock answer to \"hello world\"");
        assert_eq!(chunks.last().unwrap()["usage"]["prompt_tokens"], 9);
        assert_eq!(server.stats().prompt_tokens, 9);

        body["stream"] = json!(false);
        let r = client
            .post(format!("{}/chat/completions", server.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["param"], "stream_options");
    }

    #[tokio::test]
    async fn models_are_listed_in_each_vendors_shape() {
        let server = MockServer::start(MockConfig::default()).await.unwrap();
        let client = reqwest::Client::new();
        let (status, _, v) = send(&client, &server, reqwest::Method::GET, "/v1/models", None).await;
        assert_eq!(status, 200);
        assert_eq!(v["object"], "list");
        assert!(
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["id"] == "gpt-4o-mini")
        );
        assert_eq!(v["data"][0]["object"], "model");

        let anthropic = |path: &str| {
            client
                .get(format!("http://{}{path}", server.addr))
                .header("anthropic-version", "2023-06-01")
        };
        let r = anthropic("/v1/models").send().await.unwrap();
        assert_eq!(r.status(), 401);
        let v: serde_json::Value = anthropic("/v1/models?limit=2")
            .header("x-api-key", "k")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["data"][0]["type"], "model");
        assert_eq!(v["has_more"], true);
        assert_eq!(v["last_id"], v["data"][1]["id"]);
        let v: serde_json::Value = anthropic("/v1/models/claude-haiku-4-5")
            .bearer_auth("k")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["display_name"], "Claude Haiku 4.5");
    }
}

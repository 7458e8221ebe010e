//! The mock's Batch APIs: OpenAI's files and batches endpoints and Anthropic's Message Batches,
//! so `batch submit`, `status`, `collect` and `cancel` run offline against the same server as
//! everything else.
//!
//! A batch is checked when it is created (like the provider's validation step: bad lines,
//! duplicate `custom_id`s, more requests than `--batch-max-requests` fail the whole batch),
//! then "processes" for `--batch-latency-ms`, during which its counts grow. The first poll
//! after that settles every request at once: `--batch-expire-rate` of them expire, then
//! `--batch-failure-rate` of the rest fail with a 500, and the others get the same
//! deterministic answer and tokenizer usage as the chat (or messages) endpoint. Batches for
//! `/v1/embeddings` are answered as that endpoint answers (the same vectors, usage and refusals:
//! a `BAD_EMBEDDING` text fails its line with a 400), and more than 50,000 texts over a batch's
//! requests fail its validation, as OpenAI caps them. A cancelled batch
//! answers the share of requests its elapsed time covers; OpenAI's leaves the rest out, Anthropic's
//! lists them as `canceled`. Anthropic refuses a bad batch at creation (400) rather than failing
//! it later. Everything lives in memory: a restarted mock knows no batches.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};

use super::routes::Dialect;
use super::wire::Wire;
use super::{Shared, error_body, list_page, messages, reply, unix_now};

/// Largest upload or batch body accepted (above the providers' 200 and 256 MB limits).
const MAX_BODY: usize = 300 * 1024 * 1024;
/// The endpoint of embeddings batches: its lines are answered as `/v1/embeddings` answers.
const EMBEDDINGS: &str = "/v1/embeddings";
/// OpenAI's cap on the texts of one embeddings batch, over all its requests.
pub const MAX_BATCH_INPUTS: u64 = 50_000;
/// The endpoints the mock runs OpenAI batches for, and the wire format of each.
const ENDPOINTS: [(&str, Wire); 2] = [
    ("/v1/chat/completions", Wire::Chat),
    ("/v1/responses", Wire::Responses),
];

/// The OpenAI endpoint of a batch's wire format.
fn endpoint_of(wire: Wire) -> &'static str {
    ENDPOINTS
        .iter()
        .find(|(_, w)| *w == wire)
        .map_or("/v1/chat/completions", |(e, _)| *e)
}

/// Files and batches the mock holds.
#[derive(Default)]
pub(super) struct BatchStore {
    next_id: AtomicU64,
    /// By id, which sorts in creation order.
    files: Mutex<BTreeMap<String, StoredFile>>,
    batches: Mutex<Vec<MockBatch>>,
    /// Batches refused at validation.
    refused: AtomicU64,
}

impl BatchStore {
    fn id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{prefix}_mock{n:06}")
    }

    fn add_file(&self, name: &str, purpose: &str, data: Bytes) -> Value {
        let id = self.id("file");
        let file = StoredFile {
            name: name.to_string(),
            purpose: purpose.to_string(),
            data,
            created_at: unix_now(),
        };
        let v = file.json(&id);
        self.files.lock().expect("files lock").insert(id, file);
        v
    }
}

struct StoredFile {
    name: String,
    purpose: String,
    data: Bytes,
    created_at: u64,
}

impl StoredFile {
    /// The `file` object.
    fn json(&self, id: &str) -> Value {
        json!({"id": id, "object": "file", "bytes": self.data.len(),
            "created_at": self.created_at, "expires_at": null, "filename": self.name,
            "purpose": self.purpose, "status": "processed", "status_details": null})
    }
}

struct MockBatch {
    /// `Wire::Chat` (OpenAI Batch API) or `Wire::Messages` (Anthropic Message Batches).
    wire: Wire,
    /// An OpenAI batch for `/v1/embeddings` (its `wire` is `Chat`: errors as OpenAI's).
    embeddings: bool,
    /// The create request's headers: what an Anthropic request inside it is checked with.
    headers: HeaderMap,
    id: String,
    input_file_id: String,
    metadata: Value,
    created_at: u64,
    started: Instant,
    /// `custom_id` and body of each request, in input order.
    requests: Vec<(String, Value)>,
    /// Validation errors: the batch failed as a whole.
    errors: Vec<Value>,
    cancelled_at: Option<Instant>,
    /// Wall-clock time (unix seconds) of the cancel request.
    cancelled_wall: Option<u64>,
    settled: Option<Settled>,
}

impl MockBatch {
    /// Marks the batch cancelled at `now`, unless it has ended or is being cancelled already.
    fn cancel(&mut self, now: Instant) {
        if self.settled.is_none() && self.cancelled_at.is_none() {
            self.cancelled_at = Some(now);
            self.cancelled_wall = Some(now_secs_of(self, now));
        }
    }
}

struct Settled {
    /// Wall-clock time (unix seconds) the batch settled.
    at: u64,
    /// Tokens of the answers: input, cached input, output, reasoning.
    usage: [u64; 4],
    status: &'static str,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    completed: u64,
    failed: u64,
    expired: u64,
    cancelled: u64,
}

/// What became of one request of a settled batch.
enum Fate {
    Answered(Value),
    Failed(u16, Value),
    Expired,
    /// Not reached before the batch was cancelled.
    Cancelled,
}

impl Fate {
    /// Failed with the error `body` (JSON text) an endpoint answered with `status`.
    fn failed(status: StatusCode, body: &str) -> Self {
        Fate::Failed(
            status.as_u16(),
            serde_json::from_str(body).unwrap_or_default(),
        )
    }
}

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/files", post(upload).get(list_files))
        .route("/v1/files/{id}", get(retrieve_file).delete(delete_file))
        .route("/v1/files/{id}/content", get(file_content))
        .route("/v1/batches", post(create).get(list))
        .route("/v1/batches/{id}", get(retrieve))
        .route("/v1/batches/{id}/cancel", post(cancel))
        .route(
            "/v1/messages/batches",
            post(create_messages).get(list_messages),
        )
        .route(
            "/v1/messages/batches/{id}",
            get(retrieve_messages).delete(delete_messages),
        )
        .route("/v1/messages/batches/{id}/results", get(results_messages))
        .route("/v1/messages/batches/{id}/cancel", post(cancel_messages))
        .route("/stats/batches", get(stats))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

fn invalid(message: &str) -> Response {
    reply(
        StatusCode::BAD_REQUEST,
        error_body(message, "invalid_request_error", None),
    )
}

fn not_found(what: &str, id: &str) -> Response {
    reply(
        StatusCode::NOT_FOUND,
        error_body(
            &format!("No {what} found with id '{id}'."),
            "invalid_request_error",
            None,
        ),
    )
}

/// `POST /v1/files`: multipart with `purpose` and `file`.
async fn upload(State(s): State<Arc<Shared>>, mut form: Multipart) -> Response {
    let (mut purpose, mut file) = (None, None);
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_string();
                let file_name = field.file_name().unwrap_or("upload.jsonl").to_string();
                let Ok(data) = field.bytes().await else {
                    return invalid("The multipart body could not be read.");
                };
                match name.as_str() {
                    "purpose" => purpose = Some(String::from_utf8_lossy(&data).into_owned()),
                    "file" => file = Some((file_name, data)),
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(e) => return invalid(&format!("The multipart body is malformed: {e}")),
        }
    }
    let Some(purpose) = purpose else {
        return invalid("Missing required parameter: 'purpose'.");
    };
    let Some((name, data)) = file else {
        return invalid("Missing required parameter: 'file'.");
    };
    if purpose != "batch" {
        return invalid(&format!(
            "The mock only takes files with purpose 'batch', not '{purpose}'."
        ));
    }
    reply(
        StatusCode::OK,
        s.batches.add_file(&name, &purpose, data).to_string(),
    )
}

/// `GET /v1/files/{id}`.
async fn retrieve_file(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match s.batches.files.lock().expect("files lock").get(&id) {
        Some(f) => reply(StatusCode::OK, f.json(&id).to_string()),
        None => not_found("file", &id),
    }
}

/// `DELETE /v1/files/{id}`.
async fn delete_file(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match s.batches.files.lock().expect("files lock").remove(&id) {
        Some(_) => reply(
            StatusCode::OK,
            json!({"id": id, "object": "file", "deleted": true}).to_string(),
        ),
        None => not_found("file", &id),
    }
}

#[derive(Deserialize)]
struct FilesQuery {
    purpose: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
    order: Option<String>,
}

/// `GET /v1/files`: newest first unless `order=asc`, filtered by `purpose`, paged with `after`.
async fn list_files(State(s): State<Arc<Shared>>, Query(q): Query<FilesQuery>) -> Response {
    let files = s.batches.files.lock().expect("files lock");
    let mut listed: Vec<(&String, &StoredFile)> = files
        .iter()
        .filter(|(_, f)| q.purpose.as_ref().is_none_or(|p| *p == f.purpose))
        .collect();
    match q.order.as_deref() {
        None | Some("desc") => listed.reverse(),
        Some("asc") => {}
        Some(other) => {
            return invalid(&format!(
                "Invalid value for 'order': '{other}'. Expected 'asc' or 'desc'."
            ));
        }
    }
    let limit = q.limit.unwrap_or(10_000).clamp(1, 10_000);
    let body = list_page(
        Dialect::OpenAi,
        &listed,
        q.after.as_deref(),
        limit,
        |(id, _)| id.as_str(),
        |(id, f)| f.json(id),
    );
    reply(StatusCode::OK, body.to_string())
}

async fn file_content(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match s.batches.files.lock().expect("files lock").get(&id) {
        Some(f) => (
            StatusCode::OK,
            [(CONTENT_TYPE, "application/octet-stream")],
            f.data.clone(),
        )
            .into_response(),
        None => not_found("file", &id),
    }
}

#[derive(Deserialize)]
struct CreateBody {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    #[serde(default)]
    metadata: Value,
}

/// `POST /v1/batches`.
async fn create(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let req: CreateBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return invalid(&format!("We could not parse the JSON body: {e}")),
    };
    let embeddings = req.endpoint == EMBEDDINGS;
    let found = ENDPOINTS.iter().find(|(e, _)| *e == req.endpoint).copied();
    let Some((endpoint, wire)) = found.or(embeddings.then_some((EMBEDDINGS, Wire::Chat))) else {
        return invalid(&format!(
            "The mock runs batches for /v1/chat/completions, /v1/responses and /v1/embeddings \
             only, not {}.",
            req.endpoint
        ));
    };
    if req.completion_window != "24h" {
        return invalid("completion_window must be '24h'.");
    }
    let data = {
        let files = s.batches.files.lock().expect("files lock");
        match files.get(&req.input_file_id) {
            Some(f) if f.purpose == "batch" => f.data.clone(),
            Some(f) => {
                return invalid(&format!(
                    "File {} ({}) does not have purpose 'batch'.",
                    req.input_file_id, f.name
                ));
            }
            None => return not_found("file", &req.input_file_id),
        }
    };
    let (requests, errors) = validate(&data, s.cfg.batch_max_requests, endpoint);
    if !errors.is_empty() {
        s.batches.refused.fetch_add(1, Ordering::Relaxed);
    }
    let batch = MockBatch {
        wire,
        embeddings,
        headers: HeaderMap::new(),
        id: s.batches.id("batch"),
        input_file_id: req.input_file_id,
        metadata: req.metadata,
        created_at: unix_now(),
        started: Instant::now(),
        requests,
        errors,
        cancelled_at: None,
        cancelled_wall: None,
        settled: None,
    };
    let mut batches = s.batches.batches.lock().expect("batches lock");
    let mut batch = batch;
    if !batch.errors.is_empty() {
        batch.settled = Some(Settled {
            at: batch.created_at,
            usage: [0; 4],
            status: "failed",
            output_file_id: None,
            error_file_id: None,
            completed: 0,
            failed: 0,
            expired: 0,
            cancelled: 0,
        });
    }
    let v = batch_json(&batch, &s, Instant::now(), Some("validating"));
    batches.push(batch);
    reply(StatusCode::OK, v.to_string())
}

/// Checks the input file like the provider's validation step: one JSON request per line.
fn validate(data: &[u8], max: u64, endpoint: &str) -> (Vec<(String, Value)>, Vec<Value>) {
    let mut requests = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        let line_no = i + 1;
        if line.trim_ascii().is_empty() {
            continue;
        }
        let mut error = |code: &str, message: String| {
            if errors.len() < 100 {
                errors.push(json!({"code": code, "line": line_no, "message": message,
                    "param": null}));
            }
        };
        let v: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                error(
                    "invalid_json_line",
                    format!("This line is not valid JSON: {e}"),
                );
                continue;
            }
        };
        let custom_id = v["custom_id"].as_str().unwrap_or_default().to_string();
        if custom_id.is_empty() {
            error("missing_custom_id", "Each line needs a custom_id.".into());
        } else if !seen.insert(custom_id.clone()) {
            error(
                "duplicate_custom_id",
                format!("The custom_id '{custom_id}' is used more than once."),
            );
        }
        if v["method"] != "POST" {
            error("invalid_method", "method must be POST.".into());
        }
        if v["url"] != endpoint {
            error(
                "mismatched_url",
                format!("url must be the batch's endpoint {endpoint}."),
            );
        }
        if !v["body"].is_object() {
            error("missing_body", "Each line needs a body object.".into());
        }
        requests.push((custom_id, v["body"].clone()));
    }
    if requests.is_empty() && errors.is_empty() {
        errors.push(json!({"code": "empty_file", "line": null, "param": null,
            "message": "The input file has no requests."}));
    }
    if requests.len() as u64 > max {
        errors.push(
            json!({"code": "too_many_requests", "line": null, "param": null,
            "message": format!("The batch has {} requests, more than the {max} a batch may hold.",
                requests.len())}),
        );
    }
    let inputs: u64 = requests
        .iter()
        .map(|(_, b)| super::embeddings::inputs_of(b))
        .sum();
    if endpoint == EMBEDDINGS && inputs > MAX_BATCH_INPUTS {
        errors.push(
            json!({"code": "too_many_inputs", "line": null, "param": null,
            "message": format!("Batches for /v1/embeddings are limited to {MAX_BATCH_INPUTS} \
                embedding inputs across all requests; this one has {inputs}.")}),
        );
    }
    (requests, errors)
}

/// Share of a batch's processing time that has passed, 0 to 1.
fn progress(s: &Shared, b: &MockBatch, at: Instant) -> f64 {
    let latency = s.cfg.batch_latency.as_secs_f64();
    if latency <= 0.0 {
        return 1.0;
    }
    (at.saturating_duration_since(b.started).as_secs_f64() / latency).min(1.0)
}

/// Settles every request once the batch's time is up (or it was cancelled).
fn settle(s: &Shared, b: &mut MockBatch, now: Instant) {
    if b.settled.is_some() {
        return;
    }
    let share = match b.cancelled_at {
        Some(at) => progress(s, b, at),
        None if progress(s, b, now) >= 1.0 => 1.0,
        None => return,
    };
    let reached = (b.requests.len() as f64 * share).floor() as usize;
    let mut fates = Vec::with_capacity(b.requests.len());
    let mut usage = [0u64; 4];
    for (k, (_, body)) in b.requests.iter().enumerate() {
        fates.push(if k < reached {
            run_request(s, b, k, body, &mut usage)
        } else {
            Fate::Cancelled
        });
    }
    let count = |f: fn(&Fate) -> bool| fates.iter().filter(|x| f(x)).count() as u64;
    let completed = count(|f| matches!(f, Fate::Answered(_)));
    let failed = count(|f| matches!(f, Fate::Failed(..)));
    let expired = count(|f| matches!(f, Fate::Expired));
    let cancelled = count(|f| matches!(f, Fate::Cancelled));
    let (output_file_id, error_file_id) = result_files(s, b, fates);
    let status = if b.cancelled_at.is_some() {
        "cancelled"
    } else if expired > 0 {
        "expired"
    } else {
        "completed"
    };
    // The batch ended when its time was up (or when it was cancelled), not when it is looked at.
    let ended = match b.cancelled_at {
        Some(at) => at,
        None => b.started + s.cfg.batch_latency,
    };
    b.settled = Some(Settled {
        at: now_secs_of(b, ended),
        usage,
        status,
        output_file_id,
        error_file_id,
        completed,
        failed: failed + expired,
        expired,
        cancelled,
    });
}

/// What becomes of request number `k` (with `body`) of a batch that reached it: it expires or
/// fails as the dice say, else it is answered as its endpoint answers it, its tokens added to
/// the batch's `usage`.
fn run_request(s: &Shared, b: &MockBatch, k: usize, body: &Value, usage: &mut [u64; 4]) -> Fate {
    let (expire, fail) = {
        let cfg = &s.cfg;
        let mut rng = s.rng.lock().expect("rng lock");
        let expire = cfg.batch_expire_rate > 0.0 && rng.random_bool(cfg.batch_expire_rate);
        let fail = cfg.batch_failure_rate > 0.0 && rng.random_bool(cfg.batch_failure_rate);
        (expire, fail)
    };
    if expire && b.cancelled_at.is_none() {
        return Fate::Expired;
    }
    if fail {
        let (status, body) = b.wire.server_error(StatusCode::INTERNAL_SERVER_ERROR);
        return Fate::failed(status, &body);
    }
    if b.embeddings {
        return match super::embeddings::batch_answer(body) {
            Ok((answer, tokens)) => {
                s.prompt_tokens.fetch_add(tokens, Ordering::Relaxed);
                usage[0] += tokens;
                Fate::Answered(answer)
            }
            Err((status, body)) => Fate::failed(status, &body),
        };
    }
    let raw = serde_json::to_vec(body).unwrap_or_default();
    match b.wire.parse(&b.headers, &raw, super::roll_spoil(s)) {
        Ok((req, mut answer)) => {
            s.prompt_cache.serve(&mut answer);
            s.count_tokens(&answer);
            for (total, n) in usage.iter_mut().zip([
                answer.prompt_tokens,
                answer.cached_tokens + answer.cache_read_tokens,
                answer.completion_tokens,
                answer.reasoning_tokens,
            ]) {
                *total += n;
            }
            let body = b.wire.success(&req, &answer, k as u64);
            Fate::Answered(serde_json::from_str(&body).unwrap_or_default())
        }
        Err((status, body)) => Fate::failed(status, &body),
    }
}

/// Stores what became of the batch's requests as the provider does, and returns the ids of
/// the output and error files: Anthropic's one results file lists every request; OpenAI's
/// output file holds the answers, its error file the failed and expired requests.
fn result_files(s: &Shared, b: &MockBatch, fates: Vec<Fate>) -> (Option<String>, Option<String>) {
    match b.wire {
        Wire::Messages => (
            store_lines(s, b, message_results(b, fates), "results"),
            None,
        ),
        _ => {
            let (out, err) = openai_results(b, fates);
            (
                store_lines(s, b, out, "output"),
                store_lines(s, b, err, "error"),
            )
        }
    }
}

/// The lines of a Message Batch's results file: every request with its result.
fn message_results(b: &MockBatch, fates: Vec<Fate>) -> Vec<Value> {
    b.requests
        .iter()
        .zip(fates)
        .map(|((custom_id, _), fate)| {
            let result = match fate {
                Fate::Answered(message) => json!({"type": "succeeded", "message": message}),
                Fate::Failed(_, error) => json!({"type": "errored", "error": error}),
                Fate::Expired => json!({"type": "expired"}),
                Fate::Cancelled => json!({"type": "canceled"}),
            };
            json!({"custom_id": custom_id, "result": result})
        })
        .collect()
}

/// The lines of an OpenAI batch's output file (the answers) and error file (the failed and
/// expired requests); requests the batch did not reach before it was cancelled are in neither.
fn openai_results(b: &MockBatch, fates: Vec<Fate>) -> (Vec<Value>, Vec<Value>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for (k, ((custom_id, _), fate)) in b.requests.iter().zip(fates).enumerate() {
        let line_id = format!("batch_req_{}_{k}", b.id);
        let request_id = format!("req_{line_id}");
        match fate {
            Fate::Answered(body) => out.push(json!({"id": line_id, "custom_id": custom_id,
                "error": null, "response": {"status_code": 200,
                    "request_id": request_id, "body": body}})),
            Fate::Failed(status, body) => err.push(json!({"id": line_id,
                "custom_id": custom_id, "error": null, "response": {
                    "status_code": status, "request_id": request_id, "body": body}})),
            Fate::Expired => err.push(json!({"id": line_id, "custom_id": custom_id,
                "response": null, "error": {"code": "batch_expired", "message":
                    "This request could not be executed before the completion window expired."}})),
            Fate::Cancelled => {}
        }
    }
    (out, err)
}

/// Stores `lines` as the JSONL file `{batch id}_{kind}.jsonl` and returns its id; none when
/// there are no lines.
fn store_lines(s: &Shared, b: &MockBatch, lines: Vec<Value>, kind: &str) -> Option<String> {
    if lines.is_empty() {
        return None;
    }
    let mut data = Vec::new();
    for l in lines {
        data.extend_from_slice(l.to_string().as_bytes());
        data.push(b'\n');
    }
    let name = format!("{}_{kind}.jsonl", b.id);
    // OpenAI's output and error files both have the purpose `batch_output`.
    let v = s.batches.add_file(&name, "batch_output", data.into());
    v["id"].as_str().map(str::to_string)
}

fn batch_json(b: &MockBatch, s: &Shared, now: Instant, status: Option<&str>) -> Value {
    let total = b.requests.len() as u64;
    let (status, completed, failed, output, error) = match &b.settled {
        Some(d) => (
            status.unwrap_or(d.status),
            d.completed,
            d.failed,
            d.output_file_id.clone(),
            d.error_file_id.clone(),
        ),
        None => {
            let done = (total as f64 * progress(s, b, now)).floor() as u64;
            let running = if b.cancelled_at.is_some() {
                "cancelling"
            } else {
                "in_progress"
            };
            (status.unwrap_or(running), done, 0, None, None)
        }
    };
    let errors = (!b.errors.is_empty()).then(|| json!({"object": "list", "data": b.errors}));
    // The times of the steps the batch has gone through (unix seconds), null for the others.
    let failed_validation = !b.errors.is_empty();
    let settled_at = b.settled.as_ref().map(|d| d.at);
    let ended =
        |kind: &str| settled_at.filter(|_| b.settled.as_ref().is_some_and(|d| d.status == kind));
    let usage = b.settled.as_ref().filter(|_| !failed_validation).map(|d| {
        let [input, cached, output, reasoning] = d.usage;
        json!({"input_tokens": input, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input + output})
    });
    let model = b
        .requests
        .iter()
        .find_map(|(_, body)| body["model"].as_str())
        .map(str::to_string);
    json!({
        "id": b.id,
        "object": "batch",
        "endpoint": if b.embeddings { EMBEDDINGS } else { endpoint_of(b.wire) },
        "model": model,
        "errors": errors,
        "input_file_id": b.input_file_id,
        "completion_window": "24h",
        "status": status,
        "output_file_id": output,
        "error_file_id": error,
        "created_at": b.created_at,
        "in_progress_at": (!failed_validation).then_some(b.created_at),
        "expires_at": b.created_at + 24 * 3600,
        "finalizing_at": settled_at.filter(|_| !failed_validation && b.cancelled_at.is_none()),
        "completed_at": ended("completed"),
        "failed_at": ended("failed"),
        "expired_at": ended("expired"),
        "cancelling_at": b.cancelled_wall,
        "cancelled_at": ended("cancelled"),
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        "usage": usage,
        "metadata": b.metadata,
    })
}

async fn retrieve(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let now = Instant::now();
    let mut batches = s.batches.batches.lock().expect("batches lock");
    let Some(b) = batches
        .iter_mut()
        .find(|b| b.id == id && b.wire != Wire::Messages)
    else {
        return not_found("batch", &id);
    };
    settle(&s, b, now);
    reply(StatusCode::OK, batch_json(b, &s, now, None).to_string())
}

async fn cancel(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let now = Instant::now();
    let mut batches = s.batches.batches.lock().expect("batches lock");
    let Some(b) = batches
        .iter_mut()
        .find(|b| b.id == id && b.wire != Wire::Messages)
    else {
        return not_found("batch", &id);
    };
    b.cancel(now);
    // Like the provider: "cancelling" now, "cancelled" on a later look.
    let status = b.settled.is_none().then_some("cancelling");
    reply(StatusCode::OK, batch_json(b, &s, now, status).to_string())
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /v1/batches`: newest first, paged with `after`.
async fn list(State(s): State<Arc<Shared>>, Query(q): Query<ListQuery>) -> Response {
    let now = Instant::now();
    let limit = q.limit.unwrap_or(20).clamp(1, 100);
    let batches = s.batches.batches.lock().expect("batches lock");
    let newest_first: Vec<&MockBatch> = batches
        .iter()
        .rev()
        .filter(|b| b.wire != Wire::Messages)
        .collect();
    let body = list_page(
        Dialect::OpenAi,
        &newest_first,
        q.after.as_deref(),
        limit,
        |b| b.id.as_str(),
        |b| batch_json(b, &s, now, None),
    );
    reply(StatusCode::OK, body.to_string())
}

/// RFC 3339 (UTC) of `secs` since the epoch, as Anthropic writes its times.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn anthropic_error(status: StatusCode, kind: &str, message: &str) -> Response {
    reply(status, messages::error_body(kind, message))
}

/// Anthropic's custom_id rule: `^[a-zA-Z0-9_-]{1,64}$`.
fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Where a results URL points: the host the client reached the mock at.
fn origin(headers: &HeaderMap) -> String {
    headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map_or(String::new(), |h| format!("http://{h}"))
}

/// `POST /v1/messages/batches`: `{"requests": [{"custom_id", "params"}]}`, checked at once.
async fn create_messages(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let bad = |m: &str| anthropic_error(StatusCode::BAD_REQUEST, "invalid_request_error", m);
    if let Err((status, body)) = messages::check_key(&headers) {
        return reply(status, body);
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(&format!("There was an error parsing the body: {e}")),
    };
    let Some(items) = v["requests"].as_array() else {
        return bad("requests: Field required");
    };
    if items.is_empty() {
        return bad("requests: List should have at least 1 item");
    }
    let max = s.cfg.batch_max_requests;
    if items.len() as u64 > max {
        s.batches.refused.fetch_add(1, Ordering::Relaxed);
        return bad(&format!(
            "requests: the batch has {} requests, more than the {max} a batch may hold",
            items.len()
        ));
    }
    let mut seen = HashSet::new();
    let mut requests = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let id = item["custom_id"].as_str().unwrap_or_default();
        if !valid_custom_id(id) {
            return bad(&format!(
                "requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            ));
        }
        if !seen.insert(id.to_string()) {
            return bad(&format!(
                "requests.{i}.custom_id: duplicate custom_id {id:?}"
            ));
        }
        if !item["params"].is_object() {
            return bad(&format!("requests.{i}.params: Field required"));
        }
        if item["params"]["stream"] == json!(true) {
            return bad(&format!(
                "requests.{i}.params.stream: batch requests cannot be streamed"
            ));
        }
        requests.push((id.to_string(), item["params"].clone()));
    }
    // The requests inside are checked like /v1/messages requests, with this request's key and
    // version; their body is JSON by construction.
    let mut inner = headers.clone();
    inner.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let batch = MockBatch {
        wire: Wire::Messages,
        embeddings: false,
        headers: inner,
        id: s.batches.id("msgbatch"),
        input_file_id: String::new(),
        metadata: Value::Null,
        created_at: unix_now(),
        started: Instant::now(),
        requests,
        errors: Vec::new(),
        cancelled_at: None,
        cancelled_wall: None,
        settled: None,
    };
    let v = message_batch_json(&batch, &origin(&headers));
    s.batches.batches.lock().expect("batches lock").push(batch);
    reply(StatusCode::OK, v.to_string())
}

/// The `message_batch` object; `origin` makes its `results_url` absolute, as Anthropic's is.
fn message_batch_json(b: &MockBatch, origin: &str) -> Value {
    let total = b.requests.len() as u64;
    let (status, counts, ended_at) = match &b.settled {
        Some(d) => (
            "ended",
            json!({"processing": 0, "succeeded": d.completed,
                "errored": d.failed - d.expired, "canceled": d.cancelled, "expired": d.expired}),
            Some(rfc3339(d.at)),
        ),
        None => (
            if b.cancelled_at.is_some() {
                "canceling"
            } else {
                "in_progress"
            },
            json!({"processing": total, "succeeded": 0, "errored": 0, "canceled": 0,
                "expired": 0}),
            None,
        ),
    };
    json!({
        "id": b.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": counts,
        "created_at": rfc3339(b.created_at),
        "expires_at": rfc3339(b.created_at + 24 * 3600),
        "ended_at": ended_at,
        "cancel_initiated_at": b.cancelled_wall.map(rfc3339),
        "archived_at": null,
        "results_url": b.settled.as_ref()
            .map(|_| format!("{origin}/v1/messages/batches/{}/results", b.id)),
    })
}

/// Wall-clock seconds of `at` for a batch (its creation time plus the time since it started).
fn now_secs_of(b: &MockBatch, at: Instant) -> u64 {
    b.created_at + at.saturating_duration_since(b.started).as_secs()
}

/// Runs `f` on the message batch `id`, once the key is checked; 404 when there is none.
fn with_message_batch(
    s: &Shared,
    headers: &HeaderMap,
    id: &str,
    f: impl FnOnce(&mut MockBatch, Instant) -> Response,
) -> Response {
    if let Err((status, body)) = messages::check_key(headers) {
        return reply(status, body);
    }
    let now = Instant::now();
    let mut batches = s.batches.batches.lock().expect("batches lock");
    match batches
        .iter_mut()
        .find(|b| b.id == id && b.wire == Wire::Messages)
    {
        Some(b) => f(b, now),
        None => anthropic_error(
            StatusCode::NOT_FOUND,
            "not_found_error",
            &format!("No message batch found with id '{id}'."),
        ),
    }
}

async fn retrieve_messages(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let origin = origin(&headers);
    with_message_batch(&s, &headers, &id, |b, now| {
        settle(&s, b, now);
        reply(StatusCode::OK, message_batch_json(b, &origin).to_string())
    })
}

async fn cancel_messages(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let origin = origin(&headers);
    with_message_batch(&s, &headers, &id, |b, now| {
        b.cancel(now);
        reply(StatusCode::OK, message_batch_json(b, &origin).to_string())
    })
}

/// `DELETE /v1/messages/batches/{id}`: only once the batch has ended, as Anthropic allows; its
/// results go with it.
async fn delete_messages(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut results_file = None;
    let resp = with_message_batch(&s, &headers, &id, |b, now| {
        settle(&s, b, now);
        match &b.settled {
            Some(d) => {
                results_file = d.output_file_id.clone();
                reply(
                    StatusCode::OK,
                    json!({"id": b.id, "type": "message_batch_deleted"}).to_string(),
                )
            }
            None => anthropic_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!(
                    "Batch {} cannot be deleted while it is still processing; cancel it first and wait for it to end.",
                    b.id
                ),
            ),
        }
    });
    if resp.status() == StatusCode::OK {
        s.batches
            .batches
            .lock()
            .expect("batches lock")
            .retain(|b| b.id != id);
        if let Some(f) = results_file {
            s.batches.files.lock().expect("files lock").remove(&f);
        }
    }
    resp
}

async fn results_messages(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let file = with_message_batch(&s, &headers, &id, |b, now| {
        settle(&s, b, now);
        match b.settled.as_ref().and_then(|d| d.output_file_id.clone()) {
            Some(f) => reply(StatusCode::OK, f),
            None => anthropic_error(
                StatusCode::NOT_FOUND,
                "not_found_error",
                "The batch has not ended: its results are not ready.",
            ),
        }
    });
    if file.status() != StatusCode::OK {
        return file;
    }
    let Ok(body) = axum::body::to_bytes(file.into_body(), 1024).await else {
        return anthropic_error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "lost");
    };
    let file_id = String::from_utf8_lossy(&body).into_owned();
    file_content(State(s), Path(file_id)).await
}

#[derive(Deserialize)]
struct MessagesListQuery {
    limit: Option<usize>,
    after_id: Option<String>,
}

/// `GET /v1/messages/batches`: newest first, paged with `after_id`.
async fn list_messages(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<MessagesListQuery>,
) -> Response {
    if let Err((status, body)) = messages::check_key(&headers) {
        return reply(status, body);
    }
    let origin = origin(&headers);
    let limit = q.limit.unwrap_or(20).clamp(1, 1000);
    let batches = s.batches.batches.lock().expect("batches lock");
    let newest_first: Vec<&MockBatch> = batches
        .iter()
        .rev()
        .filter(|b| b.wire == Wire::Messages)
        .collect();
    let body = list_page(
        Dialect::Anthropic,
        &newest_first,
        q.after_id.as_deref(),
        limit,
        |b| b.id.as_str(),
        |b| message_batch_json(b, &origin),
    );
    reply(StatusCode::OK, body.to_string())
}

/// `GET /stats/batches`: what the batch endpoints saw.
async fn stats(State(s): State<Arc<Shared>>) -> Response {
    let batches = s.batches.batches.lock().expect("batches lock");
    let sizes: Vec<usize> = batches.iter().map(|b| b.requests.len()).collect();
    let body = json!({
        "files": s.batches.files.lock().expect("files lock").len(),
        "batches": batches.len(),
        "refused": s.batches.refused.load(Ordering::Relaxed),
        "cancelled": batches.iter().filter(|b| b.cancelled_at.is_some()).count(),
        "requests": sizes.iter().sum::<usize>(),
        "batch_sizes": sizes,
    });
    reply(StatusCode::OK, body.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::{MockConfig, MockServer};
    use serde_json::{Value, json};
    use std::time::Duration;

    struct Api {
        client: reqwest::Client,
        base: String,
    }

    impl Api {
        fn new(server: &MockServer) -> Self {
            Api {
                client: reqwest::Client::new(),
                base: server.base_url(),
            }
        }

        async fn call(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
            let resp = req
                .header("x-api-key", "k")
                .header("anthropic-version", "2023-06-01")
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        }

        async fn get(&self, path: &str) -> (u16, Value) {
            self.call(self.client.get(format!("{}{path}", self.base)))
                .await
        }

        async fn delete(&self, path: &str) -> (u16, Value) {
            self.call(self.client.delete(format!("{}{path}", self.base)))
                .await
        }

        async fn post(&self, path: &str, body: Value) -> (u16, Value) {
            self.call(self.client.post(format!("{}{path}", self.base)).json(&body))
                .await
        }

        async fn upload(&self, data: &str) -> Value {
            let form = reqwest::multipart::Form::new()
                .text("purpose", "batch")
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(data.as_bytes().to_vec()).file_name("in.jsonl"),
                );
            let resp = self
                .client
                .post(format!("{}/files", self.base))
                .multipart(form)
                .send()
                .await
                .unwrap();
            resp.json().await.unwrap()
        }
    }

    fn line(id: &str) -> String {
        json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": id}]}})
        .to_string()
    }

    #[tokio::test]
    async fn files_can_be_listed_retrieved_and_deleted() {
        let server = MockServer::start(MockConfig::default()).await.unwrap();
        let api = Api::new(&server);
        let a = api.upload(&line("a")).await;
        let b = api.upload(&line("b")).await;
        let (status, got) = api
            .get(&format!("/files/{}", a["id"].as_str().unwrap()))
            .await;
        assert_eq!(status, 200);
        assert_eq!(got, a);
        let (_, list) = api.get("/files").await;
        assert_eq!(list["object"], "list");
        // Newest first.
        let ids: Vec<&Value> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| &f["id"])
            .collect();
        assert_eq!(ids, [&b["id"], &a["id"]]);
        let (_, page) = api
            .get(&format!(
                "/files?order=asc&limit=1&after={}",
                a["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(page["data"][0]["id"], b["id"]);
        assert_eq!(page["has_more"], false);
        let (_, none) = api.get("/files?purpose=batch_output").await;
        assert_eq!(none["data"], json!([]));
        let (status, gone) = api
            .delete(&format!("/files/{}", a["id"].as_str().unwrap()))
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            gone,
            json!({"id": a["id"], "object": "file", "deleted": true})
        );
        for path in [
            format!("/files/{}", a["id"].as_str().unwrap()),
            format!("/files/{}/content", a["id"].as_str().unwrap()),
        ] {
            let (status, v) = api.get(&path).await;
            assert_eq!(status, 404, "{path}");
            assert_eq!(v["error"]["type"], "invalid_request_error");
        }
        let (status, _) = api
            .delete(&format!("/files/{}", a["id"].as_str().unwrap()))
            .await;
        assert_eq!(status, 404);
        let (status, _) = api.get("/files?order=sideways").await;
        assert_eq!(status, 400);
    }

    #[tokio::test]
    async fn a_batch_reports_the_times_of_its_steps_its_model_and_usage() {
        let server = MockServer::start(MockConfig {
            batch_latency: Duration::from_millis(200),
            ..Default::default()
        })
        .await
        .unwrap();
        let api = Api::new(&server);
        let file = api.upload(&format!("{}\n{}\n", line("a"), line("b"))).await;
        let create = json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h"});
        let (_, b) = api.post("/batches", create.clone()).await;
        assert_eq!(b["status"], "validating");
        assert_eq!(b["model"], "gpt-4o-mini");
        assert_eq!(b["in_progress_at"], b["created_at"]);
        for field in ["completed_at", "finalizing_at", "cancelling_at", "usage"] {
            assert!(b[field].is_null(), "{field}: {b}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let path = format!("/batches/{}", b["id"].as_str().unwrap());
        let (_, done) = api.get(&path).await;
        assert_eq!(done["status"], "completed");
        assert!(done["completed_at"].as_u64().unwrap() >= done["created_at"].as_u64().unwrap());
        assert_eq!(done["finalizing_at"], done["completed_at"]);
        assert!(done["failed_at"].is_null() && done["cancelled_at"].is_null());
        let usage = &done["usage"];
        assert!(usage["input_tokens"].as_u64().unwrap() > 0);
        assert_eq!(
            usage["total_tokens"].as_u64().unwrap(),
            usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap()
        );
        // Settled once: a later look reports the same times.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (_, again) = api.get(&path).await;
        assert_eq!(again["completed_at"], done["completed_at"]);
        let (_, out) = api
            .get(&format!(
                "/files/{}",
                done["output_file_id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(out["purpose"], "batch_output");

        let (_, b) = api.post("/batches", create).await;
        let (_, cancelling) = api
            .post(
                &format!("/batches/{}/cancel", b["id"].as_str().unwrap()),
                json!({}),
            )
            .await;
        assert_eq!(cancelling["status"], "cancelling");
        assert!(cancelling["cancelling_at"].is_u64());
        let (_, cancelled) = api
            .get(&format!("/batches/{}", b["id"].as_str().unwrap()))
            .await;
        assert_eq!(cancelled["status"], "cancelled");
        assert!(cancelled["cancelled_at"].is_u64() && cancelled["completed_at"].is_null());
    }

    fn embeddings_line(id: &str, input: Value) -> String {
        json!({"custom_id": id, "method": "POST", "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": input, "dimensions": 4,
                "encoding_format": "base64"}})
        .to_string()
    }

    #[tokio::test]
    async fn an_embeddings_batch_answers_as_the_live_endpoint_and_fails_a_refused_line() {
        use crate::engine::mock::embeddings::vector;
        use crate::engine::provider::embeddings::decode;
        let server = MockServer::start(MockConfig::default()).await.unwrap();
        let api = Api::new(&server);
        let data = format!(
            "{}\n{}\n",
            embeddings_line("req-0", json!(["a cat", "a dog"])),
            embeddings_line("req-1", json!(["fine", "x BAD_EMBEDDING"]))
        );
        let file = api.upload(&data).await;
        let (status, b) = api
            .post(
                "/batches",
                json!({"input_file_id": file["id"], "endpoint": "/v1/embeddings",
                    "completion_window": "24h"}),
            )
            .await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(b["endpoint"], "/v1/embeddings");
        let (_, done) = api
            .get(&format!("/batches/{}", b["id"].as_str().unwrap()))
            .await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["request_counts"]["completed"], 1);
        assert_eq!(done["request_counts"]["failed"], 1);
        assert!(done["usage"]["input_tokens"].as_u64().unwrap() >= 4);
        let content = |id: &Value| {
            let url = format!(
                "{}/files/{}/content",
                server.base_url(),
                id.as_str().unwrap()
            );
            async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
        };
        let out: Value =
            serde_json::from_str(content(&done["output_file_id"]).await.trim()).unwrap();
        assert_eq!(out["custom_id"], "req-0");
        let body = &out["response"]["body"];
        for (i, text) in ["a cat", "a dog"].iter().enumerate() {
            let got = decode(body["data"][i]["embedding"].as_str().unwrap()).unwrap();
            assert_eq!(got, vector(text, 4), "the live endpoint's vector");
        }
        assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() >= 2);
        let err: Value =
            serde_json::from_str(content(&done["error_file_id"]).await.trim()).unwrap();
        assert_eq!(err["custom_id"], "req-1");
        assert_eq!(err["response"]["status_code"], 400);
        let message = err["response"]["body"]["error"]["message"]
            .as_str()
            .unwrap();
        assert!(message.contains("'$.input[1]' is invalid"), "{message}");
    }

    #[tokio::test]
    async fn an_embeddings_batch_over_fifty_thousand_texts_fails_validation() {
        let server = MockServer::start(MockConfig::default()).await.unwrap();
        let api = Api::new(&server);
        let texts = |n: usize| Value::from(vec!["t"; n]);
        let mut data = String::new();
        for k in 0..25 {
            data.push_str(&embeddings_line(&format!("req-{k}"), texts(2000)));
            data.push('\n');
        }
        let create = |file: Value| {
            json!({"input_file_id": file["id"], "endpoint": "/v1/embeddings",
                "completion_window": "24h"})
        };
        // 50,000 texts: accepted.
        let (_, ok) = api.post("/batches", create(api.upload(&data).await)).await;
        assert!(ok["errors"].is_null(), "{}", ok["errors"]);
        data.push_str(&embeddings_line("req-25", json!(["one more"])));
        let (_, b) = api.post("/batches", create(api.upload(&data).await)).await;
        let (_, failed) = api
            .get(&format!("/batches/{}", b["id"].as_str().unwrap()))
            .await;
        assert_eq!(failed["status"], "failed");
        let error = &failed["errors"]["data"][0];
        assert_eq!(error["code"], "too_many_inputs");
        assert!(
            error["message"].as_str().unwrap().contains("50001"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_ended_message_batch_can_be_deleted_and_its_results_url_is_absolute() {
        let server = MockServer::start(MockConfig {
            batch_latency: Duration::from_millis(100),
            ..Default::default()
        })
        .await
        .unwrap();
        let api = Api::new(&server);
        let requests = json!({"requests": [{"custom_id": "a", "params": {
            "model": "claude-haiku-4-5", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]}}]});
        let (status, b) = api.post("/messages/batches", requests.clone()).await;
        assert_eq!(status, 200, "{b}");
        let path = format!("/messages/batches/{}", b["id"].as_str().unwrap());
        let (status, v) = api.delete(&path).await;
        assert_eq!(status, 400);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (_, ended) = api.get(&path).await;
        assert_eq!(ended["processing_status"], "ended");
        let url = ended["results_url"].as_str().unwrap();
        assert_eq!(url, format!("{}{path}/results", server.base_url()));
        let results = reqwest::Client::new()
            .get(url)
            .header("x-api-key", "k")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(results.contains("\"succeeded\""), "{results}");
        let (status, v) = api.delete(&path).await;
        assert_eq!(status, 200);
        assert_eq!(v, json!({"id": b["id"], "type": "message_batch_deleted"}));
        let (status, v) = api.get(&path).await;
        assert_eq!(
            (status, &v["error"]["type"]),
            (404, &json!("not_found_error"))
        );

        // Every message-batch endpoint wants a key.
        let resp = reqwest::Client::new()
            .get(format!("{}/messages/batches", server.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);

        let (_, b) = api.post("/messages/batches", requests).await;
        let path = format!("/messages/batches/{}", b["id"].as_str().unwrap());
        let (_, cancelling) = api.post(&format!("{path}/cancel"), json!({})).await;
        assert_eq!(cancelling["processing_status"], "canceling");
        assert!(cancelling["cancel_initiated_at"].is_string());
        let (_, ended) = api.get(&path).await;
        assert_eq!(ended["request_counts"]["canceled"], 1);
        assert_eq!(
            ended["cancel_initiated_at"],
            cancelling["cancel_initiated_at"]
        );
    }
}

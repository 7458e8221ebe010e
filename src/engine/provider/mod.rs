//! The providers: one module per wire format, each mapping its API to one [`Completion`] and
//! classifying its failures into an [`ErrorKind`] that says whether to retry.
//!
//! The scheduler only ever sees these types, so adding a provider means adding a module, not
//! touching the run loop.

pub mod anthropic;
pub mod embeddings;
pub mod openai;
pub mod responses;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::base::secret::ApiKey;
use crate::base::usage::Usage;
pub use crate::engine::limiter::RateLimitHeaders;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The wire formats `batch` speaks. Which one a run uses comes from `--provider` and `--api`, or
/// from the model name (see [`Api::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI Chat Completions, also spoken by vLLM, Ollama, LiteLLM, OpenRouter.
    OpenAiChat,
    /// OpenAI Responses (`--api responses`).
    OpenAiResponses,
    /// Anthropic Messages (`--provider anthropic`).
    AnthropicMessages,
}

/// `--provider`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderName {
    Openai,
    Anthropic,
}

/// `--api` (OpenAI only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiName {
    Chat,
    Responses,
}

impl Api {
    /// The wire format for the flags given: `--provider` wins; without it a model named
    /// `claude-*` is Anthropic's (a router's `anthropic/claude-*` is not: routers speak OpenAI).
    /// `--api` only chooses between OpenAI's two APIs, so it is refused for Anthropic.
    pub fn resolve(
        provider: Option<ProviderName>,
        api: Option<ApiName>,
        model: &str,
    ) -> Result<Api, String> {
        let inferred = provider.is_none();
        let provider = provider.unwrap_or(if model.starts_with("claude-") {
            ProviderName::Anthropic
        } else {
            ProviderName::Openai
        });
        match (provider, api) {
            (ProviderName::Openai, None | Some(ApiName::Chat)) => Ok(Api::OpenAiChat),
            (ProviderName::Openai, Some(ApiName::Responses)) => Ok(Api::OpenAiResponses),
            (ProviderName::Anthropic, None) => Ok(Api::AnthropicMessages),
            (ProviderName::Anthropic, Some(api)) => Err(format!(
                "--api {} is for OpenAI, but the provider is Anthropic{}; leave --api out (Anthropic \
                 has one API, Messages), or pass --provider openai for an OpenAI-compatible server",
                match api {
                    ApiName::Chat => "chat",
                    ApiName::Responses => "responses",
                },
                if inferred {
                    format!(" (inferred from the model {model:?})")
                } else {
                    String::new()
                }
            )),
        }
    }

    pub fn is_anthropic(self) -> bool {
        self == Api::AnthropicMessages
    }

    /// The environment variables for the key and the base URL.
    pub fn key_env(self) -> &'static str {
        if self.is_anthropic() {
            "ANTHROPIC_API_KEY"
        } else {
            "OPENAI_API_KEY"
        }
    }

    pub fn base_url_env(self) -> &'static str {
        if self.is_anthropic() {
            "ANTHROPIC_BASE_URL"
        } else {
            "OPENAI_BASE_URL"
        }
    }

    /// The public base URL of the provider.
    pub fn default_base_url(self) -> &'static str {
        if self.is_anthropic() {
            "https://api.anthropic.com"
        } else {
            "https://api.openai.com/v1"
        }
    }

    /// How the user would name it: `openai chat`, `openai responses`, `anthropic messages`.
    pub fn label(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai chat",
            Api::OpenAiResponses => "openai responses",
            Api::AnthropicMessages => "anthropic messages",
        }
    }

    /// Whether `finish_reason` (as this family spells it) means the answer was cut off by the
    /// token cap: `length` (chat), `max_output_tokens` (responses), `max_tokens` (Anthropic).
    pub fn is_truncated(finish_reason: &str) -> bool {
        matches!(finish_reason, "length" | "max_output_tokens" | "max_tokens")
    }
}

/// The provider for `api`, sending to `base_url` with `key` and the user's `--header`s.
pub fn build(
    api: Api,
    client: reqwest::Client,
    base_url: &str,
    key: Option<&ApiKey>,
    extra: &ExtraHeaders,
) -> Arc<dyn Provider> {
    match api {
        Api::OpenAiChat => Arc::new(openai::chat(client, base_url, key, extra)),
        Api::OpenAiResponses => Arc::new(responses::responses(client, base_url, key, extra)),
        Api::AnthropicMessages => Arc::new(anthropic::messages(client, base_url, key, extra)),
    }
}

/// Headers whose values say how to speak to the API or who the caller is in public (an API
/// version, a beta, OpenRouter's attribution), never a secret: they are not scrubbed from
/// answers, where a URL or a date they hold may well appear.
const PUBLIC_HEADERS: [&str; 6] = [
    "anthropic-version",
    "anthropic-beta",
    "http-referer",
    "referer",
    "x-title",
    "user-agent",
];

/// Extra request headers from `--header 'Name: value'` (OpenRouter's `HTTP-Referer`, a
/// gateway's auth, a newer `anthropic-version`). Values may be secrets: they are marked
/// sensitive and `Debug` shows only the names; nothing writes them anywhere.
#[derive(Clone, Default)]
pub struct ExtraHeaders(Vec<(HeaderName, HeaderValue)>);

impl ExtraHeaders {
    /// Parses every `Name: value`; an error names the flag and the header, never the value.
    pub fn parse(specs: &[String]) -> Result<Self, String> {
        let mut out = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let Some((name, value)) = spec.split_once(':') else {
                return Err(format!(
                    "--header number {} is not 'Name: value' (no colon); for example --header \
                     'HTTP-Referer: https://example.com'",
                    i + 1
                ));
            };
            let name = name.trim();
            // An invalid name is not echoed: it may be a value typed in the wrong place.
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                format!(
                    "--header number {}: the part before the colon is not a header name \
                     (letters, digits and - only, no spaces)",
                    i + 1
                )
            })?;
            let mut value = HeaderValue::from_str(value.trim()).map_err(|_| {
                format!(
                    "--header {}: the value has characters a header cannot carry (line breaks \
                     or control characters)",
                    name.as_str()
                )
            })?;
            if matches!(name.as_str(), "content-type" | "content-length" | "host") {
                return Err(format!(
                    "--header {}: batch sets this header itself; leave it out",
                    name.as_str()
                ));
            }
            value.set_sensitive(!PUBLIC_HEADERS.contains(&name.as_str()));
            out.push((name, value));
        }
        Ok(ExtraHeaders(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `anthropic-version` and `anthropic-beta`, as `Name: value`: they choose the API's
    /// version and features, not who is calling, so a Message Batches state file keeps them
    /// for the later `status` and `collect` (no other header is ever written anywhere).
    pub fn anthropic_protocol(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| matches!(n.as_str(), "anthropic-version" | "anthropic-beta"))
            .filter_map(|(n, v)| Some(format!("{}: {}", n.as_str(), v.to_str().ok()?)))
            .collect()
    }

    /// These, then `later` (which wins where both name a header).
    pub fn then(&self, later: &ExtraHeaders) -> ExtraHeaders {
        ExtraHeaders(self.0.iter().chain(&later.0).cloned().collect())
    }

    /// Adds them to `headers`, replacing any header of the same name (so a user can send a
    /// newer `anthropic-version`, or their own `authorization` to a gateway).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.0 {
            headers.insert(name.clone(), value.clone());
        }
    }
}

impl fmt::Debug for ExtraHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.0
                    .iter()
                    .map(|(n, _)| format!("{}: <redacted>", n.as_str())),
            )
            .finish()
    }
}

/// A header value holding a secret, kept out of any `Debug` output.
pub(crate) fn secret_header(value: &str) -> HeaderValue {
    let mut v = HeaderValue::from_str(value)
        .unwrap_or_else(|_| HeaderValue::from_static("invalid-key-characters"));
    v.set_sensitive(true);
    v
}

/// A scrubber of the secrets among `headers` (those marked sensitive: the key and every
/// `--header` value but the public ones), for [`Transport`] and the Batch API clients alike.
pub fn scrubber_of(headers: &HeaderMap) -> crate::base::secret::Scrubber {
    let secrets = headers.values().filter(|v| v.is_sensitive());
    crate::base::secret::Scrubber::new(secrets.filter_map(|v| v.to_str().ok()))
}

/// `answer` (a body, or the error made of one) with `scrubber`'s secrets removed: for the
/// clients that do not go through [`Transport`] (the Batch APIs).
pub fn scrubbed(
    scrubber: &crate::base::secret::Scrubber,
    answer: Result<bytes::Bytes, CallError>,
) -> Result<bytes::Bytes, CallError> {
    match answer {
        Ok(body) => Ok(scrubber
            .scrub_bytes(&body)
            .map(bytes::Bytes::from)
            .unwrap_or(body)),
        Err(mut e) => {
            e.message = scrubber.scrub(&e.message).into_owned();
            e.request_id = e.request_id.map(|id| scrubber.scrub(&id).into_owned());
            Err(e)
        }
    }
}

/// The HTTP half every provider shares: POST a JSON body with fixed headers, then hand the
/// response to the provider's parser (200) or error classifier (anything else).
pub(crate) struct Transport {
    client: reqwest::Client,
    url: String,
    /// `url`, parsed once rather than for every request (`None` if it does not parse: each
    /// request then fails with the parser's error).
    parsed: Option<reqwest::Url>,
    headers: HeaderMap,
    /// The key and the `--header` values, removed from every response before anything reads
    /// it, so no echo of them reaches the results, the journal, the cache, the log or stderr.
    scrubber: crate::base::secret::Scrubber,
}

/// Maps a 200 body (and its headers) to a completion.
pub(crate) type ParseFn = fn(&[u8], &HeaderMap) -> Result<Completion, CallError>;
/// Maps a non-200 status, body and headers to a classified error.
pub(crate) type ClassifyFn = fn(u16, &[u8], &HeaderMap) -> CallError;

impl Transport {
    /// `headers` are the provider's own (auth, version); `extra` (the user's) go on top.
    pub fn new(
        client: reqwest::Client,
        url: String,
        mut headers: HeaderMap,
        extra: &ExtraHeaders,
    ) -> Self {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        extra.apply(&mut headers);
        let scrubber = scrubber_of(&headers);
        Transport {
            client,
            parsed: reqwest::Url::parse(&url).ok(),
            url,
            headers,
            scrubber,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn post(&self, body: bytes::Bytes, parse: ParseFn, classify: ClassifyFn) -> Exchange {
        let mut exchange = self.exchange(body, parse, classify).await;
        // The request id comes from a header, which a gateway may fill with what it received.
        let request_id = match &mut exchange.outcome {
            Ok(c) => &mut c.request_id,
            Err(e) => {
                e.message = self.scrubber.scrub(&e.message).into_owned();
                &mut e.request_id
            }
        };
        if let Some(id) = request_id.as_mut() {
            *id = self.scrubber.scrub(id).into_owned();
        }
        for (_, value) in &mut exchange.headers {
            *value = self.scrubber.scrub(value).into_owned();
        }
        exchange
    }

    /// One request and its response, the response body already scrubbed.
    async fn exchange(&self, body: bytes::Bytes, parse: ParseFn, classify: ClassifyFn) -> Exchange {
        let request = match &self.parsed {
            Some(url) => self.client.post(url.clone()),
            None => self.client.post(&self.url),
        };
        let request = request.headers(self.headers.clone()).body(body);
        let mut resp = match request.send().await {
            Ok(resp) => resp,
            Err(e) => return Exchange::failed(transport_error(&e)),
        };
        let status = resp.status().as_u16();
        let headers = std::mem::take(resp.headers_mut());
        let kept = kept_headers(&headers);
        match resp.bytes().await {
            // Headers came, the body broke off (reset, truncation): a connection error.
            Err(e) => {
                let mut err = transport_error(&e);
                err.status = Some(status);
                Exchange {
                    outcome: Err(err),
                    status: Some(status),
                    body: None,
                    headers: kept,
                }
            }
            Ok(bytes) => {
                let bytes = match self.scrubber.scrub_bytes(&bytes) {
                    Some(clean) => bytes::Bytes::from(clean),
                    None => bytes,
                };
                Exchange {
                    outcome: if status == 200 {
                        parse(&bytes, &headers)
                    } else {
                        Err(classify(status, &bytes, &headers))
                    },
                    status: Some(status),
                    body: Some(bytes),
                    headers: kept,
                }
            }
        }
    }
}

/// One request, as rendered from a row; each provider turns it into its own wire format.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    pub model: String,
    pub system: Option<String>,
    pub user: String,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    /// The `--schema` the answer must fit, sent the provider's native way (shared by every
    /// row's request).
    #[serde(skip)]
    pub schema: Option<std::sync::Arc<crate::engine::schema::OutputSchema>>,
    /// The user message as text and attachments in template order, when the prompt attaches
    /// files (`image()`, `file()`); empty for a text-only request, whose body is `user` alone
    /// and byte for byte what it was before attachments existed.
    #[serde(skip)]
    pub parts: Vec<Part>,
}

/// A piece of a user message with attachments.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Attach(Arc<crate::engine::attach::Attachment>),
}

impl Request {
    /// Loads the attachments of `segments` (a rendered prompt's) into `parts`, in order.
    pub fn attach(
        &mut self,
        segments: &[crate::engine::template::Segment],
        loader: &crate::engine::attach::Loader,
    ) -> Result<(), String> {
        use crate::engine::template::Segment;
        self.parts = segments
            .iter()
            .map(|s| match s {
                Segment::Text(t) => Ok(Part::Text(t.clone())),
                Segment::Attach(w) => loader.load(w).map(|a| Part::Attach(Arc::new(a))),
            })
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    /// The attachments.
    pub fn attachments(&self) -> impl Iterator<Item = &crate::engine::attach::Attachment> {
        self.parts.iter().filter_map(|p| match p {
            Part::Attach(a) => Some(a.as_ref()),
            Part::Text(_) => None,
        })
    }

    /// Prompt tokens of the attachments on this request's model.
    pub fn attachment_tokens(&self) -> u32 {
        self.attachments()
            .fold(0u32, |n, a| n.saturating_add(a.tokens(&self.model)))
    }

    /// Drops the attachments' bytes once the body holds them: a queued job then keeps one
    /// copy, not two.
    pub fn strip_payloads(&mut self) {
        for p in &mut self.parts {
            if let Part::Attach(a) = p {
                *a = Arc::new(a.strip());
            }
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub usage: Usage,
    /// `stop`, `length`, ... as the server said it.
    pub finish_reason: Option<String>,
    /// The model that answered (often a dated name such as `gpt-4.1-mini-2025-04-14`).
    pub model: Option<String>,
    pub request_id: Option<String>,
    /// The rate-limit headers that came with the answer.
    pub rate_limits: Option<RateLimitHeaders>,
}

/// What went wrong with one attempt, in the terms that decide what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The attempt took longer than `--timeout`.
    Timeout,
    /// Could not connect, or the connection broke before a whole response arrived.
    Connection,
    /// 429 rate limit: slow down and try again.
    RateLimited,
    /// 5xx, 408 or 409: the server's trouble, worth another try.
    Server,
    /// 200, but the body is not a usable answer (malformed JSON, missing fields).
    InvalidResponse,
    /// A complete, billed answer that does not fit `--schema` (not JSON, or not valid against
    /// it). Retried up to `--schema-retries`, apart from the other retries.
    InvalidAnswer,
    /// Out of credit or over a billing limit: no request can succeed, so the run stops.
    QuotaExhausted,
    /// 401/403: the key is wrong or lacks access; the run stops.
    Auth,
    /// Any other 4xx: this request is wrong and sending it again will not help.
    Rejected,
}

impl ErrorKind {
    /// Whether this kind is retried by default (a server's `x-should-retry` overrides it).
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Timeout
                | ErrorKind::Connection
                | ErrorKind::RateLimited
                | ErrorKind::Server
                | ErrorKind::InvalidResponse
        )
    }

    /// Whether no later request can succeed either, so dispatching must stop.
    pub fn stops_run(self) -> bool {
        matches!(self, ErrorKind::QuotaExhausted | ErrorKind::Auth)
    }

    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection error",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::Server => "server error",
            ErrorKind::InvalidResponse => "invalid response",
            ErrorKind::InvalidAnswer => "invalid answer",
            ErrorKind::QuotaExhausted => "quota exhausted",
            ErrorKind::Auth => "authentication error",
            ErrorKind::Rejected => "request rejected",
        }
    }

    /// Every kind, for reading a [`label`](Self::label) back from the journal.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Timeout,
        ErrorKind::Connection,
        ErrorKind::RateLimited,
        ErrorKind::Server,
        ErrorKind::InvalidResponse,
        ErrorKind::InvalidAnswer,
        ErrorKind::QuotaExhausted,
        ErrorKind::Auth,
        ErrorKind::Rejected,
    ];

    /// The kind a journal's outcome string names, if it names one.
    pub fn from_label(label: &str) -> Option<ErrorKind> {
        Self::ALL.into_iter().find(|k| k.label() == label)
    }

    /// Whether a failed attempt may have been billed all the same: it timed out, or its answer
    /// was lost or garbled after the server produced it. An HTTP refusal costs nothing.
    pub fn may_have_been_billed(self) -> bool {
        matches!(
            self,
            ErrorKind::Timeout | ErrorKind::Connection | ErrorKind::InvalidResponse
        )
    }
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    pub kind: ErrorKind,
    pub status: Option<u16>,
    /// The server's message or the transport error, never containing the API key.
    pub message: String,
    /// How long the server asked us to wait (`retry-after-ms`, `retry-after`).
    pub retry_after: Option<Duration>,
    /// The server's `x-should-retry` verdict, which overrides the default for `kind`.
    pub should_retry: Option<bool>,
    pub request_id: Option<String>,
    /// The rate-limit headers that came with the error response (boxed: errors travel in
    /// `Result`s and should stay small).
    pub rate_limits: Option<Box<RateLimitHeaders>>,
}

impl CallError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CallError {
            kind,
            status: None,
            message: message.into(),
            retry_after: None,
            should_retry: None,
            request_id: None,
            rate_limits: None,
        }
    }

    /// A problem found in a 200 response (a body that is no usable answer, or one reporting a
    /// failure), with the response's request id: every provider's parser makes these.
    pub fn in_200(kind: ErrorKind, request_id: Option<String>, message: String) -> Self {
        CallError {
            request_id,
            status: Some(200),
            ..CallError::new(kind, message)
        }
    }

    pub fn retryable(&self) -> bool {
        self.should_retry.unwrap_or_else(|| self.kind.retryable())
    }

    /// Whether no connection could be made at all (refused, unknown host): nothing answered,
    /// as against a connection that broke off after the server took the request.
    pub fn is_unreachable(&self) -> bool {
        self.kind == ErrorKind::Connection
            && self.status.is_none()
            && self.message.starts_with(CANNOT_CONNECT)
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "{} (HTTP {s}): {}", self.kind.label(), self.message),
            None => write!(f, "{}: {}", self.kind.label(), self.message),
        }
    }
}

/// One attempt on the wire: the outcome, plus what came back raw, for the audit log.
#[derive(Debug)]
pub struct Exchange {
    pub outcome: Result<Completion, CallError>,
    /// The HTTP status, if a response arrived.
    pub status: Option<u16>,
    /// The response body as received (possibly cut short).
    pub body: Option<bytes::Bytes>,
    /// The response headers worth keeping (see [`kept_headers`]).
    pub headers: Vec<(String, String)>,
}

impl Exchange {
    /// An attempt that failed before any response arrived.
    pub fn failed(e: CallError) -> Self {
        Exchange {
            outcome: Err(e),
            status: None,
            body: None,
            headers: Vec::new(),
        }
    }
}

/// Sends requests of one wire format.
pub trait Provider: Send + Sync {
    /// Where requests go; with the body, it identifies a request (resume, cache).
    fn endpoint(&self) -> &str;
    /// The exact JSON body sent for `req`. Rendered once per row and reused for every attempt.
    fn body(&self, req: &Request) -> Vec<u8>;
    /// Sends one attempt.
    fn send(&self, body: bytes::Bytes) -> BoxFuture<'_, Exchange>;
}

/// Writes the JSON body of a request in one API's wire format.
type BodyFn = dyn Fn(&Request) -> Vec<u8> + Send + Sync;

/// The one [`Provider`]: a wire format over an HTTP transport. The three APIs differ only in
/// their URL and auth headers (in the [`Transport`]) and in how a body is written and an answer
/// or an error is read; each module's constructor supplies those.
pub struct HttpProvider {
    transport: Transport,
    body: Box<BodyFn>,
    parse: ParseFn,
    classify: ClassifyFn,
}

impl HttpProvider {
    pub(crate) fn new(
        transport: Transport,
        body: impl Fn(&Request) -> Vec<u8> + Send + Sync + 'static,
        parse: ParseFn,
        classify: ClassifyFn,
    ) -> Self {
        HttpProvider {
            transport,
            body: Box::new(body),
            parse,
            classify,
        }
    }
}

impl Provider for HttpProvider {
    fn endpoint(&self) -> &str {
        self.transport.url()
    }

    fn body(&self, req: &Request) -> Vec<u8> {
        let body = (self.body)(req);
        // serde_json grows its buffer by doubling, so a body holding a 270 kB picture can sit
        // in 512 kB for as long as its job is queued or in flight (and the allocator keeps a
        // shrunk block at its size): copied to its exact size instead, which is cheap next to
        // writing it.
        match body.capacity() - body.len() > body.len() / 8 + 4096 {
            true => body.as_slice().to_vec(),
            false => body,
        }
    }

    fn send(&self, body: bytes::Bytes) -> BoxFuture<'_, Exchange> {
        futures::FutureExt::boxed(self.transport.post(body, self.parse, self.classify))
    }
}

/// Response headers that say something about the request or the limits; the rest (and every
/// request header, the key among them) is never kept.
pub fn kept_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| {
            let n = name.as_str();
            let n = n.strip_prefix("llm_provider-").unwrap_or(n);
            n.starts_with("x-ratelimit-")
                || n.starts_with("anthropic-ratelimit-")
                || n.starts_with("x-tokenlimit-")
                || n.starts_with("retry-after")
                || n.starts_with("openai-")
                || matches!(n, "x-request-id" | "request-id" | "x-should-retry")
        })
        .filter_map(|(name, v)| Some((name.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// The HTTP client every provider shares: connection pool sized for the run, no overall timeout
/// (the scheduler times each attempt, body included).
pub fn http_client(concurrency: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency.max(1))
        .pool_idle_timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .user_agent(concat!("batch/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a TLS backend is compiled in")
}

/// How the message of a connection that could not be made begins (see
/// [`CallError::is_unreachable`]).
const CANNOT_CONNECT: &str = "cannot connect: ";

/// Classifies a transport-level failure.
pub fn transport_error(e: &reqwest::Error) -> CallError {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connection
    };
    // The chain holds the useful part ("connection refused", "connection reset").
    let mut msg = e.to_string();
    if kind == ErrorKind::Connection && e.is_connect() {
        msg = format!("{CANNOT_CONNECT}{msg}");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    CallError::new(kind, msg)
}

/// How long a refused request should wait, from the first hint present: the retry-after headers
/// ([`crate::engine::limiter::headers::retry_after`]: `retry-after-ms`, `retry-after` in seconds or as
/// an HTTP date, LiteLLM's `llm_provider-` copies), a hint in the body ([`retry_hint_in_body`]),
/// and on a 429 the reset of the budget that ran out (a proxy may forward the resets but drop
/// `retry-after`). `None`: no hint, the retry policy backs off on its own.
pub fn retry_after(status: u16, headers: &HeaderMap, body: &[u8]) -> Option<Duration> {
    let now = std::time::SystemTime::now();
    crate::engine::limiter::headers::retry_after(headers, now)
        .or_else(|| retry_hint_in_body(body))
        .or_else(|| {
            (status == 429)
                .then(|| RateLimitHeaders::parse(headers, now)?.exhausted_reset())
                .flatten()
        })
}

/// A wait named in an error body: Google's `RetryInfo.retryDelay` (`"53s"`, Gemini), or
/// OpenAI's "Please try again in 1.6s." (also what LiteLLM passes on when it drops the
/// headers). Only the start of the body is searched; anything odd is no hint.
pub fn retry_hint_in_body(body: &[u8]) -> Option<Duration> {
    use crate::engine::limiter::headers::parse_go_duration;
    const DELAY: &str = "\"retryDelay\"";
    const AGAIN: &str = "try again in ";
    let text = String::from_utf8_lossy(&body[..body.len().min(16 * 1024)]);
    if let Some(at) = text.find(DELAY) {
        let rest = text[at + DELAY.len()..].trim_start();
        let value = rest.strip_prefix(':')?.trim_start().strip_prefix('"')?;
        return parse_go_duration(&value[..value.find('"')?]);
    }
    let at = text.find(AGAIN)?;
    let word = text[at + AGAIN.len()..]
        .split(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .next()?;
    parse_go_duration(word.trim_end_matches('.'))
}

/// The server's `x-should-retry` verdict, if it gave one.
pub fn should_retry(headers: &HeaderMap) -> Option<bool> {
    match headers.get("x-should-retry")?.to_str().ok()? {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Keeps error messages from servers to a readable size.
pub fn truncate_message(s: &str) -> String {
    const MAX: usize = 500;
    let s = s.trim();
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_read_back_from_their_labels() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_label(kind.label()), Some(kind));
        }
        assert_eq!(ErrorKind::from_label("ok"), None);
        let billed: Vec<_> = ErrorKind::ALL
            .into_iter()
            .filter(|k| k.may_have_been_billed())
            .collect();
        assert_eq!(
            billed,
            [
                ErrorKind::Timeout,
                ErrorKind::Connection,
                ErrorKind::InvalidResponse
            ]
        );
    }

    #[test]
    fn request_hash_covers_endpoint_and_body() {
        assert_ne!(request_hash("a", b"x"), request_hash("b", b"x"));
        assert_ne!(request_hash("a", b"x"), request_hash("a", b"y"));
        assert_eq!(request_hash("a", b"x").len(), 64);
        // SHA-256 of "\nabc", in the lowercase hex the state files and caches already hold.
        assert_eq!(
            request_hash("", b"abc"),
            "f39d39bfc99287b848780d4110eb663f0e7c344ae41f46a390c4135b89dc2756"
        );
    }
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_prefers_milliseconds() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(429, &h, b""), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("90"));
        assert_eq!(retry_after(429, &h, b""), Some(Duration::from_millis(90)));
        h.insert("retry-after-ms", HeaderValue::from_static("junk"));
        assert_eq!(retry_after(429, &h, b""), Some(Duration::from_secs(2)));
        h.insert("retry-after", HeaderValue::from_static("1.5"));
        assert_eq!(retry_after(429, &h, b""), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn retry_after_from_a_litellm_proxy() {
        // litellm issue 21553: the upstream's retry-after only under llm_provider-.
        let mut h = HeaderMap::new();
        h.insert("llm_provider-retry-after", HeaderValue::from_static("60"));
        assert_eq!(retry_after(429, &h, b""), Some(Duration::from_secs(60)));
    }

    #[test]
    fn retry_hints_in_bodies() {
        let gemini = br#"[{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "53s"}]}}]"#;
        assert_eq!(retry_hint_in_body(gemini), Some(Duration::from_secs(53)));
        assert_eq!(
            retry_hint_in_body(br#"{"retryDelay":"0.5s"}"#),
            Some(Duration::from_millis(500))
        );
        let openai =
            include_bytes!("../../../tests/fixtures/reference/openai-error-429-rate-limit.json");
        assert_eq!(retry_hint_in_body(openai), Some(Duration::from_millis(90)));
        assert_eq!(
            retry_hint_in_body(b"Rate limit reached. Please try again in 1m30.5s. Visit ..."),
            Some(Duration::from_millis(90_500))
        );
        // Headers come first.
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(429, &h, gemini), Some(Duration::from_secs(2)));
        for junk in [
            &b""[..],
            b"try again in a bit",
            b"try again in ",
            br#"{"retryDelay": 53}"#,
            br#"{"retryDelay": "soon"}"#,
            b"\xff\xfe \"retryDelay\": \"",
        ] {
            assert_eq!(retry_hint_in_body(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn a_429_without_a_hint_waits_for_the_exhausted_budget() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-ratelimit-limit-requests", "3000"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-tokens", "90000"),
            ("x-ratelimit-reset-tokens", "24s"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        assert_eq!(retry_after(429, &h, b"{}"), Some(Duration::from_secs(1)));
        // Not on other failures: a 500 is no sign of a used-up budget.
        assert_eq!(retry_after(500, &h, b"{}"), None);
    }

    #[test]
    fn should_retry_header_overrides_kind() {
        let mut e = CallError::new(ErrorKind::Rejected, "x");
        assert!(!e.retryable());
        e.should_retry = Some(true);
        assert!(e.retryable());
        let mut e = CallError::new(ErrorKind::Server, "x");
        e.should_retry = Some(false);
        assert!(!e.retryable());
    }

    #[test]
    fn long_messages_are_cut_on_char_boundaries() {
        let s = "é".repeat(400);
        let t = truncate_message(&s);
        assert!(t.ends_with('…') && t.len() < s.len());
    }
}

#[cfg(test)]
mod provider_choice_tests {
    use super::*;

    #[test]
    fn provider_is_inferred_from_the_model_and_api_is_openai_only() {
        use ApiName::*;
        use ProviderName::*;
        assert_eq!(
            Api::resolve(None, None, "gpt-4.1-mini"),
            Ok(Api::OpenAiChat)
        );
        assert_eq!(
            Api::resolve(None, None, "claude-haiku-4-5"),
            Ok(Api::AnthropicMessages)
        );
        // A router's name for a Claude model speaks OpenAI.
        assert_eq!(
            Api::resolve(None, None, "anthropic/claude-sonnet-4.5"),
            Ok(Api::OpenAiChat)
        );
        assert_eq!(
            Api::resolve(Some(Openai), None, "claude-haiku-4-5"),
            Ok(Api::OpenAiChat)
        );
        assert_eq!(
            Api::resolve(None, Some(Responses), "gpt-5"),
            Ok(Api::OpenAiResponses)
        );
        assert_eq!(
            Api::resolve(Some(Anthropic), None, "my-proxy-model"),
            Ok(Api::AnthropicMessages)
        );
        let e = Api::resolve(Some(Anthropic), Some(Chat), "m").unwrap_err();
        assert!(
            e.contains("--api chat is for OpenAI") && !e.contains("inferred"),
            "{e}"
        );
        let e = Api::resolve(None, Some(Responses), "claude-x").unwrap_err();
        assert!(e.contains("inferred from the model"), "{e}");
    }

    #[test]
    fn the_three_apis_never_share_an_endpoint_or_a_body() {
        let req = Request {
            model: "m".into(),
            system: Some("s".into()),
            user: "u".into(),
            max_tokens: Some(32),
            temperature: None,
            schema: None,
            parts: Vec::new(),
        };
        let client = reqwest::Client::new();
        let built: Vec<_> = [
            Api::OpenAiChat,
            Api::OpenAiResponses,
            Api::AnthropicMessages,
        ]
        .into_iter()
        .map(|api| {
            let p = build(
                api,
                client.clone(),
                "http://127.0.0.1:9/v1",
                None,
                &ExtraHeaders::default(),
            );
            (p.endpoint().to_string(), p.body(&req))
        })
        .collect();
        for (i, a) in built.iter().enumerate() {
            for b in &built[i + 1..] {
                assert_ne!(a.0, b.0);
                assert_ne!(a.1, b.1);
                // So the resume and cache key differ too.
                assert_ne!(
                    crate::engine::provider::request_hash(&a.0, &a.1),
                    crate::engine::provider::request_hash(&b.0, &b.1)
                );
            }
        }
    }

    #[test]
    fn extra_headers_are_checked_redacted_and_win() {
        let h = ExtraHeaders::parse(&[
            "X-Title: batch".into(),
            "anthropic-version:  2023-01-01 ".into(),
            "Authorization: Bearer sk-secret".into(),
        ])
        .unwrap();
        let dbg = format!("{h:?}");
        assert!(
            dbg.contains("x-title") && !dbg.contains("sk-secret"),
            "{dbg}"
        );
        let mut map = HeaderMap::new();
        map.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        h.apply(&mut map);
        assert_eq!(map["anthropic-version"], "2023-01-01");
        assert!(map["authorization"].is_sensitive());
        // A version or an attribution is no secret, and scrubbing it would cut dates and URLs
        // out of answers; everything else is scrubbed.
        let scrub = scrubber_of(&map);
        assert_eq!(
            scrub.scrub("since 2023-01-01, sk-secret"),
            "since 2023-01-01, [redacted]"
        );
        for (bad, says) in [
            ("no colon", "number 1"),
            ("Bad Name: v", "not a header name"),
            ("X: a\u{7}b", "cannot carry"),
            ("Content-Type: text/plain", "sets this header itself"),
        ] {
            let e = ExtraHeaders::parse(&[bad.to_string()]).unwrap_err();
            assert!(e.contains("--header") && e.contains(says), "{bad}: {e}");
        }
    }
}

/// SHA-256 of where a request goes and exactly what it says.
pub fn request_hash(endpoint: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(endpoint.as_bytes());
    h.update(b"\n");
    h.update(body);
    let mut hex = String::with_capacity(64);
    for b in h.finalize() {
        for nibble in [b >> 4, b & 0xf] {
            hex.push(char::from_digit(u32::from(nibble), 16).expect("a nibble is a hex digit"));
        }
    }
    hex
}

//! Provider Batch APIs: `batch submit`, `status`, `collect`, `cancel` and `run --via batch`.
//!
//! For large jobs that can wait, the providers run the requests themselves, within 24 hours and
//! at half the price. The rows are rendered exactly as `run` renders them ([`plan`]), written as
//! the provider's batch input beside a state file ([`state`]), and sent as one batch or several
//! when the provider's per-batch limits require. Everything needed to carry on is in the state
//! file, so the process that submitted can exit (or be killed) at any moment: `collect` finishes
//! an interrupted submission, polls until every batch has ended, downloads the results and
//! writes the same results CSV as `run`, priced at the batch discount.

pub mod anthropic;
pub mod embeddings;
pub mod openai;
pub mod plan;
pub mod results;
pub mod state;

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::SeedableRng;

use crate::base::error::{Error, ExitStatus};
use crate::base::human;
use crate::base::printer::Printer;
use crate::base::secret::ApiKey;
use crate::engine::lock::StateLock;
use crate::engine::pricing::Price;
use crate::engine::provider::{
    self as wire, CallError, Completion, ErrorKind, ExtraHeaders, Provider, http_client,
};
use crate::engine::retry::RetryPolicy;
use crate::run::connection::Connection;
use crate::run::settings::{Resume, RunConfig};
use crate::run::summary::Summary;

use plan::Limits;
use state::{BatchState, Counts, Phase, ProviderKind};

/// Batch requests cost this fraction of the standard price (both providers).
pub const BATCH_DISCOUNT: f64 = 0.5;
/// Retries of one management call (upload, create, poll, download) on transient failures.
const MANAGEMENT_RETRIES: u32 = 6;
/// Longest pause between polls by default.
pub const DEFAULT_POLL_MAX: Duration = Duration::from_secs(60);

/// What became of one request.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Boxed: outcomes of a whole job are held at once, most of them failures or small.
    Answered(Box<Completion>),
    /// Failed, expired or cancelled, with the provider's reason.
    Failed(String),
}

/// A batch as the provider describes it, in terms common to both providers.
#[derive(Debug, Clone)]
pub struct RemoteBatch {
    pub id: String,
    pub status: String,
    /// Nothing more will happen to it: its results (if any) can be downloaded.
    pub ended: bool,
    pub counts: Counts,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    /// Why the provider refused the batch as a whole (OpenAI validation errors).
    pub errors: Vec<String>,
}

/// The `custom_id` of row `seq`. Positions rather than the id column: they are unique, and fit
/// Anthropic's `^[a-zA-Z0-9_-]{1,64}$` whatever the ids look like.
pub fn custom_id(seq: u64) -> String {
    format!("row-{seq}")
}

pub fn custom_id_seq(id: &str) -> Option<u64> {
    id.strip_prefix("row-")?.parse().ok()
}

/// One request as a line of the provider's batch input.
pub fn input_line(kind: ProviderKind, custom_id: &str, body: &[u8]) -> Vec<u8> {
    match kind {
        ProviderKind::OpenAi | ProviderKind::OpenAiResponses | ProviderKind::OpenAiEmbeddings => {
            openai::input_line(openai::endpoint(kind), custom_id, body)
        }
        ProviderKind::Anthropic => anthropic::input_line(custom_id, body),
    }
}

/// The price of a batch request: the standard price times [`BATCH_DISCOUNT`].
pub fn batch_price(p: Price) -> Price {
    Price {
        input: p.input * BATCH_DISCOUNT,
        cached_input: p.cached_input.map(|c| c * BATCH_DISCOUNT),
        cache_write: p.cache_write.map(|c| c * BATCH_DISCOUNT),
        output: p.output * BATCH_DISCOUNT,
    }
}

/// One provider's Batch API.
enum Api {
    OpenAi(openai::OpenAiBatches),
    Anthropic(anthropic::AnthropicBatches),
}

impl Api {
    /// The client of the state's provider, sending `given` (this step's `--header`s). Anthropic's
    /// also sends the `anthropic-*` headers given with `--header` at submission (kept in the
    /// state; `given` wins), so every step of a batch speaks the same API version.
    fn new(st: &BatchState, key: Option<&ApiKey>, given: &ExtraHeaders) -> Result<Self, Error> {
        let (kind, base_url) = (st.provider, st.base_url.as_str());
        let client = http_client(4);
        Ok(match kind {
            ProviderKind::OpenAi
            | ProviderKind::OpenAiResponses
            | ProviderKind::OpenAiEmbeddings => Api::OpenAi(openai::OpenAiBatches::new(
                client,
                base_url,
                key,
                openai::endpoint(kind),
                given,
            )),
            ProviderKind::Anthropic => {
                let extra = ExtraHeaders::parse(&st.api_headers)
                    .map_err(|e| Error::Input(format!("the state file's api_headers: {e}")))?;
                Api::Anthropic(anthropic::AnthropicBatches::new(
                    client,
                    base_url,
                    key,
                    &extra.then(given),
                ))
            }
        })
    }

    /// Moves batch `i` forward until the provider has it, saving the state before each step that
    /// could leave something at the provider.
    async fn submit(&self, st: &mut BatchState, i: usize, path: &Path) -> Result<(), Error> {
        loop {
            let rec = &st.batches[i];
            match rec.phase {
                Phase::Created | Phase::Downloaded | Phase::Abandoned => return Ok(()),
                Phase::Written => {
                    let file = st.file(&rec.input_file);
                    let data = std::fs::read(&file).map_err(|e| {
                        Error::Input(format!(
                            "the input of {} ({}) cannot be read: {}; it is written by `batch \
                             submit` and needed until the batch is created",
                            rec.name(),
                            file.display(),
                            crate::base::error::describe_io(&e)
                        ))
                    })?;
                    let name = rec.input_file.clone();
                    let rec_id = match self {
                        Api::OpenAi(api) => Some(
                            retrying("uploading the batch input", || {
                                api.upload(&name, data.clone())
                            })
                            .await?,
                        ),
                        // Anthropic takes the requests in the create request itself.
                        Api::Anthropic(_) => None,
                    };
                    let rec = &mut st.batches[i];
                    rec.input_file_id = rec_id;
                    rec.phase = Phase::Uploaded;
                    st.save(path)?;
                }
                Phase::Uploaded => {
                    let rec = &mut st.batches[i];
                    rec.phase = Phase::Creating;
                    rec.creating_since.get_or_insert_with(state::now);
                    st.save(path)?;
                    let created = self.create(st, i).await;
                    let rec = &mut st.batches[i];
                    match created {
                        Ok(b) => {
                            apply(rec, &b);
                            rec.phase = Phase::Created;
                            st.save(path)?;
                        }
                        Err((e, refused)) => {
                            if refused {
                                // A definite "no": nothing was created, so it may be sent again.
                                rec.phase = Phase::Uploaded;
                                st.save(path)?;
                            }
                            return Err(e);
                        }
                    }
                }
                Phase::Creating => {
                    // The create request may have reached the provider before the last process
                    // stopped: find that batch rather than create (and pay for) another.
                    let found = self.find(st, i).await?;
                    let rec = &mut st.batches[i];
                    match found {
                        Some(b) => {
                            apply(rec, &b);
                            rec.phase = Phase::Created;
                        }
                        None => rec.phase = Phase::Uploaded,
                    }
                    st.save(path)?;
                }
            }
        }
    }

    /// Sends the create request; on a failure that leaves it unknown whether the batch was made
    /// (connection lost, 5xx), looks for it before sending again. The flag says the provider
    /// refused it outright.
    async fn create(&self, st: &BatchState, i: usize) -> Result<RemoteBatch, (Error, bool)> {
        let rec = &st.batches[i];
        let api = match self {
            Api::OpenAi(api) => api,
            Api::Anthropic(api) => return self.create_anthropic(api, st, i).await,
        };
        let file_id = rec.input_file_id.clone().unwrap_or_default();
        let metadata = serde_json::json!({
            "batch_number": rec.number.to_string(),
            "rows": rec.requests.to_string(),
        });
        let policy = RetryPolicy::new(MANAGEMENT_RETRIES);
        let mut rng = rand::rngs::SmallRng::from_os_rng();
        let mut tries = 0;
        loop {
            match api.create(&file_id, metadata.clone()).await {
                Ok(b) => return Ok(b),
                Err(e) => {
                    let Some(wait) = policy.next_delay(tries, &e, &mut rng) else {
                        let refused = e.status.is_some_and(|s| (400..500).contains(&s));
                        return Err((api_error("creating the batch", &e), refused));
                    };
                    tries += 1;
                    tokio::time::sleep(wait).await;
                    if let Ok(Some(b)) = api.find_by_input_file(&file_id).await {
                        return Ok(b);
                    }
                }
            }
        }
    }

    /// Anthropic: the requests of the stored input file in one create request. A failure that
    /// leaves it unknown whether the batch was made is not retried blindly: the next command
    /// looks for it first (the state says `creating`).
    async fn create_anthropic(
        &self,
        api: &anthropic::AnthropicBatches,
        st: &BatchState,
        i: usize,
    ) -> Result<RemoteBatch, (Error, bool)> {
        let rec = &st.batches[i];
        let file = st.file(&rec.input_file);
        let data = std::fs::read(&file).map_err(|e| (Error::read(&file, &e), false))?;
        api.create(&data).await.map_err(|e| {
            let refused = e.status.is_some_and(|s| (400..500).contains(&s));
            (api_error("creating the message batch", &e), refused)
        })
    }

    /// The batch a create request that may have been sent made, if the provider has it.
    async fn find(&self, st: &BatchState, i: usize) -> Result<Option<RemoteBatch>, Error> {
        let rec = &st.batches[i];
        match self {
            Api::OpenAi(api) => match &rec.input_file_id {
                Some(id) => retrying("looking for the batch", || api.find_by_input_file(id)).await,
                None => Ok(None),
            },
            Api::Anthropic(api) => {
                let since = rec.creating_since.unwrap_or(st.submitted_at);
                let known: Vec<&str> = st
                    .batches
                    .iter()
                    .filter_map(|b| b.batch_id.as_deref())
                    .collect();
                let found = retrying("looking for the message batch", || {
                    api.candidates(since, rec.requests)
                })
                .await?;
                let mut found: Vec<RemoteBatch> = found
                    .into_iter()
                    .filter(|b| !known.contains(&b.id.as_str()))
                    .collect();
                match found.len() {
                    0 => Ok(None),
                    1 => Ok(found.pop()),
                    _ => Err(Error::Usage(format!(
                        "{} may have been created before the last command stopped, and several \
                         message batches of {} requests created since could be it ({}); cancel \
                         the extra ones in the console and record the right id as \
                         \"batch_id\" (with \"phase\": \"created\") in the state file",
                        rec.name(),
                        rec.requests,
                        found
                            .iter()
                            .map(|b| b.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))),
                }
            }
        }
    }

    async fn get(&self, id: &str) -> Result<RemoteBatch, Error> {
        match self {
            Api::OpenAi(api) => retrying("checking the batch", || api.get(id)).await,
            Api::Anthropic(api) => retrying("checking the message batch", || api.get(id)).await,
        }
    }

    async fn cancel(&self, id: &str) -> Result<RemoteBatch, Error> {
        match self {
            Api::OpenAi(api) => retrying("cancelling the batch", || api.cancel(id)).await,
            Api::Anthropic(api) => {
                retrying("cancelling the message batch", || api.cancel(id)).await
            }
        }
    }

    /// Checks batch `i` and, once it has ended, downloads its results beside the state.
    async fn refresh(&self, st: &mut BatchState, i: usize, path: &Path) -> Result<(), Error> {
        let Some(id) = st.batches[i].batch_id.clone() else {
            return Ok(());
        };
        let b = self.get(&id).await?;
        apply(&mut st.batches[i], &b);
        if !b.ended {
            return Ok(());
        }
        let number = st.batches[i].number;
        let api = match self {
            Api::OpenAi(api) => api,
            Api::Anthropic(api) => {
                let name = format!("output-{number:03}.jsonl");
                let data = retrying("downloading batch results", || api.results(&b.id)).await?;
                write_atomically(&st.file(&name), &data)?;
                st.batches[i].output_file = Some(name);
                st.batches[i].phase = Phase::Downloaded;
                return st.save(path);
            }
        };
        for (file_id, name, is_output) in [
            (&b.output_file_id, format!("output-{number:03}.jsonl"), true),
            (&b.error_file_id, format!("errors-{number:03}.jsonl"), false),
        ] {
            let Some(file_id) = file_id else { continue };
            let data = retrying("downloading batch results", || api.content(file_id)).await?;
            write_atomically(&st.file(&name), &data)?;
            let rec = &mut st.batches[i];
            if is_output {
                rec.output_file = Some(name);
            } else {
                rec.error_file = Some(name);
            }
        }
        st.batches[i].phase = Phase::Downloaded;
        st.save(path)
    }
}

fn apply(rec: &mut state::BatchRecord, b: &RemoteBatch) {
    rec.batch_id = Some(b.id.clone());
    rec.status = Some(b.status.clone());
    rec.counts = b.counts;
    if !b.errors.is_empty() {
        rec.errors = b.errors.clone();
    }
}

/// Runs a management call, retrying transient failures with backoff.
async fn retrying<T, F, Fut>(what: &str, mut call: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CallError>>,
{
    let policy = RetryPolicy::new(MANAGEMENT_RETRIES);
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    let mut tries = 0;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) => match policy.next_delay(tries, &e, &mut rng) {
                Some(wait) => {
                    // A warning for people (any printer warns), not a raw log line.
                    Printer::new(false).warn(format_args!(
                        "{what}: {e}; trying again in {}",
                        human::duration(wait)
                    ));
                    tries += 1;
                    tokio::time::sleep(wait).await;
                }
                None => return Err(api_error(what, &e)),
            },
        }
    }
}

/// A failure submitting batch `i` of `n`, of the same kind (a rejected key stays a usage error,
/// not an I/O one), saying which batch and that `batch collect` submits the rest.
pub(super) fn submit_failed(e: Error, i: usize, n: usize, path: &Path) -> Error {
    let what = format!("submitting batch {} of {n}", i + 1);
    let rest = format!(
        "the state is saved in {}: `batch collect {}` submits what is left",
        path.display(),
        path.display()
    );
    match e {
        Error::Usage(m) => Error::Usage(format!("{what}: {m}; {rest}")),
        Error::Input(m) => Error::Input(format!("{what}: {m}; {rest}")),
        Error::Io { context, source } => Error::Io {
            context: format!("{what}: {context}"),
            source: std::io::Error::new(source.kind(), format!("{source}; {rest}")),
        },
        Error::AfterSending(e) => submit_failed(*e, i, n, path).after_sending(),
    }
}

fn api_error(what: &str, e: &CallError) -> Error {
    match e.kind {
        ErrorKind::Auth => Error::Usage(format!(
            "{what}: the API rejected the key ({e}); check the key in the environment or \
             --api-key-file"
        )),
        _ => Error::io(what.to_string(), std::io::Error::other(e.to_string())),
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let tmp = path.with_extension("partial");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

/// The key for a state's provider: `--api-key-file`, else the provider's variable. Needed
/// unless the API is on this machine (the mock).
fn api_key(st: &BatchState, key_file: Option<&Path>) -> Result<Option<ApiKey>, Error> {
    let var = st.provider.key_variable();
    let key = ApiKey::lookup(var, key_file)?;
    let local = reqwest::Url::parse(&st.base_url)
        .ok()
        .is_some_and(|u| crate::run::connection::is_loopback(&u));
    if key.is_none() && !local {
        return Err(Error::Usage(format!(
            "no API key for {}: set {var} (or pass --api-key-file FILE)",
            st.base_url
        )));
    }
    Ok(key)
}

/// The state file for a config: `--state` if given, else `<results stem>.batch.json`.
fn state_path(cfg: &RunConfig) -> PathBuf {
    if cfg.state == crate::engine::store::default_path(&cfg.output) {
        state::default_path(&cfg.output)
    } else {
        cfg.state.clone()
    }
}

/// The Batch API for the config's wire format.
fn kind_of(cfg: &RunConfig) -> Result<ProviderKind, Error> {
    match cfg.api {
        wire::Api::OpenAiChat => Ok(ProviderKind::OpenAi),
        wire::Api::AnthropicMessages => Ok(ProviderKind::Anthropic),
        wire::Api::OpenAiResponses => Ok(ProviderKind::OpenAiResponses),
    }
}

fn limits(cfg: &RunConfig, kind: ProviderKind) -> Limits {
    let (requests, bytes) = kind.limits();
    Limits {
        requests: cfg.batch.max_requests.unwrap_or(requests),
        bytes: cfg.batch.max_bytes.unwrap_or(bytes),
        inputs: u64::MAX,
    }
}

/// The provider `run` uses for this config: its `body()` makes every batch request. The body
/// does not depend on where requests go, so the endpoint's name serves as its base URL (no mock
/// is started to plan a batch).
fn body_provider(cfg: &RunConfig) -> std::sync::Arc<dyn Provider> {
    wire::build(
        cfg.api,
        http_client(1),
        cfg.endpoint.name(),
        None,
        &cfg.headers,
    )
}

/// `batch submit`.
pub async fn submit_command(cfg: RunConfig) -> Result<ExitStatus, Error> {
    let printer = cfg.printer();
    kind_of(&cfg)?;
    if cfg.dry_run {
        return dry_run(&cfg, printer);
    }
    if cfg.endpoint.is_mock() {
        return Err(Error::Usage(
            "`batch submit --mock` would send the batches to a server that ends with this \
             process; start `batch mock` and pass its --base-url, or use `batch run --via batch \
             --mock`"
                .into(),
        ));
    }
    // Not the mock: opening starts nothing, it only gives the base URL and key.
    let conn = Connection::open(&cfg.endpoint).await?;
    let path = state_path(&cfg);
    let _lock = cfg.lock(&path)?;
    let st = submit(&cfg, &conn.base_url, conn.api_key.as_ref(), &path).await?;
    print_submitted(&st, &path, printer, false);
    // Nothing is answered yet: the exit status says whether everything was handed over.
    Ok(ExitStatus::Success)
}

/// Plans, writes the state and the batch inputs, then hands every batch to the provider.
async fn submit(
    cfg: &RunConfig,
    base_url: &str,
    key: Option<&ApiKey>,
    path: &Path,
) -> Result<BatchState, Error> {
    let kind = kind_of(cfg)?;
    refuse_recorded_job(path, cfg.resume)?;
    check_results_path(cfg)?;
    let files = state::files_dir(path);
    std::fs::create_dir_all(&files)
        .map_err(|e| Error::io(format!("cannot create {}", files.display()), e))?;
    let limits = limits(cfg, kind);
    let provider = body_provider(cfg);
    let planned = {
        let (cfg, files) = (cfg.clone(), files.clone());
        tokio::task::spawn_blocking(move || {
            plan::plan(&cfg, &*provider, kind, limits, Some(&files), false)
        })
        .await
        .map_err(|e| Error::io("planning the batches failed", std::io::Error::other(e)))??
    };
    let mut st = BatchState {
        format: state::FORMAT.into(),
        provider: kind,
        base_url: base_url.to_string(),
        input: absolute(&cfg.input),
        input_format: cfg.input_format,
        output_format: cfg.output_format,
        input_sha256: file_sha256(&cfg.input)?,
        output: absolute(&cfg.output),
        files: absolute(&files),
        id_column: cfg.id_column.clone(),
        model: cfg.model.clone(),
        rows: planned.rows,
        sanitize: cfg.sanitize,
        price: cfg.prices.lookup(&cfg.model).map(Into::into),
        prices_as_of: cfg.prices.as_of.clone(),
        submitted_at: state::now(),
        max_requests: limits.requests,
        max_bytes: limits.bytes,
        batches: planned.batches,
        schema: cfg.schema.as_deref().map(state::SchemaRecord::of),
        expect: cfg.expect.clone(),
        api_headers: cfg.headers.anthropic_protocol(),
        embed: None,
    };
    st.save(path)?;
    let api = Api::new(&st, key, &cfg.headers)?;
    for i in 0..st.batches.len() {
        api.submit(&mut st, i, path)
            .await
            .map_err(|e| submit_failed(e, i, st.batches.len(), path))?;
    }
    Ok(st)
}

/// A job already recorded in the state file is never replaced without `--restart`: its batches
/// may be running (and billed) still.
fn refuse_recorded_job(path: &Path, resume: Resume) -> Result<(), Error> {
    if !path.exists() || resume == Resume::Restart {
        return Ok(());
    }
    let hint = match BatchState::load(path) {
        Ok(st) if st.batches.iter().all(|b| b.is_final()) => {
            "its batches have ended; collect it with `batch collect`, or add --restart to \
             replace it"
        }
        Ok(_) => {
            "it is still running; see `batch status`, collect it with `batch collect \
             --wait`, or add --restart to replace it (its batches keep running)"
        }
        Err(_) => "add --restart to replace it, or choose another --state",
    };
    Err(Error::Usage(format!(
        "a batch job is already recorded in {}: {hint}",
        path.display()
    )))
}

/// Fails on an unwritable results path or a missing --expect column now, not after the
/// batches ran.
fn check_results_path(cfg: &RunConfig) -> Result<(), Error> {
    let input = crate::engine::input::InputFile::open_as(
        &cfg.input,
        cfg.input_format,
        cfg.id_column.as_deref(),
    )?;
    if let Some(e) = &cfg.expect {
        e.column_index(&input.headers, &cfg.input)?;
    }
    drop(crate::engine::output::ResultsWriter::create_as(
        &cfg.output,
        cfg.output_format,
        &input.headers,
        cfg.sanitize,
        None,
    )?);
    Ok(())
}

/// What was handed over and how to go on: a note (hidden by `-q`).
/// `waiting`: the command goes on to wait for the batches itself (`run --via batch`), so it
/// says so instead of naming the commands that would.
fn print_submitted(st: &BatchState, path: &Path, printer: Printer, waiting: bool) {
    printer.note_with(|w| {
        let total: u64 = st.batches.iter().map(|b| b.requests).sum();
        writeln!(
            w,
            "Submitted  {} batch{} ({total} requests) to the {} at {}",
            st.batches.len(),
            if st.batches.len() == 1 { "" } else { "es" },
            st.provider.label(),
            st.base_url
        )?;
        for b in &st.batches {
            writeln!(
                w,
                "  batch {:<3} {:<28} {:>7} requests  {}",
                b.number,
                b.batch_id.as_deref().unwrap_or("-"),
                b.requests,
                human_bytes(b.bytes)
            )?;
        }
        writeln!(w, "State      {}", path.display())?;
        if waiting {
            writeln!(
                w,
                "Waiting    for the answers (if this stops, `batch collect {} --wait` picks up)",
                path.display()
            )
        } else {
            writeln!(
                w,
                "Next       batch status {0}; batch collect {0} --wait",
                path.display()
            )
        }
    });
}

/// `submit --dry-run` and `run --via batch --dry-run`: the batches and what they would cost,
/// reported (the plan is what was asked for, so `-q` keeps it).
fn dry_run(cfg: &RunConfig, printer: Printer) -> Result<ExitStatus, Error> {
    let kind = kind_of(cfg)?;
    let limits = limits(cfg, kind);
    let provider = body_provider(cfg);
    let planned = plan::plan(cfg, &*provider, kind, limits, None, true)?;
    printer.report_with(|w| {
        write_plan(w, cfg, kind, limits, &planned)?;
        write_cost(w, cfg, &planned)
    });
    Ok(ExitStatus::Success)
}

/// The dry run's rows and batches.
fn write_plan(
    w: &mut dyn Write,
    cfg: &RunConfig,
    kind: ProviderKind,
    limits: Limits,
    planned: &plan::Plan,
) -> std::io::Result<()> {
    writeln!(w, "Dry run: nothing was sent and nothing was written.")?;
    writeln!(
        w,
        "Rows         {} in {} (every row checked, every prompt rendered)",
        planned.rows,
        cfg.input.display()
    )?;
    writeln!(
        w,
        "Batches      {} for the {} (at most {} requests and {} a batch)",
        planned.batches.len(),
        kind.label(),
        limits.requests,
        human_bytes(limits.bytes)
    )?;
    for b in &planned.batches {
        let [first, _] = b.rows.first().copied().unwrap_or([0, 0]);
        let last = b.rows.last().map_or(0, |r| r[1]);
        writeln!(
            w,
            "  batch {:<4} {} (rows {}-{}), {}",
            b.number,
            human::count(b.requests, "request"),
            first + 1,
            last,
            human_bytes(b.bytes)
        )?;
    }
    writeln!(w, "Prompts      {} tokens", planned.prompt_tokens)
}

/// The dry run's cost with `run` and via batch, when the model has a price.
fn write_cost(w: &mut dyn Write, cfg: &RunConfig, planned: &plan::Plan) -> std::io::Result<()> {
    let Some(p) = cfg.prices.lookup(&cfg.model) else {
        return writeln!(
            w,
            "Cost         unknown: no price for model {:?}; add one with --price-file",
            cfg.model
        );
    };
    let dollars = crate::base::human::usd_micro;
    let b = batch_price(p);
    writeln!(
        w,
        "Cost         {:<14} {}",
        "with `run`",
        format_args!("via batch ({}%)", (BATCH_DISCOUNT * 100.0) as u32)
    )?;
    writeln!(
        w,
        "  prompts    {:<14} {}",
        dollars(p.estimate(planned.prompt_tokens, 0)),
        dollars(b.estimate(planned.prompt_tokens, 0)),
    )?;
    match cfg.max_tokens.map(|m| planned.rows * u64::from(m)) {
        Some(c) => {
            writeln!(
                w,
                "  answers    {:<14} {:<14} at most {c} tokens (--max-tokens {} a row)",
                dollars(p.estimate(0, c)),
                dollars(b.estimate(0, c)),
                cfg.max_tokens.unwrap_or(0)
            )?;
            let (full, half) = (
                p.estimate(planned.prompt_tokens, c),
                b.estimate(planned.prompt_tokens, c),
            );
            writeln!(
                w,
                "  worst case {:<14} {:<14} saves {}",
                dollars(full),
                dollars(half),
                dollars(full - half)
            )?;
        }
        None => writeln!(
            w,
            "  answers    unknown length without --max-tokens (output ${} per 1M with `run`, \
             ${} per 1M via batch)",
            p.output, b.output
        )?,
    }
    writeln!(w, "Prices       {} as of {}", cfg.model, cfg.prices.as_of)?;
    writeln!(
        w,
        "Latency      `run`: as fast as the rate limits allow; via batch: up to 24 h (often \
         under 1 h)"
    )
}

/// `batch status STATE`: a report, the batches as the provider has them now.
pub async fn status_command(
    path: &Path,
    api_key_file: Option<&Path>,
    headers: &ExtraHeaders,
    printer: Printer,
) -> Result<ExitStatus, Error> {
    let mut st = BatchState::load(path)?;
    let key = api_key(&st, api_key_file)?;
    let api = Api::new(&st, key.as_ref(), headers)?;
    for i in 0..st.batches.len() {
        if let (Phase::Created, Some(id)) = (st.batches[i].phase, st.batches[i].batch_id.clone()) {
            let b = api.get(&id).await?;
            apply(&mut st.batches[i], &b);
        }
    }
    // Only shown: `collect` is the one that records progress, so two commands never race on
    // the file.
    printer.report_with(|w| write_status(w, &st, path));
    Ok(ExitStatus::Success)
}

/// The state's batches, one line each, and what to do next.
fn write_status(w: &mut dyn Write, st: &BatchState, path: &Path) -> std::io::Result<()> {
    writeln!(
        w,
        "State    {} ({} at {}, model {}, {})",
        path.display(),
        st.provider.label(),
        st.base_url,
        st.model,
        human::count(st.rows, "row")
    )?;
    writeln!(
        w,
        "{:<6} {:<28} {:<12} {:>8} {:>9} {:>7} {:>7}",
        "batch", "id", "status", "requests", "succeeded", "failed", "expired"
    )?;
    for b in &st.batches {
        let status = match b.phase {
            Phase::Written | Phase::Uploaded => "not created".to_string(),
            Phase::Creating => "creating?".to_string(),
            Phase::Abandoned => "abandoned".to_string(),
            _ => b.status.clone().unwrap_or_default(),
        };
        writeln!(
            w,
            "{:<6} {:<28} {:<12} {:>8} {:>9} {:>7} {:>7}",
            b.number,
            b.batch_id.as_deref().unwrap_or("-"),
            status,
            b.requests,
            b.counts.succeeded,
            b.counts.failed,
            b.counts.expired
        )?;
        for e in &b.errors {
            writeln!(w, "       refused: {e}")?;
        }
    }
    if st
        .batches
        .iter()
        .any(|b| matches!(b.phase, Phase::Written | Phase::Uploaded | Phase::Creating))
    {
        writeln!(
            w,
            "Some batches were never created (the submit was interrupted): `batch collect` creates them."
        )?;
    }
    if st.batches.iter().all(|b| b.is_final()) {
        writeln!(
            w,
            "Every batch has ended: `batch collect {}` writes the results.",
            path.display()
        )?;
    }
    Ok(())
}

/// `batch cancel STATE`: reports the batches as they are once cancelled, and what is billed.
pub async fn cancel_command(
    path: &Path,
    api_key_file: Option<&Path>,
    headers: &ExtraHeaders,
    printer: Printer,
) -> Result<ExitStatus, Error> {
    let _lock = StateLock::acquire(path)?;
    let mut st = BatchState::load(path)?;
    let key = api_key(&st, api_key_file)?;
    let api = Api::new(&st, key.as_ref(), headers)?;
    for i in 0..st.batches.len() {
        if st.batches[i].phase == Phase::Creating
            && let Some(b) = api.find(&st, i).await?
        {
            apply(&mut st.batches[i], &b);
            st.batches[i].phase = Phase::Created;
        }
        match st.batches[i].phase {
            Phase::Written | Phase::Uploaded | Phase::Creating => {
                st.batches[i].phase = Phase::Abandoned;
            }
            Phase::Created => {
                let id = st.batches[i].batch_id.clone().unwrap_or_default();
                let b = api.cancel(&id).await?;
                apply(&mut st.batches[i], &b);
            }
            Phase::Downloaded | Phase::Abandoned => {}
        }
        st.save(path)?;
    }
    printer.report_with(|w| {
        write_status(w, &st, path)?;
        writeln!(
            w,
            "Cancellation requested. Requests already answered are still billed; `batch collect \
             {} --wait` writes them (the others as failed).",
            path.display()
        )
    });
    Ok(ExitStatus::Success)
}

/// `batch collect STATE`.
pub async fn collect_command(
    path: &Path,
    api_key_file: Option<&Path>,
    headers: &ExtraHeaders,
    output: Option<PathBuf>,
    opts: Collect,
) -> Result<ExitStatus, Error> {
    let _lock = StateLock::acquire(path)?;
    let mut st = BatchState::load(path)?;
    let key = api_key(&st, api_key_file)?;
    let api = Api::new(&st, key.as_ref(), headers)?;
    if let Some(o) = output {
        st.output = o;
    }
    // The results must not land on the input the batch was made from, nor the summary on them.
    crate::run::paths::PathCheck::default()
        .input("the submitted input", Some(&st.input))
        .input("the state file", Some(path))
        .output("-o", Some(&st.output))
        .output("--summary-json", opts.summary_json.as_deref())
        .check()?;
    collect(&api, &mut st, path, &opts).await
}

/// How `collect` goes about it.
pub struct Collect {
    /// Poll until every batch has ended.
    pub wait: bool,
    /// Send failed, expired or cancelled rows again as new batches.
    pub resubmit_failed: bool,
    /// The longest pause between two polls.
    pub poll_max: Duration,
    /// Progress and the summary are notes; unusable result lines are warnings.
    pub printer: Printer,
    pub summary_json: Option<PathBuf>,
}

async fn collect(
    api: &Api,
    st: &mut BatchState,
    path: &Path,
    opts: &Collect,
) -> Result<ExitStatus, Error> {
    if st.embed.is_some() {
        return embeddings::collect(api, st, path, opts).await;
    }
    let started = std::time::Instant::now();
    results::check_input(st)?;
    // Fail on an unwritable results path before waiting for hours.
    let input = crate::engine::input::InputFile::open_as(
        &st.input,
        st.input_format,
        st.id_column.as_deref(),
    )?;
    let schema = match &st.schema {
        Some(r) => Some(std::sync::Arc::new(r.compile(path)?)),
        None => None,
    };
    let expect = match &st.expect {
        Some(e) => Some((e.clone(), e.column_index(&input.headers, &st.input)?)),
        None => None,
    };
    let (output, format, sanitize) = (st.output.clone(), st.output_format, st.sanitize);
    let writer = || {
        let derived = crate::engine::derived::DerivedColumns::new(schema.clone(), expect.clone());
        crate::engine::output::ResultsWriter::create_as(
            &output,
            format,
            &input.headers,
            sanitize,
            derived,
        )
    };
    drop(writer()?);
    drive(api, st, path, opts).await?;
    if opts.resubmit_failed && st.batches.iter().all(|b| b.is_final()) {
        resubmit_failed(api, st, path, opts).await?;
    }
    let writer = writer()?;
    let printer = opts.printer;
    let (stats, output, saved) = {
        let st = st.clone();
        tokio::task::spawn_blocking(move || {
            results::write(&st, &input, writer, schema.as_deref(), printer)
        })
        .await
        .map_err(|e| Error::io("writing the results failed", std::io::Error::other(e)))??
    };
    let mut summary = stats.summary(started.elapsed(), &output, &st.model);
    summary.through_batch_api();
    if let Some(p) = &opts.summary_json {
        summary.write_json(p)?;
    }
    print_collected(printer, &summary, saved, path);
    Ok(if stats.failed + stats.skipped > 0 {
        ExitStatus::RowsFailed
    } else {
        ExitStatus::Success
    })
}

/// The summary, with what the batch discount saved and, when rows are still waiting, how to
/// get them: a note, as after `run`.
fn print_collected(printer: Printer, summary: &Summary, saved: Option<f64>, path: &Path) {
    printer.note_with(|w| {
        summary.print(w)?;
        if let Some(saved) = saved {
            writeln!(
                w,
                "Batch      prices at {}% of the live API's: {} saved",
                (BATCH_DISCOUNT * 100.0) as u32,
                crate::base::human::usd_micro(saved)
            )?;
        }
        if summary.skipped > 0 {
            writeln!(
                w,
                "State      {} ({} still waiting; collect again later, or add --wait)",
                path.display(),
                human::count(summary.skipped, "row")
            )?;
        }
        Ok(())
    });
}

/// `collect --resubmit-failed`, once every batch has ended: the rows that failed or expired go
/// out again as new batches, waited for with `--wait`.
async fn resubmit_failed(
    api: &Api,
    st: &mut BatchState,
    path: &Path,
    opts: &Collect,
) -> Result<(), Error> {
    let Some(n) = results::prepare_resubmission(st, path, opts.printer)? else {
        opts.printer
            .note("Nothing to resubmit: no row failed or expired.");
        return Ok(());
    };
    for i in st.batches.len() - n..st.batches.len() {
        api.submit(st, i, path).await?;
    }
    opts.printer.note(format_args!(
        "Resubmitted the failed and expired rows as {n} new batch{}",
        if n == 1 { "" } else { "es" }
    ));
    if opts.wait {
        drive(api, st, path, opts).await?;
    }
    Ok(())
}

/// Creates what was never created, then checks every batch once, or (with `wait`) until every
/// one has ended, pausing 1 s, 2 s, 4 s ... up to `poll_max` between rounds.
async fn drive(api: &Api, st: &mut BatchState, path: &Path, opts: &Collect) -> Result<(), Error> {
    let mut pause = Duration::from_secs(1).min(opts.poll_max);
    loop {
        for i in 0..st.batches.len() {
            api.submit(st, i, path).await?;
        }
        for i in 0..st.batches.len() {
            if st.batches[i].phase == Phase::Created {
                api.refresh(st, i, path).await?;
            }
        }
        let waiting: Vec<_> = st.batches.iter().filter(|b| !b.is_final()).collect();
        if waiting.is_empty() || !opts.wait {
            return Ok(());
        }
        let line = waiting
            .iter()
            .map(|b| {
                format!(
                    "batch {} {} {}/{}",
                    b.number,
                    b.status.as_deref().unwrap_or("?"),
                    b.counts.succeeded + b.counts.failed,
                    b.requests
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        opts.printer.note(format_args!(
            "waiting: {line}; next check in {}",
            human::duration(pause)
        ));
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(opts.poll_max);
    }
}

/// `batch run --via batch`: submit, then collect with --wait, in one command.
pub async fn run_via_batch(cfg: RunConfig) -> Result<ExitStatus, Error> {
    let printer = cfg.printer();
    if cfg.dry_run {
        return dry_run(&cfg, printer);
    }
    let conn = Connection::open(&cfg.endpoint).await?;
    let (base_url, key) = (conn.base_url.clone(), conn.api_key.clone());
    let path = state_path(&cfg);
    let _lock = cfg.lock(&path)?;
    let mut st = if matches!(cfg.resume, Resume::Yes { .. }) {
        BatchState::load(&path)?
    } else {
        submit(&cfg, &base_url, key.as_ref(), &path).await?
    };
    print_submitted(&st, &path, printer, true);
    let api = Api::new(&st, key.as_ref(), &cfg.headers)?;
    let opts = Collect {
        wait: true,
        resubmit_failed: false,
        poll_max: DEFAULT_POLL_MAX,
        printer,
        summary_json: cfg.summary_json.clone(),
    };
    collect(&api, &mut st, &path, &opts).await
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn file_sha256(path: &Path) -> Result<String, Error> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(|e| Error::read(path, &e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::read(path, &e))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejected_key_while_submitting_stays_a_usage_error_naming_the_batch_and_state() {
        let key = CallError::new(ErrorKind::Auth, "HTTP 401: bad key");
        let e = submit_failed(
            api_error("uploading the batch input", &key),
            1,
            3,
            Path::new("/x/out.batch.json"),
        );
        assert!(matches!(e, Error::Usage(_)), "{e:?}");
        let m = e.to_string();
        assert!(
            m.contains("submitting batch 2 of 3")
                && m.contains("rejected the key")
                && m.contains("`batch collect /x/out.batch.json`"),
            "{m}"
        );
        let io = submit_failed(
            Error::io("uploading", std::io::Error::other("reset")),
            0,
            1,
            Path::new("s.json"),
        );
        assert!(matches!(io, Error::Io { .. }), "{io:?}");
        assert!(
            io.to_string()
                .contains("reset; the state is saved in s.json")
        );
    }

    #[test]
    fn custom_ids_round_trip_and_fit_anthropic() {
        for seq in [0, 7, 123_456_789] {
            let id = custom_id(seq);
            assert!(id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
            assert_eq!(custom_id_seq(&id), Some(seq));
        }
        assert_eq!(custom_id_seq("r1"), None);
        assert_eq!(custom_id_seq("row-x"), None);
    }

    #[test]
    fn batch_price_is_half_of_every_rate() {
        let p = Price {
            input: 0.4,
            cached_input: Some(0.1),
            cache_write: None,
            output: 1.6,
        };
        let b = batch_price(p);
        assert_eq!((b.input, b.cached_input, b.output), (0.2, Some(0.05), 0.8));
    }

    #[test]
    fn bytes_read_like_a_person_would() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(200_000_000), "200.0 MB");
    }
}

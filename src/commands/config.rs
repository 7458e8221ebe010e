//! Flags, `batch.toml` and the environment resolved into one [`RunConfig`] (ripgrep's "low"
//! arguments to "high" settings).
//!
//! Precedence, highest first: a flag on the command line, the environment (`OPENAI_BASE_URL`,
//! `OPENAI_API_KEY`), the settings file, built-in defaults. After [`RunConfig::resolve`] every
//! value is checked and every file the run needs (prompt files, price file) has been read, so a
//! typo fails in the first second rather than an hour into the job.
//!
//! Also here: the flags of `batch run` that commands making runs of their own refuse
//! ([`RunOnlyFlag`], [`refuse_flags`]).

use crate::base::error::{Error, describe_io};
use crate::base::format::{Format, is_std};
use crate::base::secret::ApiKey;
use crate::commands::cli::{MockArgs, RunArgs};
use crate::engine::concurrency::{Concurrency, ConcurrencyList};
use crate::engine::expect::Expectation;
use crate::engine::pricing::PriceTable;
use crate::engine::provider::{Api, ExtraHeaders};
use crate::engine::retry::RetryPolicy;
use crate::engine::schema::OutputSchema;
use crate::engine::template::PromptSource;
use crate::run::connection::is_loopback;
use crate::run::paths::PathCheck;
use crate::run::settings::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_CONCURRENCY: Concurrency = Concurrency::Fixed(16);
const DEFAULT_MAX_RETRIES: u32 = 6;
const DEFAULT_TIMEOUT_SECS: f64 = 120.0;
const DEFAULT_GRACE_SECS: f64 = 30.0;
const DEFAULT_MAX_STALL_SECS: f64 = 600.0;
const DEFAULT_SCHEMA_RETRIES: u32 = 2;
const SETTINGS_FILE: &str = "batch.toml";

/// Fills every unset field of `$cli` from `$file`.
macro_rules! fill_from_file {
    ($cli:ident, $file:ident; $($field:ident),* $(,)?) => {
        $( if $cli.$field.is_none() { $cli.$field = $file.$field.take(); } )*
    };
}

impl RunConfig {
    /// Merges flags with the settings file and environment, reads the files the run needs and
    /// checks every value.
    pub fn resolve(args: RunArgs) -> Result<Self, Error> {
        let (cfg, list) = Self::resolve_sweep(args)?;
        if list.len() > 1 {
            return Err(Error::Usage(
                "--concurrency takes one value for `batch run` (a list such as 1,2,4 is for \
                 `batch bench`)"
                    .into(),
            ));
        }
        Ok(cfg)
    }

    /// Like [`RunConfig::resolve`], for `batch bench`: also returns every `--concurrency`
    /// setting of the list (the config holds the first).
    pub fn resolve_sweep(mut args: RunArgs) -> Result<(Self, Vec<Concurrency>), Error> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(mut file) = load_settings(args.config.as_deref())? {
            fill_from_file!(args, file;
                prompt, prompt_file, system, system_file, id_column, model, max_tokens,
                temperature, price_file, concurrency, rpm, tpm, max_retries, max_stall, timeout, api_key_file,
                mock, summary_json, grace, max_cost, log, provider, api, schema, schema_retries,
                expect, match_mode, via, batch_max_requests, batch_max_bytes,
                delimiter, max_field_size, max_row_size, max_input_size, image_detail, max_image_px);
            if args.header.is_empty() {
                args.header = std::mem::take(&mut file.header);
            }
            args.no_strict |= file.no_strict;
            args.ignore_case |= file.ignore_case;
            args.ignore_whitespace |= file.ignore_whitespace;
            args.no_sanitize |= file.no_sanitize;
            args.no_cache |= file.no_cache;
            args.allow_any_path |= file.allow_any_path;
            args.refresh |= file.refresh;
            args.no_dedup |= file.no_dedup;
            args.cache_truncated |= file.cache_truncated;
            if args.cache_dir.is_none() {
                args.cache_dir = file.cache_dir.take();
            }
            // The environment sits between flags and the file for the base URL.
            if args.base_url.is_none() && env(api_of(&args).base_url_env()).is_none() {
                args.base_url = file.base_url.take();
            }
        }
        // Whose variables to read; a bad combination is reported by `from_merged`.
        let api = api_of(&args);
        let list = args
            .concurrency
            .take()
            .map(|l| l.0)
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| vec![DEFAULT_CONCURRENCY]);
        args.concurrency = Some(ConcurrencyList(vec![list[0]]));
        let env_api_key = ApiKey::from_env(api.key_env());
        Self::from_merged(args, env(api.base_url_env()), env_api_key).map(|c| (c, list))
    }

    /// The pure half of [`RunConfig::resolve`]: no settings file, the environment passed in.
    fn from_merged(
        args: RunArgs,
        env_base_url: Option<String>,
        env_api_key: Option<ApiKey>,
    ) -> Result<Self, Error> {
        let mut args = args;
        let api = resolve_api(&mut args)?;
        let headers = ExtraHeaders::parse(&args.header).map_err(Error::Usage)?;
        let paths = Paths::of(&args)?;
        check_paths(&args, &paths)?;
        let (prompt, system) = prompts_of(&args)?;
        let limits = Limits::of(&args)?;
        let model = args
            .model
            .clone()
            .unwrap_or_else(|| DEFAULT_MODEL.to_string());
        let prices = prices_for(&args, &model)?;
        let (expect, schema) = checks_of(&args, api)?;
        let endpoint = endpoint_of(&args, api, env_base_url, env_api_key)?;
        // Last, once every flag is known to be good: stdin is read (and spooled) only for a run
        // that will go ahead.
        let runs_dir = args
            .cache_dir
            .clone()
            .unwrap_or_else(crate::engine::cache::default_dir)
            .join("runs");
        let read = read_options(&args);
        let stdio = crate::engine::stdio::resolve(
            &paths.input,
            paths.input_format,
            &paths.output,
            args.state.clone(),
            &runs_dir,
            read.limits,
        )?;
        Ok(RunConfig {
            input: stdio.input,
            spooled_stdin: stdio.spooled,
            stdin_lock: stdio.lock,
            output: paths.output,
            input_format: paths.input_format,
            output_format: paths.output_format,
            prompt,
            system,
            id_column: args.id_column,
            model,
            max_tokens: args.max_tokens,
            temperature: args.temperature,
            prices,
            concurrency: limits.concurrency,
            rpm: args.rpm,
            tpm: args.tpm,
            retry: RetryPolicy {
                max_stall: limits.max_stall,
                ..RetryPolicy::new(args.max_retries.unwrap_or(DEFAULT_MAX_RETRIES))
            },
            timeout: limits.timeout,
            endpoint,
            api,
            headers,
            summary_json: args.summary_json,
            quiet: args.quiet,
            state: stdio.state,
            resume: resume_of(args.resume, args.restart, args.retry_failed, args.force),
            grace: limits.grace,
            max_cost: args.max_cost,
            dry_run: args.dry_run,
            log: args.log,
            sanitize: !args.no_sanitize,
            cache: if args.no_cache {
                CacheMode::Off
            } else {
                CacheMode::On {
                    dir: args
                        .cache_dir
                        .unwrap_or_else(crate::engine::cache::default_dir),
                    refresh: args.refresh,
                    truncated: args.cache_truncated,
                }
            },
            dedup: !args.no_dedup,
            schema,
            schema_retries: args.schema_retries.unwrap_or(DEFAULT_SCHEMA_RETRIES),
            expect,
            batch: BatchSettings {
                via_batch: args.via == Some(crate::commands::cli::Via::Batch),
                max_requests: args.batch_max_requests,
                max_bytes: args.batch_max_bytes,
            },
            read,
            continue_with: None,
            image_detail: args.image_detail,
            allow_any_path: args.allow_any_path,
            resize: resizer(args.max_image_px, &runs_dir),
        })
    }
}

/// `--max-image-px`, with the scaled copies kept beside the runs in the cache folder (whether
/// or not answers are cached: `--no-cache` is about answers).
fn resizer(max_px: Option<u32>, runs_dir: &Path) -> Option<crate::engine::attach::Resizer> {
    max_px.map(|max_px| crate::engine::attach::Resizer {
        max_px,
        dir: Some(runs_dir.with_file_name("resized")),
    })
}

/// `--delimiter` and the input limits, defaults filled in.
fn read_options(args: &RunArgs) -> crate::engine::input::ReadOptions {
    let d = crate::engine::input::InputLimits::default();
    crate::engine::input::ReadOptions {
        limits: crate::engine::input::InputLimits {
            field: args.max_field_size.unwrap_or(d.field),
            row: args.max_row_size.unwrap_or(d.row),
            file: args.max_input_size.unwrap_or(d.file),
        },
        delimiter: args.delimiter.map(|d| d.0),
    }
}

/// The wire format, and what it implies: Anthropic requires `max_tokens` (so a default is set
/// here, and the rate budget and `--max-cost` reserve what is really asked for) and takes
/// temperatures up to 1.
fn resolve_api(args: &mut RunArgs) -> Result<Api, Error> {
    let model = args.model.as_deref().unwrap_or(DEFAULT_MODEL);
    let api = Api::resolve(args.provider, args.api, model).map_err(Error::Usage)?;
    if api.is_anthropic() {
        args.max_tokens = args
            .max_tokens
            .or(Some(crate::engine::provider::anthropic::DEFAULT_MAX_TOKENS));
        if let Some(t) = args.temperature
            && t > 1.0
        {
            return Err(Error::Usage(format!(
                "--temperature {t} is out of range for Anthropic; use a value from 0 to 1"
            )));
        }
    }
    Ok(api)
}

/// The input and output, with their formats (flag, then extension, then the input's).
struct Paths {
    input: PathBuf,
    input_format: Format,
    output: PathBuf,
    output_format: Format,
}

impl Paths {
    fn of(args: &RunArgs) -> Result<Self, Error> {
        let input = args.input.clone();
        if input.as_os_str().is_empty() {
            return Err(Error::Usage("no input file given".into()));
        }
        let input_format = args
            .input_format
            .or_else(|| Format::from_extension(&input))
            .unwrap_or_default();
        let output = match &args.output {
            Some(p) => p.clone(),
            // Read from a pipe, write to one.
            None if is_std(&input) || crate::engine::stdio::is_stream(&input) => PathBuf::from("-"),
            None => default_output(&input, input_format),
        };
        let output_format = args
            .output_format
            .or_else(|| Format::from_extension(&output))
            .unwrap_or(input_format);
        Ok(Paths {
            input,
            input_format,
            output,
            output_format,
        })
    }
}

/// The user prompt (a template, or the `prompt` column) and the system prompt, files read.
fn prompts_of(args: &RunArgs) -> Result<(PromptSource, Option<String>), Error> {
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(t), _) => PromptSource::Template(t.clone()),
        (None, Some(path)) => PromptSource::Template(read_text(path, "--prompt-file")?),
        (None, None) => PromptSource::PromptColumn,
    };
    let system = match (&args.system, &args.system_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => Some(read_text(path, "--system-file")?),
        (None, None) => None,
    };
    Ok((prompt, system))
}

/// The numeric flags, checked: each out-of-range value is refused with the flag's name.
struct Limits {
    concurrency: Concurrency,
    timeout: Duration,
    grace: Duration,
    max_stall: Duration,
}

impl Limits {
    fn of(args: &RunArgs) -> Result<Self, Error> {
        if let Some(t) = args.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(Error::Usage(format!(
                "--temperature {t} is out of range; use a value from 0 to 2"
            )));
        }
        for (name, v) in [("--rpm", args.rpm), ("--tpm", args.tpm)] {
            if v == Some(0) {
                return Err(Error::Usage(format!(
                    "{name} 0 would never send anything; leave it out for no limit"
                )));
            }
        }
        if args.max_tokens == Some(0) {
            return Err(Error::Usage("--max-tokens must be at least 1".into()));
        }
        let timeout = args.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(Error::Usage(format!(
                "--timeout {timeout} must be a positive number of seconds"
            )));
        }
        let grace = args.grace.unwrap_or(DEFAULT_GRACE_SECS);
        if !(grace.is_finite() && grace >= 0.0) {
            return Err(Error::Usage(format!(
                "--grace {grace} must be a number of seconds, 0 or more"
            )));
        }
        let max_stall = args.max_stall.unwrap_or(DEFAULT_MAX_STALL_SECS);
        if !(max_stall.is_finite() && max_stall > 0.0) {
            return Err(Error::Usage(format!(
                "--max-stall {max_stall} must be a positive number of seconds"
            )));
        }
        Ok(Limits {
            max_stall: Duration::from_secs_f64(max_stall),
            concurrency: args
                .concurrency
                .as_ref()
                .and_then(|l| l.0.first().copied())
                .unwrap_or(DEFAULT_CONCURRENCY),
            timeout: Duration::from_secs_f64(timeout),
            grace: Duration::from_secs_f64(grace),
        })
    }
}

/// The price table (embedded, then `--price-file`), and the checks `--max-cost` needs: a
/// completion cap, and a price for the model, or no cap could be guaranteed.
fn prices_for(args: &RunArgs, model: &str) -> Result<PriceTable, Error> {
    let mut prices = PriceTable::embedded();
    if let Some(path) = &args.price_file {
        prices.merge_file(path)?;
    }
    if let Some(cap) = args.max_cost {
        if !(cap.is_finite() && cap > 0.0) {
            return Err(Error::Usage(format!(
                "--max-cost {cap} must be a positive amount of USD"
            )));
        }
        if args.max_tokens.is_none() {
            return Err(Error::Usage(
                "--max-cost needs --max-tokens: without a completion cap a request's worst case \
                 has no bound, so no cap could be guaranteed"
                    .into(),
            ));
        }
        if prices.lookup(model).is_none() {
            return Err(Error::Usage(format!(
                "--max-cost needs a price for model {model:?}, and none is known; add it with \
                 --price-file"
            )));
        }
    }
    Ok(prices)
}

fn resume_of(resume: bool, restart: bool, retry_failed: bool, force: bool) -> Resume {
    if resume {
        Resume::Yes {
            retry_failed,
            force,
        }
    } else if restart {
        Resume::Restart
    } else {
        Resume::No
    }
}

/// `--expect` and `--schema`, with the flags that only make sense beside them.
type Checks = (Option<Expectation>, Option<Arc<OutputSchema>>);

fn checks_of(args: &RunArgs, api: Api) -> Result<Checks, Error> {
    if (args.ignore_case || args.ignore_whitespace || args.match_mode.is_some())
        && args.expect.is_none()
    {
        return Err(Error::Usage(
            "--match, --ignore-case and --ignore-whitespace apply to --expect COLUMN, which is \
             not given"
                .into(),
        ));
    }
    let expect = args.expect.clone().map(|column| Expectation {
        column,
        mode: args.match_mode.unwrap_or_default(),
        ignore_case: args.ignore_case,
        ignore_whitespace: args.ignore_whitespace,
    });
    if args.no_strict && args.schema.is_none() {
        return Err(Error::Usage(
            "--no-strict applies to --schema, which is not given".into(),
        ));
    }
    // Strict mode is OpenAI's; Anthropic takes the schema as a tool's input schema.
    let strict = !args.no_strict && !api.is_anthropic();
    let schema = args
        .schema
        .as_deref()
        .map(|p| OutputSchema::load(p, strict).map(Arc::new))
        .transpose()?;
    Ok((expect, schema))
}

/// Where requests go: the embedded mock (`--mock`), or a server with its base URL and key. A
/// server that is not on this machine needs a key, unless nothing will be sent.
fn endpoint_of(
    args: &RunArgs,
    api: Api,
    env_base_url: Option<String>,
    env_api_key: Option<ApiKey>,
) -> Result<Endpoint, Error> {
    if let Some(list) = &args.mock {
        let mock = MockArgs::from_option_list(list)
            .map_err(|e| Error::Usage(format!("in --mock options: {e}")))?;
        return Ok(Endpoint::Mock(mock.into()));
    }
    let base_url = args
        .base_url
        .clone()
        .or(env_base_url)
        .unwrap_or_else(|| api.default_base_url().to_string());
    let url = reqwest::Url::parse(&base_url).map_err(|e| {
        Error::Usage(format!(
            "--base-url {base_url:?} is not a URL ({e}); it looks like {}",
            api.default_base_url()
        ))
    })?;
    let api_key = match &args.api_key_file {
        Some(path) => ApiKey::from_file(path)?,
        None => env_api_key,
    };
    if api_key.is_none() && !is_loopback(&url) && !args.dry_run {
        if let Some(path) = &args.api_key_file {
            return Err(Error::Usage(format!(
                "{} (given to --api-key-file) is empty: put the API key in it (one line), or \
                 leave the flag out to use {}",
                path.display(),
                api.key_env()
            )));
        }
        return Err(Error::Usage(format!(
            "no API key for {base_url}: set {} (or pass --api-key-file FILE). To try batch \
             without a key, add --mock to use the embedded mock server.",
            api.key_env()
        )));
    }
    Ok(Endpoint::Remote { base_url, api_key })
}

/// A flag of `batch run` that names one run's files, chooses how it resumes, or keeps it from
/// being sent. `bench` and `watch` make runs of their own and decide those per run, so they
/// refuse these flags with [`refuse_flags`] (and `cli` hides them from their help).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOnlyFlag {
    Output,
    State,
    Resume,
    Restart,
    SummaryJson,
    DryRun,
    Via,
    BatchMaxRequests,
    BatchMaxBytes,
}

impl RunOnlyFlag {
    /// The flags about one run's files and how it resumes, refused by `bench` (which honours
    /// `--dry-run`). `--retry-failed` and `--force` need `--resume`, so clap refuses them with it.
    pub const ONE_RUN: &[RunOnlyFlag] = &[
        RunOnlyFlag::Output,
        RunOnlyFlag::State,
        RunOnlyFlag::Resume,
        RunOnlyFlag::Restart,
        RunOnlyFlag::SummaryJson,
    ];

    /// Those and the Batch API's flags, refused by `bench`, which measures requests sent now.
    pub const LIVE_SWEEP: &[RunOnlyFlag] = &[
        RunOnlyFlag::Output,
        RunOnlyFlag::State,
        RunOnlyFlag::Resume,
        RunOnlyFlag::Restart,
        RunOnlyFlag::SummaryJson,
        RunOnlyFlag::Via,
        RunOnlyFlag::BatchMaxRequests,
        RunOnlyFlag::BatchMaxBytes,
    ];

    /// Those and `--dry-run`, refused by `watch`.
    pub const ALL: &[RunOnlyFlag] = &[
        RunOnlyFlag::Output,
        RunOnlyFlag::State,
        RunOnlyFlag::Resume,
        RunOnlyFlag::Restart,
        RunOnlyFlag::SummaryJson,
        RunOnlyFlag::DryRun,
    ];

    /// As the user types it.
    pub fn spelling(self) -> &'static str {
        match self {
            RunOnlyFlag::Output => "-o/--output",
            RunOnlyFlag::State => "--state",
            RunOnlyFlag::Resume => "--resume",
            RunOnlyFlag::Restart => "--restart",
            RunOnlyFlag::SummaryJson => "--summary-json",
            RunOnlyFlag::DryRun => "--dry-run",
            RunOnlyFlag::Via => "--via",
            RunOnlyFlag::BatchMaxRequests => "--batch-max-requests",
            RunOnlyFlag::BatchMaxBytes => "--batch-max-bytes",
        }
    }

    fn is_given(self, a: &RunArgs) -> bool {
        match self {
            RunOnlyFlag::Output => a.output.is_some(),
            RunOnlyFlag::State => a.state.is_some(),
            RunOnlyFlag::Resume => a.resume,
            RunOnlyFlag::Restart => a.restart,
            RunOnlyFlag::SummaryJson => a.summary_json.is_some(),
            RunOnlyFlag::DryRun => a.dry_run,
            RunOnlyFlag::Via => a.via.is_some(),
            RunOnlyFlag::BatchMaxRequests => a.batch_max_requests.is_some(),
            RunOnlyFlag::BatchMaxBytes => a.batch_max_bytes.is_some(),
        }
    }
}

/// Refuses the first of `flags` that `args` gives, as a usage error: it is for `batch run`, and
/// `instead` tells what the command does in its place.
pub fn refuse_flags(args: &RunArgs, flags: &[RunOnlyFlag], instead: &str) -> Result<(), Error> {
    match flags.iter().find(|f| f.is_given(args)) {
        Some(flag) => Err(Error::Usage(format!(
            "{} is for `batch run`; {instead}",
            flag.spelling()
        ))),
        None => Ok(()),
    }
}

/// The wire format the (merged) flags ask for, defaulting where they conflict; `from_merged`
/// reports the conflict.
fn api_of(args: &RunArgs) -> Api {
    Api::resolve(
        args.provider,
        args.api,
        args.model.as_deref().unwrap_or(DEFAULT_MODEL),
    )
    .unwrap_or(Api::OpenAiChat)
}

/// The files a run reads (`what` they are, and where).
pub fn input_paths(args: &RunArgs) -> Vec<(&'static str, Option<PathBuf>)> {
    let settings = args
        .config
        .clone()
        .or_else(|| Some(PathBuf::from(SETTINGS_FILE)).filter(|p| p.exists()));
    vec![
        ("the input file", Some(args.input.clone())),
        ("the --prompt-file", args.prompt_file.clone()),
        ("the --system-file", args.system_file.clone()),
        ("the --schema file", args.schema.clone()),
        ("the --price-file", args.price_file.clone()),
        ("the --api-key-file", args.api_key_file.clone()),
        ("the settings file", settings),
    ]
}

/// No file the run writes (results, state, log, summary) is one it reads, or another it
/// writes ([`PathCheck`]).
fn check_paths(args: &RunArgs, paths: &Paths) -> Result<(), Error> {
    let state = args.state.clone().or_else(|| {
        (!is_std(&paths.output)).then(|| crate::engine::store::default_path(&paths.output))
    });
    let mut check = PathCheck::default();
    for (what, path) in input_paths(args) {
        check = check.input(what, path.as_deref());
    }
    check
        .output("-o", Some(&paths.output))
        .output("--state", state.as_deref())
        .output("--log", args.log.as_deref())
        .output("--summary-json", args.summary_json.as_deref())
        .check()
}

fn read_text(path: &Path, flag: &str) -> Result<String, Error> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::Input(format!(
            "cannot read {} (given to {flag}): {}",
            path.display(),
            describe_io(&e)
        ))
    })?;
    String::from_utf8(bytes).map_err(|e| {
        Error::Input(format!(
            "{} (given to {flag}) is not valid UTF-8 near byte {}; save it as UTF-8",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

fn load_settings(explicit: Option<&Path>) -> Result<Option<RunArgs>, Error> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let p = PathBuf::from(SETTINGS_FILE);
            if !p.exists() {
                return Ok(None);
            }
            p
        }
    };
    let text = read_text(&path, "--config")?;
    toml::from_str::<RunArgs>(&text)
        .map(Some)
        .map_err(|e| Error::Usage(format!("in settings file {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(input: &str) -> RunArgs {
        RunArgs {
            input: input.into(),
            ..Default::default()
        }
    }

    #[test]
    fn default_output_sits_beside_input() {
        assert_eq!(
            default_output(Path::new("data/reviews.csv"), Format::Csv),
            PathBuf::from("data/reviews.results.csv")
        );
    }

    #[test]
    fn formats_follow_flags_then_extensions_then_the_input() {
        let cfg = |a: RunArgs| RunConfig::from_merged(a, None, None).unwrap();
        let mut a = args("in.jsonl");
        a.mock = Some(String::new());
        let c = cfg(a);
        assert_eq!(
            (c.input_format, c.output_format),
            (Format::Jsonl, Format::Jsonl)
        );
        assert_eq!(c.output, PathBuf::from("in.results.jsonl"));

        let mut a = args("in.jsonl");
        a.mock = Some(String::new());
        a.output = Some("out.csv".into());
        assert_eq!(cfg(a).output_format, Format::Csv);

        let mut a = args("in.txt");
        a.mock = Some(String::new());
        a.input_format = Some(Format::Jsonl);
        a.output = Some("out.data".into());
        let c = cfg(a);
        assert_eq!(
            (c.input_format, c.output_format),
            (Format::Jsonl, Format::Jsonl)
        );
    }

    #[test]
    fn output_that_is_the_input_spelt_differently_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.csv");
        std::fs::write(&input, "a\n1\n").unwrap();
        let other = dir.path().join(".").join("in.csv");
        let mut a = args(input.to_str().unwrap());
        a.output = Some(other);
        a.mock = Some(String::new());
        let msg = RunConfig::from_merged(a, None, None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("is the input file"), "{msg}");
    }

    #[test]
    fn missing_key_mentions_mock() {
        let err = RunConfig::from_merged(args("in.csv"), None, None).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("OPENAI_API_KEY") && msg.contains("--mock"),
            "{msg}"
        );
    }

    #[test]
    fn loopback_server_needs_no_key() {
        let mut a = args("in.csv");
        a.base_url = Some("http://127.0.0.1:8080/v1".into());
        let cfg = RunConfig::from_merged(a, None, None).unwrap();
        assert!(matches!(
            cfg.endpoint,
            Endpoint::Remote { api_key: None, .. }
        ));
    }

    #[test]
    fn key_is_redacted_in_debug() {
        let cfg = RunConfig::from_merged(
            args("in.csv"),
            None,
            Some(ApiKey::new("sk-secret-123".into())),
        )
        .unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("sk-secret-123"), "{dbg}");
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let mut cli = args("in.csv");
        cli.concurrency = Some(ConcurrencyList(vec![Concurrency::Fixed(3)]));
        let mut file: RunArgs =
            toml::from_str("concurrency = 9\nmodel = \"gpt-4o\"\nmock = \"\"").unwrap();
        fill_from_file!(cli, file; concurrency, model, mock);
        let cfg = RunConfig::from_merged(cli, None, None).unwrap();
        assert_eq!(cfg.concurrency, Concurrency::Fixed(3));
        assert_eq!(cfg.model, "gpt-4o");
        assert!(matches!(cfg.endpoint, Endpoint::Mock(_)));
    }

    #[test]
    fn unknown_settings_key_is_named() {
        let err = toml::from_str::<RunArgs>("concurency = 9").unwrap_err();
        assert!(err.to_string().contains("concurency"), "{err}");
    }

    #[test]
    fn bad_values_name_the_flag() {
        let mut a = args("in.csv");
        a.temperature = Some(3.0);
        a.mock = Some(String::new());
        let msg = RunConfig::from_merged(a, None, None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("--temperature"), "{msg}");
        let err = toml::from_str::<RunArgs>("concurrency = 0").unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
    }
}

//! The settings of a run, resolved: what the runner, the Batch API path, `bench` and `watch`
//! are given. They are built from flags, `batch.toml` and the environment by
//! `commands::config`; nothing here reads a flag.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::base::format::Format;
use crate::base::printer::Printer;
use crate::engine::concurrency::Concurrency;
use crate::engine::expect::Expectation;
use crate::engine::lock::StateLock;
use crate::engine::pricing::PriceTable;
use crate::engine::provider::{Api, ExtraHeaders};
use crate::engine::retry::RetryPolicy;
use crate::engine::schema::OutputSchema;
use crate::engine::store::RunSettings;
use crate::engine::template::PromptSource;
pub use crate::run::connection::Endpoint;
use std::sync::Arc;

pub const DEFAULT_MODEL: &str = "gpt-4.1-mini";

#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The input file; for `-`, the copy of stdin (see [`crate::engine::stdio`]).
    pub input: PathBuf,
    /// `input` is a copy of stdin, removed when the run completes.
    pub spooled_stdin: bool,
    /// The job's lock, when it was taken to copy stdin (see [`RunConfig::lock`]).
    pub stdin_lock: Option<std::sync::Arc<StateLock>>,
    pub output: PathBuf,
    pub input_format: Format,
    pub output_format: Format,
    pub prompt: PromptSource,
    pub system: Option<String>,
    pub id_column: Option<String>,
    pub model: String,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub prices: PriceTable,
    pub concurrency: Concurrency,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub retry: RetryPolicy,
    pub timeout: Duration,
    pub endpoint: Endpoint,
    /// The wire format requests use.
    pub api: Api,
    /// `--header`s sent with every request.
    pub headers: ExtraHeaders,
    pub summary_json: Option<PathBuf>,
    pub quiet: bool,
    pub state: PathBuf,
    pub resume: Resume,
    pub grace: Duration,
    pub max_cost: Option<f64>,
    pub dry_run: bool,
    pub log: Option<PathBuf>,
    pub sanitize: bool,
    pub cache: CacheMode,
    /// Send each distinct request once per run and share its answer.
    pub dedup: bool,
    /// `--schema`, loaded and compiled.
    pub schema: Option<Arc<OutputSchema>>,
    /// Resends of an answer that does not fit the schema.
    pub schema_retries: u32,
    /// `--expect` and its options.
    pub expect: Option<Expectation>,
    /// `--via batch` and the per-batch limits.
    pub batch: BatchSettings,
    /// The input's limits and a forced `--delimiter`.
    pub read: crate::engine::input::ReadOptions,
    /// How the run was started, to print the command that continues it (`batch run` only).
    pub continue_with: Option<ContinueCommand>,
    /// `--image-detail`, on the images a prompt attaches.
    pub image_detail: Option<crate::engine::attach::Detail>,
    /// `--allow-any-path`: attachments may come from outside the input file's folder.
    pub allow_any_path: bool,
    /// `--max-image-px`, and where the scaled copies are kept (`<cache dir>/resized`, with or
    /// without `--no-cache`, which is about answers).
    pub resize: Option<crate::engine::attach::Resizer>,
}

/// The command line of a `batch run`, from which the summary prints the exact command that
/// continues it: the same arguments with `--resume` (and `--retry-failed` when rows failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContinueCommand {
    /// The program as invoked, then its arguments.
    pub args: Vec<String>,
}

impl ContinueCommand {
    /// Flags a continuing run must not repeat (`--restart` would discard what is recorded) or
    /// gets anew.
    const DROPPED: [&str; 4] = ["--resume", "--retry-failed", "--restart", "--dry-run"];

    /// The shell-quoted command that continues the run. `--header` values are never printed
    /// (they often carry a gateway's key): the command shows `NAME: <same as before>` there.
    pub fn command(&self, retry_failed: bool) -> String {
        let mut args: Vec<String> = Vec::with_capacity(self.args.len() + 2);
        let mut header_value_next = false;
        for a in self
            .args
            .iter()
            .filter(|a| !Self::DROPPED.contains(&a.as_str()))
        {
            if std::mem::take(&mut header_value_next) {
                args.push(hide_header_value(a));
            } else if let Some(value) = a.strip_prefix("--header=") {
                args.push(format!("--header={}", hide_header_value(value)));
            } else {
                header_value_next = a == "--header";
                args.push(a.clone());
            }
        }
        args.push("--resume".into());
        if retry_failed {
            args.push("--retry-failed".into());
        }
        args.iter()
            .map(|a| shlex::try_quote(a).map_or_else(|_| a.clone(), |q| q.into_owned()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `NAME: VALUE` as `NAME: <same as before>`.
fn hide_header_value(header: &str) -> String {
    let name = header.split_once(':').map_or(header, |(name, _)| name);
    format!("{}: <same as before>", name.trim())
}

impl RunConfig {
    /// The input, opened with the format, id column and read limits these settings give.
    pub fn open_input(&self) -> Result<crate::engine::input::InputFile, crate::base::error::Error> {
        crate::engine::input::InputFile::open_with(
            &self.input,
            self.input_format,
            self.id_column.as_deref(),
            self.read,
        )
    }

    /// The job's lock on `state`: the one taken when stdin was copied, or a new one. Held until
    /// dropped; a second process on the job is refused.
    pub fn lock(&self, state: &Path) -> Result<Option<Arc<StateLock>>, crate::base::error::Error> {
        match &self.stdin_lock {
            Some(held) if held.is_for(state) => Ok(Some(held.clone())),
            _ => Ok(StateLock::acquire(state)?.map(Arc::new)),
        }
    }

    /// Where and how the prompt's attachments are read: paths relative to the input file's
    /// folder (the working directory for stdin), checked against the API's limits.
    pub fn attach_loader(&self) -> crate::engine::attach::Loader {
        use crate::engine::attach::Limits;
        let base = match self.spooled_stdin {
            true => std::path::PathBuf::from("."),
            false => self
                .input
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default(),
        };
        crate::engine::attach::Loader {
            base,
            limits: match self.api {
                Api::AnthropicMessages => Limits::anthropic(),
                Api::OpenAiChat => Limits::openai(true),
                Api::OpenAiResponses => Limits::openai(false),
            },
            detail: self.image_detail,
            any_path: self.allow_any_path,
            resize: self.resize.clone(),
        }
    }

    /// What this run may print, and where.
    pub fn printer(&self) -> Printer {
        Printer::new(self.quiet)
    }

    /// The settings that shape this run's requests, as its journal records them for `input`
    /// (the runner's canonical input path): a resumed run must have the same ones, and `batch
    /// watch` fingerprints a file under them. Pacing (concurrency, rate limits, retries) is left
    /// out, as it changes when and how often a request is sent, not what it asks.
    pub fn request_settings(&self, input: &str) -> RunSettings {
        let endpoint = self.endpoint.name();
        RunSettings {
            input: input.to_string(),
            // A run resumed against another API would mix answers to different requests.
            endpoint: match self.api {
                Api::OpenAiChat => endpoint.to_string(),
                api => format!("{endpoint} ({})", api.label()),
            },
            model: self.model.clone(),
            prompt: match &self.prompt {
                PromptSource::Template(t) => t.clone(),
                PromptSource::PromptColumn => "<column prompt>".into(),
            },
            system: self.system.clone(),
            max_tokens: self.max_tokens,
            temperature: self.temperature,
        }
    }
}

/// How `--via batch` and `batch submit` cut the job into batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchSettings {
    pub via_batch: bool,
    /// Requests and bytes per batch at most (`None`: the provider's limit).
    pub max_requests: Option<u64>,
    pub max_bytes: Option<u64>,
}

/// Whether and how the response cache is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheMode {
    Off,
    On {
        dir: PathBuf,
        /// Do not read hits; still store answers.
        refresh: bool,
        /// Store answers cut off by the token cap too.
        truncated: bool,
    },
}

/// What to do with a run already recorded in the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Start a new run; refuse if an unfinished one is recorded.
    No,
    /// Start a new run, discarding whatever is recorded.
    Restart,
    /// Continue the recorded run.
    Yes { retry_failed: bool, force: bool },
}

/// `reviews.csv` -> `reviews.results.csv`, beside the input; `reviews.jsonl` ->
/// `reviews.results.jsonl`.
pub fn default_output(input: &Path, format: Format) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into());
    input.with_file_name(format!("{stem}.results.{}", format.extension()))
}

#[cfg(test)]
mod continue_tests {
    use super::ContinueCommand;

    #[test]
    fn the_continue_command_is_the_same_run_with_resume() {
        let args = [
            "batch",
            "run",
            "my file.csv",
            "--restart",
            "-j",
            "8",
            "--resume",
        ];
        let c = ContinueCommand {
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        assert_eq!(
            c.command(true),
            "batch run 'my file.csv' -j 8 --resume --retry-failed"
        );
        assert_eq!(c.command(false), "batch run 'my file.csv' -j 8 --resume");
    }

    #[test]
    fn header_values_are_not_repeated() {
        let args = [
            "batch",
            "run",
            "in.csv",
            "--header",
            "X-Key: s3cret",
            "--header=Y: s3cret",
        ];
        let c = ContinueCommand {
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        let command = c.command(false);
        assert!(!command.contains("s3cret"), "{command}");
        assert_eq!(
            command,
            "batch run in.csv --header 'X-Key: <same as before>' \
             '--header=Y: <same as before>' --resume"
        );
    }
}

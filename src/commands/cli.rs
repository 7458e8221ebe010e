//! Command-line definitions (clap derive). No I/O happens here: [`crate::run::settings`] turns these
//! literal flags into resolved settings, merging them with `batch.toml` and the environment.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "batch",
    version,
    about = "Run a prompt over every row of a CSV through an LLM API.",
    long_about = "Run a prompt over every row of a CSV through an LLM API (OpenAI-compatible chat \
completions), with bounded concurrency, rate limits, retries and per-request timeouts, and write \
every answer with its tokens and cost to a results CSV.\n\n\
Try it without an API key on the embedded mock server:\n  \
batch run samples/reviews.csv --prompt-file samples/classify.txt --mock",
    after_help = "Exit codes: 0 every row ok; 1 the run finished but some rows failed or were \
skipped; 2 usage, configuration or input error (nothing sent, no results written); 130 \
interrupted."
)]
pub struct Cli {
    /// More diagnostics on stderr (-v, -vv, -vvv); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a prompt over every row of a CSV and write a results CSV.
    #[command(
        after_help = "The summary lists failed and skipped rows by reason, each with \
its first row, and ends with the exact command that continues the run (--resume, \
--retry-failed). Rates (rows/s, in the summary and the progress line) count only the rows this \
run sent and finished: not answers from the cache, not rows an earlier part of a resumed run \
finished, not rows skipped."
    )]
    Run(Box<RunArgs>),
    /// Run the OpenAI-compatible mock server on 127.0.0.1 and print its base URL.
    Mock(MockArgs),
    /// Measure throughput, latency, 429s and cost at several --concurrency settings on a sample
    /// of the input, and recommend one.
    Bench(Box<BenchArgs>),
    /// Watch a folder and run every CSV that lands in it once: results to DIR/done, the input
    /// to DIR/processed (or DIR/failed with an error file).
    Watch(Box<WatchArgs>),
    /// See or empty the response cache.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
        /// Folder of the cache [env: BATCH_CACHE_DIR; default: $XDG_CACHE_HOME/batch or
        /// ~/.cache/batch].
        #[arg(long, value_name = "DIR", global = true)]
        cache_dir: Option<PathBuf>,
    },
    /// Hand the rows to the provider's Batch API (half price, answers within 24 h) and save a
    /// state file that `status`, `collect` and `cancel` carry on from.
    Submit(Box<SubmitArgs>),
    /// Look into a run (live, killed or finished: rows done, failed and pending, cost, rate, ETA,
    /// errors, whether a process holds it), or show each batch of a submitted job.
    Status(StatusArgs),
    /// Wait for (with --wait) and download a submitted job's answers, and write the results CSV.
    Collect(Box<CollectArgs>),
    /// Cancel the batches of a submitted job.
    Cancel(BatchStateArgs),
    /// Write the results so far of a run (live, killed or finished): finished rows with their
    /// answers, the rest `pending`. The run is not disturbed.
    Export(ExportArgs),
    /// Embed one column of every row (OpenAI /v1/embeddings and compatible servers), many rows
    /// per request, and write the vectors as Parquet (the default), JSON Lines, .npy or CSV.
    Embed(Box<EmbedArgs>),
    /// Print shell completions for SHELL to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Flags of `batch run`. Every field except the input, output and config paths can also be set in
/// `batch.toml` under the same name (kebab-case); a flag given on the command line wins.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunArgs {
    /// Input CSV with a header row, JSON Lines (.jsonl, .ndjson) or Parquet (.parquet, .pq), or
    /// `-` for stdin. Each row becomes one request.
    #[arg(value_name = "INPUT")]
    #[serde(skip)]
    pub input: PathBuf,

    /// Results file, CSV, JSON Lines or Parquet by extension, or `-` for stdout [default: <input
    /// stem>.results.csv (or .jsonl / .parquet for such an input) beside the input; stdout for
    /// stdin].
    #[arg(short, long, value_name = "PATH")]
    #[serde(skip)]
    pub output: Option<PathBuf>,

    /// Format of the input: csv, jsonl (one JSON object per line) or parquet [default: from the
    /// extension, .jsonl and .ndjson are JSON Lines, .parquet is Parquet; csv for stdin].
    #[arg(long, value_enum, value_name = "FORMAT")]
    #[serde(skip)]
    pub input_format: Option<crate::base::format::Format>,

    /// Format of the results: csv, jsonl or parquet [default: from the -o extension; without -o,
    /// or with `-o -` (stdout), the input's format].
    #[arg(long, value_enum, value_name = "FORMAT")]
    #[serde(skip)]
    pub output_format: Option<crate::base::format::Format>,

    /// Settings file [default: ./batch.toml if it exists].
    #[arg(long, value_name = "PATH")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    // ---- Prompt ----
    /// Prompt template over the input's columns, e.g. 'Classify: {{review}}' (minijinja syntax;
    /// a column whose name is not an identifier is `row["my column"]`). With neither --prompt nor
    /// --prompt-file, a column named `prompt` is sent as it is.
    #[arg(long, value_name = "TEMPLATE", help_heading = "Prompt")]
    pub prompt: Option<String>,

    /// Read the prompt template from FILE.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "prompt",
        help_heading = "Prompt"
    )]
    pub prompt_file: Option<PathBuf>,

    /// System message (a template too).
    #[arg(long, value_name = "TEMPLATE", help_heading = "Prompt")]
    pub system: Option<String>,

    /// Read the system message from FILE.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "system",
        help_heading = "Prompt"
    )]
    pub system_file: Option<PathBuf>,

    /// Column that identifies a row in the results [default: `id` if there is one, else the row
    /// number].
    #[arg(long, value_name = "COLUMN", help_heading = "Prompt")]
    pub id_column: Option<String>,

    // ---- Model ----
    /// Model name, sent as is and used to look up the price [default: gpt-4.1-mini].
    #[arg(short, long, help_heading = "Model")]
    pub model: Option<String>,

    /// Completion token cap per request (sent as max_completion_tokens to OpenAI, max_tokens to
    /// other servers).
    #[arg(long, value_name = "N", help_heading = "Model")]
    pub max_tokens: Option<u32>,

    /// Sampling temperature (0 to 2).
    #[arg(long, value_name = "T", help_heading = "Model")]
    pub temperature: Option<f32>,

    // ---- Batch API ----
    /// `api` sends every request now; `batch` hands them to the provider's Batch API (half the
    /// price, answers within 24 h) and waits for the answers: `batch submit` plus `batch
    /// collect --wait` in one command [default: api].
    #[arg(long, value_enum, value_name = "HOW", help_heading = "Batch API")]
    pub via: Option<Via>,

    /// Requests in one batch at most; more rows are split into several batches [default: the
    /// provider's limit: 50,000 for OpenAI, 100,000 for Anthropic].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Batch API")]
    pub batch_max_requests: Option<u64>,

    /// Bytes of batch input in one batch at most [default: the provider's limit, 200 MB for
    /// OpenAI, 256 MB for Anthropic].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Batch API")]
    pub batch_max_bytes: Option<u64>,

    /// JSON file of prices that add to or override the embedded table: {"model": {"input": 0.4,
    /// "cached_input": 0.1, "output": 1.6}} in USD per 1M tokens.
    #[arg(long, value_name = "FILE", help_heading = "Model")]
    pub price_file: Option<PathBuf>,

    // ---- Pacing ----
    /// Requests in flight at most, or `auto` to adapt it to the server: grow while latency
    /// stays flat, shrink when it climbs or on 429s and timeouts [default: 16]. `batch bench`
    /// takes a list: 1,2,4,8.
    #[arg(short = 'j', long, value_name = "N|auto", help_heading = "Pacing")]
    pub concurrency: Option<crate::engine::concurrency::ConcurrencyList>,

    /// Requests per minute at most. Without it, the limit is learned from the server's
    /// x-ratelimit-* (or anthropic-ratelimit-*) headers.
    #[arg(long, value_name = "N", help_heading = "Pacing", allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rpm: Option<u32>,

    /// Tokens per minute at most: prompt tokens (counted before sending) plus the completion
    /// reservation (--max-tokens, else learned from answers), reconciled with the real usage.
    /// Without it, learned from the server's headers like --rpm.
    #[arg(long, value_name = "N", help_heading = "Pacing", allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub tpm: Option<u32>,

    /// Retries per row after the first attempt [default: 6]. Retried: connection errors,
    /// timeouts, 408, 409 and 5xx, after exponential backoff with full jitter (0.5 s doubling to
    /// 30 s; 1 s doubling to 60 s for a 503/529 without a hint) or the server's retry-after.
    /// 429 rate limits are retried too but do not count here (see --max-stall). Not retried:
    /// other 4xx, and 429 insufficient_quota, which stops the run. A server's x-should-retry
    /// header wins.
    #[arg(long, value_name = "N", help_heading = "Pacing")]
    pub max_retries: Option<u32>,

    /// Seconds the run may go without a single answer while the server refuses requests with
    /// rate limits (429) before it stops (rows skipped, for --resume) [default: 600]. Rate-limited
    /// retries do not count against --max-retries: while answers still arrive, a throttled row
    /// waits its turn.
    #[arg(long, value_name = "SECS", help_heading = "Pacing")]
    pub max_stall: Option<f64>,

    /// Seconds one attempt may take, response body included, before it is cut off and retried
    /// [default: 120].
    #[arg(long, value_name = "SECS", help_heading = "Pacing")]
    pub timeout: Option<f64>,

    // ---- Endpoint ----
    /// Who serves the model: openai (OpenAI and every OpenAI-compatible server: vLLM, Ollama,
    /// LiteLLM, OpenRouter) or anthropic (native Messages API) [default: anthropic for models
    /// named claude-*, else openai].
    #[arg(long, value_enum, value_name = "NAME", help_heading = "Endpoint")]
    pub provider: Option<crate::engine::provider::ProviderName>,

    /// OpenAI's API to use: chat (Chat Completions) or responses (the Responses API)
    /// [default: chat]. OpenAI only.
    #[arg(long, value_enum, value_name = "API", help_heading = "Endpoint")]
    pub api: Option<crate::engine::provider::ApiName>,

    /// Base URL of the API [env: OPENAI_BASE_URL, or ANTHROPIC_BASE_URL for anthropic; default:
    /// `https://api.openai.com/v1`, `https://api.anthropic.com`]. The key comes from
    /// OPENAI_API_KEY (ANTHROPIC_API_KEY for anthropic) or --api-key-file.
    #[arg(long, value_name = "URL", help_heading = "Endpoint")]
    pub base_url: Option<String>,

    /// Read the API key from FILE instead of OPENAI_API_KEY / ANTHROPIC_API_KEY.
    #[arg(long, value_name = "FILE", help_heading = "Endpoint")]
    pub api_key_file: Option<PathBuf>,

    /// Extra request header, repeatable: `--header 'HTTP-Referer: https://example.com'`. For
    /// gateways and routers that want their own headers; it replaces a header batch would send
    /// (e.g. anthropic-version). Values are never printed or logged. In batch.toml: header =
    /// ["Name: value"].
    #[arg(
        long = "header",
        value_name = "'NAME: VALUE'",
        help_heading = "Endpoint"
    )]
    pub header: Vec<String>,

    /// Send the run to an embedded mock server on 127.0.0.1 instead (no key needed). Takes the
    /// `batch mock` options as a list: --mock=latency-ms=100,error-rate=0.05
    #[arg(
        long,
        value_name = "OPTIONS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "",
        help_heading = "Endpoint"
    )]
    #[serde(deserialize_with = "mock_setting")]
    pub mock: Option<String>,

    // ---- Durability ----
    /// Continue the run recorded in the state file: rows already finished are not sent again
    /// (unless their request changed); failed rows only with --retry-failed.
    #[arg(long, help_heading = "Durability")]
    #[serde(skip)]
    pub resume: bool,

    /// With --resume: send the rows that failed last time again.
    #[arg(long, requires = "resume", help_heading = "Durability")]
    #[serde(skip)]
    pub retry_failed: bool,

    /// With --resume: continue even though settings that shape requests changed (rows whose
    /// request changed are sent again).
    #[arg(long, requires = "resume", help_heading = "Durability")]
    #[serde(skip)]
    pub force: bool,

    /// Discard an unfinished run recorded in the state file and start over.
    #[arg(long, conflicts_with = "resume", help_heading = "Durability")]
    #[serde(skip)]
    pub restart: bool,

    /// The run's state file (SQLite) [default: the results path with extension .sqlite].
    #[arg(long, value_name = "PATH", help_heading = "Durability")]
    #[serde(skip)]
    pub state: Option<PathBuf>,

    /// Seconds that requests in flight may still take after Ctrl-C or SIGTERM [default: 30].
    #[arg(long, value_name = "SECS", help_heading = "Durability")]
    pub grace: Option<f64>,

    /// Stop sending before the run's total cost could exceed USD. Each request reserves its
    /// worst case (prompt plus --max-tokens at the model's price) before it is sent; needs
    /// --max-tokens and a known price.
    #[arg(long, value_name = "USD", help_heading = "Durability")]
    pub max_cost: Option<f64>,

    /// Read the input, render every prompt, count tokens and print the expected cost; send
    /// nothing and write nothing.
    #[arg(long, help_heading = "Durability")]
    #[serde(skip)]
    pub dry_run: bool,

    /// Append every attempt (time, row, request body, status, response body or error, rate-limit
    /// headers, latency) to FILE as JSON lines (`-` for stdout). The API key is never written.
    #[arg(long, value_name = "FILE", help_heading = "Durability")]
    pub log: Option<PathBuf>,

    // ---- Cache ----
    /// Neither read nor write the response cache.
    #[arg(long, help_heading = "Cache")]
    pub no_cache: bool,

    /// Ignore cached answers (send every request) but store the new ones.
    #[arg(long, conflicts_with = "no_cache", help_heading = "Cache")]
    pub refresh: bool,

    /// Folder of the response cache [env: BATCH_CACHE_DIR; default: $XDG_CACHE_HOME/batch or
    /// ~/.cache/batch].
    #[arg(long, value_name = "DIR", help_heading = "Cache")]
    pub cache_dir: Option<PathBuf>,

    /// Also cache answers cut off by the token cap (finish_reason "length").
    #[arg(long, help_heading = "Cache")]
    pub cache_truncated: bool,

    /// Send identical requests within the run separately (independent samples when
    /// --temperature > 0); by default each distinct request is sent once and its answer shared.
    #[arg(long, help_heading = "Cache")]
    pub no_dedup: bool,

    // ---- Structured output ----
    /// JSON Schema the answers must fit, sent the provider's way (OpenAI: json_schema format,
    /// strict; Anthropic: a forced tool).
    /// Each answer is validated; an invalid one is retried (--schema-retries), then the row
    /// fails with the validation error. Each top-level property becomes a column `out.<name>`.
    #[arg(long, value_name = "FILE", help_heading = "Structured output")]
    pub schema: Option<PathBuf>,

    /// Send the schema with strict: false. Strict mode needs "additionalProperties": false and
    /// every property in "required" on every object; a schema without them is refused unless
    /// this is given (answers are validated either way).
    #[arg(long, help_heading = "Structured output")]
    pub no_strict: bool,

    /// Answers that do not fit the schema are sent again up to N times (each is a billed
    /// attempt), apart from --max-retries [default: 2].
    #[arg(long, value_name = "N", help_heading = "Structured output")]
    pub schema_retries: Option<u32>,

    // ---- Verification ----
    /// Compare each answer with this input column (expected answers); adds `match` and
    /// `match_detail` columns and a pass rate to the summary. Rows with an empty expected cell
    /// are not compared.
    #[arg(long, value_name = "COLUMN", help_heading = "Verification")]
    pub expect: Option<String>,

    /// How --expect compares [default: exact]: exact (whole answer), contains, regex (the
    /// expected cell is a pattern searched in the answer) or json (parsed values; with
    /// --schema, field by field, only the fields the expected object gives).
    #[arg(
        long = "match",
        value_name = "MODE",
        value_enum,
        help_heading = "Verification"
    )]
    #[serde(rename = "match")]
    pub match_mode: Option<crate::engine::expect::MatchMode>,

    /// --expect ignores letter case.
    #[arg(long, help_heading = "Verification")]
    pub ignore_case: bool,

    /// --expect treats runs of whitespace as one space and ignores leading and trailing
    /// whitespace.
    #[arg(long, help_heading = "Verification")]
    pub ignore_whitespace: bool,

    // ---- Output ----
    /// Write answers as they are, even those starting with =, +, -, @, tab or carriage return
    /// (by default such cells get a leading ' so spreadsheets do not run them as formulas).
    #[arg(long, help_heading = "Output")]
    pub no_sanitize: bool,

    /// Also write the run summary as JSON to PATH (`-` for stdout).
    #[arg(long, value_name = "PATH", help_heading = "Output")]
    pub summary_json: Option<PathBuf>,

    /// No progress bar and no summary on stderr. Errors, why a run stopped, the failures by
    /// reason and the command to continue are still printed.
    #[arg(short, long, help_heading = "Output")]
    #[serde(skip)]
    pub quiet: bool,

    // ---- Input ----
    /// The field separator of a CSV input: , ; | or \t (tab) [default: detected from the first
    /// lines: , ; tab or |; tab for .tsv].
    #[arg(short = 'd', long, value_name = "CHAR", help_heading = "Input")]
    pub delimiter: Option<crate::engine::input::delimiter::Delimiter>,

    /// The longest cell the input may hold, e.g. 10M [default: 10M; no model takes a prompt this
    /// long].
    #[arg(long, value_name = "SIZE", help_heading = "Input")]
    pub max_field_size: Option<crate::engine::input::ByteSize>,

    /// The longest row (and line) the input may hold [default: 32M, the largest request any API
    /// accepts].
    #[arg(long, value_name = "SIZE", help_heading = "Input")]
    pub max_row_size: Option<crate::engine::input::ByteSize>,

    /// The largest input, stdin and pipes included (they are copied to disk first) [default:
    /// 4G].
    #[arg(long, value_name = "SIZE", help_heading = "Input")]
    pub max_input_size: Option<crate::engine::input::ByteSize>,

    /// OpenAI's `detail` on the images a prompt attaches with `{{ image(column) }}`: low (one
    /// tile, cheapest), high or auto; tokens are estimated as high for auto [default: the
    /// API's, auto].
    #[arg(long, value_enum, value_name = "LEVEL", help_heading = "Model")]
    pub image_detail: Option<crate::engine::attach::Detail>,

    /// Let `{{ image(..) }}`/`{{ file(..) }}` read files outside the input file's folder
    /// (absolute paths, `..`, links out of it). Off by default so that a CSV from someone
    /// else cannot upload any image or PDF on this machine.
    #[arg(long, help_heading = "Input")]
    pub allow_any_path: bool,

    /// Scale down every picture a prompt attaches whose longer side is over PX pixels (aspect
    /// kept; PNG stays PNG, JPEG stays JPEG, GIF and WebP become PNG) before it is sent. Done
    /// once per picture and size: the copies are kept in the cache folder's `resized/`. URLs
    /// are not fetched, so not scaled.
    #[arg(long, value_name = "PX", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Model")]
    pub max_image_px: Option<u32>,
}

/// Flags of `batch bench`: every `batch run` flag that shapes requests, plus the sweep and its
/// reports. `--concurrency` takes a list here: `--concurrency 1,2,4,8,16,32,64,auto`; without it,
/// bench sweeps 1, 2, 4, ... up to what the sample can measure.
#[derive(Debug, Args)]
#[command(
    after_help = "Against a real API (not --mock, not a server on localhost) bench needs \
--max-cost USD (which needs --max-tokens) and prints the expected cost of the whole sweep first; \
--dry-run prints it without sending anything.",
    // Flags of `batch run` that a sweep of throw-away runs cannot honour (refused if given).
    mut_arg("output", |a| a.hide(true)),
    mut_arg("state", |a| a.hide(true)),
    mut_arg("resume", |a| a.hide(true)),
    mut_arg("retry_failed", |a| a.hide(true)),
    mut_arg("force", |a| a.hide(true)),
    mut_arg("restart", |a| a.hide(true)),
    mut_arg("summary_json", |a| a.hide(true)),
    mut_arg("via", |a| a.hide(true)),
    mut_arg("batch_max_requests", |a| a.hide(true)),
    mut_arg("batch_max_bytes", |a| a.hide(true)),
    mut_arg("concurrency", |a| a.help("The settings to measure, e.g. 1,2,4,8,16,32,auto [default: 1, 2, 4, ... while each slot gets 4 rows of --rows, at most 256]"))
)]
pub struct BenchArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// Rows of the input (from the top) sent at each setting and repeat.
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(1..), help_heading = "Bench")]
    pub rows: u64,

    /// Runs per setting; with more than one, medians are reported with their spread.
    #[arg(long, value_name = "K", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..), help_heading = "Bench")]
    pub repeat: u32,

    /// Rows of a discarded warm-up run before each setting, 0 for none [default: the setting's
    /// concurrency, at most 20].
    #[arg(long, value_name = "N", help_heading = "Bench")]
    pub warmup: Option<u64>,

    /// How the results are printed on stdout.
    #[arg(long, value_enum, default_value_t = crate::run::bench::Format::Table, help_heading = "Bench")]
    pub format: crate::run::bench::Format,

    /// Also write the results as CSV to PATH.
    #[arg(long, value_name = "PATH", help_heading = "Bench")]
    pub export_csv: Option<PathBuf>,

    /// Also write the results (every run included) as JSON to PATH.
    #[arg(long, value_name = "PATH", help_heading = "Bench")]
    pub export_json: Option<PathBuf>,

    /// Also write the results as a Markdown table to PATH.
    #[arg(long, value_name = "PATH", help_heading = "Bench")]
    pub export_markdown: Option<PathBuf>,

    /// Draw throughput and p95 latency against concurrency, the recommended setting marked, as
    /// an SVG chart at PATH.
    #[arg(long, value_name = "PATH.svg", help_heading = "Bench")]
    pub plot: Option<PathBuf>,
}

/// How `batch run` gets its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// One request per row, now.
    Api,
    /// The provider's Batch API.
    Batch,
}

/// Flags of `batch submit`: the request flags of `batch run`. `--state` is the job's JSON state
/// file here [default: <results stem>.batch.json beside the results].
#[derive(Debug, Args)]
#[command(
    after_help = "Then: `batch status STATE`, `batch collect STATE --wait`, `batch cancel STATE`. \
The state file never holds the API key: each command reads it from the environment.",
    mut_arg("state", |a| a.help("The job's state file (JSON) [default: <results stem>.batch.json beside the results]")),
    mut_arg("restart", |a| a.help("Replace a batch job already recorded in the state file (its batches keep running)")),
    // Flags of `batch run` that pace or record requests sent one by one: no use here.
    mut_arg("concurrency", |a| a.hide(true)),
    mut_arg("rpm", |a| a.hide(true)),
    mut_arg("tpm", |a| a.hide(true)),
    mut_arg("max_retries", |a| a.hide(true)),
    mut_arg("max_stall", |a| a.hide(true)),
    mut_arg("timeout", |a| a.hide(true)),
    mut_arg("resume", |a| a.hide(true)),
    mut_arg("retry_failed", |a| a.hide(true)),
    mut_arg("force", |a| a.hide(true)),
    mut_arg("grace", |a| a.hide(true)),
    mut_arg("max_cost", |a| a.hide(true)),
    mut_arg("log", |a| a.hide(true)),
    mut_arg("no_cache", |a| a.hide(true)),
    mut_arg("refresh", |a| a.hide(true)),
    mut_arg("cache_dir", |a| a.hide(true)),
    mut_arg("cache_truncated", |a| a.hide(true)),
    mut_arg("no_dedup", |a| a.hide(true)),
    mut_arg("via", |a| a.hide(true)),
    mut_arg("summary_json", |a| a.hide(true))
)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub run: RunArgs,
}

/// A submitted job's state file, and the key to reach its provider.
#[derive(Debug, Args)]
pub struct BatchStateArgs {
    /// The state file `batch submit` wrote.
    #[arg(value_name = "STATE")]
    pub state: PathBuf,

    /// Read the API key from FILE instead of the provider's variable (OPENAI_API_KEY or ANTHROPIC_API_KEY).
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Extra request header, repeatable: `--header 'OpenAI-Organization: org-...'` (for
    /// gateways and proxies; not kept in the state file, so give it again at every step).
    /// Values are never printed or logged.
    #[arg(long = "header", value_name = "'NAME: VALUE'")]
    pub header: Vec<String>,
}

/// Flags of `batch collect`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes as for `batch run`: 0 every row answered; 1 some rows failed, \
expired or are still waiting; 2 usage, state or input error."
)]
pub struct CollectArgs {
    /// The state file `batch submit` wrote.
    #[arg(value_name = "STATE")]
    pub state: PathBuf,

    /// Poll (1 s, 2 s, 4 s ... up to --poll-max apart) until every batch has ended. Without it,
    /// batches still running are checked once and their rows written as skipped.
    #[arg(long)]
    pub wait: bool,

    /// Once every batch has ended, send the rows that failed, expired or were cancelled again
    /// as new batches, recorded in the same state file (with --wait, also wait for them).
    #[arg(long)]
    pub resubmit_failed: bool,

    /// Results CSV [default: the one given to `batch submit`].
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Longest pause between two polls, in seconds [default: 60].
    #[arg(long, value_name = "SECS")]
    pub poll_max: Option<f64>,

    /// Read the API key from FILE instead of the provider's variable (OPENAI_API_KEY or ANTHROPIC_API_KEY).
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Extra request header, repeatable: `--header 'OpenAI-Organization: org-...'` (for
    /// gateways and proxies; not kept in the state file, so give it again at every step).
    /// Values are never printed or logged.
    #[arg(long = "header", value_name = "'NAME: VALUE'")]
    pub header: Vec<String>,

    /// Also write the summary as JSON to PATH.
    #[arg(long, value_name = "PATH")]
    pub summary_json: Option<PathBuf>,

    /// No progress and no summary on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Flags of `batch watch`: the folder, how files are picked up, and every `batch run` flag, which
/// applies to each file's run (`--max-cost` is per file).
#[derive(Debug, Args)]
#[command(
    after_help = "Each CSV that lands in DIR (hidden names such as .x.csv and other extensions \
such as x.csv.partial are ignored) is run once its size and modification time have not changed \
for --settle-ms. Results go to DIR/done/<stem>.results.csv with <stem>.summary.json; the input \
moves to DIR/processed/, or to DIR/failed/ with <name>.error.txt when it cannot be run (bad \
input). A run whose rows partly failed still counts as processed: its results mark them. A name \
already taken in done/, processed/ or failed/ gets a suffix (-2, -3, ...). What was run is \
recorded in DIR/.batch-watch, so restarting the watcher never runs a file twice and a run cut \
short by a crash resumes without paying again for finished rows.\n\n\
Exit codes: with --once, 0 every file processed with every row ok, 1 some file failed or had \
failed rows; 2 usage error; 130 stopped by Ctrl-C or SIGTERM (the run in progress gets its \
--grace, and resumes on the next start).",
    mut_arg("input", |a| a
        .value_name("DIR")
        .help("Folder to watch: every CSV that lands in it is run once.")),
    // Flags of `batch run` that name one run's files; the watcher chooses them per file.
    mut_arg("output", |a| a.hide(true)),
    mut_arg("state", |a| a.hide(true)),
    mut_arg("resume", |a| a.hide(true)),
    mut_arg("retry_failed", |a| a.hide(true)),
    mut_arg("force", |a| a.hide(true)),
    mut_arg("restart", |a| a.hide(true)),
    mut_arg("summary_json", |a| a.hide(true)),
    mut_arg("dry_run", |a| a.hide(true))
)]
pub struct WatchArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// Milliseconds a file's size and modification time must stay unchanged before it is run
    /// (so a file still being written is not taken half-way).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 1000,
        help_heading = "Watch"
    )]
    pub settle_ms: u64,

    /// Milliseconds between full rescans of DIR, a safety net for filesystem events that were
    /// missed (network filesystems, overflowing event queues).
    #[arg(long, value_name = "MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..), help_heading = "Watch")]
    pub rescan_ms: u64,

    /// Files run at the same time; each run has its own --concurrency, so N files can have
    /// N x --concurrency requests in flight.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..), help_heading = "Watch")]
    pub parallel: u32,

    /// Run the CSVs already in DIR (waiting for them to settle), then exit instead of watching.
    #[arg(long, help_heading = "Watch")]
    pub once: bool,
}

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Entries, size, tokens and what the cached answers cost.
    Stats,
    /// Remove entries (all, or those older than --older-than).
    Clear {
        /// Only entries older than this, e.g. 30d, 12h.
        #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
    },
}

/// Options of the mock server, shared by `batch mock` and `batch run --mock=...`.
#[derive(Debug, Clone, Args)]
pub struct MockArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,

    /// Base latency of every response, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub latency_ms: u64,

    /// Extra random latency, uniform in 0..=MS.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub jitter_ms: u64,

    /// Fraction of requests answered with an injected 500 or 503.
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    pub error_rate: f64,

    /// Fraction of requests that take --slow-ms longer.
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    pub slow_rate: f64,

    /// Extra latency of a slow request, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub slow_ms: u64,

    /// Seed for the random choices, for reproducible runs.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Requests per minute accepted, like an API rate limit: a token bucket holding one second's
    /// worth (at least 1) that refills continuously. A request over it is answered at once with
    /// 429 rate_limit_exceeded (type "requests") and retry-after-ms / retry-after headers. With
    /// --rpm or --tpm every response carries OpenAI's x-ratelimit-{limit,remaining,reset}-*
    /// headers.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Limits")]
    pub rpm: Option<u32>,

    /// Tokens per minute accepted (prompt plus completion tokens of the answer the mock gives),
    /// bucketed like --rpm; over it, 429 rate_limit_exceeded with type "tokens".
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Limits")]
    pub tpm: Option<u32>,

    /// Requests per day accepted, like Groq's: a bucket holding the whole day's limit that
    /// refills continuously. It takes over the x-ratelimit-*-requests headers (the limit per
    /// day, the reset as the time until full, e.g. 2m59.56s); --rpm is still enforced then, but
    /// not reported.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Limits")]
    pub rpd: Option<u32>,

    /// Enforce --rpm and --tpm in fixed windows of this length (e.g. 1s, 10s), each allowing
    /// limit x window / 60 (at least 1), instead of a refilling bucket: like servers that enforce
    /// 3000 rpm as 50 a second. x-ratelimit-remaining-* then counts down within the window and
    /// x-ratelimit-reset-* is the time to its end.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, help_heading = "Limits")]
    pub rate_window: Option<std::time::Duration>,

    /// The headers of a 429 over the rate limits: standard (OpenAI's retry-after-ms and
    /// retry-after, Anthropic's retry-after), seconds (retry-after only), none, or litellm (only
    /// llm_provider-retry-after, as a LiteLLM proxy forwards it).
    #[arg(
        long,
        value_name = "STYLE",
        value_enum,
        default_value_t,
        help_heading = "Limits"
    )]
    pub retry_after: crate::engine::mock::RetryAfter,

    /// Answer every completion request after the first N with 429 insufficient_quota (out of
    /// credit: not worth retrying), without retry-after.
    #[arg(long, value_name = "N", help_heading = "Limits")]
    pub quota_exhausted_after: Option<u64>,

    /// Serve at most N requests at once; the others wait for a turn (still counted in flight) and
    /// only then start their latency, so latency grows with load like a self-hosted server's.
    #[arg(long, value_name = "N", help_heading = "Limits")]
    pub capacity: Option<usize>,

    /// Inject a fault into fraction RATE of the accepted requests; repeatable (at most one fault
    /// per request, rates adding up to 1 at most). In --mock=... write fault=KIND=RATE (or
    /// fault=KIND:RATE). KIND is reset (connection closed, no response), truncated (200 whose
    /// body stops halfway), malformed (200 whose body is cut-off JSON), missing-fields (200 JSON
    /// without choices and usage), trickle (200 whose body takes --trickle-ms to arrive) or hang
    /// (no response until the client gives up).
    #[arg(long, value_name = "KIND=RATE", help_heading = "Faults")]
    pub fault: Vec<crate::engine::mock::FaultSpec>,

    /// How long the body of a trickle fault takes to arrive, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 10_000,
        help_heading = "Faults"
    )]
    pub trickle_ms: u64,

    /// Fraction of the answers to requests with a JSON schema (response_format json_schema)
    /// that are spoilt on purpose: half not JSON at all, half JSON that breaks the schema.
    #[arg(long, value_name = "R", default_value_t = 0.0, help_heading = "Faults")]
    pub invalid_json_rate: f64,

    /// Refuse OpenAI requests that carry no `Authorization: Bearer` key with 401, in OpenAI's
    /// error shape, as the real API does (Anthropic requests always need a key). Off by default,
    /// so that keyless runs against a local mock work.
    #[arg(long, help_heading = "Server")]
    pub require_key: bool,

    /// Answer 404, in the API's error shape, for PATH and every path below it, like a server
    /// without that endpoint (e.g. /v1/responses); repeatable. Paths outside /v1 are always 404.
    #[arg(long, value_name = "PATH", help_heading = "Server")]
    pub not_found: Vec<String>,

    /// Enforce --rpm/--tpm without stating them: no x-ratelimit-* headers on any response (as
    /// vLLM, Ollama and many proxies), so a client learns of the limits only from 429s.
    #[arg(long, help_heading = "Server")]
    pub no_limit_headers: bool,

    /// How long a batch takes to process (Batch API: /v1/files, /v1/batches), in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 1_000,
        help_heading = "Batch API"
    )]
    pub batch_latency_ms: u64,

    /// Fraction of batch requests that fail (a 500 in the batch's error file).
    #[arg(
        long,
        value_name = "R",
        default_value_t = 0.0,
        help_heading = "Batch API"
    )]
    pub batch_failure_rate: f64,

    /// Fraction of batch requests left unprocessed when the 24 h window ends: batch_expired in
    /// the error file, and the batch's status is `expired`.
    #[arg(
        long,
        value_name = "R",
        default_value_t = 0.0,
        help_heading = "Batch API"
    )]
    pub batch_expire_rate: f64,

    /// Requests one batch may hold; a bigger batch fails validation as a whole.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 50_000,
        help_heading = "Batch API"
    )]
    pub batch_max_requests: u64,
}

impl MockArgs {
    /// Parses the `--mock=latency-ms=100,error-rate=0.05` form with the same definitions as
    /// `batch mock`, so the two can never drift apart.
    pub fn from_option_list(list: &str) -> Result<Self, String> {
        #[derive(Parser)]
        #[command(name = "--mock", no_binary_name = true)]
        struct Wrapper {
            #[command(flatten)]
            args: MockArgs,
        }
        let mut argv = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').unwrap_or((item, ""));
            argv.push(format!("--{}", k.trim()));
            if !v.is_empty() {
                argv.push(v.trim().to_string());
            }
        }
        let args = Wrapper::try_parse_from(argv)
            .map(|w| w.args)
            .map_err(|e| e.render().to_string())?;
        crate::engine::mock::MockConfig::from(args.clone()).validate()?;
        Ok(args)
    }
}

/// `mock` in `batch.toml`: `true` (the mock with its defaults), `false` (none), or the options
/// string `--mock=` takes (`"latency-ms=100,error-rate=0.05"`).
fn mock_setting<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Mock {
        On(bool),
        Options(String),
    }
    Ok(match Mock::deserialize(d)? {
        Mock::On(true) => Some(String::new()),
        Mock::On(false) => None,
        Mock::Options(s) => Some(s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn mock_option_list_uses_mock_flags() {
        let m = MockArgs::from_option_list("latency-ms=5, error-rate=0.25,seed=7").unwrap();
        assert_eq!(m.latency_ms, 5);
        assert_eq!(m.error_rate, 0.25);
        assert_eq!(m.seed, Some(7));
        let defaults = MockArgs::from_option_list("").unwrap();
        assert_eq!(defaults.latency_ms, 100);
        assert!(MockArgs::from_option_list("latency=5").is_err());
    }

    #[test]
    fn mock_option_list_takes_limits_and_repeated_faults() {
        use crate::engine::mock::{FaultKind, FaultSpec};
        let m = MockArgs::from_option_list(
            "rpm=600,tpm=90000,quota-exhausted-after=5,capacity=2,\
             fault=reset=0.05,fault=trickle:0.01,trickle-ms=300",
        )
        .unwrap();
        assert_eq!((m.rpm, m.tpm), (Some(600), Some(90000)));
        assert_eq!(m.quota_exhausted_after, Some(5));
        assert_eq!(m.capacity, Some(2));
        assert_eq!(
            m.fault,
            [
                FaultSpec {
                    kind: FaultKind::Reset,
                    rate: 0.05
                },
                FaultSpec {
                    kind: FaultKind::Trickle,
                    rate: 0.01
                }
            ]
        );
        assert_eq!(m.trickle_ms, 300);
        assert!(MockArgs::from_option_list("fault=reset").is_err());
        assert!(MockArgs::from_option_list("fault=sneeze=0.1").is_err());
        assert!(MockArgs::from_option_list("fault=reset=0.6,fault=hang=0.6").is_err());
        assert!(MockArgs::from_option_list("rpm=0").is_err());

        let cli = Cli::try_parse_from([
            "batch",
            "mock",
            "--fault",
            "hang=0.5",
            "--fault",
            "malformed=0.5",
            "--rpm",
            "60",
        ])
        .unwrap();
        let Command::Mock(m) = cli.command else {
            panic!("expected mock")
        };
        assert_eq!(m.fault.len(), 2);
        assert_eq!(m.rpm, Some(60));
    }

    #[test]
    fn mock_flag_needs_equals_so_it_does_not_eat_the_input() {
        let cli = Cli::try_parse_from(["batch", "run", "--mock", "in.csv"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(args.input, PathBuf::from("in.csv"));
        assert_eq!(args.mock.as_deref(), Some(""));
    }
}

/// Flags of `batch status`.
#[derive(Debug, Args)]
#[command(
    after_help = "For a run (`batch run`): PATH is its state file or its results path (the state \
sits beside it, with .sqlite). For a submitted job (`batch submit`): PATH is its state file."
)]
pub struct StatusArgs {
    /// A run's state file or results path, or a submitted job's state file.
    #[arg(value_name = "PATH")]
    pub state: PathBuf,

    /// Print the run's status as JSON (for scripts).
    #[arg(long)]
    pub json: bool,

    /// Read the API key from FILE instead of the provider's variable (submitted jobs only).
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Extra request header, repeatable (submitted jobs only): `--header 'OpenAI-Organization:
    /// org-...'`, for gateways and proxies; not kept in the state file, so give it again at every
    /// step.
    /// Values are never printed or logged.
    #[arg(long = "header", value_name = "'NAME: VALUE'")]
    pub header: Vec<String>,
}

/// Flags of `batch export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The run's state file or results path.
    #[arg(value_name = "PATH")]
    pub state: PathBuf,

    /// Where to write: CSV or JSON Lines by extension, `-` for stdout.
    #[arg(short, long, value_name = "PATH", default_value = "-")]
    pub output: PathBuf,

    /// Format of the export: csv or jsonl [default: from the -o extension, else csv].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<crate::base::format::Format>,
}

/// Flags of `batch embed`: the column, the vectors' shape and the per-request limits, plus the
/// `batch run` flags that pace and record requests (concurrency, rate limits, retries, resume,
/// cache, spend cap, endpoint). The prompt, model-sampling and answer-checking flags are hidden
/// and refused.
#[derive(Debug, Args)]
#[command(
    after_help = "Rows are packed into requests up to the API's limits (OpenAI: 2,048 inputs and \
300,000 tokens a request, 8,192 tokens an input; see docs/embeddings.md). A request the server \
refuses is split in halves until the row it refuses fails alone, with the server's reason; \
a request and both its halves refused alike stop the run (the refusal is every request's). \
Vectors go on the wire as base64 float32. --resume sends no row already done; the cache answers \
a row whose model, dimensions and text were embedded before. With --via batch the same requests \
go to OpenAI's Batch API as lines of one batch input (at most 50,000 requests, 50,000 texts and \
200 MB a batch), at half the price, and the command waits for the vectors; if it stops, `batch \
collect STATE --wait` finishes the job.\n\n\
Exit codes as for `batch run`: 0 every row has a vector; 1 some rows failed or were skipped; 2 \
usage or input error; 130 interrupted.",
    mut_arg("input", |a| a.help("Input CSV with a header row, JSON Lines (.jsonl, .ndjson) or Parquet (.parquet, .pq); `-` for stdin")),
    mut_arg("output", |a| a.help("Vectors file, by extension: .parquet or .pq (the default: line, id, status, error, tokens and the embedding as a fixed-size list of float32), .jsonl ({\"id\", \"status\", \"tokens\", \"embedding\": [..]} a line), .npy (float32 matrix in input order, failed rows NaN, with <out>.ids.csv beside it) or .csv (the embedding as a JSON array cell); `-` for JSON Lines on stdout [default: <input stem>.embeddings.parquet beside the input]")),
    mut_arg("model", |a| a.help("Embedding model, sent as is and used to look up the price [default: text-embedding-3-small]")),
    mut_arg("max_cost", |a| a.help("Stop sending before the run's total cost could exceed USD: each request reserves its tokens at the model's price (with --via batch, the whole job's tokens at the batch price are checked before anything is submitted); needs a known price")),
    mut_arg("prompt", |a| a.hide(true)),
    mut_arg("prompt_file", |a| a.hide(true)),
    mut_arg("system", |a| a.hide(true)),
    mut_arg("system_file", |a| a.hide(true)),
    mut_arg("max_tokens", |a| a.hide(true)),
    mut_arg("temperature", |a| a.hide(true)),
    mut_arg("via", |a| a.help("`api` sends the requests now; `batch` hands them to OpenAI's Batch API (half the price, vectors within 24 h) and waits for them: `batch status/collect/cancel STATE` work on the job [default: api]")),
    mut_arg("api", |a| a.hide(true)),
    mut_arg("provider", |a| a.hide(true)),
    mut_arg("schema", |a| a.hide(true)),
    mut_arg("no_strict", |a| a.hide(true)),
    mut_arg("schema_retries", |a| a.hide(true)),
    mut_arg("expect", |a| a.hide(true)),
    mut_arg("match_mode", |a| a.hide(true)),
    mut_arg("ignore_case", |a| a.hide(true)),
    mut_arg("ignore_whitespace", |a| a.hide(true)),
    mut_arg("no_sanitize", |a| a.hide(true)),
    mut_arg("cache_truncated", |a| a.hide(true)),
    mut_arg("log", |a| a.hide(true)),
    mut_arg("output_format", |a| a.hide(true))
)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// The column whose text is embedded.
    #[arg(long, value_name = "COLUMN", help_heading = "Embeddings")]
    pub column: String,

    /// Length of the vectors (`dimensions`, text-embedding-3 models only) [default: the
    /// model's: 1,536 for -small, 3,072 for -large].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Embeddings")]
    pub dimensions: Option<u32>,

    /// Texts in one request at most [default: 2048, OpenAI's limit].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Embeddings")]
    pub max_inputs_per_request: Option<u64>,

    /// Tokens summed over one request's texts at most [default: 300000, OpenAI's limit].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Embeddings")]
    pub max_request_tokens: Option<u64>,

    /// Tokens of one text at most; a longer row fails without being sent [default: 8192,
    /// OpenAI's limit for every embedding model].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Embeddings")]
    pub max_input_tokens: Option<u64>,
}

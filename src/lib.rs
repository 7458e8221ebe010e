//! `batch` runs one prompt over every row of a CSV through an LLM API and writes the answers,
//! with tokens and cost, to a results CSV.
//!
//! A row flows one way through these modules:
//!
//! - [`input`] streams the CSV (after a validating pre-pass) and gives each row an id;
//! - [`template`] renders the row into chat messages (minijinja `{{ column }}` templates);
//! - [`limiter`] holds the request until the requests/min and tokens/min budgets allow it, and
//!   [`concurrency`] bounds (or adapts) how many are in flight;
//! - [`provider`] sends it over HTTP in the chosen wire format (OpenAI Chat Completions or
//!   Responses, Anthropic Messages) and maps the answer to one [`provider::Completion`],
//!   classifying failures as retryable or not; [`retry`] decides how long to wait before the next
//!   attempt;
//! - [`store`] journals every outcome (the run's state, for `--resume`); [`cache`] answers
//!   requests already paid for; [`spend`] keeps the total under `--max-cost`; [`audit`] logs
//!   every attempt;
//! - [`schema`] holds the `--schema` every answer must fit (sent with each request, checked on
//!   each answer, a failed check retried like an error);
//! - [`output`] writes results in input order, with the columns [`derived`] computes from each
//!   answer (`out.<name>` from the schema, `match` from [`expect`]); [`summary`] and [`progress`]
//!   tell the user how it went; [`pricing`] and [`tokens`] put numbers on it.
//!
//! [`runner`] is the scheduler that drives that path with bounded concurrency and cancellation.
//! [`batchapi`] hands the same rendered requests to the providers' Batch APIs instead (`batch
//! submit`, `collect`, `run --via batch`): half the price, answers within 24 hours.
//! [`mock`] is an HTTP server speaking all three wire formats (OpenAI chat and Responses,
//! Anthropic Messages) and both providers' Batch APIs, used by `--mock`, `batch mock` and every
//! test.
//! [`cli`] holds the flag definitions and [`config`] resolves flags, `batch.toml` and the
//! environment into one [`run::settings::RunConfig`]. [`mod@bench`] drives the runner over a sample of
//! rows at several `--concurrency` settings and reports, charts and recommends. [`watch`] runs
//! every CSV that lands in a folder, once.

pub mod base;
pub mod commands;
pub mod engine;
pub mod run;

pub use base::error::{Error, ExitStatus};

use clap::Parser;

/// Parses the process arguments, runs the command and returns its exit status. Everything the
/// binary does goes through here, so `main.rs` stays a one-liner.
pub fn main_entry() -> ExitStatus {
    let cli = commands::cli::Cli::parse();
    init_tracing(cli.verbose);
    let result = commands::dispatch(cli.command);
    match result {
        Ok(status) => status,
        Err(err) => {
            eprintln!("error: {err}");
            err.exit_status()
        }
    }
}

/// Diagnostics go to stderr through `tracing`, off unless `-v` or `RUST_LOG` asks for them; what
/// the user is meant to read (progress, summary, errors) is printed directly.
fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "batch=info",
        2 => "batch=debug",
        _ => "batch=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

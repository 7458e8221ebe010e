//! `batch` runs one prompt over every row of a CSV (or JSON Lines, or Parquet) through an LLM
//! API and writes the answers, with tokens and cost, to a results file.
//!
//! Four layers, each importing only itself and the layers below (ARCHITECTURE.md states the
//! rule; `tests/cli/layers.rs` checks it):
//!
//! - [`base`]: leaf types every layer speaks: the error and exit status, a row's
//!   [`base::record::RowResult`], token [`base::usage::Usage`], money, [`base::human`] (numbers as
//!   people read them), the [`base::secret::ApiKey`], and the [`base::printer::Printer`] that
//!   decides what the user sees.
//! - [`engine`]: the parts a run is built from. [`engine::input`] streams rows, [`engine::template`]
//!   renders them (a watchdog, [`engine::render_guard`], stops a render that outgrows its
//!   budget; [`engine::attach`] reads, checks, scales down and encodes the files a prompt
//!   attaches),
//!   [`engine::limiter`] and [`engine::concurrency`] pace them, [`engine::provider`]
//!   sends them in one of three wire formats and classifies the answer, [`engine::retry`] decides
//!   the next attempt, [`engine::store`] journals every outcome (for `--resume`, with where rows
//!   start in the input), [`engine::cache`] answers requests already paid for,
//!   [`engine::spend`] keeps `--max-cost`, [`engine::output`] writes the results, and [`engine::mock`] is the HTTP server every test and `--mock` talk to.
//! - [`run`]: one run and the loops that drive runs. [`run::settings::RunConfig`] is a run's
//!   resolved settings; [`run::connection`] opens the way to the server (starting the mock for
//!   `--mock`); [`run::runner`] carries every row through the engine (pre-flight, job making,
//!   dispatch, one row's attempts, journal, results); [`run::batchapi`] hands the same requests to
//!   the providers' Batch APIs; [`mod@run::bench`] sweeps concurrency settings; [`run::watch`]
//!   runs every file that lands in a folder; [`run::paths`] makes sure no file a command writes is
//!   one it reads; [`run::inspect`] looks into a run's state file from outside (`batch status`,
//!   `batch export`).
//! - [`commands`]: one module per subcommand, the only layer that knows the flags ([`commands::cli`])
//!   and resolves them ([`commands::config`]).
//!
//! `batch embed` (vectors of one column, many rows per request) has its loop in [`run::embed`],
//! its wire format in [`engine::provider::embeddings`] and its files in
//! [`engine::output::vectors`]; `batch embed --via batch` sends the same packs through the
//! OpenAI Batch API in [`run::batchapi::embeddings`].

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
        // Colour codes only for a terminal: a log file or CI output gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

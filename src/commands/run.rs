//! `batch run`: every row through the API now (or, with `--via batch`, through the Batch API).

use crate::base::error::{Error, ExitStatus};
use crate::base::format::is_std;
use crate::commands::cli::RunArgs;
use crate::run::settings::{ContinueCommand, RunConfig};
use crate::run::{batchapi, runner};

/// `batch run`.
pub async fn run(args: RunArgs) -> Result<ExitStatus, Error> {
    let mut cfg = RunConfig::resolve(args)?;
    both_on_stdout(&cfg)?;
    cfg.continue_with = Some(ContinueCommand {
        args: std::env::args().collect(),
    });
    if cfg.batch.via_batch {
        batchapi::run_via_batch(cfg).await
    } else {
        runner::run(cfg).await
    }
}

/// `-` is stdout for every output option, but only one of them can have it.
fn both_on_stdout(cfg: &RunConfig) -> Result<(), Error> {
    let on_stdout: Vec<&str> = [
        (Some(cfg.output.as_path()), "-o"),
        (cfg.summary_json.as_deref(), "--summary-json"),
        (cfg.log.as_deref(), "--log"),
    ]
    .into_iter()
    .filter(|(path, _)| path.is_some_and(is_std))
    .map(|(_, flag)| flag)
    .collect();
    if on_stdout.len() > 1 {
        return Err(Error::Usage(format!(
            "{} {} write to stdout (`-`); send all but one of them to a file",
            on_stdout.join(" and "),
            if on_stdout.len() == 2 { "both" } else { "all" }
        )));
    }
    Ok(())
}

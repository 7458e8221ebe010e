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
    let summary_on_stdout = cfg.summary_json.as_deref().is_some_and(is_std);
    if summary_on_stdout && is_std(&cfg.output) {
        return Err(Error::Usage(
            "-o - and --summary-json - both write to stdout; send one of them to a file".into(),
        ));
    }
    Ok(())
}

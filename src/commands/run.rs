//! `batch run`: every row through the API now (or, with `--via batch`, through the Batch API).

use crate::base::error::{Error, ExitStatus};
use crate::commands::cli::RunArgs;
use crate::run::settings::RunConfig;
use crate::run::{batchapi, runner};

/// `batch run`.
pub async fn run(args: RunArgs) -> Result<ExitStatus, Error> {
    let cfg = RunConfig::resolve(args)?;
    if cfg.batch.via_batch {
        batchapi::run_via_batch(cfg).await
    } else {
        runner::run(cfg).await
    }
}

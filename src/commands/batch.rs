//! `batch submit`, `status`, `collect` and `cancel`: a job through the providers' Batch APIs
//! (half the price, answers within 24 hours). The work is in [`crate::run::batchapi`].

use std::time::Duration;

use crate::base::error::{Error, ExitStatus};
use crate::base::printer::Printer;
use crate::commands::cli::{BatchStateArgs, CollectArgs, SubmitArgs};
use crate::commands::config::{RunOnlyFlag, refuse_flags};
use crate::engine::provider::ExtraHeaders;
use crate::run::batchapi::{self, Collect, DEFAULT_POLL_MAX};
use crate::run::settings::RunConfig;

/// `batch submit`.
pub async fn submit(args: SubmitArgs) -> Result<ExitStatus, Error> {
    refuse_flags(
        &args.run,
        &[RunOnlyFlag::Resume, RunOnlyFlag::SummaryJson],
        "a submitted job is continued and summed up by `batch collect STATE` (--summary-json \
         there)",
    )?;
    let input = &args.run.input;
    if crate::base::format::is_std(input) || crate::engine::stdio::is_stream(input) {
        // `collect` reads the input again, maybe days later: a copy of stdin would be gone.
        return Err(Error::Usage(format!(
            "batch submit reads its input again at `batch collect`, so {} (stdin or a pipe) \
             cannot be the input: save it to a file first, or use `batch run --via batch`, \
             which waits for the answers",
            input.display()
        )));
    }
    batchapi::submit_command(RunConfig::resolve(args.run)?).await
}

/// `batch status STATE`: a report, with no `-q` to hide anything.
pub async fn status(args: BatchStateArgs) -> Result<ExitStatus, Error> {
    let printer = Printer::new(false);
    let headers = headers(&args.header)?;
    batchapi::status_command(&args.state, args.api_key_file.as_deref(), &headers, printer).await
}

/// `batch cancel STATE`: a report, with no `-q` to hide anything.
pub async fn cancel(args: BatchStateArgs) -> Result<ExitStatus, Error> {
    let printer = Printer::new(false);
    let headers = headers(&args.header)?;
    batchapi::cancel_command(&args.state, args.api_key_file.as_deref(), &headers, printer).await
}

/// `batch collect STATE`.
pub async fn collect(args: CollectArgs) -> Result<ExitStatus, Error> {
    let poll_max = match args.poll_max {
        Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s),
        Some(s) => {
            return Err(Error::Usage(format!(
                "--poll-max {s} must be a positive number of seconds"
            )));
        }
        None => DEFAULT_POLL_MAX,
    };
    crate::run::paths::PathCheck::default()
        .input("the state file", Some(&args.state))
        .input("the --api-key-file", args.api_key_file.as_deref())
        .output("-o", args.output.as_deref())
        .output("--summary-json", args.summary_json.as_deref())
        .check()?;
    let headers = headers(&args.header)?;
    let opts = Collect {
        wait: args.wait,
        resubmit_failed: args.resubmit_failed,
        poll_max,
        printer: Printer::new(args.quiet),
        summary_json: args.summary_json,
    };
    let key_file = args.api_key_file.as_deref();
    batchapi::collect_command(&args.state, key_file, &headers, args.output, opts).await
}

/// The `--header` flags of a step after `submit` (they are not kept in the state file).
fn headers(specs: &[String]) -> Result<ExtraHeaders, Error> {
    ExtraHeaders::parse(specs).map_err(Error::Usage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::cli::RunArgs;

    #[tokio::test]
    async fn submit_refuses_the_run_flags_it_would_ignore() {
        for run in [
            RunArgs {
                resume: true,
                ..RunArgs::default()
            },
            RunArgs {
                summary_json: Some("s.json".into()),
                ..RunArgs::default()
            },
        ] {
            let err = submit(SubmitArgs { run }).await.unwrap_err().to_string();
            assert!(
                err.contains("is for `batch run`") && err.contains("batch collect"),
                "{err}"
            );
        }
    }
}

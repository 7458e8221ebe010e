//! `batch status PATH`: a run's journal (or its results path) is looked into
//! ([`crate::run::inspect`]); anything else is a submitted job's state ([`super::batch`]).

use crate::base::error::{Error, ExitStatus};
use crate::base::printer::Printer;
use crate::commands::cli::{BatchStateArgs, StatusArgs};
use crate::run::inspect;

/// `batch status`: a report, with no `-q` to hide anything.
pub async fn run(args: StatusArgs) -> Result<ExitStatus, Error> {
    let Some(state) = inspect::run_journal(&args.state) else {
        if args.json {
            return Err(Error::Usage(format!(
                "--json is for a run's state; {} is not one (a submitted job's status is shown \
                 without it)",
                args.state.display()
            )));
        }
        let batch_args = BatchStateArgs {
            state: args.state,
            api_key_file: args.api_key_file,
            header: args.header,
        };
        return super::batch::status(batch_args).await;
    };
    let status = inspect::status(&state)?;
    let printer = Printer::new(false);
    if args.json {
        let json = serde_json::to_string_pretty(&status)
            .map_err(|e| Error::io("cannot write the status", std::io::Error::other(e)))?;
        printer.report(json);
    } else {
        printer.report_with(|w| status.print(w));
    }
    Ok(ExitStatus::Success)
}

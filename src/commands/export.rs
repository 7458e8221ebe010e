//! `batch export PATH [-o OUT]`: the results so far of a run, live, killed or finished
//! ([`crate::run::inspect::export`]).

use crate::base::error::{Error, ExitStatus};
use crate::base::printer::Printer;
use crate::commands::cli::ExportArgs;
use crate::run::inspect;

pub fn run(args: ExportArgs) -> Result<ExitStatus, Error> {
    let state = inspect::run_journal(&args.state).ok_or_else(|| {
        Error::Usage(format!(
            "{} is not the state of a run, nor a results path with one beside it (.sqlite); \
             export reads what `batch run` records",
            args.state.display()
        ))
    })?;
    let done = inspect::export(&state, &args.output, args.format)?;
    let s = &done.stats;
    let pending = s.skipped;
    Printer::new(false).note(format_args!(
        "Exported   {} rows ({} ok, {} failed, {pending} skipped or pending) to {}",
        s.ok + s.failed + pending,
        s.ok,
        s.failed,
        done.path.display()
    ));
    Ok(ExitStatus::Success)
}

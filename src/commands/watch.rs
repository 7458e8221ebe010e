//! `batch watch`: checks the flags, resolves the settings every file is run with, and hands the
//! folder to [`crate::run::watch::Watcher`].

use std::time::Duration;

use crate::base::error::{Error, ExitStatus};
use crate::commands::cli::{RunArgs, WatchArgs};
use crate::commands::config::{RunOnlyFlag, refuse_flags};
use crate::run::settings::RunConfig;
use crate::run::watch::{WatchOptions, Watcher};

/// Runs `batch watch`.
pub async fn run(args: WatchArgs) -> Result<ExitStatus, Error> {
    let WatchArgs {
        run: run_args,
        settle_ms,
        rescan_ms,
        parallel,
        once,
    } = args;
    refuse_run_only_flags(&run_args)?;
    let dir = run_args.input.clone();
    if dir.as_os_str().is_empty() {
        return Err(Error::Usage("no folder to watch given".into()));
    }
    // Every flag is checked (and prompt files read) now, not when the first file arrives.
    let base = RunConfig::resolve(run_args)?;
    let options = WatchOptions {
        dir,
        settle: Duration::from_millis(settle_ms),
        rescan: Duration::from_millis(rescan_ms),
        parallel: parallel as usize,
        once,
    };
    Watcher::new(base, options)?.watch().await
}

/// Flags of `batch run` that name one run's files or choose how one run resumes: the watcher
/// decides those per file.
fn refuse_run_only_flags(a: &RunArgs) -> Result<(), Error> {
    refuse_flags(
        a,
        RunOnlyFlag::ALL,
        "the watcher writes each file's results and summary to DIR/done and resumes runs by itself",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_settings_change_with_the_prompt_and_api_but_not_with_pacing() {
        let cfg = |prompt: &str, concurrency: &str, api| {
            let args = RunArgs {
                input: "in".into(),
                prompt: Some(prompt.into()),
                concurrency: Some(concurrency.parse().unwrap()),
                mock: Some(String::new()),
                api,
                ..RunArgs::default()
            };
            // What the watcher fingerprints a file under (its input is left out).
            RunConfig::resolve(args).unwrap().request_settings("")
        };
        use crate::engine::provider::ApiName::Responses;
        assert_eq!(cfg("{{a}}", "4", None), cfg("{{a}}", "8", None));
        assert_ne!(cfg("{{a}}", "4", None), cfg("{{b}}", "4", None));
        assert_ne!(cfg("{{a}}", "4", None), cfg("{{a}}", "4", Some(Responses)));
    }

    #[test]
    fn flags_for_a_single_run_are_refused() {
        let args = RunArgs {
            output: Some("x.csv".into()),
            ..RunArgs::default()
        };
        let Err(Error::Usage(msg)) = refuse_run_only_flags(&args) else {
            panic!("expected a usage error")
        };
        assert!(msg.contains("-o/--output"), "{msg}");
        assert!(refuse_run_only_flags(&RunArgs::default()).is_ok());
    }
}

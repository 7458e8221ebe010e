//! `batch watch`.

use crate::base::error::{Error, ExitStatus};
use crate::commands::cli::{RunArgs, WatchArgs};
use crate::run::settings::RunConfig;
use crate::run::watch::*;
use deliver::Folders;
use inbox::{Inbox, Noticed};
use ledger::Ledger;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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
    let quiet = run_args.quiet;
    // Every flag is checked (and prompt files read) now, not when the first file arrives.
    let base = RunConfig::resolve(run_args)?;
    let folders = Arc::new(Folders::create(&dir)?);
    let ledger = Ledger::open(&folders.state.join("ledger.sqlite"), &dir)?;
    folders.clear_temporary();
    let mut watcher = Watcher {
        settings: Arc::new(request_settings(&base)),
        base,
        folders,
        ledger,
        log: Log { quiet },
        failures: 0,
    };
    watcher.finish_cut_short_deliveries()?;

    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if crate::run::runner::wait_for_signal().await {
                stop.cancel();
            }
        });
    }
    // Filesystem events only wake the loop, which then looks at the folder itself; so a missed
    // or coalesced event costs at most one rescan period.
    let (wake_tx, mut wake_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let _events = if once {
        None
    } else {
        match fs_events(&dir, wake_tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!(
                    "warning: cannot watch {} for filesystem events ({e}); looking every {rescan_ms} \
                     ms instead",
                    dir.display()
                );
                None
            }
        }
    };
    let settle = Duration::from_millis(settle_ms);
    let rescan = Duration::from_millis(rescan_ms);
    watcher.log.info(&if once {
        format!(
            "processing the CSVs in {} once each has not changed for {settle_ms} ms; results in {}",
            dir.display(),
            dir.join("done").display()
        )
    } else {
        format!(
            "watching {}: each CSV that lands there is run once it has not changed for {settle_ms} \
             ms; results in {}; Ctrl-C to stop",
            dir.display(),
            dir.join("done").display()
        )
    });

    let mut inbox = Inbox::new(&dir, settle);
    let mut running: JoinSet<Finished> = JoinSet::new();
    let mut busy_files: HashSet<PathBuf> = HashSet::new();
    let mut busy_keys: HashSet<String> = HashSet::new();
    loop {
        if !stop.is_cancelled() {
            for n in inbox.scan(&busy_files, Instant::now()) {
                match n {
                    Noticed::Arrived(p, size) => {
                        tracing::info!(
                            "{}: arrived ({size} bytes); waiting for it to settle",
                            name_of(&p)
                        )
                    }
                    Noticed::Changed(p, size) => {
                        tracing::info!(
                            "{}: changed ({size} bytes); waiting for it to settle",
                            name_of(&p)
                        )
                    }
                }
            }
            while running.len() < parallel as usize {
                let Some((path, look)) = inbox.take_ready(Instant::now()) else {
                    break;
                };
                match watcher.start(&path, &busy_keys).await {
                    Ok(Start::Run(key, job)) => {
                        busy_files.insert(path);
                        busy_keys.insert(key);
                        running.spawn(job);
                    }
                    Ok(Start::Later) => inbox.put_back(path, look, Instant::now()),
                    Err(e) => {
                        watcher.failures += 1;
                        watcher.log.problem(&format!(
                            "{}: cannot be started ({e}); left in place until it changes",
                            name_of(&path)
                        ));
                        inbox.pass_over(path, look);
                    }
                }
            }
        }
        if running.is_empty() && (stop.is_cancelled() || (once && inbox.is_empty())) {
            break;
        }
        let tick = inbox
            .next_due(Instant::now())
            .map_or(rescan, |d| d.min(rescan))
            .max(Duration::from_millis(10));
        tokio::select! {
            Some(joined) = running.join_next(), if !running.is_empty() => {
                let finished = joined
                    .map_err(|e| Error::io("a run failed", std::io::Error::other(e)))?;
                busy_files.remove(&finished.path);
                busy_keys.remove(&finished.key);
                if watcher.file(finished)? == Filed::Interrupted {
                    stop.cancel();
                }
            }
            Some(()) = wake_rx.recv() => while wake_rx.try_recv().is_ok() {},
            () = tokio::time::sleep(tick) => {}
            () = stop.cancelled(), if !stop.is_cancelled() => {
                if !running.is_empty() {
                    watcher.log.problem(
                        "interrupted: the run in progress gets its --grace, then the watcher stops",
                    );
                }
            }
        }
    }
    Ok(if stop.is_cancelled() {
        ExitStatus::Interrupted
    } else if watcher.failures > 0 {
        ExitStatus::RowsFailed
    } else {
        ExitStatus::Success
    })
}

/// Flags of `batch run` that name one run's files or choose how one run resumes: the watcher
/// decides those per file.
fn refuse_run_only_flags(a: &RunArgs) -> Result<(), Error> {
    let given = [
        ("-o/--output", a.output.is_some()),
        ("--state", a.state.is_some()),
        ("--resume", a.resume),
        ("--restart", a.restart),
        ("--summary-json", a.summary_json.is_some()),
        ("--dry-run", a.dry_run),
    ];
    match given.iter().find(|(_, set)| *set) {
        Some((flag, _)) => Err(Error::Usage(format!(
            "{flag} is for `batch run`; the watcher writes each file's results and summary to \
             DIR/done and resumes runs by itself"
        ))),
        None => Ok(()),
    }
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
            request_settings(&RunConfig::resolve(args).unwrap())
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

//! `batch watch DIR`: every CSV that lands in a folder is run once, by the same runner as
//! `batch run`, and filed away with its results.
//!
//! The loop: [`inbox`] notices files (filesystem events from `notify`, a scan at start, a timer
//! while files settle and a periodic rescan in case events were missed) and hands over those
//! that have stopped changing. Each is copied and fingerprinted ([`deliver::stage`]), recorded in
//! the [`ledger`] and run in its own work folder; the results and the input are then put in
//! place by a recorded [`deliver`]y.
//!
//! Why a file is never run twice: the work folder and journal of a run belong to its fingerprint
//! (the input's bytes and the settings that shape requests), so a file seen again, whether after
//! a crash mid-run, a crash between the run and the move, or dropped in again by a user, resumes
//! its earlier run, and rows already answered are not sent again. A run that ended (even badly)
//! is filed by a delivery recorded before any file moves, and a delivery a crash cut short is
//! finished on the next start.
//!
//! What goes where: a run that finished goes to `processed/`, even if some rows failed (its
//! results mark them; the exit code of `--once` says so). An input that cannot be run (bad CSV,
//! a template naming a missing column, a run that could not write its results) goes to
//! `failed/` with `<name>.error.txt`. A file dropped in again after it was processed is resumed
//! with its failed rows sent again, so dropping a file back in is how to retry it.

mod deliver;
mod inbox;
mod ledger;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::base::error::{Error, ExitStatus};
use crate::base::money::format_cost;
use crate::commands::cli::{RunArgs, WatchArgs};
use crate::engine::store::Store;
use crate::engine::template::PromptSource;
use crate::run::runner;
use crate::run::settings::{Endpoint, Resume, RunConfig};
use crate::run::summary::Summary;
use deliver::{Folders, WORK_RESULTS, WORK_SUMMARY};
use inbox::{Inbox, Noticed};
use ledger::{Ledger, Outcome, RunState};

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

/// What the loop needs across files.
struct Watcher {
    base: RunConfig,
    /// The request-shaping settings, part of every fingerprint.
    settings: Arc<String>,
    folders: Arc<Folders>,
    ledger: Ledger,
    log: Log,
    /// Files that failed or had failed rows.
    failures: u64,
}

/// A run that ended, with what is needed to file it.
struct Finished {
    path: PathBuf,
    key: String,
    /// The copy that was run (error messages name it; they are relabelled with the input's name).
    input: PathBuf,
    result: Result<(ExitStatus, Option<Summary>), Error>,
}

enum Start {
    /// The run, to spawn; keyed by its fingerprint.
    Run(String, futures::future::BoxFuture<'static, Finished>),
    /// The same bytes are being run right now (a copy dropped in twice): wait for that run.
    Later,
}

#[derive(Debug, PartialEq, Eq)]
enum Filed {
    Done,
    Interrupted,
}

impl Watcher {
    /// Deliveries a crash cut short are carried out before anything else, so no file is left half
    /// filed and no name they chose is taken by another.
    fn finish_cut_short_deliveries(&mut self) -> Result<(), Error> {
        for d in self.ledger.pending()? {
            deliver::carry_out(&self.folders, &d, &self.settings)?;
            self.ledger.delivered(d.id)?;
            deliver::tidy(&self.folders, &d.key);
            self.log.info(&format!(
                "{}: filed after a restart -> {}",
                d.name,
                d.results_to.as_deref().unwrap_or(&d.input_to)
            ));
        }
        Ok(())
    }

    /// Copies, fingerprints and records the file, and prepares its run.
    async fn start(&mut self, path: &Path, busy_keys: &HashSet<String>) -> Result<Start, Error> {
        let name = name_of(path);
        let (key, staged) = {
            let (src, folders, settings) = (
                path.to_path_buf(),
                self.folders.clone(),
                self.settings.clone(),
            );
            tokio::task::spawn_blocking(move || deliver::stage(&src, &folders, &settings))
                .await
                .map_err(|e| Error::io("copying the input failed", std::io::Error::other(e)))?
                .map_err(|e| Error::read(path, &e))?
        };
        if busy_keys.contains(&key) {
            let _ = std::fs::remove_file(&staged);
            return Ok(Start::Later);
        }
        let input = deliver::adopt(&self.folders, &staged, &key)?;
        let prior = self.ledger.state(&key)?;
        let work = self.folders.work(&key);
        let mut cfg = self.base.clone();
        cfg.input = input.clone();
        cfg.output = work.join(WORK_RESULTS);
        cfg.state = crate::engine::store::default_path(&cfg.output);
        cfg.summary_json = None;
        cfg.quiet = true;
        cfg.dry_run = false;
        let recorded = cfg.state.exists() && Store::open(&cfg.state)?.run()?.is_some();
        cfg.resume = if recorded {
            // A file seen again after it was filed is being retried: send its failed rows again.
            // After a crash mid-run, continue as the run would have. The fingerprint already
            // holds every setting that shapes requests, so nothing can have changed but paths.
            Resume::Yes {
                retry_failed: prior == Some(RunState::Finished),
                force: true,
            }
        } else {
            Resume::Restart
        };
        self.ledger.start(&key, &name)?;
        self.log.info(&format!(
            "{name}: started{}",
            match (prior, recorded) {
                (Some(RunState::Running), true) =>
                    " (resuming the run a stop cut short; answered rows are not sent again)",
                (Some(RunState::Finished), true) =>
                    " (seen before: resuming its earlier run, sending only rows that did not succeed)",
                _ => "",
            }
        ));
        let path = path.to_path_buf();
        let job_key = key.clone();
        let job = async move {
            let result = std::panic::AssertUnwindSafe(runner::run_to_summary(cfg))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    Err(Error::io(
                        "the run stopped unexpectedly",
                        std::io::Error::other("panic"),
                    ))
                });
            Finished {
                path,
                key: job_key,
                input,
                result,
            }
        }
        .boxed();
        Ok(Start::Run(key, job))
    }

    /// Records how a run ended and files its input and results.
    fn file(&mut self, f: Finished) -> Result<Filed, Error> {
        let name = name_of(&f.path);
        let work = self.folders.work(&f.key);
        let (outcome, result) = match f.result {
            Ok((ExitStatus::Interrupted, summary)) => {
                let done = summary.map_or(String::new(), |s| {
                    format!(" ({} of {} rows ok)", s.ok, s.rows)
                });
                self.log.problem(&format!(
                    "{name}: interrupted{done}; it stays in the folder and resumes on the next \
                     start"
                ));
                return Ok(Filed::Interrupted);
            }
            Ok((status, Some(summary))) => {
                if status != ExitStatus::Success {
                    self.failures += 1;
                }
                let outcome = Outcome {
                    processed: true,
                    ok: summary.ok,
                    failed: summary.failed,
                    skipped: summary.skipped,
                    cost_usd: summary.cost_usd,
                };
                (outcome, Ok(summary))
            }
            Ok((_, None)) => (
                Outcome::failed(),
                Err(Error::Usage("the run produced no results".into())),
            ),
            Err(e) => (Outcome::failed(), Err(e)),
        };
        crash_point("after-run");
        let error_text = result.as_ref().err().map(|e| {
            let shown = self.folders.dir.join(&name);
            let msg = e
                .to_string()
                .replace(&f.input.display().to_string(), &shown.display().to_string());
            let advice = match e {
                Error::Input(_) => "To run it, fix the file and drop it into the folder again.",
                _ => {
                    "Drop the file into the folder again to retry; rows already answered are not \
                     sent again."
                }
            };
            format!("{name} could not be run:\n\n{msg}\n\n{advice}\n")
        });
        let d = deliver::plan(
            &self.folders,
            &self.ledger,
            &f.key,
            &name,
            error_text.clone(),
        )?;
        if let (Ok(mut summary), Some(results)) = (result, &d.results_to) {
            // The summary names the results file that will be in done/, not the work copy.
            summary.output = self.folders.dir.join(results).display().to_string();
            summary.write_json(&work.join(WORK_SUMMARY))?;
        }
        let d = self.ledger.finish(&f.key, &outcome, d)?;
        crash_point("before-filing");
        deliver::carry_out(&self.folders, &d, &self.settings)?;
        self.ledger.delivered(d.id)?;
        deliver::tidy(&self.folders, &f.key);
        match error_text {
            Some(text) => {
                self.failures += 1;
                let first = text.lines().nth(2).unwrap_or_default();
                self.log.problem(&format!(
                    "{name}: failed: {first} -> {}",
                    d.error_to.as_deref().unwrap_or(&d.input_to)
                ));
            }
            None => {
                let mut line =
                    format!("{name}: done: {} ok, {} failed", outcome.ok, outcome.failed);
                if outcome.skipped > 0 {
                    line.push_str(&format!(", {} skipped", outcome.skipped));
                }
                if let Some(c) = outcome.cost_usd {
                    line.push_str(&format!(", ${}", format_cost(c)));
                }
                line.push_str(&format!(" -> {}", d.results_to.as_deref().unwrap_or("")));
                if outcome.failed + outcome.skipped > 0 {
                    self.log.problem(&line);
                } else {
                    self.log.info(&line);
                }
            }
        }
        Ok(Filed::Done)
    }
}

impl Outcome {
    fn failed() -> Outcome {
        Outcome {
            processed: false,
            ok: 0,
            failed: 0,
            skipped: 0,
            cost_usd: None,
        }
    }
}

/// One line per event on stderr, with the time: the watcher runs unattended and its log is read
/// later. `-q` keeps only problems.
struct Log {
    quiet: bool,
}

impl Log {
    fn info(&self, line: &str) {
        if !self.quiet {
            self.problem(line);
        }
    }

    fn problem(&self, line: &str) {
        eprintln!(
            "{} {line}",
            humantime::format_rfc3339_seconds(SystemTime::now())
        );
    }
}

/// Test hook: `BATCH_WATCH_FAULT=after-run` (a run has ended, nothing recorded yet) or
/// `before-filing` (the delivery is recorded, no file moved yet) aborts the process there, so the
/// end-to-end tests can prove that a crash at those points neither loses nor repeats a run.
fn crash_point(name: &str) {
    if std::env::var_os("BATCH_WATCH_FAULT").is_some_and(|v| v == name) {
        eprintln!("BATCH_WATCH_FAULT={name}: aborting");
        std::process::abort();
    }
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The settings that shape requests (what the journal checks when resuming), as one string that
/// goes into every fingerprint: the same file under another prompt or model is another run.
fn request_settings(cfg: &RunConfig) -> String {
    let endpoint = match &cfg.endpoint {
        Endpoint::Mock(_) => "mock".to_string(),
        Endpoint::Remote { base_url, .. } => base_url.clone(),
    };
    let prompt = match &cfg.prompt {
        PromptSource::Template(t) => Some(t.as_str()),
        PromptSource::PromptColumn => None,
    };
    serde_json::json!({
        "endpoint": endpoint,
        "api": cfg.api.label(),
        "model": cfg.model,
        "prompt": prompt,
        "system": cfg.system,
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
    })
    .to_string()
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

/// Wakes the loop on any change in `dir` (not its subfolders).
fn fs_events(
    dir: &Path,
    wake: tokio::sync::mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let mut w = notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
        let _ = wake.send(());
    })?;
    w.watch(dir, notify::RecursiveMode::NonRecursive)?;
    Ok(w)
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

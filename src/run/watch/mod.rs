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

pub(crate) mod deliver;
pub(crate) mod inbox;
pub(crate) mod ledger;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use futures::FutureExt;

use crate::base::error::{Error, ExitStatus};
use crate::base::money::format_cost;
use crate::engine::store::Store;
use crate::run::runner;
use crate::run::settings::{Resume, RunConfig};
use crate::run::summary::Summary;
use deliver::{Folders, WORK_RESULTS, WORK_SUMMARY};
use ledger::{Ledger, Outcome, RunState};

/// What the loop needs across files.
pub(crate) struct Watcher {
    pub(crate) base: RunConfig,
    /// The request-shaping settings, part of every fingerprint.
    pub(crate) settings: Arc<String>,
    pub(crate) folders: Arc<Folders>,
    pub(crate) ledger: Ledger,
    pub(crate) log: Log,
    /// Files that failed or had failed rows.
    pub(crate) failures: u64,
}

/// A run that ended, with what is needed to file it.
pub(crate) struct Finished {
    pub(crate) path: PathBuf,
    pub(crate) key: String,
    /// The copy that was run (error messages name it; they are relabelled with the input's name).
    pub(crate) input: PathBuf,
    pub(crate) result: Result<(ExitStatus, Option<Summary>), Error>,
}

pub(crate) enum Start {
    /// The run, to spawn; keyed by its fingerprint.
    Run(String, futures::future::BoxFuture<'static, Finished>),
    /// The same bytes are being run right now (a copy dropped in twice): wait for that run.
    Later,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Filed {
    Done,
    Interrupted,
}

impl Watcher {
    /// Deliveries a crash cut short are carried out before anything else, so no file is left half
    /// filed and no name they chose is taken by another.
    pub(crate) fn finish_cut_short_deliveries(&mut self) -> Result<(), Error> {
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
    pub(crate) async fn start(
        &mut self,
        path: &Path,
        busy_keys: &HashSet<String>,
    ) -> Result<Start, Error> {
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
    pub(crate) fn file(&mut self, f: Finished) -> Result<Filed, Error> {
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
    pub(crate) fn failed() -> Outcome {
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
pub(crate) struct Log {
    pub(crate) quiet: bool,
}

impl Log {
    pub(crate) fn info(&self, line: &str) {
        if !self.quiet {
            self.problem(line);
        }
    }

    pub(crate) fn problem(&self, line: &str) {
        eprintln!(
            "{} {line}",
            humantime::format_rfc3339_seconds(SystemTime::now())
        );
    }
}

/// Test hook: `BATCH_WATCH_FAULT=after-run` (a run has ended, nothing recorded yet) or
/// `before-filing` (the delivery is recorded, no file moved yet) aborts the process there, so the
/// end-to-end tests can prove that a crash at those points neither loses nor repeats a run.
pub(crate) fn crash_point(name: &str) {
    if std::env::var_os("BATCH_WATCH_FAULT").is_some_and(|v| v == name) {
        eprintln!("BATCH_WATCH_FAULT={name}: aborting");
        std::process::abort();
    }
}

pub(crate) fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The settings that shape requests, as the journal records them, as one string that goes into
/// every fingerprint: the same file under another prompt or model is another run. The input is
/// fingerprinted by its bytes, not its name, so the input path is left empty.
pub(crate) fn request_settings(cfg: &RunConfig) -> String {
    serde_json::to_string(&cfg.request_settings("")).expect("settings serialize")
}

/// Wakes the loop on any change in `dir` (not its subfolders).
pub(crate) fn fs_events(
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

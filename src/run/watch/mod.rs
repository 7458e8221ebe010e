//! `batch watch DIR`: every CSV that lands in a folder is run once, by the same runner as
//! `batch run`, and filed away with its results.
//!
//! The loop, [`Watcher::watch`]: [`inbox`] notices files (filesystem events from `notify`, a scan
//! at start, a timer while files settle and a periodic rescan in case events were missed) and
//! hands over those that have stopped changing. Each is copied and fingerprinted
//! ([`deliver::stage`]), recorded in the [`ledger`] and run in its own work folder; the results
//! and the input are then put in place by a recorded [`deliver`]y.
//!
//! Why a file is never run twice: the work folder and journal of a run belong to its fingerprint
//! (the input's bytes and the settings that shape requests, [`RunConfig::request_settings`]), so
//! a file seen again, whether after a crash mid-run, a crash between the run and the move, or
//! dropped in again by a user, resumes its earlier run, and rows already answered are not sent
//! again. A run that ended (even badly) is filed by a delivery recorded before any file moves,
//! and a delivery a crash cut short is finished on the next start.
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
use futures::future::BoxFuture;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::base::error::{Error, ExitStatus};
use crate::base::money::format_cost;
use crate::base::printer::Printer;
use crate::engine::store::Store;
use crate::run::runner;
use crate::run::settings::{Resume, RunConfig};
use crate::run::summary::Summary;
use deliver::{Folders, WORK_RESULTS, WORK_SUMMARY};
use inbox::{Inbox, Noticed};
use ledger::{Delivery, Ledger, Outcome, RunState};

/// How the watcher picks files up.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The folder watched.
    pub dir: PathBuf,
    /// How long a file's size and modification time must stay the same before it is run.
    pub settle: Duration,
    /// Time between full scans of the folder, for filesystem events that were missed.
    pub rescan: Duration,
    /// Files run at the same time.
    pub parallel: usize,
    /// Run the files in the folder, then stop instead of watching.
    pub once: bool,
}

/// The watcher of one folder: what each file is run with, the folder's layout and ledger, and how
/// many files went wrong.
pub struct Watcher {
    base: RunConfig,
    options: WatchOptions,
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
    Run(String, BoxFuture<'static, Finished>),
    /// The same bytes are being run right now (a copy dropped in twice): wait for that run.
    Later,
}

#[derive(Debug, PartialEq, Eq)]
enum Filed {
    Done,
    Interrupted,
}

/// The runs under way, and the files and fingerprints they hold: a file being run is not taken
/// again, and the same bytes dropped in twice wait for the first run.
#[derive(Default)]
struct Running {
    jobs: JoinSet<Finished>,
    files: HashSet<PathBuf>,
    keys: HashSet<String>,
}

impl Running {
    /// Spawns `job`, the run of `path` under fingerprint `key`, holding both until it ends.
    fn add(&mut self, path: PathBuf, key: String, job: BoxFuture<'static, Finished>) {
        self.files.insert(path);
        self.keys.insert(key);
        self.jobs.spawn(job);
    }

    /// Frees the file and fingerprint of a run that ended.
    fn release(&mut self, f: &Finished) {
        self.files.remove(&f.path);
        self.keys.remove(&f.key);
    }
}

impl Watcher {
    /// Takes charge of `options.dir`: checks it and creates the folders the watcher writes (so a
    /// bad path fails at once), opens the ledger (refused while another watcher holds it),
    /// removes what a crash left half-written and files the runs a crash left unfiled.
    pub fn new(base: RunConfig, options: WatchOptions) -> Result<Watcher, Error> {
        let folders = Arc::new(Folders::create(&options.dir)?);
        let ledger = Ledger::open(&folders.state.join("ledger.sqlite"), &options.dir)?;
        folders.clear_temporary();
        let mut watcher = Watcher {
            settings: Arc::new(fingerprint_settings(&base)),
            log: Log {
                printer: base.printer(),
            },
            base,
            options,
            folders,
            ledger,
            failures: 0,
        };
        watcher.finish_cut_short_deliveries()?;
        Ok(watcher)
    }

    /// Runs every file that settles in the folder, until Ctrl-C or SIGTERM (with `once`, until
    /// no file is left to run). Success only if every file was run with every row ok.
    pub async fn watch(mut self) -> Result<ExitStatus, Error> {
        let stop = stop_on_signal();
        // Filesystem events only wake the loop, which then looks at the folder itself; so a
        // missed or coalesced event costs at most one rescan period.
        let (wake_tx, mut wake) = tokio::sync::mpsc::unbounded_channel::<()>();
        let _events = self.wake_on_events(wake_tx);
        self.log.info(&self.greeting());
        let mut inbox = Inbox::new(&self.options.dir, self.options.settle);
        let mut running = Running::default();
        loop {
            if !stop.is_cancelled() {
                log_noticed(inbox.scan(&running.files, Instant::now()));
                self.start_settled(&mut inbox, &mut running).await;
            }
            let nothing_left = stop.is_cancelled() || (self.options.once && inbox.is_empty());
            if running.jobs.is_empty() && nothing_left {
                break;
            }
            self.wait(&inbox, &mut running, &mut wake, &stop).await?;
        }
        Ok(if stop.is_cancelled() {
            ExitStatus::Interrupted
        } else if self.failures > 0 {
            ExitStatus::RowsFailed
        } else {
            ExitStatus::Success
        })
    }

    /// The watcher of filesystem events that wakes the loop; `None` with `once` (the loop scans
    /// until the folder is done) or if the platform refuses, with a warning (the rescan remains).
    fn wake_on_events(&self, wake: UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
        if self.options.once {
            return None;
        }
        fs_events(&self.options.dir, wake)
            .map_err(|e| {
                self.log.printer.warn(format_args!(
                    "cannot watch {} for filesystem events ({e}); looking every {} ms instead",
                    self.options.dir.display(),
                    self.options.rescan.as_millis()
                ))
            })
            .ok()
    }

    /// The first line of the log: what is watched, how, and where results go.
    fn greeting(&self) -> String {
        let dir = &self.options.dir;
        let settle_ms = self.options.settle.as_millis();
        let done = dir.join("done");
        if self.options.once {
            format!(
                "processing the CSVs in {} once each has not changed for {settle_ms} ms; results \
                 in {}",
                dir.display(),
                done.display()
            )
        } else {
            format!(
                "watching {}: each CSV that lands there is run once it has not changed for \
                 {settle_ms} ms; results in {}; Ctrl-C to stop",
                dir.display(),
                done.display()
            )
        }
    }

    /// Starts the files that have settled, as many as `parallel` allows; a file that cannot be
    /// started is counted as failed and left alone until it changes.
    async fn start_settled(&mut self, inbox: &mut Inbox, running: &mut Running) {
        while running.jobs.len() < self.options.parallel {
            let Some((path, look)) = inbox.take_ready(Instant::now()) else {
                break;
            };
            match self.start(&path, &running.keys).await {
                Ok(Start::Run(key, job)) => running.add(path, key, job),
                Ok(Start::Later) => inbox.put_back(path, look, Instant::now()),
                Err(e) => {
                    self.failures += 1;
                    self.log.problem(&format!(
                        "{}: cannot be started ({e}); left in place until it changes",
                        name_of(&path)
                    ));
                    inbox.pass_over(path, look);
                }
            }
        }
    }

    /// Waits for the next thing to do: a run ending (it is filed), a filesystem event, a file due
    /// to settle or the next rescan, or a stop (the runs under way get their `--grace`).
    async fn wait(
        &mut self,
        inbox: &Inbox,
        running: &mut Running,
        wake: &mut UnboundedReceiver<()>,
        stop: &CancellationToken,
    ) -> Result<(), Error> {
        let rescan = self.options.rescan;
        let tick = inbox
            .next_due(Instant::now())
            .map_or(rescan, |d| d.min(rescan))
            .max(Duration::from_millis(10));
        tokio::select! {
            Some(joined) = running.jobs.join_next(), if !running.jobs.is_empty() => {
                let finished = joined
                    .map_err(|e| Error::io("a run failed", std::io::Error::other(e)))?;
                running.release(&finished);
                if self.file(finished)? == Filed::Interrupted {
                    stop.cancel();
                }
            }
            Some(()) = wake.recv() => while wake.try_recv().is_ok() {},
            () = tokio::time::sleep(tick) => {}
            () = stop.cancelled(), if !stop.is_cancelled() => {
                if !running.jobs.is_empty() {
                    self.log.problem(
                        "interrupted: the run in progress gets its --grace, then the watcher stops",
                    );
                }
            }
        }
        Ok(())
    }

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

    /// Records how a run ended and files its input and results: to `processed/` and `done/`,
    /// or with its error to `failed/`. A run interrupted by a stop is left to resume.
    fn file(&mut self, f: Finished) -> Result<Filed, Error> {
        let name = name_of(&f.path);
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
        self.crash_point("after-run");
        let error_text = result
            .as_ref()
            .err()
            .map(|e| self.error_text(&name, &f.input, e));
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
            summary.write_json(&self.folders.work(&f.key).join(WORK_SUMMARY))?;
        }
        let d = self.ledger.finish(&f.key, &outcome, d)?;
        self.crash_point("before-filing");
        deliver::carry_out(&self.folders, &d, &self.settings)?;
        self.ledger.delivered(d.id)?;
        deliver::tidy(&self.folders, &f.key);
        self.log_filed(&name, &outcome, &d, error_text.as_deref());
        Ok(Filed::Done)
    }

    /// The text of `failed/<name>.error.txt`: the error, naming the file in the folder rather
    /// than the copy that was run, and how to retry.
    fn error_text(&self, name: &str, input: &Path, e: &Error) -> String {
        let shown = self.folders.dir.join(name);
        let msg = e
            .to_string()
            .replace(&input.display().to_string(), &shown.display().to_string());
        let advice = match e {
            Error::Input(_) => "To run it, fix the file and drop it into the folder again.",
            _ => {
                "Drop the file into the folder again to retry; rows already answered are not \
                 sent again."
            }
        };
        format!("{name} could not be run:\n\n{msg}\n\n{advice}\n")
    }

    /// Logs where a filed run went: a failure (counted) as a problem, rows that failed or were
    /// skipped as a problem, a clean run as information.
    fn log_filed(&mut self, name: &str, outcome: &Outcome, d: &Delivery, error: Option<&str>) {
        if let Some(text) = error {
            self.failures += 1;
            let first = text.lines().nth(2).unwrap_or_default();
            self.log.problem(&format!(
                "{name}: failed: {first} -> {}",
                d.error_to.as_deref().unwrap_or(&d.input_to)
            ));
            return;
        }
        let mut line = format!("{name}: done: {} ok, {} failed", outcome.ok, outcome.failed);
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

    /// Test hook: `BATCH_WATCH_FAULT=after-run` (a run has ended, nothing recorded yet) or
    /// `before-filing` (the delivery is recorded, no file moved yet) aborts the process there, so
    /// the end-to-end tests can prove that a crash at those points neither loses nor repeats a
    /// run.
    fn crash_point(&self, name: &str) {
        if std::env::var_os("BATCH_WATCH_FAULT").is_some_and(|v| v == name) {
            self.log
                .problem(&format!("BATCH_WATCH_FAULT={name}: aborting"));
            std::process::abort();
        }
    }
}

/// One line per event on stderr, with the time: the watcher runs unattended and its log is read
/// later. `-q` keeps only problems, which are shown as warnings.
struct Log {
    printer: Printer,
}

impl Log {
    /// How the work goes; hidden by `-q`.
    fn info(&self, line: &str) {
        self.printer.note(format_args!("{} {line}", now()));
    }

    /// Something that went wrong; shown even with `-q`.
    fn problem(&self, line: &str) {
        self.printer.warn(format_args!("{} {line}", now()));
    }
}

/// The time at the start of a log line, to the second.
fn now() -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(SystemTime::now())
}

/// Logs (with `-v`) each file that arrived or changed, while it settles.
fn log_noticed(noticed: Vec<Noticed>) {
    for n in noticed {
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
}

/// A token cancelled by Ctrl-C or SIGTERM.
fn stop_on_signal() -> CancellationToken {
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        if runner::wait_for_signal().await {
            token.cancel();
        }
    });
    stop
}

/// The file's name, as the log and `DIR`'s subfolders show it.
fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The settings that shape requests, as the journal records them, as one string that goes into
/// every fingerprint: the same file under another prompt or model is another run. The input is
/// fingerprinted by its bytes, not its name, so the input path is left empty.
fn fingerprint_settings(cfg: &RunConfig) -> String {
    serde_json::to_string(&cfg.request_settings("")).expect("settings serialize")
}

/// Wakes the loop on any change in `dir` (not its subfolders).
fn fs_events(dir: &Path, wake: UnboundedSender<()>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let mut w = notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
        let _ = wake.send(());
    })?;
    w.watch(dir, notify::RecursiveMode::NonRecursive)?;
    Ok(w)
}

//! A look into a run from another terminal, while it runs or after it died or finished:
//! `batch status` (rows done, failed and pending, cost against the cap, rate, ETA, the most
//! common errors, and whether a process holds the job) and `batch export` (the results so far).
//!
//! Both only read: the state file is opened read-only, and its WAL lets a reader see the last
//! commit without ever blocking the run that writes it. The lock is probed, never taken.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::base::error::Error;
use crate::base::format::Format;
use crate::base::record::RowStatus;
use crate::engine::input::InputFile;
use crate::engine::lock;
use crate::engine::output::ResultsWriter;
use crate::engine::store::{self, FinishedRows, META_MAX_COST};
use crate::run::runner::results::{Missing, write_results};
use crate::run::summary::Stats;

/// The first bytes of every SQLite file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// The state file a path names: itself if it is a run's journal, else (a results path) the
/// journal beside it. `None` if neither is a run journal (a Batch API job's state, say).
pub fn run_journal(path: &Path) -> Option<PathBuf> {
    let beside = store::default_path(path);
    [path.to_path_buf(), beside]
        .into_iter()
        .find(|p| is_sqlite(p))
}

fn is_sqlite(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == SQLITE_MAGIC
}

/// What `batch status` reports of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    pub state: String,
    pub input: String,
    pub model: String,
    pub total_rows: u64,
    pub ok: u64,
    pub failed: u64,
    /// Stopped before an answer (a resume sends them).
    pub skipped: u64,
    /// Not recorded yet.
    pub pending: u64,
    /// The run finished every row.
    pub complete: bool,
    /// The pid of the process that holds the job, if one does.
    pub running_pid: Option<String>,
    /// What the attempts so far are counted as costing (what a spend cap counts).
    pub cost_usd: f64,
    pub max_cost_usd: Option<f64>,
    /// Rows recorded a second over the last rows recorded.
    pub rows_per_second: Option<f64>,
    /// Seconds until the pending rows are done at that rate, while a process runs the job.
    pub eta_seconds: Option<f64>,
    /// When the last row was recorded (RFC 3339).
    pub last_recorded: Option<String>,
    /// The most common errors of failed and skipped rows, most common first.
    pub errors: Vec<ErrorCount>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    pub error: String,
    pub rows: u64,
}

/// Rows the rate is measured over: the last ones recorded.
const RATE_WINDOW: u32 = 5_000;
/// Errors listed, at most.
const TOP_ERRORS: u32 = 5;

/// Reads the status of the run recorded in `state`.
pub fn status(state: &Path) -> Result<RunStatus, Error> {
    let journal = FinishedRows::open_read_only(state)?;
    let Some(run) = journal.run()? else {
        return Err(Error::Usage(format!(
            "{} records no run yet (a run writes it as it starts)",
            state.display()
        )));
    };
    let read_error = |e: rusqlite::Error| {
        Error::Usage(format!(
            "cannot read the run state {}: {e}",
            state.display()
        ))
    };
    // Read from the file's running totals (a few pages, however big the run); an older file
    // is counted row by row.
    let counts = journal.status_counts()?;
    let (rate, last) = recent_rate(&journal).map_err(read_error)?;
    let errors = journal
        .top_errors(TOP_ERRORS)?
        .into_iter()
        .map(|(error, rows)| ErrorCount { error, rows })
        .collect();
    let running_pid = lock::holder(state);
    let recorded = counts.ok + counts.failed + counts.skipped;
    let pending = run.total_rows.saturating_sub(recorded);
    let eta = match (&running_pid, rate) {
        (Some(_), Some(r)) if r > 0.0 => Some((pending + counts.skipped) as f64 / r),
        _ => None,
    };
    let max_cost = journal
        .meta(META_MAX_COST)?
        .and_then(|v| v.parse::<f64>().ok());
    Ok(RunStatus {
        state: state.display().to_string(),
        input: run.settings.input.clone(),
        model: run.settings.model.clone(),
        total_rows: run.total_rows,
        ok: counts.ok,
        failed: counts.failed,
        skipped: counts.skipped,
        pending,
        complete: run.finished,
        running_pid,
        // What a resume would count against the cap: requests in flight at a kill at their worst.
        cost_usd: journal.spent_at_most()?,
        max_cost_usd: max_cost,
        rows_per_second: rate,
        eta_seconds: eta,
        last_recorded: last.map(|ms| {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
                .to_string()
        }),
        errors,
    })
}

/// Rows a second over the last [`RATE_WINDOW`] rows recorded (by position, which is the order a
/// run sends them in), and when the last was recorded. No index is needed: the rows are the
/// table's last pages.
fn recent_rate(journal: &FinishedRows) -> rusqlite::Result<(Option<f64>, Option<i64>)> {
    let sql = format!(
        "SELECT COUNT(*), MIN(t), MAX(t) FROM (SELECT {} AS t FROM rows ORDER BY seq DESC \
         LIMIT {RATE_WINDOW})",
        journal.finished_ms_sql()
    );
    journal.conn().query_row(&sql, [], |r| {
        let n: i64 = r.get(0)?;
        let (first, last): (Option<i64>, Option<i64>) = (r.get(1)?, r.get(2)?);
        let rate = match (first, last) {
            (Some(a), Some(b)) if b > a && n > 1 => Some((n - 1) as f64 * 1000.0 / (b - a) as f64),
            _ => None,
        };
        Ok((rate, last))
    })
}

impl RunStatus {
    /// The report for a person.
    pub fn print(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        let recorded = self.ok + self.failed + self.skipped;
        let state = match (&self.running_pid, self.complete) {
            (Some(pid), _) => format!("running (pid {pid} holds the job)"),
            (None, true) => "finished".to_string(),
            (None, false) => "stopped (no process holds the job; --resume finishes it)".into(),
        };
        writeln!(w, "Run        {state}")?;
        writeln!(w, "State      {}", self.state)?;
        writeln!(w, "Input      {} ({})", self.input, self.model)?;
        writeln!(
            w,
            "Rows       {} ok, {} failed, {} skipped, {} pending ({recorded} of {} recorded)",
            self.ok, self.failed, self.skipped, self.pending, self.total_rows
        )?;
        let cap = self
            .max_cost_usd
            .map(|c| {
                format!(
                    " of a ${} cap (--max-cost)",
                    crate::base::money::format_cost(c)
                )
            })
            .unwrap_or_default();
        writeln!(
            w,
            "Cost       ${}{cap}",
            crate::base::money::format_cost(self.cost_usd)
        )?;
        if let Some(rate) = self.rows_per_second {
            let eta = self
                .eta_seconds
                .map(|s| {
                    let s = Duration::from_secs(s.round() as u64);
                    format!(", about {} to go", humantime::format_duration(s))
                })
                .unwrap_or_default();
            writeln!(w, "Rate       {rate:.1} rows/s of the last rows{eta}")?;
        }
        if let Some(last) = &self.last_recorded {
            writeln!(w, "Last row   recorded {last}")?;
        }
        for (i, e) in self.errors.iter().enumerate() {
            let label = if i == 0 { "Errors" } else { "" };
            writeln!(w, "{label:<10} {} x {}", e.rows, e.error)?;
        }
        Ok(())
    }
}

/// What `batch export` wrote.
pub struct Exported {
    pub path: PathBuf,
    pub stats: Stats,
}

/// Writes the results so far of the run recorded in `state` to `output` (`-` for stdout): the
/// input's rows in order, each with its recorded result or `pending`. The run is not disturbed:
/// its journal is read in one read-only snapshot, and the results it will write are untouched.
pub fn export(state: &Path, output: &Path, format: Option<Format>) -> Result<Exported, Error> {
    let journal = FinishedRows::open_read_only(state)?;
    let Some(run) = journal.run()? else {
        return Err(Error::Usage(format!(
            "{} records no run yet (a run writes it as it starts)",
            state.display()
        )));
    };
    let input_path = PathBuf::from(&run.settings.input);
    if !input_path.is_file() {
        return Err(Error::Usage(format!(
            "the run's input {} is not there any more; results are the input's rows with their \
             answers, so export needs it back at that path",
            input_path.display()
        )));
    }
    // An export over the run's input or its state would destroy what the run reads.
    crate::run::paths::PathCheck::default()
        .input("the run's input", Some(&input_path))
        .input("the run's state file", Some(state))
        .output("-o", Some(output))
        .check()?;
    let input_format = Format::from_extension(&input_path).unwrap_or_default();
    let input = InputFile::open_as(&input_path, input_format, None)?;
    let stdout = crate::base::format::is_std(output);
    let format = format
        .or_else(|| (!stdout).then(|| Format::from_extension(output)).flatten())
        .unwrap_or_default();
    let writer = if stdout {
        let tmp = state.with_extension("export.partial");
        ResultsWriter::create_for_stdout(&tmp, format, &input.headers, true, None)?
    } else {
        ResultsWriter::create_as(output, format, &input.headers, true, None)?
    };
    let missing = Missing {
        status: RowStatus::Pending,
        reason: "",
    };
    let (stats, path) = write_results(&input, journal, writer, &run.settings.model, missing)?;
    Ok(Exported { path, stats })
}

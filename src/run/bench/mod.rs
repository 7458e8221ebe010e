//! `batch bench`: the same run as `batch run`, over a sample of the input, at each of several
//! `--concurrency` settings, measured, compared, charted, and a setting recommended.
//!
//! For each setting (and each `--repeat`) the first `--rows` rows of the input go through
//! [`crate::run::runner::run_to_summary`] exactly as `batch run` would send them, in a temporary
//! folder with a fresh results file and state file, after a short discarded warm-up run. What is
//! measured:
//!
//! - **rows/s**, sustained: rows answered per second from the first round of the full run
//!   coming back to the last dispatch, read from the attempts the run journaled in its state
//!   file (see [`measure`]). This leaves out what a run of N rows pays once (pre-flight,
//!   the round trip of the few probe requests sent while the rate limits are learned, the last
//!   half-empty round of requests), which an overnight job of 100,000 rows does not feel. When a
//!   run is too short for it (every row in one or two rounds), the end-to-end rate is used and
//!   marked. The end-to-end rate (rows / wall time) is reported beside it.
//! - tokens/s (rows/s times the tokens of an average row), latency percentiles of answered rows,
//!   the 429 rate (429s over attempts), the error rate (failed rows over rows), retries, and the
//!   cost per 1,000 rows at the model's price.
//!
//! With `--repeat K` every figure is the median of the K runs, and the spread of rows/s (min,
//! max, standard deviation) is reported.
//!
//! [`sweep`] carries out a [`BenchPlan`]: [`sample`] copies the rows, [`estimate`] works out
//! what the sweep may cost before anything is sent, [`measure`] makes and times each run.
//! [`report`] holds the numbers, the pure exporters and the recommendation, [`plot`] draws the
//! chart, and [`publish`] prints the report and writes the files asked for.

mod estimate;
mod measure;
mod plot;
mod report;
mod sample;

use std::path::{Path, PathBuf};

pub use report::{Latency, Recommendation, Report, RunMeasure, SettingResult};

use crate::base::error::{Error, ExitStatus, describe_io};
use crate::base::money::format_cost;
use crate::base::printer::Printer;
use crate::engine::concurrency::Concurrency;
use crate::run::settings::RunConfig;
use estimate::Estimate;
use report::{fmt_ms, fmt_rate, label, to_csv, to_json, to_markdown, to_table};
use sample::Sample;

/// Warm-up rows at most, when `--warmup` is not given.
const DEFAULT_MAX_WARMUP: u64 = 20;
/// Below this many rows per slot, a note says the numbers at that setting rest on few rounds.
const ROWS_PER_SLOT_NOTE: u64 = 4;

/// `--format`: how the results are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned table, then the recommendation.
    Table,
    /// A Markdown table, then the recommendation.
    Markdown,
    /// One CSV line per setting (the recommendation goes to stderr).
    Csv,
    /// Everything, every run included, as JSON (the recommendation is in it).
    Json,
}

/// What to sweep.
pub struct BenchPlan {
    /// The settings of every run; each run replaces its concurrency, files and cache use.
    pub base: RunConfig,
    /// The `--concurrency` settings, in the order given (one given twice is measured once);
    /// empty for the default sweep ([`default_sweep`]).
    pub settings: Vec<Concurrency>,
    /// Rows from the top of the input that each run sends.
    pub rows: u64,
    /// Runs per setting.
    pub repeat: u32,
    /// Rows of the discarded warm-up run before each setting [default: the setting's
    /// concurrency, at most 20].
    pub warmup: Option<u64>,
}

/// How a sweep ended.
pub enum Swept {
    /// `--dry-run`: the expected cost was printed and nothing was sent.
    DryRun,
    /// Some settings were measured; `status` says whether the sweep went to its end.
    Measured {
        report: Box<Report>,
        status: ExitStatus,
    },
}

/// Where the report goes: stdout in `format`, and the files asked for.
pub struct Outputs {
    pub format: Format,
    pub csv: Option<PathBuf>,
    pub json: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
    /// The chart, as SVG.
    pub plot: Option<PathBuf>,
}

/// Measures every setting of `plan` and reports what was found. A sweep that stops early (Ctrl-C,
/// `--max-cost` spent, a run that stopped) reports the settings measured until then, with a
/// note saying why; if none was, that is an error.
pub async fn sweep(plan: BenchPlan) -> Result<Swept, Error> {
    let BenchPlan {
        base,
        settings,
        rows,
        repeat,
        warmup,
    } = plan;
    let printer = base.printer();
    let sample = Sample::take(&base, rows)?;
    let settings = if settings.is_empty() {
        default_sweep(sample.rows)
    } else {
        dedupe(settings)
    };
    let warmups = warmup_rows(&settings, warmup, sample.rows);
    let estimate = Estimate::new(&base, &sample.prompt_tokens, &warmups, repeat);
    if base.dry_run {
        estimate.print_dry_run(&base, printer);
        return Ok(Swept::DryRun);
    }
    estimate.check_budget(&base, printer)?;
    printer.note(format_args!(
        "bench: {} x {} x {} on {}",
        plural(settings.len() as u64, "setting"),
        plural(u64::from(repeat), "run"),
        plural(sample.rows, "row"),
        base.endpoint.describe()
    ));
    let mut sweep = Sweep {
        notes: sample_notes(&base.input, rows, sample.rows, &settings),
        worst_attempt: estimate.worst_attempt,
        base,
        repeat,
        sample,
        printer,
        results: Vec::new(),
        spent: 0.0,
        status: ExitStatus::Success,
        runs: 0,
    };
    for (setting, warm) in settings.into_iter().zip(warmups) {
        if !sweep.measure_setting(setting, warm).await? {
            break;
        }
    }
    sweep.finish()
}

/// Prints `report` on stdout in the format asked for (after CSV or JSON, the conclusion goes to
/// stderr, keeping stdout machine-readable), then writes the exports and the chart.
pub fn publish(report: &Report, outputs: &Outputs, printer: Printer) -> Result<(), Error> {
    let text = match outputs.format {
        Format::Table => to_table(report),
        Format::Markdown => to_markdown(report),
        Format::Csv => to_csv(report),
        Format::Json => to_json(report),
    };
    printer.report_with(|w| w.write_all(text.as_bytes()));
    if matches!(outputs.format, Format::Csv | Format::Json) {
        printer.note_with(|w| w.write_all(report.conclusion().as_bytes()));
    }
    for (path, export) in [
        (&outputs.csv, to_csv as fn(&Report) -> String),
        (&outputs.json, to_json),
        (&outputs.markdown, to_markdown),
    ] {
        if let Some(path) = path {
            write_file(path, &export(report))?;
        }
    }
    if let Some(path) = &outputs.plot {
        let svg = plot::render_svg(report).map_err(|e| {
            Error::io(
                format!("cannot draw the chart {}", path.display()),
                std::io::Error::other(e),
            )
        })?;
        write_file(path, &svg)?;
    }
    Ok(())
}

/// A sweep under way: what its runs send, and what they have measured and spent so far.
struct Sweep {
    base: RunConfig,
    repeat: u32,
    sample: Sample,
    /// What an attempt whose cost cannot be known is charged, as the runner's spend cap does.
    worst_attempt: f64,
    printer: Printer,
    results: Vec<SettingResult>,
    notes: Vec<String>,
    /// Dollars the runs have counted against their caps so far.
    spent: f64,
    status: ExitStatus,
    /// Runs made so far, to name each run's files.
    runs: usize,
}

impl Sweep {
    /// Measures one setting: a warm-up of `warm` rows, if any, then `--repeat` runs of the
    /// sample. False when the sweep must stop; a setting cut short is left out.
    async fn measure_setting(&mut self, setting: Concurrency, warm: u64) -> Result<bool, Error> {
        if warm > 0 {
            let input = self.sample.warmup(warm)?;
            let what = format!("warm-up, {}", plural(warm, "row"));
            if self.measure_run(setting, &input, &what).await?.is_none() {
                return Ok(false);
            }
        }
        let mut runs = Vec::new();
        for n in 1..=self.repeat {
            let input = self.sample.path.clone();
            let what = format!("run {n}/{}", self.repeat);
            match self.measure_run(setting, &input, &what).await? {
                Some(measure) => runs.push(measure),
                None => return Ok(false),
            }
        }
        self.results.push(SettingResult::from_runs(setting, runs));
        Ok(true)
    }

    /// Makes one run of `input` within what is left of `--max-cost`, counts what it spent and
    /// logs its numbers. `None` when the sweep must stop here (a note says why).
    async fn measure_run(
        &mut self,
        setting: Concurrency,
        input: &Path,
        what: &str,
    ) -> Result<Option<RunMeasure>, Error> {
        let name = label(setting);
        let cap = match self.base.max_cost {
            Some(cap) if cap - self.spent <= 0.0 => {
                self.stop(
                    ExitStatus::RowsFailed,
                    format!(
                        "the sweep stopped before --concurrency {name}: --max-cost ${} is spent",
                        format_cost(cap)
                    ),
                );
                return Ok(None);
            }
            // Rounded down to a nanodollar, so messages show a readable amount.
            Some(cap) => Some(((cap - self.spent) * 1e9).floor() / 1e9),
            None => None,
        };
        self.runs += 1;
        let (status, measure, unknown_cost) = measure::one_run(
            &self.base,
            setting,
            input,
            self.sample.dir(),
            self.runs,
            cap,
        )
        .await
        .map_err(|e| self.sample.relabel(e))?;
        // What the run's own cap counted: the answers' cost, and the worst case of every
        // attempt whose cost could not be known.
        self.spent += measure.cost_usd.unwrap_or(0.0) + unknown_cost as f64 * self.worst_attempt;
        if status == ExitStatus::Interrupted {
            self.stop(
                ExitStatus::Interrupted,
                format!(
                    "interrupted during --concurrency {name} ({what}); settings measured so far                      are reported"
                ),
            );
            return Ok(None);
        }
        if let Some(reason) = &measure.stopped {
            self.stop(
                ExitStatus::RowsFailed,
                format!(
                    "the sweep stopped at --concurrency {name} ({what}): {reason}; that run is                      left out"
                ),
            );
            return Ok(None);
        }
        self.printer.note(format_args!(
            "concurrency {name:>4}: {what}: {} rows/s{}, p95 {}, {} failed, {}",
            fmt_rate(measure.rows_per_second()),
            if measure.sustained_rows_per_second.is_some() {
                ""
            } else {
                " (end to end)"
            },
            fmt_ms(measure.latency_ms.p95),
            measure.failed,
            crate::base::human::count_as(measure.retries, "retry", "retries")
        ));
        Ok(Some(measure))
    }

    /// Ends the sweep early with `status`, `note` saying why.
    fn stop(&mut self, status: ExitStatus, note: String) {
        self.notes.push(note);
        self.status = status;
    }

    /// The report of the settings measured; an error if none was.
    fn finish(self) -> Result<Swept, Error> {
        if self.results.is_empty() {
            return Err(Error::Usage(format!(
                "no setting could be measured: {}",
                self.notes.join("; ")
            )));
        }
        let report = Report::new(
            &self.base.input,
            &self.base.model,
            self.base.endpoint.describe(),
            self.sample.rows,
            self.repeat,
            self.results,
            self.notes,
        );
        Ok(Swept::Measured {
            report: Box::new(report),
            status: self.status,
        })
    }
}

/// Rows of the warm-up before each setting: `--warmup`, or the setting's concurrency (at most
/// [`DEFAULT_MAX_WARMUP`]), and never more than the sample.
fn warmup_rows(settings: &[Concurrency], warmup: Option<u64>, sample_rows: u64) -> Vec<u64> {
    settings
        .iter()
        .map(|c| {
            warmup
                .unwrap_or_else(|| (c.ceiling() as u64).min(DEFAULT_MAX_WARMUP))
                .min(sample_rows)
        })
        .collect()
}

/// Notes about a sample too small for what was asked: an input shorter than `--rows`, and a
/// setting with so few rows per slot that it is measured over few rounds.
fn sample_notes(
    input: &Path,
    asked: u64,
    sample_rows: u64,
    settings: &[Concurrency],
) -> Vec<String> {
    let mut notes = Vec::new();
    if sample_rows < asked {
        notes.push(format!(
            "{} has only {sample_rows} rows, so each run sends {sample_rows} instead of {asked}",
            input.display()
        ));
    }
    if let Some(c) = settings
        .iter()
        .filter_map(|c| match c {
            Concurrency::Fixed(n) => Some(*n as u64),
            Concurrency::Auto => None,
        })
        .max()
        .filter(|c| *c > 1 && sample_rows < ROWS_PER_SLOT_NOTE * c)
    {
        notes.push(format!(
            "at --concurrency {c}, {sample_rows} rows are {:.1} rows per slot, so that setting \
             is measured over few rounds of requests; --rows {} or more gives steadier numbers",
            sample_rows as f64 / c as f64,
            ROWS_PER_SLOT_NOTE * c
        ));
    }
    notes
}

/// Writes `text` to `path` (checked writable before the sweep), a usage error naming the file if
/// it cannot be written.
fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    if crate::base::format::is_std(path) {
        // `-` is stdout, as for every output option.
        Printer::new(false).report(text.trim_end());
        return Ok(());
    }
    std::fs::write(path, text).map_err(|e| {
        Error::Usage(format!(
            "cannot write {}: {}",
            path.display(),
            describe_io(&e)
        ))
    })
}

/// `1 row`, `2 rows`.
fn plural(n: u64, noun: &str) -> String {
    crate::base::human::count(n, noun)
}

/// The highest setting of the default sweep.
const DEFAULT_SWEEP_MAX: u64 = 256;

/// The settings measured without `--concurrency`: 1, 2, 4, ... as long as each slot gets
/// [`ROWS_PER_SLOT_NOTE`] rows of the sample (fewer is measured over too few rounds to tell
/// settings apart), up to [`DEFAULT_SWEEP_MAX`]. 200 rows: 1 to 32; 1,000 rows: 1 to 128.
pub fn default_sweep(sample_rows: u64) -> Vec<Concurrency> {
    let mut out = vec![Concurrency::Fixed(1)];
    let mut c = 2u64;
    while c <= DEFAULT_SWEEP_MAX && c * ROWS_PER_SLOT_NOTE <= sample_rows {
        out.push(Concurrency::Fixed(c as usize));
        c *= 2;
    }
    out
}

/// The settings in the order given, each once.
fn dedupe(settings: Vec<Concurrency>) -> Vec<Concurrency> {
    let mut out: Vec<Concurrency> = Vec::new();
    for c in settings {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod sweep_tests {
    use super::*;

    #[test]
    fn the_default_sweep_doubles_while_each_slot_gets_four_rows() {
        let fixed = |v: &[usize]| v.iter().map(|n| Concurrency::Fixed(*n)).collect::<Vec<_>>();
        assert_eq!(default_sweep(200), fixed(&[1, 2, 4, 8, 16, 32]));
        assert_eq!(default_sweep(16), fixed(&[1, 2, 4]));
        assert_eq!(default_sweep(3), fixed(&[1]));
        assert_eq!(
            default_sweep(1_000_000).last(),
            Some(&Concurrency::Fixed(256))
        );
    }
}

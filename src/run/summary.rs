//! Run totals: counted as rows complete, printed at the end and exported as JSON.
//!
//! Failures are data here, not just log lines: the summary counts them by outcome so a user can
//! tell at a glance whether a run was clean.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::base::error::{Error, describe_io};
use crate::base::human;
use crate::base::money::{round_opt_usd_json, round_usd_json};
use crate::base::record::RowResult;
use crate::base::record::RowStatus;
use crate::engine::expect::PassRate;

/// Running totals, fed one [`RowResult`] at a time.
pub struct Stats {
    pub ok: u64,
    pub failed: u64,
    pub skipped: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Parts of `prompt_tokens` read from and written to the provider's prompt cache, and of
    /// `completion_tokens` spent reasoning.
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_usd: f64,
    /// Answered rows with no price (unknown model).
    pub unpriced: u64,
    /// Attempts beyond the first, over all rows.
    pub retries: u64,
    /// Attempts answered with a 429 rate limit.
    pub rate_limited: u64,
    /// Rows taken as they were from an earlier part of a resumed run.
    pub resumed: u64,
    /// Rows answered from the cache or by an identical request of the run.
    pub cache_hits: u64,
    /// Rows whose requests were sent (answered or failed), not taken from the cache or skipped:
    /// what rows/s counts.
    pub sent: u64,
    /// Failed and skipped rows grouped by the short form of their reason.
    pub failures: BTreeMap<(RowStatus, String), FailureGroup>,
    /// The short form of the latest row error (for the live line).
    pub last_error: Option<String>,
    pub tokens_saved: u64,
    pub saved_usd: f64,
    /// Latency of answered rows, microseconds.
    latency: Histogram<u64>,
    /// Totals by the model in each row's `model` column (rows can name their own model).
    pub by_model: BTreeMap<String, ModelSummary>,
    /// The `--expect` pass rate, counted where the results are written.
    pub expect: Option<PassRate>,
}

/// One model's share of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelSummary {
    pub rows: u64,
    pub ok: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `null` when none of its answered rows could be priced.
    #[serde(serialize_with = "round_opt_usd_json")]
    pub cost_usd: Option<f64>,
}

/// Rows that failed (or were skipped) for one reason, with the first of them as an example.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureGroup {
    pub status: RowStatus,
    /// The short form of the reason ([`short_reason`]).
    pub reason: String,
    pub rows: u64,
    pub example: FailureExample,
}

/// The first row of a [`FailureGroup`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureExample {
    /// 1-based line of the input where the row starts, when known.
    pub line: Option<u64>,
    pub id: String,
    /// The row's whole error message.
    pub error: String,
}

/// The short form of a row's error, by which failures are grouped: its kind before the first
/// top-level `: ` (`server error (HTTP 503)`, `connection error`), without the `(after N
/// attempts)` tail, at most [`SHORT_REASON_CHARS`] characters.
pub fn short_reason(error: &str) -> String {
    let error = strip_attempts(error.trim());
    let mut depth = 0i32;
    let mut cut = error.len();
    for (i, c) in error.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ':' if depth == 0 && error[i + 1..].starts_with(' ') => {
                cut = i;
                break;
            }
            _ => {}
        }
    }
    truncate(&error[..cut], SHORT_REASON_CHARS)
}

/// Failure groups kept at most (plus one for the rest, [`OTHER_REASONS`]).
const MAX_FAILURE_GROUPS: usize = 100;
const OTHER_REASONS: &str = "other reasons (see the error column)";
/// Failure groups printed at most; the JSON has them all.
const PRINTED_FAILURE_GROUPS: usize = 10;

/// Longest short reason; longer ones end in `...`.
pub const SHORT_REASON_CHARS: usize = 72;

/// `text` cut to at most `max` characters, ending in `...` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max.saturating_sub(3)).collect();
    format!("{}...", kept.trim_end())
}

fn strip_attempts(error: &str) -> &str {
    match error.rfind(" (after ") {
        Some(i) if error.ends_with(" attempts)") || error.ends_with(" attempt)") => &error[..i],
        _ => error,
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            ok: 0,
            failed: 0,
            skipped: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            cached_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            cost_usd: 0.0,
            unpriced: 0,
            retries: 0,
            rate_limited: 0,
            resumed: 0,
            cache_hits: 0,
            sent: 0,
            failures: BTreeMap::new(),
            last_error: None,
            tokens_saved: 0,
            saved_usd: 0.0,
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            by_model: BTreeMap::new(),
            expect: None,
        }
    }
}

impl Stats {
    /// Counts a row of the results, whose input `line` is known (the failure report names it).
    pub fn record_row(&mut self, r: &RowResult, line: u64) {
        self.record(r);
        if let Some(g) = self.failures.get_mut(&(r.status, short_reason(&r.error)))
            && g.rows == 1
        {
            g.example.line = Some(line);
        }
    }

    pub fn record(&mut self, r: &RowResult) {
        self.record_failure(r);
        let m = match self.by_model.get_mut(&r.model) {
            Some(m) => m,
            None => self.by_model.entry(r.model.clone()).or_default(),
        };
        m.rows += 1;
        m.ok += u64::from(r.status == RowStatus::Ok);
        if let Some(u) = r.usage {
            m.prompt_tokens += u.prompt_tokens;
            m.completion_tokens += u.completion_tokens;
            if let Some(c) = r.cost {
                *m.cost_usd.get_or_insert(0.0) += c;
            }
        }
        match r.status {
            RowStatus::Ok => self.ok += 1,
            RowStatus::Failed => self.failed += 1,
            RowStatus::Skipped | RowStatus::Pending => self.skipped += 1,
        }
        self.retries += u64::from(r.attempts.saturating_sub(1));
        self.rate_limited += u64::from(r.throttled);
        if r.cached {
            self.cache_hits += 1;
            if let Some(u) = r.usage {
                self.tokens_saved += u.prompt_tokens + u.completion_tokens;
            }
            self.saved_usd += r.saved_usd.unwrap_or(0.0);
        }
        if let Some(u) = r.usage {
            self.prompt_tokens += u.prompt_tokens;
            self.completion_tokens += u.completion_tokens;
            self.cached_tokens += u.cached_tokens;
            self.cache_write_tokens += u.cache_write_tokens;
            self.reasoning_tokens += u.reasoning_tokens;
            match r.cost {
                Some(c) => self.cost_usd += c,
                None => self.unpriced += 1,
            }
        }
        if r.status == RowStatus::Ok
            && let Some(l) = r.latency
        {
            let micros = u64::try_from(l.as_micros()).unwrap_or(u64::MAX);
            self.latency.saturating_record(micros.max(1));
        }
    }

    /// Groups a failed or skipped row by its reason.
    fn record_failure(&mut self, r: &RowResult) {
        if r.status == RowStatus::Ok {
            if !r.cached {
                self.sent += 1;
            }
            return;
        }
        if r.status == RowStatus::Failed && !r.cached {
            self.sent += 1;
        }
        let mut reason = short_reason(&r.error);
        if r.status == RowStatus::Failed {
            self.last_error = Some(reason.clone());
        }
        if self.failures.len() >= MAX_FAILURE_GROUPS
            && !self.failures.contains_key(&(r.status, reason.clone()))
        {
            // Errors that share no kind would make a group each: past this many, one more.
            reason = OTHER_REASONS.into();
        }
        self.failures
            .entry((r.status, reason.clone()))
            .or_insert_with(|| FailureGroup {
                status: r.status,
                reason,
                rows: 0,
                example: FailureExample {
                    line: None,
                    id: r.id.clone(),
                    error: r.error.clone(),
                },
            })
            .rows += 1;
    }

    pub fn done(&self) -> u64 {
        self.ok + self.failed + self.skipped
    }

    /// The cost so far, or `None` if no answered row could be priced.
    pub fn known_cost(&self) -> Option<f64> {
        let priced = self.ok + self.failed - self.unpriced.min(self.ok + self.failed);
        (priced > 0 || self.unpriced == 0).then_some(self.cost_usd)
    }

    /// The failure groups, most rows first (failed before skipped on a tie).
    pub fn failure_groups(&self) -> Vec<FailureGroup> {
        let mut groups: Vec<FailureGroup> = self.failures.values().cloned().collect();
        groups.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.status.cmp(&b.status)));
        groups
    }

    pub fn summary(&self, wall: Duration, output: &Path, model: &str) -> Summary {
        let secs = wall.as_secs_f64();
        let pct = |q: f64| {
            (!self.latency.is_empty()).then(|| self.latency.value_at_quantile(q) as f64 / 1000.0)
        };
        Summary {
            rows: self.done(),
            ok: self.ok,
            failed: self.failed,
            skipped: self.skipped,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.prompt_tokens + self.completion_tokens,
            cached_tokens: self.cached_tokens,
            cache_write_tokens: self.cache_write_tokens,
            reasoning_tokens: self.reasoning_tokens,
            cost_usd: self.known_cost(),
            spent_usd: None,
            unpriced_rows: self.unpriced,
            retries: self.retries,
            rate_limited: self.rate_limited,
            resumed: self.resumed,
            cache_hits: self.cache_hits,
            tokens_saved: self.tokens_saved,
            saved_usd: self.saved_usd,
            wall_seconds: secs,
            sent_rows: self.sent,
            rows_per_second: if secs > 0.0 {
                self.sent as f64 / secs
            } else {
                0.0
            },
            failures: self.failure_groups(),
            next: None,
            batch_api: false,
            latency_ms: Latency {
                p50: pct(0.50),
                p90: pct(0.90),
                p95: pct(0.95),
                p99: pct(0.99),
                max: pct(1.0),
            },
            model: model.to_string(),
            models: if self.by_model.len() > 1 {
                self.by_model.clone()
            } else {
                BTreeMap::new()
            },
            output: output.display().to_string(),
            stopped: None,
            expect: self.expect.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

/// The end-of-run report, also written by `--summary-json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub rows: u64,
    pub ok: u64,
    pub failed: u64,
    pub skipped: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Of `prompt_tokens`: read from the provider's prompt cache (billed at the cached rate) and
    /// written to it (Anthropic, billed at the cache-write rate).
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    /// Of `completion_tokens`: spent reasoning (billed as output, never shown).
    pub reasoning_tokens: u64,
    /// `null` when no row's model has a known price.
    #[serde(serialize_with = "round_opt_usd_json")]
    pub cost_usd: Option<f64>,
    /// Under `--max-cost`: what the whole run (resumed parts, retries and requests whose
    /// answer was lost included) counts as spent against the cap, at most what was billed
    /// plus the worst case of the attempts whose cost could not be known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spent_usd: Option<f64>,
    pub unpriced_rows: u64,
    pub retries: u64,
    pub rate_limited: u64,
    pub resumed: u64,
    pub cache_hits: u64,
    pub tokens_saved: u64,
    #[serde(serialize_with = "round_usd_json")]
    pub saved_usd: f64,
    pub wall_seconds: f64,
    /// Rows this run sent requests for and finished (not from the cache, not from an earlier
    /// part of a resumed run, not skipped).
    pub sent_rows: u64,
    /// `sent_rows` over `wall_seconds`: the rate of this run's own requests.
    pub rows_per_second: f64,
    pub latency_ms: Latency,
    pub model: String,
    /// Totals per model, when rows went to more than one.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ModelSummary>,
    pub output: String,
    /// Why the run stopped before the end, if it did.
    pub stopped: Option<String>,
    /// Failed and skipped rows by reason, most rows first.
    pub failures: Vec<FailureGroup>,
    /// The command that continues the run (`--resume`, `--retry-failed`), when rows are left.
    pub next: Option<String>,
    /// The rows went through a provider's Batch API: no rate or latency of our own requests.
    #[serde(skip)]
    pub batch_api: bool,
    /// With `--expect`: answers compared with the expected column and how many matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<PassRate>,
}

impl Summary {
    /// The rows were answered through a Batch API (`collect`): no rows were sent one by one,
    /// so there is no rate (`collect` without `--wait` would show thousands of rows/s).
    pub fn through_batch_api(&mut self) {
        self.batch_api = true;
        self.sent_rows = 0;
        self.rows_per_second = 0.0;
    }

    /// Makes rows/s count only `live`'s rows: those this process sent, not rows an earlier
    /// part of a resumed run finished, cached answers or rows skipped by a stop.
    pub fn count_only(&mut self, live: &Stats) {
        self.sent_rows = live.sent;
        self.rows_per_second = if self.wall_seconds > 0.0 {
            live.sent as f64 / self.wall_seconds
        } else {
            0.0
        };
    }

    pub fn print(&self, w: &mut (impl Write + ?Sized)) -> std::io::Result<()> {
        writeln!(w)?;
        if let Some(reason) = &self.stopped {
            writeln!(w, "Stopped early: {reason}")?;
        }
        writeln!(
            w,
            "Rows       {} ok, {} failed, {} skipped ({} total{})",
            self.ok,
            self.failed,
            self.skipped,
            self.rows,
            if self.resumed > 0 {
                format!(", {} from the earlier run", self.resumed)
            } else {
                String::new()
            }
        )?;
        writeln!(w, "Tokens     {}", self.tokens_line())?;
        writeln!(w, "Cost       {}", self.cost_line())?;
        if let Some(spent) = self.spent_usd {
            let spent = human::usd((spent * 1e6).ceil() / 1e6);
            writeln!(w, "Spent      {spent} at most, counted against --max-cost")?;
        }
        for (name, m) in &self.models {
            writeln!(
                w,
                "  {name:<22} {} ({} ok), {} prompt + {} completion tokens, {}",
                human::count(m.rows, "row"),
                m.ok,
                m.prompt_tokens,
                m.completion_tokens,
                m.cost_usd.map_or("cost unknown".into(), human::usd)
            )?;
        }
        if self.cache_hits > 0 {
            writeln!(
                w,
                "Cache      {} reused, {} tokens and {} saved",
                human::count(self.cache_hits, "answer"),
                self.tokens_saved,
                human::usd(self.saved_usd)
            )?;
        }
        writeln!(w, "Time       {}", self.time_line())?;
        // No latency without requests (a run answered from the cache, the Batch API).
        if !self.batch_api && self.latency_ms.p50.is_some() {
            writeln!(w, "Latency    {}", self.latency_line())?;
        }
        if let Some(e) = &self.expect {
            let rate = e.rate.map_or("-".into(), |r| format!("{:.1}%", r * 100.0));
            writeln!(
                w,
                "Expect     {} of {} match column {:?} ({}): pass rate {rate}",
                e.matched,
                human::count(e.compared, "answer"),
                e.column,
                e.label()
            )?;
        }
        writeln!(w, "Results    {}", self.output)?;
        self.print_failures(w)
    }

    /// What `-q` still prints: why the run stopped (unless `stop_said`: the run printed it as
    /// it stopped), the failures by reason and the command that continues it. Nothing for a
    /// clean run.
    pub fn print_problems(
        &self,
        w: &mut (impl Write + ?Sized),
        stop_said: bool,
    ) -> std::io::Result<()> {
        if let Some(reason) = self.stopped.as_ref().filter(|_| !stop_said) {
            writeln!(w, "Stopped early: {reason}")?;
        }
        self.print_failures(w)
    }

    /// One line per reason rows failed or were skipped, with the first row that had it, then
    /// the command to continue.
    fn print_failures(&self, w: &mut (impl Write + ?Sized)) -> std::io::Result<()> {
        let heading = |status: RowStatus| match status {
            RowStatus::Skipped => "Skipped   ",
            _ => "Failed    ",
        };
        for g in self.failures.iter().take(PRINTED_FAILURE_GROUPS) {
            let mut line = format!(
                "{} {}: {}",
                heading(g.status),
                human::count(g.rows, "row"),
                g.reason
            );
            let e = &g.example;
            let at = e.line.map_or(String::new(), |l| format!("line {l}, "));
            let detail = strip_attempts(&e.error)
                .get(g.reason.len()..)
                .map(|d| d.trim_start_matches(':').trim())
                // A skipped row's reason is why the run stopped, said once already.
                .filter(|d| {
                    !d.is_empty() && !g.reason.ends_with("...") && g.status != RowStatus::Skipped
                });
            match detail {
                Some(d) => line.push_str(&format!(
                    "\n             e.g. {at}id {:?}: {}",
                    e.id,
                    truncate(d, 100)
                )),
                None => line.push_str(&format!(" (e.g. {at}id {:?})", e.id)),
            }
            writeln!(w, "{line}")?;
        }
        if let Some(rest) = self
            .failures
            .get(PRINTED_FAILURE_GROUPS..)
            .filter(|r| !r.is_empty())
        {
            let rows: u64 = rest.iter().map(|g| g.rows).sum();
            writeln!(
                w,
                "           and {} with {} more reasons (--summary-json lists them all)",
                human::count(rows, "row"),
                rest.len()
            )?;
        }
        if let Some(next) = &self.next {
            writeln!(w, "Next       {next}")?;
        }
        Ok(())
    }

    /// `2.3 s, 300 rows sent, 129.2 rows/s, 0 retries (0 rate-limited)`: the rate counts only
    /// the rows this run sent.
    fn time_line(&self) -> String {
        let wall = human::duration(Duration::from_secs_f64(self.wall_seconds.max(0.0)));
        if self.batch_api {
            return format!("{wall} (through the Batch API, which has no rate of its own)");
        }
        let rate = if self.sent_rows > 0 {
            format!(
                "{} sent, {} rows/s",
                human::count(self.sent_rows, "row"),
                human::rate(self.rows_per_second)
            )
        } else {
            "no rows sent".into()
        };
        format!(
            "{wall}, {rate}, {} ({} rate-limited)",
            human::count_as(self.retries, "retry", "retries"),
            self.rate_limited
        )
    }

    /// `p50 102 ms, p95 107 ms, p99 110 ms, max 30.0 s`: the max shows the rows a percentile
    /// hides.
    fn latency_line(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".into(), human::millis);
        let l = &self.latency_ms;
        format!(
            "p50 {}, p95 {}, p99 {}, max {}",
            ms(l.p50),
            ms(l.p95),
            ms(l.p99),
            ms(l.max)
        )
    }

    /// `2000 prompt (1024 cached) + 100 completion (64 reasoning) = 2100`: the parts in
    /// brackets only when there are some.
    fn tokens_line(&self) -> String {
        let parts = |p: &[(u64, &str)]| {
            let p: Vec<String> = p
                .iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, what)| format!("{n} {what}"))
                .collect();
            if p.is_empty() {
                String::new()
            } else {
                format!(" ({})", p.join(", "))
            }
        };
        format!(
            "{} prompt{} + {} completion{} = {}",
            self.prompt_tokens,
            parts(&[
                (self.cached_tokens, "cached"),
                (self.cache_write_tokens, "cache writes"),
            ]),
            self.completion_tokens,
            parts(&[(self.reasoning_tokens, "reasoning")]),
            self.total_tokens
        )
    }

    /// The cost, saying which rows it leaves out or why it is unknown.
    fn cost_line(&self) -> String {
        match self.cost_usd {
            Some(c) if self.unpriced_rows > 0 => format!(
                "{} (plus {} {} with no known price; see --price-file)",
                human::usd(c),
                human::count(self.unpriced_rows, "row"),
                if self.models.is_empty() {
                    format!("of {}", self.model)
                } else {
                    "of models".into()
                }
            ),
            Some(c) => human::usd(c),
            None => format!("unknown: no price for {} (see --price-file)", self.model),
        }
    }

    /// Writes the summary as JSON to `path`, or to stdout for `-` (as every output option).
    pub fn write_json(&self, path: &Path) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(self).expect("summary serializes") + "\n";
        if crate::base::format::is_std(path) {
            use std::io::Write as _;
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            return Ok(());
        }
        std::fs::write(path, text).map_err(|e| {
            Error::Usage(format!(
                "cannot write --summary-json {}: {}",
                path.display(),
                describe_io(&e)
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::usage::Usage;

    fn result(status: RowStatus, attempts: u32, ms: u64, cost: Option<f64>) -> RowResult {
        RowResult {
            seq: 0,
            id: "1".into(),
            status,
            output: String::new(),
            error: String::new(),
            attempts,
            throttled: 0,
            latency: Some(Duration::from_millis(ms)),
            usage: (status != RowStatus::Skipped).then_some(Usage {
                prompt_tokens: 10,
                completion_tokens: 2,
                ..Default::default()
            }),
            cost,
            model: "m".into(),
            finish_reason: String::new(),
            cached: false,
            saved_usd: None,
        }
    }

    #[test]
    fn totals_and_percentiles() {
        let mut s = Stats::default();
        for ms in 1..=100 {
            s.record(&result(RowStatus::Ok, 1, ms, Some(0.01)));
        }
        s.record(&result(RowStatus::Ok, 3, 50, Some(0.01)));
        s.record(&RowResult::skipped(0, "x".into(), "m", "stop"));
        let sum = s.summary(Duration::from_secs(2), Path::new("o.csv"), "m");
        assert_eq!(
            (sum.ok, sum.skipped, sum.rows, sum.retries),
            (101, 1, 102, 2)
        );
        assert_eq!(sum.total_tokens, 101 * 12);
        assert!((sum.cost_usd.unwrap() - 1.01).abs() < 1e-9);
        assert!(sum.models.is_empty(), "one model, no breakdown");
        let p50 = sum.latency_ms.p50.unwrap();
        assert!((49.0..=52.0).contains(&p50), "{p50}");
        // The skipped row was never sent: rows/s counts the 101 sent in 2 s.
        assert_eq!(sum.sent_rows, 101);
        assert!((sum.rows_per_second - 50.5).abs() < 1e-9);
    }

    #[test]
    fn cached_and_reasoning_tokens_are_totalled_and_shown() {
        let mut s = Stats::default();
        let mut r = result(RowStatus::Ok, 1, 5, Some(0.01));
        r.usage = Some(Usage {
            prompt_tokens: 2000,
            completion_tokens: 100,
            cached_tokens: 1024,
            cache_write_tokens: 0,
            reasoning_tokens: 64,
        });
        s.record(&r);
        s.record(&r);
        let sum = s.summary(Duration::from_secs(1), Path::new("o.csv"), "m");
        assert_eq!((sum.cached_tokens, sum.reasoning_tokens), (2048, 128));
        let mut text = Vec::new();
        sum.print(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("4000 prompt (2048 cached) + 200 completion (128 reasoning) = 4200"),
            "{text}"
        );
        let json = serde_json::to_value(&sum).unwrap();
        assert_eq!(json["cached_tokens"], 2048);
        assert_eq!(json["reasoning_tokens"], 128);
        assert_eq!(json["cache_write_tokens"], 0);
    }

    #[test]
    fn unknown_price_is_not_a_zero() {
        let mut s = Stats::default();
        s.record(&result(RowStatus::Ok, 1, 5, None));
        let sum = s.summary(Duration::from_secs(1), Path::new("o.csv"), "mystery");
        assert_eq!(sum.cost_usd, None);
        let mut text = Vec::new();
        sum.print(&mut text).unwrap();
        assert!(
            String::from_utf8(text)
                .unwrap()
                .contains("unknown: no price for mystery")
        );
    }

    #[test]
    fn several_models_get_a_breakdown_each_priced_on_its_own() {
        let mut s = Stats::default();
        for (model, cost) in [
            ("a", Some(0.5)),
            ("b", Some(0.25)),
            ("a", Some(0.5)),
            ("c", None),
        ] {
            let mut r = result(RowStatus::Ok, 1, 5, cost);
            r.model = model.into();
            s.record(&r);
        }
        let sum = s.summary(Duration::from_secs(1), Path::new("o.csv"), "a");
        assert_eq!(sum.models.len(), 3);
        assert_eq!(
            (sum.models["a"].rows, sum.models["a"].cost_usd),
            (2, Some(1.0))
        );
        assert_eq!(sum.models["b"].prompt_tokens, 10);
        assert_eq!(sum.models["c"].cost_usd, None);
        let json = serde_json::to_value(&sum).unwrap();
        assert_eq!(json["models"]["b"]["cost_usd"], 0.25);
        let mut text = Vec::new();
        sum.print(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("cost unknown") && text.contains("2 rows (2 ok)"),
            "{text}"
        );
    }

    fn failed(id: &str, error: &str) -> RowResult {
        let mut r = result(RowStatus::Failed, 3, 5, Some(0.001));
        r.id = id.into();
        r.error = error.into();
        r
    }

    fn printed(sum: &Summary, quiet: bool) -> String {
        let mut text = Vec::new();
        if quiet {
            sum.print_problems(&mut text, false).unwrap();
        } else {
            sum.print(&mut text).unwrap();
        }
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn short_reasons_are_the_error_kind_without_attempts() {
        assert_eq!(
            short_reason("server error (HTTP 503): overloaded (after 7 attempts)"),
            "server error (HTTP 503)"
        );
        assert_eq!(
            short_reason("connection error: error sending request: x (after 2 attempts)"),
            "connection error"
        );
        assert_eq!(short_reason("interrupted"), "interrupted");
        let long = "the API reports the account is out of quota (quota exhausted (HTTP 429): \
                    insufficient_quota: ...); add credit or raise the limit, then run again";
        let short = short_reason(long);
        assert!(short.ends_with("...") && short.chars().count() <= SHORT_REASON_CHARS);
    }

    #[test]
    fn failures_are_grouped_by_reason_with_an_example_row_and_the_next_command() {
        let mut s = Stats::default();
        s.record_row(&result(RowStatus::Ok, 1, 5, Some(0.001)), 2);
        s.record_row(
            &failed("a", "server error (HTTP 503): busy (after 7 attempts)"),
            3,
        );
        s.record_row(
            &failed("b", "server error (HTTP 503): busier (after 7 attempts)"),
            4,
        );
        s.record_row(
            &failed("c", "connection error: refused (after 7 attempts)"),
            9,
        );
        s.record_row(&RowResult::skipped(4, "d".into(), "m", "interrupted"), 10);
        let mut sum = s.summary(Duration::from_secs(1), Path::new("o.csv"), "m");
        assert_eq!(sum.failures.len(), 3);
        let first = &sum.failures[0];
        assert_eq!(
            (first.reason.as_str(), first.rows),
            ("server error (HTTP 503)", 2)
        );
        assert_eq!(
            (first.example.line, first.example.id.as_str()),
            (Some(3), "a")
        );
        sum.next = Some("batch run in.csv --resume --retry-failed".into());
        let text = printed(&sum, false);
        assert!(
            text.contains("Failed     2 rows: server error (HTTP 503)"),
            "{text}"
        );
        assert!(text.contains("e.g. line 3, id \"a\": busy"), "{text}");
        assert!(
            text.contains("Failed     1 row: connection error"),
            "{text}"
        );
        assert!(
            text.contains("Skipped    1 row: interrupted (e.g. line 10, id \"d\")"),
            "{text}"
        );
        assert!(
            text.contains("Next       batch run in.csv --resume --retry-failed"),
            "{text}"
        );
        let json = serde_json::to_value(&sum).unwrap();
        assert_eq!(json["failures"][0]["rows"], 2);
        assert_eq!(json["failures"][0]["example"]["line"], 3);
    }

    #[test]
    fn quiet_keeps_the_stop_reason_and_failures_and_nothing_else() {
        let mut s = Stats::default();
        s.record_row(&result(RowStatus::Ok, 1, 5, Some(0.001)), 2);
        let clean = s.summary(Duration::from_secs(1), Path::new("o.csv"), "m");
        assert_eq!(
            printed(&clean, true),
            "",
            "a clean run says nothing with -q"
        );
        s.record_row(
            &failed("x", "quota exhausted (HTTP 429): insufficient_quota"),
            3,
        );
        let mut sum = s.summary(Duration::from_secs(1), Path::new("o.csv"), "m");
        sum.stopped = Some("out of quota".into());
        let text = printed(&sum, true);
        assert!(text.starts_with("Stopped early: out of quota\n"), "{text}");
        assert!(text.contains("quota exhausted (HTTP 429)"), "{text}");
        assert!(!text.contains("Tokens"), "{text}");
    }

    #[test]
    fn rates_count_this_runs_rows_and_latency_shows_the_max() {
        let mut all = Stats::default();
        let mut live = Stats::default();
        for ms in [100, 100, 30_000] {
            all.record(&result(RowStatus::Ok, 1, ms, Some(0.001)));
        }
        live.record(&result(RowStatus::Ok, 1, 100, Some(0.001)));
        let mut sum = all.summary(Duration::from_secs(2), Path::new("o.csv"), "m");
        sum.count_only(&live);
        assert_eq!(sum.sent_rows, 1);
        let text = printed(&sum, false);
        assert!(
            text.contains("Time       2.0 s, 1 row sent, 0.50 rows/s, 0 retries"),
            "{text}"
        );
        assert!(text.contains(", max 30.0 s"), "{text}");
        let mut cached = Stats::default();
        let mut hit = result(RowStatus::Ok, 1, 1, Some(0.0));
        hit.cached = true;
        cached.record(&hit);
        let sum = cached.summary(Duration::from_secs(1), Path::new("o.csv"), "m");
        assert!(printed(&sum, false).contains("Time       1.0 s, no rows sent,"));
    }

    #[test]
    fn json_costs_are_rounded_to_price_precision() {
        let mut s = Stats::default();
        for _ in 0..1967 {
            s.record(&result(RowStatus::Ok, 1, 5, Some(0.0000556)));
        }
        let sum = s.summary(Duration::from_secs(1), Path::new("o.csv"), "m");
        let json = serde_json::to_string(&sum).unwrap();
        assert!(json.contains("\"cost_usd\":0.1093652,"), "{json}");
    }

    #[test]
    fn many_reasons_are_capped_in_memory_and_on_screen() {
        let mut s = Stats::default();
        for i in 0..150 {
            s.record_row(
                &failed(&i.to_string(), &format!("odd error number {i}")),
                i + 2,
            );
        }
        let sum = s.summary(Duration::from_secs(1), Path::new("o.csv"), "m");
        assert_eq!(sum.failures.len(), MAX_FAILURE_GROUPS + 1);
        assert_eq!(sum.failures[0].reason, OTHER_REASONS);
        assert_eq!(sum.failures[0].rows, 50);
        let text = printed(&sum, true);
        assert_eq!(
            text.matches("Failed     ").count(),
            PRINTED_FAILURE_GROUPS,
            "{text}"
        );
        assert!(text.contains("and 91 rows with 91 more reasons"), "{text}");
    }
}

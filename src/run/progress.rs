//! The live progress line on stderr: rows done of total, this run's rate, ETA, cost and tokens,
//! and, once something goes wrong, a second line with failures, retries, 429s and the latest
//! error. Hidden when stderr is not a terminal (logs and CI stay clean) or with `--quiet`.
//!
//! The rate counts only rows this run sent and finished (answered or failed): not rows an
//! earlier part of a resumed run finished, not answers from the cache. The ETA follows from it
//! and is left out until there is a rate, so a dead server never shows "ETA 0s". Both lines are
//! cut to the terminal's width by dropping whole fields, so a number is never wrapped.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::base::human;
use crate::run::summary::Stats;

/// Columns the template takes before the message: spinner, elapsed time and the bar.
const PREFIX_COLUMNS: usize = 30;

pub struct Progress {
    bar: ProgressBar,
    /// Rows finished by an earlier part of a resumed run.
    offset: std::sync::atomic::AtomicU64,
    started: Instant,
}

/// What the live line shows, taken from the run's live totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveFields {
    /// Rows finished, earlier parts of a resumed run included, of `total`.
    pub done: u64,
    pub total: u64,
    /// Rows this run sent and finished: what the rate counts.
    pub sent: u64,
    pub elapsed: Duration,
    pub tokens: u64,
    /// `None` when no answered row could be priced.
    pub cost: Option<f64>,
    pub failed: u64,
    pub retries: u64,
    pub rate_limited: u64,
    /// Short form of the latest row error.
    pub last_error: Option<String>,
}

impl LiveFields {
    fn of(stats: &Stats, offset: u64, total: u64, elapsed: Duration) -> Self {
        LiveFields {
            done: offset + stats.done(),
            total,
            sent: stats.sent,
            elapsed,
            tokens: stats.prompt_tokens + stats.completion_tokens,
            cost: stats.known_cost(),
            failed: stats.failed,
            retries: stats.retries,
            rate_limited: stats.rate_limited,
            last_error: stats.last_error.clone(),
        }
    }

    /// Rows per second this run sent, `None` before there is one.
    fn rate(&self) -> Option<f64> {
        let secs = self.elapsed.as_secs_f64();
        (self.sent > 0 && secs > 0.0).then(|| self.sent as f64 / secs)
    }
}

/// The message after the bar: the first line in `width` columns, then (when something failed,
/// was retried or rate-limited) a second line in `full_width` columns.
pub fn live_line(f: &LiveFields, width: usize, full_width: usize) -> String {
    let mut first = vec![format!("{}/{} rows", f.done, f.total)];
    if let Some(rate) = f.rate() {
        first.push(human::per_sec(rate));
        let left = f.total.saturating_sub(f.done);
        if left > 0 {
            let eta = Duration::from_secs_f64(left as f64 / rate);
            first.push(format!("ETA {}", human::duration(eta)));
        }
    }
    first.push(f.cost.map_or("cost unknown".into(), human::usd));
    first.push(format!("{} tokens", f.tokens));
    let mut line = fit(&first, "  ", width);
    let mut second = Vec::new();
    if f.failed > 0 {
        second.push(format!("{} failed", f.failed));
    }
    if f.retries > 0 {
        second.push(human::count_as(f.retries, "retry", "retries"));
    }
    if f.rate_limited > 0 {
        second.push(format!("{} rate-limited (429)", f.rate_limited));
    }
    if !second.is_empty() {
        let mut text = fit(&second, ", ", full_width);
        if let Some(e) = &f.last_error {
            let room = full_width.saturating_sub(text.chars().count() + "; last: ".len());
            if room >= 12 {
                text.push_str("; last: ");
                text.push_str(&crate::run::summary::truncate(e, room));
            }
        }
        line.push('\n');
        line.push_str(&text);
    }
    line
}

/// The fields that fit in `width` columns, in order, joined by `sep`; the first always.
fn fit(fields: &[String], sep: &str, width: usize) -> String {
    let mut out = String::new();
    for (i, f) in fields.iter().enumerate() {
        let extra = if i == 0 { 0 } else { sep.len() };
        if i > 0 && out.chars().count() + extra + f.chars().count() > width {
            break;
        }
        if i > 0 {
            out.push_str(sep);
        }
        out.push_str(f);
    }
    out
}

impl Progress {
    pub fn new(total: u64, quiet: bool) -> Self {
        let bar = if quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:20}] {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        };
        Progress {
            bar,
            offset: Default::default(),
            started: Instant::now(),
        }
    }

    /// Counts `rows` as done already (a resumed run).
    pub fn start_at(&self, rows: u64) {
        self.offset
            .store(rows, std::sync::atomic::Ordering::Relaxed);
        self.bar.set_position(rows);
    }

    pub fn update(&self, stats: &Stats) {
        if self.bar.is_hidden() {
            return;
        }
        let offset = self.offset.load(std::sync::atomic::Ordering::Relaxed);
        let total = self.bar.length().unwrap_or(0);
        let fields = LiveFields::of(stats, offset, total, self.started.elapsed());
        self.bar.set_position(fields.done);
        let columns = usize::from(console::Term::stderr().size().1).max(40);
        let width = columns.saturating_sub(PREFIX_COLUMNS + 1);
        self.bar
            .set_message(live_line(&fields, width, columns.saturating_sub(1)));
    }

    /// Prints a line above the bar (or plainly to stderr when it is hidden).
    pub fn println(&self, msg: &str) {
        if self.bar.is_hidden() {
            eprintln!("{msg}");
        } else {
            self.bar.println(msg);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> LiveFields {
        LiveFields {
            done: 164,
            total: 300,
            sent: 64,
            elapsed: Duration::from_millis(2400),
            tokens: 18322,
            cost: Some(0.0137512),
            ..Default::default()
        }
    }

    #[test]
    fn the_rate_counts_only_rows_this_run_sent() {
        // 100 rows came from an earlier run: 64 sent in 2.4 s is 26.7/s, not 68.3/s.
        let line = live_line(&fields(), 200, 200);
        assert_eq!(
            line,
            "164/300 rows  26.7/s  ETA 5.1 s  $0.0137512  18322 tokens"
        );
    }

    #[test]
    fn no_eta_without_a_rate() {
        let mut f = fields();
        f.sent = 0;
        f.failed = 3;
        f.last_error = Some("connection error".into());
        let line = live_line(&f, 200, 200);
        assert!(!line.contains("ETA") && !line.contains("/s"), "{line}");
        assert!(
            line.ends_with("\n3 failed; last: connection error"),
            "{line}"
        );
    }

    #[test]
    fn trouble_shows_failures_retries_429s_and_the_latest_error() {
        let mut f = fields();
        f.failed = 2;
        f.retries = 1;
        f.rate_limited = 7;
        f.last_error = Some("server error (HTTP 503)".into());
        let line = live_line(&f, 200, 200);
        let second = line.lines().nth(1).unwrap();
        assert_eq!(
            second,
            "2 failed, 1 retry, 7 rate-limited (429); last: server error (HTTP 503)"
        );
    }

    #[test]
    fn lines_fit_80_columns_without_cutting_a_number() {
        let mut f = fields();
        f.done = 1_234_567;
        f.total = 2_000_000;
        f.sent = 1_234_567;
        f.tokens = 123_456_789;
        f.failed = 12345;
        f.retries = 67890;
        f.rate_limited = 4321;
        f.last_error = Some("x".repeat(200));
        let line = live_line(&f, 80 - PREFIX_COLUMNS - 1, 79);
        let mut lines = line.lines();
        let first = lines.next().unwrap();
        assert!(PREFIX_COLUMNS + first.chars().count() < 80, "{first}");
        assert!(first.starts_with("1234567/2000000 rows"), "{first}");
        for field in first.split("  ") {
            assert!(
                field.ends_with("rows") || field.ends_with("/s") || field.starts_with("ETA"),
                "a whole field: {field}"
            );
        }
        let second = lines.next().unwrap();
        assert!(second.chars().count() < 80, "{second}");
        assert!(second.starts_with("12345 failed, 67890 retries, 4321 rate-limited"));
    }
}

//! The numbers of a sweep, the recommendation, and the exporters.
//!
//! Every exporter is a pure function from a [`Report`] to a `String` (as hyperfine's are), so
//! the table on stdout and the files written by `--export-*` are the same text and can be
//! checked against each other and against snapshots.

use std::path::Path;

use serde::{Serialize, Serializer};

use crate::engine::concurrency::Concurrency;
use crate::run::summary::Summary;

/// A setting within this fraction of the best throughput counts as as good as the best.
const WITHIN: f64 = 0.05;
/// p95 latency this much higher than the recommended setting's counts as "latency grows".
const LATENCY_GROWTH: f64 = 0.10;

/// The flag's spelling of a setting: `16`, `auto`.
pub(super) fn label(c: Concurrency) -> String {
    match c {
        Concurrency::Fixed(n) => n.to_string(),
        Concurrency::Auto => "auto".into(),
    }
}

fn serialize_setting<S: Serializer>(c: &Concurrency, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&label(*c))
}

/// Latency percentiles of answered rows, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// One measured run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunMeasure {
    pub rows: u64,
    pub ok: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Attempts beyond the first, over all rows.
    pub retries: u64,
    /// Attempts answered 429.
    pub rate_limited: u64,
    pub total_tokens: u64,
    pub cost_usd: Option<f64>,
    pub wall_seconds: f64,
    /// Rows over the run's wall time, start-up and the last half-empty round included.
    pub end_to_end_rows_per_second: f64,
    /// Rows per second while every slot was busy (see [`super::measure`]).
    pub sustained_rows_per_second: Option<f64>,
    pub latency_ms: Latency,
    /// Why the run stopped early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

impl RunMeasure {
    pub fn new(s: &Summary, sustained: Option<f64>) -> Self {
        RunMeasure {
            rows: s.rows,
            ok: s.ok,
            failed: s.failed,
            skipped: s.skipped,
            retries: s.retries,
            rate_limited: s.rate_limited,
            total_tokens: s.total_tokens,
            cost_usd: s.cost_usd,
            wall_seconds: s.wall_seconds,
            end_to_end_rows_per_second: s.rows_per_second,
            sustained_rows_per_second: sustained,
            latency_ms: Latency {
                p50: s.latency_ms.p50,
                p90: s.latency_ms.p90,
                p95: s.latency_ms.p95,
                p99: s.latency_ms.p99,
            },
            stopped: s.stopped.clone(),
        }
    }

    /// The sustained rate when it could be measured, else the end-to-end one.
    pub fn rows_per_second(&self) -> f64 {
        self.sustained_rows_per_second
            .unwrap_or(self.end_to_end_rows_per_second)
    }

    pub fn tokens_per_second(&self) -> f64 {
        if self.rows == 0 {
            return 0.0;
        }
        self.total_tokens as f64 / self.rows as f64 * self.rows_per_second()
    }

    /// 429s over attempts (rows plus retries).
    pub fn rate_429(&self) -> f64 {
        ratio(self.rate_limited, self.rows + self.retries)
    }

    /// Failed rows over rows.
    pub fn error_rate(&self) -> f64 {
        ratio(self.failed, self.rows)
    }

    pub fn cost_per_1000_rows(&self) -> Option<f64> {
        let c = self.cost_usd?;
        (self.rows > 0).then(|| c / self.rows as f64 * 1000.0)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// One setting: the median of its runs, and their spread.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingResult {
    #[serde(serialize_with = "serialize_setting")]
    pub concurrency: Concurrency,
    /// Median rows per second (sustained where measured, see [`RunMeasure::rows_per_second`]).
    pub rows_per_second: f64,
    pub rows_per_second_min: f64,
    pub rows_per_second_max: f64,
    /// Sample standard deviation over the runs; `None` with one run.
    pub rows_per_second_stddev: Option<f64>,
    /// Whether every run's rows/s is the sustained rate (else some are end to end).
    pub sustained: bool,
    pub end_to_end_rows_per_second: f64,
    pub tokens_per_second: f64,
    pub latency_ms: Latency,
    /// 429s over attempts.
    pub rate_429: f64,
    /// Failed rows over rows.
    pub error_rate: f64,
    /// Retries per run.
    pub retries: f64,
    pub cost_per_1000_rows: Option<f64>,
    pub runs: Vec<RunMeasure>,
}

impl SettingResult {
    /// Medians of `runs` (at least one).
    pub fn from_runs(concurrency: Concurrency, runs: Vec<RunMeasure>) -> Self {
        assert!(!runs.is_empty(), "a setting has at least one run");
        let of = |f: &dyn Fn(&RunMeasure) -> f64| median(runs.iter().map(f).collect());
        let opt = |f: &dyn Fn(&RunMeasure) -> Option<f64>| {
            let v: Vec<f64> = runs.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| median(v))
        };
        let rates: Vec<f64> = runs.iter().map(RunMeasure::rows_per_second).collect();
        SettingResult {
            concurrency,
            rows_per_second: median(rates.clone()),
            rows_per_second_min: rates.iter().copied().fold(f64::INFINITY, f64::min),
            rows_per_second_max: rates.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            rows_per_second_stddev: stddev(&rates),
            sustained: runs.iter().all(|r| r.sustained_rows_per_second.is_some()),
            end_to_end_rows_per_second: of(&|r| r.end_to_end_rows_per_second),
            tokens_per_second: of(&RunMeasure::tokens_per_second),
            latency_ms: Latency {
                p50: opt(&|r| r.latency_ms.p50),
                p90: opt(&|r| r.latency_ms.p90),
                p95: opt(&|r| r.latency_ms.p95),
                p99: opt(&|r| r.latency_ms.p99),
            },
            rate_429: of(&RunMeasure::rate_429),
            error_rate: of(&RunMeasure::error_rate),
            retries: of(&|r| r.retries as f64),
            cost_per_1000_rows: if runs.iter().all(|r| r.cost_per_1000_rows().is_some()) {
                opt(&RunMeasure::cost_per_1000_rows)
            } else {
                None
            },
            runs,
        }
    }

    fn point(&self) -> Point {
        Point {
            setting: self.concurrency,
            rows_per_second: self.rows_per_second,
            p95_ms: self.latency_ms.p95,
            error_rate: self.error_rate,
            rate_429: self.rate_429,
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn stddev(v: &[f64]) -> Option<f64> {
    if v.len() < 2 {
        return None;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    Some(var.sqrt())
}

/// What the recommendation looks at, per setting.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    setting: Concurrency,
    rows_per_second: f64,
    p95_ms: Option<f64>,
    error_rate: f64,
    rate_429: f64,
}

impl Point {
    /// Rows answered without error per second: failing fast is not throughput.
    fn goodput(&self) -> f64 {
        self.rows_per_second * (1.0 - self.error_rate.clamp(0.0, 1.0))
    }
}

/// The setting to use and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    pub concurrency: usize,
    /// Its throughput (rows answered without error per second).
    pub rows_per_second: f64,
    pub best_concurrency: usize,
    pub best_rows_per_second: f64,
    pub reason: String,
}

/// The lowest fixed setting whose throughput (rows answered without error, per second) is
/// within 5% of the best, with the reason in words. `auto` is never recommended (a fixed value
/// behaves the same every night); see [`compare_auto`]. `None` when no fixed setting answered
/// a row.
fn recommend(points: &[Point]) -> Option<Recommendation> {
    let mut fixed: Vec<(usize, &Point)> = points
        .iter()
        .filter_map(|p| match p.setting {
            Concurrency::Fixed(n) => Some((n, p)),
            Concurrency::Auto => None,
        })
        .collect();
    fixed.sort_by_key(|(n, _)| *n);
    let (best_n, best) =
        fixed
            .iter()
            .fold(None, |acc: Option<(usize, f64)>, (n, p)| match acc {
                Some((_, b)) if p.goodput() <= b => acc,
                _ => Some((*n, p.goodput())),
            })?;
    if best.is_nan() || best <= 0.0 {
        return None;
    }
    let idx = fixed
        .iter()
        .position(|(_, p)| p.goodput() >= (1.0 - WITHIN) * best)
        .expect("the best is within 5% of itself");
    let (rec_n, rec) = fixed[idx];
    let mut parts = vec![if rec_n == best_n {
        format!("the best throughput, {} rows/s", fmt_rate(best))
    } else {
        format!(
            "within 5% of the best throughput, {} rows/s at {best_n}",
            fmt_rate(best)
        )
    }];
    let higher = &fixed[idx + 1..];
    let gain = if rec_n == best_n {
        "no throughput gain".to_string()
    } else {
        format!(
            "{:.0}% more throughput at most",
            (best / rec.goodput() - 1.0) * 100.0
        )
    };
    if higher.is_empty() {
        if idx == 0 {
            parts.push("the only fixed setting tried".into());
        } else if rec.goodput() > fixed[idx - 1].1.goodput() * (1.0 + WITHIN) {
            parts.push(format!(
                "throughput was still rising at {rec_n}, the largest setting tried; try larger \
                 values"
            ));
        }
    } else {
        let worst = higher
            .iter()
            .filter_map(|(n, p)| p.p95_ms.map(|l| (*n, l)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match (rec.p95_ms, worst) {
            (Some(a), Some((n, b))) if b > a * (1.0 + LATENCY_GROWTH) => parts.push(format!(
                "latency grows past {rec_n} (p95 {} at {rec_n}, {} at {n}) with {gain}",
                fmt_ms(Some(a)),
                fmt_ms(Some(b))
            )),
            _ => parts.push(format!("more concurrency brings {gain}")),
        }
        if rec.rate_429 == 0.0
            && let Some((n, p)) = higher.iter().find(|(_, p)| p.rate_429 > 0.0)
        {
            parts.push(format!(
                "429s start at {n} ({} of attempts)",
                fmt_pct(p.rate_429)
            ));
        }
        if let Some((n, p)) = higher
            .iter()
            .find(|(_, p)| p.error_rate > rec.error_rate + 0.01)
        {
            parts.push(format!("errors reach {} at {n}", fmt_pct(p.error_rate)));
        }
    }
    if fixed.iter().any(|(_, p)| p.error_rate > 0.0) {
        parts.push("throughput counts rows answered without error".into());
    }
    Some(Recommendation {
        concurrency: rec_n,
        rows_per_second: rec.goodput(),
        best_concurrency: best_n,
        best_rows_per_second: best,
        reason: parts.join("; "),
    })
}

/// How `auto` did, next to the recommended fixed setting.
fn compare_auto(points: &[Point], rec: Option<&Recommendation>) -> Option<String> {
    let auto = points.iter().find(|p| p.setting == Concurrency::Auto)?;
    let mut s = format!(
        "auto (reported, not recommended over a fixed value): {} rows/s, p95 {}",
        fmt_rate(auto.goodput()),
        fmt_ms(auto.p95_ms)
    );
    if let Some(r) = rec {
        let fixed = points
            .iter()
            .find(|p| p.setting == Concurrency::Fixed(r.concurrency));
        s.push_str(&format!(
            "; {:.0}% of --concurrency {}'s {} rows/s",
            auto.goodput() / r.rows_per_second * 100.0,
            r.concurrency,
            fmt_rate(r.rows_per_second)
        ));
        if let Some(p) = fixed.and_then(|p| p.p95_ms) {
            s.push_str(&format!(" (p95 {})", fmt_ms(Some(p))));
        }
    }
    Some(s)
}

/// Everything a sweep found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub input: String,
    pub model: String,
    pub endpoint: String,
    /// Rows per run.
    pub rows: u64,
    pub repeat: u32,
    pub settings: Vec<SettingResult>,
    pub recommendation: Option<Recommendation>,
    pub auto: Option<String>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(
        input: &Path,
        model: &str,
        endpoint: String,
        rows: u64,
        repeat: u32,
        settings: Vec<SettingResult>,
        notes: Vec<String>,
    ) -> Self {
        let points: Vec<Point> = settings.iter().map(SettingResult::point).collect();
        let recommendation = recommend(&points);
        let auto = compare_auto(&points, recommendation.as_ref());
        Report {
            input: input.display().to_string(),
            model: model.to_string(),
            endpoint,
            rows,
            repeat,
            settings,
            recommendation,
            auto,
            notes,
        }
    }

    /// The recommendation line, how auto compared, and the notes.
    pub fn conclusion(&self) -> String {
        let mut s = String::new();
        match &self.recommendation {
            Some(r) => s.push_str(&format!(
                "recommended: --concurrency {} ({})\n",
                r.concurrency, r.reason
            )),
            None => s.push_str("no recommendation: no fixed setting answered a row\n"),
        }
        if let Some(a) = &self.auto {
            s.push_str(a);
            s.push('\n');
        }
        if self.settings.iter().any(|r| !r.sustained) {
            s.push_str(
                "*: too few rows for a sustained rate (every row went out in one round); the \
                 end-to-end rate is shown\n",
            );
        }
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        s
    }

    fn is_recommended(&self, r: &SettingResult) -> bool {
        self.recommendation
            .as_ref()
            .is_some_and(|rec| r.concurrency == Concurrency::Fixed(rec.concurrency))
    }

    fn spread(&self) -> bool {
        self.settings.iter().any(|r| r.runs.len() > 1)
    }

    /// Header and cells of the human-readable tables (aligned and Markdown).
    fn cells(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let spread = self.spread();
        let mut head = vec!["concurrency", "rows/s"];
        if spread {
            head.extend(["min-max", "sd"]);
        }
        head.extend([
            "e2e rows/s",
            "tokens/s",
            "p50 ms",
            "p90 ms",
            "p95 ms",
            "p99 ms",
            "429s",
            "errors",
            "retries",
            "$/1k rows",
        ]);
        // A mark after a rate that is not sustained; the others get a space so the digits align.
        let marked = self.settings.iter().any(|r| !r.sustained);
        let rows = self
            .settings
            .iter()
            .map(|r| {
                let mark = match (r.sustained, marked) {
                    (false, _) => "*",
                    (true, true) => " ",
                    (true, false) => "",
                };
                let mut c = vec![
                    label(r.concurrency),
                    format!("{:.1}{mark}", r.rows_per_second),
                ];
                if spread {
                    c.push(format!(
                        "{:.1}-{:.1}",
                        r.rows_per_second_min, r.rows_per_second_max
                    ));
                    c.push(
                        r.rows_per_second_stddev
                            .map_or("-".into(), |v| format!("{v:.1}")),
                    );
                }
                c.extend([
                    format!("{:.1}", r.end_to_end_rows_per_second),
                    format!("{:.0}", r.tokens_per_second),
                    ms_cell(r.latency_ms.p50),
                    ms_cell(r.latency_ms.p90),
                    ms_cell(r.latency_ms.p95),
                    ms_cell(r.latency_ms.p99),
                    fmt_pct(r.rate_429),
                    fmt_pct(r.error_rate),
                    fmt_count(r.retries),
                    r.cost_per_1000_rows
                        .map_or("-".into(), |c| format!("{c:.4}")),
                ]);
                c
            })
            .collect();
        (head, rows)
    }

    fn title(&self) -> String {
        format!(
            "{} rows of {} x {} run{} per setting, {} on {}",
            self.rows,
            self.input,
            self.repeat,
            if self.repeat == 1 { "" } else { "s" },
            self.model,
            self.endpoint
        )
    }
}

/// The aligned table printed by default, then the conclusion.
pub(super) fn to_table(report: &Report) -> String {
    let (head, rows) = report.cells();
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut s = format!("{}\n\n", report.title());
    s.push_str(&line(
        &head.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    ));
    s.push('\n');
    for (row, r) in rows.iter().zip(&report.settings) {
        s.push_str(&line(row));
        if report.is_recommended(r) {
            s.push_str("  <- recommended");
        }
        s.push('\n');
    }
    s.push('\n');
    s.push_str(&report.conclusion());
    s
}

/// A Markdown section: the table, then the conclusion.
pub(super) fn to_markdown(report: &Report) -> String {
    let (head, rows) = report.cells();
    let mut s = format!("## batch bench\n\n{}\n\n", report.title());
    s.push_str(&format!("| {} |\n", head.join(" | ")));
    s.push_str(&format!(
        "|{}|\n",
        head.iter().map(|_| "---:").collect::<Vec<_>>().join("|")
    ));
    for (row, r) in rows.iter().zip(&report.settings) {
        let mut row: Vec<String> = row.iter().map(|c| c.trim().to_string()).collect();
        if report.is_recommended(r) {
            row[0] = format!("**{}**", row[0]);
        }
        s.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    s.push('\n');
    for line in report.conclusion().lines() {
        let line = line.replace('*', "\\*");
        s.push_str(&format!("{line}\n\n"));
    }
    s
}

/// One line per setting, numbers at full precision (the JSON's, exactly).
pub(super) fn to_csv(report: &Report) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let num = |v: f64| v.to_string();
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let header = [
        "concurrency",
        "runs",
        "rows",
        "rows_per_second",
        "rows_per_second_min",
        "rows_per_second_max",
        "rows_per_second_stddev",
        "sustained",
        "end_to_end_rows_per_second",
        "tokens_per_second",
        "latency_p50_ms",
        "latency_p90_ms",
        "latency_p95_ms",
        "latency_p99_ms",
        "rate_429",
        "error_rate",
        "retries",
        "cost_per_1000_rows",
        "recommended",
    ];
    w.write_record(header).expect("writing to memory");
    for r in &report.settings {
        w.write_record([
            label(r.concurrency),
            r.runs.len().to_string(),
            report.rows.to_string(),
            num(r.rows_per_second),
            num(r.rows_per_second_min),
            num(r.rows_per_second_max),
            opt(r.rows_per_second_stddev),
            r.sustained.to_string(),
            num(r.end_to_end_rows_per_second),
            num(r.tokens_per_second),
            opt(r.latency_ms.p50),
            opt(r.latency_ms.p90),
            opt(r.latency_ms.p95),
            opt(r.latency_ms.p99),
            num(r.rate_429),
            num(r.error_rate),
            num(r.retries),
            opt(r.cost_per_1000_rows),
            report.is_recommended(r).to_string(),
        ])
        .expect("writing to memory");
    }
    String::from_utf8(w.into_inner().expect("writing to memory")).expect("CSV of UTF-8 is UTF-8")
}

/// Everything, every run included.
pub(super) fn to_json(report: &Report) -> String {
    serde_json::to_string_pretty(report).expect("a report serializes") + "\n"
}

/// Rows per second with as many digits as matter.
pub(super) fn fmt_rate(v: f64) -> String {
    crate::base::human::rate(v)
}

pub(super) fn fmt_ms(v: Option<f64>) -> String {
    match v {
        Some(v) => format!("{} ms", ms_cell(Some(v))),
        None => "-".into(),
    }
}

fn ms_cell(v: Option<f64>) -> String {
    match v {
        Some(v) if v < 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
        None => "-".into(),
    }
}

fn fmt_pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn fmt_count(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Concurrency::{Auto, Fixed};

    fn pt(setting: Concurrency, rps: f64, p95: f64) -> Point {
        Point {
            setting,
            rows_per_second: rps,
            p95_ms: Some(p95),
            error_rate: 0.0,
            rate_429: 0.0,
        }
    }

    /// A server that saturates at about 155 rows/s: latency flat until 16, then queueing.
    fn saturating() -> Vec<Point> {
        vec![
            pt(Fixed(1), 10.0, 100.0),
            pt(Fixed(4), 39.0, 101.0),
            pt(Fixed(16), 150.0, 104.0),
            pt(Fixed(32), 155.0, 205.0),
            pt(Fixed(64), 154.0, 410.0),
        ]
    }

    #[test]
    fn lowest_setting_within_five_percent_of_the_best() {
        let r = recommend(&saturating()).unwrap();
        assert_eq!((r.concurrency, r.best_concurrency), (16, 32));
        assert_eq!(
            r.reason,
            "within 5% of the best throughput, 155 rows/s at 32; latency grows past 16 (p95 104 \
             ms at 16, 410 ms at 64) with 3% more throughput at most"
        );
    }

    #[test]
    fn the_best_itself_when_nothing_lower_comes_close() {
        let pts = vec![
            pt(Fixed(8), 80.0, 100.0),
            pt(Fixed(16), 160.0, 100.0),
            pt(Fixed(32), 158.0, 101.0),
        ];
        let r = recommend(&pts).unwrap();
        assert_eq!(r.concurrency, 16);
        assert_eq!(
            r.reason,
            "the best throughput, 160 rows/s; more concurrency brings no throughput gain"
        );
    }

    #[test]
    fn still_rising_at_the_top_says_so() {
        let pts = vec![
            pt(Fixed(1), 10.0, 100.0),
            pt(Fixed(2), 20.0, 100.0),
            pt(Fixed(4), 40.0, 100.0),
        ];
        let r = recommend(&pts).unwrap();
        assert_eq!(r.concurrency, 4);
        assert!(r.reason.contains("still rising at 4"), "{}", r.reason);
        let one = recommend(&[pt(Fixed(8), 80.0, 100.0)]).unwrap();
        assert!(one.reason.contains("only fixed setting"), "{}", one.reason);
    }

    #[test]
    fn order_of_the_list_does_not_matter_and_ties_go_low() {
        let mut pts = saturating();
        pts.reverse();
        assert_eq!(recommend(&pts).unwrap().concurrency, 16);
        let tie = vec![pt(Fixed(8), 100.0, 100.0), pt(Fixed(4), 100.0, 100.0)];
        let r = recommend(&tie).unwrap();
        assert_eq!((r.concurrency, r.best_concurrency), (4, 4));
    }

    #[test]
    fn errors_and_429s_count_against_a_setting() {
        let mut pts = saturating();
        // 32 looks fastest but a fifth of its rows fail.
        pts[3].error_rate = 0.2;
        pts[3].rate_429 = 0.3;
        let r = recommend(&pts).unwrap();
        assert_eq!((r.concurrency, r.best_concurrency), (16, 64));
        assert!(
            r.reason.contains("429s start at 32 (30.0% of attempts)"),
            "{}",
            r.reason
        );
        assert!(
            r.reason.contains("errors reach 20.0% at 32"),
            "{}",
            r.reason
        );
        assert!(r.reason.contains("without error"), "{}", r.reason);
    }

    #[test]
    fn auto_is_compared_but_never_recommended() {
        let mut pts = saturating();
        pts.push(pt(Auto, 400.0, 100.0));
        let r = recommend(&pts).unwrap();
        assert_eq!(r.concurrency, 16);
        let a = compare_auto(&pts, Some(&r)).unwrap();
        assert_eq!(
            a,
            "auto (reported, not recommended over a fixed value): 400 rows/s, p95 100 ms; 267% \
             of --concurrency 16's 150 rows/s (p95 104 ms)"
        );
        assert_eq!(recommend(&[pt(Auto, 50.0, 100.0)]), None);
        assert_eq!(compare_auto(&saturating(), Some(&r)), None);
        assert_eq!(recommend(&[pt(Fixed(2), 0.0, 100.0)]), None);
    }

    fn run(rps: f64, e2e: f64) -> RunMeasure {
        RunMeasure {
            rows: 40,
            ok: 39,
            failed: 1,
            skipped: 0,
            retries: 2,
            rate_limited: 1,
            total_tokens: 4000,
            cost_usd: Some(0.002),
            wall_seconds: 40.0 / e2e,
            end_to_end_rows_per_second: e2e,
            sustained_rows_per_second: Some(rps),
            latency_ms: Latency {
                p50: Some(20.5),
                p90: Some(21.0),
                p95: Some(22.0),
                p99: Some(25.0),
            },
            stopped: None,
        }
    }

    fn sample_report() -> Report {
        let mut short = run(0.0, 150.0);
        short.sustained_rows_per_second = None;
        short.cost_usd = None;
        Report::new(
            Path::new("samples/reviews.csv"),
            "gpt-4.1-mini",
            "the mock (20 ms latency)".into(),
            40,
            1,
            vec![
                SettingResult::from_runs(Fixed(1), vec![run(48.0, 45.0)]),
                SettingResult::from_runs(Fixed(4), vec![run(190.0, 160.0)]),
                SettingResult::from_runs(Fixed(16), vec![short]),
            ],
            vec!["a note".into()],
        )
    }

    #[test]
    fn medians_and_spread_over_repeats() {
        let r = SettingResult::from_runs(
            Fixed(8),
            vec![run(100.0, 90.0), run(120.0, 95.0), run(110.0, 99.0)],
        );
        assert_eq!(r.rows_per_second, 110.0);
        assert_eq!(
            (r.rows_per_second_min, r.rows_per_second_max),
            (100.0, 120.0)
        );
        assert!((r.rows_per_second_stddev.unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(r.end_to_end_rows_per_second, 95.0);
        assert_eq!(r.tokens_per_second, 100.0 * 110.0);
        assert_eq!(r.rate_429, 1.0 / 42.0);
        assert_eq!(r.error_rate, 1.0 / 40.0);
        assert_eq!(r.cost_per_1000_rows, Some(0.05));
        let two = SettingResult::from_runs(Fixed(8), vec![run(100.0, 90.0), run(120.0, 95.0)]);
        assert_eq!(two.rows_per_second, 110.0);
    }

    #[test]
    fn table_snapshot() {
        let t = to_table(&sample_report());
        let expected = "\
40 rows of samples/reviews.csv x 1 run per setting, gpt-4.1-mini on the mock (20 ms latency)

concurrency  rows/s  e2e rows/s  tokens/s  p50 ms  p90 ms  p95 ms  p99 ms  429s  errors  retries  $/1k rows
          1   48.0         45.0      4800      20      21      22      25  2.4%    2.5%        2     0.0500
          4  190.0        160.0     19000      20      21      22      25  2.4%    2.5%        2     0.0500  <- recommended
         16  150.0*       150.0     15000      20      21      22      25  2.4%    2.5%        2          -

recommended: --concurrency 4 (the best throughput, 185 rows/s; more concurrency brings no throughput gain; throughput counts rows answered without error)
*: too few rows for a sustained rate (every row went out in one round); the end-to-end rate is shown
note: a note
";
        assert_eq!(t, expected, "\n{t}");
    }

    #[test]
    fn markdown_snapshot() {
        let m = to_markdown(&sample_report());
        let expected = "\
## batch bench

40 rows of samples/reviews.csv x 1 run per setting, gpt-4.1-mini on the mock (20 ms latency)

| concurrency | rows/s | e2e rows/s | tokens/s | p50 ms | p90 ms | p95 ms | p99 ms | 429s | errors | retries | $/1k rows |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| 1 | 48.0 | 45.0 | 4800 | 20 | 21 | 22 | 25 | 2.4% | 2.5% | 2 | 0.0500 |
| **4** | 190.0 | 160.0 | 19000 | 20 | 21 | 22 | 25 | 2.4% | 2.5% | 2 | 0.0500 |
| 16 | 150.0* | 150.0 | 15000 | 20 | 21 | 22 | 25 | 2.4% | 2.5% | 2 | - |

recommended: --concurrency 4 (the best throughput, 185 rows/s; more concurrency brings no throughput gain; throughput counts rows answered without error)

\\*: too few rows for a sustained rate (every row went out in one round); the end-to-end rate is shown

note: a note

";
        assert_eq!(m, expected, "\n{m}");
    }

    #[test]
    fn csv_snapshot() {
        let c = to_csv(&sample_report());
        let expected = "\
concurrency,runs,rows,rows_per_second,rows_per_second_min,rows_per_second_max,rows_per_second_stddev,sustained,end_to_end_rows_per_second,tokens_per_second,latency_p50_ms,latency_p90_ms,latency_p95_ms,latency_p99_ms,rate_429,error_rate,retries,cost_per_1000_rows,recommended
1,1,40,48,48,48,,true,45,4800,20.5,21,22,25,0.023809523809523808,0.025,2,0.05,false
4,1,40,190,190,190,,true,160,19000,20.5,21,22,25,0.023809523809523808,0.025,2,0.05,true
16,1,40,150,150,150,,false,150,15000,20.5,21,22,25,0.023809523809523808,0.025,2,,false
";
        assert_eq!(c, expected, "\n{c}");
    }

    #[test]
    fn json_has_every_run_and_the_recommendation() {
        let j: serde_json::Value = serde_json::from_str(&to_json(&sample_report())).unwrap();
        assert_eq!(j["settings"].as_array().unwrap().len(), 3);
        assert_eq!(j["settings"][0]["concurrency"], "1");
        assert_eq!(j["settings"][1]["rows_per_second"], 190.0);
        assert_eq!(j["settings"][2]["sustained"], false);
        assert_eq!(
            j["settings"][2]["cost_per_1000_rows"],
            serde_json::Value::Null
        );
        assert_eq!(j["settings"][0]["runs"][0]["rows"], 40);
        assert_eq!(j["recommendation"]["concurrency"], 4);
        assert_eq!(j["notes"][0], "a note");
    }
}

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
use crate::base::money::format_cost;
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
    pub cost_usd: Option<f64>,
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
            tokens_saved: 0,
            saved_usd: 0.0,
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            by_model: BTreeMap::new(),
            expect: None,
        }
    }
}

impl Stats {
    pub fn record(&mut self, r: &RowResult) {
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

    pub fn done(&self) -> u64 {
        self.ok + self.failed + self.skipped
    }

    /// The cost so far, or `None` if no answered row could be priced.
    pub fn known_cost(&self) -> Option<f64> {
        let priced = self.ok + self.failed - self.unpriced.min(self.ok + self.failed);
        (priced > 0 || self.unpriced == 0).then_some(self.cost_usd)
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
            unpriced_rows: self.unpriced,
            retries: self.retries,
            rate_limited: self.rate_limited,
            resumed: self.resumed,
            cache_hits: self.cache_hits,
            tokens_saved: self.tokens_saved,
            saved_usd: self.saved_usd,
            wall_seconds: secs,
            rows_per_second: if secs > 0.0 {
                self.done() as f64 / secs
            } else {
                0.0
            },
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
    pub cost_usd: Option<f64>,
    pub unpriced_rows: u64,
    pub retries: u64,
    pub rate_limited: u64,
    pub resumed: u64,
    pub cache_hits: u64,
    pub tokens_saved: u64,
    pub saved_usd: f64,
    pub wall_seconds: f64,
    pub rows_per_second: f64,
    pub latency_ms: Latency,
    pub model: String,
    /// Totals per model, when rows went to more than one.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ModelSummary>,
    pub output: String,
    /// Why the run stopped before the end, if it did.
    pub stopped: Option<String>,
    /// With `--expect`: answers compared with the expected column and how many matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<PassRate>,
}

impl Summary {
    pub fn print(&self, w: &mut (impl Write + ?Sized)) -> std::io::Result<()> {
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} ms"));
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
        for (name, m) in &self.models {
            writeln!(
                w,
                "  {name:<22} {} rows ({} ok), {} prompt + {} completion tokens, {}",
                m.rows,
                m.ok,
                m.prompt_tokens,
                m.completion_tokens,
                m.cost_usd
                    .map_or("cost unknown".into(), |c| format!("${}", format_cost(c)))
            )?;
        }
        if self.cache_hits > 0 {
            writeln!(
                w,
                "Cache      {} answers reused, {} tokens and ${} saved",
                self.cache_hits,
                self.tokens_saved,
                format_cost(self.saved_usd)
            )?;
        }
        writeln!(
            w,
            "Time       {:.1} s, {:.1} rows/s, {} retries ({} rate-limited)",
            self.wall_seconds, self.rows_per_second, self.retries, self.rate_limited
        )?;
        writeln!(
            w,
            "Latency    p50 {}, p95 {}, p99 {}",
            ms(self.latency_ms.p50),
            ms(self.latency_ms.p95),
            ms(self.latency_ms.p99)
        )?;
        if let Some(e) = &self.expect {
            let rate = e.rate.map_or("-".into(), |r| format!("{:.1}%", r * 100.0));
            writeln!(
                w,
                "Expect     {} of {} answers match column {:?} ({}): pass rate {rate}",
                e.matched,
                e.compared,
                e.column,
                e.mode.name()
            )?;
        }
        writeln!(w, "Results    {}", self.output)
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
                "${} (plus {} rows {} with no known price; see --price-file)",
                format_cost(c),
                self.unpriced_rows,
                if self.models.is_empty() {
                    format!("of {}", self.model)
                } else {
                    "of models".into()
                }
            ),
            Some(c) => format!("${}", format_cost(c)),
            None => format!("unknown: no price for {} (see --price-file)", self.model),
        }
    }

    pub fn write_json(&self, path: &Path) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(self).expect("summary serializes");
        std::fs::write(path, text + "\n").map_err(|e| {
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
        assert!((sum.rows_per_second - 51.0).abs() < 1e-9);
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
}

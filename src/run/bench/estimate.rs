//! What a whole sweep will send and may cost, worked out before anything is sent: printed by
//! `--dry-run`, shown before a sweep against a real API, and the reason such a sweep is refused
//! without `--max-cost`.

use std::io::Write;

use super::plural;
use crate::base::error::Error;
use crate::base::money::format_cost;
use crate::base::printer::Printer;
use crate::run::settings::RunConfig;

/// What the whole sweep will send, for the expected cost.
pub(super) struct Estimate {
    settings: u64,
    repeat: u64,
    rows: u64,
    warmup_rows: u64,
    prompt_tokens: u64,
    /// The most one attempt can cost, as the runner's spend cap reckons it: the longest prompt
    /// with its margin, and a full completion. 0 without a price for the model.
    pub(super) worst_attempt: f64,
}

impl Estimate {
    /// For `repeat` runs of the sample whose rows have `prompt_tokens`, at each setting, each
    /// setting after a warm-up of `warmups` rows (one entry per setting).
    pub(super) fn new(
        cfg: &RunConfig,
        prompt_tokens: &[u64],
        warmups: &[u64],
        repeat: u32,
    ) -> Estimate {
        let repeat = u64::from(repeat);
        let sample_tokens: u64 = prompt_tokens.iter().sum();
        let worst_attempt = cfg.prices.lookup(&cfg.model).map_or(0.0, |p| {
            let prompt = prompt_tokens.iter().copied().max().unwrap_or(0) as f64 * 1.1 + 16.0;
            p.estimate(prompt.ceil() as u64, u64::from(cfg.max_tokens.unwrap_or(0)))
        });
        Estimate {
            settings: warmups.len() as u64,
            repeat,
            rows: prompt_tokens.len() as u64,
            warmup_rows: warmups.iter().sum(),
            prompt_tokens: warmups
                .iter()
                .map(|w| repeat * sample_tokens + prompt_tokens[..*w as usize].iter().sum::<u64>())
                .sum(),
            worst_attempt,
        }
    }

    /// Requests sent if no attempt is retried.
    fn requests(&self) -> u64 {
        self.settings * self.repeat * self.rows + self.warmup_rows
    }

    /// `--dry-run`: the estimate on stdout, and what a real sweep would need.
    pub(super) fn print_dry_run(&self, cfg: &RunConfig, printer: Printer) {
        printer.report_with(|w| {
            writeln!(w, "Dry run: nothing was sent.")?;
            self.print(w, cfg)?;
            match cfg.endpoint.real_api() {
                Some(url) if cfg.max_cost.is_none() => writeln!(
                    w,
                    "A real sweep against {url} needs --max-cost USD (and --max-tokens N)."
                ),
                _ => Ok(()),
            }
        });
    }

    /// Against a real API, which bills every request: refuses a sweep without `--max-cost`, and
    /// otherwise warns what it is expected to cost.
    pub(super) fn check_budget(&self, cfg: &RunConfig, printer: Printer) -> Result<(), Error> {
        let Some(url) = cfg.endpoint.real_api() else {
            return Ok(());
        };
        let mut text = Vec::new();
        let _ = self.print(&mut text, cfg);
        let text = String::from_utf8_lossy(&text);
        let Some(cap) = cfg.max_cost else {
            return Err(Error::Usage(format!(
                "batch bench would send {} requests (retries not counted) to {url}, a real API \
                 that bills them, and refuses to do so without a spending limit: add --max-cost \
                 USD (it needs --max-tokens N), or try the sweep free on the embedded mock \
                 server with --mock. What the sweep would cost:\n{}",
                self.requests(),
                text.trim_end()
            )));
        };
        printer.warn(format_args!(
            "expected cost of the sweep against {url}:\n{text}Spend cap  ${} over the whole \
             sweep (--max-cost)",
            format_cost(cap)
        ));
        Ok(())
    }

    /// The same numbers as `batch run --dry-run`, for the whole sweep.
    fn print(&self, w: &mut dyn Write, cfg: &RunConfig) -> std::io::Result<()> {
        let dollars = |v: f64| format!("${}", format_cost((v * 1e6).round() / 1e6));
        writeln!(
            w,
            "Sweep        {} x {} x {} + {} warm-up rows = {} requests (retries not counted)",
            plural(self.settings, "setting"),
            plural(self.repeat, "run"),
            plural(self.rows, "row"),
            self.warmup_rows,
            self.requests()
        )?;
        let completion = cfg.max_tokens.map(|m| self.requests() * u64::from(m));
        let Some(p) = cfg.prices.lookup(&cfg.model) else {
            writeln!(w, "Prompts      {} tokens", self.prompt_tokens)?;
            return writeln!(
                w,
                "Cost         unknown: no price for model {:?}; add one with --price-file",
                cfg.model
            );
        };
        writeln!(
            w,
            "Prompts      {} tokens, {} at {}'s input price (${} per 1M)",
            self.prompt_tokens,
            dollars(p.estimate(self.prompt_tokens, 0)),
            cfg.model,
            p.input
        )?;
        match completion {
            Some(c) => {
                writeln!(
                    w,
                    "Completions  at most {c} tokens (--max-tokens {} a row), {}",
                    cfg.max_tokens.unwrap_or(0),
                    dollars(p.estimate(0, c))
                )?;
                writeln!(
                    w,
                    "Worst case   {} (prices as of {})",
                    dollars(p.estimate(self.prompt_tokens, c)),
                    cfg.prices.as_of
                )
            }
            None => writeln!(
                w,
                "Completions  unknown: without --max-tokens an answer's length has no bound (${} \
                 per 1M output tokens)",
                p.output
            ),
        }
    }
}

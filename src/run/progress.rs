//! The progress bar on stderr: rows done of total, rate, ETA, tokens and running cost. Hidden
//! when stderr is not a terminal (logs and CI stay clean) or with `--quiet`.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::base::money::format_cost;
use crate::run::summary::Stats;

pub struct Progress {
    bar: ProgressBar,
    /// Rows finished by an earlier part of a resumed run.
    offset: std::sync::atomic::AtomicU64,
}

impl Progress {
    pub fn new(total: u64, quiet: bool) -> Self {
        let bar = if quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} rows  {per_sec}  ETA \
                     {eta}  {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        };
        Progress {
            bar,
            offset: Default::default(),
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
        self.bar.set_position(offset + stats.done());
        let tokens = stats.prompt_tokens + stats.completion_tokens;
        let cost = stats.known_cost().map_or("cost unknown".to_string(), |c| {
            format!("${}", format_cost(c))
        });
        let failed = if stats.failed > 0 {
            format!("  {} failed", stats.failed)
        } else {
            String::new()
        };
        self.bar
            .set_message(format!("{tokens} tokens  {cost}{failed}"));
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

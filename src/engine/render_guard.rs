//! The last guard on a render: a watchdog for what minijinja's budgets cannot count.
//!
//! Fuel counts steps, not bytes: `{% set s = s ~ s %}` written out forty times is forty steps
//! and a string of a terabyte, and the output limit never sees a string that is not written
//! out. A thread cannot be stopped from outside, so while a render is under way a watchdog
//! thread looks at the clock and at the process's memory every [`TICK`]; when one render has run
//! for longer than [`TIME_LIMIT`] (a prompt renders in microseconds; the step budget ends in
//! about 20 ms) or the process has grown by more than [`MEMORY_LIMIT_MB`] during a render that
//! has lasted a tick, it says which row and template did it and ends the process, as a second
//! Ctrl-C does: the journal is consistent at every commit, and the copy of stdin is removed.
//!
//! `BATCH_RENDER_MAX_SECS` and `BATCH_RENDER_MAX_MB` lower or raise the limits (tests use them).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::base::error::ExitStatus;

/// How long one render may run.
pub const TIME_LIMIT: Duration = Duration::from_secs(10);
/// How much the process may grow while one render is under way.
pub const MEMORY_LIMIT_MB: u64 = 1024;
/// How often the watchdog looks, while a render is under way.
const TICK: Duration = Duration::from_millis(20);

/// Runs `render` (of the `template` template, for the row at `line` of `file`) under the
/// watchdog.
pub fn guarded<T>(file: &Path, line: u64, template: &str, render: impl FnOnce() -> T) -> T {
    let slot = SLOT.with(|s| s.clone());
    {
        let mut what = slot.what.lock().unwrap_or_else(|e| e.into_inner());
        if what.file != file || what.template != template {
            *what = What {
                file: file.to_path_buf(),
                template: template.to_string(),
            };
        }
    }
    slot.line.store(line, Relaxed);
    slot.started_ms.store(watchdog().now_ms().max(1), Relaxed);
    let out = render();
    slot.started_ms.store(0, Relaxed);
    out
}

/// From now on a request may have gone out: a render stopped by the watchdog then exits 1 (some
/// rows may be answered, `--resume` goes on), not 2 (nothing was sent).
pub fn requests_may_be_sent() {
    MAY_HAVE_SENT.store(true, Relaxed);
}

static MAY_HAVE_SENT: AtomicBool = AtomicBool::new(false);

/// One rendering thread's render under way.
#[derive(Default)]
struct Slot {
    /// Milliseconds since the watchdog started when the render began; 0 when idle.
    started_ms: AtomicU64,
    line: AtomicU64,
    what: Mutex<What>,
}

#[derive(Default, Clone)]
struct What {
    file: PathBuf,
    template: String,
}

thread_local! {
    static SLOT: Arc<Slot> = {
        let slot = Arc::new(Slot::default());
        watchdog().slots.lock().unwrap_or_else(|e| e.into_inner()).push(slot.clone());
        slot
    };
}

struct Watchdog {
    epoch: Instant,
    slots: Mutex<Vec<Arc<Slot>>>,
    time_limit: Duration,
    memory_limit_kb: u64,
}

impl Watchdog {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// The watchdog, started by the first render.
fn watchdog() -> &'static Watchdog {
    static DOG: OnceLock<Watchdog> = OnceLock::new();
    DOG.get_or_init(|| {
        let limit = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let dog = Watchdog {
            epoch: Instant::now(),
            slots: Mutex::default(),
            time_limit: Duration::from_secs(limit("BATCH_RENDER_MAX_SECS", TIME_LIMIT.as_secs())),
            memory_limit_kb: limit("BATCH_RENDER_MAX_MB", MEMORY_LIMIT_MB) * 1024,
        };
        let spawned = std::thread::Builder::new()
            .name("render-watchdog".into())
            .spawn(|| watch(watchdog()));
        if let Err(e) = spawned {
            tracing::warn!("no render watchdog: {e}");
        }
        dog
    })
}

/// The watchdog's loop: a look at a few atomics and at the process's size a tick.
fn watch(dog: &Watchdog) {
    // The size of the process a tick ago, and the render under way with the size before it.
    let mut last_kb = rss_kb().unwrap_or(0);
    let mut before: Option<(u64, u64)> = None;
    loop {
        std::thread::sleep(TICK);
        let now_kb = rss_kb().unwrap_or(0);
        if let Some((slot, started, ran)) = longest_render(dog) {
            let base = match before {
                Some((s, kb)) if s == started => kb,
                _ => last_kb,
            };
            before = Some((started, base));
            if ran >= dog.time_limit {
                stop(
                    &slot,
                    format!("ran for more than {} s", dog.time_limit.as_secs()),
                );
            }
            if ran >= TICK && now_kb.saturating_sub(base) > dog.memory_limit_kb {
                let mb = dog.memory_limit_kb / 1024;
                stop(&slot, format!("grew the process by more than {mb} MB"));
            }
        }
        last_kb = now_kb;
    }
}

/// The render under way that started first: its slot, when it started, how long it has run.
fn longest_render(dog: &Watchdog) -> Option<(Arc<Slot>, u64, Duration)> {
    let now = dog.now_ms();
    let slots = dog.slots.lock().unwrap_or_else(|e| e.into_inner());
    slots
        .iter()
        .filter_map(|s| match s.started_ms.load(Relaxed) {
            0 => None,
            t => Some((s.clone(), t, Duration::from_millis(now.saturating_sub(t)))),
        })
        .max_by_key(|(_, _, ran)| *ran)
}

/// Says which row's render was stopped and why, and ends the process.
fn stop(slot: &Slot, why: String) -> ! {
    let what = slot.what.lock().map(|w| w.clone()).unwrap_or_default();
    let sent = MAY_HAVE_SENT.load(Relaxed);
    eprintln!(
        "error: {}: line {}: the {} template {why} rendering this row (a string that doubles \
         over and over?); simplify the template{}",
        what.file.display(),
        slot.line.load(Relaxed),
        what.template,
        if sent {
            "; rows answered so far are saved, fix it and run again with --resume"
        } else {
            "; nothing was sent"
        }
    );
    crate::engine::stdio::remove_spools();
    let status = if sent {
        ExitStatus::RowsFailed
    } else {
        ExitStatus::Error
    };
    std::process::exit(status as i32)
}

/// The process's resident size in kB, where the system says (Linux).
fn rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_render_is_watched_while_under_way_and_not_after() {
        let started = || SLOT.with(|s| s.started_ms.load(Relaxed));
        let during = guarded(Path::new("in.csv"), 7, "user", started);
        assert_ne!(during, 0);
        assert_eq!(started(), 0);
        assert_eq!(SLOT.with(|s| s.line.load(Relaxed)), 7);
    }

    #[test]
    fn the_process_size_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(rss_kb().is_some_and(|kb| kb > 0));
        }
    }
}

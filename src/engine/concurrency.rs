//! How many requests may be in flight: a fixed number, or `auto`, adapted from what the server
//! shows us.
//!
//! `auto` is a Vegas controller in the style of Netflix's concurrency-limits: it keeps the
//! lowest round-trip time seen (the latency with no queue), and estimates how many of our
//! requests are queued at the server as `limit × (1 − rtt_min / rtt)`. Next to nothing queued:
//! the server has idle capacity, grow (by a fifth per window until the first sign of queueing,
//! then by one, as TCP leaves slow start). More than about one request queued: we only add
//! latency, shrink. 429s and timeouts shrink
//! multiplicatively (AIMD). Updates happen once per window (at least one `rtt_min` and ten
//! samples), because queueing shows in the latency only a round trip after the limit changed.
//! Every hundred windows one runs at half the limit to re-measure the no-queue latency, so the
//! baseline follows a server whose base latency changes;
//! and the limit only grows while we actually use it, so a run held back by its rate budget does
//! not inflate it.

use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Notify;
use tokio::time::Instant;

/// `--concurrency`: a number, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    Fixed(usize),
    Auto,
}

impl Concurrency {
    /// The most requests that can ever be in flight (sizes pools and buffers).
    pub fn ceiling(self) -> usize {
        match self {
            Concurrency::Fixed(n) => n,
            Concurrency::Auto => AUTO_MAX,
        }
    }
}

impl FromStr for Concurrency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Concurrency::Auto);
        }
        match s.parse::<usize>() {
            Ok(0) => Err("must be at least 1 (or auto)".into()),
            Ok(n) => Ok(Concurrency::Fixed(n)),
            Err(_) => Err(format!("{s:?} is not a number or \"auto\"")),
        }
    }
}

/// `--concurrency` as given: one setting for `run`, a comma-separated list for `bench`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyList(pub Vec<Concurrency>);

impl FromStr for ConcurrencyList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(|part| part.trim().parse::<Concurrency>())
            .collect::<Result<Vec<_>, _>>()
            .map(ConcurrencyList)
    }
}

impl<'de> Deserialize<'de> for ConcurrencyList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Item {
            N(i64),
            S(String),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(Item),
            Many(Vec<Item>),
        }
        let items = match Raw::deserialize(d)? {
            Raw::One(i) => vec![i],
            Raw::Many(v) => v,
        };
        items
            .into_iter()
            .map(|i| match i {
                Item::N(n) => n.to_string().parse::<ConcurrencyList>(),
                Item::S(s) => s.parse::<ConcurrencyList>(),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|lists| ConcurrencyList(lists.into_iter().flat_map(|l| l.0).collect()))
            .map_err(serde::de::Error::custom)
    }
}

const AUTO_START: f64 = 4.0;
const AUTO_MIN: f64 = 1.0;
const AUTO_MAX: usize = 512;
const WINDOW_SAMPLES: usize = 10;
/// Windows between probes of the no-queue latency.
const PROBE_EVERY: u32 = 100;
/// Windows whose mean counts towards the no-queue latency. Longer than the probe interval, so a
/// fresh measure always replaces one that expires.
const BASELINE_WINDOWS: u32 = 300;
/// Shrinks in a row after which the baseline is re-measured at once (the server may have become
/// slower rather than busier).
const STALE_AFTER_SHRINKS: u32 = 10;

/// How an attempt ended, for the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// An answer (or a plain error) after this long.
    Answered(Duration),
    /// A sign of overload: 429, timeout, 503.
    Dropped,
}

/// The in-flight gate. The dispatcher waits in [`Slots::acquire`]; the journal thread releases a
/// row's slot once its outcome is committed.
pub struct Slots {
    state: Mutex<SlotState>,
    freed: Notify,
}

struct SlotState {
    limit: f64,
    held: usize,
    /// Requests on the wire now (slot holders that are not waiting on the rate budget).
    sending: usize,
    vegas: Option<Vegas>,
}

impl Slots {
    pub fn new(c: Concurrency) -> Self {
        let (limit, vegas) = match c {
            Concurrency::Fixed(n) => (n as f64, None),
            Concurrency::Auto => (AUTO_START, Some(Vegas::default())),
        };
        Slots {
            state: Mutex::new(SlotState {
                limit,
                held: 0,
                sending: 0,
                vegas,
            }),
            freed: Notify::new(),
        }
    }

    pub fn limit(&self) -> usize {
        self.state.lock().expect("slots lock").limit.floor() as usize
    }

    /// Waits for a free slot. Only one task (the dispatcher) waits here at a time.
    pub async fn acquire(&self) {
        loop {
            let freed = self.freed.notified();
            {
                let mut s = self.state.lock().expect("slots lock");
                if (s.held as f64) < s.limit.floor() {
                    s.held += 1;
                    return;
                }
            }
            freed.await;
        }
    }

    pub fn release(&self) {
        self.release_many(1);
    }

    /// Releases `n` slots at once: one wake-up of the dispatcher (the only task that waits).
    pub fn release_many(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.state.lock().expect("slots lock").held -= n;
        self.freed.notify_one();
    }

    /// A request goes on the wire; returns how many are on it now.
    pub fn start_sending(&self) -> usize {
        let mut s = self.state.lock().expect("slots lock");
        s.sending += 1;
        s.sending
    }

    /// An attempt that was on the wire with `sending` requests ended.
    pub fn finish_sending(&self, sent_with: usize, sample: Sample) {
        let mut s = self.state.lock().expect("slots lock");
        s.sending -= 1;
        let limit = s.limit;
        if let Some(v) = s.vegas.as_mut()
            && let Some(new) = v.update(limit, sent_with, sample, Instant::now())
        {
            let grew = new > limit;
            s.limit = new;
            drop(s);
            if grew {
                self.freed.notify_one();
            }
        }
    }
}

/// The Vegas controller's memory.
#[derive(Default)]
struct Vegas {
    window_start: Option<Instant>,
    window_rtts: Vec<Duration>,
    window_dropped: bool,
    /// Largest number on the wire during this window.
    window_peak: usize,
    /// Window means (and probe results) with the window they closed in; the latency with no
    /// queue is the lowest of the recent ones.
    recent: std::collections::VecDeque<(u32, Duration)>,
    windows: u32,
    /// Windows in a row that shrank the limit: many mean the baseline may be stale.
    shrinks_in_a_row: u32,
    probe: Option<Probe>,
    /// Like TCP: grow by a fifth per window until the first sign of queueing or overload, then
    /// by one.
    congestion_seen: bool,
}

/// A window run at half the limit to re-measure the no-queue latency. Without it the baseline
/// can only fall, or, if it is allowed to age, it drifts up to the queued latency and the limit
/// ratchets up with it.
struct Probe {
    /// Samples count only from requests sent with at most this many on the wire.
    limit: f64,
    restore: f64,
    rtts: Vec<Duration>,
}

impl Vegas {
    /// Feeds one sample; returns the new limit when a window closes.
    fn update(
        &mut self,
        limit: f64,
        sent_with: usize,
        sample: Sample,
        now: Instant,
    ) -> Option<f64> {
        if let Some(p) = self.probe.as_mut() {
            if let Sample::Answered(rtt) = sample
                && sent_with as f64 <= p.limit
            {
                p.rtts.push(rtt);
            }
            if p.rtts.len() < WINDOW_SAMPLES {
                return None;
            }
            let p = self.probe.take().expect("probe is running");
            // The probe's measure replaces every older one: it is the no-queue latency now.
            self.recent.clear();
            self.recent.push_back((self.windows, mean(&p.rtts)));
            self.shrinks_in_a_row = 0;
            self.window_start = Some(now);
            self.window_rtts.clear();
            self.window_peak = 0;
            self.window_dropped = false;
            return Some(p.restore);
        }
        let start = *self.window_start.get_or_insert(now);
        self.window_peak = self.window_peak.max(sent_with);
        match sample {
            Sample::Answered(rtt) => self.window_rtts.push(rtt),
            Sample::Dropped => self.window_dropped = true,
        }
        let long_enough = now.duration_since(start) >= self.rtt_noload().unwrap_or_default();
        if !(self.window_dropped || (self.window_rtts.len() >= WINDOW_SAMPLES && long_enough)) {
            return None;
        }
        let dropped = std::mem::take(&mut self.window_dropped);
        let rtts = std::mem::take(&mut self.window_rtts);
        let peak = std::mem::take(&mut self.window_peak);
        self.window_start = Some(now);
        if dropped {
            self.congestion_seen = true;
            return Some((limit * 0.9).max(AUTO_MIN));
        }
        let rtt = mean(&rtts);
        self.windows += 1;
        self.recent.push_back((self.windows, rtt));
        while self
            .recent
            .front()
            .is_some_and(|(w, _)| w + BASELINE_WINDOWS < self.windows)
        {
            self.recent.pop_front();
        }
        let rtt_noload = self.rtt_noload().unwrap_or(rtt);
        let queued = limit * (1.0 - rtt_noload.as_secs_f64() / rtt.as_secs_f64().max(1e-9));
        // Tolerate about one queued request (3-6% of large limits; Vegas proper uses
        // log10(limit)): a server with a fixed service time makes every queued request wait a
        // whole extra round trip, so even a 5% queue doubles the p95.
        let alpha = (0.03 * limit).max(0.5);
        let beta = (0.06 * limit).max(1.0);
        // Growing a limit we are not using proves nothing (the rate budget may be what holds us).
        let app_limited = (peak as f64) < limit / 2.0;
        let new = if queued > beta {
            self.congestion_seen = true;
            self.shrinks_in_a_row += 1;
            limit - (0.05 * limit).max(1.0)
        } else if queued < alpha && !app_limited {
            if self.congestion_seen {
                limit + 1.0
            } else {
                limit + (0.2 * limit).max(1.0)
            }
        } else {
            limit
        };
        if new >= limit {
            self.shrinks_in_a_row = 0;
        }
        let new = new.clamp(AUTO_MIN, AUTO_MAX as f64);
        let stale = self.shrinks_in_a_row >= STALE_AFTER_SHRINKS;
        if (self.windows.is_multiple_of(PROBE_EVERY) || stale) && new >= 2.0 {
            let half = (new / 2.0).floor();
            self.probe = Some(Probe {
                limit: half,
                restore: new,
                rtts: Vec::new(),
            });
            return Some(half);
        }
        Some(new)
    }
}

impl Vegas {
    fn rtt_noload(&self) -> Option<Duration> {
        self.recent.iter().map(|(_, d)| *d).min()
    }
}

fn mean(rtts: &[Duration]) -> Duration {
    rtts.iter().sum::<Duration>() / rtts.len().max(1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_auto() {
        assert_eq!("8".parse::<Concurrency>(), Ok(Concurrency::Fixed(8)));
        assert_eq!("AUTO".parse::<Concurrency>(), Ok(Concurrency::Auto));
        assert!("0".parse::<Concurrency>().is_err());
        assert!("many".parse::<Concurrency>().is_err());
    }

    #[test]
    fn lists_parse_from_flags_and_settings() {
        let l: ConcurrencyList = "1, 2,auto".parse().unwrap();
        assert_eq!(
            l.0,
            [
                Concurrency::Fixed(1),
                Concurrency::Fixed(2),
                Concurrency::Auto
            ]
        );
        assert!("1,,2".parse::<ConcurrencyList>().is_err());
        #[derive(Deserialize)]
        struct T {
            c: ConcurrencyList,
        }
        assert_eq!(
            toml::from_str::<T>("c = 4").unwrap().c.0,
            [Concurrency::Fixed(4)]
        );
        assert_eq!(
            toml::from_str::<T>("c = \"auto\"").unwrap().c.0,
            [Concurrency::Auto]
        );
        let err = toml::from_str::<T>("c = 0").err().unwrap().to_string();
        assert!(err.contains("at least 1"), "{err}");
        assert_eq!(
            toml::from_str::<T>("c = [1, \"auto\"]").unwrap().c.0.len(),
            2
        );
    }

    #[tokio::test]
    async fn fixed_slots_bound_and_release() {
        let slots = std::sync::Arc::new(Slots::new(Concurrency::Fixed(2)));
        slots.acquire().await;
        slots.acquire().await;
        let s2 = slots.clone();
        let third = tokio::spawn(async move { s2.acquire().await });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        slots.release();
        third.await.unwrap();
        assert_eq!(slots.limit(), 2);
    }

    /// Simulates a server that serves `capacity` requests at once with `base` latency, the rest
    /// queueing: latency = base × max(1, in_flight / capacity). Drives the controller the way
    /// the runner does (every slot busy) and returns where the limit settles, as the mean over
    /// the last quarter of a long run (probes included).
    fn settle_against_capacity(capacity: f64, base: Duration) -> f64 {
        let mut v = Vegas::default();
        let mut limit = AUTO_START;
        let mut now = Instant::now();
        let mut history = Vec::new();
        for _ in 0..100_000 {
            let in_flight = limit.floor().max(1.0);
            let rtt = base.mul_f64((in_flight / capacity).max(1.0));
            // One completion every rtt / in_flight.
            now += rtt.div_f64(in_flight);
            if let Some(new) = v.update(limit, in_flight as usize, Sample::Answered(rtt), now) {
                limit = new;
            }
            history.push(limit);
        }
        let tail = &history[history.len() - 25_000..];
        tail.iter().sum::<f64>() / tail.len() as f64
    }

    #[test]
    fn auto_settles_just_past_a_servers_capacity() {
        let settled = settle_against_capacity(24.0, Duration::from_millis(200));
        // Enough to keep all 24 busy, and hardly more: every request beyond them queues.
        assert!((23.0..=26.5).contains(&settled), "settled at {settled}");
        let settled = settle_against_capacity(4.0, Duration::from_millis(50));
        assert!((3.5..=5.5).contains(&settled), "settled at {settled}");
        let settled = settle_against_capacity(300.0, Duration::from_millis(500));
        assert!((285.0..=320.0).contains(&settled), "settled at {settled}");
    }

    #[test]
    fn probes_let_the_baseline_follow_a_slower_server() {
        // The no-queue latency doubles mid-run; the limit must not collapse to the floor.
        let mut v = Vegas::default();
        let mut limit = AUTO_START;
        let mut now = Instant::now();
        for i in 0..200_000 {
            let base = Duration::from_millis(if i < 50_000 { 100 } else { 200 });
            let in_flight = limit.floor().max(1.0);
            let rtt = base.mul_f64((in_flight / 24.0).max(1.0));
            now += rtt.div_f64(in_flight);
            if let Some(new) = v.update(limit, in_flight as usize, Sample::Answered(rtt), now) {
                limit = new;
            }
        }
        assert!((20.0..=36.0).contains(&limit), "ended at {limit}");
    }

    #[test]
    fn drops_shrink_the_limit() {
        let mut v = Vegas::default();
        let now = Instant::now();
        let new = v.update(100.0, 100, Sample::Dropped, now).unwrap();
        assert!((new - 90.0).abs() < 1e-9);
    }

    #[test]
    fn an_unused_limit_does_not_grow() {
        let mut v = Vegas::default();
        let mut now = Instant::now();
        let mut limit = 50.0;
        for _ in 0..1000 {
            now += Duration::from_millis(10);
            if let Some(new) = v.update(limit, 5, Sample::Answered(Duration::from_millis(100)), now)
            {
                limit = new;
            }
        }
        assert!(limit <= 50.0, "{limit}");
    }
}

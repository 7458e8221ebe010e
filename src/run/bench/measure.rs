//! One measured run: the same run as `batch run` at one setting, over the sample, and its rate
//! read from the attempts the run journaled in its state file.
//!
//! The sustained rate ([`sustained_rate`]) counts rows answered per second while the run was in
//! full swing, from the first round of the full run coming back to the last dispatch. It leaves
//! out what a run of N rows pays once (pre-flight, the round trip of the few probe requests
//! sent while the rate limits are learned, the last half-empty round of requests), which an
//! overnight job of 100,000 rows does not feel.

use std::collections::HashMap;
use std::path::Path;

use super::report::RunMeasure;
use crate::base::error::{Error, ExitStatus};
use crate::engine::concurrency::Concurrency;
use crate::engine::provider::ErrorKind;
use crate::engine::store::FinishedRows;
use crate::run::runner;
use crate::run::settings::{CacheMode, Resume, RunConfig};

/// One run of `input` at `setting`, in `dir`, measured.
pub(super) async fn one_run(
    base: &RunConfig,
    setting: Concurrency,
    input: &Path,
    dir: &Path,
    n: usize,
    max_cost: Option<f64>,
) -> Result<(ExitStatus, RunMeasure, u64), Error> {
    let mut cfg = base.clone();
    cfg.input = input.to_path_buf();
    cfg.output = dir.join(format!("run-{n}.results.csv"));
    cfg.state = dir.join(format!("run-{n}.sqlite"));
    cfg.concurrency = setting;
    cfg.quiet = true;
    cfg.summary_json = None;
    cfg.resume = Resume::No;
    cfg.dry_run = false;
    cfg.max_cost = max_cost;
    // Every row is a request: answers from the response cache (filled by the warm-up and every
    // earlier run of the same rows) or shared between identical rows would measure nothing.
    cfg.cache = CacheMode::Off;
    cfg.dedup = false;
    let state = cfg.state.clone();
    let (status, summary) = runner::run_to_summary(cfg).await?;
    let summary = summary.ok_or_else(|| {
        Error::io(
            "the runner returned no summary",
            std::io::Error::other("dry run"),
        )
    })?;
    // The journal is the runner's; if it cannot be read the end-to-end rate stands in (and no
    // attempt is taken to have an unknown cost).
    let (spans, unknown_cost) = read_journal(&state).unwrap_or_default();
    let measure = RunMeasure::new(&summary, sustained_rate(&spans, setting));
    Ok((status, measure, unknown_cost))
}

/// One attempt as journaled: when it started and how long it took, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    seq: u64,
    attempt: u32,
    start_ms: i64,
    latency_ms: i64,
}

/// The attempts of a finished run, from its state file, and how many of them have an unknown
/// cost (the server may have billed an answer we never saw): the spend cap charges those their
/// worst case, and so does the sweep's budget.
fn read_journal(state: &Path) -> Result<(Vec<Span>, u64), Error> {
    let attempts = FinishedRows::open(state)?.attempts()?;
    let unknown_cost = attempts
        .iter()
        .filter(|a| ErrorKind::from_label(&a.outcome).is_some_and(ErrorKind::may_have_been_billed))
        .count() as u64;
    let spans = attempts
        .iter()
        .filter_map(|a| {
            let since = a.started_at?.duration_since(std::time::UNIX_EPOCH).ok()?;
            Some(Span {
                seq: a.seq,
                attempt: a.attempt,
                start_ms: since.as_millis() as i64,
                latency_ms: a.latency.map_or(0, |l| l.as_millis() as i64),
            })
        })
        .collect();
    Ok((spans, unknown_cost))
}

/// Shortest window, in milliseconds, and fewest rows a sustained rate is computed from.
const MIN_WINDOW_MS: i64 = 10;
const MIN_WINDOW_ROWS: usize = 5;
/// Answers this close together belong to one round (the journal keeps whole milliseconds).
const EDGE_MS: i64 = 2;

/// Rows per second while the run was in full swing, from its journaled attempts, leaving out
/// what a run of a few hundred rows pays once and an endless one would not: the start-up, the
/// round trip of the few probe requests sent while the rate limits are learned, the burst that
/// fills the slots, and the tail where they drain. `None` when the run is too short to tell
/// (every row went out in one or two rounds).
///
/// With a fixed number of slots see [`block_rate`]; with `auto`, whose slots change as it
/// goes, [`window_rate`].
fn sustained_rate(spans: &[Span], concurrency: Concurrency) -> Option<f64> {
    match concurrency {
        Concurrency::Fixed(c) => block_rate(spans, c),
        Concurrency::Auto => window_rate(spans),
    }
}

/// The rate at which rows are sent between two blocks of `c` consecutive sends, timed at their
/// means. In a closed loop of `c` slots the send of the (k + c)-th row follows the k-th answer,
/// so the mean of a block moves on by one round trip per `c` rows whether the rows of a round
/// go out together (a server with fixed latency answers in rounds) or one by one; paced by a
/// rate limit instead, sends are steady anyway. The first block is the first one that answers
/// sent: after the probe requests and the burst that filled the slots when it came back. The last
/// block is the last `c` sends, each following an answer until the very last.
fn block_rate(spans: &[Span], c: usize) -> Option<f64> {
    let c = c.max(1);
    let first_answer = spans.iter().map(|s| s.start_ms + s.latency_ms).min()?;
    // Each row's first send (its retries hold the same slot).
    let mut first_send: HashMap<u64, (u32, i64)> = HashMap::new();
    for s in spans {
        let e = first_send.entry(s.seq).or_insert((s.attempt, s.start_ms));
        if s.attempt < e.0 {
            *e = (s.attempt, s.start_ms);
        }
    }
    let mut sends: Vec<i64> = first_send.values().map(|(_, t)| *t).collect();
    sends.sort_unstable();
    let before = sends.iter().filter(|t| **t < first_answer).count();
    // One request went alone (the probe), then every slot was filled at once.
    let start = if before < c { before + c } else { before };
    let n = sends.len();
    if start + 2 * c > n {
        return None;
    }
    let mean = |block: &[i64]| block.iter().map(|t| *t as f64).sum::<f64>() / block.len() as f64;
    let first = mean(&sends[start..start + c]);
    let last = mean(&sends[n - c..]);
    let rows = n - c - start;
    let window = last - first;
    (window >= MIN_WINDOW_MS as f64 && rows >= MIN_WINDOW_ROWS)
        .then(|| rows as f64 * 1000.0 / window)
}

/// Rows answered per second between two answers, A and B, with every slot busy in between: A
/// is the first answer to a row sent after the first answer of the run (the first round of the
/// full run coming back), B the last send (after it the slots drain). For `auto`, whose slots
/// change as it goes; it counts whole rounds only approximately when answers come in rounds.
fn window_rate(spans: &[Span]) -> Option<f64> {
    let first_answer = spans.iter().map(|s| s.start_ms + s.latency_ms).min()?;
    let mut last_attempt: HashMap<u64, Span> = HashMap::new();
    for s in spans {
        let e = last_attempt.entry(s.seq).or_insert(*s);
        if s.attempt > e.attempt {
            *e = *s;
        }
    }
    let ends: Vec<(i64, i64)> = last_attempt
        .values()
        .map(|s| (s.start_ms, s.start_ms + s.latency_ms))
        .collect();
    let last_send = ends.iter().map(|(start, _)| *start).max()?;
    let a = ends
        .iter()
        .filter(|(start, _)| *start >= first_answer)
        .map(|(_, end)| *end)
        .min()?;
    let b = last_send;
    let answered_by = |t: i64| ends.iter().filter(|(_, end)| *end <= t).count();
    let rows = answered_by(b).saturating_sub(answered_by(a + EDGE_MS));
    let window = b - a;
    (window >= MIN_WINDOW_MS && rows >= MIN_WINDOW_ROWS)
        .then(|| rows as f64 * 1000.0 / window as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Concurrency::{Auto, Fixed};

    fn span(seq: u64, attempt: u32, start_ms: i64, latency_ms: i64) -> Span {
        Span {
            seq,
            attempt,
            start_ms,
            latency_ms,
        }
    }

    /// A closed loop of `c` slots with a fixed latency, opened by one round trip of probe
    /// requests as the runner does while it learns the rate limits.
    fn waves(rows: u64, c: u64, latency: i64, probe: bool) -> Vec<Span> {
        let mut spans = Vec::new();
        let mut t = 0;
        let mut seq = 0;
        if probe {
            spans.push(span(0, 1, 0, latency));
            seq = 1;
            t = latency;
        }
        while seq < rows {
            for _ in 0..c.min(rows - seq) {
                spans.push(span(seq, 1, t, latency));
                seq += 1;
            }
            t += latency;
        }
        spans
    }

    #[track_caller]
    fn assert_near(r: Option<f64>, expected: f64, tolerance: f64) {
        let r = r.expect("a sustained rate");
        assert!(
            (r / expected - 1.0).abs() <= tolerance,
            "{r} is not within {tolerance} of {expected}"
        );
    }

    #[test]
    fn sustained_rate_is_the_steady_state_of_a_closed_loop() {
        // 200 rows at 64 in flight and 100 ms: a probe, then rounds of 64, 64, 64 and 7. The
        // end-to-end rate is 200 / 0.5 s = 400 rows/s; the loop runs at 640.
        for spans in [waves(200, 64, 100, true), waves(200, 64, 100, false)] {
            assert_near(block_rate(&spans, 64), 640.0, 0.001);
            assert_near(window_rate(&spans), 640.0, 0.001);
        }
        let spans = waves(200, 1, 100, true);
        assert_near(block_rate(&spans, 1), 10.0, 0.001);
        assert_near(window_rate(&spans), 10.0, 0.001);
        let spans = waves(80, 16, 20, true);
        assert_near(block_rate(&spans, 16), 800.0, 0.001);
        assert_near(window_rate(&spans), 800.0, 0.001);
        assert_near(sustained_rate(&spans, Fixed(16)), 800.0, 0.001);
        assert_near(sustained_rate(&spans, Auto), 800.0, 0.001);
    }

    /// A closed loop of `c` slots against a server of `capacity` that serves each request in
    /// `latency` plus up to `jitter` ms (a fixed pseudo-random sequence), first come first
    /// served; with `probe`, one request goes alone first, as the runner sends it.
    fn simulate(
        rows: u64,
        c: usize,
        capacity: usize,
        latency: f64,
        jitter: f64,
        probe: bool,
    ) -> Vec<Span> {
        let mut servers = vec![0.0f64; capacity];
        let mut rng = 12345u64;
        let mut serve = |sent: f64| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let extra = jitter * ((rng >> 33) as f64 / (1u64 << 31) as f64);
            let (i, free) = servers
                .iter()
                .copied()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            let end = sent.max(free) + latency + extra;
            servers[i] = end;
            end
        };
        let mut spans = Vec::new();
        let mut record = |seq: u64, sent: f64, end: f64| {
            // Whole milliseconds, truncated, as the journal keeps them.
            let start = (1_700_000_000_000.0 + sent).floor() as i64;
            spans.push(span(seq, 1, start, (end - sent).floor() as i64));
        };
        let mut next = 0u64;
        let mut now = 0.0;
        if probe {
            let end = serve(0.0);
            record(0, 0.0, end);
            next = 1;
            now = end;
        }
        // Slots become free at these times.
        let mut free: Vec<f64> = vec![now; c];
        while next < rows {
            let (i, t) = free
                .iter()
                .copied()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            let end = serve(t);
            record(next, t, end);
            free[i] = end;
            next += 1;
        }
        spans
    }

    #[test]
    fn sustained_rate_with_jitter_and_a_server_queue() {
        // Latency 100 to 140 ms (mean 120): 64 in flight make 533 rows/s, 8 make 67.
        let spans = simulate(400, 64, 1000, 100.0, 40.0, true);
        assert_near(block_rate(&spans, 64), 64.0 / 0.120, 0.03);
        assert_near(window_rate(&spans), 64.0 / 0.120, 0.05);
        let spans = simulate(200, 8, 1000, 100.0, 40.0, true);
        assert_near(block_rate(&spans, 8), 8.0 / 0.120, 0.03);
        assert_near(window_rate(&spans), 8.0 / 0.120, 0.05);
        // Rounds whose answers spread over 4 ms (a loaded machine): still whole rounds.
        let spans = simulate(200, 16, 1000, 100.0, 4.0, true);
        assert_near(block_rate(&spans, 16), 16.0 / 0.102, 0.01);
        // A server that serves 16 at once in 50 ms tops out at 320 rows/s however many are
        // sent; the opening burst of 64 must not count as throughput.
        for c in [32, 64] {
            let spans = simulate(300, c, 16, 50.0, 0.0, true);
            assert_near(block_rate(&spans, c), 320.0, 0.01);
            assert_near(window_rate(&spans), 320.0, 0.03);
        }
        let spans = simulate(300, 16, 16, 50.0, 0.0, false);
        assert_near(block_rate(&spans, 16), 320.0, 0.01);
    }

    #[test]
    fn retries_count_once_and_short_runs_have_no_sustained_rate() {
        // Everything in one or two rounds after the probe: nothing to measure.
        assert_eq!(sustained_rate(&waves(40, 64, 100, true), Fixed(64)), None);
        assert_eq!(sustained_rate(&waves(40, 64, 100, true), Auto), None);
        assert_eq!(sustained_rate(&waves(128, 64, 100, true), Fixed(64)), None);
        assert_eq!(sustained_rate(&[], Fixed(4)), None);
        assert_eq!(sustained_rate(&[], Auto), None);
        // Row 5 failed its first attempt and was sent again in the same slot: it is still one
        // row, started when its first attempt was.
        let mut spans = waves(100, 10, 100, true);
        let first = spans.iter_mut().find(|s| s.seq == 5).unwrap();
        first.latency_ms = 30;
        let retry = span(5, 2, first.start_ms + 60, 40);
        spans.push(retry);
        assert_near(block_rate(&spans, 10), 100.0, 0.001);
    }
}

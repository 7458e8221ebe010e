//! End-to-end tests of the durability features: the SQLite journal and `--resume` after
//! `kill -9`, Ctrl-C and SIGTERM with the grace period, the spend cap, `--dry-run`, the audit log,
//! transport faults, hostile input files and formula-safe cells. The real binary runs against
//! `batch mock` servers the tests start on 127.0.0.1; the proofs come from exit codes, the
//! results CSV, the state file (read with rusqlite), the audit log and the mock's `/stats`.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::util::{
    self, MockProcess, Row, TestDir, assert_code, attempts, field, mock_answer, numbered_csv,
    responses, run, show, stat, stderr, stdout,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn count(rows: &[Row], status: &str) -> usize {
    rows.iter().filter(|r| field(r, "status") == status).count()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Asserts the results of a `numbered_csv(n)` input run with `--prompt '{{ text }}'`: every row
/// once, in input order, ok, with the answer to its own prompt.
#[track_caller]
fn assert_numbered_rows_all_ok(rows: &[Row], n: usize) {
    assert_eq!(rows.len(), n, "every input row exactly once");
    for (i, row) in rows.iter().enumerate() {
        let k = i + 1;
        assert_eq!(field(row, "id"), format!("r{k:04}"), "row {k} out of order");
        assert_eq!(field(row, "text"), format!("item number {k}"), "row {k}");
        assert_eq!(field(row, "status"), "ok", "row {k}: {row:?}");
        assert_eq!(field(row, "error"), "", "row {k}: {row:?}");
        assert_eq!(
            field(row, "output"),
            mock_answer(&format!("item number {k}")),
            "row {k} has another row's answer"
        );
        assert!(attempts(row) >= 1, "row {k}: {row:?}");
    }
}

/// A small deterministic PRNG (splitmix64), so the "random" moments are the same on every run.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Polls `cond` every 10 ms until it holds; panics after `limit`.
#[track_caller]
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        thread::sleep(ms(10));
    }
}

/// Sends `signal` (`INT`, `TERM`, ...) to process `pid` with kill(1).
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// `batch` running in the background, its output collected by two threads. Killed on drop.
struct Running {
    child: Child,
    out: Option<JoinHandle<Vec<u8>>>,
    err: Option<JoinHandle<Vec<u8>>>,
    reaped: bool,
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

impl Running {
    fn start(dir: &TestDir, args: &[&str]) -> Running {
        let mut child = util::cmd(dir, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn batch");
        let out = drain(child.stdout.take().expect("stdout"));
        let err = drain(child.stderr.take().expect("stderr"));
        Running {
            child,
            out: Some(out),
            err: Some(err),
            reaped: false,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    fn has_exited(&mut self) -> bool {
        self.child.try_wait().expect("poll batch").is_some()
    }

    fn collect(&mut self, status: ExitStatus) -> Output {
        self.reaped = true;
        Output {
            status,
            stdout: self.out.take().expect("collected once").join().unwrap(),
            stderr: self.err.take().expect("collected once").join().unwrap(),
        }
    }

    /// Waits for the exit; kills it and panics after `limit`.
    fn wait(mut self, limit: Duration) -> Output {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll batch") {
                return self.collect(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let status = self.child.wait().expect("wait for batch");
                let out = self.collect(status);
                panic!("batch did not exit within {limit:?}\n{}", show(&out));
            }
            thread::sleep(ms(10));
        }
    }

    /// SIGKILL (`kill -9`), then the exit status.
    fn kill_9(mut self) -> Output {
        self.child.kill().expect("SIGKILL batch");
        let status = self.child.wait().expect("wait for batch");
        self.collect(status)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A row as committed to the state file's journal.
#[derive(Debug, Clone, PartialEq)]
struct Committed {
    id: String,
    status: String,
    output: String,
    attempts: i64,
    finished_at: i64,
}

/// The finished rows (`ok` or `failed`) committed to the state file at `path`, by `seq`; empty
/// when there is no file or no table yet (a run killed while starting). Rows recorded as
/// `skipped`, if the journal keeps them, are not finished: a resumed run sends them.
fn journal(path: &Path) -> BTreeMap<i64, Committed> {
    if !path.exists() {
        return BTreeMap::new();
    }
    let conn = rusqlite::Connection::open(path).expect("open the state file");
    let Ok(mut stmt) = conn.prepare(
        "SELECT seq, id, status, output, attempts, finished_ms FROM rows \
         WHERE status IN ('ok', 'failed')",
    ) else {
        return BTreeMap::new();
    };
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            Committed {
                id: r.get(1)?,
                status: r.get(2)?,
                output: r.get(3)?,
                attempts: r.get(4)?,
                finished_at: r.get(5)?,
            },
        ))
    })
    .expect("read the journal")
    .map(|r| r.expect("journal row"))
    .collect()
}

/// A value of the state file's `meta` table.
fn meta(path: &Path, key: &str) -> Option<String> {
    if !path.exists() {
        return None;
    }
    let conn = rusqlite::Connection::open(path).expect("open the state file");
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .ok()
}

/// Every row of `before` is still in `after`, untouched: not sent and committed again (which
/// would have rewritten its `finished_ms` and attempts).
#[track_caller]
fn assert_journal_kept(before: &BTreeMap<i64, Committed>, after: &BTreeMap<i64, Committed>) {
    for (seq, row) in before {
        assert_eq!(
            after.get(seq),
            Some(row),
            "row seq {seq} was committed, then changed or lost"
        );
    }
}

/// `dir` holds `inputs` and nothing else: no results, temporary or state file was created.
#[track_caller]
fn assert_only_files(dir: &TestDir, inputs: &[&str]) {
    let mut want: Vec<String> = inputs.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(dir.files(), want, "files besides the inputs were created");
}

// ---------------------------------------------------------------------------------------------
// kill -9
// ---------------------------------------------------------------------------------------------

#[test]
fn kill_9_at_random_moments_then_resume_pays_for_each_answer_at_most_once() {
    const ROWS: usize = 400;
    const CONCURRENCY: u64 = 8;
    const KILLS: u64 = 4;
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(ROWS));
    let state = dir.join("in.results.sqlite");
    let mock = MockProcess::start(&["--latency-ms", "30", "--error-rate", "0.05", "--seed", "20"]);
    let base = [
        "run",
        "in.csv",
        "--prompt",
        "{{ text }}",
        "--base-url",
        &mock.url,
        "-j",
        "8",
        "--max-retries",
        "10",
        "-q",
    ];
    let mut rng = Prng(0x0DDB_1A5E_5EED);
    let mut kills = 0u64;

    while kills < KILLS {
        // A run killed before it recorded anything is started afresh; later ones resume.
        let resume = meta(&state, "settings").is_some();
        let before = mock.stats();
        let committed_before = journal(&state);
        let mut args = base.to_vec();
        if resume {
            args.push("--resume");
        }
        let mut job = Running::start(&dir, &args);
        // The moment counts from this run's first request: before it the binary is still
        // loading its tokenizer (most of a second in a debug build) and a kill proves little.
        wait_until(Duration::from_secs(60), "the run's first request", || {
            stat(&mock.stats(), "requests") > stat(&before, "requests") || job.has_exited()
        });
        thread::sleep(ms(rng.between(150, 900)));
        if job.has_exited() {
            // It finished (or failed) before the kill.
            assert_code(&job.wait(Duration::from_secs(1)), 0);
            break;
        }
        let out = job.kill_9();
        if out.status.signal() != Some(9) {
            // It finished on its own just before the kill.
            assert_code(&out, 0);
            break;
        }
        kills += 1;

        // Let the mock finish (or drop) what the dead run had in flight before counting.
        wait_until(Duration::from_secs(10), "the mock to drain", || {
            stat(&mock.stats(), "in_flight") == 0
        });
        let after = mock.stats();
        let committed_after = journal(&state);
        assert_journal_kept(&committed_before, &committed_after);
        // Every answer this run was paid for is committed, but for the rows in flight at the
        // kill (at most one slot each).
        let paid = responses(&after, 200) - responses(&before, 200);
        let new = (committed_after.len() - committed_before.len()) as u64;
        assert!(
            paid <= new + CONCURRENCY,
            "kill {kills}: {paid} answers paid for but only {new} rows committed (at most \
             {CONCURRENCY} may be lost in flight)"
        );
    }
    assert!(
        kills >= 2,
        "the run finished before it could be killed more than {kills} time(s)"
    );

    // The last run resumes to the end and sends only the rows the journal does not have.
    let before = mock.stats();
    let committed_before = journal(&state);
    assert!(
        !committed_before.is_empty(),
        "the kills left nothing committed"
    );
    let mut args = base.to_vec();
    args.extend(["--resume", "--summary-json", "summary.json"]);
    let out = run(&dir, &args);
    assert_code(&out, 0);
    let after = mock.stats();
    // At most once each (an answer that arrived but was not committed before a kill may come
    // from the response cache).
    let sent = responses(&after, 200) - responses(&before, 200);
    assert!(
        sent <= (ROWS - committed_before.len()) as u64,
        "the final run got {sent} answers for {} rows not committed yet",
        ROWS - committed_before.len()
    );
    let committed = journal(&state);
    assert_journal_kept(&committed_before, &committed);
    assert_eq!(committed.len(), ROWS);
    assert_eq!(meta(&state, "finished").as_deref(), Some("true"));

    let rows = dir.results("in.results.csv");
    assert_numbered_rows_all_ok(&rows, ROWS);
    // The results agree with the journal, row by row.
    for (i, row) in rows.iter().enumerate() {
        let c = &committed[&(i as i64)];
        assert_eq!((c.id.as_str(), c.status.as_str()), (field(row, "id"), "ok"));
        assert_eq!(c.output, field(row, "output"));
    }
    let total_paid = responses(&after, 200);
    assert!(
        total_paid <= ROWS as u64 + CONCURRENCY * kills,
        "{total_paid} answers paid for {ROWS} rows over {kills} kills at -j {CONCURRENCY}"
    );
    let summary: serde_json::Value = serde_json::from_str(&dir.read("summary.json")).unwrap();
    assert_eq!(
        summary["resumed"],
        committed_before.len() as u64,
        "{summary}"
    );
    assert_eq!(summary["ok"], ROWS as u64, "{summary}");
    // The stale temporary file of the killed runs was replaced by the final results.
    assert_eq!(dir.result_files(), ["in.results.csv"]);
}

// ---------------------------------------------------------------------------------------------
// Ctrl-C, SIGTERM and the grace period
// ---------------------------------------------------------------------------------------------

#[test]
fn sigint_writes_every_row_and_resume_sends_only_the_unanswered_ones() {
    const ROWS: usize = 300;
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(ROWS));
    let state = dir.join("in.results.sqlite");
    let mock = MockProcess::start(&["--latency-ms", "100"]);
    let base = [
        "run",
        "in.csv",
        "--prompt",
        "{{ text }}",
        "--base-url",
        &mock.url,
        "-q",
    ];

    let mut args = base.to_vec();
    args.extend(["-j", "4"]);
    let mut job = Running::start(&dir, &args);
    wait_until(Duration::from_secs(60), "the run's first request", || {
        stat(&mock.stats(), "requests") > 0 || job.has_exited()
    });
    thread::sleep(ms(700));
    assert!(!job.has_exited(), "the run ended before the signal");
    job.signal("INT");
    let out = job.wait(Duration::from_secs(60));
    assert_code(&out, 130);
    assert!(stderr(&out).contains("interrupted"), "{}", show(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", show(&out));

    let rows = dir.results("in.results.csv");
    assert_eq!(
        rows.len(),
        ROWS,
        "every row is in the results, answered or not"
    );
    let (ok, skipped) = (count(&rows, "ok"), count(&rows, "skipped"));
    assert_eq!(ok + skipped, ROWS, "only ok and skipped rows");
    assert!(ok > 0 && skipped > 0, "{ok} ok, {skipped} skipped");
    for (i, row) in rows.iter().enumerate() {
        let k = i + 1;
        assert_eq!(field(row, "id"), format!("r{k:04}"));
        if field(row, "status") == "ok" {
            assert_eq!(
                field(row, "output"),
                mock_answer(&format!("item number {k}"))
            );
        } else {
            assert_eq!(field(row, "output"), "", "{row:?}");
            assert!(field(row, "error").contains("interrupted"), "{row:?}");
        }
    }

    // The state file holds exactly the finished rows, and says the run is not over.
    let committed = journal(&state);
    assert_eq!(committed.len(), ok + count(&rows, "failed"));
    for (seq, c) in &committed {
        assert_eq!(c.status, "ok");
        assert_eq!(field(&rows[*seq as usize], "status"), "ok");
    }
    assert_eq!(meta(&state, "finished").as_deref(), Some("false"));
    let first = mock.stats();
    // In-flight rows got the grace period and were committed: no answer was thrown away.
    let paid = responses(&first, 200);
    assert!(
        (ok as u64..=ok as u64 + 4).contains(&paid),
        "{paid} answers for {ok} ok rows"
    );

    // Resuming (faster: the concurrency does not change requests) sends only the rest.
    let mut args = base.to_vec();
    args.extend(["-j", "32", "--resume", "--summary-json", "summary.json"]);
    let out = run(&dir, &args);
    assert_code(&out, 0);
    assert_numbered_rows_all_ok(&dir.results("in.results.csv"), ROWS);
    let second = mock.stats();
    assert_eq!(
        stat(&second, "requests") - stat(&first, "requests"),
        (ROWS - ok) as u64,
        "the resumed run must send the unanswered rows and nothing else"
    );
    assert!(
        responses(&second, 200) <= ROWS as u64 + 4,
        "stats: {second}"
    );
    let summary: serde_json::Value = serde_json::from_str(&dir.read("summary.json")).unwrap();
    assert_eq!(summary["resumed"], ok as u64, "{summary}");
    assert_eq!(meta(&state, "finished").as_deref(), Some("true"));
}

/// Flags that skip the limiter's single probe request (it holds the others back until the first
/// answer), so that every slot fills at once against a slow mock.
const NO_PROBE: [&str; 4] = ["--rpm", "60000", "--tpm", "100000000"];

#[test]
fn grace_period_ends_and_requests_still_in_flight_are_abandoned_as_skipped() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(10));
    let mock = MockProcess::start(&["--latency-ms", "3000"]);
    let mut args = vec![
        "run",
        "in.csv",
        "--prompt",
        "{{ text }}",
        "--base-url",
        &mock.url,
        "-j",
        "2",
        "--grace",
        "0.5",
        "-q",
    ];
    args.extend(NO_PROBE);
    let mut job = Running::start(&dir, &args);
    wait_until(Duration::from_secs(60), "two requests in flight", || {
        stat(&mock.stats(), "in_flight") == 2 || job.has_exited()
    });
    thread::sleep(ms(300));
    let signalled = Instant::now();
    job.signal("INT");
    let out = job.wait(Duration::from_secs(30));
    let took = signalled.elapsed();
    assert_code(&out, 130);
    // The answers would take 3 s; the grace period is 0.5 s.
    assert!(
        took < Duration::from_millis(2500),
        "exit took {took:?} after the signal\n{}",
        show(&out)
    );

    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), 10);
    assert_eq!(count(&rows, "skipped"), 10, "{rows:?}");
    let abandoned: Vec<&Row> = rows.iter().filter(|r| attempts(r) == 1).collect();
    assert_eq!(abandoned.len(), 2, "the two rows in flight: {rows:?}");
    for row in &abandoned {
        let error = field(row, "error");
        assert!(
            error.contains("interrupted") && error.contains("grace"),
            "{row:?}"
        );
    }
    for row in rows.iter().filter(|r| attempts(r) == 0) {
        assert_eq!(field(row, "error"), "interrupted", "{row:?}");
    }
    // Nothing finished, so nothing is committed; the run can be resumed.
    let state = dir.join("in.results.sqlite");
    assert!(journal(&state).is_empty());
    assert_eq!(meta(&state, "finished").as_deref(), Some("false"));
}

#[test]
fn second_signal_exits_at_once_and_leaves_a_consistent_state_file() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(6));
    let mock = MockProcess::start(&["--latency-ms", "3000"]);
    let mut args = vec![
        "run",
        "in.csv",
        "--prompt",
        "{{ text }}",
        "--base-url",
        &mock.url,
        "-j",
        "2",
        "--grace",
        "30",
        "-q",
    ];
    args.extend(NO_PROBE);
    let mut job = Running::start(&dir, &args);
    wait_until(Duration::from_secs(60), "two requests in flight", || {
        stat(&mock.stats(), "in_flight") == 2 || job.has_exited()
    });
    // SIGTERM starts the 30 s grace period; Ctrl-C cuts it short.
    job.signal("TERM");
    thread::sleep(ms(200));
    assert!(!job.has_exited(), "the first signal ended the run at once");
    let signalled = Instant::now();
    job.signal("INT");
    let out = job.wait(Duration::from_secs(30));
    let took = signalled.elapsed();
    assert_code(&out, 130);
    assert!(took < Duration::from_millis(2500), "exit took {took:?}");
    assert!(stderr(&out).contains("second interrupt"), "{}", show(&out));

    let state = dir.join("in.results.sqlite");
    let conn = rusqlite::Connection::open(&state).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    assert!(journal(&state).is_empty());
    assert_eq!(meta(&state, "finished").as_deref(), Some("false"));
    // The unfinished run is recorded: running it again without --resume is refused.
    let requests = stat(&mock.stats(), "requests");
    let out = run(&dir, &args);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("--resume"), "{}", show(&out));
    assert_eq!(stat(&mock.stats(), "requests"), requests);
}

// ---------------------------------------------------------------------------------------------
// Spend cap
// ---------------------------------------------------------------------------------------------

/// gpt-4.1-mini, the default model, at its embedded price in USD per token.
const INPUT_PRICE: f64 = 0.40e-6;
const OUTPUT_PRICE: f64 = 1.60e-6;

#[test]
fn spend_cap_is_never_exceeded_with_64_requests_in_flight() {
    const ROWS: usize = 500;
    // A row ("item number N") is 11 prompt tokens and its answer 9 completion tokens: about
    // $0.0000188, so the whole file costs about $0.0094 and this cap covers about half of it.
    // Each request reserves its worst case first (prompt with a margin plus --max-tokens 20,
    // about $0.0000436), 64 at a time.
    const CAP: f64 = 0.0047;
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(ROWS));
    let mock = MockProcess::start(&["--latency-ms", "50"]);
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--base-url",
            &mock.url,
            "-j",
            "64",
            "--max-tokens",
            "20",
            "--max-cost",
            "0.0047",
            "--summary-json",
            "summary.json",
            "-q",
        ],
    );
    assert_code(&out, 1);

    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), ROWS);
    let (ok, skipped) = (count(&rows, "ok"), count(&rows, "skipped"));
    assert_eq!(count(&rows, "failed"), 0);
    assert!(
        ok > ROWS / 10 && skipped > ROWS / 10,
        "the cap should stop the run midway: {ok} ok, {skipped} skipped"
    );
    let spent: f64 = rows
        .iter()
        .filter(|r| field(r, "status") == "ok")
        .map(|r| field(r, "cost_usd").parse::<f64>().unwrap())
        .sum();
    assert!(
        spent > 0.0 && spent <= CAP + 1e-12,
        "spent ${spent} of ${CAP}"
    );
    for row in rows.iter().filter(|r| field(r, "status") == "skipped") {
        assert!(field(row, "error").contains("spend cap"), "{row:?}");
        assert_eq!(attempts(row), 0, "{row:?}");
    }

    // What the server actually answered, at list price, is within the cap too.
    let stats = mock.stats();
    let billed = stat(&stats, "prompt_tokens") as f64 * INPUT_PRICE
        + stat(&stats, "completion_tokens") as f64 * OUTPUT_PRICE;
    assert!(
        billed <= CAP + 1e-12,
        "the server billed ${billed} over ${CAP}"
    );
    assert!(
        (billed - spent).abs() < 1e-9,
        "billed {billed}, results {spent}"
    );
    assert_eq!(responses(&stats, 200), ok as u64);
    assert!(
        stat(&stats, "max_in_flight") >= 32,
        "the concurrency was not high: {stats}"
    );

    let summary: serde_json::Value = serde_json::from_str(&dir.read("summary.json")).unwrap();
    let cost = summary["cost_usd"].as_f64().expect("summary cost");
    assert!(cost <= CAP + 1e-12, "{summary}");
    let stopped = summary["stopped"]
        .as_str()
        .expect("summary says why it stopped");
    assert!(
        stopped.contains("spend cap") && stopped.contains("--max-cost"),
        "{summary}"
    );
    assert_eq!(summary["skipped"], skipped as u64);
}

#[test]
fn spend_cap_covers_the_whole_run_across_resumes() {
    const ROWS: usize = 150;
    // About 80 rows' worth (see above for the cost of a row).
    const CAP: f64 = 0.0015;
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(ROWS));
    let mock = MockProcess::start(&["--latency-ms", "20"]);
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--base-url",
            mock.url.as_str(),
            "-j",
            "16",
            "--max-tokens",
            "20",
            "-q",
        ];
        a.extend_from_slice(extra);
        a
    };
    let billed = || {
        let stats = mock.stats();
        stat(&stats, "prompt_tokens") as f64 * INPUT_PRICE
            + stat(&stats, "completion_tokens") as f64 * OUTPUT_PRICE
    };

    assert_code(&run(&dir, args(&["--max-cost", "0.0015"])), 1);
    let first = count(&dir.results("in.results.csv"), "ok");
    assert!(first > 0 && first < ROWS, "{first} rows ok");
    // Resuming with the same cap may use what is left of it, and no more.
    assert_code(&run(&dir, args(&["--max-cost", "0.0015", "--resume"])), 1);
    let rows = dir.results("in.results.csv");
    assert!(count(&rows, "skipped") > 0);
    for row in rows.iter().filter(|r| field(r, "status") == "skipped") {
        assert!(field(row, "error").contains("spend cap"), "{row:?}");
    }
    let spent: f64 = rows
        .iter()
        .filter_map(|r| field(r, "cost_usd").parse::<f64>().ok())
        .sum();
    assert!(spent <= CAP + 1e-12, "results cost ${spent}, cap ${CAP}");
    assert!(
        billed() <= CAP + 1e-12,
        "billed ${} over two runs, cap ${CAP}",
        billed()
    );
}

#[test]
fn spend_cap_counts_the_answers_a_forced_resume_replaced() {
    const ROWS: usize = 100;
    // The whole file costs about $0.00188; re-sending it all would pass this cap.
    const CAP: f64 = 0.003;
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(ROWS));
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--base-url",
            mock.url.as_str(),
            "--max-tokens",
            "20",
            "--max-cost",
            "0.003",
            "-q",
        ];
        a.extend_from_slice(extra);
        a
    };
    assert_code(&run(&dir, args(&[])), 0);
    // A changed setting makes every request new; the cap stops the re-sending partway.
    let forced = ["--temperature", "0.5", "--resume", "--force"];
    assert_code(&run(&dir, args(&forced)), 1);
    // Resuming again with the same cap must not spend past it.
    let out = run(&dir, args(&forced));
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", show(&out));
    let stats = mock.stats();
    let billed = stat(&stats, "prompt_tokens") as f64 * INPUT_PRICE
        + stat(&stats, "completion_tokens") as f64 * OUTPUT_PRICE;
    assert!(
        billed <= CAP + 1e-12,
        "the run was billed ${billed}, cap ${CAP}"
    );
}

#[test]
fn max_cost_without_max_tokens_is_refused_naming_max_tokens() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(3));
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--mock",
            "--max-cost",
            "1",
        ],
    );
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("--max-cost") && err.contains("--max-tokens"),
        "{}",
        show(&out)
    );
    assert_only_files(&dir, &["in.csv"]);
}

#[test]
fn max_cost_refusals_read_as_plain_sentences() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(3));
    for extra in [
        &[][..],
        &["--max-tokens", "5", "--model", "no-such-model"][..],
    ] {
        let mut args = vec![
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--mock",
            "--max-cost",
            "1",
        ];
        args.extend(extra);
        let out = run(&dir, &args);
        assert_code(&out, 2);
        assert!(!stderr(&out).contains("  "), "{}", show(&out));
    }
}

// ---------------------------------------------------------------------------------------------
// Dry run
// ---------------------------------------------------------------------------------------------

#[test]
fn dry_run_sends_nothing_writes_nothing_and_counts_the_tokens_a_run_sends() {
    const ROWS: usize = 40;
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(ROWS));
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    let args = [
        "run",
        "in.csv",
        "--prompt",
        "Summarize: {{ text }}",
        "--base-url",
        &mock.url,
        "--max-tokens",
        "20",
    ];
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let out = run(&dir, &dry);
    assert_code(&out, 0);
    let text = stdout(&out);
    let line = |start: &str| -> &str {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start:?} line\n{}", show(&out)))
    };
    assert!(text.contains("nothing was sent"), "{}", show(&out));
    assert!(
        line("Rows").contains(&format!(" {ROWS} ")),
        "{}",
        show(&out)
    );
    let prompts = line("Prompts");
    let tokens: u64 = prompts
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no token count in {prompts:?}"));
    assert!(prompts.contains("tokens") && tokens > 0, "{prompts}");
    assert!(line("Worst case").contains('$'), "{}", show(&out));

    assert_eq!(
        stat(&mock.stats(), "requests"),
        0,
        "the dry run sent a request"
    );
    assert_only_files(&dir, &["in.csv"]);

    // The count is the one the server makes when the run is real.
    let mut real = args.to_vec();
    real.push("-q");
    let out = run(&dir, &real);
    assert_code(&out, 0);
    assert_eq!(stat(&mock.stats(), "prompt_tokens"), tokens);
}

#[test]
fn dry_run_lists_every_input_problem_with_its_line_before_sending() {
    let dir = TestDir::new();
    // line 4: ragged; line 6: id "b" again (first on line 3); line 8: empty id.
    dir.create(
        "bad.csv",
        "id,text\na,1\nb,2\nc,3,oops\nd,4\nb,5\ne,6\n,7\nf,8\n",
    );
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    for extra in [&["--dry-run"][..], &[][..]] {
        let mut args = vec![
            "run",
            "bad.csv",
            "--prompt",
            "{{ text }}",
            "--base-url",
            &mock.url,
        ];
        args.extend(extra);
        let out = run(&dir, &args);
        assert_code(&out, 2);
        let err = stderr(&out);
        for want in [
            "line 4 has 3 fields",
            "line 6",
            "\"b\" is also on line 3",
            "line 8",
            "empty",
        ] {
            assert!(err.contains(want), "{args:?}: no {want:?}\n{}", show(&out));
        }
        let listed = err.lines().filter(|l| l.contains("bad.csv: line")).count();
        assert_eq!(listed, 3, "one line per problem\n{}", show(&out));
        assert_eq!(stat(&mock.stats(), "requests"), 0);
        assert_only_files(&dir, &["bad.csv"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Resume safety
// ---------------------------------------------------------------------------------------------

fn numbered_args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "in.csv",
        "--prompt",
        "{{ text }}",
        "--base-url",
        url,
        "-q",
    ];
    args.extend(extra);
    args
}

#[test]
fn unfinished_run_is_refused_without_resume_and_restart_discards_it() {
    const ROWS: usize = 20;
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(ROWS));
    // Out of quota after 5 answers: the run stops with rows never sent.
    let mock = MockProcess::start(&["--latency-ms", "5", "--quota-exhausted-after", "5"]);
    let out = run(&dir, numbered_args(&mock.url, &[]));
    assert_code(&out, 1);
    let rows = dir.results("in.results.csv");
    assert_eq!(count(&rows, "ok"), 5);
    assert!(count(&rows, "skipped") > 0, "{rows:?}");
    let results = dir.read_bytes("in.results.csv");
    let requests = stat(&mock.stats(), "requests");

    let out = run(&dir, numbered_args(&mock.url, &[]));
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("unfinished") && err.contains("--resume") && err.contains("--restart"),
        "{}",
        show(&out)
    );
    assert_eq!(
        stat(&mock.stats(), "requests"),
        requests,
        "a refused run sent"
    );
    assert_eq!(dir.read_bytes("in.results.csv"), results, "results changed");

    // --restart forgets the recorded run (even for another endpoint): every row is sent again.
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--mock=latency-ms=5",
            "--restart",
            "--summary-json",
            "s.json",
            "-q",
        ],
    );
    assert_code(&out, 0);
    assert_numbered_rows_all_ok(&dir.results("in.results.csv"), ROWS);
    let summary: serde_json::Value = serde_json::from_str(&dir.read("s.json")).unwrap();
    assert_eq!(summary["resumed"], 0, "{summary}");
}

#[test]
fn resume_with_a_different_model_is_refused_unless_forced_then_resends_every_row() {
    const ROWS: usize = 12;
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(ROWS));
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    assert_code(&run(&dir, numbered_args(&mock.url, &[])), 0);
    let results = dir.read_bytes("in.results.csv");
    let state = dir.join("in.results.sqlite");
    let committed = journal(&state);

    let out = run(
        &dir,
        numbered_args(&mock.url, &["--resume", "--model", "gpt-4o"]),
    );
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("--model") && err.contains("--force"),
        "{}",
        show(&out)
    );
    assert_eq!(stat(&mock.stats(), "requests"), ROWS as u64);
    assert_eq!(dir.read_bytes("in.results.csv"), results);
    assert_eq!(
        journal(&state),
        committed,
        "a refused resume changed the state"
    );

    let out = run(
        &dir,
        numbered_args(&mock.url, &["--resume", "--model", "gpt-4o", "--force"]),
    );
    assert_code(&out, 0);
    // Every request changed (the model is in the body), so every row was sent again.
    assert_eq!(stat(&mock.stats(), "requests"), 2 * ROWS as u64);
    let rows = dir.results("in.results.csv");
    assert_numbered_rows_all_ok(&rows, ROWS);
    for row in &rows {
        assert_eq!(field(row, "model"), "gpt-4o", "{row:?}");
    }
    let settings = meta(&state, "settings").unwrap();
    assert!(settings.contains("\"gpt-4o\""), "{settings}");
}

#[test]
fn resume_resends_only_the_rows_whose_request_changed() {
    const ROWS: usize = 10;
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(ROWS));
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    assert_code(&run(&dir, numbered_args(&mock.url, &[])), 0);
    let state = dir.join("in.results.sqlite");
    let committed = journal(&state);

    // Rows 3 and 7 get new text; the file, the template and the model stay the same.
    let edited = numbered_csv(ROWS)
        .replace("r0003,item number 3\n", "r0003,a changed third row\n")
        .replace("r0007,item number 7\n", "r0007,a changed seventh row\n");
    dir.create("in.csv", &edited);
    let out = run(
        &dir,
        numbered_args(&mock.url, &["--resume", "--summary-json", "s.json"]),
    );
    assert_code(&out, 0);
    assert_eq!(
        stat(&mock.stats(), "requests"),
        ROWS as u64 + 2,
        "only the two changed rows are sent again"
    );
    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), ROWS);
    for (i, row) in rows.iter().enumerate() {
        let text = field(row, "text");
        assert_eq!(field(row, "status"), "ok");
        assert_eq!(field(row, "output"), mock_answer(text), "row {}", i + 1);
    }
    assert_eq!(field(&rows[2], "text"), "a changed third row");
    let after = journal(&state);
    for (seq, c) in &committed {
        if *seq == 2 || *seq == 6 {
            assert_ne!(after[seq], *c, "row {seq} was not sent again");
        } else {
            assert_eq!(after[seq], *c, "row {seq} was sent again");
        }
    }
    let summary: serde_json::Value = serde_json::from_str(&dir.read("s.json")).unwrap();
    assert_eq!(summary["resumed"], ROWS as u64 - 2, "{summary}");
}

#[test]
fn failed_rows_are_sent_again_only_with_retry_failed() {
    const ROWS: usize = 20;
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(ROWS));
    let state = dir.join("in.results.sqlite");
    // Half the requests fail and there are no retries: some rows ok, some failed.
    let flaky = MockProcess::start(&["--latency-ms", "5", "--error-rate", "0.5", "--seed", "5"]);
    let port = flaky.port();
    let out = run(&dir, numbered_args(&flaky.url, &["--max-retries", "0"]));
    assert_code(&out, 1);
    let first = dir.results("in.results.csv");
    let failed = count(&first, "failed");
    assert!(failed > 0 && count(&first, "ok") > 0, "{first:?}");
    assert_eq!(count(&first, "ok") + failed, ROWS);
    let requests = stat(&flaky.stats(), "requests");
    assert_eq!(requests, ROWS as u64);

    // Plain --resume: failed rows stay failed, nothing is sent.
    let out = run(&dir, numbered_args(&flaky.url, &["--resume"]));
    assert_code(&out, 1);
    assert_eq!(
        stat(&flaky.stats(), "requests"),
        requests,
        "failed rows were re-sent"
    );
    let again = dir.results("in.results.csv");
    for (a, b) in first.iter().zip(&again) {
        for col in ["id", "status", "output", "error", "attempts"] {
            assert_eq!(field(a, col), field(b, col), "{col} changed");
        }
    }
    for row in again.iter().filter(|r| field(r, "status") == "failed") {
        assert!(field(row, "error").contains("server error"), "{row:?}");
    }

    // Against a healthy server at the same address (so the endpoint is unchanged),
    // --retry-failed sends the failed rows, and only them.
    drop(flaky);
    let healthy = MockProcess::start_on(port, &["--latency-ms", "5"]);
    let out = run(
        &dir,
        numbered_args(&healthy.url, &["--resume", "--retry-failed"]),
    );
    assert_code(&out, 0);
    assert_eq!(stat(&healthy.stats(), "requests"), failed as u64);
    let last = dir.results("in.results.csv");
    assert_numbered_rows_all_ok(&last, ROWS);
    for (a, b) in first.iter().zip(&last) {
        if field(a, "status") == "ok" {
            assert_eq!(
                field(a, "latency_ms"),
                field(b, "latency_ms"),
                "ok row redone"
            );
        }
    }
    assert_eq!(meta(&state, "finished").as_deref(), Some("true"));
}

#[test]
fn resume_without_a_recorded_run_is_refused() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(5));
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    let out = run(&dir, numbered_args(&mock.url, &["--resume"]));
    assert_code(&out, 2);
    assert!(stderr(&out).contains("nothing to resume"), "{}", show(&out));
    assert_eq!(stat(&mock.stats(), "requests"), 0);
    // Not even an empty state file is left behind.
    assert_only_files(&dir, &["in.csv"]);
}

#[test]
fn embedded_mock_resume_does_not_resend_finished_rows() {
    const ROWS: usize = 20;
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(ROWS));
    let args = |mock: &'static str, extra: &[&'static str]| {
        let mut a = vec!["run", "in.csv", "--prompt", "{{ text }}", mock, "-q"];
        a.extend(extra);
        a
    };
    // The quota runs out after 5 answers: 5 rows ok, the rest failed or skipped.
    let out = run(
        &dir,
        args("--mock=latency-ms=5,quota-exhausted-after=5", &[]),
    );
    assert_code(&out, 1);
    let ok = count(&dir.results("in.results.csv"), "ok");
    assert_eq!(ok, 5);
    let out = run(
        &dir,
        args(
            "--mock=latency-ms=5",
            &["--resume", "--retry-failed", "--summary-json", "s.json"],
        ),
    );
    assert_code(&out, 0);
    let summary: serde_json::Value = serde_json::from_str(&dir.read("s.json")).unwrap();
    assert_eq!(summary["resumed"], ok as u64, "{summary}");
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

/// Runs 30 rows against a mock injecting `kind` into 30% of the requests, with retries: every row
/// must end ok with its own answer.
///
/// The seed fixes the sequence of dice rolls, and so how many faults the run meets (the rolls go
/// to whichever request comes next; the run consumes them until 30 have succeeded). The seeds
/// are ones whose sequence has no long run of faults near its end, where the last row left would
/// take them all in a row and wait out a doubling backoff each time (0.5 s, 1 s, 2 s, ...).
fn survives_fault(kind: &str, seed: &str) {
    const ROWS: usize = 30;
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(ROWS));
    let fault = format!("{kind}=0.3");
    let mut mock_args = vec!["--fault", &fault, "--seed", seed, "--latency-ms", "5"];
    if kind == "trickle" {
        mock_args.extend(["--trickle-ms", "3000"]);
    }
    let mock = MockProcess::start(&mock_args);
    let out = run(
        &dir,
        numbered_args(&mock.url, &["--timeout", "1", "--max-retries", "8"]),
    );
    assert_code(&out, 0);
    assert!(!stderr(&out).contains("panicked"), "{}", show(&out));
    let rows = dir.results("in.results.csv");
    assert_numbered_rows_all_ok(&rows, ROWS);

    let stats = mock.stats();
    let injected = stats["faults"][kind].as_u64().unwrap_or(0);
    assert!(injected > 0, "no {kind} fault was injected: {stats}");
    for (other, n) in stats["faults"].as_object().expect("faults") {
        if other != kind {
            assert_eq!(n, 0, "{stats}");
        }
    }
    let retried = rows.iter().filter(|r| attempts(r) > 1).count();
    assert!(retried > 0, "no row needed a retry");
    let failed_attempts: u64 = rows.iter().map(attempts).sum::<u64>() - ROWS as u64;
    assert!(
        failed_attempts >= injected,
        "{injected} faults but only {failed_attempts} failed attempts"
    );
}

#[test]
fn reset_connections_are_retried_until_every_row_is_ok() {
    survives_fault("reset", "4");
}

#[test]
fn truncated_bodies_are_retried_until_every_row_is_ok() {
    survives_fault("truncated", "9");
}

#[test]
fn malformed_json_is_retried_until_every_row_is_ok() {
    survives_fault("malformed", "2");
}

#[test]
fn missing_fields_are_retried_until_every_row_is_ok() {
    survives_fault("missing-fields", "6");
}

#[test]
fn trickled_bodies_time_out_and_are_retried_until_every_row_is_ok() {
    survives_fault("trickle", "4");
}

#[test]
fn hung_requests_time_out_and_are_retried_until_every_row_is_ok() {
    survives_fault("hang", "9");
}

#[test]
fn a_fault_on_every_attempt_fails_each_row_with_an_error_that_names_it() {
    const ROWS: usize = 4;
    let cases = [
        ("reset", "connection error"),
        ("truncated", "connection error (HTTP 200)"),
        (
            "malformed",
            "invalid response (HTTP 200): response is not valid",
        ),
        (
            "missing-fields",
            "invalid response (HTTP 200): response has no choices",
        ),
        ("trickle", "timeout: no complete response within 500ms"),
        ("hang", "timeout: no complete response within 500ms"),
    ];
    // The kinds run side by side, each on its own embedded mock. Only the kinds that must time
    // out get the short timeout, so a loaded machine cannot turn the others into timeouts.
    thread::scope(|s| {
        for (kind, expect) in cases {
            let timeout = if expect.starts_with("timeout") {
                "0.5"
            } else {
                "10"
            };
            s.spawn(move || {
                let dir = TestDir::new();
                dir.create("in.csv", &numbered_csv(ROWS));
                let mock = format!("--mock=latency-ms=5,fault={kind}=1.0,trickle-ms=3000");
                let out = run(
                    &dir,
                    [
                        "run",
                        "in.csv",
                        "--prompt",
                        "{{ text }}",
                        &mock,
                        "--timeout",
                        timeout,
                        "--max-retries",
                        "1",
                        "-q",
                    ],
                );
                assert_code(&out, 1);
                assert!(!stderr(&out).contains("panicked"), "{kind}: {}", show(&out));
                let rows = dir.results("in.results.csv");
                assert_eq!(rows.len(), ROWS);
                for row in &rows {
                    assert_eq!(field(row, "status"), "failed", "{kind}: {row:?}");
                    let error = field(row, "error");
                    assert!(
                        error.contains(expect) && error.ends_with("(after 2 attempts)"),
                        "{kind}: error does not say {expect:?}: {row:?}"
                    );
                    assert_eq!(attempts(row), 2, "{kind}: {row:?}");
                    assert_eq!(field(row, "output"), "", "{kind}: {row:?}");
                    assert_eq!(field(row, "cost_usd"), "", "{kind}: {row:?}");
                }
            });
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------------

#[test]
fn hostile_inputs_are_refused_naming_the_line_before_anything_is_sent() {
    let cases: [(&str, &[u8], &[&str]); 6] = [
        (
            "invalid UTF-8",
            b"id,text\na,ok\nb,fine\nc,caf\xE9\n",
            &["line 4", "UTF-8"],
        ),
        (
            "invalid UTF-8 in the header",
            b"id,t\xFFxt\na,ok\n",
            &["line 1", "UTF-8"],
        ),
        (
            "ragged row",
            b"id,text\na,1\nb,2\nc,3,oops\nd,4\n",
            &["line 4", "3 fields", "header has 2"],
        ),
        (
            "duplicate ids",
            b"id,text\nx,1\ny,2\nz,3\ny,4\n",
            &["line 5", "\"y\"", "line 3"],
        ),
        ("empty file", b"", &["empty"]),
        (
            // Without a check, the rest of the file would become one field of row "b".
            "unterminated quote",
            b"id,text\na,1\nb,\"oops\nc,3\nd,4\n",
            &["line 3", "quote"],
        ),
    ];
    let mock = MockProcess::start(&["--latency-ms", "1"]);
    for (name, content, expect) in cases {
        let dir = TestDir::new();
        dir.create_bytes("in.csv", content);
        let out = run(&dir, numbered_args(&mock.url, &[]));
        assert_eq!(out.status.code(), Some(2), "{name}\n{}", show(&out));
        let err = stderr(&out);
        assert!(
            err.contains("in.csv"),
            "{name}: no file name\n{}",
            show(&out)
        );
        for want in expect {
            assert!(err.contains(want), "{name}: no {want:?}\n{}", show(&out));
        }
        assert_only_files(&dir, &["in.csv"]);
    }
    assert_eq!(stat(&mock.stats(), "requests"), 0);
}

#[test]
fn bom_crlf_multiline_and_huge_fields_are_read_and_answered_correctly() {
    // Nothing here needs the mock's counters: the embedded one will do.
    let args = |prompt: &'static str| {
        [
            "run",
            "in.csv",
            "--prompt",
            prompt,
            "--mock=latency-ms=1",
            "-q",
        ]
    };

    // A spreadsheet export: byte-order mark, CRLF line endings, a quoted field with line
    // breaks, commas and quotes.
    let dir = TestDir::new();
    let texts = [
        "plain text".to_string(),
        "first line\r\nsecond line, with a comma and \"quotes\"".to_string(),
        "naïve café ☕".to_string(),
    ];
    let mut file = b"\xEF\xBB\xBFid,text\r\n".to_vec();
    for (i, t) in texts.iter().enumerate() {
        file.extend(format!("k{i},\"{}\"\r\n", t.replace('"', "\"\"")).as_bytes());
    }
    dir.create_bytes("in.csv", &file);
    let out = run(&dir, args("{{ text }}"));
    assert_code(&out, 0);
    let raw = dir.read("in.results.csv");
    assert!(raw.starts_with("id,text,output,"), "{raw:?}");
    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), texts.len());
    for (i, (row, text)) in rows.iter().zip(&texts).enumerate() {
        assert_eq!(field(row, "id"), format!("k{i}"));
        assert_eq!(field(row, "text"), text, "input cell changed");
        assert_eq!(field(row, "output"), mock_answer(text));
        assert_eq!(field(row, "status"), "ok");
    }
    // The id column was found as `id` despite the BOM: the journal keys rows by it.
    let ids: Vec<String> = journal(&dir.join("in.results.sqlite"))
        .into_values()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["k0", "k1", "k2"]);

    // A review of more than 1 MB, between two small rows.
    let dir = TestDir::new();
    let mut huge = String::from("START of a very long review");
    let mut i = 0;
    while huge.len() < 1 << 20 {
        huge.push_str(&format!(" word{} and, \"more\"", i % 997));
        i += 1;
    }
    huge.push_str(" and this is the END");
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["id", "review"]).unwrap();
    w.write_record(["small", "short one"]).unwrap();
    w.write_record(["big", &huge]).unwrap();
    w.write_record(["last", "short two"]).unwrap();
    dir.create_bytes("in.csv", &w.into_inner().unwrap());
    let out = run(&dir, args("Review: {{ review }}"));
    assert_code(&out, 0);
    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), 3);
    assert_eq!(field(&rows[1], "review"), huge, "the huge cell changed");
    let answer = field(&rows[1], "output");
    assert_eq!(answer, mock_answer(&format!("Review: {huge}")));
    assert!(answer.starts_with("mock answer to \"Review: START") && answer.contains("END\""));
    assert_eq!(field(&rows[0], "output"), mock_answer("Review: short one"));
    assert_eq!(field(&rows[2], "output"), mock_answer("Review: short two"));
}

// ---------------------------------------------------------------------------------------------
// Formula injection
// ---------------------------------------------------------------------------------------------

/// The mock's answers always start with "mock answer to", so no `output` cell can start with a
/// formula character through it. The `model` cell is also server-controlled (the mock echoes
/// the requested model), which gives a real formula-shaped cell from the server.
#[test]
fn server_cells_starting_like_a_formula_are_neutralised_and_input_cells_are_not() {
    let dir = TestDir::new();
    let prompts = [
        "=HYPERLINK(\"http://evil.example\",\"click\")",
        "+1+1",
        "-2",
        "@SUM(A1:A9)",
    ];
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["id", "prompt"]).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        w.write_record([i.to_string().as_str(), p]).unwrap();
    }
    dir.create_bytes("in.csv", &w.into_inner().unwrap());
    let mock = MockProcess::start(&["--latency-ms", "1"]);
    const MODEL: &str = "=cmd|'/c calc'!A1";
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "run",
            "in.csv",
            "--base-url",
            mock.url.as_str(),
            "--model",
            MODEL,
            "-q",
        ];
        a.extend_from_slice(extra);
        a
    };
    let check = |name: &str, sanitized: bool| {
        let rows = dir.results(name);
        assert_eq!(rows.len(), prompts.len());
        for (row, prompt) in rows.iter().zip(prompts) {
            assert_eq!(field(row, "status"), "ok", "{row:?}");
            // The input is the user's own: never altered.
            assert_eq!(field(row, "prompt"), prompt);
            assert_eq!(field(row, "output"), mock_answer(prompt));
            let model = if sanitized {
                format!("'{MODEL}")
            } else {
                MODEL.to_string()
            };
            assert_eq!(field(row, "model"), model, "{name}: {row:?}");
        }
    };

    assert_code(&run(&dir, args(&[])), 0);
    check("in.results.csv", true);
    // Written again from the journal on resume: neutralised once, not twice.
    assert_code(&run(&dir, args(&["--resume"])), 0);
    check("in.results.csv", true);
    assert_code(&run(&dir, args(&["--resume", "--no-sanitize"])), 0);
    check("in.results.csv", false);
    assert_eq!(stat(&mock.stats(), "requests"), prompts.len() as u64);
}

// ---------------------------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------------------------

#[test]
fn audit_log_has_one_line_per_attempt_and_the_api_key_appears_nowhere() {
    const KEY: &str = "sk-test-SECRET-777";
    const ROWS: usize = 25;
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(ROWS));
    let mock = MockProcess::start(&["--latency-ms", "5", "--error-rate", "0.3", "--seed", "9"]);
    let out = util::cmd(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--base-url",
            &mock.url,
            "--max-retries",
            "2",
            "--log",
            "a.jsonl",
            "--summary-json",
            "summary.json",
            "-vvv",
        ],
    )
    .env("OPENAI_API_KEY", KEY)
    .output()
    .expect("run batch");
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", show(&out));

    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), ROWS);
    let log = dir.read("a.jsonl");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let total: u64 = rows.iter().map(attempts).sum();
    assert_eq!(lines.len() as u64, total, "one line per attempt");
    assert!(
        total > ROWS as u64,
        "no attempt failed, so no error was logged"
    );
    assert_eq!(stat(&mock.stats(), "requests"), total);
    let mut per_row: HashMap<String, u64> = HashMap::new();
    for line in &lines {
        assert_eq!(line["request"]["model"], "gpt-4.1-mini", "{line}");
        let status = line["status"].as_u64().unwrap_or_else(|| panic!("{line}"));
        assert!([200, 500, 503].contains(&status), "{line}");
        assert_eq!(line["error"].is_null(), status == 200, "{line}");
        *per_row
            .entry(line["row_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for row in &rows {
        assert_eq!(per_row.get(field(row, "id")).copied(), Some(attempts(row)));
    }

    let mut places = vec![
        ("stdout".to_string(), out.stdout.clone()),
        ("stderr".to_string(), out.stderr.clone()),
    ];
    for name in dir.files() {
        // The results, the summary, the log, and the state file with any WAL left beside it.
        places.push((name.clone(), dir.read_bytes(&name)));
    }
    // And the response cache, which lives outside the test folder.
    for entry in std::fs::read_dir(dir.cache_dir()).expect("list the cache folder") {
        let path = entry.expect("cache entry").path();
        if path.is_file() {
            let bytes = std::fs::read(&path).expect("read a cache file");
            places.push((path.display().to_string(), bytes));
        }
    }
    assert!(places.iter().any(|(n, _)| n == "in.results.sqlite"));
    for (name, bytes) in places {
        for needle in [KEY.as_bytes(), b"SECRET-777"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{name} contains the API key"
            );
        }
    }
}

#[test]
fn a_second_process_on_the_same_job_is_refused_while_the_first_runs() {
    const ROWS: usize = 40;
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(ROWS));
    let mock = MockProcess::start(&["--latency-ms", "50"]);
    let first = Running::start(&dir, &numbered_args(&mock.url, &["-j", "2"]));
    wait_until(
        Duration::from_secs(60),
        "the first run's first request",
        || stat(&mock.stats(), "requests") > 0,
    );
    // Same job (same results, same state), with --resume and with --restart alike.
    for extra in [&[][..], &["--resume"], &["--restart"]] {
        let out = run(&dir, numbered_args(&mock.url, extra));
        assert_code(&out, 2);
        let err = stderr(&out);
        assert!(
            err.contains("in use by another batch process (pid ")
                && err.contains(&first.pid().to_string()),
            "{}",
            show(&out)
        );
    }
    let out = first.wait(Duration::from_secs(60));
    assert_code(&out, 0);
    assert_numbered_rows_all_ok(&dir.results("in.results.csv"), ROWS);
    assert_eq!(
        stat(&mock.stats(), "requests"),
        ROWS as u64,
        "each row sent once: the refused runs sent nothing"
    );
    assert!(
        !dir.join("in.results.sqlite-lock").exists(),
        "the lock file goes with the run"
    );
    // Once it has ended, the job is free again.
    assert_code(&run(&dir, numbered_args(&mock.url, &["--restart"])), 0);
}

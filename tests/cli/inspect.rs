//! `batch status` and `batch export` on a run that is sending, one killed with `kill -9`, one
//! finished, and a state file in the previous (version 2) layout.

use std::path::Path;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{self, MockProcess, TestDir, assert_code, read_results, stat, stdout};

/// `batch status PATH --json`, parsed.
fn status(dir: &TestDir, path: &str) -> serde_json::Value {
    let out = util::run(dir, ["status", path, "--json"]);
    assert_code(&out, 0);
    serde_json::from_str(&stdout(&out)).expect("status --json is JSON")
}

fn n(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// `batch export PATH -o OUT`, and the rows written.
fn export(dir: &TestDir, path: &str, out: &str) -> Vec<std::collections::HashMap<String, String>> {
    let run = util::run(dir, ["export", path, "-o", out]);
    assert_code(&run, 0);
    read_results(&dir.join(out))
}

/// How many of `rows` have each status: (ok, pending, other).
fn statuses(rows: &[std::collections::HashMap<String, String>]) -> (usize, usize, usize) {
    let count = |s: &str| rows.iter().filter(|r| r["status"] == s).count();
    let (ok, pending) = (count("ok"), count("pending"));
    (ok, pending, rows.len() - ok - pending)
}

/// A run in the background, killed on drop.
struct Background(Child);

impl Background {
    fn start(dir: &TestDir, args: &[&str]) -> Background {
        let child = util::cmd(dir, args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn batch");
        Background(child)
    }

    fn wait(mut self) -> i32 {
        let status = self.0.wait().expect("wait for batch");
        status.code().unwrap_or(-1)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `batch status` until `done` holds (or panics after 60 s).
fn status_when(
    dir: &TestDir,
    path: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if dir.join("out.sqlite").exists() {
            let out = util::run(dir, ["status", path, "--json"]);
            if out.status.success() {
                let s: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
                if done(&s) {
                    return s;
                }
            }
        }
        assert!(Instant::now() < deadline, "status never reached the state");
        thread::sleep(Duration::from_millis(50));
    }
}

fn run_args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "in.csv",
        "--prompt",
        "{{ text }}",
        "--base-url",
        url,
        "-o",
        "out.csv",
        "-q",
    ];
    args.extend(extra);
    args
}

#[test]
fn status_and_export_of_a_finished_run() {
    let dir = TestDir::new();
    dir.create("in.csv", &util::numbered_csv(30));
    let mock = MockProcess::start(&[]);
    assert_code(
        &util::run(
            &dir,
            run_args(&mock.url, &["--max-cost", "5", "--max-tokens", "50"]),
        ),
        0,
    );

    // By the results path or the state file: the same run.
    for path in ["out.csv", "out.sqlite"] {
        let s = status(&dir, path);
        assert_eq!(
            (n(&s, "ok"), n(&s, "pending"), n(&s, "total_rows")),
            (30, 0, 30)
        );
        assert_eq!(s["complete"], true);
        assert!(s["running_pid"].is_null(), "{s}");
        assert!(s["cost_usd"].as_f64().unwrap() > 0.0, "{s}");
        assert_eq!(s["max_cost_usd"].as_f64(), Some(5.0), "{s}");
    }
    let text = stdout(&util::run(&dir, ["status", "out.csv"]));
    assert!(
        text.contains("finished") && text.contains("30 ok"),
        "{text}"
    );
    assert!(text.contains("of a $5 cap"), "{text}");

    let exported = export(&dir, "out.csv", "so-far.csv");
    let results = read_results(&dir.join("out.csv"));
    assert_eq!(
        exported, results,
        "an export of a finished run is its results"
    );
}

#[test]
fn export_never_writes_over_the_runs_input_or_state() {
    let dir = TestDir::new();
    let input = util::numbered_csv(5);
    dir.create("in.csv", &input);
    let mock = MockProcess::start(&[]);
    assert_code(&util::run(&dir, run_args(&mock.url, &[])), 0);
    for target in ["in.csv", "./in.csv", "out.sqlite"] {
        let out = util::run(&dir, ["export", "out.csv", "-o", target]);
        assert_code(&out, 2);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("pick another path"), "{target}: {err}");
    }
    assert_eq!(std::fs::read_to_string(dir.join("in.csv")).unwrap(), input);
    assert_eq!(status(&dir, "out.sqlite")["ok"], 5);
}

#[test]
fn status_and_export_while_the_run_sends_do_not_disturb_it() {
    let dir = TestDir::new();
    dir.create("in.csv", &util::numbered_csv(60));
    let mock = MockProcess::start(&["--latency-ms", "100"]);
    let run = Background::start(&dir, &run_args(&mock.url, &["-j", "2"]));

    let live = status_when(&dir, "out.csv", |s| n(s, "ok") >= 4);
    assert_eq!(live["running_pid"], run.0.id().to_string(), "{live}");
    assert!(
        n(&live, "pending") > 0 && live["complete"] == false,
        "{live}"
    );
    assert!(live["rows_per_second"].as_f64().unwrap() > 0.0, "{live}");
    assert!(live["eta_seconds"].as_f64().is_some(), "{live}");

    let exported = export(&dir, "out.csv", "so-far.csv");
    let (ok, pending, other) = statuses(&exported);
    assert_eq!(exported.len(), 60);
    assert!(
        ok >= 4 && pending > 0 && other == 0,
        "{ok} {pending} {other}"
    );
    // Rows are in input order, and an exported answer is the answer.
    for (i, row) in exported.iter().enumerate() {
        assert_eq!(row["id"], format!("r{:04}", i + 1));
        if row["status"] == "ok" {
            assert_eq!(row["output"], util::mock_answer(&row["text"]));
        }
    }

    assert_eq!(run.wait(), 0);
    let results = read_results(&dir.join("out.csv"));
    assert_eq!(statuses(&results), (60, 0, 0));
    assert_eq!(stat(&mock.stats(), "requests"), 60, "each row sent once");
}

#[test]
fn status_and_export_of_a_killed_run_then_resume() {
    let dir = TestDir::new();
    dir.create("in.csv", &util::numbered_csv(60));
    let mock = MockProcess::start(&["--latency-ms", "100"]);
    let mut run = Background::start(&dir, &run_args(&mock.url, &["-j", "2"]));
    status_when(&dir, "out.csv", |s| n(s, "ok") >= 4);
    run.0.kill().expect("kill -9");
    run.0.wait().unwrap();

    let killed = status(&dir, "out.sqlite");
    assert!(killed["running_pid"].is_null(), "{killed}");
    assert_eq!(killed["complete"], false);
    assert!(
        killed["eta_seconds"].is_null(),
        "no ETA without a process: {killed}"
    );
    let done = n(&killed, "ok");
    assert_eq!(done + n(&killed, "pending"), 60, "{killed}");
    let text = stdout(&util::run(&dir, ["status", "out.csv"]));
    assert!(
        text.contains("stopped") && text.contains("--resume"),
        "{text}"
    );

    let exported = export(&dir, "out.sqlite", "so-far.csv");
    assert_eq!(statuses(&exported), (done as usize, 60 - done as usize, 0));
    assert!(
        !dir.join("out.csv").exists(),
        "export leaves the run's results alone"
    );

    let sent = stat(&mock.stats(), "requests");
    assert_code(&util::run(&dir, run_args(&mock.url, &["--resume"])), 0);
    assert_eq!(
        stat(&mock.stats(), "requests") - sent,
        60 - done,
        "the resume sends exactly the rows not recorded"
    );
}

/// Rewrites a state file into version 2's layout: hex hashes (the 16 bytes kept, zero padded),
/// text times, an attempts row for each first-attempt answer.
fn downgrade_to_v2(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "BEGIN;
        CREATE TABLE rows2 (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, request_hash TEXT NOT NULL,
            status TEXT NOT NULL, output TEXT NOT NULL, error TEXT NOT NULL,
            attempts INTEGER NOT NULL, throttled INTEGER NOT NULL, latency_ms INTEGER,
            prompt_tokens INTEGER, completion_tokens INTEGER, cached_tokens INTEGER,
            cache_write_tokens INTEGER, reasoning_tokens INTEGER, cost_usd REAL,
            model TEXT NOT NULL, finish_reason TEXT NOT NULL, cached INTEGER NOT NULL DEFAULT 0,
            saved_usd REAL, finished_at TEXT NOT NULL);
        INSERT INTO rows2 SELECT seq, id, lower(hex(request_hash)) || printf('%032d', 0), status,
            output, error, attempts, throttled, latency_ms, prompt_tokens, completion_tokens,
            cached_tokens, cache_write_tokens, reasoning_tokens, cost_usd, model, finish_reason,
            cached, saved_usd, strftime('%Y-%m-%dT%H:%M:%fZ', finished_ms / 1000.0, 'unixepoch')
            FROM rows;
        CREATE TABLE attempts2 (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL,
            attempt INTEGER NOT NULL, started_at TEXT NOT NULL, outcome TEXT NOT NULL,
            http_status INTEGER, error TEXT, latency_ms INTEGER, request_id TEXT,
            charged_usd REAL);
        INSERT INTO attempts2 (seq, attempt, started_at, outcome, latency_ms, charged_usd)
            SELECT seq, 1, strftime('%Y-%m-%dT%H:%M:%fZ',
                (finished_ms - started_before_ms) / 1000.0, 'unixepoch'), 'ok', latency_ms,
                cost_usd FROM rows WHERE started_before_ms IS NOT NULL;
        DROP TABLE rows; DROP TABLE attempts;
        ALTER TABLE rows2 RENAME TO rows; ALTER TABLE attempts2 RENAME TO attempts;
        -- The run stopped before its last 5 rows.
        DELETE FROM rows WHERE seq >= 15; DELETE FROM attempts WHERE seq >= 15;
        UPDATE meta SET value = 'false' WHERE key = 'finished';
        PRAGMA user_version = 2;
        COMMIT;",
    )
    .unwrap();
}

#[test]
fn a_version_2_state_file_is_looked_into_then_resumed() {
    let dir = TestDir::new();
    dir.create("in.csv", &util::numbered_csv(20));
    let mock = MockProcess::start(&[]);
    // No cache: the resume must send what the state file lacks.
    assert_code(&util::run(&dir, run_args(&mock.url, &["--no-cache"])), 0);
    let spent_before = status(&dir, "out.csv")["cost_usd"].as_f64().unwrap();
    downgrade_to_v2(&dir.join("out.sqlite"));

    let old = status(&dir, "out.sqlite");
    assert_eq!((n(&old, "ok"), n(&old, "pending")), (15, 5), "{old}");
    assert!(old["cost_usd"].as_f64().unwrap() > 0.0, "{old}");
    let exported = export(&dir, "out.sqlite", "so-far.csv");
    assert_eq!(statuses(&exported), (15, 5, 0));

    let sent = stat(&mock.stats(), "requests");
    assert_code(
        &util::run(&dir, run_args(&mock.url, &["--resume", "--no-cache"])),
        0,
    );
    assert_eq!(
        stat(&mock.stats(), "requests") - sent,
        5,
        "only the missing rows"
    );
    let resumed = status(&dir, "out.csv");
    assert_eq!(
        (n(&resumed, "ok"), resumed["complete"].as_bool()),
        (20, Some(true))
    );
    // Every answer is counted once, the migrated ones included.
    let spent_after = resumed["cost_usd"].as_f64().unwrap();
    assert!(
        (spent_after - spent_before).abs() < 1e-9,
        "{spent_before} vs {spent_after}"
    );
    assert_eq!(statuses(&read_results(&dir.join("out.csv"))), (20, 0, 0));
}

#[test]
fn status_of_a_path_that_is_no_run_says_so() {
    let dir = TestDir::new();
    dir.create("notes.txt", "hello");
    let out = util::run(&dir, ["export", "notes.txt"]);
    assert_code(&out, 2);
    assert!(
        util::stderr(&out).contains("not the state of a run"),
        "{}",
        util::show(&out)
    );
}

/// Takes rows out of a state file, as if the run had stopped before them.
fn forget_rows(dir: &TestDir, seqs: &[u64]) {
    let conn = rusqlite::Connection::open(dir.join("out.sqlite")).unwrap();
    for seq in seqs {
        conn.execute("DELETE FROM rows WHERE seq = ?1", [*seq as i64])
            .unwrap();
    }
    conn.execute("UPDATE meta SET value = 'false' WHERE key = 'finished'", [])
        .unwrap();
}

#[test]
fn a_resume_sends_exactly_the_unfinished_rows_and_a_changed_input_is_rechecked() {
    let dir = TestDir::new();
    dir.create("in.csv", &util::numbered_csv(40));
    let mock = MockProcess::start(&[]);
    let args = run_args(&mock.url, &["--no-cache"]);
    assert_code(&util::run(&dir, &args), 0);
    let before = status(&dir, "out.csv");

    // Unfinished: a row in the middle and the last ten. The input is as it was, so the
    // finished rows are neither checked nor rendered again, and only these are sent.
    let unfinished: Vec<u64> = [7].into_iter().chain(30..40).collect();
    forget_rows(&dir, &unfinished);
    let s = status(&dir, "out.sqlite");
    assert_eq!((n(&s, "ok"), n(&s, "pending")), (29, 11), "{s}");
    let sent = stat(&mock.stats(), "requests");
    let mut resume = args.clone();
    resume.push("--resume");
    assert_code(&util::run(&dir, &resume), 0);
    assert_eq!(
        stat(&mock.stats(), "requests") - sent,
        unfinished.len() as u64,
        "exactly the unfinished rows are sent"
    );
    let after = status(&dir, "out.csv");
    assert_eq!(
        (n(&after, "ok"), after["complete"].as_bool()),
        (40, Some(true))
    );
    assert_eq!(after["cost_usd"], before["cost_usd"], "{before} vs {after}");
    let results = read_results(&dir.join("out.csv"));
    assert_eq!(statuses(&results), (40, 0, 0));

    // The input changed: a finished row's text is new, so its request is. The finished rows
    // are checked again, and that one is sent with the unfinished one.
    let csv = util::numbered_csv(40).replace(",item number 4\n", ",item four changed\n");
    assert_ne!(csv, util::numbered_csv(40), "the input changes");
    dir.create("in.csv", &csv);
    forget_rows(&dir, &[20]);
    let sent = stat(&mock.stats(), "requests");
    assert_code(&util::run(&dir, &resume), 0);
    assert_eq!(
        stat(&mock.stats(), "requests") - sent,
        2,
        "row 21 and the changed row 4"
    );
    let results = read_results(&dir.join("out.csv"));
    assert_eq!(statuses(&results), (40, 0, 0));
    assert_eq!(
        util::field(&results[3], "output"),
        util::mock_answer("item four changed")
    );
}

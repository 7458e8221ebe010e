//! End-to-end tests of `batch watch`: the real binary watches a folder of a test directory and
//! sends its runs to a `batch mock` server the test starts on 127.0.0.1. The proofs are the files
//! in `done/`, `processed/` and `failed/`, the results CSVs, and the mock's `/stats` request count
//! (with `--no-cache`, so an answer can only come from a request). Every wait is on a file or a
//! log line appearing, with a generous limit, never a fixed sleep.

// Shared with the other test binaries, which use helpers this file does not.
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::util::{
    self, MockProcess, TestDir, assert_code, field, mock_answer, read_results, run, show, stat,
};

const LIMIT: Duration = Duration::from_secs(120);

/// Polls `cond` every 20 ms until it holds; panics after `limit` with `what` and `context()`.
#[track_caller]
fn wait_until(
    limit: Duration,
    what: &str,
    context: impl Fn() -> String,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}\n{}",
            context()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A CSV `id,text` of `n` rows whose texts start with `tag`, so every file's prompts differ.
fn csv(tag: &str, n: usize) -> String {
    let mut s = String::from("id,text\n");
    for i in 1..=n {
        s.push_str(&format!("{tag}{i},{tag} item {i}\n"));
    }
    s
}

/// Drops `contents` into `inbox` as `name` the way a careful tool does: written under a hidden
/// name, then renamed into place.
fn drop_file(inbox: &Path, name: &str, contents: &str) {
    let tmp = inbox.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).expect("write temp file");
    std::fs::rename(&tmp, inbox.join(name)).expect("rename into the inbox");
}

/// Asserts that the results of `csv(tag, n)` have every row once, in order, ok, with its own
/// answer.
#[track_caller]
fn assert_all_ok(results: &Path, tag: &str, n: usize) {
    let rows = read_results(results);
    assert_eq!(rows.len(), n, "{}: every input row once", results.display());
    for (i, row) in rows.iter().enumerate() {
        let text = format!("{tag} item {}", i + 1);
        assert_eq!(field(row, "text"), text);
        assert_eq!(field(row, "status"), "ok", "{row:?}");
        assert_eq!(field(row, "output"), mock_answer(&text), "{row:?}");
    }
}

/// Names of the files in `dir`, sorted (empty if it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A `batch watch` process; its stderr is collected as it comes so tests can wait for lines.
struct Watcher {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
    reaped: bool,
}

impl Watcher {
    fn start(dir: &TestDir, args: &[&str]) -> Watcher {
        let mut child = util::cmd(dir, args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn batch watch");
        let stderr = Arc::new(Mutex::new(String::new()));
        let reader = {
            let pipe = child.stderr.take().expect("stderr");
            let stderr = stderr.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut s = stderr.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            })
        };
        Watcher {
            child,
            stderr,
            reader: Some(reader),
            reaped: false,
        }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a line of the log containing `text`.
    #[track_caller]
    fn wait_for_log(&mut self, text: &str) {
        let log = self.stderr.clone();
        let mut exited = false;
        wait_until(
            LIMIT,
            &format!("the log line {text:?}"),
            || log.lock().unwrap().clone(),
            || {
                exited |= self.child.try_wait().ok().flatten().is_some();
                assert!(
                    !exited || log.lock().unwrap().contains(text),
                    "watch exited"
                );
                log.lock().unwrap().contains(text)
            },
        );
    }

    fn collect(&mut self, status: std::process::ExitStatus) -> Output {
        self.reaped = true;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        Output {
            status,
            stdout: Vec::new(),
            stderr: self.log().into_bytes(),
        }
    }

    /// Sends `signal` and waits for the exit.
    fn signal_and_wait(mut self, signal: &str) -> Output {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("run kill(1)");
        assert!(status.success());
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll watch") {
                return self.collect(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let status = self.child.wait().expect("wait");
                panic!("watch did not stop\n{}", show(&self.collect(status)));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: no chance to clean up.
    fn kill_9(mut self) -> Output {
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().expect("wait");
        self.collect(status)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `batch watch inbox` against `mock`, without the cache, plus `extra` flags.
fn watch_args<'a>(mock: &'a MockProcess, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "watch",
        "inbox",
        "--base-url",
        &mock.url,
        "--prompt",
        "{{ text }}",
        "--no-cache",
        "--settle-ms",
        "300",
        "--rescan-ms",
        "500",
    ];
    v.extend_from_slice(extra);
    v
}

fn inbox(dir: &TestDir) -> std::path::PathBuf {
    let p = dir.join("inbox");
    std::fs::create_dir_all(&p).expect("create inbox");
    p
}

#[test]
fn two_files_dropped_in_are_each_run_once() {
    let dir = TestDir::new();
    let inbox = inbox(&dir);
    let mock = MockProcess::start(&["--latency-ms", "20"]);
    let mut watcher = Watcher::start(&dir, &watch_args(&mock, &[]));
    watcher.wait_for_log("watching");

    drop_file(&inbox, "a.csv", &csv("a", 5));
    drop_file(&inbox, "b.csv", &csv("b", 7));
    for n in ["a", "b"] {
        let done = inbox.join(format!("processed/{n}.csv"));
        wait_until(
            LIMIT,
            &format!("{n}.csv processed"),
            || watcher.log(),
            || done.exists(),
        );
    }
    assert_all_ok(&inbox.join("done/a.results.csv"), "a", 5);
    assert_all_ok(&inbox.join("done/b.results.csv"), "b", 7);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(inbox.join("done/b.summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["ok"], 7, "{summary}");
    assert!(
        summary["output"]
            .as_str()
            .is_some_and(|o| o.ends_with("done/b.results.csv")),
        "the summary names the results in done/: {summary}"
    );
    assert_eq!(stat(&mock.stats(), "requests"), 12, "one request per row");
    assert_eq!(names(&inbox.join("processed")), ["a.csv", "b.csv"]);
    assert_eq!(
        std::fs::read_to_string(inbox.join("processed/a.csv")).unwrap(),
        csv("a", 5),
        "the input is moved as it was"
    );

    // A third file: the watcher has looked at the folder again since, and ran only the new one.
    drop_file(&inbox, "c.csv", &csv("c", 3));
    let done = inbox.join("processed/c.csv");
    wait_until(LIMIT, "c.csv processed", || watcher.log(), || done.exists());
    assert_eq!(stat(&mock.stats(), "requests"), 15, "{}", watcher.log());
    assert!(names(&inbox).iter().all(|n| !n.ends_with(".csv")));

    let out = watcher.signal_and_wait("INT");
    assert_code(&out, 130);
    let log = util::stderr(&out);
    assert!(log.contains("a.csv: started"), "{log}");
    assert!(log.contains("a.csv: done: 5 ok, 0 failed"), "{log}");
    assert!(log.contains("b.csv: done: 7 ok, 0 failed"), "{log}");
    assert_eq!(log.matches(": started").count(), 3, "{log}");
}

#[test]
fn a_file_written_slowly_is_run_once_it_is_complete() {
    let dir = TestDir::new();
    let inbox = inbox(&dir);
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    // Settle far longer than the test needs to react to a log line, so the file cannot settle
    // between two pieces even on a loaded machine; -v logs every size the watcher sees.
    let mut args = watch_args(&mock, &["-v"]);
    let settle = args.iter().position(|a| *a == "--settle-ms").unwrap() + 1;
    args[settle] = "5000";
    let mut watcher = Watcher::start(&dir, &args);
    watcher.wait_for_log("watching");

    let full = csv("s", 12);
    let lines: Vec<&str> = full.split_inclusive('\n').collect();
    let path = inbox.join("slow.csv");
    let mut file = std::fs::File::create(&path).expect("create slow.csv");
    let mut written = 0usize;
    for piece in lines.chunks(3) {
        let piece = piece.concat();
        file.write_all(piece.as_bytes()).unwrap();
        file.flush().unwrap();
        written += piece.len();
        // Wait until the watcher has seen this size before writing more (as "arrived" or
        // "changed": it may have seen the file empty, just created).
        watcher.wait_for_log(&format!("({written} bytes); waiting for it to settle"));
        assert!(
            !watcher.log().contains("slow.csv: started"),
            "run before it was complete\n{}",
            watcher.log()
        );
    }
    drop(file);
    let done = inbox.join("processed/slow.csv");
    wait_until(
        LIMIT,
        "slow.csv processed",
        || watcher.log(),
        || done.exists(),
    );
    assert_all_ok(&inbox.join("done/slow.results.csv"), "s", 12);
    assert_eq!(stat(&mock.stats(), "requests"), 12);
    let out = watcher.signal_and_wait("TERM");
    assert_code(&out, 130);
    assert_eq!(util::stderr(&out).matches("slow.csv: started").count(), 1);
}

#[test]
fn a_bad_file_goes_to_failed_with_an_error_file_and_the_rest_run() {
    let dir = TestDir::new();
    let inbox = inbox(&dir);
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    // Present before the watcher starts: picked up by the first scan.
    drop_file(&inbox, "good.csv", &csv("g", 3));
    drop_file(
        &inbox,
        "bad.csv",
        "id,body\n1,the template wants a text column\n",
    );
    drop_file(&inbox, "quote.csv", "id,text\n1,\"never closed\n2,x\n");
    // Names the watcher must leave alone.
    std::fs::write(inbox.join(".hidden.csv"), csv("h", 2)).unwrap();
    std::fs::write(inbox.join("later.csv.partial"), csv("p", 2)).unwrap();

    let out = run(&dir, watch_args(&mock, &["--once"]));
    assert_code(&out, 1);
    assert_all_ok(&inbox.join("done/good.results.csv"), "g", 3);
    assert_eq!(
        stat(&mock.stats(), "requests"),
        3,
        "nothing sent for bad files"
    );
    assert_eq!(names(&inbox.join("processed")), ["good.csv"]);
    assert_eq!(
        names(&inbox.join("failed")),
        [
            "bad.csv",
            "bad.csv.error.txt",
            "quote.csv",
            "quote.csv.error.txt"
        ]
    );
    let error = std::fs::read_to_string(inbox.join("failed/bad.csv.error.txt")).unwrap();
    assert!(error.contains("bad.csv"), "{error}");
    assert!(error.contains("text"), "names the missing column: {error}");
    assert!(
        error.contains("body"),
        "lists the columns there are: {error}"
    );
    let error = std::fs::read_to_string(inbox.join("failed/quote.csv.error.txt")).unwrap();
    assert!(error.contains("quote.csv: line 2"), "{error}");
    assert!(
        !error.contains(".batch-watch"),
        "names the input, not the work copy: {error}"
    );
    assert_eq!(
        names(&inbox.join("done")),
        ["good.results.csv", "good.summary.json"]
    );
    assert!(inbox.join(".hidden.csv").exists() && inbox.join("later.csv.partial").exists());
    let log = util::stderr(&out);
    assert!(log.contains("bad.csv: failed:"), "{log}");
    assert!(log.contains("failed/bad.csv.error.txt"), "{log}");
}

#[test]
fn files_present_at_startup_are_run_and_a_second_pass_runs_nothing() {
    let dir = TestDir::new();
    let inbox = inbox(&dir);
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    drop_file(&inbox, "one.csv", &csv("o", 4));
    drop_file(&inbox, "two.csv", &csv("t", 2));
    let out = run(&dir, watch_args(&mock, &["--once"]));
    assert_code(&out, 0);
    assert_all_ok(&inbox.join("done/one.results.csv"), "o", 4);
    assert_all_ok(&inbox.join("done/two.results.csv"), "t", 2);
    assert_eq!(stat(&mock.stats(), "requests"), 6);

    let again = run(&dir, watch_args(&mock, &["--once"]));
    assert_code(&again, 0);
    assert_eq!(stat(&mock.stats(), "requests"), 6, "{}", show(&again));
    assert_eq!(names(&inbox.join("processed")), ["one.csv", "two.csv"]);
}

#[test]
fn across_a_restart_no_file_is_run_twice_and_names_never_collide() {
    let dir = TestDir::new();
    let inbox = inbox(&dir);
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    let mut first = Watcher::start(&dir, &watch_args(&mock, &[]));
    first.wait_for_log("watching");
    drop_file(&inbox, "a.csv", &csv("a", 4));
    let done = inbox.join("processed/a.csv");
    wait_until(LIMIT, "a.csv processed", || first.log(), || done.exists());
    first.kill_9();

    let mut second = Watcher::start(&dir, &watch_args(&mock, &[]));
    second.wait_for_log("watching");
    drop_file(&inbox, "b.csv", &csv("b", 3));
    let done = inbox.join("processed/b.csv");
    wait_until(LIMIT, "b.csv processed", || second.log(), || done.exists());
    assert_eq!(stat(&mock.stats(), "requests"), 7, "{}", second.log());

    // The same a.csv dropped in again: filed beside the first, answered from its earlier run.
    drop_file(&inbox, "a.csv", &csv("a", 4));
    let again = inbox.join("processed/a-2.csv");
    wait_until(
        LIMIT,
        "a.csv filed again",
        || second.log(),
        || again.exists(),
    );
    assert_all_ok(&inbox.join("done/a-2.results.csv"), "a", 4);
    assert_eq!(stat(&mock.stats(), "requests"), 7, "{}", second.log());

    // A different file under a taken name is run, and nothing earlier is overwritten.
    drop_file(&inbox, "a.csv", &csv("z", 2));
    let third = inbox.join("processed/a-3.csv");
    wait_until(
        LIMIT,
        "the new a.csv processed",
        || second.log(),
        || third.exists(),
    );
    assert_all_ok(&inbox.join("done/a-3.results.csv"), "z", 2);
    assert_all_ok(&inbox.join("done/a.results.csv"), "a", 4);
    assert_eq!(
        std::fs::read_to_string(inbox.join("processed/a.csv")).unwrap(),
        csv("a", 4)
    );
    assert_eq!(stat(&mock.stats(), "requests"), 9);
    assert_code(&second.signal_and_wait("INT"), 130);
}

#[test]
fn a_watcher_killed_mid_run_resumes_without_paying_twice() {
    let dir = TestDir::new();
    let inbox = inbox(&dir);
    let mock = MockProcess::start(&["--latency-ms", "150"]);
    let args = watch_args(&mock, &["--concurrency", "2"]);
    let mut first = Watcher::start(&dir, &args);
    first.wait_for_log("watching");
    drop_file(&inbox, "big.csv", &csv("k", 20));
    wait_until(
        LIMIT,
        "some of big.csv answered",
        || first.log(),
        || stat(&mock.stats(), "requests") >= 6,
    );
    first.kill_9();
    assert!(!inbox.join("processed/big.csv").exists());
    let before = stat(&mock.stats(), "requests");
    assert!(before < 20, "killed before the end ({before} requests)");

    let mut second = Watcher::start(&dir, &args);
    let done = inbox.join("processed/big.csv");
    wait_until(
        LIMIT,
        "big.csv processed",
        || second.log(),
        || done.exists(),
    );
    assert_all_ok(&inbox.join("done/big.results.csv"), "k", 20);
    let requests = stat(&mock.stats(), "requests");
    // Only the 2 requests in flight at the kill can have been paid for twice.
    assert!(
        (20..=22).contains(&requests),
        "{requests} requests for 20 rows\n{}",
        second.log()
    );
    second.wait_for_log("resuming");
    assert_code(&second.signal_and_wait("INT"), 130);
}

#[test]
fn ctrl_c_mid_run_exits_130_and_the_next_start_finishes_the_file() {
    let dir = TestDir::new();
    let inbox = inbox(&dir);
    let mock = MockProcess::start(&["--latency-ms", "200"]);
    let args = watch_args(&mock, &["--concurrency", "1", "--grace", "30"]);
    let mut watcher = Watcher::start(&dir, &args);
    watcher.wait_for_log("watching");
    drop_file(&inbox, "long.csv", &csv("l", 12));
    wait_until(
        LIMIT,
        "long.csv under way",
        || watcher.log(),
        || stat(&mock.stats(), "requests") >= 2,
    );
    let out = watcher.signal_and_wait("INT");
    assert_code(&out, 130);
    let log = util::stderr(&out);
    assert!(log.contains("long.csv: interrupted"), "{log}");
    assert!(inbox.join("long.csv").exists(), "left in place\n{log}");
    let stats = mock.stats();
    assert_eq!(stat(&stats, "in_flight"), 0, "grace let the request finish");
    let sent = stat(&stats, "requests");
    assert!(sent < 12, "stopped early ({sent} requests)");

    let out = run(&dir, {
        let mut a = args.clone();
        a.push("--once");
        a
    });
    assert_code(&out, 0);
    assert_all_ok(&inbox.join("done/long.results.csv"), "l", 12);
    assert_eq!(
        stat(&mock.stats(), "requests"),
        12,
        "each row once: the rows answered before Ctrl-C were not sent again\n{}",
        show(&out)
    );
}

#[test]
fn a_second_watcher_on_the_same_folder_is_refused() {
    let dir = TestDir::new();
    let _inbox = inbox(&dir);
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    let mut first = Watcher::start(&dir, &watch_args(&mock, &[]));
    first.wait_for_log("watching");
    let out = run(&dir, watch_args(&mock, &["--once"]));
    assert_code(&out, 2);
    assert!(
        util::stderr(&out).contains("already watching"),
        "{}",
        show(&out)
    );
    assert_code(&first.signal_and_wait("INT"), 130);
}

#[test]
fn usage_errors_exit_2_before_anything_is_created() {
    let dir = TestDir::new();
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    let out = run(&dir, watch_args(&mock, &["--once"]));
    assert_code(&out, 2);
    assert!(util::stderr(&out).contains("inbox"), "{}", show(&out));
    let _inbox = inbox(&dir);
    let out = run(&dir, watch_args(&mock, &["--once", "-o", "x.csv"]));
    assert_code(&out, 2);
    assert!(util::stderr(&out).contains("-o/--output"), "{}", show(&out));
    assert!(names(&dir.join("inbox")).is_empty(), "nothing created");
}

/// Runs `--once` with `BATCH_WATCH_FAULT=point`, which aborts the process at that point, then
/// again without it, and checks that the file is filed once and its rows sent once.
fn crash_at(point: &str) {
    let dir = TestDir::new();
    let inbox = inbox(&dir);
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    drop_file(&inbox, "a.csv", &csv("a", 5));
    let args = watch_args(&mock, &["--once"]);
    let crashed = util::cmd(&dir, &args)
        .env("BATCH_WATCH_FAULT", point)
        .output()
        .expect("run batch watch");
    assert!(
        !crashed.status.success() && util::stderr(&crashed).contains("aborting"),
        "{}",
        show(&crashed)
    );
    assert_eq!(
        stat(&mock.stats(), "requests"),
        5,
        "the run itself finished"
    );
    assert!(inbox.join("a.csv").exists(), "not filed before the crash");

    let out = run(&dir, &args);
    assert_code(&out, 0);
    assert_all_ok(&inbox.join("done/a.results.csv"), "a", 5);
    assert_eq!(names(&inbox.join("processed")), ["a.csv"]);
    assert_eq!(
        names(&inbox.join("done")),
        ["a.results.csv", "a.summary.json"]
    );
    assert!(!inbox.join("a.csv").exists());
    assert_eq!(
        stat(&mock.stats(), "requests"),
        5,
        "nothing sent again after the crash\n{}",
        show(&out)
    );
}

#[test]
fn a_crash_after_a_run_ends_files_it_on_the_next_start_without_sending_again() {
    crash_at("after-run");
}

#[test]
fn a_crash_while_filing_is_finished_on_the_next_start() {
    crash_at("before-filing");
}

#[test]
fn parallel_runs_files_side_by_side_and_the_default_one_at_a_time() {
    for (parallel, expected) in [("1", 1), ("2", 2)] {
        let dir = TestDir::new();
        let inbox = inbox(&dir);
        let mock = MockProcess::start(&["--latency-ms", "100"]);
        drop_file(&inbox, "a.csv", &csv("a", 15));
        drop_file(&inbox, "b.csv", &csv("b", 15));
        let out = run(
            &dir,
            watch_args(&mock, &["--once", "-j", "1", "--parallel", parallel]),
        );
        assert_code(&out, 0);
        assert_all_ok(&inbox.join("done/a.results.csv"), "a", 15);
        assert_all_ok(&inbox.join("done/b.results.csv"), "b", 15);
        let stats = mock.stats();
        assert_eq!(stat(&stats, "requests"), 30);
        assert_eq!(
            stat(&stats, "max_in_flight"),
            expected,
            "--parallel {parallel} with -j 1: {stats}"
        );
    }
}

//! Issue 13, failing fast on what cannot succeed: before any answer, a wrong `--base-url`, an
//! API the server lacks, or nothing listening stops the run after a few requests with one
//! message that names the fix, exit 2, and every row `skipped` so that `--resume` finishes the
//! run once it is fixed. After answers, a rejected row fails alone.

use std::time::{Duration, Instant};

use crate::util::{
    MockProcess, Row, TestDir, assert_code, attempts, field, numbered_csv, run, show, stat, stderr,
};

fn count(rows: &[Row], status: &str) -> usize {
    rows.iter().filter(|r| field(r, "status") == status).count()
}

fn args<'a>(base_url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "run",
        "in.csv",
        "--prompt",
        "{{ text }}",
        "--base-url",
        base_url,
        "--no-cache",
        "-q",
    ];
    a.extend_from_slice(extra);
    a
}

/// Every row is skipped, its error starting with the run's reason (which contains `says`).
#[track_caller]
fn assert_all_skipped(rows: &[Row], says: &str) {
    for row in rows {
        assert_eq!(field(row, "status"), "skipped", "{row:?}");
        assert!(field(row, "error").contains(says), "{row:?}");
    }
}

#[test]
fn a_base_url_without_v1_stops_after_a_few_requests_and_resume_finishes_after_the_fix() {
    const ROWS: usize = 100;
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(ROWS));
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    let wrong = format!("http://{}", mock.addr);
    // -q, and stderr is no terminal: the reason is printed all the same, once.
    let out = run(&dir, args(&wrong, &["-j", "4"]));
    assert_code(&out, 2);
    let err = stderr(&out);
    let hint = format!(
        "--base-url probably lacks /v1 (requests went to http://{}/chat/completions)",
        mock.addr
    );
    assert_eq!(err.matches(&hint).count(), 1, "{}", show(&out));
    assert!(err.contains("--resume"), "{}", show(&out));
    // Only the requests already in flight when the first 404 came back were sent.
    let stats = mock.stats();
    let sent = stat(&stats, "unserved");
    assert!((1..=4).contains(&sent), "{sent} requests sent: {stats}");
    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), ROWS);
    assert_all_skipped(&rows, "lacks /v1");
    assert!(
        rows.iter().filter(|r| attempts(r) == 1).count() as u64 == sent,
        "the rows that got the 404 say so: {rows:?}"
    );

    // Fixed, the run is resumed as it is (it has no answers to mix with) and finishes.
    let out = run(&dir, args(&mock.url, &["--resume"]));
    assert_code(&out, 0);
    let rows = dir.results("in.results.csv");
    assert_eq!(count(&rows, "ok"), ROWS, "{rows:?}");
    assert_eq!(stat(&mock.stats(), "requests"), ROWS as u64);
}

#[test]
fn a_server_without_the_responses_api_says_use_api_chat() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(30));
    let base = [
        "run",
        "in.csv",
        "--prompt",
        "{{ text }}",
        "--mock=latency-ms=5,not-found=/v1/responses",
        "--no-cache",
    ];
    let out = run(&dir, base.iter().chain(&["--api", "responses"]));
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("has no Responses API") && err.contains("use --api chat"),
        "{}",
        show(&out)
    );
    let rows = dir.results("in.results.csv");
    assert_all_skipped(&rows, "use --api chat");

    let out = run(&dir, base.iter().chain(&["--api", "chat", "--resume"]));
    assert_code(&out, 0);
    assert_eq!(count(&dir.results("in.results.csv"), "ok"), 30);
}

#[test]
fn nothing_listening_stops_quickly_and_resume_finishes_once_a_server_is_there() {
    const ROWS: usize = 40;
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(ROWS));
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/v1");
    // One row at a time: the first row's retries are what stops it.
    let started = Instant::now();
    let out = run(&dir, args(&url, &["-j", "1"]));
    let took = started.elapsed();
    assert_code(&out, 2);
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let err = stderr(&out);
    let says = format!("nothing answers at {url}: is the server running? check --base-url");
    assert_eq!(err.matches(&says).count(), 1, "{}", show(&out));
    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), ROWS);
    assert_all_skipped(&rows, &says);
    assert!(attempts(&rows[0]) <= 3, "{:?}", rows[0]);
    assert!(rows[1..].iter().all(|r| attempts(r) == 0), "{rows:?}");

    // Many at a time, the first attempts of the first rows stop it at once.
    let out = run(&dir, args(&url, &["--restart"]));
    assert_code(&out, 2);
    assert_all_skipped(&dir.results("in.results.csv"), &says);

    let mock = MockProcess::start_on(port, &["--latency-ms", "5"]);
    let out = run(&dir, args(&url, &["--resume"]));
    assert_code(&out, 0);
    assert_eq!(count(&dir.results("in.results.csv"), "ok"), ROWS);
    assert_eq!(stat(&mock.stats(), "requests"), ROWS as u64);
}

#[test]
fn the_same_rejection_of_the_first_rows_stops_but_a_bad_row_after_answers_fails_alone() {
    // The Responses API refuses a max_output_tokens under 16 with a 400.
    let dir = TestDir::new();
    let mut csv = String::from("id,text,max_tokens\n");
    for i in 1..=20 {
        let max = if i == 15 { "8" } else { "" };
        csv.push_str(&format!("r{i:02},item {i},{max}\n"));
    }
    dir.create("in.csv", &csv);
    let mock = MockProcess::start(&["--latency-ms", "2"]);
    let out = run(&dir, args(&mock.url, &["--api", "responses", "-j", "2"]));
    assert_code(&out, 1);
    let rows = dir.results("in.results.csv");
    assert_eq!(count(&rows, "ok"), 19, "{rows:?}");
    let bad = &rows[14];
    assert_eq!(field(bad, "status"), "failed", "{bad:?}");
    assert!(field(bad, "error").contains("max_output_tokens"), "{bad:?}");
    assert_eq!(attempts(bad), 1);
    assert!(
        !stderr(&out).contains("error:"),
        "a row's error stopped the run: {}",
        show(&out)
    );

    // The same rejection of every row from the start: stopped after the first few.
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(50));
    let out = run(
        &dir,
        args(
            &mock.url,
            &["--api", "responses", "--max-tokens", "8", "-j", "1"],
        ),
    );
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("rejected the first 3 requests the same way")
            && err.contains("max_output_tokens"),
        "{}",
        show(&out)
    );
    let rows = dir.results("in.results.csv");
    assert_all_skipped(&rows, "rejected the first 3 requests");
    assert_eq!(rows.iter().filter(|r| attempts(r) == 1).count(), 3);
}

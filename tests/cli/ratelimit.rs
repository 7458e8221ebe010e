//! Issue 13, the start of a run that learns its limits: a few requests go before the first
//! answer, and more follow one a second while none comes, so a hanging first request does not
//! hold the run (it used to send one request and nothing else until it answered). The mock
//! counts the requests in flight before its first answer (`GET /stats`).

use crate::util::{MockProcess, TestDir, field, numbered_csv, run, show, stat};

fn args<'a>(base: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "run",
        "in.csv",
        "--prompt",
        "{{ text }}",
        "--base-url",
        base,
        "--no-cache",
        "-q",
    ];
    a.extend_from_slice(extra);
    a
}

#[test]
fn several_requests_go_before_the_first_answer() {
    // Limits stated in the headers but not given: the run learns them.
    // A slow first answer (3 s: the requests after the first count their tokens, which builds
    // the tokenizer, slow in a debug build on a loaded machine).
    let mock = MockProcess::start(&["--rpm", "6000", "--tpm", "1000000", "--latency-ms", "3000"]);
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(8));
    let out = run(&dir, args(&mock.url, &["-j", "8"]));
    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), 8, "{}", show(&out));
    assert!(rows.iter().all(|r| field(r, "status") == "ok"), "{rows:?}");
    let stats = mock.stats();
    let before = stat(&stats, "max_in_flight_before_first_answer");
    assert!(
        (2..=8).contains(&before),
        "{before} in flight before the first answer: {stats}"
    );
}

#[test]
fn requests_that_hang_do_not_hold_the_others() {
    // Every request hangs until --timeout: with nothing answered, the run still sends more.
    let mock = MockProcess::start(&["--rpm", "6000", "--fault", "hang=1"]);
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(8));
    let out = run(
        &dir,
        args(
            &mock.url,
            &["-j", "8", "--timeout", "3", "--max-retries", "0"],
        ),
    );
    let stats = mock.stats();
    let before = stat(&stats, "max_in_flight_before_first_answer");
    // The first few at once, then about one a second until the first timeout at 3 s.
    assert!(before > 4, "{before}: {stats}\n{}", show(&out));
}

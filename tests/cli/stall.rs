//! Issue 13, rate limiting is waiting, not failing: a 429 that is a rate limit does not count
//! against `--max-retries`, so no row fails from rate limiting while answers still arrive; the
//! run stops (rows skipped, for `--resume`) only after `--max-stall` without any answer. The
//! mock states no limits (`--no-limit-headers`, as vLLM or a proxy), so the run meets them only
//! as 429s.

use crate::util::{
    MockProcess, TestDir, assert_code, attempts, field, numbered_csv, run, show, stat,
};

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
fn no_row_fails_from_rate_limiting_while_answers_still_arrive() {
    // About 4 a second, stated nowhere; 429s carry only llm_provider-retry-after (LiteLLM).
    let mock = MockProcess::start(&[
        "--rpm",
        "240",
        "--retry-after",
        "litellm",
        "--no-limit-headers",
    ]);
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(16));
    let base = format!("http://127.0.0.1:{}/v1", mock.port());
    // --max-retries 0: before, every refused row failed at its first 429.
    let out = run(&dir, args(&base, &["-j", "8", "--max-retries", "0"]));
    assert_code(&out, 0);
    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), 16, "{}", show(&out));
    assert!(rows.iter().all(|r| field(r, "status") == "ok"), "{rows:?}");
    let retried: u64 = rows.iter().map(|r| attempts(r) - 1).sum();
    assert!(
        retried > 0,
        "the mock refused nothing, so this proves nothing: {rows:?}"
    );
}

#[test]
fn a_run_refused_everything_for_max_stall_stops_with_rows_skipped() {
    // One request a minute, stated nowhere: after the first answer, everything is a 429.
    let mock = MockProcess::start(&["--rpm", "1", "--retry-after", "none", "--no-limit-headers"]);
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(4));
    let base = format!("http://127.0.0.1:{}/v1", mock.port());
    let out = run(&dir, args(&base, &["-j", "4", "--max-stall", "2"]));
    assert_code(&out, 1);
    let rows = dir.results("in.results.csv");
    let skipped: Vec<_> = rows
        .iter()
        .filter(|r| field(r, "status") == "skipped")
        .collect();
    assert!(!skipped.is_empty(), "{}", show(&out));
    assert!(
        rows.iter().all(|r| field(r, "status") != "failed"),
        "{rows:?}"
    );
    assert!(
        field(skipped[0], "error").contains("--max-stall"),
        "{:?}",
        skipped[0]
    );
}

#[test]
fn a_used_up_daily_quota_stops_the_run_at_once_naming_its_reset() {
    // Groq-style: three requests a day, stated in the headers. The fourth row would wait
    // hours for the quota, longer than --max-stall: the run stops at once instead of sleeping.
    let mock = MockProcess::start(&["--rpd", "3"]);
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(5));
    let base = format!("http://127.0.0.1:{}/v1", mock.port());
    let started = std::time::Instant::now();
    let out = run(&dir, args(&base, &["-j", "1"]));
    assert_code(&out, 1);
    let rows = dir.results("in.results.csv");
    let status: Vec<&str> = rows.iter().map(|r| field(r, "status")).collect();
    assert_eq!(
        status,
        ["ok", "ok", "ok", "skipped", "skipped"],
        "{}",
        show(&out)
    );
    let reason = field(&rows[3], "error");
    assert!(
        reason.contains("request limit (3 per day) is used up") && reason.contains("resets at"),
        "{reason}"
    );
    // Said on stderr even with -q and no terminal.
    assert!(
        crate::util::stderr(&out).contains("resets at"),
        "{}",
        show(&out)
    );
    assert_eq!(stat(&mock.stats(), "rate_limited"), 0, "it did not knock");
    // Not after --max-stall's ten minutes: at once (a generous bound, not a timing figure).
    assert!(started.elapsed() < std::time::Duration::from_secs(300));
}

#[test]
fn a_429_asking_for_a_long_wait_is_said_once_even_quietly() {
    // A daily quota stated nowhere but in the 429's retry-after (hours away).
    let mock = MockProcess::start(&[
        "--rpd",
        "1",
        "--retry-after",
        "seconds",
        "--no-limit-headers",
    ]);
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(4));
    let base = format!("http://127.0.0.1:{}/v1", mock.port());
    let out = run(&dir, args(&base, &["-j", "2", "--max-stall", "1"]));
    assert_code(&out, 1);
    let err = crate::util::stderr(&out);
    assert!(
        stat(&mock.stats(), "rate_limited") > 0,
        "nothing was refused, so this proves nothing: {}",
        show(&out)
    );
    assert_eq!(
        err.matches("the server asks to wait").count(),
        1,
        "{}",
        show(&out)
    );
    assert!(
        err.contains("a 429's retry-after, until") && err.contains("--max-stall"),
        "{err}"
    );
}

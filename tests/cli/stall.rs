//! Issue 13, rate limiting is waiting, not failing: a 429 that is a rate limit does not count
//! against `--max-retries`, so no row fails from rate limiting while answers still arrive; the
//! run stops (rows skipped, for `--resume`) only after `--max-stall` without any answer. The
//! mock states no limits (`--no-limit-headers`, as vLLM or a proxy), so the run meets them only
//! as 429s.

use crate::util::{MockProcess, TestDir, assert_code, attempts, field, numbered_csv, run, show};

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

//! The response cache and in-run deduplication, end to end: the real binary against a mock it
//! starts, with a cache folder of its own per test.

use crate::util::{self, MockProcess, TestDir, assert_code, numbered_csv, run, stat};

fn sample(dir: &TestDir) -> std::path::PathBuf {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/samples/reviews.csv"))
        .unwrap();
    // The first 80 reviews keep the test quick.
    let mut rows = csv::Reader::from_reader(text.as_bytes());
    let mut w = csv::Writer::from_path(dir.join("reviews.csv")).unwrap();
    w.write_record(rows.headers().unwrap()).unwrap();
    for r in rows.records().take(80) {
        w.write_record(&r.unwrap()).unwrap();
    }
    w.flush().unwrap();
    dir.join("reviews.csv")
}

fn run_with(
    dir: &TestDir,
    mock: &MockProcess,
    input: &str,
    out: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "run",
        input,
        "--prompt",
        "Classify: {{ review }}",
        "--base-url",
        &mock.url,
        "-o",
        out,
        "-q",
    ];
    if !extra.contains(&"-j") {
        args.extend(["-j", "8"]);
    }
    args.extend_from_slice(extra);
    run(dir, args)
}

#[test]
fn a_rerun_sends_nothing_gives_identical_outputs_and_reports_the_money_saved() {
    let dir = TestDir::new();
    let input = sample(&dir);
    let input = input.to_str().unwrap();
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    assert_code(&run_with(&dir, &mock, input, "one.csv", &[]), 0);
    let first_requests = stat(&mock.stats(), "requests");
    assert_eq!(first_requests, 80);

    let out = run_with(&dir, &mock, input, "two.csv", &["--summary-json", "s.json"]);
    assert_code(&out, 0);
    assert_eq!(
        stat(&mock.stats(), "requests"),
        first_requests,
        "the rerun sent requests"
    );

    let (one, two) = (dir.results("one.csv"), dir.results("two.csv"));
    assert_eq!(one.len(), two.len());
    for (a, b) in one.iter().zip(&two) {
        assert_eq!(a["output"].as_bytes(), b["output"].as_bytes());
        assert_eq!(
            a["prompt_tokens"], b["prompt_tokens"],
            "original usage is kept"
        );
        assert_eq!(a["completion_tokens"], b["completion_tokens"]);
        assert_eq!(
            (a["cached"].as_str(), b["cached"].as_str()),
            ("false", "true")
        );
        assert_eq!(b["cost_usd"], "0", "a hit costs nothing");
    }
    let s: serde_json::Value = serde_json::from_str(&dir.read("s.json")).unwrap();
    assert_eq!(s["cache_hits"], 80);
    let paid: f64 = one
        .iter()
        .map(|r| r["cost_usd"].parse::<f64>().unwrap())
        .sum();
    let saved = s["saved_usd"].as_f64().unwrap();
    assert!(
        paid > 0.0 && (saved - paid).abs() < 1e-9,
        "saved {saved}, first run paid {paid}"
    );
    assert_eq!(s["cost_usd"].as_f64(), Some(0.0));
}

#[test]
fn duplicated_rows_send_exactly_the_distinct_requests() {
    let dir = TestDir::new();
    // 70 distinct texts, 30 rows repeating one of them, shuffled; 16 in flight so duplicates
    // meet both requests still in flight and requests already answered.
    let mut rows: Vec<String> = (0..70).map(|i| format!("distinct text {i}")).collect();
    let mut seed = 12345u64;
    for _ in 0..30 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        rows.push(rows[(seed >> 33) as usize % 70].clone());
    }
    for i in (1..rows.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        rows.swap(i, (seed >> 33) as usize % (i + 1));
    }
    let csv: String = std::iter::once("id,review".to_string())
        .chain(rows.iter().enumerate().map(|(i, t)| format!("{i},{t}")))
        .collect::<Vec<_>>()
        .join("\n");
    let input = dir.create("dups.csv", &csv);
    let mock = MockProcess::start(&["--latency-ms", "30"]);
    let out = run_with(&dir, &mock, input.to_str().unwrap(), "d.csv", &["-j", "16"]);
    assert_code(&out, 0);
    assert_eq!(stat(&mock.stats(), "requests"), 70);
    let results = dir.results("d.csv");
    assert_eq!(results.len(), 100);
    for (r, text) in results.iter().zip(&rows) {
        assert_eq!(r["status"], "ok");
        assert_eq!(r["output"], util::mock_answer(&format!("Classify: {text}")));
    }
    assert_eq!(results.iter().filter(|r| r["cached"] == "true").count(), 30);

    // Independent samples on request: every row is sent.
    let out = run_with(
        &dir,
        &mock,
        input.to_str().unwrap(),
        "e.csv",
        &["--no-dedup", "--no-cache"],
    );
    assert_code(&out, 0);
    assert_eq!(stat(&mock.stats(), "requests"), 170);
}

#[test]
fn changing_any_request_parameter_misses_the_cache() {
    let dir = TestDir::new();
    let input = dir.create("in.csv", &numbered_csv(5).replace("id,text", "id,review"));
    let input = input.to_str().unwrap();
    let mock = MockProcess::start(&["--latency-ms", "1"]);
    assert_code(&run_with(&dir, &mock, input, "base.csv", &[]), 0);
    assert_code(&run_with(&dir, &mock, input, "again.csv", &[]), 0);
    assert_eq!(stat(&mock.stats(), "requests"), 5, "the same request hits");
    let variants: [&[&str]; 4] = [
        &["--model", "gpt-4o-mini"],
        &["--temperature", "0.7"],
        &["--system", "Be brief."],
        &["--max-tokens", "50"],
    ];
    let mut expected = 5;
    for (i, extra) in variants.iter().enumerate() {
        let out = run_with(&dir, &mock, input, &format!("v{i}.csv"), extra);
        assert_code(&out, 0);
        expected += 5;
        assert_eq!(
            stat(&mock.stats(), "requests"),
            expected,
            "{extra:?} should miss"
        );
    }
}

#[test]
fn errors_and_truncated_answers_are_not_cached_unless_asked() {
    let dir = TestDir::new();
    let input = dir.create("in.csv", &numbered_csv(4).replace("id,text", "id,review"));
    let input = input.to_str().unwrap();
    let broken = MockProcess::start(&["--error-rate", "1.0"]);
    let out = run_with(&dir, &broken, input, "e.csv", &["--max-retries", "0"]);
    assert_code(&out, 1);
    let stats = run(&dir, ["cache", "stats"]);
    assert_code(&stats, 0);
    assert!(
        util::stdout(&stats).contains("Entries    0"),
        "{}",
        util::show(&stats)
    );

    let mock = MockProcess::start(&["--latency-ms", "1"]);
    // Two completion tokens cut every answer short: finish_reason "length".
    assert_code(
        &run_with(&dir, &mock, input, "t1.csv", &["--max-tokens", "2"]),
        0,
    );
    assert!(
        dir.results("t1.csv")
            .iter()
            .all(|r| r["finish_reason"] == "length")
    );
    assert_code(
        &run_with(&dir, &mock, input, "t2.csv", &["--max-tokens", "2"]),
        0,
    );
    assert_eq!(
        stat(&mock.stats(), "requests"),
        8,
        "truncated answers were reused"
    );
    let keep = ["--max-tokens", "2", "--cache-truncated"];
    assert_code(&run_with(&dir, &mock, input, "t3.csv", &keep), 0);
    assert_code(&run_with(&dir, &mock, input, "t4.csv", &keep), 0);
    assert_eq!(
        stat(&mock.stats(), "requests"),
        12,
        "--cache-truncated kept them"
    );
}

#[test]
fn refresh_sends_again_and_clear_empties_the_cache() {
    let dir = TestDir::new();
    let input = dir.create("in.csv", &numbered_csv(3).replace("id,text", "id,review"));
    let input = input.to_str().unwrap();
    let mock = MockProcess::start(&["--latency-ms", "1"]);
    assert_code(&run_with(&dir, &mock, input, "a.csv", &[]), 0);
    assert_code(&run_with(&dir, &mock, input, "b.csv", &["--refresh"]), 0);
    assert_eq!(stat(&mock.stats(), "requests"), 6);
    assert!(dir.results("b.csv").iter().all(|r| r["cached"] == "false"));

    let kept = run(&dir, ["cache", "clear", "--older-than", "1d"]);
    assert!(
        util::stdout(&kept).contains("removed 0"),
        "{}",
        util::show(&kept)
    );
    let cleared = run(&dir, ["cache", "clear"]);
    assert!(
        util::stdout(&cleared).contains("removed 3"),
        "{}",
        util::show(&cleared)
    );
    assert_code(&run_with(&dir, &mock, input, "c.csv", &[]), 0);
    assert_eq!(stat(&mock.stats(), "requests"), 9);
}

#[test]
fn a_cache_written_by_an_earlier_batch_still_answers() {
    let dir = TestDir::new();
    let input = sample(&dir);
    let input = input.to_str().unwrap();
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    assert_code(&run_with(&dir, &mock, input, "one.csv", &[]), 0);
    assert_eq!(stat(&mock.stats(), "requests"), 80);
    // The same answers in the layout every `batch` before this one wrote: one table, `answers`,
    // keyed by the request hash.
    let conn = rusqlite::Connection::open(dir.cache_dir().join("cache.sqlite")).unwrap();
    conn.execute_batch(
        "CREATE TABLE answers (key TEXT PRIMARY KEY, created_at INTEGER NOT NULL, \
         text TEXT NOT NULL, finish_reason TEXT NOT NULL, model TEXT NOT NULL, \
         prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, \
         cached_tokens INTEGER NOT NULL, cache_write_tokens INTEGER NOT NULL, \
         reasoning_tokens INTEGER NOT NULL, cost_usd REAL);
         INSERT INTO answers SELECT key, created_at, text, finish_reason, model, prompt_tokens, \
         completion_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, cost_usd \
         FROM entries;
         DROP TABLE entries; DROP TABLE fresh_keys; DROP TABLE entry_keys;",
    )
    .unwrap();
    drop(conn);

    assert_code(&run_with(&dir, &mock, input, "two.csv", &[]), 0);
    assert_eq!(
        stat(&mock.stats(), "requests"),
        80,
        "the rerun sent requests"
    );
    let (one, two) = (dir.results("one.csv"), dir.results("two.csv"));
    assert_eq!((one.len(), two.len()), (80, 80));
    for (a, b) in one.iter().zip(&two) {
        assert_eq!(a["output"], b["output"]);
        assert_eq!(b["cached"], "true");
    }
    let stats = run(&dir, ["cache", "stats"]);
    assert_code(&stats, 0);
    let said = String::from_utf8_lossy(&stats.stdout);
    assert!(said.contains("Entries    80 "), "{said}");
}

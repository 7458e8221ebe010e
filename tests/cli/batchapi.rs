//! Provider Batch APIs end to end: `batch submit`, `status`, `collect`, `cancel` and `run --via
//! batch`, the real binary against `batch mock` (files and batches endpoints) in a child process.
//!
//! "Kills" are exact: every step that spends anything is preceded by a save of the state file,
//! so a process killed at that step leaves precisely the state these tests write before running
//! `collect`.

use std::path::Path;

use serde_json::Value;

use crate::util::{
    self, MockProcess, Row, TestDir, assert_code, field, mock_answer, numbered_csv, run, show,
    stderr, stdout,
};

const MODEL: &str = "gpt-4.1-mini";
const STATE: &str = "in.results.batch.json";

/// `batch submit in.csv` against `mock`, with `extra` flags.
fn submit(dir: &TestDir, mock: &MockProcess, extra: &[&str]) -> std::process::Output {
    submit_file(dir, mock, "in.csv", extra)
}

fn submit_file(
    dir: &TestDir,
    mock: &MockProcess,
    input: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "submit",
        input,
        "--prompt",
        "{{ text }}",
        "--model",
        MODEL,
        "--base-url",
        &mock.url,
    ];
    args.extend_from_slice(extra);
    run(dir, args)
}

fn collect(dir: &TestDir, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["collect", STATE, "--poll-max", "1"];
    args.extend_from_slice(extra);
    run(dir, args)
}

fn state(dir: &TestDir) -> Value {
    serde_json::from_str(&dir.read(STATE)).expect("the state file is JSON")
}

fn batch_stats(mock: &MockProcess) -> Value {
    mock.get_json("/stats/batches")
}

/// What a row's answer costs at batch prices: half the embedded table's standard price.
fn batch_cost(row: &Row) -> f64 {
    let p = batch::engine::pricing::PriceTable::embedded()
        .lookup(field(row, "model"))
        .expect("the model has a price");
    let tokens = |col: &str| -> f64 {
        field(row, col)
            .parse()
            .unwrap_or_else(|e| panic!("{col} is not a number ({e}): {row:?}"))
    };
    (tokens("prompt_tokens") * p.input + tokens("completion_tokens") * p.output) / 1e6 * 0.5
}

#[track_caller]
fn assert_answered(rows: &[Row], n: usize) {
    assert_answered_by(rows, n, MODEL);
}

#[track_caller]
fn assert_answered_by(rows: &[Row], n: usize, model: &str) {
    assert_eq!(rows.len(), n);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(field(row, "model"), model, "{row:?}");
        assert_eq!(field(row, "id"), format!("r{:04}", i + 1), "input order");
        assert_eq!(field(row, "status"), "ok", "{row:?}");
        assert_eq!(
            field(row, "output"),
            mock_answer(&format!("item number {}", i + 1)),
            "{row:?}"
        );
        let cost: f64 = field(row, "cost_usd").parse().expect("a cost");
        let expected = batch_cost(row);
        assert!(
            (cost - expected).abs() < 1e-9 && expected > 0.0,
            "row {i}: cost {cost}, batch price gives {expected}"
        );
    }
}

#[test]
fn submit_exits_then_collect_from_the_state_file_writes_every_row_at_batch_prices() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(30));
    let mock = MockProcess::start(&["--batch-latency-ms", "300"]);
    const SECRET: &str = "sk-test-NEVER-WRITE-THIS-0123456789";

    let out = util::cmd(
        &dir,
        [
            "submit",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--model",
            MODEL,
            "--base-url",
            &mock.url,
        ],
    )
    .env("OPENAI_API_KEY", SECRET)
    .output()
    .unwrap();
    assert_code(&out, 0);
    assert!(stderr(&out).contains(STATE), "{}", show(&out));
    // The submitting process is gone; nothing is answered yet and no results exist.
    assert!(!dir.path().join("in.results.csv").exists());
    let st = state(&dir);
    assert_eq!(st["batches"].as_array().unwrap().len(), 1);
    assert_eq!(st["batches"][0]["phase"], "created");
    assert_eq!(st["rows"], 30);

    let out = util::cmd(&dir, ["collect", STATE, "--wait", "--poll-max", "1"])
        .env("OPENAI_API_KEY", SECRET)
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert_answered(&dir.results("in.results.csv"), 30);
    assert!(stderr(&out).contains("30 ok"), "{}", show(&out));

    // The key is nowhere in what the job wrote.
    let mut files = vec![dir.join(STATE), dir.join("in.results.csv")];
    for entry in std::fs::read_dir(dir.join("in.results.batch-files")).unwrap() {
        files.push(entry.unwrap().path());
    }
    assert_eq!(
        files.len(),
        4,
        "state, results, batch input and output: {files:?}"
    );
    for f in files {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        assert!(!text.contains(SECRET), "the key is in {}", f.display());
        assert!(
            !text.contains("sk-test"),
            "part of the key is in {}",
            f.display()
        );
    }
}

/// Rewrites the state as a kill at `phase` would have left it for every batch: `creating` (the
/// create request sent, its answer not saved) or `written` (the input file not yet uploaded).
fn as_if_killed(dir: &TestDir, phase: &str) {
    let mut st = state(dir);
    for b in st["batches"].as_array_mut().unwrap() {
        let b = b.as_object_mut().unwrap();
        b.remove("batch_id");
        b.remove("status");
        b.insert("phase".into(), phase.into());
        if phase == "written" {
            b.remove("creating_since");
            b.remove("input_file_id");
        }
    }
    std::fs::write(dir.join(STATE), serde_json::to_vec_pretty(&st).unwrap()).unwrap();
}

#[test]
fn killed_after_the_create_request_collect_finds_the_batch_and_does_not_pay_twice() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(12));
    let mock = MockProcess::start(&["--batch-latency-ms", "200"]);
    assert_code(&submit(&dir, &mock, &["--batch-max-requests", "5"]), 0);
    assert_eq!(batch_stats(&mock)["batches"], 3);

    // Killed after each create request reached the provider, before its answer was saved.
    as_if_killed(&dir, "creating");
    let out = collect(&dir, &["--wait"]);
    assert_code(&out, 0);
    assert_answered(&dir.results("in.results.csv"), 12);
    let stats = batch_stats(&mock);
    assert_eq!(stats["batches"], 3, "a batch was created twice: {stats}");
    assert_eq!(
        stats["files"].as_u64().unwrap(),
        3 + 3,
        "3 inputs and 3 outputs: {stats}"
    );
}

#[test]
fn killed_before_the_upload_collect_uploads_and_creates_the_batches_once() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(12));
    let first = MockProcess::start(&["--batch-latency-ms", "200"]);
    assert_code(&submit(&dir, &first, &["--batch-max-requests", "5"]), 0);
    let port = first.port();
    drop(first);
    // The provider never got anything: a fresh mock on the same address stands for that.
    let mock = MockProcess::start_on(port, &["--batch-latency-ms", "200"]);
    as_if_killed(&dir, "written");
    let out = collect(&dir, &["--wait"]);
    assert_code(&out, 0);
    assert_answered(&dir.results("in.results.csv"), 12);
    let stats = batch_stats(&mock);
    assert_eq!(stats["batches"], 3, "{stats}");
    assert_eq!(
        stats["batch_sizes"],
        serde_json::json!([5, 5, 2]),
        "{stats}"
    );
    let st = state(&dir);
    assert!(
        st["batches"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["phase"] == "downloaded"),
        "{st}"
    );
}

#[test]
fn a_job_over_the_per_batch_limit_is_split_and_the_mock_enforces_the_limit() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(25));
    let mock = MockProcess::start(&["--batch-latency-ms", "200", "--batch-max-requests", "10"]);
    let out = submit(&dir, &mock, &["--batch-max-requests", "10"]);
    assert_code(&out, 0);
    assert!(
        stderr(&out).contains("3 batches (25 requests)"),
        "{}",
        show(&out)
    );
    let stats = batch_stats(&mock);
    assert_eq!(
        stats["batch_sizes"],
        serde_json::json!([10, 10, 5]),
        "{stats}"
    );
    assert_eq!(stats["refused"], 0, "{stats}");
    assert_code(&collect(&dir, &["--wait"]), 0);
    assert_answered(&dir.results("in.results.csv"), 25);

    // Unsplit, the same job is over the mock's limit: refused as a whole, every row failed
    // with the provider's reason.
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(25));
    assert_code(&submit(&dir, &mock, &[]), 0);
    let out = collect(&dir, &["--wait"]);
    assert_code(&out, 1);
    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), 25);
    for row in &rows {
        assert_eq!(field(row, "status"), "failed", "{row:?}");
        assert!(field(row, "error").contains("too_many_requests"), "{row:?}");
    }
    assert_eq!(batch_stats(&mock)["refused"], 1);
}

#[test]
fn expired_and_failed_rows_are_reported_and_resubmitting_completes_them() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(40));
    let flaky = MockProcess::start(&[
        "--batch-latency-ms",
        "200",
        "--batch-expire-rate",
        "0.2",
        "--batch-failure-rate",
        "0.2",
        "--seed",
        "7",
    ]);
    assert_code(&submit(&dir, &flaky, &[]), 0);
    let out = collect(&dir, &["--wait"]);
    assert_code(&out, 1);
    let rows = dir.results("in.results.csv");
    let failed: Vec<&Row> = rows.iter().filter(|r| field(r, "status") != "ok").collect();
    let expired = failed
        .iter()
        .filter(|r| field(r, "error").starts_with("batch_expired: "))
        .count();
    let server_errors = failed
        .iter()
        .filter(|r| field(r, "error").contains("HTTP 500"))
        .count();
    assert!(expired > 0 && server_errors > 0, "{failed:?}");
    assert_eq!(expired + server_errors, failed.len(), "{failed:?}");
    for r in &failed {
        assert_eq!(field(r, "status"), "failed");
        assert_eq!(field(r, "cost_usd"), "", "{r:?}");
    }
    assert_eq!(state(&dir)["batches"][0]["status"], "expired");

    // The provider recovers (a healthy mock on the same address): the failed rows, and only
    // they, go out again as one new batch recorded in the same state file.
    let port = flaky.port();
    drop(flaky);
    let healthy = MockProcess::start_on(port, &["--batch-latency-ms", "200"]);
    let out = collect(&dir, &["--wait", "--resubmit-failed"]);
    assert_code(&out, 0);
    assert!(stderr(&out).contains("Resubmitted"), "{}", show(&out));
    let stats = batch_stats(&healthy);
    assert_eq!(
        stats["batch_sizes"],
        serde_json::json!([failed.len()]),
        "{stats}"
    );
    let again = dir.results("in.results.csv");
    assert_answered(&again, 40);
    let before: Vec<&str> = failed.iter().map(|r| field(r, "id")).collect();
    for row in &again {
        let expected = if before.contains(&field(row, "id")) {
            "2"
        } else {
            "1"
        };
        assert_eq!(field(row, "attempts"), expected, "{row:?}");
    }
    let st = state(&dir);
    assert_eq!(st["batches"].as_array().unwrap().len(), 2);
    assert_eq!(st["batches"][1]["resubmits"], serde_json::json!([1]));
}

#[test]
fn status_shows_each_batch_and_collect_without_wait_leaves_running_rows_skipped() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(9));
    // Slow enough to be still running when looked at, whatever the load.
    let mock = MockProcess::start(&["--batch-latency-ms", "600000"]);
    assert_code(&submit(&dir, &mock, &["--batch-max-requests", "4"]), 0);
    let out = run(&dir, ["status", STATE]);
    assert_code(&out, 0);
    let text = stdout(&out);
    let st = state(&dir);
    for (i, b) in st["batches"].as_array().unwrap().iter().enumerate() {
        let id = b["batch_id"].as_str().unwrap();
        let line = text
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("no line for {id}:\n{text}"));
        let requests = [4, 4, 1][i].to_string();
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[0], (i + 1).to_string(), "{line}");
        assert_eq!(cols[2], "in_progress", "{line}");
        assert_eq!(cols[3], requests, "{line}");
    }

    let out = collect(&dir, &[]);
    assert_code(&out, 1);
    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), 9);
    for row in &rows {
        assert_eq!(field(row, "status"), "skipped", "{row:?}");
        assert!(field(row, "error").contains("in_progress"), "{row:?}");
    }
}

#[test]
fn cancel_ends_the_batches_and_their_rows_are_failed_as_cancelled() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(6));
    let mock = MockProcess::start(&["--batch-latency-ms", "600000"]);
    assert_code(&submit(&dir, &mock, &["--batch-max-requests", "3"]), 0);
    let out = run(&dir, ["cancel", STATE]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("cancelling"), "{}", show(&out));
    assert_eq!(batch_stats(&mock)["cancelled"], 2);

    let out = collect(&dir, &["--wait"]);
    assert_code(&out, 1);
    for row in dir.results("in.results.csv") {
        assert_eq!(field(&row, "status"), "failed", "{row:?}");
        assert!(field(&row, "error").starts_with("cancelled"), "{row:?}");
    }
    let st = state(&dir);
    for b in st["batches"].as_array().unwrap() {
        assert_eq!(b["status"], "cancelled", "{st}");
    }
}

#[test]
fn run_via_batch_submits_and_collects_in_one_command() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(15));
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--model",
            MODEL,
            "--via",
            "batch",
            "--batch-max-requests",
            "6",
            "--mock=batch-latency-ms=200",
        ],
    );
    assert_code(&out, 0);
    assert!(
        stderr(&out).contains("3 batches (15 requests)"),
        "{}",
        show(&out)
    );
    assert_answered(&dir.results("in.results.csv"), 15);
    assert_eq!(state(&dir)["batches"].as_array().unwrap().len(), 3);
}

#[test]
fn dry_run_shows_the_batches_and_both_costs_and_sends_nothing() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(25));
    let mock = MockProcess::start(&[]);
    let out = submit(
        &dir,
        &mock,
        &[
            "--dry-run",
            "--max-tokens",
            "20",
            "--batch-max-requests",
            "10",
        ],
    );
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("Batches      3 "), "{text}");
    assert!(text.contains("10 requests (rows 1-10)"), "{text}");
    assert!(text.contains("5 requests (rows 21-25)"), "{text}");
    let worst = text
        .lines()
        .find(|l| l.trim_start().starts_with("worst case"))
        .unwrap_or_else(|| panic!("no worst case line:\n{text}"));
    let dollars: Vec<f64> = worst
        .split_whitespace()
        .filter_map(|w| w.strip_prefix('$'))
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(dollars.len(), 3, "{worst}");
    // Printed to the millionth of a dollar.
    assert!((dollars[1] - dollars[0] / 2.0).abs() <= 1e-6, "{worst}");
    assert!((dollars[2] - dollars[0] / 2.0).abs() <= 1e-6, "{worst}");
    assert!(dollars[0] > 0.0, "{worst}");
    assert_eq!(batch_stats(&mock)["files"], 0);
    assert_eq!(dir.files(), ["in.csv"]);
}

#[test]
fn bad_state_files_and_bad_input_exit_2_with_a_clear_message() {
    let dir = TestDir::new();
    for cmd_name in ["status", "collect", "cancel"] {
        let out = run(&dir, [cmd_name, "missing.json"]);
        assert_code(&out, 2);
        assert!(
            stderr(&out).contains("no batch state file at missing.json"),
            "{}",
            show(&out)
        );
    }
    dir.create(
        "garbage.json",
        "{\"format\": \"batch-state/1\",\n \"batches\": 12}",
    );
    let out = run(&dir, ["collect", "garbage.json"]);
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("garbage.json is not a usable batch state file (line "),
        "{err}"
    );
    dir.create("other.json", "[1, 2]");
    assert_code(&run(&dir, ["status", "other.json"]), 2);

    // A bad row stops the submit before anything is sent, naming the line.
    let mock = MockProcess::start(&[]);
    dir.create("in.csv", "id,text\nr0001,fine\nr0002\n");
    let out = submit(&dir, &mock, &[]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("line 3"), "{}", show(&out));
    assert_eq!(batch_stats(&mock)["files"], 0);
    assert!(!dir.path().join(STATE).exists());

    // An input edited after submission would pair answers with the wrong rows.
    dir.create("in.csv", &numbered_csv(3));
    assert_code(&submit(&dir, &mock, &[]), 0);
    dir.create("in.csv", &numbered_csv(4));
    let out = collect(&dir, &[]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("has changed since"), "{}", show(&out));

    // A second submit does not overwrite a running job.
    dir.create("in.csv", &numbered_csv(3));
    let out = submit(&dir, &mock, &[]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("already recorded"), "{}", show(&out));
}

#[test]
fn submit_to_the_embedded_mock_is_refused_because_it_dies_with_the_process() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(2));
    let out = run(
        &dir,
        ["submit", "in.csv", "--prompt", "{{ text }}", "--mock"],
    );
    assert_code(&out, 2);
    assert!(stderr(&out).contains("run --via batch"), "{}", show(&out));
    assert!(!Path::new(&dir.join(STATE)).exists());
}

const CLAUDE: &str = "claude-haiku-4-5";

fn submit_claude(dir: &TestDir, mock: &MockProcess, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "submit",
        "in.csv",
        "--prompt",
        "{{ text }}",
        "--model",
        CLAUDE,
        "--max-tokens",
        "50",
        "--base-url",
        &mock.url,
    ];
    args.extend_from_slice(extra);
    util::cmd(dir, args)
        .env("ANTHROPIC_API_KEY", "sk-ant-test-KEEP-OUT-OF-FILES")
        .output()
        .unwrap()
}

fn collect_claude(dir: &TestDir, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["collect", STATE, "--poll-max", "1"];
    args.extend_from_slice(extra);
    util::cmd(dir, args)
        .env("ANTHROPIC_API_KEY", "sk-ant-test-KEEP-OUT-OF-FILES")
        .output()
        .unwrap()
}

#[test]
fn anthropic_message_batches_split_expire_resubmit_and_collect_at_batch_prices() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(24));
    let flaky = MockProcess::start(&[
        "--batch-latency-ms",
        "200",
        "--batch-expire-rate",
        "0.25",
        "--batch-max-requests",
        "10",
        "--seed",
        "3",
    ]);
    let out = submit_claude(&dir, &flaky, &["--batch-max-requests", "10"]);
    assert_code(&out, 0);
    assert!(
        stderr(&out).contains("3 batches (24 requests) to the Anthropic Message Batches"),
        "{}",
        show(&out)
    );
    assert_eq!(
        batch_stats(&flaky)["batch_sizes"],
        serde_json::json!([10, 10, 4])
    );
    let st = state(&dir);
    assert_eq!(st["provider"], "anthropic");
    // The requests are the Messages bodies `run` sends.
    let first = dir.read("in.results.batch-files/input-001.jsonl");
    let line: Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert_eq!(line["custom_id"], "row-0");
    assert_eq!(line["params"]["model"], CLAUDE);
    assert_eq!(line["params"]["max_tokens"], 50);
    assert_eq!(line["params"]["messages"][0]["content"], "item number 1");

    let out = collect_claude(&dir, &["--wait"]);
    assert_code(&out, 1);
    let rows = dir.results("in.results.csv");
    let expired: Vec<&str> = rows
        .iter()
        .filter(|r| field(r, "status") != "ok")
        .map(|r| {
            assert!(field(r, "error").starts_with("expired: "), "{r:?}");
            field(r, "id")
        })
        .collect();
    assert!(!expired.is_empty(), "the seed expires some requests");

    let port = flaky.port();
    drop(flaky);
    let healthy = MockProcess::start_on(port, &["--batch-latency-ms", "200"]);
    let out = collect_claude(&dir, &["--wait", "--resubmit-failed"]);
    assert_code(&out, 0);
    assert_eq!(
        batch_stats(&healthy)["batch_sizes"],
        serde_json::json!([expired.len()])
    );
    let rows = dir.results("in.results.csv");
    assert_answered_by(&rows, 24, CLAUDE);
    for row in &rows {
        assert_eq!(field(row, "finish_reason"), "end_turn", "{row:?}");
    }
    for f in [STATE, "in.results.csv"] {
        assert!(!dir.read(f).contains("KEEP-OUT"), "the key is in {f}");
    }
}

#[test]
fn anthropic_killed_after_the_create_request_collect_adopts_the_batch() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(7));
    let mock = MockProcess::start(&["--batch-latency-ms", "200"]);
    assert_code(
        &submit_claude(&dir, &mock, &["--batch-max-requests", "4"]),
        0,
    );
    as_if_killed(&dir, "creating");
    let out = collect_claude(&dir, &["--wait"]);
    assert_code(&out, 0);
    assert_answered_by(&dir.results("in.results.csv"), 7, CLAUDE);
    let stats = batch_stats(&mock);
    assert_eq!(stats["batch_sizes"], serde_json::json!([4, 3]), "{stats}");

    // Over the provider's limit, Anthropic refuses the create request itself: the submit
    // fails with the reason, and says how to carry on.
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(7));
    let strict = MockProcess::start(&["--batch-max-requests", "5"]);
    let out = submit_claude(&dir, &strict, &[]);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("more than the 5 a batch may hold"),
        "{}",
        show(&out)
    );
    assert_eq!(batch_stats(&strict)["batches"], 0);
}

#[test]
fn schema_and_expect_apply_to_batch_answers_as_they_do_in_run() {
    let dir = TestDir::new();
    let mut csv = String::from("id,text,want\n");
    for i in 1..=12 {
        let text = format!("item number {i}");
        // Rows 1-6 expect exactly what the mock answers; rows 7-12 expect something else.
        let want = if i <= 6 {
            mock_answer(&text)
        } else {
            "no".to_string()
        };
        csv.push_str(&format!(
            "r{i:04},{text},\"{}\"\n",
            want.replace('"', "\"\"")
        ));
    }
    dir.create("in.csv", &csv);
    let mock = MockProcess::start(&["--batch-latency-ms", "100"]);
    assert_code(&submit(&dir, &mock, &["--expect", "want"]), 0);
    assert_eq!(state(&dir)["expect"]["column"], "want", "kept for collect");
    // A mismatch is a finding, not a failure: the exit status is 0 as in `batch run`.
    let out = collect(&dir, &["--wait", "--summary-json", "s.json"]);
    assert_code(&out, 0);
    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), 12);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(field(row, "status"), "ok", "{row:?}");
        assert_eq!(field(row, "match"), (i < 6).to_string(), "{row:?}");
    }
    let s: Value = serde_json::from_str(&dir.read("s.json")).unwrap();
    assert_eq!(
        (&s["expect"]["compared"], &s["expect"]["matched"]),
        (&Value::from(12), &Value::from(6)),
        "{s}"
    );

    // --schema: the answers are checked and split into out.<name> columns; a spoilt one fails
    // its row, as in `batch run`.
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(40));
    dir.create(
        "schema.json",
        r#"{"type": "object", "properties": {"label": {"type": "string", "enum": ["a", "b"]},
            "score": {"type": "integer"}}, "required": ["label", "score"],
            "additionalProperties": false}"#,
    );
    let mock = MockProcess::start(&["--batch-latency-ms", "100", "--invalid-json-rate", "0.3"]);
    assert_code(&submit(&dir, &mock, &["--schema", "schema.json"]), 0);
    assert_eq!(state(&dir)["schema"]["name"], "schema");
    let out = collect(&dir, &["--wait"]);
    let rows = dir.results("in.results.csv");
    let spoilt = mock.get_json("/stats")["invalid_answers"].as_u64().unwrap();
    let failed: Vec<&Row> = rows
        .iter()
        .filter(|r| field(r, "status") == "failed")
        .collect();
    assert!(spoilt > 0 && spoilt < 40, "the mock spoils some: {spoilt}");
    assert_eq!(
        failed.len() as u64,
        spoilt,
        "each spoilt answer fails its row"
    );
    assert_code(&out, 1);
    for row in &rows {
        if field(row, "status") == "failed" {
            assert!(
                field(row, "error").starts_with("invalid answer: "),
                "{row:?}"
            );
            assert!(
                !field(row, "output").is_empty(),
                "the billed answer is kept"
            );
        } else {
            assert!(["a", "b"].contains(&field(row, "out.label")), "{row:?}");
            field(row, "out.score").parse::<i64>().expect("an integer");
        }
    }
}

#[test]
fn jsonl_input_is_submitted_and_collected_as_jsonl_with_its_json_cells_kept() {
    let dir = TestDir::new();
    let lines: String = (1..=5)
        .map(|i| {
            serde_json::json!({"id": format!("r{i:04}"), "text": format!("item number {i}"),
                "meta": {"n": i, "tags": ["a", "b"]}})
            .to_string()
                + "\n"
        })
        .collect();
    dir.create("in.jsonl", &lines);
    let mock = MockProcess::start(&["--batch-latency-ms", "50"]);
    assert_code(&submit_file(&dir, &mock, "in.jsonl", &[]), 0);
    assert_eq!(state(&dir)["input_format"], "jsonl");
    assert_code(&collect(&dir, &["--wait"]), 0);
    let results: Vec<Value> = dir
        .read("in.results.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(results.len(), 5);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["id"], format!("r{:04}", i + 1));
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["output"], mock_answer(&format!("item number {}", i + 1)));
        assert_eq!(r["meta"]["n"], i + 1, "the nested value stays JSON: {r}");
    }
}

#[test]
fn responses_api_bodies_go_to_the_batch_endpoint_v1_responses() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(8));
    let mock = MockProcess::start(&["--batch-latency-ms", "50"]);
    assert_code(&submit(&dir, &mock, &["--api", "responses"]), 0);
    let st = state(&dir);
    assert_eq!(st["provider"], "openai-responses");
    let files = dir.join(st["files"].as_str().unwrap());
    let input = std::fs::read_dir(&files)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".jsonl"))
        .expect("the batch input file");
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(input)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["url"], "/v1/responses");
    assert_eq!(first["body"]["input"], "item number 1", "{first}");
    assert_code(&collect(&dir, &["--wait"]), 0);
    let rows = dir.results("in.results.csv");
    assert_answered(&rows, 8);
    assert_eq!(batch_stats(&mock)["batches"], 1);
}

#[test]
fn collect_never_writes_over_the_submitted_input_or_its_results() {
    let dir = TestDir::new();
    let input = numbered_csv(5);
    dir.create("in.csv", &input);
    let mock = MockProcess::start(&[]);
    assert_code(&submit(&dir, &mock, &[]), 0);
    // -o on the input; the summary on the results the state names (no -o given).
    for (flag, path, what) in [
        ("-o", "./in.csv", "the submitted input"),
        ("--summary-json", "in.results.csv", "also given to -o"),
    ] {
        let out = collect(&dir, &[flag, path]);
        assert_code(&out, 2);
        assert!(stderr(&out).contains(what), "{}", show(&out));
    }
    assert_eq!(dir.read("in.csv"), input);
    assert_code(&collect(&dir, &["--wait"]), 0);
}

#[test]
fn submit_refuses_stdin_that_collect_could_not_read_again() {
    let dir = TestDir::new();
    let mock = MockProcess::start(&[]);
    let mut child = util::cmd(
        &dir,
        [
            "submit",
            "-",
            "--prompt",
            "{{ text }}",
            "--base-url",
            &mock.url,
        ],
    )
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    use std::io::Write as _;
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(numbered_csv(3).as_bytes());
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("save it to a file first"),
        "{}",
        show(&out)
    );
}

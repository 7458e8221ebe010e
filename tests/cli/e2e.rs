//! End-to-end tests: the real `batch` binary against the real mock server (in a child process
//! via `batch mock`, or embedded with `--mock`), checked through exit codes, messages, the
//! results CSV, the summary JSON and the mock's `/stats`.

use crate::util::{
    self, MockProcess, Row, TestDir, assert_code, attempts, field, mock_answer, numbered_csv,
    responses, run, show, stat, stderr, stdout,
};

#[track_caller]
fn assert_all_ok(rows: &[Row]) {
    for row in rows {
        assert_eq!(field(row, "status"), "ok", "row not ok: {row:?}");
        assert_eq!(field(row, "error"), "", "ok row with an error: {row:?}");
    }
}

#[test]
fn concurrency_bound_is_reached_and_never_exceeded() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(120));
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
            "--concurrency",
            "8",
            "-q",
        ],
    );
    assert_code(&out, 0);

    let stats = mock.stats();
    assert_eq!(stat(&stats, "max_in_flight"), 8, "stats: {stats}");
    assert_eq!(stat(&stats, "requests"), 120, "stats: {stats}");
    assert_eq!(responses(&stats, 200), 120, "stats: {stats}");
    assert_eq!(stat(&stats, "in_flight"), 0, "stats: {stats}");

    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), 120);
    assert_all_ok(&rows);
}

#[test]
fn every_output_belongs_to_its_own_row() {
    let dir = TestDir::new();
    // Texts long enough that the mock quotes only their two ends, which differ on every row;
    // some with runs of whitespace and line breaks that the mock folds, and non-ASCII text.
    let mut texts = Vec::new();
    for i in 0..60 {
        let mut text = format!(
            "start of row {i:03} with a filler sentence that pushes the middle out of the quote"
        );
        if i % 3 == 0 {
            text.push_str("\n\n   and a second   paragraph, naïve café ☕");
        }
        text.push_str(&format!(" -- the end of row number {i:03} is here"));
        texts.push(text);
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["id", "text", "lang"]).unwrap();
    for (i, t) in texts.iter().enumerate() {
        // Ids that are not the row numbers, so a row number cannot pass for an id.
        w.write_record([format!("key-{}", 1000 - i).as_str(), t, "en"])
            .unwrap();
    }
    dir.create_bytes("in.csv", &w.into_inner().unwrap());
    // Jitter makes the responses come back out of order.
    let mock = MockProcess::start(&["--latency-ms", "5", "--jitter-ms", "40", "--seed", "1"]);

    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "Translate ({{ lang }}): {{ text }}",
            "--base-url",
            &mock.url,
            "--concurrency",
            "12",
            "-q",
        ],
    );
    assert_code(&out, 0);

    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), texts.len());
    for (i, (row, text)) in rows.iter().zip(&texts).enumerate() {
        assert_eq!(field(row, "id"), format!("key-{}", 1000 - i), "row {i}");
        assert_eq!(field(row, "text"), text, "row {i}: input column changed");
        assert_eq!(field(row, "lang"), "en", "row {i}");
        let prompt = format!("Translate (en): {text}");
        assert_eq!(field(row, "output"), mock_answer(&prompt), "row {i}");
        assert!(
            field(row, "output").contains(&format!("end of row number {i:03} is here")),
            "row {i}: {row:?}"
        );
        assert_eq!(field(row, "status"), "ok", "row {i}");
        assert_eq!(field(row, "error"), "", "row {i}");
        assert_eq!(attempts(row), 1, "row {i}");
        for col in ["prompt_tokens", "completion_tokens", "latency_ms"] {
            let n: u64 = field(row, col)
                .parse()
                .unwrap_or_else(|e| panic!("row {i}: {col} is not a number ({e}): {row:?}"));
            if col != "latency_ms" {
                assert!(n > 0, "row {i}: {col} is 0");
            }
        }
        let cost: f64 = field(row, "cost_usd")
            .parse()
            .unwrap_or_else(|e| panic!("row {i}: cost_usd is not a number ({e}): {row:?}"));
        assert!(cost > 0.0, "row {i}: cost {cost}");
        assert_eq!(field(row, "model"), "gpt-4.1-mini", "row {i}");
        assert_eq!(field(row, "finish_reason"), "stop", "row {i}");
    }
}

#[test]
fn injected_server_errors_are_retried_until_every_row_is_ok() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(100));
    let mock = MockProcess::start(&["--latency-ms", "5", "--error-rate", "0.3", "--seed", "7"]);

    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--base-url",
            &mock.url,
            "--max-retries",
            "10",
            "-q",
        ],
    );
    assert_code(&out, 0);

    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), 100);
    assert_all_ok(&rows);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(
            field(row, "output"),
            mock_answer(&format!("item number {}", i + 1))
        );
    }

    let stats = mock.stats();
    let errors = responses(&stats, 500) + responses(&stats, 503);
    assert!(errors > 0, "no injected errors: {stats}");
    let retries: u64 = rows.iter().map(|r| attempts(r) - 1).sum();
    assert_eq!(
        retries, errors,
        "retries vs error responses; stats: {stats}"
    );
    assert_eq!(responses(&stats, 200), 100, "stats: {stats}");
    assert_eq!(stat(&stats, "requests"), 100 + errors, "stats: {stats}");
}

#[test]
fn response_slower_than_timeout_is_cut_off_and_retried() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(40));
    let mock = MockProcess::start(&[
        "--slow-rate",
        "0.3",
        "--slow-ms",
        "20000",
        "--latency-ms",
        "10",
        "--seed",
        "3",
    ]);

    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--base-url",
            &mock.url,
            "--timeout",
            "0.5",
            "--max-retries",
            "10",
            "-q",
        ],
    );
    assert_code(&out, 0);

    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), 40);
    assert_all_ok(&rows);
    let retried = rows.iter().filter(|r| attempts(r) > 1).count();
    assert!(retried > 0, "no row was retried after a timeout");
    for row in &rows {
        let latency: u64 = field(row, "latency_ms").parse().unwrap();
        assert!(latency < 20_000, "a slow response made it in: {row:?}");
    }
    // Every retry was a cut-off slow request: the mock sent no errors.
    let stats = mock.stats();
    assert_eq!(responses(&stats, 500) + responses(&stats, 503), 0);
    assert!(
        stat(&stats, "requests") >= 40 + retried as u64,
        "stats: {stats}"
    );
}

/// One bad-input case: the files to create, the run's arguments, and what the error must say.
struct BadInput {
    name: &'static str,
    files: Vec<(&'static str, Vec<u8>)>,
    args: Vec<&'static str>,
    expect: Vec<&'static str>,
}

fn bad_inputs() -> Vec<BadInput> {
    let good = b"id,text\na,hello\nb,world\n".to_vec();
    vec![
        BadInput {
            name: "missing input file",
            files: vec![],
            args: vec!["run", "nope.csv", "--prompt", "{{ text }}"],
            expect: vec!["nope.csv", "does not exist"],
        },
        BadInput {
            name: "empty file",
            files: vec![("in.csv", vec![])],
            args: vec!["run", "in.csv", "--prompt", "{{ text }}"],
            expect: vec!["in.csv", "empty"],
        },
        BadInput {
            name: "header only",
            files: vec![("in.csv", b"id,text\n".to_vec())],
            args: vec!["run", "in.csv", "--prompt", "{{ text }}"],
            expect: vec!["in.csv", "no rows"],
        },
        BadInput {
            name: "template names a missing column",
            files: vec![("in.csv", good.clone())],
            args: vec!["run", "in.csv", "--prompt", "Say {{ txet }}"],
            expect: vec!["txet", "\"id\", \"text\""],
        },
        BadInput {
            name: "ragged row",
            files: vec![("in.csv", b"id,text\na,1\nb,2\nc,3,oops\nd,4\n".to_vec())],
            args: vec!["run", "in.csv", "--prompt", "{{ text }}"],
            expect: vec!["in.csv", "line 4", "3 fields", "header has 2"],
        },
        BadInput {
            name: "missing prompt file",
            files: vec![("in.csv", good.clone())],
            args: vec!["run", "in.csv", "--prompt-file", "no-such-prompt.txt"],
            expect: vec!["no-such-prompt.txt", "--prompt-file"],
        },
        BadInput {
            name: "invalid UTF-8",
            files: vec![("in.csv", b"id,text\na,ok\nb,fine\nc,caf\xE9\n".to_vec())],
            args: vec!["run", "in.csv", "--prompt", "{{ text }}"],
            expect: vec!["in.csv", "line 4", "UTF-8"],
        },
        BadInput {
            name: "duplicate ids",
            files: vec![("in.csv", b"id,text\nx,1\ny,2\nz,3\ny,4\n".to_vec())],
            args: vec!["run", "in.csv", "--prompt", "{{ text }}"],
            expect: vec!["\"y\"", "line 5", "line 3"],
        },
    ]
}

#[test]
fn bad_inputs_exit_2_name_the_problem_and_write_nothing() {
    for case in bad_inputs() {
        // Once with the default output path: no results file may appear.
        let dir = TestDir::new();
        for (name, content) in &case.files {
            dir.create_bytes(name, content);
        }
        let mut args = case.args.clone();
        args.push("--mock");
        let out = run(&dir, &args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: expected exit 2\n{}",
            case.name,
            show(&out)
        );
        let err = stderr(&out);
        for want in &case.expect {
            assert!(
                err.contains(want),
                "{}: stderr does not mention {want:?}\n{}",
                case.name,
                show(&out)
            );
        }
        assert_eq!(
            dir.result_files(),
            Vec::<String>::new(),
            "{}: files left behind",
            case.name
        );

        // Once with -o naming an existing results file: it must be left byte-identical.
        let dir = TestDir::new();
        for (name, content) in &case.files {
            dir.create_bytes(name, content);
        }
        let previous = b"id,text,output,status\na,hello,earlier answer,ok\n";
        dir.create_bytes("keep.results.csv", previous);
        let mut args = case.args.clone();
        args.extend(["--mock", "-o", "keep.results.csv"]);
        let out = run(&dir, &args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{} (-o): expected exit 2\n{}",
            case.name,
            show(&out)
        );
        assert_eq!(
            dir.read_bytes("keep.results.csv"),
            previous,
            "{}: existing results file changed",
            case.name
        );
        assert_eq!(
            dir.result_files(),
            vec!["keep.results.csv".to_string()],
            "{} (-o): files left behind",
            case.name
        );
    }
}

#[test]
fn rows_that_fail_permanently_are_kept_with_their_error() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(10));
    let mock = MockProcess::start(&["--latency-ms", "5", "--error-rate", "1.0"]);

    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--base-url",
            &mock.url,
            "--max-retries",
            "1",
            "-q",
        ],
    );
    assert_code(&out, 1);

    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), 10);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(field(row, "id"), format!("r{:04}", i + 1));
        assert_eq!(field(row, "status"), "failed", "{row:?}");
        assert!(
            field(row, "error").contains("server error"),
            "error does not say server error: {row:?}"
        );
        assert_eq!(attempts(row), 2, "{row:?}");
        assert_eq!(field(row, "output"), "", "{row:?}");
        assert_eq!(field(row, "cost_usd"), "", "{row:?}");
    }
    let stats = mock.stats();
    assert_eq!(stat(&stats, "requests"), 20, "stats: {stats}");
    assert_eq!(responses(&stats, 200), 0, "stats: {stats}");
}

#[test]
fn summary_json_agrees_with_the_results_file() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(40));
    // Half the attempts fail and each row gets one retry: some rows are retried into success,
    // some fail for good.
    let mock = MockProcess::start(&["--latency-ms", "5", "--error-rate", "0.5", "--seed", "11"]);

    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "Summarize: {{ text }}",
            "--base-url",
            &mock.url,
            "--max-retries",
            "1",
            "--summary-json",
            "summary.json",
            "-q",
        ],
    );
    assert_code(&out, 1);

    let rows = dir.results("in.results.csv");
    let summary: serde_json::Value = serde_json::from_str(&dir.read("summary.json"))
        .unwrap_or_else(|e| panic!("summary.json is not JSON: {e}"));
    let num = |key: &str| {
        summary[key]
            .as_u64()
            .unwrap_or_else(|| panic!("summary has no number {key:?}: {summary}"))
    };
    let count = |status: &str| rows.iter().filter(|r| field(r, "status") == status).count() as u64;
    let sum = |col: &str| -> u64 {
        rows.iter()
            .map(|r| field(r, col).parse::<u64>().unwrap_or(0))
            .sum()
    };

    assert_eq!(num("rows"), rows.len() as u64);
    assert_eq!(num("rows"), 40);
    assert_eq!(num("ok"), count("ok"));
    assert_eq!(num("failed"), count("failed"));
    assert_eq!(num("skipped"), count("skipped"));
    assert!(num("ok") > 0 && num("failed") > 0, "summary: {summary}");
    assert_eq!(num("prompt_tokens"), sum("prompt_tokens"));
    assert_eq!(num("completion_tokens"), sum("completion_tokens"));
    assert_eq!(
        num("total_tokens"),
        sum("prompt_tokens") + sum("completion_tokens")
    );
    assert_eq!(num("retries"), sum("attempts") - rows.len() as u64);
    assert!(num("retries") > 0, "summary: {summary}");
    let cost: f64 = rows
        .iter()
        .map(|r| field(r, "cost_usd").parse::<f64>().unwrap_or(0.0))
        .sum();
    let summary_cost = summary["cost_usd"]
        .as_f64()
        .unwrap_or_else(|| panic!("summary has no cost: {summary}"));
    assert!(cost > 0.0);
    assert!(
        (summary_cost - cost).abs() < 1e-9,
        "summary cost {summary_cost} vs results {cost}"
    );
    assert_eq!(summary["model"], "gpt-4.1-mini");
    assert_eq!(summary["output"], "in.results.csv");

    // The server's own count of what it answered agrees too.
    let stats = mock.stats();
    assert_eq!(stat(&stats, "prompt_tokens"), num("prompt_tokens"));
    assert_eq!(stat(&stats, "completion_tokens"), num("completion_tokens"));
    assert_eq!(stat(&stats, "requests"), sum("attempts"));
}

#[test]
fn missing_api_key_is_a_usage_error_that_suggests_mock() {
    let dir = TestDir::new();
    dir.create("x.csv", "a\nhello\n");
    let out = run(&dir, ["run", "x.csv", "--prompt", "{{a}}"]);
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("OPENAI_API_KEY"), "{}", show(&out));
    assert!(err.contains("--mock"), "{}", show(&out));
    assert_eq!(dir.result_files(), Vec::<String>::new());
}

#[test]
fn api_key_never_appears_in_any_output() {
    const KEY: &str = "sk-test-SECRET-12345";
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(20));
    // Errors too, so the retry and failure paths get logged.
    let mock = MockProcess::start(&["--latency-ms", "5", "--error-rate", "0.3", "--seed", "2"]);

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
            "0",
            "--summary-json",
            "summary.json",
            "-vvv",
        ],
    )
    .env("OPENAI_API_KEY", KEY)
    .output()
    .expect("run batch");
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", show(&out));
    // The run did happen (so there was something to leak).
    assert!(!stderr(&out).is_empty(), "-vvv printed nothing");
    assert!(stat(&mock.stats(), "requests") >= 20);

    let results = dir.read("in.results.csv");
    assert_eq!(util::read_results(&dir.join("in.results.csv")).len(), 20);
    let summary = dir.read("summary.json");
    for (what, text) in [
        ("stdout", stdout(&out)),
        ("stderr", stderr(&out)),
        ("results", results),
        ("summary", summary),
    ] {
        assert!(!text.contains(KEY), "{what} contains the API key:\n{text}");
        assert!(
            !text.contains("SECRET-12345"),
            "{what} contains part of the API key:\n{text}"
        );
    }
}

#[test]
fn settings_file_is_overridden_by_flags_and_overrides_defaults() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(30));
    dir.create("batch.toml", "concurrency = 2\nmodel = \"gpt-4o\"\n");

    // A flag wins over the file. (300 ms answers: a debug build on a loaded machine takes
    // up to ~100 ms a row, which at 50 ms kept only one request in flight.)
    let mock = MockProcess::start(&["--latency-ms", "300"]);
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--base-url",
            &mock.url,
            "--concurrency",
            "3",
            "-q",
        ],
    );
    assert_code(&out, 0);
    assert_eq!(stat(&mock.stats(), "max_in_flight"), 3);
    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), 30);
    assert_all_ok(&rows);
    for row in &rows {
        assert_eq!(field(row, "model"), "gpt-4o", "{row:?}");
    }

    // The file wins over the default (16).
    let mock = MockProcess::start(&["--latency-ms", "300"]);
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--base-url",
            &mock.url,
            "-q",
        ],
    );
    assert_code(&out, 0);
    assert_eq!(stat(&mock.stats(), "max_in_flight"), 2);

    // A flag wins for the model too.
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--mock=latency-ms=1",
            "--model",
            "gpt-4o-mini",
            "-q",
        ],
    );
    assert_code(&out, 0);
    for row in dir.results("in.results.csv") {
        assert_eq!(field(&row, "model"), "gpt-4o-mini", "{row:?}");
    }
}

#[test]
fn unknown_settings_key_is_an_error_that_names_it() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(3));
    dir.create("batch.toml", "concurrency = 2\nconcurency = 4\n");
    let out = run(&dir, ["run", "in.csv", "--prompt", "{{ text }}", "--mock"]);
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("concurency"), "{}", show(&out));
    assert!(err.contains("batch.toml"), "{}", show(&out));
    assert_eq!(dir.result_files(), Vec::<String>::new());
}

#[test]
fn prompt_column_is_sent_as_is_without_prompt_flag() {
    let dir = TestDir::new();
    let prompts = [
        "What is 2 + 2?",
        "Echo {{ this }} literally, it is not a template",
        "{% if x %}not rendered{% endif %}",
        "Tabs\tand  double  spaces\nand a newline",
    ];
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["id", "prompt", "other"]).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        w.write_record([i.to_string().as_str(), p, "unused"])
            .unwrap();
    }
    dir.create_bytes("in.csv", &w.into_inner().unwrap());

    let out = run(&dir, ["run", "in.csv", "--mock=latency-ms=5", "-q"]);
    assert_code(&out, 0);
    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), prompts.len());
    assert_all_ok(&rows);
    for (row, prompt) in rows.iter().zip(prompts) {
        assert_eq!(field(row, "prompt"), prompt);
        assert_eq!(field(row, "output"), mock_answer(prompt), "{row:?}");
    }
}

#[test]
fn completions_for_bash_are_printed() {
    let dir = TestDir::new();
    let out = run(&dir, ["completions", "bash"]);
    assert_code(&out, 0);
    let script = stdout(&out);
    assert!(script.contains("batch"), "{}", show(&out));
    assert!(script.contains("complete"), "{}", show(&out));
    assert!(script.contains("--concurrency"), "{}", show(&out));
}

#[test]
fn embedded_mock_runs_without_a_key_or_a_server() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(25));
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--mock=latency-ms=10",
        ],
    );
    assert_code(&out, 0);
    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), 25);
    assert_all_ok(&rows);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(field(row, "id"), format!("r{:04}", i + 1));
        assert_eq!(
            field(row, "output"),
            mock_answer(&format!("item number {}", i + 1))
        );
    }
    // Not quiet: the summary is on stderr.
    let err = stderr(&out);
    assert!(err.contains("25 ok, 0 failed"), "{}", show(&out));
}

/// Issue 3: out of credit is not a rate limit. After the first `insufficient_quota` nothing new
/// is sent (only the requests already in flight reach the server), nothing is retried, every
/// finished row is in the results, and the message says what to do.
#[test]
fn insufficient_quota_stops_the_run_at_once_and_keeps_finished_rows() {
    let dir = TestDir::new();
    dir.create("in.csv", &util::numbered_csv(300));
    let mock = MockProcess::start(&["--latency-ms", "20", "--quota-exhausted-after", "30"]);
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
            "8",
            "--no-cache",
            "--summary-json",
            "s.json",
        ],
    );
    util::assert_code(&out, 1);
    let err = util::stderr(&out);
    assert!(
        err.contains("out of quota") && err.contains("add credit"),
        "{}",
        util::show(&out)
    );
    let stats = mock.stats();
    let rejected = util::stat(&stats, "quota_rejected");
    assert!(
        (1..=8).contains(&rejected),
        "{rejected} quota answers: {stats}"
    );
    assert_eq!(
        util::stat(&stats, "requests"),
        30 + rejected,
        "retried or kept sending"
    );

    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), 300);
    let count = |s: &str| rows.iter().filter(|r| r["status"] == s).count();
    assert_eq!(count("ok"), 30);
    // Issue 19: the rows that got the quota answer were never answered either: skipped, so
    // --resume sends them without --retry-failed.
    assert_eq!(count("failed"), 0);
    assert_eq!(count("skipped") as u64, 300 - 30);
    let got_it: Vec<_> = rows
        .iter()
        .filter(|r| r["status"] == "skipped" && r["attempts"] == "1")
        .collect();
    assert_eq!(got_it.len() as u64, rejected);
    assert!(
        got_it
            .iter()
            .all(|r| r["error"].contains("insufficient_quota"))
    );
    let summary: serde_json::Value = serde_json::from_str(&dir.read("s.json")).unwrap();
    assert!(summary["stopped"].as_str().unwrap().contains("quota"));
}

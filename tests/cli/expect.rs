//! `--expect` end to end: answers compared with an expected column in each `--match` mode, the
//! `match` and `match_detail` columns, and the pass rate in the printed summary and in
//! `--summary-json`. The mock's answers are deterministic, so the tests know which rows match.

use serde_json::{Value, json};

use crate::util::{self, MockProcess, TestDir, assert_code, field, mock_answer, run, show, stderr};

/// Writes `in.csv` with columns id, text, want.
fn input(dir: &TestDir, rows: &[(&str, &str)]) {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["id", "text", "want"]).unwrap();
    for (i, (text, want)) in rows.iter().enumerate() {
        w.write_record([format!("r{i}").as_str(), text, want])
            .unwrap();
    }
    dir.create_bytes("in.csv", &w.into_inner().unwrap());
}

/// Runs with `--expect want` and the extra flags; returns the match column, the detail column,
/// the summary JSON and stderr.
fn expect_run(
    dir: &TestDir,
    mock: &MockProcess,
    extra: &[&str],
) -> (Vec<String>, Vec<String>, Value, String) {
    let mut args = vec![
        "run",
        "in.csv",
        "--prompt",
        "{{ text }}",
        "--base-url",
        &mock.url,
        "--expect",
        "want",
        "--summary-json",
        "summary.json",
    ];
    args.extend_from_slice(extra);
    let out = run(dir, &args);
    assert_code(&out, 0);
    let rows = dir.results("in.results.csv");
    let matches = rows.iter().map(|r| field(r, "match").to_string()).collect();
    let details = rows
        .iter()
        .map(|r| field(r, "match_detail").to_string())
        .collect();
    let summary = serde_json::from_str(&dir.read("summary.json")).unwrap();
    (matches, details, summary, util::stderr(&out))
}

#[track_caller]
fn assert_rate(summary: &Value, mode: &str, compared: u64, matched: u64) {
    let e = &summary["expect"];
    assert_eq!(e["column"], "want", "{summary}");
    assert_eq!(e["mode"], mode, "{summary}");
    assert_eq!(e["compared"], compared, "{summary}");
    assert_eq!(e["matched"], matched, "{summary}");
    let rate = e["rate"].as_f64().unwrap();
    assert!(
        (rate - matched as f64 / compared as f64).abs() < 1e-12,
        "{summary}"
    );
}

#[test]
fn exact_match_with_case_and_whitespace_options() {
    let dir = TestDir::new();
    let mock = MockProcess::start(&["--latency-ms", "2"]);
    let shouted = mock_answer("beta").to_uppercase();
    let spaced = format!("  {}  ", mock_answer("gamma").replace(' ', "   "));
    input(
        &dir,
        &[
            ("alpha", &mock_answer("alpha")),
            ("beta", &shouted),
            ("gamma", &spaced),
            ("delta", "something else"),
            ("epsilon", ""),
        ],
    );
    let (matches, details, summary, err) = expect_run(&dir, &mock, &[]);
    assert_eq!(matches, ["true", "false", "false", "false", ""]);
    assert!(details.iter().all(String::is_empty), "{details:?}");
    assert_rate(&summary, "exact", 4, 1);
    assert!(
        err.contains("Expect     1 of 4 answers match column \"want\" (exact): pass rate 25.0%"),
        "{err}"
    );

    let (matches, _, summary, _) = expect_run(&dir, &mock, &["--ignore-case"]);
    assert_eq!(matches, ["true", "true", "false", "false", ""]);
    assert_rate(&summary, "exact", 4, 2);
    let (matches, _, summary, _) =
        expect_run(&dir, &mock, &["--ignore-case", "--ignore-whitespace"]);
    assert_eq!(matches, ["true", "true", "true", "false", ""]);
    assert_rate(&summary, "exact", 4, 3);
}

#[test]
fn contains_and_regex() {
    let dir = TestDir::new();
    let mock = MockProcess::start(&["--latency-ms", "2"]);
    input(
        &dir,
        &[
            ("item 1", "item 1"),
            ("item 2", "ITEM 2"),
            ("item 3", "item 4"),
        ],
    );
    let (matches, _, summary, _) = expect_run(&dir, &mock, &["--match", "contains"]);
    assert_eq!(matches, ["true", "false", "false"]);
    assert_rate(&summary, "contains", 3, 1);
    let (matches, _, _, _) = expect_run(&dir, &mock, &["--match", "contains", "--ignore-case"]);
    assert_eq!(matches, ["true", "true", "false"]);

    input(
        &dir,
        &[
            ("item 1", r#"^mock answer to "item \d+"$"#),
            ("item 22", r"item [0-9]$"),
            ("item 3", r"ITEM 3"),
            ("item 4", r"\bitem\s4\b"),
        ],
    );
    let (matches, _, summary, _) = expect_run(&dir, &mock, &["--match", "regex"]);
    assert_eq!(matches, ["true", "false", "false", "true"]);
    assert_rate(&summary, "regex", 4, 2);
    let (matches, _, _, _) = expect_run(&dir, &mock, &["--match", "regex", "--ignore-case"]);
    assert_eq!(matches, ["true", "false", "true", "true"]);
}

#[test]
fn an_invalid_pattern_is_found_before_anything_is_sent() {
    let dir = TestDir::new();
    let mock = MockProcess::start(&["--latency-ms", "2"]);
    input(&dir, &[("a", "fine"), ("b", "(unclosed"), ("c", "[z-a]")]);
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--base-url",
            &mock.url,
            "--expect",
            "want",
            "--match",
            "regex",
        ],
    );
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("in.csv: line 3: --expect column \"want\" is not a valid regex: \"(unclosed\": unclosed group"), "{err}");
    assert!(err.contains("in.csv: line 4:"), "{err}");
    assert!(err.contains("Nothing was sent"), "{err}");
    assert_eq!(util::stat(&mock.stats(), "requests"), 0);
    assert!(dir.result_files().is_empty(), "{:?}", dir.files());
}

#[test]
fn a_missing_column_lists_the_columns() {
    let dir = TestDir::new();
    input(&dir, &[("a", "x")]);
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--mock",
            "--expect",
            "wanted",
        ],
    );
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("--expect \"wanted\": in.csv has no such column; its columns are: \"id\", \"text\", \"want\""),
        "{}",
        show(&out)
    );
    assert!(dir.result_files().is_empty());
    // Options without --expect are a usage error too.
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--mock",
            "--ignore-case",
        ],
    );
    assert_code(&out, 2);
    assert!(stderr(&out).contains("--expect"), "{}", show(&out));
}

#[test]
fn json_with_a_schema_reports_the_fields_that_differ() {
    let dir = TestDir::new();
    let schema = json!({"type": "object", "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5}
    }, "required": ["sentiment", "stars"], "additionalProperties": false});
    dir.create("schema.json", &schema.to_string());
    let texts = [
        "first review",
        "second review",
        "third review",
        "fourth review",
    ];
    let answer = |t: &str| batch::engine::mock::schema::generate(&schema, t);
    let other = |s: &Value| {
        ["positive", "negative", "neutral"]
            .into_iter()
            .find(|x| s != x)
            .unwrap()
    };
    let a: Vec<Value> = texts.iter().map(|t| answer(t)).collect();
    let wants = [
        // The whole answer, keys in another order and stars as 4.0: equal values.
        json!({"stars": a[0]["stars"].as_f64().unwrap(), "sentiment": a[0]["sentiment"]}),
        // Only the field that was labelled is judged.
        json!({"sentiment": a[1]["sentiment"]}),
        // Both fields wrong.
        json!({"sentiment": other(&a[2]["sentiment"]), "stars": 6}),
        json!({"sentiment": other(&a[3]["sentiment"])}),
    ];
    let rows: Vec<(&str, String)> = texts
        .iter()
        .zip(&wants)
        .map(|(t, w)| (*t, w.to_string()))
        .collect();
    let rows: Vec<(&str, &str)> = rows.iter().map(|(t, w)| (*t, w.as_str())).collect();
    input(&dir, &rows);
    let mock = MockProcess::start(&["--latency-ms", "2"]);
    let (matches, details, summary, err) =
        expect_run(&dir, &mock, &["--schema", "schema.json", "--match", "json"]);
    assert_eq!(matches, ["true", "true", "false", "false"]);
    assert_eq!(details[0], "");
    assert_eq!(details[1], "");
    assert_eq!(
        details[2],
        format!(
            "sentiment: expected \"{}\", got {}; stars: expected 6, got {}",
            other(&a[2]["sentiment"]),
            a[2]["sentiment"],
            a[2]["stars"]
        )
    );
    assert_eq!(
        details[3],
        format!(
            "sentiment: expected \"{}\", got {}",
            other(&a[3]["sentiment"]),
            a[3]["sentiment"]
        )
    );
    assert_rate(&summary, "json", 4, 2);
    assert!(err.contains("pass rate 50.0%"), "{err}");
    // The out.* columns are there too.
    let rows = dir.results("in.results.csv");
    assert_eq!(
        field(&rows[2], "out.sentiment"),
        a[2]["sentiment"].as_str().unwrap()
    );
}

#[test]
fn json_without_a_schema_and_expected_cells_that_are_not_json() {
    let dir = TestDir::new();
    let mock = MockProcess::start(&["--latency-ms", "2"]);
    // The plain mock answer is not JSON: compared, not matched, with the reason.
    input(&dir, &[("a", "{\"x\": 1}")]);
    let (matches, details, summary, _) = expect_run(&dir, &mock, &["--match", "json"]);
    assert_eq!(matches, ["false"]);
    assert!(details[0].starts_with("answer is not JSON"), "{details:?}");
    assert_rate(&summary, "json", 1, 0);

    input(&dir, &[("a", "{\"x\": 1}"), ("b", "{not json")]);
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--base-url",
            &mock.url,
            "--expect",
            "want",
            "--match",
            "json",
        ],
    );
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("in.csv: line 3: --expect column \"want\" is not JSON"),
        "{}",
        show(&out)
    );
}

#[test]
fn failed_rows_are_not_compared() {
    let dir = TestDir::new();
    let schema = json!({"type": "object", "properties": {"a": {"type": "string"}},
        "required": ["a"], "additionalProperties": false});
    dir.create("schema.json", &schema.to_string());
    input(&dir, &[("x", "{\"a\": \"x\"}"), ("y", "{\"a\": \"y\"}")]);
    let mock = MockProcess::start(&["--latency-ms", "2", "--invalid-json-rate", "1"]);
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--base-url",
            &mock.url,
            "--schema",
            "schema.json",
            "--schema-retries",
            "0",
            "--expect",
            "want",
            "--match",
            "json",
            "--summary-json",
            "summary.json",
        ],
    );
    assert_code(&out, 1);
    let rows = dir.results("in.results.csv");
    for row in &rows {
        assert_eq!(field(row, "status"), "failed");
        assert_eq!(field(row, "match"), "");
        assert_eq!(field(row, "match_detail"), "");
    }
    let summary: Value = serde_json::from_str(&dir.read("summary.json")).unwrap();
    assert_eq!(summary["expect"]["compared"], 0);
    assert!(summary["expect"]["rate"].is_null(), "{summary}");
}

//! `--schema` end to end: the real binary against the mock, which answers schema requests with
//! JSON generated from the schema (the same generator the tests call to know what each row must
//! get) and can spoil a fraction of them (`--invalid-json-rate`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{
    self, MockProcess, Row, TestDir, assert_code, attempts, field, run, show, stat, stderr, stdout,
};

/// A schema with the kinds of values the columns must render: an enum string, a bounded
/// integer, a free string, an array and a nested object.
fn review_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
            "stars": {"type": "integer", "minimum": 1, "maximum": 5},
            "summary": {"type": "string"},
            "topics": {"type": "array", "items": {"type": "string", "maxLength": 12},
                "minItems": 1, "maxItems": 3},
            "buyer": {"type": "object", "properties": {
                "returning": {"type": "boolean"}
            }, "required": ["returning"], "additionalProperties": false}
        },
        "required": ["sentiment", "stars", "summary", "topics", "buyer"],
        "additionalProperties": false
    })
}

const PROPERTIES: [&str; 5] = ["sentiment", "stars", "summary", "topics", "buyer"];

fn texts(n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("review {i:03}: the kettle number {i} boils fast but leaks"))
        .collect()
}

fn setup(dir: &TestDir, n: usize) -> Vec<String> {
    let texts = texts(n);
    let mut csv = String::from("id,text\n");
    for (i, t) in texts.iter().enumerate() {
        csv.push_str(&format!("r{:03},{t}\n", i + 1));
    }
    dir.create("in.csv", &csv);
    dir.create(
        "schema.json",
        &serde_json::to_string_pretty(&review_schema()).unwrap(),
    );
    texts
}

fn prompt(text: &str) -> String {
    format!("Extract: {text}")
}

fn args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "run",
        "in.csv",
        "--prompt",
        "Extract: {{ text }}",
        "--schema",
        "schema.json",
        "--base-url",
        url,
        "-j",
        "8",
        "-q",
    ];
    a.extend_from_slice(extra);
    a
}

/// What the out.<name> cell of `value` must be: strings as they are, the rest compact JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Checks that a row is ok and its output and out.* columns are the mock's answer to its prompt.
#[track_caller]
fn assert_generated(row: &Row, text: &str) {
    assert_eq!(field(row, "status"), "ok", "{row:?}");
    let expected = batch::engine::mock::schema::generate(&review_schema(), &prompt(text));
    let output: Value = serde_json::from_str(field(row, "output")).expect("output is JSON");
    assert_eq!(output, expected, "{row:?}");
    for p in PROPERTIES {
        assert_eq!(
            field(row, &format!("out.{p}")),
            cell(&expected[p]),
            "{p}: {row:?}"
        );
    }
    // Independently of the generator: the answer quotes this row's own text.
    assert!(
        field(row, "out.summary").contains(&text[text.len() - 20..]),
        "{row:?}"
    );
}

#[test]
fn valid_answers_become_out_columns_in_schema_order() {
    let dir = TestDir::new();
    let texts = setup(&dir, 30);
    let mock = MockProcess::start(&["--latency-ms", "5", "--jitter-ms", "20"]);
    let out = run(&dir, args(&mock.url, &["--summary-json", "summary.json"]));
    assert_code(&out, 0);

    let header = dir.read("in.results.csv");
    let header = header.lines().next().unwrap();
    assert!(
        header.ends_with(",cached,out.sentiment,out.stars,out.summary,out.topics,out.buyer"),
        "{header}"
    );
    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), texts.len());
    for (row, text) in rows.iter().zip(&texts) {
        assert_generated(row, text);
        assert_eq!(attempts(row), 1);
        let stars: u8 = field(row, "out.stars").parse().unwrap();
        assert!((1..=5).contains(&stars), "{row:?}");
        assert!(
            field(row, "out.buyer").starts_with("{\"returning\":"),
            "{row:?}"
        );
    }
    // Different rows got different enum members.
    let kinds: std::collections::HashSet<&str> =
        rows.iter().map(|r| field(r, "out.sentiment")).collect();
    assert!(kinds.len() > 1, "{kinds:?}");
    let stats = mock.stats();
    assert_eq!(stat(&stats, "requests"), 30, "{stats}");
    assert_eq!(stat(&stats, "invalid_answers"), 0, "{stats}");
}

#[test]
fn invalid_answers_are_retried_as_billed_attempts() {
    let dir = TestDir::new();
    let texts = setup(&dir, 40);
    let mock = MockProcess::start(&[
        "--latency-ms",
        "2",
        "--invalid-json-rate",
        "0.4",
        "--seed",
        "11",
    ]);
    // Enough resends that every row ends valid (0.4^21 per row).
    let out = run(
        &dir,
        args(
            &mock.url,
            &[
                "--schema-retries",
                "20",
                "--log",
                "audit.jsonl",
                "--summary-json",
                "s.json",
            ],
        ),
    );
    assert_code(&out, 0);
    let rows = dir.results("in.results.csv");
    for (row, text) in rows.iter().zip(&texts) {
        assert_generated(row, text);
    }
    let stats = mock.stats();
    let invalid = stat(&stats, "invalid_answers");
    assert!(invalid > 0, "no answer was spoilt: {stats}");
    // Every spoilt answer cost one more request, and nothing else did.
    assert_eq!(stat(&stats, "requests"), 40 + invalid, "{stats}");
    let retries: u64 = rows.iter().map(|r| attempts(r) - 1).sum();
    assert_eq!(retries, invalid);

    // The audit log has every attempt; the rejected ones say why.
    let log = dir.read("audit.jsonl");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, 40 + invalid);
    let rejected: Vec<&Value> = lines.iter().filter(|l| !l["error"].is_null()).collect();
    assert_eq!(rejected.len() as u64, invalid);
    for l in &rejected {
        let e = l["error"].as_str().unwrap();
        assert!(
            e.starts_with("invalid answer: not JSON")
                || e.starts_with("invalid answer: does not match the schema: at /"),
            "{e}"
        );
        assert_eq!(l["status"], 200);
    }

    // A row's tokens are those of all its attempts: rejected answers were paid for.
    for row in &rows {
        let id = field(row, "id");
        let (mut prompt_tokens, mut completion_tokens) = (0, 0);
        for l in lines.iter().filter(|l| l["row_id"] == id) {
            prompt_tokens += l["response"]["usage"]["prompt_tokens"].as_u64().unwrap();
            completion_tokens += l["response"]["usage"]["completion_tokens"]
                .as_u64()
                .unwrap();
        }
        assert_eq!(
            field(row, "prompt_tokens"),
            prompt_tokens.to_string(),
            "{row:?}"
        );
        assert_eq!(
            field(row, "completion_tokens"),
            completion_tokens.to_string(),
            "{row:?}"
        );
    }
    let summary: Value = serde_json::from_str(&dir.read("s.json")).unwrap();
    assert_eq!(summary["retries"], invalid);
    assert_eq!(summary["prompt_tokens"], stat(&stats, "prompt_tokens"));
    assert_eq!(
        summary["completion_tokens"],
        stat(&stats, "completion_tokens")
    );
}

#[test]
fn rows_fail_with_the_validation_error_when_resends_run_out() {
    let dir = TestDir::new();
    setup(&dir, 12);
    let mock = MockProcess::start(&["--latency-ms", "2", "--invalid-json-rate", "1"]);
    let out = run(
        &dir,
        args(
            &mock.url,
            &["--schema-retries", "2", "--summary-json", "s.json"],
        ),
    );
    assert_code(&out, 1);
    let rows = dir.results("in.results.csv");
    let mut cost = 0.0;
    for row in &rows {
        assert_eq!(field(row, "status"), "failed", "{row:?}");
        assert_eq!(attempts(row), 3, "{row:?}");
        let e = field(row, "error");
        assert!(e.ends_with("(after 3 attempts)"), "{e}");
        assert!(
            e.starts_with("invalid answer: not JSON: ")
                || e.starts_with("invalid answer: does not match the schema: at /"),
            "{e}"
        );
        // The last answer is kept to see what was wrong; no out.* column is filled.
        assert!(!field(row, "output").is_empty(), "{row:?}");
        for p in PROPERTIES {
            assert_eq!(field(row, &format!("out.{p}")), "", "{row:?}");
        }
        // Three billed answers.
        let c: f64 = field(row, "cost_usd").parse().unwrap();
        assert!(c > 0.0, "{row:?}");
        cost += c;
    }
    // Both ways of breaking an answer occurred.
    assert!(rows.iter().any(|r| field(r, "error").contains("not JSON")));
    assert!(rows.iter().any(|r| field(r, "error").contains("schema")));
    let stats = mock.stats();
    assert_eq!(stat(&stats, "requests"), 36, "{stats}");
    assert_eq!(stat(&stats, "invalid_answers"), 36, "{stats}");
    let summary: Value = serde_json::from_str(&dir.read("s.json")).unwrap();
    assert_eq!(summary["failed"], 12);
    let total = summary["cost_usd"].as_f64().unwrap();
    assert!((total - cost).abs() < 1e-9, "{total} vs {cost}");
}

#[test]
fn resume_fills_out_columns_for_every_row() {
    let dir = TestDir::new();
    let texts = setup(&dir, 20);
    let flaky = MockProcess::start(&[
        "--latency-ms",
        "2",
        "--invalid-json-rate",
        "0.5",
        "--seed",
        "3",
    ]);
    let port = flaky.port();
    let out = run(&dir, args(&flaky.url, &["--schema-retries", "0"]));
    assert_code(&out, 1);
    let first = dir.results("in.results.csv");
    let failed = first
        .iter()
        .filter(|r| field(r, "status") == "failed")
        .count();
    assert!(failed > 0 && failed < 20, "{failed} failed");
    drop(flaky);

    let healthy = MockProcess::start_on(port, &["--latency-ms", "2"]);
    let out = run(&dir, args(&healthy.url, &["--resume", "--retry-failed"]));
    assert_code(&out, 0);
    assert_eq!(stat(&healthy.stats(), "requests"), failed as u64);
    let rows = dir.results("in.results.csv");
    for (row, text) in rows.iter().zip(&texts) {
        assert_generated(row, text);
    }
}

#[test]
fn only_valid_answers_are_cached() {
    let dir = TestDir::new();
    let texts = setup(&dir, 6);
    let embedded = |mock: &str| {
        let mut a = args("unused", &[]);
        let at = a.iter().position(|x| *x == "--base-url").unwrap();
        a.drain(at..at + 2);
        a.push(mock);
        a.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let out = run(&dir, embedded("--mock=latency-ms=0,invalid-json-rate=1"));
    assert_code(&out, 1);
    // Nothing was cached from the failed run: the next one sends every row.
    let out = run(&dir, embedded("--mock=latency-ms=0"));
    assert_code(&out, 0);
    let rows = dir.results("in.results.csv");
    assert!(
        rows.iter().all(|r| field(r, "cached") == "false"),
        "{rows:?}"
    );
    // And now the valid answers are, with their columns.
    let out = run(&dir, embedded("--mock=latency-ms=0"));
    assert_code(&out, 0);
    let rows = dir.results("in.results.csv");
    for (row, text) in rows.iter().zip(&texts) {
        assert_eq!(field(row, "cached"), "true", "{row:?}");
        assert_generated(row, text);
    }
}

#[test]
fn schemas_strict_mode_would_refuse_are_stopped_before_anything_is_sent() {
    let dir = TestDir::new();
    setup(&dir, 3);
    let loose = json!({"type": "object", "properties": {
        "sentiment": {"type": "string"}, "note": {"type": "string"}}, "required": ["sentiment"]});
    dir.create("schema.json", &loose.to_string());
    let mock = MockProcess::start(&["--latency-ms", "2"]);
    let out = run(&dir, args(&mock.url, &[]));
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("schema.json"), "{err}");
    assert!(err.contains("add \"additionalProperties\": false"), "{err}");
    assert!(err.contains("add \"note\" to \"required\""), "{err}");
    assert!(err.contains("--no-strict"), "{err}");
    assert_eq!(stat(&mock.stats(), "requests"), 0);
    assert!(dir.result_files().is_empty(), "{:?}", dir.files());

    // With --no-strict it is sent with strict: false, which the mock (like OpenAI) accepts, and
    // the answers are still validated.
    let out = run(&dir, args(&mock.url, &["--no-strict"]));
    assert_code(&out, 0);
    let rows = dir.results("in.results.csv");
    for row in &rows {
        assert!(!field(row, "out.sentiment").is_empty(), "{row:?}");
        assert!(!field(row, "out.note").is_empty(), "{row:?}");
    }
}

#[test]
fn unusable_schema_files_are_input_errors_naming_the_file() {
    let dir = TestDir::new();
    setup(&dir, 2);
    let cases = [
        (
            "{\n  \"type\": \"object\",\n  \"properties\": {\n    \"a\": ,\n  }\n}",
            "schema.json: line 4, column",
        ),
        (
            "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": 5}}}",
            "not a valid JSON Schema",
        ),
        (
            "{\"type\": \"array\", \"items\": {}}",
            "must describe an object with \"properties\"",
        ),
    ];
    for (text, message) in cases {
        dir.create("schema.json", text);
        let out = run(&dir, args("http://127.0.0.1:9/v1", &[]));
        assert_code(&out, 2);
        assert!(stderr(&out).contains(message), "{message}\n{}", show(&out));
        assert!(dir.result_files().is_empty(), "{:?}", dir.files());
    }
    std::fs::remove_file(dir.join("schema.json")).unwrap();
    let out = run(&dir, args("http://127.0.0.1:9/v1", &[]));
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("cannot read schema.json"),
        "{}",
        show(&out)
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn schema_settings_come_from_batch_toml_too() {
    let dir = TestDir::new();
    let texts = setup(&dir, 4);
    dir.create(
        "batch.toml",
        "schema = \"schema.json\"\nschema-retries = 5\n",
    );
    let mock = MockProcess::start(&["--latency-ms", "2", "--invalid-json-rate", "0.3"]);
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "Extract: {{ text }}",
            "--base-url",
            &mock.url,
            "-q",
        ],
    );
    assert_code(&out, 0);
    for (row, text) in dir.results("in.results.csv").iter().zip(&texts) {
        assert_generated(row, text);
    }
}

/// POSTs `body` to the mock's chat completions over plain HTTP/1.1; returns status and body.
fn post(mock: &MockProcess, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let mut stream = TcpStream::connect(&mock.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        mock.addr,
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(rest).unwrap_or(Value::Null))
}

#[test]
fn the_mock_checks_response_format_like_openai() {
    let mock = MockProcess::start(&["--latency-ms", "0"]);
    let request = |format: Value| {
        json!({"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hi"}],
            "response_format": format})
    };
    let good = json!({"type": "json_schema", "json_schema":
        {"name": "review", "schema": review_schema(), "strict": true}});
    let (status, body) = post(&mock, &request(good));
    assert_eq!(status, 200, "{body}");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    let answer: Value = serde_json::from_str(content).unwrap();
    assert!(jsonschema::is_valid(&review_schema(), &answer), "{answer}");

    let mut loose = review_schema();
    loose["additionalProperties"] = json!(true);
    let bad = [
        (
            json!({"type": "json_schema"}),
            "'response_format.json_schema'",
        ),
        (json!({"type": "xml"}), "Invalid value: 'xml'"),
        (
            json!({"type": "json_schema", "json_schema": {"schema": review_schema()}}),
            "'response_format.json_schema.name'",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "my review", "schema": review_schema()}}),
            "does not match pattern",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "r", "schema": "{}"}}),
            "must be an object",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "r", "schema": loose.clone(), "strict": true}}),
            "additionalProperties",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "r", "schema": review_schema(), "strict": "yes"}}),
            "expected a boolean",
        ),
    ];
    for (format, message) in bad {
        let (status, body) = post(&mock, &request(format.clone()));
        assert_eq!(status, 400, "{format}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        let m = body["error"]["message"].as_str().unwrap();
        assert!(m.contains(message), "{format}: {m}");
    }
    // Not strict, a loose schema is accepted.
    let ok = json!({"type": "json_schema", "json_schema": {"name": "r", "schema": loose, "strict": false}});
    assert_eq!(post(&mock, &request(ok)).0, 200);
    let stats = mock.stats();
    assert_eq!(stats["responses"]["400"], 7, "{stats}");
}

/// `--schema` on the other wire formats: the Responses API's `text.format` and Anthropic's
/// forced tool, each checked by the mock as the real API checks it.
#[test]
fn responses_and_anthropic_send_the_schema_their_own_way() {
    for (flags, key) in [
        (
            &["--api", "responses", "--model", "gpt-4.1-mini"][..],
            "OPENAI_API_KEY",
        ),
        (&["--model", "claude-haiku-4-5"][..], "ANTHROPIC_API_KEY"),
    ] {
        let dir = TestDir::new();
        let texts = setup(&dir, 10);
        let mock = MockProcess::start(&["--latency-ms", "2"]);
        let out = util::cmd(&dir, args(&mock.url, flags))
            .env(key, "test-key")
            .output()
            .expect("run batch");
        assert_code(&out, 0);
        let rows = dir.results("in.results.csv");
        for (row, text) in rows.iter().zip(&texts) {
            assert_generated(row, text);
            assert_eq!(attempts(row), 1, "{flags:?}: {row:?}");
        }
        if key == "ANTHROPIC_API_KEY" {
            assert!(
                rows.iter().all(|r| field(r, "finish_reason") == "tool_use"),
                "{rows:?}"
            );
        }

        // Spoilt answers fail validation there too.
        let bad = MockProcess::start(&["--latency-ms", "2", "--invalid-json-rate", "1"]);
        let mut a = args(&bad.url, flags);
        a.extend(["--schema-retries", "1", "--no-cache"]);
        let out = util::cmd(&dir, a)
            .env(key, "test-key")
            .output()
            .expect("run batch");
        assert_code(&out, 1);
        for row in dir.results("in.results.csv") {
            assert_eq!(field(&row, "status"), "failed", "{flags:?}");
            assert!(
                field(&row, "error").starts_with("invalid answer: "),
                "{row:?}"
            );
            assert_eq!(attempts(&row), 2);
        }
        assert_eq!(stat(&bad.stats(), "requests"), 20, "{flags:?}");
    }
}

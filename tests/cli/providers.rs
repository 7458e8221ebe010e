//! The three wire formats end to end: the real binary against `batch mock`, which checks each
//! request's shape as the real API does (so a row that comes back `ok` proves the request was
//! well formed), answers with its usage (cached and reasoning tokens included) and injects the
//! errors each API really sends.

use batch::base::usage::Usage;
use batch::engine::pricing::PriceTable;

use crate::util::{
    self, MockProcess, Row, TestDir, assert_code, attempts, field, mock_answer, responses, show,
    stat, stderr,
};

/// A CSV of `n` rows `id,text`.
fn csv(n: usize) -> String {
    let mut s = String::from("id,text\n");
    for i in 1..=n {
        s.push_str(&format!("r{i},review number {i} says it is fine\n"));
    }
    s
}

/// A system prompt long enough for the providers' prompt caches (1024+ tokens).
fn long_system() -> String {
    "You label product reviews. Answer with one word: positive, negative or neutral. ".repeat(80)
}

fn num(row: &Row, col: &str) -> u64 {
    field(row, col)
        .parse()
        .unwrap_or_else(|e| panic!("{col} is not a number ({e}): {row:?}"))
}

fn cost(row: &Row) -> f64 {
    field(row, "cost_usd")
        .parse()
        .unwrap_or_else(|e| panic!("cost_usd is not a number ({e}): {row:?}"))
}

/// What one run of a wire format should show.
struct Case {
    name: &'static str,
    model: &'static str,
    flags: &'static [&'static str],
    key_env: &'static str,
    finish: &'static str,
}

const CASES: [Case; 3] = [
    Case {
        name: "chat",
        model: "gpt-4.1-mini",
        flags: &[],
        key_env: "OPENAI_API_KEY",
        finish: "stop",
    },
    Case {
        name: "responses",
        model: "gpt-5-mini",
        flags: &["--api", "responses"],
        key_env: "OPENAI_API_KEY",
        finish: "completed",
    },
    Case {
        // The provider is inferred from the model name.
        name: "anthropic",
        model: "claude-haiku-4-5",
        flags: &[],
        key_env: "ANTHROPIC_API_KEY",
        finish: "end_turn",
    },
];

#[test]
fn every_wire_format_answers_every_row_with_usage_cache_reasoning_and_cost() {
    let prices = PriceTable::embedded();
    for case in &CASES {
        let dir = TestDir::new();
        dir.create("in.csv", &csv(5));
        let system = long_system();
        dir.create("system.txt", &system);
        let mock = MockProcess::start(&["--latency-ms", "0"]);
        let mut args = vec![
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--system-file",
            "system.txt",
            "--model",
            case.model,
            "--base-url",
            &mock.url,
            // One at a time, so the first row writes the prompt cache and the others read it.
            "-j",
            "1",
            "--summary-json",
            "summary.json",
        ];
        args.extend_from_slice(case.flags);
        let out = util::cmd(&dir, &args)
            .env(case.key_env, "test-key")
            .output()
            .expect("run batch");
        assert_code(&out, 0);
        let rows = dir.results("in.results.csv");
        assert_eq!(rows.len(), 5, "{}", case.name);
        let stats = mock.stats();
        assert_eq!(stat(&stats, "requests"), 5, "{}: {stats}", case.name);

        let system_tokens = u64::from(batch::engine::tokens::count(case.model, &system));
        let price = prices.lookup(case.model).expect("a price for the model");
        let summary: serde_json::Value = serde_json::from_str(&dir.read("summary.json")).unwrap();
        let mut totals = [0u64; 4];
        let mut total_cost = 0.0;
        for (i, row) in rows.iter().enumerate() {
            let name = case.name;
            assert_eq!(field(row, "status"), "ok", "{name}: {row:?}");
            let prompt = format!("review number {} says it is fine", i + 1);
            assert_eq!(field(row, "output"), mock_answer(&prompt), "{name}");
            assert_eq!(field(row, "finish_reason"), case.finish, "{name}");
            assert_eq!(field(row, "model"), case.model, "{name}");
            let usage = Usage {
                prompt_tokens: num(row, "prompt_tokens"),
                completion_tokens: num(row, "completion_tokens"),
                cached_tokens: num(row, "cached_tokens"),
                // Only the first Anthropic row writes the cache; the summary has the total.
                cache_write_tokens: if i == 0 {
                    summary["cache_write_tokens"].as_u64().unwrap()
                } else {
                    0
                },
                reasoning_tokens: num(row, "reasoning_tokens"),
            };
            assert!(usage.prompt_tokens > system_tokens, "{name}: {row:?}");
            // The first row fills the cache; the rest read the system prompt from it.
            let expected_cached = match (i, case.name) {
                (0, _) => 0,
                (_, "anthropic") => system_tokens,
                // OpenAI reports cache hits in 128-token steps.
                _ => system_tokens / 128 * 128,
            };
            assert_eq!(usage.cached_tokens, expected_cached, "{name} row {i}");
            if case.model.starts_with("gpt-5") {
                assert!(usage.reasoning_tokens > 0, "{name}: {row:?}");
                assert!(usage.reasoning_tokens < usage.completion_tokens);
            } else {
                assert_eq!(usage.reasoning_tokens, 0, "{name}");
            }
            let expected = price.cost(&usage);
            assert!(
                (cost(row) - expected).abs() < 1e-9,
                "{name} row {i}: cost {} but the price table gives {expected}",
                cost(row)
            );
            for (t, v) in totals.iter_mut().zip([
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cached_tokens,
                usage.reasoning_tokens,
            ]) {
                *t += v;
            }
            total_cost += expected;
        }
        // Cached rows are cheaper than the first: the discount is really applied.
        assert!(cost(&rows[1]) < cost(&rows[0]), "{}", case.name);
        assert_eq!(
            summary["cache_write_tokens"].as_u64().unwrap(),
            if case.name == "anthropic" {
                system_tokens
            } else {
                0
            },
            "{}",
            case.name
        );
        // The server's count, our columns and the summary agree.
        let [prompt, completion, cached, reasoning] = totals;
        assert_eq!(prompt, stat(&stats, "prompt_tokens"), "{}", case.name);
        assert_eq!(
            completion,
            stat(&stats, "completion_tokens"),
            "{}",
            case.name
        );
        assert_eq!(cached, stat(&stats, "cached_tokens"), "{}", case.name);
        assert_eq!(reasoning, stat(&stats, "reasoning_tokens"), "{}", case.name);
        assert_eq!(summary["prompt_tokens"].as_u64(), Some(prompt));
        assert_eq!(summary["cached_tokens"].as_u64(), Some(cached));
        assert_eq!(summary["reasoning_tokens"].as_u64(), Some(reasoning));
        let summary_cost = summary["cost_usd"].as_f64().unwrap();
        assert!((summary_cost - total_cost).abs() < 1e-9, "{}", case.name);
        let text = stderr(&out);
        assert!(text.contains(&format!("({cached} cached")), "{text}");
    }
}

#[test]
fn server_errors_including_anthropic_529_are_retried_until_every_row_is_ok() {
    for case in &CASES {
        let dir = TestDir::new();
        dir.create("in.csv", &csv(12));
        let mock = MockProcess::start(&["--latency-ms", "0", "--error-rate", "0.3", "--seed", "5"]);
        let mut args = vec![
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--model",
            case.model,
            "--base-url",
            &mock.url,
            "--max-retries",
            "30",
        ];
        args.extend_from_slice(case.flags);
        let out = util::cmd(&dir, &args)
            .env(case.key_env, "test-key")
            .output()
            .expect("run batch");
        assert_code(&out, 0);
        let rows = dir.results("in.results.csv");
        assert!(
            rows.iter().all(|r| field(r, "status") == "ok"),
            "{}",
            case.name
        );
        let stats = mock.stats();
        let overloaded = if case.name == "anthropic" { 529 } else { 503 };
        assert!(responses(&stats, 500) > 0, "{}: {stats}", case.name);
        assert!(responses(&stats, overloaded) > 0, "{}: {stats}", case.name);
        let sent: u64 = rows.iter().map(attempts).sum();
        assert_eq!(sent, stat(&stats, "requests"), "{}", case.name);
        assert!(sent > 12);
    }
}

#[test]
fn anthropic_429s_are_retried_after_retry_after_until_every_row_is_ok() {
    let dir = TestDir::new();
    dir.create("in.csv", &csv(6));
    // Two requests a second; the client is told it may send far more, so it runs into 429s.
    let mock = MockProcess::start(&["--latency-ms", "0", "--rpm", "120"]);
    let out = util::cmd(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--provider",
            "anthropic",
            "--model",
            "claude-sonnet-4-5",
            "--base-url",
            &mock.url,
            "--rpm",
            "100000",
            "--tpm",
            "100000000",
            "-j",
            "6",
            "--max-retries",
            "30",
        ],
    )
    .env("ANTHROPIC_API_KEY", "test-key")
    .output()
    .expect("run batch");
    assert_code(&out, 0);
    let stats = mock.stats();
    assert!(stat(&stats, "rate_limited") > 0, "{stats}");
    assert_eq!(responses(&stats, 200), 6);
    let rows = dir.results("in.results.csv");
    assert!(rows.iter().all(|r| field(r, "status") == "ok"));
}

/// Every row rejected the same way from the start: nothing is retried, and the run stops as
/// soon as the same rejection has come back for the first rows (issue 13): every row skipped
/// with the reason, exit 2.
#[test]
fn a_rejected_request_is_not_retried() {
    // Anthropic: an anthropic-version the API does not know is a 400.
    let dir = TestDir::new();
    dir.create("in.csv", &csv(4));
    let mock = MockProcess::start(&["--latency-ms", "0"]);
    let out = util::cmd(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--model",
            "claude-haiku-4-5",
            "--base-url",
            &mock.url,
            "--header",
            "anthropic-version: 1999-01-01",
        ],
    )
    .env("ANTHROPIC_API_KEY", "test-key")
    .output()
    .expect("run batch");
    assert_code(&out, 2);
    assert!(
        util::stderr(&out).contains("rejected the first 3 requests the same way"),
        "{}",
        util::show(&out)
    );
    let rows = dir.results("in.results.csv");
    for r in &rows {
        assert_eq!(field(r, "status"), "skipped");
        assert_eq!(attempts(r), 1, "{r:?}");
        assert!(field(r, "error").contains("invalid version"), "{r:?}");
    }
    assert_eq!(responses(&mock.stats(), 400), 4);

    // Responses: max_output_tokens under the API's minimum of 16 is a 400.
    let dir = TestDir::new();
    dir.create("in.csv", &csv(3));
    let mock = MockProcess::start(&["--latency-ms", "0"]);
    let out = util::run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--api",
            "responses",
            "--max-tokens",
            "8",
            "--base-url",
            &mock.url,
        ],
    );
    assert_code(&out, 2);
    for r in &dir.results("in.results.csv") {
        assert_eq!(field(r, "status"), "skipped");
        assert_eq!(attempts(r), 1, "{r:?}");
        assert!(field(r, "error").contains("max_output_tokens"), "{r:?}");
    }
    assert_eq!(stat(&mock.stats(), "requests"), 3);
}

#[test]
fn anthropic_401_and_spent_credit_stop_the_run() {
    // No key: the mock answers 401 as Anthropic does.
    let dir = TestDir::new();
    dir.create("in.csv", &csv(30));
    let mock = MockProcess::start(&["--latency-ms", "0"]);
    let out = util::run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--provider",
            "anthropic",
            "--model",
            "claude-haiku-4-5",
            "--base-url",
            &mock.url,
            "-j",
            "2",
        ],
    );
    assert_code(&out, 1);
    let stats = mock.stats();
    // Only what was already in flight when the first 401 came back reached the server.
    assert!(stat(&stats, "requests") <= 3, "{stats}");
    assert_eq!(responses(&stats, 401), stat(&stats, "requests"));
    assert!(stderr(&out).contains("authentication"), "{}", show(&out));
    let rows = dir.results("in.results.csv");
    assert!(
        rows.iter()
            .filter(|r| field(r, "status") == "skipped")
            .count()
            >= 27
    );

    let dir = TestDir::new();
    dir.create("in.csv", &csv(30));
    let mock = MockProcess::start(&["--latency-ms", "0", "--quota-exhausted-after", "3"]);
    let out = util::cmd(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--model",
            "claude-haiku-4-5",
            "--base-url",
            &mock.url,
            "-j",
            "1",
        ],
    )
    .env("ANTHROPIC_API_KEY", "test-key")
    .output()
    .expect("run batch");
    assert_code(&out, 1);
    assert_eq!(stat(&mock.stats(), "requests"), 4);
    let rows = dir.results("in.results.csv");
    assert_eq!(
        rows.iter().filter(|r| field(r, "status") == "ok").count(),
        3
    );
    assert!(stderr(&out).contains("credit balance"), "{}", show(&out));
}

#[test]
fn provider_flags_are_checked_before_anything_is_sent() {
    let dir = TestDir::new();
    dir.create("in.csv", &csv(2));
    let base = ["run", "in.csv", "--prompt", "{{ text }}"];
    for (extra, expected) in [
        (
            &["--provider", "anthropic", "--api", "responses", "--mock"][..],
            "--api responses is for OpenAI",
        ),
        (
            &["--model", "claude-haiku-4-5", "--api", "chat", "--mock"],
            "inferred from the model",
        ),
        (&["--model", "claude-haiku-4-5"], "ANTHROPIC_API_KEY"),
        (
            &[
                "--model",
                "claude-haiku-4-5",
                "--temperature",
                "1.5",
                "--mock",
            ],
            "--temperature 1.5 is out of range for Anthropic",
        ),
        (
            &["--header", "no colon here", "--mock"],
            "--header number 1",
        ),
        (
            &["--header", "X-Ok: 1", "--header", "Bad Name: v", "--mock"],
            "--header number 2",
        ),
        (&["--provider", "google", "--mock"], "--provider"),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let out = util::run(&dir, &args);
        assert_code(&out, 2);
        let err = stderr(&out);
        assert!(err.contains(expected), "{extra:?}: {err}");
        if expected == "ANTHROPIC_API_KEY" {
            assert!(err.contains("--mock"), "{err}");
        }
        assert_eq!(dir.result_files(), Vec::<String>::new());
    }
}

#[test]
fn embedded_mock_serves_every_provider_and_settings_file_sets_them() {
    let dir = TestDir::new();
    dir.create("in.csv", &csv(3));
    dir.create(
        "batch.toml",
        "provider = \"openai\"\napi = \"responses\"\nmodel = \"gpt-4.1-mini\"\nmock = \"latency-ms=0\"\nheader = [\"X-Title: batch tests\"]\n",
    );
    let out = util::run(&dir, ["run", "in.csv", "--prompt", "{{ text }}"]);
    assert_code(&out, 0);
    let rows = dir.results("in.results.csv");
    assert!(
        rows.iter()
            .all(|r| field(r, "finish_reason") == "completed")
    );

    // Flags win over the file.
    let out = util::run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--api",
            "chat",
            "-o",
            "chat.csv",
        ],
    );
    assert_code(&out, 0);
    let rows = dir.results("chat.csv");
    assert!(rows.iter().all(|r| field(r, "finish_reason") == "stop"));

    // The embedded mock speaks Anthropic too.
    let dir = TestDir::new();
    dir.create("in.csv", &csv(3));
    let out = util::run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--model",
            "claude-haiku-4-5",
            "--mock=latency-ms=0",
        ],
    );
    assert_code(&out, 0);
    let rows = dir.results("in.results.csv");
    assert!(rows.iter().all(|r| field(r, "finish_reason") == "end_turn"));
}

/// A one-shot HTTP server that records the request head and answers with a chat completion.
fn recording_server() -> (String, std::thread::JoinHandle<String>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = String::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let answer = r#"{"id":"c1","object":"chat.completion","model":"llama3","choices":[{"index":0,"message":{"role":"assistant","content":"fine"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
            answer.len()
        )
        .unwrap();
        head
    });
    (url, handle)
}

#[test]
fn extra_headers_are_sent_but_never_written_anywhere() {
    const SECRET: &str = "gateway-SECRET-98765";
    let dir = TestDir::new();
    dir.create("in.csv", "id,text\n1,hello\n");
    let (url, server) = recording_server();
    let out = util::run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--model",
            "llama3",
            "--base-url",
            &url,
            "--header",
            "HTTP-Referer: https://example.com",
            "--header",
            &format!("X-Gateway-Key: {SECRET}"),
            "--log",
            "audit.jsonl",
            "--summary-json",
            "summary.json",
            "-vvv",
        ],
    );
    assert_code(&out, 0);
    let head = server.join().unwrap().to_ascii_lowercase();
    assert!(head.contains("http-referer: https://example.com"), "{head}");
    assert!(head.contains(&format!("x-gateway-key: {}", SECRET.to_ascii_lowercase())));
    assert!(head.contains("content-type: application/json"), "{head}");
    for (what, text) in [
        ("stdout", util::stdout(&out)),
        ("stderr", stderr(&out)),
        ("results", dir.read("in.results.csv")),
        ("audit log", dir.read("audit.jsonl")),
        ("summary", dir.read("summary.json")),
    ] {
        assert!(
            !text.contains("SECRET-98765"),
            "{what} has the header value:\n{text}"
        );
    }
    assert_eq!(field(&dir.results("in.results.csv")[0], "output"), "fine");
}

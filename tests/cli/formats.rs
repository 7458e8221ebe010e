//! End-to-end tests of input and output formats (CSV, JSON Lines, stdin and stdout) and of
//! per-row settings (`model`, `system`, `temperature`, `max_tokens` columns), driving the real
//! binary against mock servers the tests start.

use batch::base::usage::Usage;
use batch::engine::pricing::PriceTable;

use crate::util::{self, MockProcess, TestDir, assert_code, field, mock_answer, run, show, stderr};

/// The request bodies of an audit log (`--log`), by row id.
fn audit_requests(
    dir: &TestDir,
    name: &str,
) -> std::collections::HashMap<String, serde_json::Value> {
    dir.read(name)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("audit line is JSON");
            (
                v["row_id"].as_str().unwrap().to_string(),
                v["request"].clone(),
            )
        })
        .collect()
}

fn num(row: &util::Row, col: &str) -> u64 {
    field(row, col)
        .parse()
        .unwrap_or_else(|e| panic!("{col} is not a number ({e}): {row:?}"))
}

// ---------------------------------------------------------------------------------------------
// Per-row settings
// ---------------------------------------------------------------------------------------------

#[test]
fn row_columns_override_the_flags_and_each_row_is_priced_at_its_model() {
    let dir = TestDir::new();
    dir.create(
        "in.csv",
        "id,text,model,system,temperature,max_tokens\n\
         a,first row to answer,gpt-4o,Answer in one word.,0.25,3\n\
         b,second row to answer,,,,\n\
         c,third row to answer,gpt-4.1-nano,,1.5,\n\
         d,fourth row to answer,local-llama,,,\n\
         e,fifth row to answer,local-llama,,,\n",
    );
    let mock = MockProcess::start(&[]);
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }} (model column: {{ model }})",
            "--system",
            "Flag system for {{ id }}",
            "--model",
            "gpt-4.1-mini",
            "--temperature",
            "0.7",
            "--max-tokens",
            "200",
            "--base-url",
            &mock.url,
            "--log",
            "audit.jsonl",
            "--summary-json",
            "summary.json",
        ],
    );
    assert_code(&out, 0);
    let rows = dir.results("in.results.csv");
    let by_id = |id: &str| rows.iter().find(|r| field(r, "id") == id).unwrap();

    // What the server received: the mock answers with the model it was asked for, and cuts the
    // answer at the max_tokens it was sent.
    let expect_model = [
        ("a", "gpt-4o"),
        ("b", "gpt-4.1-mini"),
        ("c", "gpt-4.1-nano"),
        ("d", "local-llama"),
    ];
    // The input's own `model` column keeps its cells; the result column (renamed so that it
    // does not shadow it) shows the model each row went to.
    for (id, model) in expect_model {
        assert_eq!(field(by_id(id), "result_model"), model, "{}", show(&out));
    }
    assert_eq!(field(by_id("b"), "model"), "");
    let a = by_id("a");
    assert_eq!(field(a, "finish_reason"), "length", "{a:?}");
    assert_eq!(num(a, "completion_tokens"), 3, "{a:?}");
    assert_eq!(field(by_id("b"), "finish_reason"), "stop");
    // The model column is still a column for templates.
    assert_eq!(
        field(by_id("b"), "output"),
        mock_answer("second row to answer (model column: )")
    );

    // The bodies as sent: the row's system message as it is, the row's temperature, the
    // flag's where the cell is empty.
    let sent = audit_requests(&dir, "audit.jsonl");
    let system = |id: &str| {
        sent[id]["messages"][0]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(system("a"), "Answer in one word.");
    assert_eq!(system("b"), "Flag system for b");
    assert_eq!(sent["a"]["temperature"].as_f64(), Some(0.25));
    assert_eq!(
        sent["b"]["temperature"]
            .as_f64()
            .map(|t| (t * 10.0).round()),
        Some(7.0)
    );
    assert_eq!(sent["c"]["temperature"].as_f64(), Some(1.5));
    let cap = |id: &str| {
        let b = &sent[id];
        b["max_completion_tokens"]
            .as_u64()
            .or(b["max_tokens"].as_u64())
    };
    assert_eq!(
        (cap("a"), cap("b"), cap("c")),
        (Some(3), Some(200), Some(200))
    );
    assert_eq!(sent["a"]["model"], "gpt-4o");

    // Each row's cost at its own model's price, from the embedded table.
    let prices = PriceTable::embedded();
    for id in ["a", "b", "c"] {
        let row = by_id(id);
        let usage = Usage {
            prompt_tokens: num(row, "prompt_tokens"),
            completion_tokens: num(row, "completion_tokens"),
            ..Default::default()
        };
        let want = prices
            .lookup(field(row, "result_model"))
            .unwrap()
            .cost(&usage);
        let got: f64 = field(row, "cost_usd").parse().unwrap();
        assert!((got - want).abs() < 1e-9, "row {id}: {got} vs {want}");
    }
    // No price for the local model: empty cost, and one warning however many rows use it.
    assert_eq!(field(by_id("d"), "cost_usd"), "");
    let err = stderr(&out);
    assert_eq!(
        err.matches("no price is known for model \"local-llama\"")
            .count(),
        1,
        "{err}"
    );
    assert!(
        !err.contains("no price is known for model \"gpt-4o\""),
        "{err}"
    );

    // The summary breaks the run down by model.
    let summary: serde_json::Value = serde_json::from_str(&dir.read("summary.json")).unwrap();
    let models = summary["models"].as_object().expect("models breakdown");
    assert_eq!(models.len(), 4, "{summary}");
    assert_eq!(models["local-llama"]["rows"], 2);
    assert!(models["local-llama"]["cost_usd"].is_null());
    let a_cost: f64 = field(a, "cost_usd").parse().unwrap();
    assert!((models["gpt-4o"]["cost_usd"].as_f64().unwrap() - a_cost).abs() < 1e-12);
    assert!(err.contains("local-llama"), "{err}");
}

#[test]
fn one_model_gets_no_breakdown() {
    let dir = TestDir::new();
    dir.create("in.csv", "id,text\n1,x\n2,y\n");
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--mock",
            "--summary-json",
            "s.json",
        ],
    );
    assert_code(&out, 0);
    let summary: serde_json::Value = serde_json::from_str(&dir.read("s.json")).unwrap();
    assert!(summary.get("models").is_none(), "{summary}");
}

#[test]
fn bad_row_settings_exit_2_naming_line_and_column_and_send_nothing() {
    let mock = MockProcess::start(&[]);
    for (content, line, col) in [
        ("id,text,temperature\n1,x,0.5\n2,y,warm\n", 3, "temperature"),
        ("id,text,max_tokens\n1,x,\n2,y,10\n3,z,0\n", 4, "max_tokens"),
        ("{\"text\": \"x\", \"max_tokens\": 1.5}\n", 1, "max_tokens"),
    ] {
        let dir = TestDir::new();
        let name = if content.starts_with('{') {
            "in.jsonl"
        } else {
            "in.csv"
        };
        dir.create(name, content);
        let out = run(
            &dir,
            [
                "run",
                name,
                "--prompt",
                "{{ text }}",
                "--base-url",
                &mock.url,
            ],
        );
        assert_code(&out, 2);
        let err = stderr(&out);
        assert!(
            err.contains(&format!("line {line}, column \"{col}\"")),
            "{content:?}\n{}",
            show(&out)
        );
        assert_eq!(dir.files(), [name], "something was written");
    }
    assert_eq!(util::stat(&mock.stats(), "requests"), 0);
}

#[test]
fn max_cost_needs_a_price_for_every_row_model() {
    let dir = TestDir::new();
    dir.create("in.csv", "text,model\nx,gpt-4o\ny,mystery-model\n");
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--mock",
            "--max-tokens",
            "5",
            "--max-cost",
            "1",
        ],
    );
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("line 3, column \"model\"") && err.contains("mystery-model"),
        "{}",
        show(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// JSON Lines
// ---------------------------------------------------------------------------------------------

/// A JSON value as the text a CSV cell holds: strings as they are, null empty, the rest as JSON.
fn as_cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Reads a JSON Lines results file: one object per line, and the keys of the first in order.
fn read_jsonl(
    dir: &TestDir,
    name: &str,
) -> (Vec<String>, Vec<serde_json::Map<String, serde_json::Value>>) {
    let text = dir.read(name);
    let rows: Vec<serde_json::Map<String, serde_json::Value>> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // Key order as written (serde_json's map sorts, so read it from the text).
    let first = text.lines().next().expect("a row");
    let mut keys = Vec::new();
    let mut de = serde_json::Deserializer::from_str(first);
    let ordered: Vec<(String, serde_json::Value)> = {
        use serde::de::{Deserializer, MapAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<(String, serde_json::Value)>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                let mut v = Vec::new();
                while let Some(e) = m.next_entry()? {
                    v.push(e);
                }
                Ok(v)
            }
        }
        (&mut de).deserialize_map(V).unwrap()
    };
    keys.extend(ordered.into_iter().map(|(k, _)| k));
    (keys, rows)
}

/// The same rows as CSV and as JSON Lines (numbers as numbers, a nested object, a missing key).
const ROWS_CSV: &str = "id,text,n,meta\n\
    a,\"first, with a comma\",1.50,\n\
    b,second,7,\"{\"\"k\"\":[1,2]}\"\n\
    c,\"third \"\"quoted\"\"\",-2,\n";
const ROWS_JSONL: &str = "{\"id\": \"a\", \"text\": \"first, with a comma\", \"n\": 1.50}\n\
    \n\
    {\"id\": \"b\", \"text\": \"second\", \"n\": 7, \"meta\": {\"k\": [1, 2]}}\n\
    {\"id\": \"c\", \"text\": \"third \\\"quoted\\\"\", \"n\": -2, \"meta\": null}\n";

#[test]
fn jsonl_in_csv_out_and_csv_in_jsonl_out_hold_the_same_content() {
    let dir = TestDir::new();
    dir.create("rows.csv", ROWS_CSV);
    dir.create("rows.jsonl", ROWS_JSONL);
    let prompt = "Text: {{ text }} n={{ n }} meta={{ meta }}";
    let common = ["--prompt", prompt, "--mock", "--no-cache"];
    let out = run(
        &dir,
        [&["run", "rows.jsonl", "-o", "from_jsonl.csv"][..], &common].concat(),
    );
    assert_code(&out, 0);
    let out = run(
        &dir,
        [&["run", "rows.csv", "-o", "from_csv.jsonl"][..], &common].concat(),
    );
    assert_code(&out, 0);

    let csv_rows = util::read_results(&dir.join("from_jsonl.csv"));
    let (keys, json_rows) = read_jsonl(&dir, "from_csv.jsonl");
    let header: Vec<String> = csv::Reader::from_path(dir.join("from_jsonl.csv"))
        .unwrap()
        .headers()
        .unwrap()
        .iter()
        .map(String::from)
        .collect();
    assert_eq!(keys, header, "same fields in the same order");
    assert_eq!(&header[..4], ["id", "text", "n", "meta"]);
    assert_eq!(csv_rows.len(), 3);
    assert_eq!(json_rows.len(), 3);
    for (c, j) in csv_rows.iter().zip(&json_rows) {
        for key in &keys {
            if key == "latency_ms" {
                continue;
            }
            assert_eq!(c[key], as_cell(&j[key]), "field {key}: {c:?} vs {j:?}");
        }
    }
    // Cells from JSON: numbers as written, nested values as compact JSON, null and missing empty.
    assert_eq!(field(&csv_rows[0], "n"), "1.50");
    assert_eq!(field(&csv_rows[1], "meta"), "{\"k\":[1,2]}");
    assert_eq!(field(&csv_rows[2], "meta"), "");
    assert_eq!(
        field(&csv_rows[1], "output"),
        mock_answer("Text: second n=7 meta={\"k\":[1,2]}")
    );
    // JSON types in JSON results: result numbers are numbers, empty is null, text stays text.
    let b = &json_rows[1];
    assert!(
        b["attempts"].is_u64() && b["prompt_tokens"].is_u64(),
        "{b:?}"
    );
    assert!(
        b["cost_usd"].is_number() && b["cached"].is_boolean(),
        "{b:?}"
    );
    assert!(b["error"].is_null() && b["output"].is_string(), "{b:?}");
    assert!(json_rows[0]["meta"].is_null());
}

#[test]
fn jsonl_input_without_o_gets_jsonl_results_keeping_its_json_types() {
    let dir = TestDir::new();
    dir.create("rows.jsonl", ROWS_JSONL);
    let out = run(
        &dir,
        ["run", "rows.jsonl", "--prompt", "{{ text }}", "--mock"],
    );
    assert_code(&out, 0);
    let (keys, rows) = read_jsonl(&dir, "rows.results.jsonl");
    assert_eq!(&keys[..5], ["id", "text", "n", "meta", "output"]);
    assert_eq!(rows[0]["n"], serde_json::json!(1.5));
    assert_eq!(rows[1]["meta"], serde_json::json!({"k": [1, 2]}));
    assert_eq!(rows[1]["status"], "ok");
    assert_eq!(rows[2]["text"], "third \"quoted\"");
}

#[test]
fn bad_jsonl_exits_2_naming_file_line_and_column_and_writes_nothing() {
    let mock = MockProcess::start(&[]);
    for (content, want) in [
        (
            "{\"text\": \"ok\"}\n{\"text\": \"broken\",}\n",
            "in.jsonl: line 2, column 19",
        ),
        (
            "{\"text\": \"ok\"}\n\n[\"not\", \"an object\"]\n",
            "in.jsonl: line 3, column 1",
        ),
        (
            "{\"text\": \"a\", \"text\": \"b\"}\n",
            "in.jsonl: line 1, column",
        ),
        (
            "{\"text\": \"a\"}\n{\"text\": \"unterminated\n",
            "in.jsonl: line 2, column",
        ),
    ] {
        let dir = TestDir::new();
        dir.create("in.jsonl", content);
        let out = run(
            &dir,
            [
                "run",
                "in.jsonl",
                "--prompt",
                "{{ text }}",
                "--base-url",
                &mock.url,
            ],
        );
        assert_code(&out, 2);
        let err = stderr(&out);
        assert!(
            err.contains(want),
            "{content:?}: want {want:?}\n{}",
            show(&out)
        );
        assert_eq!(dir.files(), ["in.jsonl"], "something was written");
    }
    assert_eq!(util::stat(&mock.stats(), "requests"), 0);
}

#[test]
fn resume_with_jsonl_input_sends_only_the_unfinished_rows() {
    let dir = TestDir::new();
    let mut jsonl = String::new();
    for i in 1..=40 {
        jsonl.push_str(&format!(
            "{{\"id\": \"r{i}\", \"text\": \"item {i}\", \"n\": {i}}}\n"
        ));
    }
    dir.create("in.jsonl", &jsonl);
    let args = |url: &str| -> Vec<String> {
        [
            "run",
            "in.jsonl",
            "--prompt",
            "{{ text }} #{{ n }}",
            "--base-url",
            url,
            "-j",
            "4",
        ]
        .map(String::from)
        .to_vec()
    };
    let port = {
        let mock = MockProcess::start(&["--quota-exhausted-after", "10"]);
        let out = run(&dir, args(&mock.url));
        assert_code(&out, 1);
        mock.port()
    };
    let (_, first) = read_jsonl(&dir, "in.results.jsonl");
    let done = first.iter().filter(|r| r["status"] == "ok").count();
    assert_eq!(done, 10, "the quota stopped the run after 10 answers");

    let mock = MockProcess::start_on(port, &[]);
    let mut again = args(&mock.url);
    again.extend(["--resume", "--retry-failed"].map(String::from));
    let out = run(&dir, &again);
    assert_code(&out, 0);
    assert_eq!(
        util::stat(&mock.stats(), "requests"),
        (40 - done) as u64,
        "{}",
        show(&out)
    );
    let (_, rows) = read_jsonl(&dir, "in.results.jsonl");
    assert_eq!(rows.len(), 40);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["status"], "ok", "{r:?}");
        assert_eq!(r["id"], format!("r{}", i + 1));
        assert_eq!(r["n"], serde_json::json!(i + 1));
        assert_eq!(
            r["output"].as_str().unwrap(),
            mock_answer(&format!("item {} #{}", i + 1, i + 1))
        );
    }
}

// ---------------------------------------------------------------------------------------------
// stdin and stdout
// ---------------------------------------------------------------------------------------------

/// Runs the binary with `input` on its stdin.
fn run_piped(dir: &TestDir, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = util::cmd(dir, args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn batch");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.as_bytes().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait for batch");
    writer.join().unwrap();
    out
}

/// A results CSV given as text, one map per row (latency dropped: it differs between runs).
fn parse_csv(text: &str) -> Vec<util::Row> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let headers = r.headers().expect("a header").clone();
    r.records()
        .map(|rec| {
            let rec = rec.expect("a CSV row");
            headers
                .iter()
                .zip(rec.iter())
                .filter(|(h, _)| *h != "latency_ms")
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[test]
fn stdin_to_stdout_gives_what_a_file_run_gives_and_leaves_no_files() {
    let dir = TestDir::new();
    dir.create("in.csv", ROWS_CSV);
    let args = ["--prompt", "{{ text }} / {{ n }}", "--mock", "--no-cache"];
    let out = run_piped(
        &dir,
        &[&["run", "-", "-o", "-"][..], &args].concat(),
        ROWS_CSV,
    );
    assert_code(&out, 0);
    let piped = parse_csv(&util::stdout(&out));
    // Progress and summary stay on stderr.
    assert!(stderr(&out).contains("3 ok"), "{}", show(&out));
    assert_eq!(
        dir.files(),
        ["in.csv"],
        "a pipeline run writes no files beside it"
    );

    let out = run(
        &dir,
        [&["run", "in.csv", "-o", "file.csv"][..], &args].concat(),
    );
    assert_code(&out, 0);
    let from_file = parse_csv(&dir.read("file.csv"));
    assert_eq!(piped, from_file);
    assert_eq!(piped.len(), 3);
    assert_eq!(
        field(&piped[2], "output"),
        mock_answer("third \"quoted\" / -2")
    );
}

#[test]
fn jsonl_on_stdin_gives_jsonl_on_stdout_unless_told_otherwise() {
    let dir = TestDir::new();
    let args = [
        "run",
        "-",
        "--input-format",
        "jsonl",
        "--prompt",
        "{{ text }}",
        "--mock",
    ];
    // Without -o, stdin input writes to stdout, in the input's format.
    let out = run_piped(&dir, &args, ROWS_JSONL);
    assert_code(&out, 0);
    let lines: Vec<serde_json::Value> = util::stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", show(&out));
    assert_eq!(lines[1]["meta"], serde_json::json!({"k": [1, 2]}));
    assert_eq!(lines[1]["output"], mock_answer("second"));

    let out = run_piped(
        &dir,
        &[&args[..], &["--output-format", "csv"]].concat(),
        ROWS_JSONL,
    );
    assert_code(&out, 0);
    let rows = parse_csv(&util::stdout(&out));
    assert_eq!(field(&rows[1], "meta"), "{\"k\":[1,2]}");
    assert!(dir.files().is_empty(), "{:?}", dir.files());
}

#[test]
fn stdin_with_a_results_file_keeps_no_copy_of_stdin_after_the_process() {
    let dir = TestDir::new();
    let mut csv_text = String::from("id,text\n");
    for i in 1..=30 {
        csv_text.push_str(&format!("r{i},item {i}\n"));
    }
    let port = {
        let mock = MockProcess::start(&["--quota-exhausted-after", "5"]);
        let args = [
            "run",
            "-",
            "-o",
            "out.csv",
            "--prompt",
            "{{ text }}",
            "--base-url",
            &mock.url,
            "-j",
            "2",
        ];
        let out = run_piped(&dir, &args, &csv_text);
        assert_code(&out, 1);
        mock.port()
    };
    // The run is unfinished, but its copy of stdin is removed all the same (#19: on every way
    // out): --resume reads the data piped again.
    assert!(
        !dir.join("out.stdin.csv").exists(),
        "the copy of stdin outlived the process"
    );
    let first = dir.results("out.csv");
    let done = first.iter().filter(|r| field(r, "status") == "ok").count();
    assert_eq!(done, 5);

    // --resume with stdin: pipe the same data again.
    let mock = MockProcess::start_on(port, &[]);
    let args = [
        "run",
        "-",
        "-o",
        "out.csv",
        "--prompt",
        "{{ text }}",
        "--base-url",
        &mock.url,
        "--resume",
        "--retry-failed",
    ];
    let out = run_piped(&dir, &args, &csv_text);
    assert_code(&out, 0);
    assert_eq!(
        util::stat(&mock.stats(), "requests"),
        (30 - done) as u64,
        "{}",
        show(&out)
    );
    let rows = dir.results("out.csv");
    assert!(rows.iter().all(|r| field(r, "status") == "ok"));
    assert!(
        !dir.join("out.stdin.csv").exists(),
        "the copy of stdin outlived the run"
    );
}

#[test]
fn resume_to_stdout_finds_the_state_by_the_piped_data() {
    let dir = TestDir::new();
    let mut csv_text = String::from("id,text\n");
    for i in 1..=24 {
        csv_text.push_str(&format!("r{i},item {i}\n"));
    }
    let port = {
        let mock = MockProcess::start(&["--quota-exhausted-after", "6"]);
        let args = [
            "run",
            "-",
            "-o",
            "-",
            "--prompt",
            "{{ text }}",
            "--base-url",
            &mock.url,
            "-j",
            "2",
        ];
        let out = run_piped(&dir, &args, &csv_text);
        assert_code(&out, 1);
        // Results of an unfinished run still come out, every row in order.
        assert_eq!(parse_csv(&util::stdout(&out)).len(), 24);
        assert!(stderr(&out).contains("--resume"), "{}", show(&out));
        mock.port()
    };
    let mock = MockProcess::start_on(port, &[]);
    let args = [
        "run",
        "-",
        "-o",
        "-",
        "--prompt",
        "{{ text }}",
        "--base-url",
        &mock.url,
        "--resume",
        "--retry-failed",
    ];
    // Other data has no recorded run.
    let out = run_piped(&dir, &args, "id,text\nx,other data\n");
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("pipe exactly the same data"),
        "{}",
        show(&out)
    );
    assert_eq!(util::stat(&mock.stats(), "requests"), 0);

    let out = run_piped(&dir, &args, &csv_text);
    assert_code(&out, 0);
    let rows = parse_csv(&util::stdout(&out));
    assert_eq!(rows.len(), 24);
    assert!(
        rows.iter().all(|r| field(r, "status") == "ok"),
        "{}",
        show(&out)
    );
    assert!(
        util::stat(&mock.stats(), "requests") <= 24 - 6,
        "finished rows were sent again"
    );
    assert!(dir.files().is_empty(), "{:?}", dir.files());
}

#[test]
fn explicit_state_path_is_used_with_stdout_results() {
    let dir = TestDir::new();
    dir.create("in.csv", "id,text\n1,a\n");
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "-o",
            "-",
            "--prompt",
            "{{ text }}",
            "--mock",
            "--state",
            "my.sqlite",
        ],
    );
    assert_code(&out, 0);
    assert_eq!(parse_csv(&util::stdout(&out)).len(), 1);
    assert!(dir.join("my.sqlite").exists(), "{:?}", dir.files());
}

#[test]
fn bench_samples_the_head_of_a_jsonl_input() {
    let dir = TestDir::new();
    let mut jsonl = String::new();
    for i in 1..=20 {
        jsonl.push_str(&format!("{{\"id\": {i}, \"text\": \"item {i}\"}}\n"));
    }
    dir.create("in.jsonl", &jsonl);
    let mock = MockProcess::start(&[]);
    let out = run(
        &dir,
        [
            "bench",
            "in.jsonl",
            "--prompt",
            "{{ text }}",
            "--base-url",
            &mock.url,
            "--concurrency",
            "2",
            "--rows",
            "8",
            "--warmup",
            "0",
            "--format",
            "json",
        ],
    );
    assert_code(&out, 0);
    let report: serde_json::Value =
        serde_json::from_str(&util::stdout(&out)).unwrap_or_else(|e| panic!("{e}\n{}", show(&out)));
    assert_eq!(report["settings"][0]["runs"][0]["rows"], 8, "{report}");
    assert_eq!(report["settings"][0]["runs"][0]["failed"], 0, "{report}");
    assert_eq!(util::stat(&mock.stats(), "requests"), 8);
}

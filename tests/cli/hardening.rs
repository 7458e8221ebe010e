//! End-to-end tests of issue #19's hostile inputs and servers (bounded inputs, template budgets,
//! path collisions, echoed secrets) and #18's files people have (delimiters), driving the real
//! binary against servers the tests start on 127.0.0.1.

use std::io::Write;
use std::process::Stdio;

use crate::util::{self, TestDir, assert_code, cmd, field, mock_answer, run, show, stderr};

const INPUT: &str = "id,text\n1,hello\n2,world\n";

/// `batch run in.csv --mock` with `extra` flags.
fn run_mock(dir: &TestDir, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["run", "in.csv", "--mock", "--prompt", "Say {{ text }}"];
    args.extend_from_slice(extra);
    run(dir, args)
}

// ---------------------------------------------------------------------------------------------
// #19 item 7: no output is an input, or another output
// ---------------------------------------------------------------------------------------------

#[test]
fn summary_json_or_log_on_the_input_is_refused_before_anything_is_sent() {
    let dir = TestDir::new();
    dir.create("in.csv", INPUT);
    std::fs::create_dir(dir.join("sub")).unwrap();
    for (flag, path) in [
        ("--summary-json", "in.csv"),
        ("--summary-json", "./sub/../in.csv"),
        ("--log", "in.csv"),
        ("--state", "./in.csv"),
    ] {
        let out = run_mock(&dir, &[flag, path]);
        assert_code(&out, 2);
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "{flag} {path} is the input file; pick another path"
            )),
            "{flag} {path}: {err}"
        );
        assert_eq!(dir.read("in.csv"), INPUT, "the input is untouched");
        assert!(!dir.join("in.results.csv").exists(), "{}", show(&out));
    }
}

#[cfg(unix)]
#[test]
fn an_output_through_a_symlink_to_the_prompt_file_is_refused() {
    let dir = TestDir::new();
    dir.create("in.csv", INPUT);
    let prompt = dir.create("prompt.txt", "Say {{ text }}");
    std::os::unix::fs::symlink(&prompt, dir.join("link.json")).unwrap();
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--mock",
            "--prompt-file",
            "prompt.txt",
            "--summary-json",
            "link.json",
        ],
    );
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("is the --prompt-file"),
        "{}",
        show(&out)
    );
    assert_eq!(dir.read("prompt.txt"), "Say {{ text }}");
}

#[test]
fn two_outputs_on_one_file_are_refused() {
    let dir = TestDir::new();
    dir.create("in.csv", INPUT);
    let out = run_mock(&dir, &["--log", "out.json", "--summary-json", "./out.json"]);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("--summary-json ./out.json is also given to --log"),
        "{}",
        show(&out)
    );
    let out = run_mock(&dir, &["-o", "r.csv", "--log", "r.sqlite"]);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("also given to --state"),
        "{}",
        show(&out)
    );
}

#[test]
fn bench_exports_on_an_input_are_refused() {
    let dir = TestDir::new();
    dir.create("in.csv", INPUT);
    let out = run(
        &dir,
        [
            "bench",
            "in.csv",
            "--mock",
            "--prompt",
            "Say {{ text }}",
            "--export-json",
            "in.csv",
        ],
    );
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("--export-json in.csv is the input file"),
        "{}",
        show(&out)
    );
    assert_eq!(dir.read("in.csv"), INPUT);
}

// ---------------------------------------------------------------------------------------------
// #19 item 6: templates that never end
// ---------------------------------------------------------------------------------------------

#[test]
fn endless_templates_fail_in_the_pre_flight_naming_template_and_row() {
    let dir = TestDir::new();
    let long = "x".repeat(3000);
    dir.create("in.csv", &format!("id,text\n1,short\n2,{long}\n"));
    let nested = "{% for a in text %}{% for b in text %}{% for c in text %}.{% endfor %}\
                  {% endfor %}{% endfor %}";
    let doubling = "{% macro d(s, n) %}{% if n > 0 %}{{ d(s ~ s, n - 1) }}{% else %}{{ s }}\
                    {% endif %}{% endmacro %}{{ d(text, 60) }}";
    for (template, reason) in [(nested, "steps"), (doubling, "nested deeper")] {
        let out = run(&dir, ["run", "in.csv", "--mock", "--prompt", template]);
        assert_code(&out, 2);
        let err = stderr(&out);
        assert!(
            err.contains("in.csv: line 3") && err.contains("user template") && err.contains(reason),
            "{err}"
        );
        assert!(!dir.join("in.results.csv").exists());
    }
}

/// `batch run in.csv --mock --prompt template` with the render watchdog's limits lowered, under
/// a 4 GB address-space limit, so that a watchdog that failed to stop the render fails the test
/// (the child aborts) instead of filling the machine's memory.
fn run_watched(dir: &TestDir, template: &str, limits: &[(&str, &str)]) -> std::process::Output {
    let mut c = std::process::Command::new("sh");
    c.args(["-c", "ulimit -v 4194304 && exec \"$0\" \"$@\"", util::bin()])
        .args(["run", "in.csv", "--mock", "--prompt", template]);
    let mut c = util::with_test_env(c, dir);
    for (k, v) in limits {
        c.env(k, v);
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    wait_bounded(c.spawn().expect("spawn batch"))
}

#[test]
fn a_string_doubled_in_one_step_at_a_time_is_stopped_by_the_render_watchdog() {
    let dir = TestDir::new();
    dir.create("in.csv", INPUT);
    // Forty steps of fuel, a terabyte of string: no step or nesting budget sees it.
    let doubling = format!(
        "{{% set s = text %}}{}{{{{ s }}}}",
        "{% set s = s ~ s %}".repeat(40)
    );
    let out = run_watched(&dir, &doubling, &[("BATCH_RENDER_MAX_MB", "64")]);
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("in.csv: line 2")
            && err.contains("user template grew the process by more than 64 MB")
            && err.contains("nothing was sent"),
        "{err}"
    );
    assert!(!dir.join("in.results.csv").exists());
}

#[test]
fn a_render_that_runs_too_long_is_stopped_by_the_render_watchdog() {
    let dir = TestDir::new();
    let cell = "x".repeat(1 << 20);
    dir.create("in.csv", &format!("id,text\n1,{cell}\n"));
    // Each step copies a megabyte and frees it: little fuel, flat memory, minutes of work.
    let slow = "{% for c in text[:90000] %}{% set t = text ~ c %}{% endfor %}{{ text }}";
    let out = run_watched(&dir, slow, &[("BATCH_RENDER_MAX_SECS", "1")]);
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("in.csv: line 2") && err.contains("user template ran for more than 1 s"),
        "{err}"
    );
}

#[test]
fn a_row_lookup_of_a_missing_column_lists_the_columns_once() {
    let dir = TestDir::new();
    dir.create("in.csv", "id,product\n1,a\n2,b\n3,c\n");
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--mock",
            "--prompt",
            "{{ row[\"product name\"] }}",
        ],
    );
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("{{ row[\"product name\"] }}, which is not a column")
            && err.contains("\"id\", \"product\""),
        "{err}"
    );
    assert_eq!(err.matches("not a column").count(), 1, "{err}");
}

// ---------------------------------------------------------------------------------------------
// #19 items 5 and 10: inputs that never end, cells too long to send
// ---------------------------------------------------------------------------------------------

/// Waits for `child` up to a minute; a hang fails the test instead of stalling the suite.
fn wait_bounded(mut child: std::process::Child) -> std::process::Output {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().expect("poll child").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("batch hung: still running after 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().expect("collect output")
}

/// The rows of `out.csv` as (id, answer).
fn answers(dir: &TestDir) -> Vec<(String, String)> {
    dir.results("out.csv")
        .iter()
        .map(|r| (field(r, "id").to_string(), field(r, "output").to_string()))
        .collect()
}

fn expected_answers() -> Vec<(String, String)> {
    vec![
        ("1".into(), mock_answer("Say hello")),
        ("2".into(), mock_answer("Say world")),
    ]
}

#[cfg(unix)]
#[test]
fn a_fifo_input_is_opened_once_and_runs() {
    let dir = TestDir::new();
    let fifo = dir.join("rows.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo failed");
    let child = cmd(
        &dir,
        [
            "run",
            "rows.fifo",
            "--mock",
            "--prompt",
            "Say {{ text }}",
            "-o",
            "out.csv",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start batch");
    // Opening a FIFO for writing waits for its reader; a second open by the reader would wait
    // for a writer that never comes.
    let writer = std::thread::spawn(move || std::fs::write(&fifo, INPUT));
    let out = wait_bounded(child);
    assert_code(&out, 0);
    writer.join().unwrap().expect("write to the fifo");
    assert_eq!(answers(&dir), expected_answers());
    assert_eq!(spools(&dir), Vec::<String>::new());
}

#[cfg(unix)]
#[test]
fn process_substitution_is_read_whole() {
    let dir = TestDir::new();
    dir.create("in.csv", INPUT);
    let script = format!(
        "exec '{}' run <(cat in.csv) --mock --prompt 'Say {{{{ text }}}}' -o out.csv",
        util::bin()
    );
    let child = std::process::Command::new("bash")
        .args(["-c", &script])
        .current_dir(dir.path())
        .env("BATCH_CACHE_DIR", dir.cache_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bash");
    let out = wait_bounded(child);
    assert_code(&out, 0);
    assert_eq!(answers(&dir), expected_answers());
}

/// Spool files (copies of stdin or a pipe) left in the test's folder.
fn spools(dir: &TestDir) -> Vec<String> {
    dir.files()
        .into_iter()
        .filter(|f| f.contains(".stdin.") || f.contains("batch-stdin"))
        .collect()
}

#[cfg(unix)]
#[test]
fn dev_zero_fails_fast_as_a_file_and_as_stdin_leaving_no_copy() {
    let dir = TestDir::new();
    let out = run(
        &dir,
        [
            "run",
            "/dev/zero",
            "--mock",
            "--prompt",
            "x",
            "-o",
            "out.csv",
            "--max-row-size",
            "1M",
        ],
    );
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("/dev/zero: line 1 is longer than 1 MB (--max-row-size)"),
        "{err}"
    );
    let zero = std::fs::File::open("/dev/zero").unwrap();
    let child = cmd(
        &dir,
        ["run", "-", "--mock", "--prompt", "x", "-o", "out.csv"],
    )
    .stdin(zero)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let out = wait_bounded(child);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("stdin: line 1 is longer than 32 MB (--max-row-size)"),
        "{}",
        show(&out)
    );
    assert_eq!(spools(&dir), Vec::<String>::new());
    assert!(!dir.join("out.csv").exists());
}

#[test]
fn an_endless_stream_of_rows_stops_at_the_input_size_limit() {
    let dir = TestDir::new();
    let mut child = cmd(
        &dir,
        [
            "run",
            "-",
            "--mock",
            "--prompt",
            "x {{ text }}",
            "-o",
            "out.csv",
            "--max-input-size",
            "64K",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(b"id,text\n");
        // Like `yes`: rows until the reader goes away.
        for i in 0.. {
            if writeln!(stdin, "{i},row {i}").is_err() {
                break;
            }
        }
    });
    let out = wait_bounded(child);
    writer.join().unwrap();
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("stdin is larger than 64 KB (--max-input-size)"),
        "{}",
        show(&out)
    );
    assert_eq!(spools(&dir), Vec::<String>::new());
}

#[cfg(unix)]
#[test]
fn sigterm_while_stdin_is_copied_removes_the_copy() {
    let dir = TestDir::new();
    let mut child = cmd(
        &dir,
        [
            "run",
            "-",
            "--mock",
            "--prompt",
            "x {{ text }}",
            "-o",
            "out.csv",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"id,text\n1,a\n").unwrap();
    // The copy exists once batch has started reading; the pipe stays open, so it is not done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while spools(&dir).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no copy of stdin appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(killed.is_ok_and(|s| s.success()));
    let out = wait_bounded(child);
    drop(stdin);
    assert_code(&out, 130);
    assert_eq!(spools(&dir), Vec::<String>::new());
}

#[test]
fn a_50_mb_field_is_refused_in_the_pre_flight() {
    let dir = TestDir::new();
    let mut data = b"id,text\n1,short\n2,".to_vec();
    data.resize(data.len() + 50 * 1024 * 1024, b'x');
    data.extend_from_slice(b"\n3,short\n");
    dir.create_bytes("in.csv", &data);
    drop(data);
    // Over the row limit (32 MB) as it is read...
    let out = run_mock(&dir, &["-o", "out.csv"]);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("in.csv: line 3 is longer than 32 MB (--max-row-size)"),
        "{}",
        show(&out)
    );
    // ...and with a larger row limit, over the field limit, naming the cell.
    let out = run_mock(&dir, &["-o", "out.csv", "--max-row-size", "64M"]);
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("in.csv: line 3, column 2 (\"text\")")
            && err.contains("over the 10 MB limit (--max-field-size)"),
        "{err}"
    );
    assert!(!dir.join("out.csv").exists());
}

// ---------------------------------------------------------------------------------------------
// #19 item 8: a server that echoes the secrets it was sent
// ---------------------------------------------------------------------------------------------

/// A server on 127.0.0.1 that answers every request with a 400 whose message quotes the
/// `Authorization`, `X-Api-Key` and `X-Proxy-Token` headers it received, as a misconfigured
/// gateway might.
fn start_echo_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || echo_once(stream));
        }
    });
    format!("http://{addr}/v1")
}

fn echo_once(mut stream: std::net::TcpStream) {
    use std::io::{BufRead, BufReader, Read};
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let (mut headers, mut length) = (Vec::new(), 0usize);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.to_ascii_lowercase();
            if name == "content-length" {
                length = value.trim().parse().unwrap_or(0);
            }
            if matches!(
                name.as_str(),
                "authorization" | "x-api-key" | "x-proxy-token"
            ) {
                headers.push(format!("{name}={}", value.trim()));
            }
        }
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    let message = format!("invalid credentials: {}", headers.join(" "));
    let json = serde_json::json!({"error": {"message": message, "type": "invalid_request_error"}})
        .to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-request-id: req-{}\r\nconnection: close\r\n\r\n{json}",
        json.len(),
        headers.join(" ")
    );
}

/// Every file under `root`, recursively, with its bytes.
fn all_files(root: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

#[test]
fn secrets_a_server_echoes_are_in_no_output_file_log_state_or_stderr() {
    const KEY: &str = "sk-test-echoed-key-0123456789";
    const GATEWAY: &str = "gw-secret-value-42";
    let dir = TestDir::new();
    dir.create("in.csv", INPUT);
    let url = start_echo_server();
    let out = cmd(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "Say {{ text }}",
            "--base-url",
            &url,
            "-o",
            "out.csv",
            "--header",
            &format!("X-Api-Key: {GATEWAY}"),
            "--log",
            "audit.jsonl",
            "--summary-json",
            "summary.json",
            "--max-retries",
            "0",
        ],
    )
    .env("OPENAI_API_KEY", KEY)
    .output()
    .unwrap();
    assert_code(&out, 1);
    // The server did echo them, and what it said is kept, scrubbed.
    let rows = dir.results("out.csv");
    assert_eq!(rows.len(), 2, "{}", show(&out));
    for row in &rows {
        let error = field(row, "error");
        assert!(
            error.contains("authorization=[redacted]") && error.contains("x-api-key=[redacted]"),
            "{error}"
        );
    }
    let audit = dir.read("audit.jsonl");
    assert!(audit.contains("[redacted]"), "{audit}");
    let mut looked = 0;
    for (path, bytes) in all_files(dir.path())
        .into_iter()
        .chain(all_files(dir.cache_dir()))
    {
        for secret in [KEY, GATEWAY] {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{secret} is written in {}", path.display());
        }
        looked += 1;
    }
    assert!(
        looked >= 4,
        "results, state, log and summary were all checked"
    );
    for text in [stderr(&out), util::stdout(&out)] {
        assert!(!text.contains(KEY) && !text.contains(GATEWAY), "{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// #18: the files people have (delimiters)
// ---------------------------------------------------------------------------------------------

#[test]
fn semicolon_and_tsv_inputs_are_read_by_their_delimiter() {
    let dir = TestDir::new();
    dir.create("semi.csv", "id;text\n1;hello\n2;world\n");
    dir.create("tabs.tsv", "id\ttext\n1\thello\n2\tworld\n");
    dir.create("pipes.txt", "id|text\n1|hello\n2|world\n");
    for input in ["semi.csv", "tabs.tsv", "pipes.txt"] {
        let out = run(
            &dir,
            [
                "run",
                input,
                "--mock",
                "--prompt",
                "Say {{ text }}",
                "-o",
                "out.csv",
            ],
        );
        assert_code(&out, 0);
        assert_eq!(answers(&dir), expected_answers(), "{input}");
        std::fs::remove_file(dir.join("out.csv")).unwrap();
        std::fs::remove_file(dir.join("out.sqlite")).unwrap();
    }
}

#[test]
fn delimiter_flag_forces_the_separator() {
    let dir = TestDir::new();
    // Sniffing would take the comma; the flag says the file is tab-separated.
    dir.create("in.csv", "id\ttext\n1\thello, there\n2\tworld, again\n");
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--mock",
            "--prompt",
            "Say {{ text }}",
            "-o",
            "out.csv",
            "-d",
            "\\t",
        ],
    );
    assert_code(&out, 0);
    assert_eq!(
        answers(&dir),
        vec![
            ("1".into(), mock_answer("Say hello, there")),
            ("2".into(), mock_answer("Say world, again")),
        ]
    );
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--mock",
            "--prompt",
            "x",
            "--delimiter",
            ";;",
        ],
    );
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("is not a delimiter"),
        "{}",
        show(&out)
    );
}

#[cfg(unix)]
#[test]
fn sigterm_during_the_run_of_stdin_removes_the_copy() {
    let dir = TestDir::new();
    let mut child = cmd(
        &dir,
        [
            "run",
            "-",
            "--mock=latency-ms=5000",
            "--prompt",
            "x {{ text }}",
            "-o",
            "out.csv",
            "--grace",
            "0",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(INPUT.as_bytes()).unwrap();
    drop(stdin);
    // The state file is made once the pre-flight is over and the run begins.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !dir.join("out.sqlite").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(spools(&dir), vec!["out.stdin.csv".to_string()]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(killed.is_ok_and(|s| s.success()));
    let out = wait_bounded(child);
    assert_code(&out, 130);
    assert_eq!(spools(&dir), Vec::<String>::new(), "{}", show(&out));
}

/// Starts `batch run - -o out.csv` on the mock at `latency_ms`, with `rows` on its stdin.
fn spawn_stdin_run(dir: &TestDir, latency_ms: u32, rows: &str) -> std::process::Child {
    let mut child = cmd(
        dir,
        [
            "run",
            "-",
            &format!("--mock=latency-ms={latency_ms}"),
            "--prompt",
            "Say {{ text }}",
            "-o",
            "out.csv",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(rows.as_bytes()).unwrap();
    child
}

#[test]
fn a_second_stdin_run_on_the_same_job_is_refused_without_touching_the_first_ones_copy() {
    let dir = TestDir::new();
    let first = spawn_stdin_run(&dir, 1500, INPUT);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !dir.join("out.sqlite").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Other rows on the second stdin: had its copy replaced the first's, the first run would
    // merge these into its results, or find its copy gone.
    let second = spawn_stdin_run(&dir, 0, "id,text\n1,other\n2,rows\n");
    let second = wait_bounded(second);
    assert_code(&second, 2);
    assert!(
        stderr(&second).contains("is in use by another batch process"),
        "{}",
        show(&second)
    );
    let first = wait_bounded(first);
    assert_code(&first, 0);
    assert_eq!(answers(&dir), expected_answers(), "{}", show(&first));
    assert_eq!(spools(&dir), Vec::<String>::new());
}

#[test]
fn secrets_echoed_to_a_batch_api_submission_are_not_printed() {
    const KEY: &str = "sk-test-echoed-batch-key-42";
    let dir = TestDir::new();
    dir.create("in.csv", INPUT);
    let url = start_echo_server();
    let out = cmd(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "Say {{ text }}",
            "--base-url",
            &url,
            "-o",
            "out.csv",
            "--via",
            "batch",
            "--header",
            "X-Proxy-Token: proxy-secret-77",
        ],
    )
    .env("OPENAI_API_KEY", KEY)
    .output()
    .unwrap();
    assert_ne!(util::code(&out), 0, "{}", show(&out));
    let err = stderr(&out);
    // Both reached the Batch API's server, and neither came back out.
    assert!(err.contains("authorization=[redacted]"), "{err}");
    assert!(err.contains("x-proxy-token=[redacted]"), "{err}");
    assert!(!err.contains("proxy-secret-77"), "{err}");
    for (path, bytes) in all_files(dir.path()) {
        let found = bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes());
        assert!(!found, "the key is written in {}", path.display());
    }
    assert!(
        !util::stdout(&out).contains(KEY) && !err.contains(KEY),
        "{err}"
    );
}

#[test]
fn collect_outputs_on_its_state_file_are_refused() {
    let dir = TestDir::new();
    dir.create("s.batch.json", "{}");
    for flag in ["--summary-json", "-o"] {
        let out = run(&dir, ["collect", "s.batch.json", flag, "./s.batch.json"]);
        assert_code(&out, 2);
        assert!(
            stderr(&out).contains(&format!("{flag} ./s.batch.json is the state file")),
            "{}",
            show(&out)
        );
        assert_eq!(dir.read("s.batch.json"), "{}");
    }
}

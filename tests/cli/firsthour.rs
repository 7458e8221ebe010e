//! Issue #18, the first hour: what a newcomer meets. The end-of-run failure report and the
//! command that continues a run, `-q` that still says why a run stopped, rates that count only
//! this run's rows, money without float noise, `-` for stdout, and the error messages of the
//! small traps (`--rpm -5`, an empty `--api-key-file`, an unwritable `-o`).

use crate::util::*;

/// The `--summary-json -` of a run, parsed from stdout.
fn summary_json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}\n{}", show(out)))
}

#[test]
fn failures_are_reported_by_reason_with_an_example_and_the_command_to_continue() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(30));
    let args = [
        "run",
        "in.csv",
        "--prompt",
        "Say {{ text }}",
        "--mock=error-rate=0.5",
        "--max-retries",
        "0",
        "--no-cache",
    ];
    let out = run(&dir, args);
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("Failed     "), "{err}");
    assert!(err.contains(": server error (HTTP 50"), "{err}");
    assert!(err.contains("e.g. line "), "{err}");
    let next = err
        .lines()
        .find_map(|l| l.strip_prefix("Next       "))
        .unwrap_or_else(|| panic!("no Next line\n{err}"));
    let words = shlex::split(next).expect("a shell command");
    assert!(words[0].ends_with("batch"), "{next}");
    assert_eq!(&words[1..words.len() - 2], &args[..], "{next}");
    assert_eq!(&words[words.len() - 2..], ["--resume", "--retry-failed"]);
    // It runs as printed: the failed rows are sent again.
    let again = run(&dir, &words[1..]);
    assert!(
        stderr(&again).contains("failed rows will be sent again"),
        "{}",
        show(&again)
    );
}

#[test]
fn quiet_still_says_why_the_run_stopped_and_a_clean_quiet_run_says_nothing() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(20));
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--mock=quota-exhausted-after=3",
            "-q",
            "-j",
            "1",
        ],
    );
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("Stopped early: "), "{err}");
    assert!(err.contains("insufficient_quota"), "{err}");
    assert!(err.contains("--resume"), "{err}");
    assert!(!err.contains("Tokens"), "-q hides the summary\n{err}");
    let clean = TestDir::new();
    clean.create("in.csv", &numbered_csv(3));
    let out = run(
        &clean,
        ["run", "in.csv", "--prompt", "{{ text }}", "--mock", "-q"],
    );
    assert_code(&out, 0);
    assert_eq!(stderr(&out), "", "a clean -q run prints nothing");
}

#[test]
fn rows_per_second_counts_only_rows_sent_by_this_run() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(20));
    let base = [
        "run",
        "in.csv",
        "--prompt",
        "{{ text }}",
        "--summary-json",
        "-",
    ];
    let first = run(
        &dir,
        [&base[..], &["--mock=quota-exhausted-after=4", "-j", "1"]].concat(),
    );
    assert_code(&first, 1);
    let s = summary_json(&first);
    let sent = s["sent_rows"].as_u64().unwrap();
    assert_eq!(
        sent,
        s["ok"].as_u64().unwrap() + s["failed"].as_u64().unwrap()
    );
    assert!(s["skipped"].as_u64().unwrap() > 0, "{s}");
    let rate = s["rows_per_second"].as_f64().unwrap();
    let wall = s["wall_seconds"].as_f64().unwrap();
    assert!((rate - sent as f64 / wall).abs() < 1e-6, "{s}");
    // The resume sends the rest; the rows of the first part are not this run's.
    let second = run(
        &dir,
        [&base[..], &["--mock", "--resume", "--retry-failed"]].concat(),
    );
    assert_code(&second, 0);
    let s2 = summary_json(&second);
    assert_eq!(s2["rows"], 20);
    assert_eq!(
        s2["sent_rows"].as_u64().unwrap(),
        20 - s2["resumed"].as_u64().unwrap()
    );
    assert!(s2["resumed"].as_u64().unwrap() > 0, "{s2}");
    // A rerun answered from the cache sends nothing and says so.
    let third = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--mock",
            "--restart",
        ],
    );
    assert_code(&third, 0);
    assert!(stderr(&third).contains("no rows sent"), "{}", show(&third));
}

#[test]
fn summary_json_dash_is_stdout_with_money_rounded_and_no_file_named_dash() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(40));
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "Say {{ text }}",
            "--mock",
            "--summary-json",
            "-",
        ],
    );
    assert_code(&out, 0);
    let s = summary_json(&out);
    assert_eq!(s["ok"], 40);
    assert!(!dir.join("-").exists(), "a file named - was written");
    // Every dollar amount has at most 10 decimals (the prices' precision), no float noise.
    let text = stdout(&out);
    let cost = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"cost_usd\": "))
        .unwrap();
    let decimals = cost.trim_end_matches(',').split('.').nth(1).unwrap_or("");
    assert!(decimals.len() <= 10, "{cost}");
    let both = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "x",
            "--mock",
            "-o",
            "-",
            "--summary-json",
            "-",
        ],
    );
    assert_code(&both, 2);
    assert!(
        stderr(&both).contains("both write to stdout"),
        "{}",
        show(&both)
    );
}

#[test]
fn rpm_below_one_is_refused_with_its_range_and_no_dash_dash_hint() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(2));
    for args in [&["--rpm", "-5"][..], &["--rpm=-5"], &["--tpm", "0"]] {
        let out = run(
            &dir,
            [&["run", "in.csv", "--prompt", "x", "--mock"][..], args].concat(),
        );
        assert_code(&out, 2);
        let err = stderr(&out);
        assert!(err.contains("is not in 1..="), "{args:?}: {err}");
        assert!(!err.contains("-- -5"), "{args:?}: {err}");
    }
}

#[test]
fn an_empty_api_key_file_says_it_is_empty() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(2));
    dir.create("key.txt", "\n");
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "x",
            "--api-key-file",
            "key.txt",
        ],
    );
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("key.txt (given to --api-key-file) is empty"),
        "{err}"
    );
    assert!(!err.contains("set OPENAI_API_KEY"), "{err}");
}

#[test]
fn an_unwritable_results_folder_names_the_results_path_not_the_lock() {
    // /sys is read-only for every user (root included), where a chmod'ed folder is not.
    let target = std::path::Path::new("/sys/batch-firsthour-test.csv");
    if !std::path::Path::new("/sys").is_dir() || std::fs::write(target, "").is_ok() {
        return;
    }
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(2));
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "x",
            "--mock",
            "-o",
            "/sys/batch-firsthour-test.csv",
        ],
    );
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("cannot write -o /sys/batch-firsthour-test.csv"),
        "{err}"
    );
    assert!(!err.contains("lock"), "{err}");
}

#[test]
fn ignore_case_runs_are_labelled_as_such() {
    let dir = TestDir::new();
    dir.create("in.csv", "id,text,want\n1,a,A\n2,b,B\n");
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--mock",
            "--expect",
            "want",
            "--ignore-case",
        ],
    );
    assert_code(&out, 0);
    let err = stderr(&out);
    assert!(err.contains("(exact, ignoring case)"), "{err}");
}

#[test]
fn via_batch_says_it_waits_instead_of_naming_the_next_commands() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(3));
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--mock=batch-latency-ms=10",
            "--via",
            "batch",
        ],
    );
    assert_code(&out, 0);
    let err = stderr(&out);
    assert!(err.contains("Waiting    for the answers"), "{err}");
    assert!(!err.contains("Next       batch status"), "{err}");
    assert!(!err.contains("rows/s"), "no rate for the Batch API\n{err}");
}

#[test]
fn bench_without_concurrency_sweeps_powers_of_two_for_the_sample() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(16));
    let out = run(
        &dir,
        [
            "bench",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--mock=latency-ms=2",
            "--format",
            "json",
        ],
    );
    assert_code(&out, 0);
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let settings: Vec<&str> = report["settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["concurrency"].as_str().unwrap())
        .collect();
    // 16 rows: 4 rows a slot up to 4 in flight.
    assert_eq!(settings, ["1", "2", "4"], "{}", show(&out));
}

#[test]
fn bench_refuses_the_batch_api_flags_instead_of_ignoring_them() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(4));
    for flag in [&["--via", "batch"][..], &["--batch-max-requests", "10"]] {
        let out = run(
            &dir,
            [&["bench", "in.csv", "--prompt", "x", "--mock"][..], flag].concat(),
        );
        assert_code(&out, 2);
        assert!(
            stderr(&out).contains("is for `batch run`"),
            "{}",
            show(&out)
        );
    }
    let help = stdout(&run(&dir, ["bench", "--help"]));
    assert!(
        !help.contains("--via") && !help.contains("--batch-max-requests"),
        "{help}"
    );
}

#[test]
fn log_dash_is_stdout_and_two_outputs_on_stdout_are_refused() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(3));
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--mock",
            "--log",
            "-",
            "--no-cache",
            "-q",
        ],
    );
    assert_code(&out, 0);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "one line per attempt\n{}", show(&out));
    assert!(lines.iter().all(|l| l["attempt"] == 1));
    assert!(!dir.join("-").exists(), "a file named - was written");
    let both = run(
        &dir,
        [
            "run", "in.csv", "--prompt", "x", "--mock", "--log", "-", "-o", "-",
        ],
    );
    assert_code(&both, 2);
    assert!(
        stderr(&both).contains("-o and --log both write to stdout"),
        "{}",
        show(&both)
    );
}

#[test]
fn batch_toml_takes_mock_true_and_refresh() {
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(3));
    dir.create("batch.toml", "mock = true\n");
    let first = run(&dir, ["run", "in.csv", "--prompt", "{{ text }}"]);
    assert_code(&first, 0);
    assert!(stderr(&first).contains("3 ok"), "{}", show(&first));
    // Cached now; `refresh = true` in the file sends everything again.
    dir.create("batch.toml", "mock = \"latency-ms=1\"\nrefresh = true\n");
    let again = run(
        &dir,
        ["run", "in.csv", "--prompt", "{{ text }}", "--restart"],
    );
    assert_code(&again, 0);
    let err = stderr(&again);
    assert!(
        err.contains("3 rows sent") && !err.contains("Cache "),
        "{err}"
    );
}

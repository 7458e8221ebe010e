//! `batch bench` end to end: the real binary sweeping concurrency settings on the embedded mock
//! (or a standalone one, to count what was sent), checked through its table, its exports, its
//! chart and its refusals.

use std::path::PathBuf;

use crate::util::{self, MockProcess, TestDir, assert_code, run, show, stat, stderr, stdout};

fn sample(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(name)
        .display()
        .to_string()
}

/// `batch bench samples/reviews.csv --prompt-file samples/classify.txt` and `extra`.
fn bench_args(extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "bench".to_string(),
        sample("reviews.csv"),
        "--prompt-file".into(),
        sample("classify.txt"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The setting named on the "recommended: --concurrency N" line.
fn recommended(text: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.starts_with("recommended: --concurrency "))
        .unwrap_or_else(|| panic!("no recommendation in:\n{text}"));
    line["recommended: --concurrency ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn table_has_one_line_per_setting_and_a_recommendation() {
    let dir = TestDir::new();
    let out = run(
        &dir,
        bench_args(&[
            "--mock=latency-ms=20",
            "--concurrency",
            "1,4,16",
            "--rows",
            "40",
        ]),
    );
    assert_code(&out, 0);
    let text = stdout(&out);
    for setting in ["1", "4", "16"] {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(setting))
            .collect();
        assert_eq!(lines.len(), 1, "setting {setting}:\n{}", show(&out));
        // concurrency, rows/s, e2e rows/s, tokens/s, 4 latencies, 429s, errors, retries, $/1k.
        let cells: Vec<&str> = lines[0].split_whitespace().collect();
        assert!(cells.len() >= 12, "{}", lines[0]);
        let rate: f64 = cells[1].trim_end_matches('*').parse().unwrap();
        assert!(rate > 0.0, "{}", lines[0]);
        assert_eq!(cells[9], "0.0%", "no errors on a clean mock: {}", lines[0]);
    }
    let header = text.lines().find(|l| l.starts_with("concurrency")).unwrap();
    for col in [
        "rows/s",
        "tokens/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "429s",
        "$/1k rows",
    ] {
        assert!(header.contains(col), "{header}");
    }
    assert!(
        ["1", "4", "16"].contains(&recommended(&text).as_str()),
        "{text}"
    );
    // At 20 ms a request, one in flight cannot beat 50 rows/s; sixteen do far better.
    let rate = |s: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(s))
            .unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .trim_end_matches('*')
            .parse()
            .unwrap()
    };
    // (How much better is the benchmarks' business: on a loaded machine sixteen may gain only
    // 1.5x, so the test asks for the direction, not the size.)
    assert!(rate("1") < 55.0, "{text}");
    assert!(rate("16") > rate("1"), "{text}");
    // Progress goes to stderr, never into the table.
    assert!(stderr(&out).contains("warm-up"), "{}", show(&out));
}

/// A CSV cell and a JSON number written from the same f64. They are the same digits, but
/// serde_json's default float parser may land one unit in the last place away, so the check
/// allows that much.
#[track_caller]
fn same(cell: &str, json: &serde_json::Value, what: &str) {
    let a: f64 = cell
        .parse()
        .unwrap_or_else(|e| panic!("{what}: {cell:?} ({e})"));
    let b = json
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {json} is not a number"));
    assert!(
        (a - b).abs() <= 4.0 * f64::EPSILON * a.abs().max(b.abs()),
        "{what}: CSV {cell} vs JSON {json}"
    );
}

#[test]
fn exports_parse_and_agree_with_each_other_and_with_stdout() {
    let dir = TestDir::new();
    let out = run(
        &dir,
        bench_args(&[
            "--mock=latency-ms=10",
            "--concurrency",
            "2,8,auto",
            "--rows",
            "30",
            "--warmup",
            "2",
            "--format",
            "json",
            "--export-json",
            "b.json",
            "--export-csv",
            "b.csv",
            "--export-markdown",
            "b.md",
        ]),
    );
    assert_code(&out, 0);
    let from_stdout: serde_json::Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", show(&out)));
    let json: serde_json::Value = serde_json::from_str(&dir.read("b.json")).unwrap();
    assert_eq!(from_stdout, json, "--format json and --export-json differ");
    // With --format json the recommendation goes to stderr, and matches the JSON.
    let rec = json["recommendation"]["concurrency"].as_u64().unwrap();
    assert_eq!(recommended(&stderr(&out)), rec.to_string());

    let settings = json["settings"].as_array().unwrap();
    let labels: Vec<&str> = settings
        .iter()
        .map(|s| s["concurrency"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["2", "8", "auto"]);
    for s in settings {
        assert_eq!(s["runs"].as_array().unwrap().len(), 1);
        assert_eq!(s["runs"][0]["rows"], 30);
        assert_eq!(s["runs"][0]["failed"], 0);
    }

    // CSV: the same settings and exactly the same numbers.
    let mut csv = csv::Reader::from_reader(dir.read("b.csv").as_bytes().to_vec().as_slice())
        .into_deserialize::<std::collections::HashMap<String, String>>()
        .map(|r| r.unwrap())
        .collect::<Vec<_>>();
    assert_eq!(csv.len(), settings.len());
    for (row, s) in csv.iter_mut().zip(settings) {
        assert_eq!(row["concurrency"], s["concurrency"].as_str().unwrap());
        for key in [
            "rows_per_second",
            "end_to_end_rows_per_second",
            "tokens_per_second",
            "error_rate",
            "rate_429",
        ] {
            same(&row[key], &s[key], key);
        }
        same(&row["latency_p95_ms"], &s["latency_ms"]["p95"], "p95");
        let is_rec = s["concurrency"].as_str() == Some(&rec.to_string());
        assert_eq!(row["recommended"], is_rec.to_string());
    }

    // Markdown: one table row per setting, rows/s as the JSON's to one decimal, the recommended
    // setting in bold.
    let md = dir.read("b.md");
    let table: Vec<Vec<String>> = md
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| concurrency"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    assert_eq!(table.len(), settings.len(), "{md}");
    for (cells, s) in table.iter().zip(settings) {
        let name = s["concurrency"].as_str().unwrap();
        let is_rec = name == rec.to_string();
        let expected_name = if is_rec {
            format!("**{name}**")
        } else {
            name.to_string()
        };
        assert_eq!(cells[0], expected_name, "{md}");
        assert_eq!(
            cells[1].trim_end_matches('*'),
            format!("{:.1}", s["rows_per_second"].as_f64().unwrap()),
            "{md}"
        );
    }
    assert!(
        md.contains(&format!("recommended: --concurrency {rec} (")),
        "{md}"
    );
}

#[test]
fn plot_writes_an_svg_that_marks_the_recommendation() {
    let dir = TestDir::new();
    let out = run(
        &dir,
        bench_args(&[
            "--mock=latency-ms=10",
            "--concurrency",
            "1,8",
            "--rows",
            "24",
            "--repeat",
            "2",
            "--plot",
            "chart.svg",
        ]),
    );
    assert_code(&out, 0);
    let text = stdout(&out);
    let rec = recommended(&text);
    // Two runs a setting: the table shows their spread.
    assert!(text.contains("min-max") && text.contains("sd"), "{text}");
    let svg = dir.read("chart.svg");
    assert!(svg.contains("<svg"), "{svg}");
    assert!(svg.contains(&format!("recommended: {rec}")), "{svg}");
    assert!(svg.contains("Throughput") && svg.contains("p95 latency"));
}

#[test]
fn every_run_sends_every_row_however_often_the_rows_repeat() {
    // Two settings, two runs each, no warm-up: 4 x 10 requests, none answered from the response
    // cache or shared between runs.
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    let dir = TestDir::new();
    let out = util::cmd(
        &dir,
        bench_args(&[
            "--base-url",
            &mock.url,
            "--concurrency",
            "1,2",
            "--rows",
            "10",
            "--repeat",
            "2",
            "--warmup",
            "0",
            "--format",
            "json",
        ]),
    )
    .env("BATCH_CACHE_DIR", dir.path())
    .output()
    .unwrap();
    assert_code(&out, 0);
    let stats = mock.stats();
    assert_eq!(stat(&stats, "requests"), 40, "stats: {stats}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    for s in json["settings"].as_array().unwrap() {
        let runs = s["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2);
        assert!(runs.iter().all(|r| r["ok"] == 10), "{s}");
    }
}

#[test]
fn a_bad_export_path_fails_before_anything_is_sent() {
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    for flag in [
        "--export-csv",
        "--export-json",
        "--export-markdown",
        "--plot",
    ] {
        let dir = TestDir::new();
        let out = run(
            &dir,
            bench_args(&[
                "--base-url",
                &mock.url,
                "--concurrency",
                "1,2",
                "--rows",
                "5",
                flag,
                "no-such-folder/out.svg",
            ]),
        );
        assert_code(&out, 2);
        let err = stderr(&out);
        assert!(
            err.contains(flag) && err.contains("does not exist"),
            "{}",
            show(&out)
        );
    }
    let stats = mock.stats();
    assert_eq!(stat(&stats, "requests"), 0, "stats: {stats}");
}

#[test]
fn a_real_api_needs_max_cost_and_gets_the_expected_cost() {
    let dir = TestDir::new();
    let out = util::cmd(
        &dir,
        bench_args(&[
            "--base-url",
            "https://api.example.invalid/v1",
            "--concurrency",
            "1,2",
            "--rows",
            "10",
            "--max-tokens",
            "5",
        ]),
    )
    .env("OPENAI_API_KEY", "sk-test-not-a-key")
    .output()
    .unwrap();
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("--max-cost"), "{}", show(&out));
    // 2 settings x 10 rows + warm-ups of 1 and 2 rows.
    assert!(err.contains("23 requests"), "{}", show(&out));
    assert!(err.contains("Worst case"), "{}", show(&out));
    assert!(!err.contains("sk-test-not-a-key"), "{}", show(&out));
}

#[test]
fn dry_run_prints_the_sweep_and_sends_nothing() {
    let mock = MockProcess::start(&["--latency-ms", "5"]);
    let dir = TestDir::new();
    let out = run(
        &dir,
        bench_args(&[
            "--base-url",
            &mock.url,
            "--concurrency",
            "1,4",
            "--rows",
            "50",
            "--repeat",
            "2",
            "--max-tokens",
            "3",
            "--dry-run",
        ]),
    );
    assert_code(&out, 0);
    let text = stdout(&out);
    // 2 settings x 2 runs x 50 rows + warm-ups of 1 and 4 rows.
    assert!(text.contains("205 requests"), "{}", show(&out));
    assert!(text.contains("at most 615 tokens"), "{}", show(&out));
    assert_eq!(stat(&mock.stats(), "requests"), 0);
}

#[test]
fn flags_of_run_that_bench_cannot_honour_are_refused() {
    let dir = TestDir::new();
    for extra in [["-o", "x.csv"], ["--summary-json", "s.json"]] {
        let mut args = vec!["--mock", "--rows", "3"];
        args.extend(extra);
        let out = run(&dir, bench_args(&args));
        assert_code(&out, 2);
        assert!(stderr(&out).contains(extra[0]), "{}", show(&out));
    }
    assert!(dir.files().is_empty(), "{:?}", dir.files());
}

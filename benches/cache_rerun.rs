//! Issue 8's target: a rerun of 100,000 cached rows finishes at least 20 times faster than the
//! first run, on the mock with 100 ms latency at `--concurrency 64`. Both runs use the real
//! binary and the same fresh cache folder; the ratio is measured in one go, so the machine's
//! load affects both alike.
//!
//! Run: `cargo bench --bench cache_rerun` (env BENCH_ROWS to change the size).

use std::process::Command;
use std::time::Instant;

fn main() {
    let rows: usize = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.csv");
    let mut w = csv::Writer::from_path(&input).expect("write input");
    w.write_record(["id", "review"]).unwrap();
    for i in 0..rows {
        w.write_record([
            format!("r{i}"),
            format!("Review {i}: arrived on time, works well."),
        ])
        .unwrap();
    }
    w.flush().unwrap();
    let cache = dir.path().join("cache");
    let run = |name: &str| -> (f64, serde_json::Value) {
        let summary = dir.path().join(format!("{name}.json"));
        let start = Instant::now();
        let status = Command::new(env!("CARGO_BIN_EXE_batch"))
            .args([
                "run",
                input.to_str().unwrap(),
                "--prompt",
                "Classify: {{ review }}",
                "-q",
            ])
            .args(["--mock=latency-ms=100", "--concurrency", "64"])
            .args([
                "-o",
                dir.path().join(format!("{name}.csv")).to_str().unwrap(),
            ])
            .args(["--summary-json", summary.to_str().unwrap()])
            .env("BATCH_CACHE_DIR", &cache)
            .env_remove("OPENAI_API_KEY")
            .status()
            .expect("run batch");
        let wall = start.elapsed().as_secs_f64();
        assert!(status.success(), "{name} run failed: {status}");
        let s = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
        (wall, s)
    };
    println!("cache_rerun: {rows} rows, mock latency 100 ms, --concurrency 64");
    let (first, s1) = run("first");
    println!("first run: {first:.1} s, cache hits {}", s1["cache_hits"]);
    let (second, s2) = run("rerun");
    println!(
        "rerun:     {second:.1} s, cache hits {}, saved ${:.4}",
        s2["cache_hits"],
        s2["saved_usd"].as_f64().unwrap_or(0.0)
    );
    assert_eq!(
        s2["cache_hits"].as_u64(),
        Some(rows as u64),
        "every row a hit"
    );
    println!("speed-up: {:.1}x (target: at least 20x)", first / second);
}

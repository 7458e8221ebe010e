//! Issue 2's throughput target, measured on the real binary: 2,000 rows on the in-process mock
//! with 100 ms latency at `--concurrency 32`. The ideal is concurrency / latency = 320 rows/s;
//! the report gives the achieved rate as a fraction of it, measured end to end (process start,
//! pre-flight, mock start-up and writing the results included).
//!
//! Run: `cargo bench --bench core_throughput` (env BENCH_ROWS, BENCH_REPEAT to change the size).

use std::process::Command;

fn main() {
    let rows: usize = env_or("BENCH_ROWS", 2000);
    let repeat: usize = env_or("BENCH_REPEAT", 3);
    let (concurrency, latency_ms) = (32usize, 100u64);
    let ideal = concurrency as f64 * 1000.0 / latency_ms as f64;

    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.csv");
    let mut w = csv::Writer::from_path(&input).expect("write input");
    w.write_record(["id", "review"]).unwrap();
    for i in 0..rows {
        let text = format!(
            "Review number {i}: the product was fine, shipping took {} days.",
            i % 9
        );
        w.write_record([format!("r{i}"), text]).unwrap();
    }
    w.flush().unwrap();

    println!(
        "core_throughput: {rows} rows, --concurrency {concurrency}, mock latency {latency_ms} ms"
    );
    println!("ideal: {ideal:.0} rows/s");
    let mut rates = Vec::new();
    for run in 1..=repeat {
        let summary = dir.path().join("summary.json");
        let status = Command::new(env!("CARGO_BIN_EXE_batch"))
            .args([
                "run",
                input.to_str().unwrap(),
                "--prompt",
                "Classify: {{ review }}",
                "-q",
            ])
            .arg(format!("--mock=latency-ms={latency_ms}"))
            // Every repeat must send its requests, not read them back from the cache.
            .arg("--no-cache")
            .args(["--concurrency", &concurrency.to_string()])
            .args(["-o", dir.path().join("out.csv").to_str().unwrap()])
            .args(["--summary-json", summary.to_str().unwrap()])
            .env_remove("OPENAI_API_KEY")
            .status()
            .expect("run batch");
        assert!(status.success(), "batch run failed: {status}");
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
        assert_eq!(s["ok"].as_u64(), Some(rows as u64), "every row ok");
        let rate = s["rows_per_second"].as_f64().unwrap();
        println!(
            "run {run}: {rate:.1} rows/s = {:.1}% of ideal (wall {:.2} s, p50 {:.0} ms, p99 {:.0} ms)",
            100.0 * rate / ideal,
            s["wall_seconds"].as_f64().unwrap(),
            s["latency_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
            s["latency_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "median: {median:.1} rows/s = {:.1}% of ideal (target: at least 90%)",
        100.0 * median / ideal
    );
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

//! Issue 16's throughput target for image jobs, on the real binary: 2,000 rows with one 200 kB
//! image each, on the in-process mock at 100 ms latency, `--concurrency 32`. The ideal is
//! concurrency / latency = 320 rows/s; the report gives the achieved rate as a fraction of it,
//! end to end (process start, pre-flight reading every file, mock start-up and the results
//! included), and the peak RSS of the process (read from `/proc/PID/status` `VmHWM` while it
//! runs, so Linux only), for the full input and for a quarter of it: the files are read and
//! encoded on the reader thread only for the rows about to be sent, so the peak should follow
//! what is in flight and queued, not the size of the input (the second ratio, near 1).
//!
//! The images are generated in a temporary folder (a PNG header and random bytes: the mock
//! and the pre-flight read only the header) and removed afterwards.
//!
//! Run: `cargo bench --bench images` (env BENCH_ROWS, BENCH_KB to change the size).

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    let rows: usize = env_or("BENCH_ROWS", 2000);
    let kb: usize = env_or("BENCH_KB", 200);
    let (concurrency, latency_ms) = (32usize, 100u64);
    let ideal = concurrency as f64 * 1000.0 / latency_ms as f64;
    let dir = tempfile::tempdir().expect("temp dir");
    write_images(dir.path(), rows, kb);
    println!(
        "images: {rows} rows, one {kb} kB image each, --concurrency {concurrency}, mock latency \
         {latency_ms} ms; ideal {ideal:.0} rows/s"
    );
    let full = run(dir.path(), rows, concurrency, latency_ms);
    println!(
        "{rows} rows: {:.1} rows/s = {:.1}% of ideal end to end (target: at least 90%), \
         peak RSS {:.0} MB; {:.2} s, request latency p50 {:.0} ms",
        full.rate,
        100.0 * full.rate / ideal,
        full.peak_kb as f64 / 1024.0,
        full.wall,
        full.p50_ms
    );
    let quarter = rows / 4;
    let q = run(dir.path(), quarter, concurrency, latency_ms);
    println!(
        "{quarter} rows: {:.1} rows/s, peak RSS {:.0} MB; peak RSS ratio full/quarter \
         input = {:.2} (1.0: bounded by what is in flight, 4.0: by the input)",
        q.rate,
        q.peak_kb as f64 / 1024.0,
        full.peak_kb as f64 / q.peak_kb as f64
    );
    // What does not scale with the rows: start-up (the mock's tokenizer, the pre-flight) and
    // the end, measured as one round of `concurrency` rows less its latency.
    let one = run(dir.path(), concurrency, concurrency, latency_ms);
    let fixed = (one.wall - latency_ms as f64 / 1000.0).max(0.0);
    println!(
        "{concurrency} rows (one round): {:.2} s, so about {fixed:.2} s of it is start-up and \
         finish, {:.1}% of the ideal time of {rows} rows",
        one.wall,
        100.0 * fixed / (rows as f64 / ideal)
    );
}

/// What one run measured.
struct Measured {
    rate: f64,
    peak_kb: u64,
    wall: f64,
    p50_ms: f64,
}

/// `rows` files `img/N.png` and `input.csv` naming them.
fn write_images(dir: &std::path::Path, rows: usize, kb: usize) {
    std::fs::create_dir_all(dir.join("img")).unwrap();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..rows {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        b.extend_from_slice(&1024u32.to_be_bytes());
        b.extend_from_slice(&768u32.to_be_bytes());
        b.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        while b.len() < kb * 1000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            b.extend_from_slice(&seed.to_le_bytes());
        }
        std::fs::write(dir.join(format!("img/{i}.png")), &b).unwrap();
    }
    let mut csv = std::fs::File::create(dir.join("input.csv")).unwrap();
    writeln!(csv, "id,photo").unwrap();
    for i in 0..rows {
        writeln!(csv, "r{i},img/{i}.png").unwrap();
    }
}

/// One run over the first `rows` rows: its end-to-end rate, peak RSS, wall time and latency.
fn run(dir: &std::path::Path, rows: usize, concurrency: usize, latency_ms: u64) -> Measured {
    let input = dir.join(format!("input-{rows}.csv"));
    let all = std::fs::read_to_string(dir.join("input.csv")).unwrap();
    let head: Vec<&str> = all.lines().take(rows + 1).collect();
    std::fs::write(&input, head.join("\n") + "\n").unwrap();
    let summary = dir.join("summary.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_batch"))
        .args([
            "run",
            input.to_str().unwrap(),
            "-q",
            "--no-cache",
            "--restart",
        ])
        .args(["--prompt", "Describe {{ image(photo) }}"])
        .arg(format!("--mock=latency-ms={latency_ms}"))
        .args(["--concurrency", &concurrency.to_string()])
        .args(["-o", dir.join("out.csv").to_str().unwrap()])
        .args(["--summary-json", summary.to_str().unwrap()])
        .env_remove("OPENAI_API_KEY")
        .spawn()
        .expect("run batch");
    let started = Instant::now();
    let mut peak = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        peak = peak.max(vm_hwm(child.id()).unwrap_or(0));
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the run hangs"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "batch run failed: {status}");
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(s["ok"].as_u64(), Some(rows as u64), "every row ok");
    Measured {
        rate: s["rows_per_second"].as_f64().unwrap(),
        peak_kb: peak,
        wall: s["wall_seconds"].as_f64().unwrap(),
        p50_ms: s["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
    }
}

/// `VmHWM` (peak resident set, kB) of process `pid`.
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

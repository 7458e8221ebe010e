//! Issue 5's overhead comparison: the runner's requests per second against a raw HTTP load
//! generator (oha) sending the same request body at the same concurrency to the same
//! zero-latency mock, measured one after the other in the same run. The ratio is our distance
//! from what the machine can do.
//!
//! The machine is shared and noisy, so the two run in alternation for several rounds against
//! one mock, each round gives a ratio, and the median ratio is the result (with every round
//! printed, so the spread is visible).
//!
//! The runner runs with its default settings (response cache and dedup on; each round a new,
//! empty cache, so every answer is written to it and none is read from an earlier round), as a
//! user runs it. `BENCH_SETTINGS=bare` measures with `--no-cache --no-dedup` instead (what this
//! bench measured before issue 15), and `BENCH_SETTINGS=both` runs both each round, so the two
//! are compared against the same oha figure.
//!
//! Each line also gives the CPU time a request cost the client (oha's or the runner's own, user
//! plus system) and the mock, and the CPU time the host took from this machine's cores (steal):
//! when the host is busy, requests per second swing from round to round, CPU a request much less.
//!
//! Run: `cargo install oha --locked && cargo bench --bench overhead`
//! (env BENCH_ROWS, default 50000; BENCH_CONCURRENCY, default 64; BENCH_ROUNDS, default 5;
//! BENCH_SETTINGS, default `default`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn main() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (rows, concurrency) = (env("BENCH_ROWS", 50_000), env("BENCH_CONCURRENCY", 64));
    let rounds = env("BENCH_ROUNDS", 5).max(1);
    let variants: &[Variant] = match std::env::var("BENCH_SETTINGS").as_deref() {
        Ok("bare") => &[Variant::Bare],
        Ok("both") => &[Variant::Default, Variant::Bare],
        Ok("default") | Err(_) => &[Variant::Default],
        Ok(other) => panic!("BENCH_SETTINGS={other}: give default, bare or both"),
    };
    if Command::new("oha").arg("--version").output().is_err() {
        println!("overhead: oha is not installed; run `cargo install oha --locked` first");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let text = "The blender was fine, arrived in 3 days, would buy again.";
    let input = dir.path().join("input.csv");
    let mut w = csv::Writer::from_path(&input).expect("write input");
    w.write_record(["id", "review"]).unwrap();
    for i in 0..rows {
        // Distinct rows (identical ones would be sent once), each the same size as oha's body.
        w.write_record([format!("r{i}"), format!("{text} #{i:06}")])
            .unwrap();
    }
    w.flush().unwrap();
    let body = serde_json::json!({
        "model": "gpt-4.1-mini",
        "messages": [{"role": "user", "content": format!("Classify: {text} #000000")}],
    })
    .to_string();

    let mut mock = Command::new(env!("CARGO_BIN_EXE_batch"))
        .args(["mock", "--port", "0", "--latency-ms", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start batch mock");
    let mut url = String::new();
    BufReader::new(mock.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    let url = url.trim().to_string();

    let mock_pid = mock.id();
    let oha_round = || -> (f64, f64) {
        let oha = Command::new("oha")
            .args(["-n", &rows.to_string(), "-c", &concurrency.to_string()])
            .args([
                "-m",
                "POST",
                "-H",
                "content-type: application/json",
                "-d",
                &body,
            ])
            .args(["--no-tui", "--output-format", "json"])
            .arg(format!("{url}/chat/completions"))
            .output()
            .expect("run oha");
        let report: serde_json::Value =
            serde_json::from_slice(&oha.stdout).expect("oha's JSON report");
        let rps = report["summary"]["requestsPerSec"]
            .as_f64()
            .expect("requestsPerSec");
        let ok = report["summary"]["successRate"]
            .as_f64()
            .unwrap_or(f64::NAN);
        (rps, ok)
    };
    let batch_round = |variant: Variant| -> f64 {
        let summary = dir.path().join("summary.json");
        let out = dir.path().join("out.csv");
        // A new run each round, not a resume of the last one, with a new, empty cache.
        let _ = std::fs::remove_file(out.with_extension("sqlite"));
        let cache = dir.path().join("cache");
        let _ = std::fs::remove_dir_all(&cache);
        let status = Command::new(env!("CARGO_BIN_EXE_batch"))
            .args([
                "run",
                input.to_str().unwrap(),
                "--prompt",
                "Classify: {{ review }}",
                "-q",
            ])
            .args([
                "--base-url",
                &url,
                "--concurrency",
                &concurrency.to_string(),
            ])
            .args(variant.flags())
            .env("BATCH_CACHE_DIR", &cache)
            .args(["-o", out.to_str().unwrap()])
            .args(["--summary-json", summary.to_str().unwrap()])
            .env_remove("OPENAI_API_KEY")
            .status()
            .expect("run batch");
        assert!(status.success(), "batch run failed: {status}");
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
        assert_eq!(s["ok"].as_u64(), Some(rows as u64), "every row answered");
        s["rows_per_second"].as_f64().unwrap()
    };

    // The mock's tokenizer is built by its first request: not part of either measurement.
    Command::new("oha")
        .args([
            "-n", "100", "-c", "4", "-m", "POST", "-d", &body, "--no-tui",
        ])
        .args(["-H", "content-type: application/json"])
        .arg(format!("{url}/chat/completions"))
        .output()
        .expect("warm up the mock");
    println!("overhead: {rows} requests at concurrency {concurrency} on a zero-latency mock");
    // Per variant: each round's (ratio, oha, batch).
    let mut results = vec![Vec::new(); variants.len()];
    for round in 1..=rounds {
        let before = Cpu::now(mock_pid);
        let (oha_rps, oha_ok) = oha_round();
        let cost = before.since(mock_pid, rows);
        println!(
            "round {round}: oha {oha_rps:8.0} requests/s (success rate {oha_ok:.3})         {cost}"
        );
        for (variant, results) in variants.iter().zip(&mut results) {
            let before = Cpu::now(mock_pid);
            let batch_rps = batch_round(*variant);
            let cost = before.since(mock_pid, rows);
            let ratio = batch_rps / oha_rps;
            println!(
                "         batch {batch_rps:8.0} rows/s, {:<22} {:5.1}%  {cost}",
                variant.name(),
                100.0 * ratio
            );
            results.push((ratio, oha_rps, batch_rps));
        }
    }
    let _ = mock.kill();
    let _ = mock.wait();
    for (variant, mut results) in variants.iter().zip(results) {
        results.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (ratio, oha_rps, batch_rps) = results[results.len() / 2];
        let (lo, hi) = (results[0].0, results[results.len() - 1].0);
        println!("median round of {rounds}, {}:", variant.name());
        println!("oha:   {oha_rps:9.0} requests/s");
        println!(
            "batch: {batch_rps:9.0} rows/s end to end (pre-flight, journal, results file included)"
        );
        println!(
            "ratio: {:.1}% of oha (rounds from {:.1}% to {:.1}%; target: at least 80%)",
            100.0 * ratio,
            100.0 * lo,
            100.0 * hi
        );
    }
}

/// The runner's settings measured.
#[derive(Clone, Copy)]
enum Variant {
    /// As a user runs it: response cache and dedup on.
    Default,
    /// `--no-cache --no-dedup`.
    Bare,
}

impl Variant {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Variant::Default => &[],
            Variant::Bare => &["--no-cache", "--no-dedup"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Variant::Default => "default settings",
            Variant::Bare => "--no-cache --no-dedup",
        }
    }
}

/// CPU seconds so far: of the children waited for (oha, the runner; `getrusage`, Unix), of the
/// mock, and stolen from this machine by its host, all cores together (both from `/proc`, Linux).
/// A figure that cannot be read is NaN.
struct Cpu {
    children: f64,
    mock: f64,
    steal: f64,
}

impl Cpu {
    fn now(mock_pid: u32) -> Self {
        Cpu {
            children: children_cpu(),
            mock: proc_ticks(&format!("/proc/{mock_pid}/stat"), |f| {
                // After the command name in parentheses: utime and stime are fields 14 and 15.
                let rest = f.rsplit_once(')')?.1;
                let mut fields = rest.split_whitespace().skip(11);
                Some(fields.next()?.parse::<f64>().ok()? + fields.next()?.parse::<f64>().ok()?)
            }),
            steal: proc_ticks("/proc/stat", |f| {
                // The first line, "cpu  user nice system idle iowait irq softirq steal ...".
                f.lines().next()?.split_whitespace().nth(8)?.parse().ok()
            }),
        }
    }

    /// What the client and the mock spent a request since `self`, and the host's steal.
    fn since(&self, mock_pid: u32, requests: usize) -> String {
        let now = Cpu::now(mock_pid);
        let per = |a: f64, b: f64| 1e6 * (b - a) / requests as f64;
        format!(
            "CPU a request: client {:5.1} us, mock {:5.1} us; steal {:.1} CPU-s",
            per(self.children, now.children),
            per(self.mock, now.mock),
            now.steal - self.steal
        )
    }
}

fn children_cpu() -> f64 {
    #[cfg(unix)]
    {
        // SAFETY: getrusage only writes the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } == 0 {
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            return secs(usage.ru_utime) + secs(usage.ru_stime);
        }
    }
    f64::NAN
}

/// Clock ticks read from a `/proc` file, in seconds.
fn proc_ticks(path: &str, read: impl Fn(&str) -> Option<f64>) -> f64 {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        if let Some(ticks) = std::fs::read_to_string(path).ok().as_deref().and_then(read) {
            return ticks / hz;
        }
    }
    f64::NAN
}

//! Issue 17's vector output bench: 1,000,000 embeddings of 1,536 float32 (6.1 GB of floats)
//! written as Parquet through `VectorParquetWriter`, with the process's peak RSS (VmHWM from
//! /proc/self/status) against the 256 MB the issue allows; the writer streams row groups, so
//! the peak should not grow with the number of rows.
//!
//! In the same run, the same vectors are first dumped raw (little-endian floats through a
//! `BufWriter`, what `.npy` writing costs), so the Parquet time is also given as a ratio to
//! that floor on this machine. The vectors are generated in-process (xorshift), never held:
//! one vector is in memory at a time.
//!
//! Run: `cargo bench --bench vector_parquet`
//! (env BENCH_VECTORS, default 1000000; BENCH_DIMS, default 1536; BENCH_DIR, default the
//! system temp folder: it needs twice the floats' size free, each file is removed after).

use std::io::Write;
use std::time::Instant;

use batch::base::record::RowStatus;
use batch::engine::output::parquet::VectorParquetWriter;

/// Peak resident memory of this process so far, in bytes (Linux).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Fills `v` with pseudo-random floats in [-1, 1) (xorshift64*: cheap beside the writing).
fn fill(v: &mut [f32], state: &mut u64) {
    for x in v.iter_mut() {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        *x = (r >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (rows, dims) = (env("BENCH_VECTORS", 1_000_000), env("BENCH_DIMS", 1536));
    let dir = match std::env::var_os("BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let mut v = vec![0f32; dims];
    let start_rss = peak_rss().unwrap_or(0);

    // The floor: the same floats written raw.
    let raw_path = dir.path().join("vectors.f32");
    let started = Instant::now();
    let mut raw =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&raw_path).unwrap());
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..rows {
        fill(&mut v, &mut state);
        for x in &v {
            raw.write_all(&x.to_le_bytes()).unwrap();
        }
    }
    raw.into_inner().unwrap().sync_all().unwrap();
    let raw_secs = started.elapsed().as_secs_f64();
    let raw_bytes = std::fs::metadata(&raw_path).unwrap().len();
    std::fs::remove_file(&raw_path).unwrap();

    let path = dir.path().join("vectors.parquet");
    let started = Instant::now();
    let mut w = VectorParquetWriter::create(&path, None).expect("create");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..rows {
        fill(&mut v, &mut state);
        let id = format!("doc-{i}");
        w.push(i as u64 + 1, &id, RowStatus::Ok, None, Some(30), Some(&v))
            .expect("push");
    }
    w.finish().expect("finish");
    let secs = started.elapsed().as_secs_f64();
    let size = std::fs::metadata(&path).unwrap().len();
    let peak = peak_rss().unwrap_or(0);
    std::fs::remove_file(&path).unwrap();

    println!(
        "vector_parquet: {rows} vectors x {dims} float32 ({:.0} MB of floats)",
        mb(raw_bytes)
    );
    println!(
        "  raw dump:  {raw_secs:.1} s ({:.0} MB/s)",
        mb(raw_bytes) / raw_secs
    );
    println!(
        "  parquet:   {secs:.1} s ({:.0} rows/s, {:.0} MB/s), file {:.0} MB; {:.2}x the raw dump's time",
        rows as f64 / secs,
        mb(raw_bytes) / secs,
        mb(size),
        secs / raw_secs
    );
    println!(
        "  peak RSS:  {:.0} MB (VmHWM; {:.0} MB before writing) against a 256 MB budget: {}",
        mb(peak),
        mb(start_rss),
        if peak < 256 * 1024 * 1024 {
            "within"
        } else {
            "OVER"
        }
    );
}

//! Criterion benchmarks of the per-row hot paths, in process: reading the input CSV, writing
//! the results CSV, rendering the prompt templates, counting tokens, committing outcomes to the
//! run's journal (the state file), and the whole runner on an
//! instant mock (latency 0), reported per row, which is the runner's own cost of one row:
//! scheduling, limiter, HTTP to the in-process mock and back, journal and results.
//!
//! Run: `cargo bench --bench hot_paths` (add a name to run one group: `-- runner`).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use batch::base::record::RowResult;
use batch::base::record::RowStatus;
use batch::base::usage::Usage;
use batch::commands::cli::RunArgs;
use batch::engine::input::{InputFile, Row};
use batch::engine::output::ResultsWriter;
use batch::engine::store::{AttemptRecord, Finished, RunSettings, Store};
use batch::engine::template::PromptSource;
use batch::engine::template::Prompts;
use batch::run::settings::{CacheMode, Resume, RunConfig};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const INPUT_ROWS: usize = 10_000;
const RUNNER_ROWS: usize = 2_000;
const JOURNAL_ROWS: usize = 50_000;
const PROMPT: &str = "Classify the sentiment of this customer review of {{ product }} as exactly \
one word: positive, negative or neutral.\n\nReview: {{ review }}";
const SYSTEM: &str = "You are a careful annotator. Answer with a single lowercase word.";
const MODEL: &str = "gpt-4.1-mini";

/// `id,product,rating,review` rows shaped like samples/reviews.csv, some quoted.
fn write_input(dir: &Path, rows: usize) -> PathBuf {
    let path = dir.join(format!("input-{rows}.csv"));
    let mut w = csv::Writer::from_path(&path).expect("write input");
    w.write_record(["id", "product", "rating", "review"])
        .unwrap();
    let products = [
        "Cast Iron Skillet",
        "Electric Kettle",
        "Desk Lamp",
        "Yoga Mat",
    ];
    for i in 0..rows {
        let review = format!(
            "Review {i}: it arrived in {} days, works as described, and \"the finish\", so far, \
             is fine. Would {} again.",
            i % 9,
            if i % 3 == 0 { "not buy" } else { "buy" }
        );
        w.write_record([
            format!("r{i:05}"),
            products[i % products.len()].to_string(),
            (1 + i % 5).to_string(),
            review,
        ])
        .unwrap();
    }
    w.flush().unwrap();
    path
}

fn all_rows(input: &InputFile) -> Vec<Row> {
    input
        .rows()
        .expect("rows")
        .map(|r| r.expect("row"))
        .collect()
}

fn csv_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let input = InputFile::open(&write_input(dir.path(), INPUT_ROWS), None).unwrap();
    let mut g = c.benchmark_group("csv_read");
    g.throughput(Throughput::Elements(INPUT_ROWS as u64));
    g.bench_function("input_rows_10k", |b| {
        b.iter(|| {
            let n = input
                .rows()
                .unwrap()
                .map(|r| black_box(r.unwrap()).record.len())
                .sum::<usize>();
            black_box(n)
        })
    });
    g.finish();
}

fn csv_write(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let input = InputFile::open(&write_input(dir.path(), INPUT_ROWS), None).unwrap();
    let rows = all_rows(&input);
    let results: Vec<RowResult> = rows
        .iter()
        .map(|r| RowResult {
            status: RowStatus::Ok,
            output: "positive".into(),
            error: String::new(),
            attempts: 1,
            latency: Some(Duration::from_millis(412)),
            usage: Some(Usage {
                prompt_tokens: 61,
                completion_tokens: 1,
                ..Default::default()
            }),
            cost: Some(0.0000260),
            model: "gpt-4.1-mini-2025-04-14".into(),
            finish_reason: "stop".into(),
            // Any other field as for a row not sent.
            ..RowResult::skipped(r.seq, r.id.clone(), MODEL, "")
        })
        .collect();
    let out = dir.path().join("out.results.csv");
    let mut g = c.benchmark_group("csv_write");
    g.throughput(Throughput::Elements(INPUT_ROWS as u64));
    g.bench_function("results_writer_10k", |b| {
        b.iter(|| {
            let mut w = ResultsWriter::create(&out, &input.headers, true).unwrap();
            for (row, result) in rows.iter().zip(&results) {
                w.write(&row.record, result).unwrap();
            }
            black_box(w.finish().unwrap())
        })
    });
    g.finish();
}

fn template(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let input = InputFile::open(&write_input(dir.path(), 1_000), None).unwrap();
    let rows = all_rows(&input);
    let prompts =
        Prompts::new(&PromptSource::Template(PROMPT.into()), Some(SYSTEM), &input).unwrap();
    let mut g = c.benchmark_group("template");
    g.throughput(Throughput::Elements(rows.len() as u64));
    g.bench_function("render_1k_rows", |b| {
        b.iter(|| {
            for row in &rows {
                black_box(prompts.render(&input, row).unwrap());
            }
        })
    });
    g.finish();
}

fn tokens(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let input = InputFile::open(&write_input(dir.path(), 1_000), None).unwrap();
    let prompts =
        Prompts::new(&PromptSource::Template(PROMPT.into()), Some(SYSTEM), &input).unwrap();
    let rendered: Vec<_> = all_rows(&input)
        .iter()
        .map(|r| prompts.render(&input, r).unwrap())
        .collect();
    // Build the tokenizer outside the measurement.
    batch::engine::tokens::count(MODEL, "warm up");
    let mut g = c.benchmark_group("tokens");
    g.throughput(Throughput::Elements(rendered.len() as u64));
    g.bench_function("count_chat_1k_rows", |b| {
        b.iter(|| {
            for r in &rendered {
                black_box(batch::engine::tokens::count_chat(
                    MODEL,
                    r.system.as_deref(),
                    &r.user,
                ));
            }
        })
    });
    g.finish();
}

/// The whole runner over 2,000 rows on the embedded mock with no latency, reported per row.
fn runner(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), RUNNER_ROWS);
    let mut cfg = RunConfig::resolve(RunArgs {
        input: input.clone(),
        output: Some(dir.path().join("runner.results.csv")),
        state: Some(dir.path().join("runner.sqlite")),
        prompt: Some(PROMPT.into()),
        system: Some(SYSTEM.into()),
        mock: Some("latency-ms=0".into()),
        concurrency: Some("64".parse().unwrap()),
        quiet: true,
        ..Default::default()
    })
    .expect("config");
    cfg.resume = Resume::Restart;
    // Every iteration sends the same rows: from the response cache they would cost nothing.
    cfg.cache = CacheMode::Off;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("runner");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(15));
    // One "element" is one row: the time shown is the runner's cost per row.
    g.throughput(Throughput::Elements(1));
    g.bench_function("per_row_2k_rows_instant_mock", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters.div_ceil(RUNNER_ROWS as u64) {
                let cfg = cfg.clone();
                let start = Instant::now();
                let (_, summary) = rt
                    .block_on(batch::run::runner::run_to_summary(cfg))
                    .expect("runner");
                total += start.elapsed();
                assert_eq!(summary.expect("summary").ok, RUNNER_ROWS as u64);
            }
            // Each run is RUNNER_ROWS iterations of one row; scale to the iterations asked for.
            let runs = iters.div_ceil(RUNNER_ROWS as u64);
            total.mul_f64(iters as f64 / (runs * RUNNER_ROWS as u64) as f64)
        })
    });
    g.finish();
}

/// A finished one-attempt row shaped like the zero-latency overhead run's.
fn finished_row(seq: u64) -> Finished {
    let text = format!(
        "mock answer to \"Classify: The blender was fine, arrived in 3 days, would buy again. \
         #{seq:06}\""
    );
    Finished {
        result: RowResult {
            seq,
            id: format!("r{seq}"),
            status: RowStatus::Ok,
            output: text,
            error: String::new(),
            attempts: 1,
            throttled: 0,
            latency: Some(Duration::from_millis(1)),
            usage: Some(Usage {
                prompt_tokens: 28,
                completion_tokens: 26,
                ..Default::default()
            }),
            cost: Some(5.28e-5),
            model: MODEL.into(),
            finish_reason: "stop".into(),
            cached: false,
            saved_usd: None,
        },
        request_hash: format!(
            "{:064x}",
            u128::from(seq).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ),
        attempts: vec![AttemptRecord {
            attempt: 1,
            started_at: std::time::SystemTime::now(),
            outcome: "ok",
            http_status: Some(200),
            error: None,
            latency: Duration::from_millis(1),
            request_id: Some(format!("req_mock_{seq}")),
            charged_usd: Some(5.28e-5),
        }],
    }
}

/// The journal as the runner drives it: 50,000 outcomes (enough for WAL checkpoints) committed
/// in groups of 16 (the average group on the zero-latency mock at concurrency 64), into a new
/// state file each iteration.
fn journal(c: &mut Criterion) {
    const GROUP: usize = 16;
    let rows: Vec<Finished> = (0..JOURNAL_ROWS as u64).map(finished_row).collect();
    let settings = RunSettings {
        input: "input.csv".into(),
        endpoint: "mock".into(),
        model: MODEL.into(),
        prompt: PROMPT.into(),
        system: None,
        max_tokens: None,
        temperature: None,
    };
    let mut g = c.benchmark_group("journal");
    g.sample_size(10);
    g.throughput(Throughput::Elements(JOURNAL_ROWS as u64));
    g.bench_function("record_50k_rows_in_groups_of_16", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().unwrap();
                let mut store = Store::open(&dir.path().join("state.sqlite")).unwrap();
                store.start_run(&settings, JOURNAL_ROWS as u64).unwrap();
                let start = Instant::now();
                for group in rows.chunks(GROUP) {
                    store.record(group).unwrap();
                }
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(
    benches, csv_read, csv_write, template, tokens, journal, runner
);
criterion_main!(benches);

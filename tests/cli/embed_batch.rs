//! `batch embed --via batch` end to end: the real binary against the mock's OpenAI Batch API
//! for `/v1/embeddings` (in process with `--mock`, or a `batch mock` child process when the
//! job must outlive the command). The vectors must be those of the live `batch embed` at half
//! the price; a job over OpenAI's 50,000-texts-a-batch cap becomes several batches; a killed
//! submitter's job is finished by `batch collect`; a refused text fails its line's rows with the
//! provider's reason and `--resubmit-failed` frees its neighbours.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arrow_array::{Array, FixedSizeListArray, Float32Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use batch::engine::mock::embeddings::vector;

use crate::util::{self, MockProcess, TestDir, assert_code, show, stderr, stdout};

const MODEL: &str = "text-embedding-3-large";
const DIMS: usize = 8;

/// `id,text` rows, all texts different and of about 30 tokens; `bad` rows carry the mock's
/// refusal marker.
fn texts_csv(n: usize, bad: &[usize]) -> (String, Vec<String>) {
    let texts: Vec<String> = (0..n)
        .map(|i| {
            if bad.contains(&i) {
                format!("row {i} BAD_EMBEDDING")
            } else {
                format!(
                    "row {i} tells a short story about topic {} and the weather on day {} of \
                     the long and quiet summer by the sea",
                    i * 7 % 13,
                    i % 31
                )
            }
        })
        .collect();
    let mut csv = String::from("id,text\n");
    for (i, t) in texts.iter().enumerate() {
        csv.push_str(&format!("r{i},{t}\n"));
    }
    (csv, texts)
}

fn embed<'a>(endpoint: &[&'a str], out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "embed",
        "in.csv",
        "--column",
        "text",
        "--model",
        MODEL,
        "--dimensions",
        "8",
        "-o",
        out,
    ];
    args.extend_from_slice(endpoint);
    args.extend_from_slice(extra);
    args
}

/// A JSON Lines vectors file by id.
fn jsonl(dir: &TestDir, name: &str) -> HashMap<String, Value> {
    dir.read(name)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            (v["id"].as_str().expect("id").to_string(), v)
        })
        .collect()
}

/// A Parquet vectors file read back: (id, status, error, vector) per row, in file order.
type ParquetRow = (String, String, Option<String>, Option<Vec<f32>>);

fn parquet_rows(dir: &TestDir, name: &str) -> Vec<ParquetRow> {
    let file = std::fs::File::open(dir.join(name)).expect("the vectors file");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let schema = b.schema();
        let col = |n: &str| b.column(schema.index_of(n).unwrap()).clone();
        let (ids, status, error, emb) = (col("id"), col("status"), col("error"), col("embedding"));
        let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
        let status = status.as_any().downcast_ref::<StringArray>().unwrap();
        let error = error.as_any().downcast_ref::<StringArray>().unwrap();
        let emb = emb.as_any().downcast_ref::<FixedSizeListArray>().unwrap();
        for i in 0..b.num_rows() {
            let v = (!emb.is_null(i)).then(|| {
                let v = emb.value(i);
                v.as_any()
                    .downcast_ref::<Float32Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            });
            let e = (!error.is_null(i)).then(|| error.value(i).to_string());
            rows.push((ids.value(i).into(), status.value(i).into(), e, v));
        }
    }
    rows
}

fn summary(dir: &TestDir, name: &str) -> Value {
    serde_json::from_str(&dir.read(name)).expect("the summary is JSON")
}

#[test]
fn via_batch_writes_the_live_vectors_at_half_the_cost() {
    let dir = TestDir::new();
    let (csv, texts) = texts_csv(120, &[]);
    dir.create("in.csv", &csv);
    let mock = ["--mock"];
    let live = util::run(
        &dir,
        embed(
            &mock,
            "live.parquet",
            &["--no-cache", "--summary-json", "live.json"],
        ),
    );
    assert_code(&live, 0);
    let via = util::run(
        &dir,
        embed(
            &mock,
            "batch.parquet",
            &["--via", "batch", "--summary-json", "batch.json"],
        ),
    );
    assert_code(&via, 0);
    assert!(
        stderr(&via).contains("OpenAI Batch API for /v1/embeddings"),
        "{}",
        show(&via)
    );
    let (a, b) = (
        parquet_rows(&dir, "live.parquet"),
        parquet_rows(&dir, "batch.parquet"),
    );
    assert_eq!(a.len(), 120);
    assert_eq!(a, b, "the same rows, statuses and vectors");
    for (i, (id, status, _, v)) in b.iter().enumerate() {
        assert_eq!((id.as_str(), status.as_str()), (&*format!("r{i}"), "ok"));
        assert_eq!(v.as_deref(), Some(&vector(&texts[i], DIMS)[..]), "row {i}");
    }
    let (live, batch) = (summary(&dir, "live.json"), summary(&dir, "batch.json"));
    assert_eq!(live["prompt_tokens"], batch["prompt_tokens"]);
    let (l, h) = (
        live["cost_usd"].as_f64().unwrap(),
        batch["cost_usd"].as_f64().unwrap(),
    );
    assert!(
        l > 0.0 && (h - l / 2.0).abs() < 1e-6 * l.max(1e-6),
        "{l} {h}"
    );
}

#[test]
fn a_job_over_fifty_thousand_texts_becomes_several_batches() {
    let dir = TestDir::new();
    // Short, distinct texts: 60,000 of them are over OpenAI's 50,000 texts a batch.
    let mut csv = String::from("id,text\n");
    for i in 0..60_000 {
        csv.push_str(&format!("r{i},w{i}\n"));
    }
    dir.create("in.csv", &csv);
    let mock = MockProcess::start(&[]);
    let out = util::run(
        &dir,
        [
            "embed",
            "in.csv",
            "--column",
            "text",
            "--dimensions",
            "2",
            "--base-url",
            &mock.url,
            "--via",
            "batch",
            "-o",
            "out.npy",
        ],
    );
    assert_code(&out, 0);
    let st: Value = serde_json::from_str(&dir.read("out.batch.json")).unwrap();
    let batches = st["batches"].as_array().unwrap();
    let inputs: Vec<u64> = batches
        .iter()
        .map(|b| b["inputs"].as_u64().unwrap())
        .collect();
    assert_eq!(batches.len(), 2, "{inputs:?}");
    assert!(inputs.iter().all(|n| *n <= 50_000), "{inputs:?}");
    assert_eq!(inputs.iter().sum::<u64>(), 60_000);
    let stats = mock.get_json("/stats/batches");
    assert_eq!(stats["batches"], 2, "{stats}");
    assert_eq!(
        stats["refused"], 0,
        "the mock refuses a batch over the cap: {stats}"
    );
    // Every row has its vector, in input order.
    let ids = dir.read("out.ids.csv");
    assert_eq!(ids.lines().filter(|l| l.contains(",ok,")).count(), 60_000);
    let npy = dir.read_bytes("out.npy");
    let header = u16::from_le_bytes([npy[8], npy[9]]) as usize + 10;
    let floats: Vec<f32> = npy[header..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(floats.len(), 120_000);
    for i in [0usize, 49_999, 50_000, 59_999] {
        assert_eq!(
            &floats[i * 2..i * 2 + 2],
            vector(&format!("w{i}"), 2),
            "row {i}"
        );
    }
}

#[test]
fn killed_after_submit_collect_writes_the_vectors() {
    let dir = TestDir::new();
    let (csv, texts) = texts_csv(40, &[]);
    dir.create("in.csv", &csv);
    let mock = MockProcess::start(&["--batch-latency-ms", "1500"]);
    let endpoint = ["--base-url", &mock.url];
    let mut child = util::cmd(
        &dir,
        embed(
            &endpoint,
            "out.jsonl",
            &["--via", "batch", "--max-inputs-per-request", "8"],
        ),
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let created = loop {
        let st = std::fs::read_to_string(dir.join("out.batch.json")).unwrap_or_default();
        if st.contains("\"created\"") {
            break true;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(created, "the batch was never created");
    assert!(!dir.join("out.jsonl").exists(), "killed before the vectors");

    let status = util::run(&dir, ["status", "out.batch.json"]);
    assert_code(&status, 0);
    assert!(stdout(&status).contains("batch_mock"), "{}", show(&status));

    let out = util::run(
        &dir,
        ["collect", "out.batch.json", "--wait", "--poll-max", "1"],
    );
    assert_code(&out, 0);
    let rows = jsonl(&dir, "out.jsonl");
    assert_eq!(rows.len(), 40);
    for (i, t) in texts.iter().enumerate() {
        let row = &rows[&format!("r{i}")];
        assert_eq!(row["status"], "ok", "{row}");
        let got: Vec<f32> = row["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got, vector(t, DIMS), "row {i}");
    }
    assert_eq!(
        mock.get_json("/stats/batches")["batches"],
        1,
        "created once"
    );
}

#[test]
fn a_refused_text_fails_its_lines_rows_with_the_reason_and_resubmit_frees_the_others() {
    let dir = TestDir::new();
    let (csv, texts) = texts_csv(24, &[5]);
    dir.create("in.csv", &csv);
    let mock = MockProcess::start(&[]);
    let endpoint = ["--base-url", &mock.url];
    // Lines of 8 texts: rows 0-7 share the bad row's line.
    let out = util::run(
        &dir,
        embed(
            &endpoint,
            "out.jsonl",
            &["--via", "batch", "--max-inputs-per-request", "8"],
        ),
    );
    assert_code(&out, 1);
    let rows = jsonl(&dir, "out.jsonl");
    for i in 0..24 {
        let row = &rows[&format!("r{i}")];
        if i < 8 {
            assert_eq!(row["status"], "failed", "{row}");
            let error = row["error"].as_str().unwrap();
            assert!(
                error.contains("HTTP 400") && error.contains("'$.input[5]' is invalid"),
                "{error}"
            );
            assert!(error.contains("--resubmit-failed"), "{error}");
        } else {
            assert_eq!(row["status"], "ok", "{row}");
        }
    }
    assert!(stderr(&out).contains("16 ok, 8 failed"), "{}", show(&out));

    let again = util::run(
        &dir,
        [
            "collect",
            "out.batch.json",
            "--resubmit-failed",
            "--wait",
            "--poll-max",
            "1",
        ],
    );
    assert_code(&again, 1);
    let rows = jsonl(&dir, "out.jsonl");
    for (i, t) in texts.iter().enumerate() {
        let row = &rows[&format!("r{i}")];
        if i == 5 {
            assert_eq!(row["status"], "failed", "{row}");
            assert!(
                row["error"]
                    .as_str()
                    .unwrap()
                    .contains("'$.input[0]' is invalid")
            );
            continue;
        }
        assert_eq!(row["status"], "ok", "{row}");
        let got: Vec<f32> = row["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got, vector(t, DIMS), "row {i}");
    }
    assert!(
        stderr(&again).contains("23 ok, 1 failed"),
        "{}",
        show(&again)
    );
    // Review finding: the text refused alone was sent again on every --resubmit-failed, and
    // the hint to do so printed forever.
    let third = util::run(&dir, ["collect", "out.batch.json"]);
    assert_code(&third, 1);
    assert!(
        !stderr(&third).contains("--resubmit-failed"),
        "{}",
        show(&third)
    );
    let fourth = util::run(&dir, ["collect", "out.batch.json", "--resubmit-failed"]);
    assert_code(&fourth, 1);
    assert!(
        stderr(&fourth).contains("Nothing to resubmit"),
        "{}",
        show(&fourth)
    );
    assert_eq!(
        mock.get_json("/stats/batches")["batches"],
        2,
        "the refused text was not sent again"
    );
}

#[test]
fn dry_run_shows_requests_batches_tokens_and_the_half_price_and_writes_nothing() {
    let dir = TestDir::new();
    let (mut csv, texts) = texts_csv(50, &[]);
    csv.push_str("r50,\n");
    // The text of row 49 again, in the same request: sent once, so its tokens count once.
    csv.push_str(&format!("r51,{}\n", texts[49]));
    dir.create("in.csv", &csv);
    let out = util::run(
        &dir,
        embed(
            &["--mock"],
            "out.jsonl",
            &[
                "--via",
                "batch",
                "--dry-run",
                "--max-inputs-per-request",
                "16",
            ],
        ),
    );
    assert_code(&out, 0);
    let report = stdout(&out);
    let tokens: u64 = texts
        .iter()
        .map(|t| u64::from(batch::engine::tokens::count(MODEL, t)))
        .sum();
    assert!(report.contains("Rows         52 in"), "{report}");
    assert!(report.contains("1 row empty or too long"), "{report}");
    assert!(report.contains("Requests     4 of 50 texts"), "{report}");
    assert!(
        report.contains("Batches      1 for the OpenAI Batch API"),
        "{report}"
    );
    assert!(
        report.contains(&format!("Tokens       {tokens}")),
        "{report}"
    );
    let p = batch::engine::pricing::PriceTable::embedded()
        .lookup(MODEL)
        .unwrap();
    let (full, half) = (p.estimate(tokens, 0), p.estimate(tokens, 0) / 2.0);
    assert!(
        report.contains(&format!(
            "{} with `batch embed`, {} via batch (50%)",
            batch::base::human::usd_micro(full),
            batch::base::human::usd_micro(half)
        )),
        "{report}"
    );
    assert_eq!(dir.files(), ["in.csv"], "nothing written");
}

#[test]
fn max_cost_is_checked_against_the_estimate_before_anything_is_submitted() {
    let dir = TestDir::new();
    let (csv, _) = texts_csv(200, &[]);
    dir.create("in.csv", &csv);
    let mock = MockProcess::start(&[]);
    let endpoint = ["--base-url", &mock.url];
    let out = util::run(
        &dir,
        embed(
            &endpoint,
            "out.jsonl",
            &["--via", "batch", "--max-cost", "0.0001"],
        ),
    );
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("more than --max-cost")
            && stderr(&out).contains("nothing was submitted"),
        "{}",
        show(&out)
    );
    assert_eq!(
        mock.get_json("/stats/batches")["files"],
        0,
        "nothing uploaded"
    );
    assert!(!dir.join("out.batch.json").exists());
    assert!(!dir.join("out.batch-files").exists());
    // Within the cap (the batch price is half the live one), it goes through.
    let out = util::run(
        &dir,
        embed(
            &endpoint,
            "out.jsonl",
            &["--via", "batch", "--max-cost", "0.01"],
        ),
    );
    assert_code(&out, 0);
}

//! Parquet in and out, end to end (issue #17): typed round trips through a run on the mock,
//! CSV to Parquet and back, bad files, files of several row groups, the Batch API and bench with
//! a Parquet input, and the check by a reader other than ours (`tests/parquet_check/`).

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMillisecondType};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, PrimitiveArray, RecordBatch,
    StringArray,
};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;

use crate::util::{self, MockProcess, TestDir, assert_code, field, mock_answer, run, show, stderr};

/// Writes `batch` to `name` in `dir`, in row groups of `group_rows`.
fn write_parquet(dir: &TestDir, name: &str, batch: &RecordBatch, group_rows: usize) {
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(group_rows))
        .build();
    let file = std::fs::File::create(dir.join(name)).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// Reads a whole Parquet file, and its number of row groups.
fn read_parquet(path: &Path) -> (RecordBatch, usize) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let (schema, groups) = (
        builder.schema().clone(),
        builder.metadata().num_row_groups(),
    );
    let batches: Vec<RecordBatch> = builder.build().unwrap().map(Result::unwrap).collect();
    let all = arrow_select::concat::concat_batches(&schema, &batches).unwrap();
    (all, groups)
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a ArrayRef {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name:?} in {:?}", batch.schema()))
}

fn text(batch: &RecordBatch, name: &str, row: usize) -> Option<String> {
    let c = column(batch, name).as_string::<i32>();
    (!c.is_null(row)).then(|| c.value(row).to_string())
}

/// 2024-05-01T12:00:00Z in milliseconds.
const NOON: i64 = 1_714_564_800_000;

/// Four rows: `id` int64, `text` (unicode, a null), `n` float64 (a null), `ok` bool, `at`
/// timestamp(ms, UTC).
fn typed_rows() -> RecordBatch {
    let at = PrimitiveArray::<TimestampMillisecondType>::from(vec![NOON, NOON + 1000, NOON, NOON]);
    RecordBatch::try_from_iter(vec![
        (
            "id",
            Arc::new(Int64Array::from(vec![10, 20, 30, 40])) as ArrayRef,
        ),
        (
            "text",
            Arc::new(StringArray::from(vec![
                Some("héllo wörld 世界 🎉"),
                Some("second, with \"quotes\""),
                None,
                Some("fourth"),
            ])),
        ),
        (
            "n",
            Arc::new(Float64Array::from(vec![
                Some(1.5),
                None,
                Some(-3.0),
                Some(1e6),
            ])),
        ),
        (
            "ok",
            Arc::new(BooleanArray::from(vec![true, false, true, false])),
        ),
        ("at", Arc::new(at.with_timezone("UTC"))),
    ])
    .unwrap()
}

const PROMPT: &str = "{{ text }} / {{ n }} / {{ ok }} / {{ at }}";

/// The prompt `PROMPT` renders for row `i` of [`typed_rows`].
fn prompt_of(i: usize) -> String {
    [
        "héllo wörld 世界 🎉 / 1.5 / true / 2024-05-01T12:00:00Z",
        "second, with \"quotes\" /  / false / 2024-05-01T12:00:01Z",
        " / -3.0 / true / 2024-05-01T12:00:00Z",
        "fourth / 1000000.0 / false / 2024-05-01T12:00:00Z",
    ][i]
        .to_string()
}

#[test]
fn parquet_in_gives_typed_parquet_results_keeping_input_types_nulls_and_unicode() {
    let dir = TestDir::new();
    let input = typed_rows();
    write_parquet(&dir, "in.parquet", &input, 2);
    let out = run(&dir, ["run", "in.parquet", "--prompt", PROMPT, "--mock"]);
    assert_code(&out, 0);
    let (res, _) = read_parquet(&dir.join("in.results.parquet"));
    assert_eq!(res.num_rows(), 4);
    // The input's columns come back with their types and values (a null stays null).
    for name in ["id", "n", "ok", "at"] {
        assert_eq!(column(&res, name), column(&input, name), "{name}");
    }
    let at = res
        .schema()
        .field_with_name("at")
        .unwrap()
        .data_type()
        .clone();
    assert_eq!(
        at,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
    );
    assert_eq!(
        text(&res, "text", 0).as_deref(),
        Some("héllo wörld 世界 🎉")
    );
    assert_eq!(text(&res, "text", 2), None);
    // The prompt saw the cells as text; each answer quotes its prompt.
    for i in 0..4 {
        assert_eq!(text(&res, "status", i).as_deref(), Some("ok"));
        assert_eq!(text(&res, "output", i), Some(mock_answer(&prompt_of(i))));
        assert_eq!(text(&res, "error", i), None, "no error is null");
    }
    let typed = |name: &str| {
        res.schema()
            .field_with_name(name)
            .unwrap()
            .data_type()
            .clone()
    };
    for name in [
        "attempts",
        "latency_ms",
        "prompt_tokens",
        "completion_tokens",
    ] {
        assert_eq!(typed(name), DataType::Int64, "{name}");
    }
    assert_eq!(typed("cost_usd"), DataType::Float64);
    assert_eq!(typed("cached"), DataType::Boolean);
    let prompt_tokens = column(&res, "prompt_tokens").as_primitive::<Int64Type>();
    assert!(prompt_tokens.values().iter().all(|t| *t > 0));
    let cost = column(&res, "cost_usd").as_primitive::<Float64Type>();
    assert!(cost.values().iter().all(|c| *c > 0.0), "{cost:?}");
    assert_eq!(
        column(&res, "attempts")
            .as_primitive::<Int64Type>()
            .value(0),
        1
    );
    assert_eq!(
        dir.files(),
        ["in.parquet", "in.results.parquet", "in.results.sqlite"]
    );
}

/// A Parquet file with columns and no rows is refused like a CSV with only a header (exit 2,
/// nothing written); that Parquet results of no rows are still a valid file with every column
/// is shown by the writer's unit tests (`engine::output::parquet`).
#[test]
fn a_parquet_input_with_no_rows_is_refused_like_a_header_only_csv() {
    let dir = TestDir::new();
    write_parquet(&dir, "in.parquet", &typed_rows().slice(0, 0), 10);
    let out = run(&dir, ["run", "in.parquet", "--prompt", PROMPT, "--mock"]);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("in.parquet has a header but no rows"),
        "{}",
        show(&out)
    );
    assert_eq!(dir.files(), ["in.parquet"]);
}

#[test]
fn csv_in_parquet_out_and_back_to_csv_hold_the_same_content() {
    let dir = TestDir::new();
    dir.create("in.csv", "id,text\na,first\nb,\"with, comma\"\nc,ünïcödé\n");
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ text }}",
            "--mock",
            "-o",
            "out.parquet",
        ],
    );
    assert_code(&out, 0);
    let (res, _) = read_parquet(&dir.join("out.parquet"));
    // A CSV's columns are text; the results' numbers are numbers.
    assert_eq!(res.schema().field(0).data_type(), &DataType::Utf8);
    assert_eq!(text(&res, "text", 1).as_deref(), Some("with, comma"));
    let csv_rows = {
        let out = run(
            &dir,
            [
                "run",
                "in.csv",
                "--prompt",
                "{{ text }}",
                "--mock",
                "-o",
                "out.csv",
            ],
        );
        assert_code(&out, 0);
        dir.results("out.csv")
    };
    for (i, row) in csv_rows.iter().enumerate() {
        for col in ["id", "text", "output", "status", "prompt_tokens"] {
            let parquet_cell = match col {
                "prompt_tokens" => column(&res, col)
                    .as_primitive::<Int64Type>()
                    .value(i)
                    .to_string(),
                _ => text(&res, col, i).unwrap_or_default(),
            };
            assert_eq!(field(row, col), parquet_cell, "row {i}, {col}");
        }
    }

    // Parquet in, CSV out: the cells as the prompt saw them.
    write_parquet(&dir, "typed.parquet", &typed_rows(), 3);
    let out = run(
        &dir,
        [
            "run",
            "typed.parquet",
            "--prompt",
            PROMPT,
            "--mock",
            "-o",
            "typed.csv",
        ],
    );
    assert_code(&out, 0);
    let rows = dir.results("typed.csv");
    assert_eq!(rows.len(), 4);
    assert_eq!(field(&rows[0], "id"), "10");
    assert_eq!(field(&rows[0], "at"), "2024-05-01T12:00:00Z");
    assert_eq!(field(&rows[1], "n"), "");
    assert_eq!(field(&rows[3], "ok"), "false");
    assert_eq!(field(&rows[3], "output"), mock_answer(&prompt_of(3)));
}

#[test]
fn parquet_in_jsonl_out_gives_numbers_and_booleans_their_json_types() {
    let dir = TestDir::new();
    write_parquet(&dir, "in.parquet", &typed_rows(), 10);
    let out = run(
        &dir,
        [
            "run",
            "in.parquet",
            "--prompt",
            PROMPT,
            "--mock",
            "-o",
            "out.jsonl",
        ],
    );
    assert_code(&out, 0);
    let rows: Vec<serde_json::Value> = dir
        .read("out.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows[0]["id"], serde_json::json!(10));
    assert_eq!(rows[0]["n"], serde_json::json!(1.5));
    assert_eq!(rows[0]["ok"], serde_json::json!(true));
    assert_eq!(rows[0]["at"], serde_json::json!("2024-05-01T12:00:00Z"));
    assert_eq!(rows[1]["n"], serde_json::Value::Null);
}

#[test]
fn a_file_that_is_not_parquet_or_is_cut_short_exits_2_naming_it_and_writes_nothing() {
    let mock = MockProcess::start(&[]);
    let whole = {
        let dir = TestDir::new();
        write_parquet(&dir, "in.parquet", &typed_rows(), 2);
        dir.read_bytes("in.parquet")
    };
    for (name, bytes, flags) in [
        ("in.parquet", b"id,text\n1,hello\n".to_vec(), &[][..]),
        ("in.parquet", whole[..whole.len() / 2].to_vec(), &[][..]),
        (
            "data.bin",
            whole[..whole.len() - 3].to_vec(),
            &["--input-format", "parquet"][..],
        ),
    ] {
        let dir = TestDir::new();
        dir.create_bytes(name, &bytes);
        let mut args = vec![
            "run",
            name,
            "--prompt",
            "{{ text }}",
            "--base-url",
            &mock.url,
        ];
        args.extend_from_slice(flags);
        let out = run(&dir, args);
        assert_code(&out, 2);
        let err = stderr(&out);
        assert!(
            err.contains(name) && err.contains("not a readable Parquet file"),
            "{}",
            show(&out)
        );
        assert_eq!(dir.files(), [name], "something was written");
    }
    assert_eq!(util::stat(&mock.stats(), "requests"), 0);
}

#[test]
fn a_file_of_several_row_groups_is_streamed_in_order_and_resumed_by_row() {
    let dir = TestDir::new();
    let rows = 3000;
    let texts: Vec<String> = (0..rows).map(|i| format!("item {i}")).collect();
    let batch = RecordBatch::try_from_iter(vec![(
        "text",
        Arc::new(StringArray::from(texts)) as ArrayRef,
    )])
    .unwrap();
    write_parquet(&dir, "in.parquet", &batch, 700);
    let args = |url: &str| -> Vec<String> {
        let args = [
            "run",
            "in.parquet",
            "--prompt",
            "{{ text }}",
            "-o",
            "out.parquet",
        ];
        let mut args: Vec<String> = args.map(String::from).to_vec();
        args.extend(["--base-url", url, "-j", "16"].map(String::from));
        args
    };
    let answered = |res: &RecordBatch| {
        (0..rows)
            .filter(|i| text(res, "status", *i).as_deref() == Some("ok"))
            .count()
    };
    let port = {
        let mock = MockProcess::start(&["--quota-exhausted-after", "1000"]);
        let out = run(&dir, args(&mock.url));
        assert_code(&out, 1);
        mock.port()
    };
    let (res, groups) = read_parquet(&dir.join("out.parquet"));
    assert_eq!(res.num_rows(), rows);
    assert_eq!(
        answered(&res),
        1000,
        "the quota stopped the run after 1000 answers"
    );
    assert_eq!(groups, 1, "3000 rows fit one row group of the results");

    let mock = MockProcess::start_on(port, &[]);
    let mut again = args(&mock.url);
    again.extend(["--resume", "--retry-failed"].map(String::from));
    let out = run(&dir, &again);
    assert_code(&out, 0);
    assert_eq!(
        util::stat(&mock.stats(), "requests"),
        (rows - 1000) as u64,
        "{}",
        show(&out)
    );
    let (res, _) = read_parquet(&dir.join("out.parquet"));
    assert_eq!(answered(&res), rows);
    for i in [0, 699, 700, 1999, rows - 1] {
        assert_eq!(
            text(&res, "output", i),
            Some(mock_answer(&format!("item {i}")))
        );
    }
}

#[test]
fn submit_and_collect_take_a_parquet_input_and_write_parquet_results() {
    let dir = TestDir::new();
    write_parquet(&dir, "in.parquet", &typed_rows(), 2);
    let mock = MockProcess::start(&[]);
    let out = run(
        &dir,
        [
            "submit",
            "in.parquet",
            "--prompt",
            PROMPT,
            "--model",
            "gpt-4.1-mini",
            "--base-url",
            &mock.url,
        ],
    );
    assert_code(&out, 0);
    let state = dir
        .files()
        .into_iter()
        .find(|f| f.ends_with(".batch.json"))
        .unwrap_or_else(|| panic!("no state file: {:?}", dir.files()));
    let out = run(&dir, ["collect", &state, "--wait", "--poll-max", "1"]);
    assert_code(&out, 0);
    let (res, _) = read_parquet(&dir.join("in.results.parquet"));
    assert_eq!(res.num_rows(), 4);
    assert_eq!(column(&res, "id"), column(&typed_rows(), "id"));
    for i in 0..4 {
        assert_eq!(text(&res, "status", i).as_deref(), Some("ok"));
        assert_eq!(text(&res, "output", i), Some(mock_answer(&prompt_of(i))));
    }
    let cost = column(&res, "cost_usd").as_primitive::<Float64Type>();
    assert!(cost.values().iter().all(|c| *c > 0.0));
}

#[test]
fn bench_samples_the_head_of_a_parquet_input() {
    let dir = TestDir::new();
    let texts: Vec<String> = (0..20).map(|i| format!("item {i}")).collect();
    let batch = RecordBatch::try_from_iter(vec![(
        "text",
        Arc::new(StringArray::from(texts)) as ArrayRef,
    )])
    .unwrap();
    write_parquet(&dir, "in.parquet", &batch, 5);
    let mock = MockProcess::start(&[]);
    let out = run(
        &dir,
        [
            "bench",
            "in.parquet",
            "--prompt",
            "{{ text }}",
            "--base-url",
            &mock.url,
            "--concurrency",
            "2",
            "--rows",
            "8",
            "--warmup",
            "0",
            "--format",
            "json",
        ],
    );
    assert_code(&out, 0);
    let report: serde_json::Value =
        serde_json::from_str(&util::stdout(&out)).unwrap_or_else(|e| panic!("{e}\n{}", show(&out)));
    assert_eq!(report["settings"][0]["runs"][0]["rows"], 8, "{report}");
    assert_eq!(report["settings"][0]["runs"][0]["failed"], 0, "{report}");
    assert_eq!(util::stat(&mock.stats(), "requests"), 8);
}

#[test]
fn export_of_a_parquet_run_writes_typed_parquet() {
    let dir = TestDir::new();
    write_parquet(&dir, "in.parquet", &typed_rows(), 2);
    let out = run(&dir, ["run", "in.parquet", "--prompt", PROMPT, "--mock"]);
    assert_code(&out, 0);
    let out = run(&dir, ["export", "in.results.sqlite", "-o", "copy.parquet"]);
    assert_code(&out, 0);
    let (res, _) = read_parquet(&dir.join("copy.parquet"));
    let (original, _) = read_parquet(&dir.join("in.results.parquet"));
    for name in ["id", "n", "at", "output", "status", "prompt_tokens"] {
        assert_eq!(column(&res, name), column(&original, name), "{name}");
    }
}

/// Writes a vector file with [`VectorParquetWriter`] (two failed rows among 50 of 16 floats,
/// exactly representable in JSON) and what it should hold, for `tests/parquet_check/`.
fn vectors_for_the_check(dir: &TestDir) -> (std::path::PathBuf, std::path::PathBuf) {
    use batch::base::record::RowStatus;
    use batch::engine::output::parquet::VectorParquetWriter;
    let (path, expected) = (dir.join("vectors.parquet"), dir.join("vectors.json"));
    let mut w = VectorParquetWriter::create(&path, None).unwrap();
    let mut rows = Vec::new();
    for i in 0..50u64 {
        let failed = i == 0 || i == 30;
        let v: Vec<f32> = (0..16).map(|j| (i as f32) + j as f32 / 8.0).collect();
        let (status, error, tokens, embedding) = if failed {
            (RowStatus::Failed, Some("HTTP 400: too long"), None, None)
        } else {
            (RowStatus::Ok, None, Some(i as u32 + 3), Some(v.as_slice()))
        };
        let id = format!("doc-{i}-ü");
        w.push(i + 1, &id, status, error, tokens, embedding)
            .unwrap();
        rows.push(serde_json::json!({
            "line": i + 1, "id": id, "status": status.as_str(), "error": error,
            "tokens": tokens, "embedding": embedding,
        }));
    }
    w.finish().unwrap();
    let doc = serde_json::json!({"dims": 16, "rows": rows});
    std::fs::write(&expected, doc.to_string()).unwrap();
    (path, expected)
}

/// `tests/parquet_check/run.sh`: pyarrow and pandas read our results and vectors. Needs
/// python3 and PyPI, so it is run on demand: `cargo test --test cli parquet_check -- --ignored`.
#[test]
#[ignore = "installs pyarrow from PyPI into target/; run with --ignored"]
fn parquet_check_a_reader_other_than_ours_reads_results_and_vectors() {
    let dir = TestDir::new();
    let (vectors, expected) = vectors_for_the_check(&dir);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parquet_check/run.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .env("BATCH_BIN", util::bin())
        .env("VECTORS", vectors)
        .env("VECTORS_EXPECTED", expected)
        .output()
        .unwrap();
    let text = format!("{}{}", util::stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("PASSED: results and vectors") || text.contains("SKIPPED"),
        "{text}"
    );
}

#[test]
fn parquet_on_stdin_gives_parquet_on_stdout_and_dry_run_reads_it_sending_nothing() {
    use std::io::Write;
    let dir = TestDir::new();
    write_parquet(&dir, "in.parquet", &typed_rows(), 2);
    let bytes = dir.read_bytes("in.parquet");
    std::fs::remove_file(dir.join("in.parquet")).unwrap();
    let args = [
        "run",
        "-",
        "--input-format",
        "parquet",
        "--prompt",
        PROMPT,
        "--mock",
    ];
    let mut child = util::cmd(&dir, args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&bytes);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert_code(&out, 0);
    // Results on stdout follow the input's format: a whole Parquet file.
    dir.create_bytes("out.parquet", &out.stdout);
    let (res, _) = read_parquet(&dir.join("out.parquet"));
    assert_eq!(column(&res, "id"), column(&typed_rows(), "id"));
    assert_eq!(text(&res, "output", 3), Some(mock_answer(&prompt_of(3))));
    std::fs::remove_file(dir.join("out.parquet")).unwrap();
    assert!(dir.files().is_empty(), "{:?}", dir.files());

    write_parquet(&dir, "in.parquet", &typed_rows(), 2);
    let mock = MockProcess::start(&[]);
    let out = run(
        &dir,
        [
            "run",
            "in.parquet",
            "--prompt",
            PROMPT,
            "--base-url",
            &mock.url,
            "--dry-run",
        ],
    );
    assert_code(&out, 0);
    assert_eq!(util::stat(&mock.stats(), "requests"), 0);
    assert_eq!(dir.files(), ["in.parquet"], "{}", show(&out));
}

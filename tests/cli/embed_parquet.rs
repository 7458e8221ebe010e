//! `batch embed`'s default output: Parquet, the vectors a fixed-size list of float32 that the
//! mock's own vectors can be checked against, a refused row's vector null with its reason.

use arrow_array::{Array, FixedSizeListArray, Float32Array, StringArray};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use batch::engine::mock::embeddings::vector;

use crate::util::{TestDir, assert_code, show};

#[test]
fn embed_writes_parquet_vectors_by_default() {
    let dir = TestDir::new();
    dir.create(
        "in.csv",
        "id,text\nr0,the first text\nr1,the BAD_EMBEDDING one\nr2,a third text\n",
    );
    let args = [
        "embed",
        "in.csv",
        "--column",
        "text",
        "--mock",
        "--dimensions",
        "8",
    ];
    let out = crate::util::run(&dir, args);
    assert_code(&out, 1);
    let file = std::fs::File::open(dir.join("in.embeddings.parquet")).expect("the default output");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 3, "{}", show(&out));
    let batch = &batches[0];
    let schema = batch.schema();
    let field = schema.field_with_name("embedding").unwrap();
    assert!(
        matches!(field.data_type(), DataType::FixedSizeList(item, 8) if item.data_type() == &DataType::Float32),
        "{:?}",
        field.data_type()
    );
    let col = |name: &str| batch.column(schema.index_of(name).unwrap()).clone();
    let ids = col("id");
    let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
    let status = col("status");
    let status = status.as_any().downcast_ref::<StringArray>().unwrap();
    let vectors = col("embedding");
    let vectors = vectors
        .as_any()
        .downcast_ref::<FixedSizeListArray>()
        .unwrap();
    for (i, text) in ["the first text", "", "a third text"].iter().enumerate() {
        assert_eq!(ids.value(i), format!("r{i}"));
        if i == 1 {
            assert_eq!(status.value(i), "failed");
            assert!(vectors.is_null(i));
            continue;
        }
        assert_eq!(status.value(i), "ok");
        let v = vectors.value(i);
        let v = v.as_any().downcast_ref::<Float32Array>().unwrap();
        assert_eq!(v.values().to_vec(), vector(text, 8), "row {i}");
    }
}

#[test]
fn embed_reads_stdin() {
    use std::io::Write;
    let dir = TestDir::new();
    let mut child = crate::util::cmd(
        &dir,
        [
            "embed",
            "-",
            "--column",
            "text",
            "--mock",
            "--dimensions",
            "4",
            "-o",
            "v.jsonl",
        ],
    )
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"id,text\na,one\nb,two\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 0);
    let lines: Vec<serde_json::Value> = dir
        .read("v.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", show(&out));
    assert_eq!(lines[1]["id"], "b");
    assert_eq!(lines[1]["status"], "ok");
}

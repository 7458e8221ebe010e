//! A resume that starts reading at a checkpoint (issue 15): the first run records where every
//! Nth row starts (`BATCH_CHECKPOINT_ROWS=4` here, 65,536 by default) and a resume of the
//! unchanged input reads from the last one before its first unfinished row, with no pre-flight.
//! Each test checks that exactly the unfinished rows are sent, for CSV (quoted line breaks
//! before the checkpoint), JSON Lines and Parquet, after an edit, and from a state file that
//! predates checkpoints.

use std::process::Output;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};

use crate::util::{
    self, MockProcess, TestDir, assert_code, field, mock_answer, show, stat, stderr,
};

const ROWS: usize = 40;

/// The texts of the rows: every fifth spans two lines (a quoted line break in a CSV).
fn texts() -> Vec<String> {
    (1..=ROWS)
        .map(|i| match i % 5 {
            0 => format!("item\nnumber {i}"),
            _ => format!("item number {i}"),
        })
        .collect()
}

fn csv() -> String {
    let mut s = String::from("id,text\n");
    for (i, t) in texts().iter().enumerate() {
        s.push_str(&format!("r{:04},\"{t}\"\n", i + 1));
    }
    s
}

/// `batch run INPUT` on `mock`, checkpoints every 4 rows, with where the reader starts logged.
fn run(dir: &TestDir, input: &str, mock: &MockProcess, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        input,
        "--prompt",
        "{{ text }}",
        "--base-url",
        &mock.url,
        "-o",
        "out.csv",
        "-q",
        "--no-cache",
    ];
    args.extend(extra);
    util::cmd(dir, &args)
        .env("BATCH_CHECKPOINT_ROWS", "4")
        .env("RUST_LOG", "batch=info")
        .output()
        .expect("run batch")
}

/// Takes rows out of the state file, as if the run had stopped before them.
fn forget_rows(dir: &TestDir, seqs: &[u64]) {
    let conn = rusqlite::Connection::open(dir.join("out.sqlite")).unwrap();
    for seq in seqs {
        conn.execute("DELETE FROM rows WHERE seq = ?1", [*seq as i64])
            .unwrap();
        conn.execute("DELETE FROM attempts WHERE seq = ?1", [*seq as i64])
            .unwrap();
    }
    conn.execute("UPDATE meta SET value = 'false' WHERE key = 'finished'", [])
        .unwrap();
}

/// The recorded checkpoints: (row position, line).
fn checkpoints(dir: &TestDir) -> Vec<(i64, i64)> {
    let conn = rusqlite::Connection::open(dir.join("out.sqlite")).unwrap();
    let mut stmt = conn
        .prepare("SELECT seq, line FROM checkpoints ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Resumes after forgetting `unfinished`: exactly those are sent, every row ends ok with its
/// own answer, and the stderr of the resume is returned.
fn resume_sends_exactly(
    dir: &TestDir,
    input: &str,
    mock: &MockProcess,
    unfinished: &[u64],
) -> String {
    forget_rows(dir, unfinished);
    let sent = stat(&mock.stats(), "requests");
    let out = run(dir, input, mock, &["--resume"]);
    assert_code(&out, 0);
    assert_eq!(
        stat(&mock.stats(), "requests") - sent,
        unfinished.len() as u64,
        "exactly the unfinished rows are sent\n{}",
        show(&out)
    );
    let rows = dir.results("out.csv");
    assert_eq!(rows.len(), ROWS);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(field(row, "status"), "ok", "row {}", i + 1);
        assert_eq!(
            field(row, "output"),
            mock_answer(field(row, "text")),
            "row {}",
            i + 1
        );
    }
    stderr(&out)
}

#[test]
fn a_csv_resume_reads_from_the_checkpoint_before_its_first_unfinished_row() {
    let dir = TestDir::new();
    dir.create("in.csv", &csv());
    let mock = MockProcess::start(&[]);
    assert_code(&run(&dir, "in.csv", &mock, &[]), 0);
    // Every fourth row, each on the line it starts on, quoted line breaks counted: row 1 on
    // line 2, and every row after a two-line one a line further down.
    let lines_before = |seq: usize| 2 + seq + seq / 5;
    let expected: Vec<(i64, i64)> = (0..ROWS)
        .step_by(4)
        .map(|s| (s as i64, lines_before(s) as i64))
        .collect();
    assert_eq!(checkpoints(&dir), expected);

    let log = resume_sends_exactly(&dir, "in.csv", &mock, &[21, 30, 31, 39]);
    let from = format!("from line {} (row 21)", lines_before(20));
    assert!(log.contains(&from), "{from} in\n{log}");
}

#[test]
fn an_edited_input_is_checked_again_from_the_top_and_its_changed_rows_sent() {
    let dir = TestDir::new();
    dir.create("in.csv", &csv());
    let mock = MockProcess::start(&[]);
    assert_code(&run(&dir, "in.csv", &mock, &[]), 0);
    // Row 3, finished long before the first unfinished one, gets new text.
    let edited = csv().replace("r0003,\"item number 3\"", "r0003,\"item three, changed\"");
    assert_ne!(edited, csv());
    dir.create("in.csv", &edited);
    forget_rows(&dir, &[33]);
    let sent = stat(&mock.stats(), "requests");
    let out = run(&dir, "in.csv", &mock, &["--resume"]);
    assert_code(&out, 0);
    assert_eq!(
        stat(&mock.stats(), "requests") - sent,
        2,
        "row 34 and the changed row 3"
    );
    assert!(!stderr(&out).contains("checkpoint"), "{}", show(&out));
    let rows = dir.results("out.csv");
    assert_eq!(
        field(&rows[2], "output"),
        mock_answer("item three, changed")
    );
    // The edited input's checkpoints replace the old ones, and the next resume uses them.
    assert_eq!(checkpoints(&dir).len(), ROWS / 4);
    let log = resume_sends_exactly(&dir, "in.csv", &mock, &[37]);
    assert!(log.contains("(row 37)"), "{log}");
}

#[test]
fn a_json_lines_resume_reads_from_a_checkpoint() {
    let dir = TestDir::new();
    let mut jsonl = String::new();
    for (i, t) in texts().iter().enumerate() {
        let line = serde_json::json!({"id": format!("r{:04}", i + 1), "text": t, "n": i});
        jsonl.push_str(&format!("{line}\n"));
        if i % 7 == 0 {
            jsonl.push('\n');
        }
    }
    dir.create("in.jsonl", &jsonl);
    let mock = MockProcess::start(&[]);
    assert_code(&run(&dir, "in.jsonl", &mock, &[]), 0);
    let log = resume_sends_exactly(&dir, "in.jsonl", &mock, &[13, 14, 38]);
    assert!(log.contains("(row 13)"), "{log}");
}

#[test]
fn a_parquet_resume_reads_from_a_checkpoint() {
    let dir = TestDir::new();
    let ids: Vec<String> = (1..=ROWS).map(|i| format!("r{i:04}")).collect();
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(StringArray::from(ids)) as ArrayRef),
        ("text", Arc::new(StringArray::from(texts())) as ArrayRef),
    ])
    .unwrap();
    // Row groups of 6, so that checkpoints (every 4 rows) fall inside groups.
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(6))
        .build();
    let file = std::fs::File::create(dir.join("in.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let mock = MockProcess::start(&[]);
    assert_code(&run(&dir, "in.parquet", &mock, &[]), 0);
    let log = resume_sends_exactly(&dir, "in.parquet", &mock, &[26, 27, 35]);
    assert!(log.contains("(row 25)"), "{log}");
}

#[test]
fn a_state_file_without_checkpoints_resumes_after_a_pre_flight_that_records_them() {
    let dir = TestDir::new();
    dir.create("in.csv", &csv());
    let mock = MockProcess::start(&[]);
    assert_code(&run(&dir, "in.csv", &mock, &[]), 0);
    // As a state file written before checkpoints and plans were recorded.
    let conn = rusqlite::Connection::open(dir.join("out.sqlite")).unwrap();
    conn.execute_batch("DROP TABLE checkpoints; DELETE FROM meta WHERE key = 'plan';")
        .unwrap();
    drop(conn);
    // Its pre-flight runs as before and records them, for this resume's reader and the next.
    resume_sends_exactly(&dir, "in.csv", &mock, &[22, 23]);
    assert_eq!(checkpoints(&dir).len(), ROWS / 4);
    let log = resume_sends_exactly(&dir, "in.csv", &mock, &[29]);
    assert!(log.contains("(row 29)"), "{log}");
}

#[test]
fn a_resume_with_other_image_settings_checks_every_row_again() {
    let dir = TestDir::new();
    dir.create("in.csv", &csv());
    let mock = MockProcess::start(&[]);
    assert_code(&run(&dir, "in.csv", &mock, &[]), 0);
    // They change the image parts of the bodies, so the recorded pre-flight no longer holds.
    for flags in [
        &["--image-detail", "low"][..],
        // The same detail as the resume before: only the size differs.
        &["--image-detail", "low", "--max-image-px", "512"][..],
    ] {
        forget_rows(&dir, &[17]);
        let out = run(&dir, "in.csv", &mock, &[&["--resume"][..], flags].concat());
        assert_code(&out, 0);
        let log = stderr(&out);
        assert!(
            log.contains("changed: every row checked again"),
            "{flags:?}\n{log}"
        );
    }
}

#[test]
fn an_input_rewritten_during_the_run_is_not_recorded_as_the_one_it_read() {
    let dir = TestDir::new();
    dir.create("in.csv", &csv());
    let mock = MockProcess::start(&["--latency-ms", "100"]);
    let args = [
        "run",
        "in.csv",
        "--prompt",
        "{{ text }}",
        "--base-url",
        &mock.url,
        "-o",
        "out.csv",
        "-q",
        "--no-cache",
        "--concurrency",
        "1",
    ];
    let child = util::cmd(&dir, args)
        .env("BATCH_CHECKPOINT_ROWS", "4")
        .spawn()
        .expect("run batch");
    // Rows are being sent (40 at a tenth of a second each) when the input changes: once the
    // first is recorded, the input has been read.
    let recorded = || {
        // Read-only: opening it must not create the state file before the run does.
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let conn = rusqlite::Connection::open_with_flags(dir.join("out.sqlite"), flags).ok()?;
        conn.query_row("SELECT COUNT(*) FROM rows", [], |r| r.get::<_, i64>(0))
            .ok()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while recorded().unwrap_or(0) == 0 {
        assert!(std::time::Instant::now() < deadline, "no row recorded");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    dir.create(
        "in.csv",
        &csv().replace("item number 38", "item thirty-eight"),
    );
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 0);
    let conn = rusqlite::Connection::open(dir.join("out.sqlite")).unwrap();
    let key: String = conn
        .query_row("SELECT value FROM meta WHERE key = 'checked'", [], |r| {
            r.get(0)
        })
        .unwrap();
    drop(conn);
    assert_eq!(
        key, "",
        "the new input's fingerprint was recorded for the old plan"
    );
    // So the next resume checks every row again instead of trusting the old checkpoints.
    forget_rows(&dir, &[3]);
    let out = run(&dir, "in.csv", &mock, &["--resume"]);
    assert_code(&out, 0);
    let log = stderr(&out);
    assert!(log.contains("changed: every row checked again"), "{log}");
}

#[test]
fn a_checkpoint_whose_row_is_not_the_recorded_one_is_not_trusted() {
    let dir = TestDir::new();
    dir.create("in.csv", &csv());
    let mock = MockProcess::start(&[]);
    assert_code(&run(&dir, "in.csv", &mock, &[]), 0);
    // The row at the checkpoint before row 22 (position 20) is not the one the input has there,
    // as after a rewrite its fingerprint missed.
    let conn = rusqlite::Connection::open(dir.join("out.sqlite")).unwrap();
    conn.execute("UPDATE rows SET id = 'elsewhere' WHERE seq = 20", [])
        .unwrap();
    drop(conn);
    let log = resume_sends_exactly(&dir, "in.csv", &mock, &[21]);
    assert!(log.contains("not the one recorded there"), "{log}");
    assert!(!log.contains("(row 21)"), "{log}");
}

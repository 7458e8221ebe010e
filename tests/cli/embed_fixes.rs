//! `batch embed` review fixes (issue #17): a full state disk stops the run, packs stay bounded
//! under heavy duplication, a 400 every request gets stops the run instead of halving every
//! pack, and what the help says about formats holds.

use std::collections::HashMap;

use crate::util::{self, MockProcess, TestDir, assert_code, show, stat};

/// `id,text` rows, each text different.
fn distinct_csv(n: usize) -> String {
    let mut csv = String::from("id,text\n");
    for i in 0..n {
        csv.push_str(&format!("r{i},row {i} is about topic {}\n", i * 7 % 13));
    }
    csv
}

fn embed_args<'a>(mock: &'a MockProcess, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "embed",
        "in.csv",
        "--column",
        "text",
        "--base-url",
        &mock.url,
        "-o",
        "out.jsonl",
        "--no-cache",
    ];
    args.extend_from_slice(extra);
    args
}

/// The JSON Lines output's statuses, counted.
fn statuses(dir: &TestDir) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for l in dir.read("out.jsonl").lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
        *counts
            .entry(v["status"].as_str().expect("status").to_string())
            .or_default() += 1;
    }
    counts
}

#[test]
fn a_full_state_disk_stops_dispatch_names_the_file_and_exits_1() {
    // Before: every group after the first storage error was dropped while packs kept being
    // sent (and paid for) to the end of the input.
    let dir = TestDir::new();
    let n = 2000;
    dir.create("in.csv", &distinct_csv(n));
    let mock = MockProcess::start(&[]);
    let args = embed_args(
        &mock,
        &[
            "--dimensions",
            "8",
            "--max-inputs-per-request",
            "2",
            "-j",
            "2",
        ],
    );
    let out = util::cmd(&dir, &args)
        .env("BATCH_STATE_MAX_PAGES", "30")
        .output()
        .expect("run batch");
    assert_code(&out, 1);
    let err = util::stderr(&out);
    assert!(
        err.contains(".sqlite") && err.contains("disk is full"),
        "{}",
        show(&out)
    );
    let counts = statuses(&dir);
    let ok = counts.get("ok").copied().unwrap_or(0);
    assert!(ok > 0 && ok < n, "{counts:?}\n{}", show(&out));
    assert_eq!(ok + counts.get("skipped").copied().unwrap_or(0), n);
    // Dispatch stopped: beyond the packs journaled, only a few in flight (and queued) were sent.
    let sent = stat(&mock.stats(), "requests") as usize;
    assert!(
        sent <= ok / 2 + 16,
        "{sent} requests sent, {ok} rows journaled"
    );
}

#[test]
fn a_repeated_text_fills_bounded_packs_and_every_row_gets_its_vector() {
    // Before: all 200 rows of "N/A" followed one item of one pack (one request, one journal
    // message holding a copy of the vector per row).
    let dir = TestDir::new();
    let n = 200;
    let mut csv = String::from("id,text\n");
    for i in 0..n {
        csv.push_str(&format!("r{i},N/A\n"));
    }
    dir.create("in.csv", &csv);
    let mock = MockProcess::start(&[]);
    let args = embed_args(
        &mock,
        &["--dimensions", "8", "--max-inputs-per-request", "2", "-q"],
    );
    let out = util::run(&dir, &args);
    assert_code(&out, 0);
    assert_eq!(statuses(&dir).get("ok").copied(), Some(n), "{}", show(&out));
    // At most 4 rows per input allowed (2 a request): 8 rows a pack, the text sent once each.
    let requests = stat(&mock.stats(), "requests") as usize;
    assert_eq!(requests, n.div_ceil(8), "{}", show(&out));
    let first = dir.read("out.jsonl").lines().next().unwrap().to_string();
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    for l in dir.read("out.jsonl").lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["embedding"], first["embedding"]);
    }
}

#[test]
fn a_refusal_of_every_request_stops_the_run_instead_of_halving_every_pack() {
    // Before: each 8-row pack was halved down to single rows, 15 requests a pack (120 for 64
    // rows), every row failed with the same message.
    let dir = TestDir::new();
    let n = 64;
    dir.create("in.csv", &distinct_csv(n));
    let mock = MockProcess::start(&[]);
    let args = embed_args(
        &mock,
        &[
            "--dimensions",
            "99999",
            "--max-inputs-per-request",
            "8",
            "-j",
            "1",
        ],
    );
    let out = util::run(&dir, &args);
    assert_code(&out, 1);
    let err = util::stderr(&out);
    assert!(
        err.contains("every request is refused") && err.contains("dimensions"),
        "{}",
        show(&out)
    );
    // The first pack (8 rows): its request, then the left halves down to one row (4, 2, 1)
    // and the last row's sibling, whose refusal is the third alike: 5 requests.
    let stats = mock.stats();
    assert_eq!(stat(&stats, "requests"), 5, "{stats}");
    let counts = statuses(&dir);
    assert_eq!(counts.get("failed").copied(), Some(1), "{counts:?}");
    assert_eq!(counts.get("skipped").copied(), Some(n - 1), "{counts:?}");
}

#[test]
fn two_bad_rows_side_by_side_still_fail_alone() {
    // Both single-row halves are refused; the message names the input, so it is the rows'.
    let dir = TestDir::new();
    let mut csv = String::from("id,text\n");
    for i in 0..8 {
        let text = if i == 4 || i == 5 {
            format!("row {i} BAD_EMBEDDING")
        } else {
            format!("row {i} fine")
        };
        csv.push_str(&format!("r{i},{text}\n"));
    }
    dir.create("in.csv", &csv);
    let mock = MockProcess::start(&[]);
    let args = embed_args(&mock, &["--dimensions", "8", "-j", "1"]);
    let out = util::run(&dir, &args);
    assert_code(&out, 1);
    let counts = statuses(&dir);
    assert_eq!(counts.get("ok").copied(), Some(6), "{counts:?}");
    assert_eq!(counts.get("failed").copied(), Some(2), "{counts:?}");
    assert!(!util::stderr(&out).contains("every request is refused"));
}

#[test]
fn help_and_extensions_agree_on_parquet() {
    let dir = TestDir::new();
    let help = util::stdout(&util::run(&dir, ["embed", "--help"]));
    assert!(
        help.contains("write the vectors as Parquet (the default)"),
        "{help}"
    );
    assert!(help.contains("Parquet (.parquet, .pq)"), "{help}");
    assert!(help.contains(".parquet or .pq"), "{help}");
    // `.pq` is Parquet for `batch run`; so it is for `batch embed`.
    dir.create("in.csv", &distinct_csv(3));
    let mock = MockProcess::start(&[]);
    let mut args = embed_args(&mock, &["--dimensions", "8", "-q"]);
    let o = args.iter().position(|a| *a == "out.jsonl").unwrap();
    args[o] = "out.pq";
    let out = util::run(&dir, &args);
    assert_code(&out, 0);
    let bytes = dir.read_bytes("out.pq");
    assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));
}

//! `batch embed` end to end against a `batch mock` process: packing to both per-request limits,
//! a refused request halved until the bad row fails alone, resume after `kill -9` sending no
//! finished row, the per-row cache, base64 vectors decoded onto their own rows, and a valid
//! `.npy`.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use batch::engine::mock::embeddings::vector;
use batch::engine::tokens;

use crate::util::{self, MockProcess, TestDir, assert_code, show, stat};

const MODEL: &str = "text-embedding-3-small";
const DIMS: usize = 8;

/// `id,text` rows whose texts are all different; `bad` rows carry the mock's refusal marker.
fn texts_csv(n: usize, bad: &[usize]) -> (String, Vec<String>) {
    let texts: Vec<String> = (0..n)
        .map(|i| {
            if bad.contains(&i) {
                format!("row {i} BAD_EMBEDDING")
            } else {
                format!("row {i} is about topic {}", i * 7 % 13)
            }
        })
        .collect();
    let mut csv = String::from("id,text\n");
    for (i, t) in texts.iter().enumerate() {
        csv.push_str(&format!("r{i},{t}\n"));
    }
    (csv, texts)
}

fn embed_args<'a>(mock: &'a MockProcess, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "embed",
        "in.csv",
        "--column",
        "text",
        "--base-url",
        &mock.url,
        "--dimensions",
        "8",
        "-o",
        "out.jsonl",
    ];
    args.extend_from_slice(extra);
    args
}

/// The JSON Lines output by id.
fn lines(dir: &TestDir) -> HashMap<String, serde_json::Value> {
    dir.read("out.jsonl")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            (v["id"].as_str().expect("id").to_string(), v)
        })
        .collect()
}

/// The row's vector is the mock's vector of its own text (so base64 was decoded, in order).
#[track_caller]
fn assert_vector_of(line: &serde_json::Value, text: &str) {
    let got: Vec<f32> = line["embedding"]
        .as_array()
        .unwrap_or_else(|| panic!("no embedding in {line}"))
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect();
    assert_eq!(got, vector(text, DIMS), "row {}", line["id"]);
}

fn tokens_of(texts: &[String]) -> u64 {
    texts
        .iter()
        .map(|t| u64::from(tokens::count(MODEL, t)))
        .sum()
}

#[test]
fn packing_keeps_to_the_input_and_token_limits() {
    let dir = TestDir::new();
    let (csv, texts) = texts_csv(20, &[]);
    dir.create("in.csv", &csv);
    let mock = MockProcess::start(&[]);
    let out = util::run(
        &dir,
        embed_args(
            &mock,
            &["--max-inputs-per-request", "3", "--no-cache", "-q"],
        ),
    );
    assert_code(&out, 0);
    assert_eq!(stat(&mock.stats(), "requests"), 7, "20 rows, 3 a request");
    let got = lines(&dir);
    for (i, t) in texts.iter().enumerate() {
        assert_vector_of(&got[&format!("r{i}")], t);
        assert_eq!(got[&format!("r{i}")]["status"], "ok");
    }

    // Each text is 7 or 8 tokens: at most two fit in 16.
    let per_row: Vec<u64> = texts
        .iter()
        .map(|t| u64::from(tokens::count(MODEL, t)))
        .collect();
    assert!(per_row.iter().all(|n| (5..=8).contains(n)), "{per_row:?}");
    let mock = MockProcess::start(&[]);
    let out = util::run(
        &dir,
        embed_args(
            &mock,
            &[
                "--max-request-tokens",
                "16",
                "--restart",
                "--no-cache",
                "-q",
            ],
        ),
    );
    assert_code(&out, 0);
    let mut expected = 0;
    let mut sum = 0;
    for n in &per_row {
        if sum + n > 16 || sum == 0 {
            expected += 1;
            sum = 0;
        }
        sum += n;
    }
    assert_eq!(stat(&mock.stats(), "requests"), expected);
    assert!(expected >= 10, "no request held more than two rows");
    assert_eq!(stat(&mock.stats(), "prompt_tokens"), tokens_of(&texts));
}

#[test]
fn a_refused_request_is_halved_until_the_bad_row_fails_alone() {
    let dir = TestDir::new();
    let (csv, texts) = texts_csv(16, &[11]);
    dir.create("in.csv", &csv);
    let mock = MockProcess::start(&[]);
    let out = util::run(&dir, embed_args(&mock, &["--no-cache"]));
    assert_code(&out, 1);
    let got = lines(&dir);
    let bad = &got["r11"];
    assert_eq!(bad["status"], "failed", "{bad}");
    assert!(bad["embedding"].is_null());
    let error = bad["error"].as_str().unwrap();
    assert!(
        error.contains("HTTP 400") && error.contains("is invalid"),
        "{error}"
    );
    for (i, t) in texts.iter().enumerate().filter(|(i, _)| *i != 11) {
        assert_eq!(got[&format!("r{i}")]["status"], "ok");
        assert_vector_of(&got[&format!("r{i}")], t);
    }
    // 16 rows in one request, refused; then halves of 8, 4, 2 and 1 around the bad row: one
    // refused request at each size, and the good half of each size answered.
    let stats = mock.stats();
    assert_eq!(stat(&stats, "requests"), 1 + 2 * 4, "{stats}");
    assert_eq!(util::responses(&stats, 400), 5, "{stats}");
    let err = util::stderr(&out);
    assert!(
        err.contains("1 failed") && err.contains("line 13"),
        "{}",
        show(&out)
    );
}

#[test]
fn resume_after_kill_9_sends_no_finished_row() {
    let dir = TestDir::new();
    let (csv, texts) = texts_csv(600, &[]);
    dir.create("in.csv", &csv);
    let mock = MockProcess::start(&["--latency-ms", "40"]);
    let args = embed_args(
        &mock,
        &[
            "--max-inputs-per-request",
            "4",
            "-j",
            "2",
            "--no-cache",
            "-q",
        ],
    );
    let mut child = util::cmd(&dir, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn batch");
    let state = dir.join("out.sqlite");
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(&state).len() < 40 {
        assert!(
            Instant::now() < deadline,
            "no rows committed within a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    // What the mock still answers of the killed run's requests is not the resumed run's.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&mock.stats(), "in_flight") > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = committed(&state);
    assert!(
        done.len() < texts.len(),
        "the kill came too late to prove anything"
    );
    let before = mock.stats();
    let mut resume = args.clone();
    resume.push("--resume");
    let out = util::run(&dir, &resume);
    assert_code(&out, 0);
    let after = mock.stats();
    let left: Vec<String> = (0..texts.len())
        .filter(|i| !done.contains(&(*i as i64)))
        .map(|i| texts[i].clone())
        .collect();
    let sent = stat(&after, "prompt_tokens") - stat(&before, "prompt_tokens");
    assert_eq!(
        sent,
        tokens_of(&left),
        "the resumed run sent exactly the unfinished rows"
    );
    let got = lines(&dir);
    assert_eq!(got.len(), texts.len());
    for (i, t) in texts.iter().enumerate() {
        assert_vector_of(&got[&format!("r{i}")], t);
    }
}

/// The positions of the rows committed `ok` to the state file.
fn committed(state: &std::path::Path) -> Vec<i64> {
    if !state.exists() {
        return Vec::new();
    }
    let Ok(conn) = rusqlite::Connection::open(state) else {
        return Vec::new();
    };
    let Ok(mut stmt) = conn.prepare("SELECT seq FROM rows WHERE status = 'ok'") else {
        return Vec::new();
    };
    stmt.query_map([], |r| r.get(0))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

#[test]
fn the_cache_answers_each_unchanged_row() {
    let dir = TestDir::new();
    let (csv, mut texts) = texts_csv(12, &[]);
    dir.create("in.csv", &csv);
    let mock = MockProcess::start(&[]);
    let args = embed_args(&mock, &["--max-inputs-per-request", "5", "-q"]);
    assert_code(&util::run(&dir, &args), 0);
    let first = mock.stats();
    assert_eq!(stat(&first, "requests"), 3);

    assert_code(&util::run(&dir, &args), 0);
    let second = mock.stats();
    assert_eq!(stat(&second, "requests"), 3, "a second run sends nothing");
    for (i, t) in texts.iter().enumerate() {
        assert_vector_of(&lines(&dir)[&format!("r{i}")], t);
    }

    texts[4] = "a brand new text for row four".into();
    let mut csv = String::from("id,text\n");
    for (i, t) in texts.iter().enumerate() {
        csv.push_str(&format!("r{i},{t}\n"));
    }
    dir.create("in.csv", &csv);
    assert_code(&util::run(&dir, &args), 0);
    let third = mock.stats();
    assert_eq!(stat(&third, "requests"), 4, "only the changed row is sent");
    assert_eq!(
        stat(&third, "prompt_tokens") - stat(&second, "prompt_tokens"),
        u64::from(tokens::count(MODEL, &texts[4]))
    );
    assert_vector_of(&lines(&dir)["r4"], &texts[4]);
}

#[test]
fn npy_output_is_a_numpy_v1_matrix_with_an_id_list() {
    let dir = TestDir::new();
    let (csv, texts) = texts_csv(5, &[2]);
    dir.create("in.csv", &csv);
    let mock = MockProcess::start(&[]);
    let mut args = embed_args(&mock, &["--no-cache", "-q"]);
    let o = args.iter().position(|a| *a == "out.jsonl").unwrap();
    args[o] = "out.npy";
    assert_code(&util::run(&dir, &args), 1);
    let bytes = dir.read_bytes("out.npy");
    // Magic, version 1.0, a little-endian u16 header length, the header dict ending in \n.
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    assert_eq!((bytes[6], bytes[7]), (1, 0));
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + len) % 64, 0, "the data is 64-byte aligned");
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(
        header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (5, 8), }"),
        "{header}"
    );
    assert!(header.ends_with('\n'));
    let data: Vec<f32> = bytes[10 + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), 5 * DIMS);
    for (i, t) in texts.iter().enumerate() {
        let row = &data[i * DIMS..(i + 1) * DIMS];
        if i == 2 {
            assert!(row.iter().all(|x| x.is_nan()), "the failed row is NaN");
        } else {
            assert_eq!(row, vector(t, DIMS).as_slice(), "row {i}");
        }
    }
    let ids: Vec<String> = dir
        .read("out.ids.csv")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ids[0], "id,status,error");
    assert_eq!(ids.len(), 6);
    assert!(
        ids[1].starts_with("r0,ok,") && ids[3].starts_with("r2,failed,"),
        "{ids:?}"
    );
}

#[test]
fn bad_flags_and_columns_are_refused_before_anything_is_sent() {
    let dir = TestDir::new();
    dir.create("in.csv", "id,text\n1,hello\n");
    let mock = MockProcess::start(&[]);
    let mut args = embed_args(&mock, &[]);
    args[3] = "body";
    let out = util::run(&dir, &args);
    assert_code(&out, 2);
    assert!(
        util::stderr(&out).contains("--column \"body\" is not a column"),
        "{}",
        show(&out)
    );
    let out = util::run(&dir, embed_args(&mock, &["--temperature", "0.5"]));
    assert_code(&out, 2);
    let o = util::run(
        &dir,
        [
            "embed",
            "in.csv",
            "--column",
            "text",
            "--base-url",
            &mock.url,
            "-o",
            "x.txt",
        ],
    );
    assert_code(&o, 2);
    let out = util::run(&dir, embed_args(&mock, &["--resume"]));
    assert_code(&out, 2);
    assert!(
        util::stderr(&out).contains("nothing to resume"),
        "{}",
        show(&out)
    );
    assert_eq!(stat(&mock.stats(), "requests"), 0);
    assert!(!dir.join("out.jsonl").exists() && !dir.join("x.txt").exists());
}

#[test]
fn the_spend_cap_stops_before_a_request_could_pass_it() {
    let dir = TestDir::new();
    let (csv, texts) = texts_csv(30, &[]);
    dir.create("in.csv", &csv);
    let mock = MockProcess::start(&[]);
    // $0.02 per 1M tokens: each two-row request costs about 3e-7 dollars.
    let cap = 1e-6;
    let out = util::run(
        &dir,
        embed_args(
            &mock,
            &[
                "--max-inputs-per-request",
                "2",
                "-j",
                "1",
                "--max-cost",
                "0.000001",
                "--no-cache",
                "-q",
            ],
        ),
    );
    assert_code(&out, 1);
    let err = util::stderr(&out);
    assert!(err.contains("spend cap reached"), "{}", show(&out));
    let billed = mock.stats()["billed_usd"].as_f64().unwrap();
    assert!(billed > 0.0 && billed <= cap, "billed {billed}");
    let got = lines(&dir);
    let ok = got.values().filter(|l| l["status"] == "ok").count();
    let skipped = got.values().filter(|l| l["status"] == "skipped").count();
    assert!(
        ok > 0 && ok + skipped == texts.len(),
        "{ok} ok, {skipped} skipped"
    );
    let per_request: f64 = 0.02 / 1e6 * tokens_of(&texts[..2]) as f64;
    assert!(
        billed + per_request > cap * 0.99,
        "stopped only when the next request could pass it"
    );
}

//! Images and PDFs per row (`{{ image(col) }}`, `{{ file(col) }}`): each API's content parts
//! accepted and counted by the mock, every pre-flight problem reported with its line, the cache
//! following the bytes (not the path), a resume after kill -9 that sends no finished row again,
//! a bad image failing only its row, and an audit log without the bytes.

use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{
    self, MockProcess, TestDir, assert_code, field, run, show, stat, stderr, stdout,
};

/// A PNG header of `w` x `h` (all the sniffer and the size reader look at) and `tail`, which
/// makes files of the same size differ.
fn png(w: u32, h: u32, tail: &[u8]) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    b.extend_from_slice(&w.to_be_bytes());
    b.extend_from_slice(&h.to_be_bytes());
    b.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    b.extend_from_slice(tail);
    b
}

/// `rows` images (`img/N.png`, 1024 x 1024) and `photos.csv` naming them.
fn photos(dir: &TestDir, rows: usize) {
    std::fs::create_dir_all(dir.join("img")).unwrap();
    let mut csv = String::from("id,photo\n");
    for i in 0..rows {
        dir.create_bytes(
            &format!("img/{i}.png"),
            &png(1024, 1024, format!("#{i}").as_bytes()),
        );
        csv.push_str(&format!("{i},img/{i}.png\n"));
    }
    dir.create("photos.csv", &csv);
}

const PROMPT: &str = "Describe {{ image(photo) }}";

#[test]
fn every_api_sends_its_parts_and_the_mock_counts_image_tokens() {
    let dir = TestDir::new();
    photos(&dir, 3);
    let mock = MockProcess::start(&[]);
    for (i, (extra, model, image_tokens)) in [
        (vec!["--image-detail", "high"], "gpt-4o", 765),
        (
            vec!["--api", "responses", "--image-detail", "low"],
            "gpt-4o",
            85,
        ),
        (vec![], "gpt-4.1-mini", 1659),
        (vec!["--provider", "anthropic"], "claude-sonnet-4-5", 1399),
    ]
    .into_iter()
    .enumerate()
    {
        let output = format!("out{i}.csv");
        let mut args = vec![
            "run",
            "photos.csv",
            "--prompt",
            PROMPT,
            "--base-url",
            &mock.url,
            "-m",
            model,
            "--no-cache",
            "-q",
            "-o",
            &output,
        ];
        args.extend(extra.iter().copied());
        // The mock's Messages endpoint wants a key, as Anthropic's does.
        let out = util::cmd(&dir, &args)
            .env("ANTHROPIC_API_KEY", "test-key")
            .output()
            .unwrap();
        assert_code(&out, 0);
        for row in dir.results(&output) {
            assert_eq!(field(&row, "status"), "ok", "{model}: {row:?}");
            let tokens: u64 = field(&row, "prompt_tokens").parse().unwrap();
            // The text ("Describe ") and the message framing are a handful of tokens.
            assert!(
                (image_tokens..image_tokens + 30).contains(&tokens),
                "{model} {extra:?}: {tokens} prompt tokens, the image is {image_tokens}"
            );
        }
    }
    assert_eq!(stat(&mock.stats(), "requests"), 12);
}

#[test]
fn dry_run_counts_image_tokens_and_their_cost() {
    let dir = TestDir::new();
    photos(&dir, 4);
    let out = run(
        &dir,
        [
            "run",
            "photos.csv",
            "--prompt",
            PROMPT,
            "--mock",
            "-m",
            "gpt-4o",
            "--image-detail",
            "high",
            "--max-tokens",
            "50",
            "--dry-run",
        ],
    );
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("Attachments  4 images, "), "{text}");
    assert!(
        text.contains(&format!("{} tokens of the prompts", 4 * 765)),
        "{text}"
    );
    let prompt_line = text.lines().find(|l| l.starts_with("Prompts")).unwrap();
    let n: u64 = prompt_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(n > 4 * 765, "{prompt_line}");
    assert!(dir.result_files().is_empty(), "a dry run wrote results");
}

#[test]
fn preflight_reports_every_attachment_problem_with_its_line() {
    let dir = TestDir::new();
    dir.create_bytes("ok.png", &png(100, 100, b""));
    dir.create_bytes("wide.png", &png(9000, 10, b""));
    dir.create("text.png", "this is no picture");
    dir.create_bytes("doc.pdf", b"%PDF-1.4 /Type /Page");
    dir.create(
        "in.csv",
        "id,photo\n1,ok.png\n2,missing.png\n3,text.png\n4,doc.pdf\n5,\n6,wide.png\n\
         7,\"data:image/png;base64,@@\"\n",
    );
    let mock = MockProcess::start(&[]);
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--prompt",
            "{{ image(photo) }}",
            "--provider",
            "anthropic",
            "-m",
            "claude-sonnet-4-5",
            "--base-url",
            &mock.url,
        ],
    );
    assert_code(&out, 2);
    let err = stderr(&out);
    for (line, what) in [
        (3, "no such file"),
        (4, "not a PNG, JPEG, GIF, WebP or PDF"),
        (5, "file(...)"),
        (6, "the cell is empty"),
        (7, "at most 8000"),
        (8, "not valid base64"),
    ] {
        let found = err
            .lines()
            .any(|l| l.contains(&format!("in.csv: line {line}")) && l.contains(what));
        assert!(found, "line {line}: {what:?} not reported\n{}", show(&out));
    }
    assert!(err.contains("column \"photo\""), "{err}");
    assert!(!err.contains("line 2"), "the good row was reported\n{err}");
    assert_eq!(stat(&mock.stats(), "requests"), 0, "something was sent");
    assert!(dir.result_files().is_empty(), "results were written");
}

#[test]
fn the_cache_misses_when_the_bytes_change_and_hits_when_only_the_path_does() {
    let dir = TestDir::new();
    photos(&dir, 3);
    let mock = MockProcess::start(&[]);
    let go = |dir: &TestDir| {
        let out = run(
            dir,
            [
                "run",
                "photos.csv",
                "--prompt",
                PROMPT,
                "--base-url",
                &mock.url,
                "--restart",
                "-q",
            ],
        );
        assert_code(&out, 0);
    };
    go(&dir);
    assert_eq!(stat(&mock.stats(), "requests"), 3);
    // Renamed and moved: the same bytes make the same request.
    std::fs::create_dir_all(dir.join("moved")).unwrap();
    std::fs::rename(dir.join("img/1.png"), dir.join("moved/renamed.png")).unwrap();
    dir.create(
        "photos.csv",
        "id,photo\n0,img/0.png\n1,moved/renamed.png\n2,img/2.png\n",
    );
    go(&dir);
    assert_eq!(
        stat(&mock.stats(), "requests"),
        3,
        "a renamed file was sent again"
    );
    // The same path, new bytes: sent again.
    dir.create_bytes("img/2.png", &png(1024, 1024, b"retouched"));
    go(&dir);
    assert_eq!(
        stat(&mock.stats(), "requests"),
        4,
        "a changed file was not sent again"
    );
}

#[test]
fn a_bad_image_fails_its_row_only_and_the_log_keeps_hashes_not_bytes() {
    let dir = TestDir::new();
    photos(&dir, 3);
    dir.create_bytes("img/1.png", &png(1024, 1024, b"BAD-IMAGE"));
    let mock = MockProcess::start(&[]);
    let out = run(
        &dir,
        [
            "run",
            "photos.csv",
            "--prompt",
            PROMPT,
            "--base-url",
            &mock.url,
            "--log",
            "log.jsonl",
            "-q",
        ],
    );
    assert_code(&out, 1);
    let rows = dir.results("photos.results.csv");
    let status: Vec<&str> = rows.iter().map(|r| field(r, "status")).collect();
    assert_eq!(status, ["ok", "failed", "ok"], "{rows:?}");
    assert!(
        field(&rows[1], "error").contains("Could not process image"),
        "{rows:?}"
    );
    let log = dir.read("log.jsonl");
    assert!(log.contains("\"sha256\""), "{log}");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(png(1024, 1024, b"#0"));
    assert!(!log.contains(&b64[..24]), "the log holds an image's bytes");
}

/// Finished rows in the journal of `state`.
fn finished(state: &std::path::Path) -> u64 {
    let Ok(conn) = rusqlite::Connection::open(state) else {
        return 0;
    };
    conn.query_row(
        "SELECT count(*) FROM rows WHERE status IN ('ok', 'failed')",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
    .unwrap_or(0)
}

#[test]
fn resume_after_kill_9_sends_no_finished_row_again() {
    const ROWS: u64 = 200;
    let dir = TestDir::new();
    photos(&dir, ROWS as usize);
    let mock = MockProcess::start(&["--latency-ms", "40"]);
    let args = [
        "run",
        "photos.csv",
        "--prompt",
        PROMPT,
        "--base-url",
        &mock.url,
        "-j",
        "8",
        "-q",
    ];
    let mut child = util::cmd(&dir, args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while stat(&mock.stats(), "requests") < 40 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the run sent nothing"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the kill"
        );
        thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    while stat(&mock.stats(), "in_flight") > 0 {
        thread::sleep(Duration::from_millis(20));
    }
    let done = finished(&dir.join("photos.results.sqlite"));
    assert!(
        done > 0 && done < ROWS,
        "{done} rows finished before the kill"
    );
    let before = stat(&mock.stats(), "requests");
    let mut resume = args.to_vec();
    resume.push("--resume");
    assert_code(&run(&dir, &resume), 0);
    let sent = stat(&mock.stats(), "requests") - before;
    assert_eq!(
        sent,
        ROWS - done,
        "the resume sent {sent} requests for {} rows left",
        ROWS - done
    );
    let rows = dir.results("photos.results.csv");
    assert_eq!(rows.len() as u64, ROWS);
    assert!(rows.iter().all(|r| field(r, "status") == "ok"));
}

#[test]
fn the_batch_api_carries_the_same_parts() {
    let dir = TestDir::new();
    photos(&dir, 3);
    let args = |via: &'static str, out: &'static str| {
        let mut a = vec![
            "run",
            "photos.csv",
            "--prompt",
            PROMPT,
            "--mock",
            "-m",
            "gpt-4o",
        ];
        a.extend([
            "--image-detail",
            "high",
            "--no-cache",
            "-q",
            "--via",
            via,
            "-o",
            out,
        ]);
        a
    };
    assert_code(&run(&dir, args("api", "direct.csv")), 0);
    assert_code(&run(&dir, args("batch", "batch.csv")), 0);
    let (direct, batch) = (dir.results("direct.csv"), dir.results("batch.csv"));
    assert_eq!(batch.len(), 3);
    for (d, b) in direct.iter().zip(&batch) {
        assert_eq!(field(b, "status"), "ok", "{b:?}");
        let tokens: u64 = field(b, "prompt_tokens").parse().unwrap();
        assert!(tokens > 765, "{b:?}");
        assert_eq!(field(d, "prompt_tokens"), field(b, "prompt_tokens"));
    }
}

#[test]
fn paths_outside_the_input_folder_are_refused_unless_allowed() {
    let dir = TestDir::new();
    std::fs::create_dir_all(dir.join("data/img")).unwrap();
    dir.create_bytes("secret.png", &png(100, 100, b""));
    dir.create_bytes("data/img/ok.png", &png(100, 100, b""));
    let secret = dir.join("secret.png").display().to_string();
    dir.create(
        "data/in.csv",
        &format!("id,photo\n1,img/ok.png\n2,../secret.png\n3,{secret}\n4,img/../../secret.png\n"),
    );
    let args = |extra: &[&str]| {
        let mut a = vec!["run", "data/in.csv", "--prompt", PROMPT, "--mock"];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let out = run(&dir, args(&["--dry-run"]));
    assert_code(&out, 2);
    let err = stderr(&out);
    for line in [3, 4, 5] {
        let found = err.lines().any(|l| {
            l.contains(&format!("in.csv: line {line}"))
                && l.contains("column \"photo\"")
                && l.contains("--allow-any-path")
        });
        assert!(found, "line {line} not refused\n{}", show(&out));
    }
    assert!(
        !err.contains("line 2"),
        "the file inside was refused\n{err}"
    );
    let out = run(&dir, args(&["--dry-run", "--allow-any-path"]));
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains("Attachments  4 images"),
        "{}",
        show(&out)
    );
}

#[test]
fn a_rejected_anthropic_key_names_anthropics_variable() {
    let dir = TestDir::new();
    photos(&dir, 2);
    let mock = MockProcess::start(&[]);
    // No ANTHROPIC_API_KEY: the mock's Messages endpoint answers 401, as Anthropic's does.
    let out = run(
        &dir,
        [
            "run",
            "photos.csv",
            "--prompt",
            PROMPT,
            "--provider",
            "anthropic",
            "-m",
            "claude-sonnet-4-5",
            "--base-url",
            &mock.url,
        ],
    );
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("rejected the key"), "{}", show(&out));
    assert!(err.contains("check ANTHROPIC_API_KEY"), "{}", show(&out));
    assert!(!err.contains("OPENAI_API_KEY"), "{}", show(&out));
}

/// A real `w` x `h` PNG (a gradient), decodable, unlike [`png`]'s header and tail.
fn real_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A run of `photos.csv` on Anthropic's API of the mock; its output's prompt tokens per row.
fn claude_run(
    dir: &TestDir,
    mock: &MockProcess,
    extra: &[&str],
) -> (std::process::Output, Vec<u64>) {
    let mut args = vec![
        "run",
        "photos.csv",
        "--prompt",
        PROMPT,
        "--provider",
        "anthropic",
        "-m",
        "claude-sonnet-4-5",
        "--base-url",
        &mock.url,
        "--no-cache",
        "--restart",
        "-q",
    ];
    args.extend_from_slice(extra);
    let out = util::cmd(dir, &args)
        .env("ANTHROPIC_API_KEY", "test-key")
        .output()
        .unwrap();
    let tokens = match util::code(&out) == 0 && !extra.contains(&"--dry-run") {
        true => dir
            .results("photos.results.csv")
            .iter()
            .map(|r| field(r, "prompt_tokens").parse().unwrap())
            .collect(),
        false => Vec::new(),
    };
    (out, tokens)
}

#[test]
fn max_image_px_scales_pictures_down_once_and_the_mock_gets_the_smaller_ones() {
    let dir = TestDir::new();
    dir.create_bytes("big.png", &real_png(2000, 1000));
    dir.create_bytes("wide.png", &real_png(9000, 20));
    dir.create("photos.csv", "id,photo\n1,big.png\n2,wide.png\n");
    let mock = MockProcess::start(&[]);
    // Over Anthropic's 8000 px and no flag: refused before anything is sent, with the advice.
    let (out, _) = claude_run(&dir, &mock, &[]);
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("photos.csv: line 3") && err.contains("--max-image-px 8000"),
        "{err}"
    );
    // The dry run counts the scaled sizes: 500 x 250 and 500 x 1, width x height / 750.
    let (out, _) = claude_run(&dir, &mock, &["--max-image-px", "500", "--dry-run"]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("2 images, 2 scaled down"), "{text}");
    let expected = (500 * 250u64).div_ceil(750) + 1;
    assert!(
        text.contains(&format!("; {expected} tokens of the prompts")),
        "{text}"
    );
    // The mock decodes what it is sent and counts its tokens the same way: it got 500 px.
    let (out, tokens) = claude_run(&dir, &mock, &["--max-image-px", "500"]);
    assert_code(&out, 0);
    assert!((167..167 + 30).contains(&tokens[0]), "{tokens:?}");
    assert!(tokens[1] < 30, "{tokens:?}");
    // Made once: the copies are kept by content hash and size, and a second run reads them
    // (a copy put in their place shows through) instead of scaling again.
    let kept: Vec<_> = std::fs::read_dir(dir.cache_dir().join("resized"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(
        kept.iter()
            .all(|p| p.to_string_lossy().ends_with("-500.png"))
    );
    let big_copy = kept
        .iter()
        .find(|p| imagesize::size(p).unwrap().height == 250)
        .unwrap();
    std::fs::write(big_copy, real_png(300, 150)).unwrap();
    let (out, again) = claude_run(&dir, &mock, &["--max-image-px", "500"]);
    assert_code(&out, 0);
    assert!((60..60 + 30).contains(&again[0]), "{again:?}");
    assert_eq!(again[1], tokens[1]);
}

#[test]
fn a_picture_that_cannot_be_scaled_down_is_a_preflight_error_with_its_line() {
    let dir = TestDir::new();
    dir.create_bytes("ok.png", &real_png(20, 20));
    let mut broken = real_png(1200, 1200);
    broken.truncate(200);
    dir.create_bytes("broken.png", &broken);
    dir.create("photos.csv", "id,photo\n1,ok.png\n2,broken.png\n");
    let mock = MockProcess::start(&[]);
    let (out, _) = claude_run(&dir, &mock, &["--max-image-px", "600"]);
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("photos.csv: line 3") && err.contains("cannot be decoded"),
        "{err}"
    );
    assert_eq!(stat(&mock.stats(), "requests"), 0, "something was sent");
}

//! Helpers for the end-to-end tests: a fresh directory per test, the `batch` binary run inside
//! it with a clean environment, a `batch mock` server process, and a results CSV reader.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::Duration;

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_batch")
}

/// A fresh temporary directory, removed when dropped. The binary runs with it as current dir.
pub struct TestDir {
    dir: tempfile::TempDir,
    /// The test's own response cache, outside `dir` so that listings of `dir` see only what a
    /// run writes there; without it, one test's answers would be another's cache hits.
    cache: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix("batch-e2e-")
            .tempdir()
            .expect("create temp dir");
        let cache = tempfile::Builder::new()
            .prefix("batch-e2e-cache-")
            .tempdir()
            .expect("create temp dir");
        TestDir { dir, cache }
    }

    /// The response cache folder the binary uses in this test.
    pub fn cache_dir(&self) -> &Path {
        self.cache.path()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// Writes `contents` to `name` (relative to the directory) and returns its path.
    pub fn create(&self, name: &str, contents: &str) -> PathBuf {
        self.create_bytes(name, contents.as_bytes())
    }

    pub fn create_bytes(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {name}: {e}"));
        path
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    pub fn read_bytes(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    /// Names of the files in the directory, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path())
            .expect("list test dir")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// Files a run leaves behind: results files and temporary `.partial` files.
    pub fn result_files(&self) -> Vec<String> {
        self.files()
            .into_iter()
            .filter(|n| n.ends_with(".results.csv") || n.ends_with(".partial"))
            .collect()
    }

    /// Reads a results CSV into one map per row, column name to value.
    pub fn results(&self, name: &str) -> Vec<HashMap<String, String>> {
        read_results(&self.join(name))
    }
}

/// Reads a results CSV into one map per row, column name to value.
pub fn read_results(path: &Path) -> Vec<HashMap<String, String>> {
    let mut reader =
        csv::Reader::from_path(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let headers = reader.headers().expect("results header").clone();
    reader
        .records()
        .map(|r| {
            let r = r.expect("results row");
            headers
                .iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// A `Command` for the binary with no ambient OpenAI settings, running in `dir`.
pub fn cmd<I, S>(dir: &TestDir, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(bin());
    cmd.args(args);
    with_test_env(cmd, dir)
}

/// `cmd` run in `dir`, with no key, base URL or log filter from the caller's environment and the
/// test's own cache.
pub fn with_test_env(mut cmd: Command, dir: &TestDir) -> Command {
    cmd.current_dir(dir.path())
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL")
        .env_remove("RUST_LOG")
        .env("BATCH_CACHE_DIR", dir.cache_dir())
        .stdin(Stdio::null());
    cmd
}

/// Runs the binary in `dir` with `args` and waits for it.
pub fn run<I, S>(dir: &TestDir, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    cmd(dir, args).output().expect("run batch")
}

/// The process exit code; panics (with the output) if it was killed by a signal.
pub fn code(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("batch was killed by a signal\n{}", show(out)))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit status, stdout and stderr, for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        stdout(out),
        stderr(out)
    )
}

/// Asserts the exit code, showing the output when it is wrong.
#[track_caller]
pub fn assert_code(out: &Output, expected: i32) {
    assert_eq!(code(out), expected, "unexpected exit code\n{}", show(out));
}

/// A `batch mock` server in a child process, killed when dropped.
pub struct MockProcess {
    child: Child,
    /// `http://127.0.0.1:PORT/v1`
    pub url: String,
    /// `127.0.0.1:PORT`
    pub addr: String,
    // Kept open so the server never gets a broken pipe on stdout.
    _stdout: BufReader<ChildStdout>,
}

impl MockProcess {
    /// Starts `batch mock --port 0 ARGS...` and waits for the URL line.
    pub fn start(args: &[&str]) -> MockProcess {
        MockProcess::start_on(0, args)
    }

    /// Starts `batch mock --port PORT ARGS...` and waits for the URL line. A mock started on the
    /// port of one that was stopped has the same base URL, so a run recorded against the first
    /// can be resumed against the second.
    pub fn start_on(port: u16, args: &[&str]) -> MockProcess {
        let mut child = Command::new(bin())
            .arg("mock")
            .args(["--port", &port.to_string()])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn batch mock");
        let mut stdout = BufReader::new(child.stdout.take().expect("mock stdout"));
        let mut line = String::new();
        if let Err(e) = stdout.read_line(&mut line) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("reading the mock's URL line: {e}");
        }
        let url = line.trim().to_string();
        let Some(addr) = url
            .strip_prefix("http://")
            .and_then(|rest| rest.strip_suffix("/v1"))
            .map(str::to_string)
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the mock's first line is not its base URL: {line:?}");
        };
        MockProcess {
            child,
            url,
            addr,
            _stdout: stdout,
        }
    }

    /// The port the mock listens on.
    #[allow(dead_code)]
    pub fn port(&self) -> u16 {
        let (_, port) = self.addr.rsplit_once(':').expect("addr is host:port");
        port.parse().expect("port is a number")
    }

    /// `GET /stats` as JSON, over a plain HTTP/1.1 connection.
    pub fn stats(&self) -> serde_json::Value {
        self.get_json("/stats")
    }

    /// `GET PATH` as JSON (a 200 is required), over a plain HTTP/1.1 connection.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let mut stream = TcpStream::connect(&self.addr).expect("connect to mock");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set read timeout");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .expect("send stats request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read stats response");
        let raw = String::from_utf8(raw).expect("stats response is UTF-8");
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("malformed HTTP response: {raw:?}"));
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "GET {path} failed: {head}"
        );
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decodes a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
            .expect("chunk size is hex");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = rest[size..]
            .strip_prefix("\r\n")
            .expect("chunk ends in CRLF");
    }
}

/// The answer the mock gives to `prompt`: it quotes the first and last 40 characters of the
/// prompt with whitespace folded, or all of it when it is 80 characters or fewer.
pub fn mock_answer(prompt: &str) -> String {
    const EDGE: usize = 40;
    let folded = prompt.split_whitespace().collect::<Vec<_>>().join(" ");
    let chars: Vec<char> = folded.chars().collect();
    let quote = if chars.len() <= 2 * EDGE {
        folded
    } else {
        let head: String = chars[..EDGE].iter().collect();
        let tail: String = chars[chars.len() - EDGE..].iter().collect();
        format!("{head}…{tail}")
    };
    format!("mock answer to \"{quote}\"")
}

/// One row of a results CSV, by column name.
pub type Row = HashMap<String, String>;

/// A column of a results row; panics naming the column if it is missing.
pub fn field<'a>(row: &'a Row, col: &str) -> &'a str {
    row.get(col)
        .unwrap_or_else(|| panic!("results have no column {col:?}: {row:?}"))
}

/// The `attempts` column as a number.
pub fn attempts(row: &Row) -> u64 {
    field(row, "attempts")
        .parse()
        .unwrap_or_else(|e| panic!("attempts is not a number ({e}): {row:?}"))
}

/// A JSON number field of the mock's stats.
pub fn stat(stats: &serde_json::Value, key: &str) -> u64 {
    stats[key]
        .as_u64()
        .unwrap_or_else(|| panic!("stats has no number {key:?}: {stats}"))
}

/// Responses the mock sent with HTTP status `status`.
pub fn responses(stats: &serde_json::Value, status: u16) -> u64 {
    stats["responses"][status.to_string()].as_u64().unwrap_or(0)
}

/// A CSV of `n` rows `id,text` with ids `r0001`... and distinct texts.
pub fn numbered_csv(n: usize) -> String {
    let mut s = String::from("id,text\n");
    for i in 1..=n {
        s.push_str(&format!("r{i:04},item number {i}\n"));
    }
    s
}

//! `-` as the input (stdin) or the results (stdout), for pipelines:
//! `cat rows.csv | batch run - -o - --prompt '...' | next-tool`.
//!
//! A run reads its input more than once (the pre-flight, the requests, a resume, the final
//! results pass), and stdin can be read once, so stdin is first copied to a file (the *spool*)
//! beside the run's state file, named after it: `results.sqlite` -> `results.stdin.csv`. So is
//! any input that is not a regular file (a FIFO, `<(cat x.csv)`, a device): it is opened once.
//! The copy is bounded by the input limits ([`InputLimits`]: `/dev/zero` stops at the row
//! limit, an endless stream of rows at the file limit), and removed on every way out: the
//! command's end, an error, Ctrl-C or SIGTERM (see [`SpoolGuard`]). `--resume` pipes the data
//! again, so nothing needs it after the process.
//!
//! Results on stdout are written, like a results file, to a temporary file beside the state
//! file, and copied to stdout only when the run ends, so what a pipeline reads is complete and in
//! input order; progress, warnings and the summary stay on stderr.
//!
//! With `-o -` there is no results path to put the state file beside, so it goes to the cache
//! folder: `<cache dir>/runs/<key>.sqlite`, where the key is a hash of the input file's path, or
//! for stdin of its content. Running the same command again (piping the same data) therefore
//! finds the same state, and `--resume` works; `--state PATH` puts it elsewhere.
//!
//! `--resume` with stdin input means: pipe the same data again. It is spooled again and matched
//! to the journal row by row, as a changed input file would be (rows whose request changed are
//! sent again). A terminal on stdin is refused: there would be nothing to read.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::base::error::{Error, describe_io};
use crate::base::format::{Format, is_std};
use crate::engine::input::InputLimits;
use crate::engine::input::limits::{Limited, limit_error};
use crate::engine::lock::StateLock;

/// Where a run's input and state live once `-` is resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The input file to read: the given path, or the spool of stdin.
    pub input: PathBuf,
    pub state: PathBuf,
    /// The input is a spool of stdin (removed when the run completes).
    pub spooled: bool,
    /// The job's lock, taken before the copy of stdin replaced the job's spool (so that a second
    /// process on the same job cannot replace the copy the first one is reading); the run keeps
    /// it instead of taking its own.
    pub lock: Option<Arc<StateLock>>,
}

/// Whether `path` is something other than a regular file or a folder (a FIFO, a pipe such as
/// `<(...)`'s `/dev/fd/63`, a device such as `/dev/zero`): it can be read only once.
pub fn is_stream(path: &Path) -> bool {
    !is_std(path) && std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// Resolves the input and state paths: spools stdin when the input is `-`, and puts the state
/// file in `runs_dir` when the results go to stdout and no `--state` is given.
pub fn resolve(
    input: &Path,
    input_format: Format,
    output: &Path,
    state: Option<PathBuf>,
    runs_dir: &Path,
    limits: InputLimits,
) -> Result<Resolved, Error> {
    let state =
        state.or_else(|| (!is_std(output)).then(|| crate::engine::store::default_path(output)));
    if !is_std(input) && !is_stream(input) {
        let state = match state {
            Some(s) => s,
            None => {
                let path = input.canonicalize().unwrap_or_else(|_| input.to_path_buf());
                let key = hex(&Sha256::digest(format!("file\n{}", path.display())));
                runs_path(runs_dir, &key)?
            }
        };
        return Ok(Resolved {
            input: input.to_path_buf(),
            state,
            spooled: false,
            lock: None,
        });
    }
    let stdin = std::io::stdin();
    if is_std(input) && stdin.is_terminal() {
        return Err(Error::Usage(
            "the input is - (stdin), but stdin is a terminal; pipe the rows in, e.g. `cat \
             rows.csv | batch run - ...`"
                .into(),
        ));
    }
    let dir = match &state {
        Some(s) => parent(s),
        None => {
            std::fs::create_dir_all(runs_dir).map_err(|e| {
                Error::Usage(format!(
                    "cannot create {} for the run's state (needed with -o -): {}; give --state \
                     PATH",
                    runs_dir.display(),
                    describe_io(&e)
                ))
            })?;
            runs_dir.to_path_buf()
        }
    };
    let (tmp, hash) = if is_std(input) {
        spool(&mut stdin.lock(), "stdin", &dir, limits)?
    } else {
        let mut file = std::fs::File::open(input).map_err(|e| {
            Error::Input(format!(
                "cannot read {}: {}",
                input.display(),
                describe_io(&e)
            ))
        })?;
        spool(&mut file, &input.display().to_string(), &dir, limits)?
    };
    let state = match state {
        Some(s) => s,
        None => runs_path(runs_dir, &hash)?,
    };
    let spool = spool_path(&state, input_format);
    let lock = StateLock::acquire(&state).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
        untrack(&tmp);
    })?;
    track(&spool);
    std::fs::rename(&tmp, &spool).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(
            format!("cannot write the copy of stdin to {}", spool.display()),
            e,
        )
    })?;
    untrack(&tmp);
    Ok(Resolved {
        input: spool,
        state,
        spooled: true,
        lock: lock.map(Arc::new),
    })
}

/// Where stdin is copied for a run whose state file is `state`.
pub fn spool_path(state: &Path, format: Format) -> PathBuf {
    state.with_extension(format!("stdin.{}", format.extension()))
}

/// The temporary file results for stdout are written to before they are copied out.
pub fn stdout_partial(state: &Path) -> PathBuf {
    let name = state
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "batch".into());
    parent(state).join(format!(".{name}.stdout.partial"))
}

/// Copies `from` to `tmp`, then to stdout, and removes it. A reader that went away (a closed
/// pipe, as with `| head`) is not an error.
pub fn copy_to_stdout(tmp: &Path) -> std::io::Result<()> {
    let mut file = std::fs::File::open(tmp)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let copied = std::io::copy(&mut file, &mut out).and_then(|_| out.flush());
    match copied {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn runs_path(runs_dir: &Path, key: &str) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(runs_dir).map_err(|e| {
        Error::Usage(format!(
            "cannot create {} for the run's state (needed with -o -): {}; give --state PATH",
            runs_dir.display(),
            describe_io(&e)
        ))
    })?;
    Ok(runs_dir.join(format!("{}.sqlite", &key[..16])))
}

/// Copies `from` (named `name` in messages) to a new temporary file in `dir`, within `limits`;
/// returns its path and the content's SHA-256.
fn spool(
    from: &mut impl Read,
    name: &str,
    dir: &Path,
    limits: InputLimits,
) -> Result<(PathBuf, String), Error> {
    let tmp = dir.join(format!(".batch-stdin-{}.partial", std::process::id()));
    let fail = |e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("cannot copy {name} to {}", tmp.display()), e)
    };
    remove_on_signal();
    track(&tmp);
    let mut from = Limited::new(from, limits);
    let mut file = std::fs::File::create(&tmp).map_err(fail)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(limit_error(name, &e)
                    .unwrap_or_else(|| Error::io(format!("cannot read {name}"), e)));
            }
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(fail)?;
    }
    file.sync_all().map_err(fail)?;
    Ok((tmp, hex(&hasher.finalize())))
}

/// The spools this process has made and not yet removed.
static SPOOLS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Set once something above (a run's own signal handling) watches Ctrl-C and SIGTERM, and
/// leaves by returning (so [`SpoolGuard`] runs) or through [`remove_spools`].
pub static SIGNALS_WATCHED: AtomicBool = AtomicBool::new(false);

fn track(path: &Path) {
    if let Ok(mut s) = SPOOLS.lock() {
        s.push(path.to_path_buf());
    }
}

fn untrack(path: &Path) {
    if let Ok(mut s) = SPOOLS.lock() {
        s.retain(|p| p != path);
    }
}

/// Removes every spool this process made. Called on the way out, however the process leaves.
pub fn remove_spools() {
    let spools = SPOOLS.lock().map(|mut s| std::mem::take(&mut *s));
    for path in spools.unwrap_or_default() {
        let _ = std::fs::remove_file(path);
    }
}

/// Removes the spools when dropped: a command holds one for its whole life, so they go on
/// success, on an error, and after a run stopped by a signal.
pub struct SpoolGuard;

impl Drop for SpoolGuard {
    fn drop(&mut self) {
        remove_spools();
    }
}

/// Until a run watches signals itself ([`SIGNALS_WATCHED`]), Ctrl-C or SIGTERM while stdin is
/// copied (or the pre-flight reads the copy) removes it and exits with 130, as the signal would
/// have without the copy. On its own thread, so a copy that blocks the runtime cannot delay it;
/// returns once the signals are watched, so none arrives before.
fn remove_on_signal() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Some(mut signals) = Signals::watch() else {
                    return;
                };
                let _ = ready_tx.send(());
                while signals.next().await {
                    if !SIGNALS_WATCHED.load(Ordering::SeqCst) {
                        remove_spools();
                        std::process::exit(crate::base::error::ExitStatus::Interrupted as i32);
                    }
                }
            });
        });
        // An error (the thread could not watch) also ends the wait.
        let _ = ready.recv();
    });
}

/// Ctrl-C and SIGTERM, watched.
#[cfg(unix)]
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn watch() -> Option<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Some(Signals {
            int: signal(SignalKind::interrupt()).ok()?,
            term: signal(SignalKind::terminate()).ok()?,
        })
    }

    /// The next signal; `false` if no more can come.
    async fn next(&mut self) -> bool {
        tokio::select! {
            r = self.int.recv() => r.is_some(),
            r = self.term.recv() => r.is_some(),
        }
    }
}

/// Ctrl-C, watched (SIGTERM is unix only).
#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn watch() -> Option<Self> {
        Some(Signals)
    }

    async fn next(&mut self) -> bool {
        tokio::signal::ctrl_c().await.is_ok()
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_copies_and_hashes_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, hash) = spool(
            &mut &b"id,text\n1,a\n"[..],
            "stdin",
            dir.path(),
            InputLimits::default(),
        )
        .unwrap();
        assert_eq!(std::fs::read(&tmp).unwrap(), b"id,text\n1,a\n");
        let (_, same) = spool(
            &mut &b"id,text\n1,a\n"[..],
            "stdin",
            dir.path(),
            InputLimits::default(),
        )
        .unwrap();
        let (_, other) = spool(
            &mut &b"id,text\n1,b\n"[..],
            "stdin",
            dir.path(),
            InputLimits::default(),
        )
        .unwrap();
        assert_eq!(hash, same);
        assert_ne!(hash, other);
    }

    #[test]
    fn files_beside_the_state_are_named_after_it() {
        let state = Path::new("out/results.sqlite");
        assert_eq!(
            spool_path(state, Format::Jsonl),
            Path::new("out/results.stdin.jsonl")
        );
        assert_eq!(
            stdout_partial(state),
            Path::new("out/.results.stdout.partial")
        );
    }

    #[test]
    fn a_file_input_with_stdout_results_keeps_its_state_in_the_runs_folder() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.csv");
        std::fs::write(&input, "a\n1\n").unwrap();
        let runs = dir.path().join("runs");
        let a = resolve(
            &input,
            Format::Csv,
            Path::new("-"),
            None,
            &runs,
            InputLimits::default(),
        )
        .unwrap();
        let b = resolve(
            &input,
            Format::Csv,
            Path::new("-"),
            None,
            &runs,
            InputLimits::default(),
        )
        .unwrap();
        assert_eq!(a.state, b.state, "the same input finds the same state");
        assert!(a.state.starts_with(&runs) && !a.spooled);
        let c = resolve(
            &input,
            Format::Csv,
            Path::new("r.csv"),
            None,
            &runs,
            InputLimits::default(),
        )
        .unwrap();
        assert_eq!(c.state, Path::new("r.sqlite"));
    }
}

//! The response cache: answers to exact requests, kept across runs so that rerunning a job,
//! or the part of it that did not change, costs nothing.
//!
//! The key is the request hash (SHA-256 of the endpoint and the exact body sent: model,
//! messages, every generation parameter), so any change to any of them misses. Only complete,
//! successful answers are kept: never errors, and never answers cut off by the token cap unless
//! asked (`--cache-truncated`). The cache is an SQLite file in the user's cache directory
//! (`--cache-dir`, `BATCH_CACHE_DIR`, else `$XDG_CACHE_HOME/batch` or `~/.cache/batch`), so it is
//! shared by every job of the user and can be inspected with any SQLite client.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

use crate::base::error::Error;
use crate::base::usage::Usage;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS answers (
    key               TEXT PRIMARY KEY,
    created_at        INTEGER NOT NULL,
    text              TEXT NOT NULL,
    finish_reason     TEXT NOT NULL,
    model             TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens  INTEGER NOT NULL,
    cost_usd          REAL
);
";

/// An answer as cached: what the row's result needs, and what it cost the first time.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAnswer {
    pub text: String,
    pub finish_reason: String,
    pub model: String,
    pub usage: Usage,
    pub cost_usd: Option<f64>,
}

/// The default cache folder.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BATCH_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("batch");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("batch"),
        None => std::env::temp_dir().join("batch-cache"),
    }
}

pub struct Cache {
    conn: Connection,
    path: PathBuf,
    /// Look-ups made in the read transaction [`Cache::get_in_snapshot`] holds open (0: none).
    snapshot_reads: std::cell::Cell<u32>,
    /// The write-ahead log's size past which a write truncates it ([`WAL_LIMIT`]).
    wal_limit: u64,
}

/// Look-ups in one read transaction, at most (see [`Cache::get_in_snapshot`]).
const SNAPSHOT_READS: u32 = 64;

/// Bytes of write-ahead log past which the writer checkpoints it and truncates it. SQLite starts
/// the log over only at a write that finds no reader in it, and the run's look-ups, each
/// snapshot open for up to [`SNAPSHOT_READS`] of them, can keep one there for a whole run: the
/// log then grows with every answer written, and every look-up searches it.
const WAL_LIMIT: u64 = 64 << 20;

/// What `batch cache stats` shows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CacheStats {
    pub path: String,
    pub entries: u64,
    pub file_bytes: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// What the cached answers cost when they were first paid for.
    pub cost_usd: f64,
    pub oldest: Option<String>,
    pub newest: Option<String>,
}

impl Cache {
    /// Opens (creating if need be) the cache in folder `dir`.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Usage(format!(
                "cannot create the cache folder {}: {e} (choose another with --cache-dir, or \
                 --no-cache)",
                dir.display()
            ))
        })?;
        let path = dir.join("cache.sqlite");
        let conn = Connection::open(&path).map_err(|e| cache_error(&path, &e))?;
        // Checkpoints every 10,000 pages rather than 1,000, as the run's state does: new answers
        // land on random pages of the key index, and a checkpoint (with its fsync) every few
        // commits was most of what the cache cost a run.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; \
             PRAGMA wal_autocheckpoint = 10000;",
        )
        .and_then(|_| conn.execute_batch(SCHEMA))
        .map_err(|e| cache_error(&path, &e))?;
        Ok(Cache {
            conn,
            path,
            snapshot_reads: std::cell::Cell::new(0),
            wal_limit: WAL_LIMIT,
        })
    }

    /// Checkpoints the write-ahead log and truncates it once it is past [`WAL_LIMIT`]. SQLite
    /// waits (up to the busy timeout) for readers to move to the latest snapshot, which the
    /// run's do every [`SNAPSHOT_READS`] look-ups. Best effort: a log that stays large costs
    /// time, not answers, so a failure here fails no write.
    fn truncate_large_wal(&self) {
        let wal = format!("{}-wal", self.path.display());
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > self.wal_limit) {
            let done = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                });
            if !matches!(done, Ok(0)) {
                tracing::debug!("the cache's log {wal} was not truncated: {done:?}");
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`Cache::get`] inside a read transaction kept open for up to [`SNAPSHOT_READS`]
    /// look-ups: a look-up on its own is a transaction of its own, whose locks (a few `fcntl`
    /// calls) and page-cache check cost more than the look-up; one a row was a seventh of
    /// what a run spent per row. The snapshot is at most that many look-ups old; the caller
    /// ends it with [`Cache::end_snapshot`] before it waits, so that it neither keeps the
    /// cache's log from being checkpointed nor misses answers written meanwhile.
    pub fn get_in_snapshot(&self, key: &str) -> Result<Option<CachedAnswer>, Error> {
        if self.snapshot_reads.get() >= SNAPSHOT_READS {
            self.end_snapshot();
        }
        match self.snapshot_reads.get() {
            // A failed BEGIN only means this look-up is a transaction of its own.
            0 if self.conn.is_autocommit() && self.conn.execute_batch("BEGIN").is_ok() => {
                self.snapshot_reads.set(1)
            }
            0 => {}
            n => self.snapshot_reads.set(n + 1),
        }
        self.get(key)
    }

    /// Ends the read transaction of [`Cache::get_in_snapshot`], if one is open.
    pub fn end_snapshot(&self) {
        if self.snapshot_reads.replace(0) > 0 && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("COMMIT");
        }
    }

    pub fn get(&self, key: &str) -> Result<Option<CachedAnswer>, Error> {
        self.conn
            .prepare_cached(
                "SELECT text, finish_reason, model, prompt_tokens, completion_tokens, \
                 cached_tokens, cache_write_tokens, reasoning_tokens, cost_usd FROM answers \
                 WHERE key = ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_row([key], |r| {
                    let n = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)? as u64) };
                    Ok(CachedAnswer {
                        text: r.get(0)?,
                        finish_reason: r.get(1)?,
                        model: r.get(2)?,
                        usage: Usage {
                            prompt_tokens: n(3)?,
                            completion_tokens: n(4)?,
                            cached_tokens: n(5)?,
                            cache_write_tokens: n(6)?,
                            reasoning_tokens: n(7)?,
                        },
                        cost_usd: r.get(8)?,
                    })
                })
                .optional()
            })
            .map_err(|e| cache_error(&self.path, &e))
    }

    /// Stores answers (replacing any under the same key) in one transaction.
    pub fn put_many<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (&'a str, &'a CachedAnswer)>,
    ) -> Result<(), Error> {
        self.end_snapshot();
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| cache_error(&path, &e))?;
        let now = unix_now();
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO answers (key, created_at, text, finish_reason, model, \
                     prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, \
                     reasoning_tokens, cost_usd) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(|e| cache_error(&path, &e))?;
            for (key, a) in entries {
                let u = a.usage;
                stmt.execute(params![
                    key,
                    now,
                    a.text,
                    a.finish_reason,
                    a.model,
                    u.prompt_tokens as i64,
                    u.completion_tokens as i64,
                    u.cached_tokens as i64,
                    u.cache_write_tokens as i64,
                    u.reasoning_tokens as i64,
                    a.cost_usd,
                ])
                .map_err(|e| cache_error(&path, &e))?;
            }
        }
        tx.commit().map_err(|e| cache_error(&path, &e))?;
        self.truncate_large_wal();
        Ok(())
    }

    pub fn stats(&self) -> Result<CacheStats, Error> {
        let (entries, prompt, completion, cost, oldest, newest) = self
            .conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), \
                 COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cost_usd), 0.0), \
                 MIN(created_at), MAX(created_at) FROM answers",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, i64>(2)? as u64,
                        r.get::<_, f64>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                    ))
                },
            )
            .map_err(|e| cache_error(&self.path, &e))?;
        let when = |t: Option<i64>| {
            t.map(|t| {
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t.max(0) as u64))
                    .to_string()
            })
        };
        let file_bytes = ["", "-wal"]
            .iter()
            .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", self.path.display())).ok())
            .map(|m| m.len())
            .sum();
        Ok(CacheStats {
            path: self.path.display().to_string(),
            entries,
            file_bytes,
            prompt_tokens: prompt,
            completion_tokens: completion,
            cost_usd: cost,
            oldest: when(oldest),
            newest: when(newest),
        })
    }

    /// Removes every entry, or those older than `older_than`; returns how many.
    pub fn clear(&mut self, older_than: Option<Duration>) -> Result<u64, Error> {
        let cutoff = match older_than {
            Some(age) => unix_now() - age.as_secs() as i64,
            None => i64::MAX,
        };
        self.end_snapshot();
        let n = self
            .conn
            .execute("DELETE FROM answers WHERE created_at <= ?1", [cutoff])
            .map_err(|e| cache_error(&self.path, &e))?;
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;")
            .map_err(|e| cache_error(&self.path, &e))?;
        Ok(n as u64)
    }
}

/// Stores a run's new answers in large sorted groups: an answer's key lands on a random page of
/// the key index, so each commit rewrites about one page per answer unless many answers share
/// the commit (and, sorted, share pages). The journal, not the cache, is what makes a run
/// resumable, so answers waiting here when a run is killed are only answers not cached.
///
/// The groups are written on a thread of their own: written by the journal's thread, each one
/// held up the journal (and so the release of every row's slot) for as long as its commit took,
/// which is what made the cache cost a run a third of its throughput. At most one group waits
/// for the writer, so memory stays at two groups.
pub struct CacheWriter {
    /// The cache, while no writer thread has it.
    cache: Option<Cache>,
    worker: Option<Worker>,
    pending: Vec<(String, CachedAnswer)>,
    /// Rows journaled since the last write, answers or not.
    rows: usize,
    last_flush: std::time::Instant,
}

/// The writer thread, and its queue of sorted groups.
struct Worker {
    tx: std::sync::mpsc::SyncSender<Vec<(String, CachedAnswer)>>,
    handle: std::thread::JoinHandle<(Cache, Result<(), Error>)>,
}

impl Worker {
    fn start(mut cache: Cache) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(String, CachedAnswer)>>(1);
        let handle = std::thread::spawn(move || {
            for group in rx {
                if let Err(e) = cache.put_many(group.iter().map(|(k, a)| (k.as_str(), a))) {
                    return (cache, Err(e));
                }
            }
            (cache, Ok(()))
        });
        Worker { tx, handle }
    }

    /// Waits until every group sent is written (or one failed). No cache comes back from a
    /// thread that died.
    fn finish(self) -> (Option<Cache>, Result<(), Error>) {
        drop(self.tx);
        match self.handle.join() {
            Ok((cache, written)) => (Some(cache), written),
            Err(_) => {
                let died = std::io::Error::other("the cache writer thread stopped");
                (
                    None,
                    Err(Error::io("cannot write the response cache", died)),
                )
            }
        }
    }
}

impl CacheWriter {
    /// Rows journaled between writes, at most. [`crate::engine::dedup`] counts on an answer
    /// being in the cache at most a few times this many journaled rows after it was journaled
    /// (this group, and the one the writer thread may still be writing).
    pub const GROUP: usize = 8192;
    /// And time between writes, at most (a slow run still caches as it goes).
    const EVERY: Duration = Duration::from_secs(2);

    pub fn new(cache: Cache) -> Self {
        CacheWriter {
            cache: Some(cache),
            worker: None,
            pending: Vec::new(),
            rows: 0,
            last_flush: std::time::Instant::now(),
        }
    }

    /// Queues an answer for the next write.
    pub fn add(&mut self, key: &str, answer: CachedAnswer) {
        self.pending.push((key.to_string(), answer));
    }

    /// `rows` more rows were journaled (with their answers added): hands the queue to the
    /// writer thread once [`Self::GROUP`] rows or [`Self::EVERY`] have passed since the last
    /// time. An error is that of an earlier group, which stopped the writer.
    pub fn journaled(&mut self, rows: usize) -> Result<(), Error> {
        self.rows += rows;
        if self.rows >= Self::GROUP || self.last_flush.elapsed() >= Self::EVERY {
            return self.hand_over();
        }
        Ok(())
    }

    /// Hands the queued answers, in key order, to the writer thread (started if need be).
    fn hand_over(&mut self) -> Result<(), Error> {
        self.last_flush = std::time::Instant::now();
        self.rows = 0;
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if self.worker.is_none()
            && let Some(cache) = self.cache.take()
        {
            self.worker = Some(Worker::start(cache));
        }
        let Some(worker) = &self.worker else {
            return Ok(());
        };
        if worker.tx.send(pending).is_err() {
            // The writer stopped at an error: it says which.
            return self.wait();
        }
        Ok(())
    }

    /// Waits for the writer thread to write everything handed over, and takes the cache back.
    fn wait(&mut self) -> Result<(), Error> {
        match self.worker.take() {
            Some(worker) => {
                let (cache, written) = worker.finish();
                self.cache = cache;
                written
            }
            None => Ok(()),
        }
    }

    /// Writes every queued answer, and returns once they are written.
    pub fn flush(&mut self) -> Result<(), Error> {
        let handed = self.hand_over();
        let written = self.wait();
        handed.and(written)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn cache_error(path: &Path, e: &rusqlite::Error) -> Error {
    Error::Usage(format!(
        "cannot use the response cache {}: {e} (--cache-dir puts it elsewhere; --no-cache runs \
         without it)",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(text: &str) -> CachedAnswer {
        CachedAnswer {
            text: text.into(),
            finish_reason: "stop".into(),
            model: "m".into(),
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 2,
                ..Default::default()
            },
            cost_usd: Some(0.25),
        }
    }

    #[test]
    fn answers_round_trip_and_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cache::open(dir.path()).unwrap();
        assert_eq!(c.get("k").unwrap(), None);
        c.put_many([("k", &answer("one")), ("j", &answer("two"))])
            .unwrap();
        assert_eq!(c.get("k").unwrap().unwrap().text, "one");
        c.put_many([("k", &answer("three"))]).unwrap();
        assert_eq!(c.get("k").unwrap(), Some(answer("three")));
        let s = c.stats().unwrap();
        assert_eq!((s.entries, s.prompt_tokens), (2, 20));
        assert!((s.cost_usd - 0.5).abs() < 1e-12);
    }

    #[test]
    fn the_writer_stores_in_groups_and_on_flush() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = CacheWriter::new(Cache::open(dir.path()).unwrap());
        let reader = Cache::open(dir.path()).unwrap();
        for i in 0..10 {
            w.add(&format!("k{i}"), answer("a"));
        }
        w.journaled(10).unwrap();
        assert_eq!(reader.stats().unwrap().entries, 0, "waits for a group");
        // A group of rows journaled (answers or not) hands what is queued to the writer thread.
        w.journaled(CacheWriter::GROUP - 10).unwrap();
        assert!(w.pending.is_empty() && w.worker.is_some());
        w.wait().unwrap();
        assert_eq!(reader.stats().unwrap().entries, 10);
        w.add("last", answer("b"));
        assert_eq!(reader.get("last").unwrap(), None);
        w.flush().unwrap();
        assert_eq!(reader.get("last").unwrap().unwrap().text, "b");
    }

    #[test]
    fn a_log_past_its_limit_is_truncated_once_readers_move_on() {
        let dir = tempfile::tempdir().unwrap();
        let reader = Cache::open(dir.path()).unwrap();
        let mut writer = Cache::open(dir.path()).unwrap();
        let wal = dir.path().join("cache.sqlite-wal");
        let wal_len = || std::fs::metadata(&wal).unwrap().len();
        let big = answer(&"x".repeat(100_000));
        writer.put_many([("a", &big)]).unwrap();
        // A reader in the log, as the run's look-ups are, keeps SQLite from starting it over.
        assert!(reader.get_in_snapshot("a").unwrap().is_some());
        for i in 0..12 {
            writer.put_many([(format!("k{i}").as_str(), &big)]).unwrap();
        }
        reader.end_snapshot();
        let grown = wal_len();
        assert!(grown > 1 << 20, "{grown}");
        // Nothing starts it over by itself (the next automatic checkpoint is at 40 MB): past the
        // limit, the next write truncates it.
        writer.wal_limit = 1 << 20;
        writer.put_many([("last", &big)]).unwrap();
        assert!(wal_len() < grown / 4, "the log is still {}", wal_len());
        assert_eq!(reader.get("last").unwrap().unwrap().text, big.text);
        assert_eq!(reader.get("k11").unwrap().unwrap().text, big.text);
    }

    #[test]
    fn reads_in_a_snapshot_see_writes_once_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let reader = Cache::open(dir.path()).unwrap();
        let mut writer = Cache::open(dir.path()).unwrap();
        assert_eq!(reader.get_in_snapshot("k").unwrap(), None);
        assert!(
            !reader.conn.is_autocommit(),
            "the read transaction stays open"
        );
        writer.put_many([("k", &answer("one"))]).unwrap();
        // The snapshot predates the write; a new one sees it.
        assert_eq!(reader.get_in_snapshot("k").unwrap(), None);
        reader.end_snapshot();
        assert!(reader.conn.is_autocommit());
        assert_eq!(reader.get_in_snapshot("k").unwrap().unwrap().text, "one");
        // A snapshot ends by itself after SNAPSHOT_READS look-ups.
        writer.put_many([("j", &answer("two"))]).unwrap();
        for _ in 1..SNAPSHOT_READS {
            assert_eq!(reader.get_in_snapshot("j").unwrap(), None);
        }
        assert_eq!(reader.get_in_snapshot("j").unwrap().unwrap().text, "two");
        // Writing through a connection with a snapshot open ends it first.
        let mut both = Cache::open(dir.path()).unwrap();
        assert!(both.get_in_snapshot("k").unwrap().is_some());
        both.put_many([("i", &answer("three"))]).unwrap();
        assert_eq!(both.get("i").unwrap().unwrap().text, "three");
    }

    #[test]
    fn clear_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cache::open(dir.path()).unwrap();
        c.put_many([("k", &answer("one"))]).unwrap();
        assert_eq!(c.clear(Some(Duration::from_secs(3600))).unwrap(), 0);
        assert_eq!(c.clear(None).unwrap(), 1);
        assert_eq!(c.stats().unwrap().entries, 0);
    }
}

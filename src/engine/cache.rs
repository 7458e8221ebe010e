//! The response cache: answers to exact requests, kept across runs so that rerunning a job,
//! or the part of it that did not change, costs nothing.
//!
//! The key is the request hash (SHA-256 of the endpoint and the exact body sent: model,
//! messages, every generation parameter), so any change to any of them misses. Only complete,
//! successful answers are kept: never errors, and never answers cut off by the token cap unless
//! asked (`--cache-truncated`). The cache is an SQLite file in the user's cache directory
//! (`--cache-dir`, `BATCH_CACHE_DIR`, else `$XDG_CACHE_HOME/batch` or `~/.cache/batch`), so it is
//! shared by every job of the user and can be inspected with any SQLite client.
//!
//! How it is laid out, and why: keys are hashes, so a key index takes each new answer to a
//! random page of it, and a commit rewrote about a page (twice: the log, then the file) per
//! answer; a cache of a few million answers wrote 11 KB per answer and slowed a run of ten
//! million rows by a fifth as it grew. So the answers are appended to `entries` (in the order
//! they come: whole pages written once), and their keys (the first 64 bits of the hash, to the
//! answer's id) go to a small table, `fresh_keys`, that stays in memory's reach, and from it to
//! the large one, `entry_keys`, a quarter of a million at a time, in key order: one pass over
//! the large table's pages for many keys. A look-up asks both. The full key is kept with the
//! answer and compared, so two keys sharing 64 bits only cost a miss. A key stored again (a
//! `--refresh-cache` run) replaces its answer: the one it replaced is deleted as the new one is
//! written (ids are never reused, so a key left pointing at it points at nothing).
//!
//! Files written before this layout keep their answers in `answers` (key, then answer); they are
//! moved to the new tables when a `batch` opens the file, and `answers` is left empty (for an
//! older `batch`, which then finds nothing and fills it again; the next open moves those too).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, OptionalExtension, params};

use crate::base::error::Error;
use crate::base::usage::Usage;

mod writer;

pub use writer::CacheWriter;

/// The answer columns, in `entries` as they were in `answers`.
const ANSWER_COLUMNS: &str = "created_at, text, finish_reason, model, prompt_tokens, \
    completion_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, cost_usd";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    key               TEXT NOT NULL,
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
CREATE TABLE IF NOT EXISTS fresh_keys (k INTEGER PRIMARY KEY, id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entry_keys (k INTEGER PRIMARY KEY, id INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS fresh_key_replaced AFTER UPDATE ON fresh_keys
    WHEN OLD.id <> NEW.id BEGIN DELETE FROM entries WHERE id = OLD.id; END;
CREATE TRIGGER IF NOT EXISTS entry_key_replaced AFTER UPDATE ON entry_keys
    WHEN OLD.id <> NEW.id BEGIN DELETE FROM entries WHERE id = OLD.id; END;
";

/// Keys in `fresh_keys` past which a write moves them to `entry_keys`. Each move passes over
/// `entry_keys` once, so the larger this is the fewer passes; the table stays a few MB.
const FRESH_KEYS: u64 = 1 << 18;

/// The first 64 bits of a key, which the key tables are ordered by: its first 16 hex digits (a
/// request hash's), or an FNV-1a hash of any other key.
pub fn key_prefix(key: &str) -> i64 {
    match key.get(..16).map(|h| u64::from_str_radix(h, 16)) {
        Some(Ok(k)) => k as i64,
        _ => {
            let fnv = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            fnv as i64
        }
    }
}

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
    /// Keys in `fresh_keys`, once a write has counted them.
    fresh_keys: Option<u64>,
    /// [`FRESH_KEYS`], lowered by tests.
    fresh_limit: u64,
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
    /// Opens (creating if need be) the cache in folder `dir`, moving the answers of the earlier
    /// layout into this one.
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
        // Checkpoints every 10,000 pages rather than 1,000, as the run's state does.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; \
             PRAGMA wal_autocheckpoint = 10000;",
        )
        .and_then(|_| conn.execute_batch(SCHEMA))
        .and_then(|_| {
            conn.create_scalar_function(
                "batch_key_prefix",
                1,
                FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
                |ctx| Ok(key_prefix(&ctx.get::<String>(0)?)),
            )
        })
        .map_err(|e| cache_error(&path, &e))?;
        // A cache whose earlier answers cannot be moved now (another process holds it, or a
        // row is unreadable) still serves: the move is tried again at the next open.
        if let Err(e) = move_earlier_answers(&conn) {
            tracing::warn!(
                "{}: answers of an earlier batch not moved yet: {e}",
                path.display()
            );
        }
        Ok(Cache {
            conn,
            path,
            snapshot_reads: std::cell::Cell::new(0),
            wal_limit: WAL_LIMIT,
            fresh_keys: None,
            fresh_limit: FRESH_KEYS,
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

    /// The answer stored under `key`, through either key table. At most one leads to it:
    /// storing a key again deletes the answer the other led to. (Scalar subqueries: an `IN`
    /// list was a temporary table built for every look-up.)
    pub fn get(&self, key: &str) -> Result<Option<CachedAnswer>, Error> {
        self.conn
            .prepare_cached(
                "SELECT text, finish_reason, model, prompt_tokens, completion_tokens, \
                 cached_tokens, cache_write_tokens, reasoning_tokens, cost_usd FROM entries \
                 WHERE id = (SELECT id FROM fresh_keys WHERE k = ?1) AND key = ?2 \
                 UNION ALL \
                 SELECT text, finish_reason, model, prompt_tokens, completion_tokens, \
                 cached_tokens, cache_write_tokens, reasoning_tokens, cost_usd FROM entries \
                 WHERE id = (SELECT id FROM entry_keys WHERE k = ?1) AND key = ?2 LIMIT 1",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![key_prefix(key), key], |r| {
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

    /// Stores answers (replacing any under the same key) in one transaction: appended to
    /// `entries`, their keys to `fresh_keys`; then, once that holds [`FRESH_KEYS`], moves them.
    pub fn put_many<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (&'a str, &'a CachedAnswer)>,
    ) -> Result<(), Error> {
        self.end_snapshot();
        let path = self.path.clone();
        let added = self.append(entries).map_err(|e| cache_error(&path, &e))?;
        let fresh = match self.fresh_keys {
            Some(n) => n + added,
            None => self
                .conn
                .query_row("SELECT COUNT(*) FROM fresh_keys", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(|e| cache_error(&path, &e))? as u64,
        };
        self.fresh_keys = Some(fresh);
        // Best effort: the answers are committed; keys that could not move (another process
        // held the file longer than the busy timeout) stay fresh and move at a later write.
        if fresh >= self.fresh_limit {
            match self.move_fresh_keys() {
                Ok(()) => self.fresh_keys = Some(0),
                Err(e) => tracing::debug!("{}: fresh keys not moved yet: {e}", path.display()),
            }
        }
        self.truncate_large_wal();
        Ok(())
    }

    /// Appends the answers and their keys; returns how many keys were added.
    fn append<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (&'a str, &'a CachedAnswer)>,
    ) -> rusqlite::Result<u64> {
        let tx = self.conn.transaction()?;
        let now = unix_now();
        let mut keys = Vec::new();
        {
            let mut stmt = tx.prepare_cached(&format!(
                "INSERT INTO entries (key, {ANSWER_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
            ))?;
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
                ])?;
                keys.push((key_prefix(key), tx.last_insert_rowid()));
            }
        }
        // In key order, the pages of `fresh_keys` are visited once each. Of a key given twice,
        // the later answer wins (the upsert's trigger deletes the earlier one). An answer it
        // replaces among the moved keys is deleted now (its key row is left, pointing at
        // nothing, until the move overwrites it): a look-up there only reads pages.
        keys.sort_by_key(|&(k, _)| k);
        let list = keys
            .iter()
            .map(|(k, _)| k.to_string())
            .collect::<Vec<_>>()
            .join(",");
        tx.prepare_cached(
            "DELETE FROM entries WHERE id IN (SELECT id FROM entry_keys \
             WHERE k IN (SELECT value FROM json_each(?1)))",
        )?
        .execute([format!("[{list}]")])?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO fresh_keys (k, id) VALUES (?1, ?2) \
                 ON CONFLICT (k) DO UPDATE SET id = excluded.id",
            )?;
            for (k, id) in &keys {
                stmt.execute([k, id])?;
            }
        }
        tx.commit()?;
        Ok(keys.len() as u64)
    }

    /// Moves the keys of `fresh_keys` to `entry_keys`, in key order, in one transaction.
    fn move_fresh_keys(&mut self) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute_batch(
            "INSERT INTO entry_keys (k, id) SELECT k, id FROM fresh_keys WHERE true ORDER BY k \
                 ON CONFLICT (k) DO UPDATE SET id = excluded.id; \
             DELETE FROM fresh_keys;",
        )?;
        tx.commit()
    }

    pub fn stats(&self) -> Result<CacheStats, Error> {
        let (entries, prompt, completion, cost, oldest, newest) = self
            .conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), \
                 COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cost_usd), 0.0), \
                 MIN(created_at), MAX(created_at) FROM entries",
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
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| cache_error(&path, &e))?;
        let removed = tx
            .execute("DELETE FROM entries WHERE created_at <= ?1", [cutoff])
            .and_then(|n| {
                tx.execute_batch(
                    "DELETE FROM fresh_keys WHERE NOT EXISTS \
                         (SELECT 1 FROM entries e WHERE e.id = fresh_keys.id); \
                     DELETE FROM entry_keys WHERE NOT EXISTS \
                         (SELECT 1 FROM entries e WHERE e.id = entry_keys.id);",
                )
                .map(|()| n)
            })
            .and_then(|n| tx.commit().map(|()| n))
            .map_err(|e| cache_error(&path, &e))?;
        self.fresh_keys = None;
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;")
            .map_err(|e| cache_error(&self.path, &e))?;
        Ok(removed as u64)
    }
}

/// Moves the answers of the earlier layout (table `answers`, if it has any) into this one, in
/// one transaction: whoever opens the file first moves them, once.
fn move_earlier_answers(conn: &Connection) -> rusqlite::Result<()> {
    let has_answers = |conn: &Connection| -> rusqlite::Result<bool> {
        let table: Option<String> = conn
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'answers'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        match table {
            Some(_) => conn.query_row("SELECT EXISTS (SELECT 1 FROM answers)", [], |r| r.get(0)),
            None => Ok(false),
        }
    };
    if !has_answers(conn)? {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let moved = (|| {
        if !has_answers(conn)? {
            return Ok(());
        }
        let last: i64 =
            conn.query_row("SELECT COALESCE(MAX(id), 0) FROM entries", [], |r| r.get(0))?;
        conn.execute_batch(&format!(
            "INSERT INTO entries (key, {ANSWER_COLUMNS}) \
                 SELECT key, {ANSWER_COLUMNS} FROM answers WHERE typeof(key) = 'text' \
                 ORDER BY rowid; \
             INSERT INTO entry_keys (k, id) SELECT batch_key_prefix(key), id FROM entries \
                 WHERE id > {last} ORDER BY 1, 2 ON CONFLICT (k) DO UPDATE SET id = excluded.id; \
             DELETE FROM answers;"
        ))
    })();
    match moved {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
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
pub(crate) mod tests {
    use super::*;

    pub(crate) fn answer(text: &str) -> CachedAnswer {
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

    /// Every answer's table row count: (entries, fresh keys, moved keys).
    fn tables(c: &Cache) -> (i64, i64, i64) {
        let n = |t: &str| {
            c.conn
                .query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
                .unwrap()
        };
        (n("entries"), n("fresh_keys"), n("entry_keys"))
    }

    #[test]
    fn fresh_keys_move_to_the_large_table_and_stay_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cache::open(dir.path()).unwrap();
        c.fresh_limit = 4;
        let key = |i: u64| format!("{:016x}{:048}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15), 0);
        let (k0, k1, k2) = (key(0), key(1), key(2));
        c.put_many([(k0.as_str(), &answer("a")), (k1.as_str(), &answer("b"))])
            .unwrap();
        assert_eq!(tables(&c), (2, 2, 0));
        let (k3, k4) = (key(3), key(4));
        c.put_many([(k2.as_str(), &answer("c")), (k3.as_str(), &answer("d"))])
            .unwrap();
        assert_eq!(tables(&c), (4, 0, 4), "four fresh keys moved");
        c.put_many([(k4.as_str(), &answer("e"))]).unwrap();
        assert_eq!(tables(&c), (5, 1, 4));
        for (k, text) in [(&k0, "a"), (&k1, "b"), (&k2, "c"), (&k3, "d"), (&k4, "e")] {
            assert_eq!(c.get(k).unwrap().unwrap().text, text, "{k}");
        }
        // A key stored again replaces its answer, in either table, and the old one is gone.
        c.put_many([(k0.as_str(), &answer("a2")), (k4.as_str(), &answer("e2"))])
            .unwrap();
        // The replaced answers are deleted at once, in either table.
        assert_eq!(tables(&c), (5, 2, 4));
        assert_eq!(c.get(&k0).unwrap().unwrap().text, "a2");
        assert_eq!(c.get(&k4).unwrap().unwrap().text, "e2");
        c.put_many([
            (key(5).as_str(), &answer("f")),
            (key(6).as_str(), &answer("g")),
        ])
        .unwrap();
        assert_eq!(tables(&c), (7, 0, 7));
        assert_eq!(c.get(&k0).unwrap().unwrap().text, "a2");
        assert_eq!(c.stats().unwrap().entries, 7);
    }

    #[test]
    fn keys_sharing_their_first_64_bits_only_miss() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cache::open(dir.path()).unwrap();
        let (a, b) = (
            format!("{}{}", "ab".repeat(8), "0".repeat(48)),
            format!("{}{}", "ab".repeat(8), "1".repeat(48)),
        );
        assert_eq!(key_prefix(&a), key_prefix(&b));
        c.put_many([(a.as_str(), &answer("a"))]).unwrap();
        assert_eq!(c.get(&b).unwrap(), None, "same prefix, other key: a miss");
        c.put_many([(b.as_str(), &answer("b"))]).unwrap();
        assert_eq!(c.get(&b).unwrap().unwrap().text, "b");
        assert_eq!(c.get(&a).unwrap(), None, "one answer per prefix: the later");
        // Keys that are not hex hashes have a prefix too.
        assert_ne!(key_prefix("k"), key_prefix("j"));
        assert_eq!(key_prefix("k"), key_prefix("k"));
    }

    #[test]
    fn a_cache_of_the_earlier_layout_is_moved_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        {
            // The layout of every `batch` before this one.
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE answers (key TEXT PRIMARY KEY, created_at INTEGER NOT NULL,                  text TEXT NOT NULL, finish_reason TEXT NOT NULL, model TEXT NOT NULL,                  prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,                  cached_tokens INTEGER NOT NULL, cache_write_tokens INTEGER NOT NULL,                  reasoning_tokens INTEGER NOT NULL, cost_usd REAL);
                 INSERT INTO answers VALUES ('k', 1700000000, 'old answer', 'stop', 'm', 10, 2,                  0, 0, 0, 0.25), ('abcdef0123456789abcdef', 1700000001, 'other', 'stop', 'm',                  10, 2, 0, 0, 0, 0.25);",
            )
            .unwrap();
        }
        let c = Cache::open(dir.path()).unwrap();
        assert_eq!(c.get("k").unwrap().unwrap().text, "old answer");
        assert_eq!(
            c.get("abcdef0123456789abcdef").unwrap().unwrap().text,
            "other"
        );
        assert_eq!(tables(&c), (2, 0, 2));
        let left: i64 = c
            .conn
            .query_row("SELECT COUNT(*) FROM answers", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0, "moved, not copied");
        let s = c.stats().unwrap();
        assert_eq!((s.entries, s.prompt_tokens), (2, 20));
        drop(c);
        // Opened again: nothing to move, nothing moved twice.
        let c = Cache::open(dir.path()).unwrap();
        assert_eq!(tables(&c), (2, 0, 2));
    }

    #[test]
    fn clear_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cache::open(dir.path()).unwrap();
        c.put_many([("k", &answer("one"))]).unwrap();
        assert_eq!(c.clear(Some(Duration::from_secs(3600))).unwrap(), 0);
        assert_eq!(c.clear(None).unwrap(), 1);
        assert_eq!(c.stats().unwrap().entries, 0);
        assert_eq!(tables(&c), (0, 0, 0), "no key left pointing at nothing");
        assert_eq!(c.get("k").unwrap(), None);
    }
}

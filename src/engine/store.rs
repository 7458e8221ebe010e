//! The run's state: every finished row, and every attempt, in an embedded SQLite database beside
//! the results, so a run that dies by any means (Ctrl-C, `kill -9`, a reboot) can be resumed
//! without paying twice for a finished row.
//!
//! One file, WAL mode: a commit is atomic and survives the process being killed; readers (a
//! resume, a user's `sqlite3`) do not block the writer. Rows are keyed by their position in the
//! input and carry a hash of the exact request that was sent, so a resumed run sends a row again
//! if its prompt, model or parameters changed.
//!
//! The writer commits in groups: whatever has arrived since the last commit goes in one
//! transaction. A row's concurrency slot is released only after its commit (see
//! [`crate::run::runner`]), so at any moment the rows that could be lost to a kill are at most the ones
//! in flight.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::base::error::Error;
use crate::base::record::RowResult;
use crate::base::record::RowStatus;
use crate::base::usage::Usage;

mod checkpoint;
mod counts;
mod finished;
mod reservations;
mod size_limit;
pub use counts::StatusCounts;
pub use reservations::ReservationLog;
pub use size_limit::MAX_PAGES_VAR;
use size_limit::limit_size;

/// Bumped when the tables change. Version 2 (hex hashes, text times, an attempts row for every
/// attempt) is migrated on open by [`Store::open`] and read as it is by a read-only
/// [`FinishedRows`]; any other version is refused, not misread.
const SCHEMA_VERSION: i64 = 3;
const V2: i64 = 2;

/// Version 3, compact: a row's request is the first 16 bytes of its SHA-256 (a collision of
/// 128 bits only means a row is sent again, and a hex hash took 64 bytes a row), times are unix
/// milliseconds, and a row answered at its first attempt keeps that attempt in its own record
/// instead of a second row in `attempts`: `started_before_ms` (when it started, before
/// `finished_ms`; what it was charged is the row's `cost_usd`; its request id is in the `--log`
/// audit only). A state file is then smaller than the results it describes.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rows (
    seq               INTEGER PRIMARY KEY,
    id                TEXT NOT NULL,
    request_hash      BLOB NOT NULL,
    status            TEXT NOT NULL,
    output            TEXT NOT NULL,
    error             TEXT NOT NULL,
    attempts          INTEGER NOT NULL,
    throttled         INTEGER NOT NULL,
    latency_ms        INTEGER,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    cached_tokens     INTEGER,
    cache_write_tokens INTEGER,
    reasoning_tokens  INTEGER,
    cost_usd          REAL,
    model             TEXT NOT NULL,
    finish_reason     TEXT NOT NULL,
    cached            INTEGER NOT NULL DEFAULT 0,
    saved_usd         REAL,
    finished_ms       INTEGER NOT NULL,
    started_before_ms INTEGER
);
-- Every commit rewrites the last page of each b-tree it touches, so the journal keeps to two:
-- no index on request_hash (identical requests are found through a small map in memory and
-- the cache, see engine/dedup.rs; a hash index put every new row on a random page), none on
-- attempts (seq) and no AUTOINCREMENT counter. Together they were 40% of a commit.
-- One index, on status: its entries are (status, seq), which a journal writes nearly in order
-- (the last page of each status's range), and a resume reads the finished rows' positions from
-- it: a tenth of the pages of the rows themselves (ten million rows: 1.8 GB of rows).
CREATE INDEX IF NOT EXISTS rows_by_status ON rows (status);
CREATE TABLE IF NOT EXISTS attempts (
    id          INTEGER PRIMARY KEY,
    seq         INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    started_ms  INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    http_status INTEGER,
    error       TEXT,
    latency_ms  INTEGER,
    request_id  TEXT,
    charged_usd REAL
);
";

/// What a run's attempts are counted as costing: those in `attempts`, and the first-attempt
/// answers kept in their rows (charged what they cost).
const SPENT: &str = "SELECT (SELECT COALESCE(SUM(charged_usd), 0.0) FROM attempts) + \
    (SELECT COALESCE(SUM(cost_usd), 0.0) FROM rows WHERE started_before_ms IS NOT NULL)";

/// The columns both versions' `rows` share, in order.
const SHARED_ROW_COLUMNS: &str = "seq, id, status, output, error, attempts, throttled, latency_ms, \
    prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, \
    cost_usd, model, finish_reason, cached, saved_usd";

/// Version 2 to 3 (run in one transaction): the tables are copied with their hashes cut to 16
/// bytes and their times made integers.
fn migrate_v2_sql() -> String {
    let c = SHARED_ROW_COLUMNS;
    format!(
        "DROP INDEX IF EXISTS rows_by_request; DROP INDEX IF EXISTS attempts_by_row;
         ALTER TABLE rows RENAME TO rows_v2; ALTER TABLE attempts RENAME TO attempts_v2;
         {SCHEMA}
         INSERT INTO rows ({c}, request_hash, finished_ms)
             SELECT {c}, {V2_KEY}, {} FROM rows_v2;
         INSERT INTO attempts (id, seq, attempt, started_ms, outcome, http_status, error,
                               latency_ms, request_id, charged_usd)
             SELECT id, seq, attempt, {}, outcome, http_status, error, latency_ms, request_id,
                    charged_usd FROM attempts_v2;
         DROP TABLE rows_v2; DROP TABLE attempts_v2;",
        v2_millis("finished_at"),
        v2_millis("started_at"),
    )
}

/// Unix milliseconds of an RFC 3339 text time in SQL (0 if it cannot be read).
fn v2_millis(column: &str) -> String {
    format!("COALESCE(CAST(ROUND((julianday({column}) - 2440587.5) * 86400000) AS INTEGER), 0)")
}

/// The 16 bytes of a version 2 hex hash in SQL.
const V2_KEY: &str = "COALESCE(unhex(substr(request_hash, 1, 32)), zeroblob(16))";

/// The `meta` key of the run's spend cap in dollars (empty for none), for `batch status`.
pub const META_MAX_COST: &str = "max_cost";

/// The settings that shape requests. A resumed run must have the same ones, or it would mix
/// answers to different questions in one results file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub input: String,
    pub endpoint: String,
    pub model: String,
    pub prompt: String,
    pub system: Option<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
}

impl RunSettings {
    /// The names of the settings that differ, for the refusal message.
    pub fn differences(&self, other: &RunSettings) -> Vec<&'static str> {
        let mut d = Vec::new();
        if self.input != other.input {
            d.push("input file");
        }
        if self.endpoint != other.endpoint {
            d.push("endpoint (--base-url / --mock)");
        }
        if self.model != other.model {
            d.push("--model");
        }
        if self.prompt != other.prompt {
            d.push("prompt template");
        }
        if self.system != other.system {
            d.push("system message");
        }
        if self.max_tokens != other.max_tokens {
            d.push("--max-tokens");
        }
        if self.temperature != other.temperature {
            d.push("--temperature");
        }
        d
    }
}

/// What the state file says about the run it holds.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub settings: RunSettings,
    pub total_rows: u64,
    pub finished: bool,
    pub ok: u64,
    pub failed: u64,
}

/// One attempt, as journaled.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub started_at: SystemTime,
    /// `ok`, or the error kind's label.
    pub outcome: &'static str,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub latency: Duration,
    pub request_id: Option<String>,
    /// What the attempt is counted as costing: its answer's cost, or (under a spend cap) the
    /// worst case of an attempt whose cost could not be known. Summed over every attempt of the
    /// run, resumed parts and replaced answers included, for a cap that covers the whole run.
    pub charged_usd: Option<f64>,
}

/// A finished row on its way into the journal.
#[derive(Debug, Clone)]
pub struct Finished {
    pub result: RowResult,
    pub request_hash: String,
    pub attempts: Vec<AttemptRecord>,
}

/// The default state file: the results path with `.sqlite` as its extension.
pub fn default_path(output: &Path) -> PathBuf {
    output.with_extension("sqlite")
}

/// A connection to the state file.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the state file. The WAL is checkpointed every 10,000 pages
    /// rather than SQLite's 1,000: the journal rewrites the same few pages in every commit, and
    /// a checkpoint copies each page once however often it changed, so rarer checkpoints cost
    /// less (about 8% more rows/s on the zero-latency mock) for a WAL of at most ~40 MB.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let conn = Connection::open(path).map_err(|e| db_error(path, "open", &e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; \
             PRAGMA wal_autocheckpoint = 10000; PRAGMA recursive_triggers = ON;",
        )
        .map_err(|e| db_error(path, "set up", &e))?;
        limit_size(&conn);
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| db_error(path, "read", &e))?;
        let empty: bool = conn
            .query_row("SELECT COUNT(*) = 0 FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| db_error(path, "read", &e))?;
        let setup = match version {
            _ if empty => SCHEMA.to_string(),
            SCHEMA_VERSION => SCHEMA.to_string(),
            V2 => migrate_v2_sql(),
            _ => return Err(other_version(path)),
        };
        conn.execute_batch(&format!("BEGIN IMMEDIATE; {setup}"))
            .and_then(|_| conn.execute_batch(&counts::setup_sql(&conn)?))
            .and_then(|_| conn.pragma_update(None, "user_version", SCHEMA_VERSION))
            .and_then(|_| conn.execute_batch("COMMIT"))
            .map_err(|e| db_error(path, "set up", &e))?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run recorded in this file, if any.
    pub fn run(&self) -> Result<Option<RunRecord>, Error> {
        read_run(&self.conn, true).map_err(|e| db_error(&self.path, "read", &e))
    }

    /// Records `value` under `key` in the file's `meta` table (what `batch status` shows of
    /// the run's settings, the spend cap say).
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), Error> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                [key, value],
            )
            .map(|_| ())
            .map_err(|e| db_error(&self.path, "write", &e))
    }

    /// Forgets any earlier run and records a new one.
    pub fn start_run(&mut self, settings: &RunSettings, total_rows: u64) -> Result<(), Error> {
        let tx = self
            .conn
            .transaction()
            .map_err(|e| db_error(&self.path, "write", &e))?;
        let write = || -> rusqlite::Result<()> {
            tx.execute_batch(&format!("{} DELETE FROM meta;", counts::clear_sql()))?;
            let mut put = tx.prepare("INSERT INTO meta (key, value) VALUES (?1, ?2)")?;
            put.execute([
                "settings",
                &serde_json::to_string(settings).expect("serializes"),
            ])?;
            put.execute(["total_rows", &total_rows.to_string()])?;
            put.execute(["finished", "false"])?;
            put.execute([
                "created_at",
                &humantime::format_rfc3339(SystemTime::now()).to_string(),
            ])?;
            Ok(())
        };
        write()
            .and_then(|_| tx.commit())
            .map_err(|e| db_error(&self.path, "write", &e))
    }

    /// Updates the settings of a run being resumed (with `--force`, they may have changed).
    pub fn update_settings(&self, settings: &RunSettings, total_rows: u64) -> Result<(), Error> {
        let s = serde_json::to_string(settings).expect("serializes");
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('settings', ?1), ('total_rows', ?2)",
                params![s, total_rows.to_string()],
            )
            .map(|_| ())
            .map_err(|e| db_error(&self.path, "write", &e))
    }

    pub fn set_finished(&self, finished: bool) -> Result<(), Error> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('finished', ?1)",
                [if finished { "true" } else { "false" }],
            )
            .map(|_| ())
            .map_err(|e| db_error(&self.path, "write", &e))
    }

    /// What the run's attempts so far are counted as costing (for a spend cap that covers the
    /// whole run, answers later replaced included).
    pub fn spent(&self) -> Result<f64, Error> {
        counts::spent(&self.conn).map_err(|e| db_error(&self.path, "read", &e))
    }

    /// Marks `skipped` the failed rows whose request is one of `hashes`, their error prefixed
    /// with `reason`, so that a resumed run sends them: they failed of an error that stopped the
    /// whole run (the server was not there, or refused every request the same way), not of
    /// their own. Returns how many rows changed.
    pub fn skip_failed(&mut self, hashes: &[&str], reason: &str) -> Result<usize, Error> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| db_error(&path, "write", &e))?;
        let write = || -> rusqlite::Result<usize> {
            let mut stmt = tx.prepare(
                "UPDATE rows SET status = 'skipped', error = ?2 || '; last attempt: ' || error \
                 WHERE status = 'failed' AND request_hash = ?1",
            )?;
            let mut changed = 0;
            for hash in hashes {
                changed += stmt.execute(params![&request_key(hash)[..], reason])?;
            }
            Ok(changed)
        };
        let changed = write().map_err(|e| db_error(&path, "write", &e))?;
        tx.commit().map_err(|e| db_error(&path, "write", &e))?;
        Ok(changed)
    }

    /// Writes a group of row outcomes in one transaction. Skipped rows are written too (with
    /// their reason, for the results file) but count as unfinished: a resumed run sends them.
    pub fn record(&mut self, rows: &[Finished]) -> Result<(), Error> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| db_error(&path, "write", &e))?;
        let write = || -> rusqlite::Result<()> {
            let mut row_stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO rows (seq, id, request_hash, status, output, error, \
                 attempts, throttled, latency_ms, prompt_tokens, completion_tokens, cached_tokens, \
                 cache_write_tokens, reasoning_tokens, cost_usd, model, finish_reason, cached, \
                 saved_usd, finished_ms, started_before_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, \
                 ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
            )?;
            let mut attempt_stmt = tx.prepare_cached(
                "INSERT INTO attempts (seq, attempt, started_ms, outcome, http_status, error, \
                 latency_ms, request_id, charged_usd) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            // A row answered again (a resume sending a changed request) keeps what its first
            // answer was charged: its attempt moves to `attempts` before the row is replaced.
            // One statement for the group: one a row was a fifth of what a row cost to journal.
            // A seq twice in a group would move its first answer's attempt once, not per row.
            debug_assert!(seqs_unique(rows), "a row twice in one journal group");
            tx.prepare_cached(
                "INSERT INTO attempts (seq, attempt, started_ms, outcome, latency_ms, charged_usd) \
                 SELECT seq, 1, finished_ms - started_before_ms, 'ok', latency_ms, cost_usd \
                 FROM rows WHERE seq IN (SELECT value FROM json_each(?1)) \
                 AND started_before_ms IS NOT NULL",
            )?
            .execute([seq_list(rows)])?;
            let now = unix_millis(SystemTime::now());
            for f in rows {
                let r = &f.result;
                let inline = inline_attempt(f);
                for a in f.attempts.iter().filter(|_| inline.is_none()) {
                    attempt_stmt.execute(params![
                        r.seq as i64,
                        a.attempt,
                        unix_millis(a.started_at),
                        a.outcome,
                        a.http_status,
                        a.error,
                        a.latency.as_millis() as i64,
                        a.request_id,
                        a.charged_usd,
                    ])?;
                }
                let u = r.usage;
                row_stmt.execute(params![
                    r.seq as i64,
                    r.id,
                    &request_key(&f.request_hash)[..],
                    r.status.as_str(),
                    r.output,
                    r.error,
                    r.attempts,
                    r.throttled,
                    r.latency.map(|l| l.as_millis() as i64),
                    u.map(|u| u.prompt_tokens as i64),
                    u.map(|u| u.completion_tokens as i64),
                    u.map(|u| u.cached_tokens as i64),
                    u.map(|u| u.cache_write_tokens as i64),
                    u.map(|u| u.reasoning_tokens as i64),
                    r.cost,
                    r.model,
                    r.finish_reason,
                    r.cached,
                    r.saved_usd,
                    now,
                    inline.map(|a| (now - unix_millis(a.started_at)).max(0)),
                ])?;
            }
            Ok(())
        };
        write()
            .and_then(|_| tx.commit())
            .map_err(|e| db_error(&path, "write", &e))
    }
}

/// The rows' positions as a JSON array, for `json_each`.
fn seq_list(rows: &[Finished]) -> String {
    use std::fmt::Write;
    let mut list = String::with_capacity(rows.len() * 8 + 2);
    list.push('[');
    for (i, f) in rows.iter().enumerate() {
        let comma = if i == 0 { "" } else { "," };
        let _ = write!(list, "{comma}{}", f.result.seq);
    }
    list.push(']');
    list
}

/// Reads a state file: the recorded rows in input order, for merging with the input, and the
/// attempts journaled. Reads version 2 files as they are, so that a read-only look (`batch
/// status`, `batch export`) at an older run needs no migration.
pub struct FinishedRows {
    conn: Connection,
    path: PathBuf,
    /// The schema version, which decides how the hash and times are read.
    version: i64,
    /// The file keeps running totals ([`counts`]); older ones are counted row by row.
    counts: bool,
}

/// A row finished by an earlier run.
#[derive(Debug, Clone)]
pub struct PriorRow {
    /// The first 16 bytes of the hash of the request that was sent (see [`request_key`]).
    pub request_key: [u8; 16],
    pub result: RowResult,
}

impl PriorRow {
    /// Whether this row's request is the one hashed as `hash` (hex SHA-256).
    pub fn is_request(&self, hash: &str) -> bool {
        self.request_key == request_key(hash)
    }
}

impl FinishedRows {
    /// Opens the state file of this run, which [`Store::open`] has set up.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let conn = Connection::open(path).map_err(|e| db_error(path, "open", &e))?;
        Self::with(conn, path)
    }

    /// Opens a state file that another process may be writing, read-only: its WAL lets this
    /// reader see the last commit without ever blocking the writer.
    pub fn open_read_only(path: &Path) -> Result<Self, Error> {
        use rusqlite::OpenFlags;
        if !path.is_file() {
            return Err(Error::Usage(format!(
                "{} does not exist: give the state file of a run (the results path with .sqlite, \
                 or --state PATH)",
                path.display()
            )));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(path, flags).map_err(|e| db_error(path, "open", &e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| db_error(path, "open", &e))?;
        Self::with(conn, path)
    }

    fn with(conn: Connection, path: &Path) -> Result<Self, Error> {
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| db_error(path, "read", &e))?;
        if version != SCHEMA_VERSION && version != V2 {
            return Err(other_version(path));
        }
        let counts = version == SCHEMA_VERSION
            && counts::has_counts(&conn).map_err(|e| db_error(path, "read", &e))?;
        Ok(FinishedRows {
            conn,
            path: path.to_path_buf(),
            version,
            counts,
        })
    }

    /// The columns [`prior_row`] reads, in its order, for this file's version.
    fn row_columns(&self) -> String {
        let key = if self.version == V2 {
            V2_KEY
        } else {
            "request_hash"
        };
        format!("{SHARED_ROW_COLUMNS}, {key}")
    }

    /// A row's finishing time in unix milliseconds, in SQL, for this file's version.
    pub(crate) fn finished_ms_sql(&self) -> String {
        if self.version == V2 {
            v2_millis("finished_at")
        } else {
            "finished_ms".into()
        }
    }

    /// The connection, for summaries of the run (`batch status`).
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run recorded in this file, if any (see [`Store::run`]).
    pub fn run(&self) -> Result<Option<RunRecord>, Error> {
        read_run(&self.conn, self.counts).map_err(|e| db_error(&self.path, "read", &e))
    }

    /// The recorded rows by status (from the file's running totals when it keeps them).
    pub fn status_counts(&self) -> Result<StatusCounts, Error> {
        counts::status_counts(&self.conn, self.counts).map_err(|e| db_error(&self.path, "read", &e))
    }

    /// The `limit` most common errors of rows that did not succeed, most common first, with
    /// their rows.
    pub fn top_errors(&self, limit: u32) -> Result<Vec<(String, u64)>, Error> {
        counts::top_errors(&self.conn, self.counts, limit)
            .map_err(|e| db_error(&self.path, "read", &e))
    }

    /// What the run's attempts so far are counted as costing (see [`Store::spent`]).
    pub fn spent(&self) -> Result<f64, Error> {
        if self.counts {
            return counts::spent(&self.conn).map_err(|e| db_error(&self.path, "read", &e));
        }
        let sql = if self.version == V2 {
            "SELECT COALESCE(SUM(charged_usd), 0.0) FROM attempts"
        } else {
            SPENT
        };
        self.conn
            .query_row(sql, [], |r| r.get(0))
            .map_err(|e| db_error(&self.path, "read", &e))
    }

    /// What a resume counts against `--max-cost`: [`Self::spent`] plus the worst case of every
    /// reservation whose attempt never reached the journal (see `reservations.rs`).
    pub fn spent_at_most(&self) -> Result<f64, Error> {
        Ok(
            self.spent()?
                + reservations::unsettled_read_only(&self.conn, &self.path, self.version)?,
        )
    }

    /// The value of `key` in the file's `meta` table.
    pub fn meta(&self, key: &str) -> Result<Option<String>, Error> {
        meta(&self.conn, key).map_err(|e| db_error(&self.path, "read", &e))
    }

    /// The positions of the rows that are finished (`ok`, and `failed` unless `retry_failed`),
    /// one bit each: a million rows in 125 KB.
    pub fn finished_set(&self, retry_failed: bool) -> Result<SeqSet, Error> {
        if let Some(set) = self.finished_set_quickly(retry_failed)? {
            return Ok(set);
        }
        self.finished_set_by_reading(retry_failed)
    }

    /// [`Self::finished_set`] from every row's position in the status index.
    fn finished_set_by_reading(&self, retry_failed: bool) -> Result<SeqSet, Error> {
        let sql = if retry_failed {
            "SELECT seq FROM rows WHERE status = 'ok'"
        } else {
            "SELECT seq FROM rows WHERE status IN ('ok', 'failed')"
        };
        let mut set = SeqSet::default();
        let mut damaged = None;
        let mut run = || -> rusqlite::Result<()> {
            let mut stmt = self.conn.prepare(sql)?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let seq = r.get::<_, i64>(0)?;
                if !(0..=finished::MAX_SEQ).contains(&seq) {
                    damaged = Some(seq);
                    break;
                }
                set.insert(seq as u64);
            }
            Ok(())
        };
        run().map_err(|e| db_error(&self.path, "read", &e))?;
        match damaged {
            None => Ok(set),
            Some(seq) => Err(Error::Usage(format!(
                "the run state {} is damaged: it records a row at position {seq}, which no \
                 input has; run it again with --restart to discard it (or give another --state)",
                self.path.display()
            ))),
        }
    }

    /// The row recorded at position `seq`, if any.
    pub fn row(&self, seq: u64) -> Result<Option<PriorRow>, Error> {
        let sql = format!("SELECT {} FROM rows WHERE seq = ?1", self.row_columns());
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut stmt| stmt.query_row([seq as i64], prior_row).optional())
            .map_err(|e| db_error(&self.path, "read", &e))
    }

    /// Calls `f` with each recorded row in `seq` order; `f` returns false to stop early. One
    /// read transaction: a run writing meanwhile is neither blocked nor seen half-way.
    pub fn for_each(&self, mut f: impl FnMut(PriorRow) -> bool) -> Result<(), Error> {
        let mut run = || -> rusqlite::Result<()> {
            let sql = format!("SELECT {} FROM rows ORDER BY seq", self.row_columns());
            let mut stmt = self.conn.prepare(&sql)?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let prior = prior_row(r)?;
                if !f(prior) {
                    break;
                }
            }
            Ok(())
        };
        run().map_err(|e| db_error(&self.path, "read", &e))
    }

    /// Every attempt journaled, in no particular order: what `batch bench` times a run by.
    /// A row answered at its first attempt holds that attempt in its own record.
    pub fn attempts(&self) -> Result<Vec<JournaledAttempt>, Error> {
        let sql = if self.version == V2 {
            format!(
                "SELECT seq, attempt, {}, latency_ms, outcome FROM attempts",
                v2_millis("started_at")
            )
        } else {
            "SELECT seq, attempt, started_ms, latency_ms, outcome FROM attempts UNION ALL \
             SELECT seq, 1, finished_ms - started_before_ms, latency_ms, 'ok' FROM rows \
             WHERE started_before_ms IS NOT NULL"
                .to_string()
        };
        let run = || -> rusqlite::Result<Vec<JournaledAttempt>> {
            let mut stmt = self.conn.prepare(&sql)?;
            let rows = stmt.query_map([], |r| {
                Ok(JournaledAttempt {
                    seq: r.get::<_, i64>(0)?.max(0) as u64,
                    attempt: r.get::<_, i64>(1)?.max(0) as u32,
                    started_at: r
                        .get::<_, Option<i64>>(2)?
                        .filter(|ms| *ms > 0)
                        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms as u64)),
                    latency: r
                        .get::<_, Option<i64>>(3)?
                        .map(|ms| Duration::from_millis(ms.max(0) as u64)),
                    outcome: r.get(4)?,
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| db_error(&self.path, "read", &e))
    }
}

fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

/// The run a state file records (see [`Store::run`]); `kept`: the file keeps running totals.
fn read_run(conn: &Connection, kept: bool) -> rusqlite::Result<Option<RunRecord>> {
    let Some(settings) = meta(conn, "settings")? else {
        return Ok(None);
    };
    let Ok(settings) = serde_json::from_str(&settings) else {
        return Ok(None);
    };
    let total_rows = meta(conn, "total_rows")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let finished = meta(conn, "finished")?.as_deref() == Some("true");
    let StatusCounts { ok, failed, .. } = counts::status_counts(conn, kept)?;
    Ok(Some(RunRecord {
        settings,
        total_rows,
        finished,
        ok,
        failed,
    }))
}

/// An attempt read back from the journal (see [`AttemptRecord`] for what was written).
#[derive(Debug, Clone, PartialEq)]
pub struct JournaledAttempt {
    /// The row's position in the input.
    pub seq: u64,
    pub attempt: u32,
    /// `None` if the recorded time cannot be read.
    pub started_at: Option<SystemTime>,
    pub latency: Option<Duration>,
    /// `ok`, or the error kind's label.
    pub outcome: String,
}

/// A set of row positions, one bit each.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SeqSet {
    bits: Vec<u64>,
    len: u64,
}

impl SeqSet {
    pub fn insert(&mut self, seq: u64) {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & (1 << bit) == 0 {
            self.bits[word] |= 1 << bit;
            self.len += 1;
        }
    }

    pub fn contains(&self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        self.bits.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Every position below `end`.
    pub(crate) fn all_below(end: u64) -> Self {
        let mut bits = vec![u64::MAX; (end / 64) as usize];
        if !end.is_multiple_of(64) {
            bits.push((1u64 << (end % 64)) - 1);
        }
        SeqSet { bits, len: end }
    }

    pub fn remove(&mut self, seq: u64) {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if let Some(w) = self.bits.get_mut(word)
            && *w & (1 << bit) != 0
        {
            *w &= !(1 << bit);
            self.len -= 1;
        }
    }

    /// The first position not in the set: where a resume's unfinished rows begin.
    pub fn first_missing(&self) -> u64 {
        match self.bits.iter().position(|w| *w != u64::MAX) {
            Some(i) => i as u64 * 64 + u64::from(self.bits[i].trailing_ones()),
            None => self.bits.len() as u64 * 64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Reads a row of `SHARED_ROW_COLUMNS` then the request key.
fn prior_row(r: &rusqlite::Row) -> rusqlite::Result<PriorRow> {
    let status = match r.get::<_, String>(2)?.as_str() {
        "ok" => RowStatus::Ok,
        "failed" => RowStatus::Failed,
        _ => RowStatus::Skipped,
    };
    let n = |i: usize| -> rusqlite::Result<u64> {
        Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
    };
    let usage = match r.get::<_, Option<i64>>(8)? {
        None => None,
        Some(p) => Some(Usage {
            prompt_tokens: p.max(0) as u64,
            completion_tokens: n(9)?,
            cached_tokens: n(10)?,
            cache_write_tokens: n(11)?,
            reasoning_tokens: n(12)?,
        }),
    };
    let key: Vec<u8> = r.get(18)?;
    Ok(PriorRow {
        request_key: key.as_slice().try_into().unwrap_or([0u8; 16]),
        result: RowResult {
            seq: r.get::<_, i64>(0)? as u64,
            id: r.get(1)?,
            status,
            output: r.get(3)?,
            error: r.get(4)?,
            attempts: r.get(5)?,
            throttled: r.get(6)?,
            latency: r
                .get::<_, Option<i64>>(7)?
                .map(|ms| Duration::from_millis(ms.max(0) as u64)),
            usage,
            cost: r.get(13)?,
            model: r.get(14)?,
            finish_reason: r.get(15)?,
            cached: r.get(16)?,
            saved_usd: r.get(17)?,
        },
    })
}

/// The attempt kept in a row's own record: the only one, answered, and charged what the
/// answer cost. Any other row's attempts go to `attempts`.
fn inline_attempt(f: &Finished) -> Option<&AttemptRecord> {
    let r = &f.result;
    match f.attempts.as_slice() {
        [a] if a.outcome == "ok" && r.status == RowStatus::Ok && a.charged_usd == r.cost => Some(a),
        _ => None,
    }
}

/// Milliseconds since the Unix epoch (0 for a time before it).
pub fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64)
}

/// The key a request is stored under: the first 16 bytes of its hex SHA-256 hash (zeros for
/// text that is not one, which then matches no real request).
pub fn request_key(hash: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    for (i, byte) in key.iter_mut().enumerate() {
        match hash
            .get(2 * i..2 * i + 2)
            .map(|h| u8::from_str_radix(h, 16))
        {
            Some(Ok(b)) => *byte = b,
            _ => return [0u8; 16],
        }
    }
    key
}

fn other_version(path: &Path) -> Error {
    Error::Usage(format!(
        "the run state {} was written by another version of batch and cannot be resumed; move \
         it away (or use --restart after deleting it) to start over",
        path.display()
    ))
}

/// Whether no row position is in `rows` twice (checked in debug builds, see [`Store::record`]).
fn seqs_unique(rows: &[Finished]) -> bool {
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    rows.iter().all(|f| seen.insert(f.result.seq))
}

fn db_error(path: &Path, what: &str, e: &rusqlite::Error) -> Error {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        return Error::Usage(format!(
            "cannot {what} the run state {}: the disk is full ({e}); what was recorded before \
             is kept: free some space, then run again with --resume",
            path.display()
        ));
    }
    Error::Usage(format!(
        "cannot {what} the run state {}: {e} (it is an SQLite file kept beside the results; \
         --state PATH puts it elsewhere)",
        path.display()
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Settings of a run for tests that need a state file.
    pub(crate) fn settings() -> RunSettings {
        RunSettings {
            input: "in.csv".into(),
            endpoint: "mock".into(),
            model: "m".into(),
            prompt: "p".into(),
            system: None,
            max_tokens: None,
            temperature: None,
        }
    }

    /// A hex SHA-256-like hash for row `seq`.
    fn hash(seq: u64) -> String {
        format!("{seq:016x}").repeat(4)
    }

    pub(crate) fn finished(seq: u64, status: RowStatus) -> Finished {
        let mut result = RowResult::skipped(seq, format!("id{seq}"), "m", "");
        result.status = status;
        result.output = format!("answer {seq}");
        result.attempts = 2;
        // As in a run: a skipped row has no answer, so no cost.
        result.cost = (status != RowStatus::Skipped).then_some(0.5);
        result.usage = Some(Usage {
            prompt_tokens: 10,
            completion_tokens: 3,
            cached_tokens: 1,
            ..Default::default()
        });
        Finished {
            result,
            request_hash: hash(seq),
            attempts: vec![AttemptRecord {
                attempt: 1,
                started_at: SystemTime::now(),
                outcome: "server error",
                http_status: Some(503),
                error: Some("busy".into()),
                latency: Duration::from_millis(5),
                request_id: None,
                charged_usd: (status != RowStatus::Skipped).then_some(0.5),
            }],
        }
    }

    #[test]
    fn a_row_twice_in_one_journal_group_is_caught_in_debug_builds() {
        let rows = [finished(1, RowStatus::Ok), finished(2, RowStatus::Ok)];
        assert!(seqs_unique(&rows));
        let twice = [finished(1, RowStatus::Ok), finished(1, RowStatus::Failed)];
        assert!(!seqs_unique(&twice));
        if cfg!(debug_assertions) {
            let dir = tempfile::tempdir().unwrap();
            let mut store = Store::open(&dir.path().join("s.sqlite")).unwrap();
            store.start_run(&settings(), 2).unwrap();
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = store.record(&twice);
            }));
            assert!(caught.is_err());
        }
    }

    #[test]
    fn the_first_missing_position_is_where_unfinished_rows_begin() {
        let mut s = SeqSet::default();
        assert_eq!(s.first_missing(), 0);
        for seq in (0..130).chain([140]) {
            s.insert(seq);
        }
        assert_eq!(s.first_missing(), 130);
        for seq in 130..192 {
            s.insert(seq);
        }
        assert_eq!(s.first_missing(), 192);
    }

    #[test]
    fn seq_sets_hold_bits() {
        let mut s = SeqSet::default();
        for seq in [0, 63, 64, 1_000_000, 64] {
            s.insert(seq);
        }
        assert_eq!(s.len(), 4);
        assert!(s.contains(64) && s.contains(1_000_000));
        assert!(!s.contains(1) && !s.contains(5_000_000));
    }

    #[test]
    fn rows_round_trip_in_order_and_skipped_rows_are_not_finished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let mut store = Store::open(&path).unwrap();
        assert!(store.run().unwrap().is_none());
        store.start_run(&settings(), 4).unwrap();
        store
            .record(&[
                finished(2, RowStatus::Ok),
                finished(0, RowStatus::Failed),
                finished(1, RowStatus::Skipped),
            ])
            .unwrap();
        let run = store.run().unwrap().unwrap();
        assert_eq!(
            (run.total_rows, run.ok, run.failed, run.finished),
            (4, 1, 1, false)
        );
        assert_eq!(run.settings, settings());
        assert!((store.spent().unwrap() - 1.0).abs() < 1e-12);

        let mut seen = Vec::new();
        let journal = FinishedRows::open(&path).unwrap();
        journal
            .for_each(|p| {
                seen.push((p.result.seq, p.request_key, p.result.status, p.result.usage));
                true
            })
            .unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].0, 0);
        assert_eq!(seen[0].2, RowStatus::Failed);
        assert_eq!(seen[1].2, RowStatus::Skipped);
        assert_eq!(seen[2].1, request_key(&hash(2)));
        let finished = journal.finished_set(false).unwrap();
        assert!(finished.contains(0) && !finished.contains(1) && finished.contains(2));
        assert!(!journal.finished_set(true).unwrap().contains(0));
        assert_eq!(seen[2].3.unwrap().cached_tokens, 1);
    }

    #[test]
    fn failed_rows_of_a_run_level_error_become_skipped_and_unfinished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let mut store = Store::open(&path).unwrap();
        store.start_run(&settings(), 4).unwrap();
        let mut rows = vec![
            finished(0, RowStatus::Failed),
            finished(1, RowStatus::Failed),
            finished(2, RowStatus::Ok),
            finished(3, RowStatus::Failed),
        ];
        rows[0].result.error = "request rejected (HTTP 404): nope".into();
        // Row 1 repeats row 0's request (as a row that waited for it would).
        rows[1].request_hash = hash(0);
        rows[2].request_hash = hash(0);
        store.record(&rows).unwrap();
        assert_eq!(
            store
                .skip_failed(&[&hash(0), &hash(9)], "no such endpoint")
                .unwrap(),
            2
        );
        let journal = FinishedRows::open(&path).unwrap();
        let row = |seq| journal.row(seq).unwrap().unwrap().result;
        assert_eq!(row(0).status, RowStatus::Skipped);
        assert_eq!(
            row(0).error,
            "no such endpoint; last attempt: request rejected (HTTP 404): nope"
        );
        assert_eq!(row(1).status, RowStatus::Skipped);
        // An answered row with the same request, and a failed row with another, stay.
        assert_eq!(row(2).status, RowStatus::Ok);
        assert_eq!(row(3).status, RowStatus::Failed);
        let finished = journal.finished_set(false).unwrap();
        assert!(!finished.contains(0) && !finished.contains(1) && finished.contains(3));
    }

    #[test]
    fn attempts_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let mut store = Store::open(&path).unwrap();
        store.start_run(&settings(), 2).unwrap();
        let row = finished(1, RowStatus::Ok);
        store.record(std::slice::from_ref(&row)).unwrap();
        let attempts = FinishedRows::open(&path).unwrap().attempts().unwrap();
        let written = &row.attempts[0];
        let millis = |t: SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        assert_eq!(attempts.len(), 1);
        let a = &attempts[0];
        assert_eq!((a.seq, a.attempt), (1, 1));
        assert_eq!(a.outcome, "server error");
        assert_eq!(a.latency, Some(Duration::from_millis(5)));
        assert_eq!(millis(a.started_at.unwrap()), millis(written.started_at));
    }

    #[test]
    fn a_new_run_forgets_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        store.start_run(&settings(), 1).unwrap();
        store.record(&[finished(0, RowStatus::Ok)]).unwrap();
        store.set_finished(true).unwrap();
        assert!(store.run().unwrap().unwrap().finished);
        store.start_run(&settings(), 1).unwrap();
        let run = store.run().unwrap().unwrap();
        assert_eq!((run.ok, run.finished), (0, false));
    }

    #[test]
    fn settings_differences_are_named() {
        let mut other = settings();
        other.model = "n".into();
        other.temperature = Some(0.5);
        assert_eq!(settings().differences(&other), ["--model", "--temperature"]);
    }

    /// A row answered at its first attempt, as a run journals it.
    pub(crate) fn answered_at_once(seq: u64, charged: f64) -> Finished {
        let mut f = finished(seq, RowStatus::Ok);
        f.result.attempts = 1;
        f.attempts[0].outcome = "ok";
        f.attempts[0].http_status = Some(200);
        f.attempts[0].error = None;
        f.attempts[0].request_id = Some(format!("req-{seq}"));
        f.attempts[0].charged_usd = Some(charged);
        f.result.cost = Some(charged);
        f
    }

    fn count(path: &Path, sql: &str) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_first_attempt_answer_is_one_record_and_still_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let mut store = Store::open(&path).unwrap();
        store.start_run(&settings(), 3).unwrap();
        store
            .record(&[answered_at_once(0, 0.25), finished(1, RowStatus::Ok)])
            .unwrap();
        // Row 0 has no attempts row; row 1 (two attempts' worth, one journaled) has its own.
        assert_eq!(count(&path, "SELECT COUNT(*) FROM attempts"), 1);
        assert_eq!(
            count(&path, "SELECT length(request_hash) FROM rows LIMIT 1"),
            16
        );
        assert!((store.spent().unwrap() - 0.75).abs() < 1e-12);
        let attempts = FinishedRows::open(&path).unwrap().attempts().unwrap();
        let mut seqs: Vec<_> = attempts
            .iter()
            .map(|a| (a.seq, a.outcome.as_str()))
            .collect();
        seqs.sort();
        assert_eq!(seqs, [(0, "ok"), (1, "server error")]);
        // Answered again (a resume sending a changed request): the first answer's charge stays.
        store.record(&[answered_at_once(0, 0.5)]).unwrap();
        assert!((store.spent().unwrap() - 1.25).abs() < 1e-12);
        assert_eq!(count(&path, "SELECT COUNT(*) FROM attempts"), 2);
    }

    /// The tables as version 2 of batch wrote them (hex hashes, text times).
    const V2_SCHEMA: &str = "
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE rows (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, request_hash TEXT NOT NULL,
            status TEXT NOT NULL, output TEXT NOT NULL, error TEXT NOT NULL,
            attempts INTEGER NOT NULL, throttled INTEGER NOT NULL, latency_ms INTEGER,
            prompt_tokens INTEGER, completion_tokens INTEGER, cached_tokens INTEGER,
            cache_write_tokens INTEGER, reasoning_tokens INTEGER, cost_usd REAL,
            model TEXT NOT NULL, finish_reason TEXT NOT NULL, cached INTEGER NOT NULL DEFAULT 0,
            saved_usd REAL, finished_at TEXT NOT NULL);
        CREATE TABLE attempts (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL,
            attempt INTEGER NOT NULL, started_at TEXT NOT NULL, outcome TEXT NOT NULL,
            http_status INTEGER, error TEXT, latency_ms INTEGER, request_id TEXT,
            charged_usd REAL);
        PRAGMA user_version = 2;";

    /// Writes a version 2 state file: a run of 3 rows, row 0 answered, row 1 failed.
    pub(crate) fn write_v2(path: &Path) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(V2_SCHEMA).unwrap();
        let settings = serde_json::to_string(&settings()).unwrap();
        conn.execute(
            "INSERT INTO meta VALUES ('settings', ?1), ('total_rows', '3'), ('finished', 'false')",
            [settings],
        )
        .unwrap();
        for (seq, status) in [(0, "ok"), (1, "failed")] {
            conn.execute(
                "INSERT INTO rows VALUES (?1, ?2, ?3, ?4, 'answer', '', 1, 0, 12, 10, 3, 0, 0, 0, \
                 0.5, 'm', 'stop', 0, NULL, '2026-01-02T03:04:05.678Z')",
                params![seq, format!("id{seq}"), hash(seq), status],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO attempts (seq, attempt, started_at, outcome, latency_ms, \
                 charged_usd) VALUES (?1, 1, '2026-01-02T03:04:05.000Z', ?2, 12, 0.5)",
                params![seq, if seq == 0 { "ok" } else { "server error" }],
            )
            .unwrap();
        }
    }

    #[test]
    fn a_version_2_file_is_read_as_it_is_and_migrated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        write_v2(&path);
        let check = |journal: &FinishedRows| {
            let row = journal.row(0).unwrap().unwrap();
            assert!(row.is_request(&hash(0)) && !row.is_request(&hash(1)));
            assert_eq!(
                (row.result.output.as_str(), row.result.cost),
                ("answer", Some(0.5))
            );
            assert_eq!(
                journal.row(1).unwrap().unwrap().result.status,
                RowStatus::Failed
            );
            let attempts = journal.attempts().unwrap();
            let started = attempts[0].started_at.unwrap();
            assert_eq!(unix_millis(started), 1_767_323_045_000);
            assert_eq!(journal.finished_set(false).unwrap().len(), 2);
        };
        // Read-only (as `batch status` does): nothing is changed.
        check(&FinishedRows::open_read_only(&path).unwrap());
        assert_eq!(count(&path, "PRAGMA user_version"), 2);
        // Opened by a run: migrated, same content.
        let store = Store::open(&path).unwrap();
        assert_eq!(count(&path, "PRAGMA user_version"), SCHEMA_VERSION);
        let run = store.run().unwrap().unwrap();
        assert_eq!((run.total_rows, run.ok, run.failed), (3, 1, 1));
        assert!((store.spent().unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(
            count(&path, "SELECT finished_ms FROM rows WHERE seq = 0"),
            1_767_323_045_678
        );
        check(&FinishedRows::open(&path).unwrap());
    }

    #[test]
    fn another_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); PRAGMA user_version = 9;")
            .unwrap();
        for e in [
            Store::open(&path).err(),
            FinishedRows::open_read_only(&path).err(),
        ] {
            assert!(e.unwrap().to_string().contains("another version of batch"));
        }
    }

    #[test]
    fn request_keys_are_the_first_16_bytes() {
        let h = "00ff".repeat(16);
        assert_eq!(request_key(&h)[..4], [0, 255, 0, 255]);
        assert_eq!(request_key("zz"), [0; 16]);
        assert_eq!(request_key("é"), [0; 16]);
    }
}

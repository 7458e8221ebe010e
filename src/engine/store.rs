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
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::base::error::Error;
use crate::base::record::RowResult;
use crate::base::record::RowStatus;
use crate::base::usage::Usage;

mod reservations;
mod size_limit;
pub use reservations::{ReservationLog, started_text};
pub use size_limit::MAX_PAGES_VAR;
use size_limit::limit_size;

/// Bumped when the tables change; a state file of another version is refused, not misread.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rows (
    seq               INTEGER PRIMARY KEY,
    id                TEXT NOT NULL,
    request_hash      TEXT NOT NULL,
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
    finished_at       TEXT NOT NULL
);
-- Every commit rewrites the last page of each b-tree it touches, so the journal keeps to two:
-- no index on request_hash (identical requests are found through a map in memory, see
-- engine/dedup.rs; a hash index put every new row on a random page), none on attempts (seq) and
-- no AUTOINCREMENT counter. Together they were 40% of a commit. Older files drop theirs.
DROP INDEX IF EXISTS rows_by_request;
CREATE TABLE IF NOT EXISTS attempts (
    id          INTEGER PRIMARY KEY,
    seq         INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    started_at  TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    http_status INTEGER,
    error       TEXT,
    latency_ms  INTEGER,
    request_id  TEXT,
    charged_usd REAL
);
DROP INDEX IF EXISTS attempts_by_row;
";

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
             PRAGMA wal_autocheckpoint = 10000;",
        )
        .map_err(|e| db_error(path, "set up", &e))?;
        limit_size(&conn);
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| db_error(path, "read", &e))?;
        let empty: bool = conn
            .query_row("SELECT COUNT(*) = 0 FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| db_error(path, "read", &e))?;
        if !empty && version != SCHEMA_VERSION {
            return Err(Error::Usage(format!(
                "the run state {} was written by another version of batch and cannot be \
                 resumed; move it away (or use --restart after deleting it) to start over",
                path.display()
            )));
        }
        conn.execute_batch(SCHEMA)
            .and_then(|_| conn.pragma_update(None, "user_version", SCHEMA_VERSION))
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
        let get = |key: &str| -> rusqlite::Result<Option<String>> {
            self.conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        };
        let read = || -> rusqlite::Result<Option<RunRecord>> {
            let Some(settings) = get("settings")? else {
                return Ok(None);
            };
            let Ok(settings) = serde_json::from_str(&settings) else {
                return Ok(None);
            };
            let total_rows = get("total_rows")?.and_then(|v| v.parse().ok()).unwrap_or(0);
            let finished = get("finished")?.as_deref() == Some("true");
            let (ok, failed) = self.conn.query_row(
                "SELECT COALESCE(SUM(status = 'ok'), 0), COALESCE(SUM(status = 'failed'), 0) FROM rows",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )?;
            Ok(Some(RunRecord {
                settings,
                total_rows,
                finished,
                ok,
                failed,
            }))
        };
        read().map_err(|e| db_error(&self.path, "read", &e))
    }

    /// Forgets any earlier run and records a new one.
    pub fn start_run(&mut self, settings: &RunSettings, total_rows: u64) -> Result<(), Error> {
        let tx = self
            .conn
            .transaction()
            .map_err(|e| db_error(&self.path, "write", &e))?;
        let write = || -> rusqlite::Result<()> {
            tx.execute_batch("DELETE FROM rows; DELETE FROM attempts; DELETE FROM meta;")?;
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
        self.conn
            .query_row(
                "SELECT COALESCE(SUM(charged_usd), 0.0) FROM attempts",
                [],
                |r| r.get(0),
            )
            .map_err(|e| db_error(&self.path, "read", &e))
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
                changed += stmt.execute(params![hash, reason])?;
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
                 saved_usd, finished_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
                 ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
            )?;
            let mut attempt_stmt = tx.prepare_cached(
                "INSERT INTO attempts (seq, attempt, started_at, outcome, http_status, error, \
                 latency_ms, request_id, charged_usd) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
            for f in rows {
                let r = &f.result;
                for a in &f.attempts {
                    attempt_stmt.execute(params![
                        r.seq as i64,
                        a.attempt,
                        humantime::format_rfc3339_millis(a.started_at).to_string(),
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
                    f.request_hash,
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
                ])?;
            }
            Ok(())
        };
        write()
            .and_then(|_| tx.commit())
            .map_err(|e| db_error(&path, "write", &e))
    }
}

/// Reads a state file: the recorded rows in input order, for merging with the input, and the
/// attempts journaled.
pub struct FinishedRows {
    conn: Connection,
    path: PathBuf,
}

/// A row finished by an earlier run.
#[derive(Debug, Clone)]
pub struct PriorRow {
    pub request_hash: String,
    pub result: RowResult,
}

impl FinishedRows {
    /// Opens (creating if needed) the state file. The WAL is checkpointed every 10,000 pages
    /// rather than SQLite's 1,000: the journal rewrites the same few pages in every commit, and
    /// a checkpoint copies each page once however often it changed, so rarer checkpoints cost
    /// less (about 8% more rows/s on the zero-latency mock) for a WAL of at most ~40 MB.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let conn = Connection::open(path).map_err(|e| db_error(path, "open", &e))?;
        Ok(FinishedRows {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The positions of the rows that are finished (`ok`, and `failed` unless `retry_failed`),
    /// one bit each: a million rows in 125 KB.
    pub fn finished_set(&self, retry_failed: bool) -> Result<SeqSet, Error> {
        let sql = if retry_failed {
            "SELECT seq FROM rows WHERE status = 'ok'"
        } else {
            "SELECT seq FROM rows WHERE status IN ('ok', 'failed')"
        };
        let run = || -> rusqlite::Result<SeqSet> {
            let mut set = SeqSet::default();
            let mut stmt = self.conn.prepare(sql)?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                set.insert(r.get::<_, i64>(0)? as u64);
            }
            Ok(set)
        };
        run().map_err(|e| db_error(&self.path, "read", &e))
    }

    /// The row recorded at position `seq`, if any.
    pub fn row(&self, seq: u64) -> Result<Option<PriorRow>, Error> {
        self.conn
            .prepare_cached(&format!("SELECT {ROW_COLUMNS} FROM rows WHERE seq = ?1"))
            .and_then(|mut stmt| stmt.query_row([seq as i64], prior_row).optional())
            .map_err(|e| db_error(&self.path, "read", &e))
    }

    /// Calls `f` with each recorded row in `seq` order; `f` returns false to stop early.
    pub fn for_each(&self, mut f: impl FnMut(PriorRow) -> bool) -> Result<(), Error> {
        let mut run = || -> rusqlite::Result<()> {
            let mut stmt = self
                .conn
                .prepare(&format!("SELECT {ROW_COLUMNS} FROM rows ORDER BY seq"))?;
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
    pub fn attempts(&self) -> Result<Vec<JournaledAttempt>, Error> {
        let run = || -> rusqlite::Result<Vec<JournaledAttempt>> {
            let mut stmt = self
                .conn
                .prepare("SELECT seq, attempt, started_at, latency_ms, outcome FROM attempts")?;
            let rows = stmt.query_map([], |r| {
                let started_at: String = r.get(2)?;
                Ok(JournaledAttempt {
                    seq: r.get::<_, i64>(0)?.max(0) as u64,
                    attempt: r.get::<_, i64>(1)?.max(0) as u32,
                    started_at: humantime::parse_rfc3339_weak(&started_at).ok(),
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
#[derive(Debug, Default, Clone)]
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

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The columns [`prior_row`] reads, in its order.
const ROW_COLUMNS: &str = "seq, id, request_hash, status, output, error, attempts, throttled, \
    latency_ms, prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, \
    reasoning_tokens, cost_usd, model, finish_reason, cached, saved_usd";

fn prior_row(r: &rusqlite::Row) -> rusqlite::Result<PriorRow> {
    let status = match r.get::<_, String>(3)?.as_str() {
        "ok" => RowStatus::Ok,
        "failed" => RowStatus::Failed,
        _ => RowStatus::Skipped,
    };
    let n = |i: usize| -> rusqlite::Result<u64> {
        Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
    };
    let usage = match r.get::<_, Option<i64>>(9)? {
        None => None,
        Some(p) => Some(Usage {
            prompt_tokens: p.max(0) as u64,
            completion_tokens: n(10)?,
            cached_tokens: n(11)?,
            cache_write_tokens: n(12)?,
            reasoning_tokens: n(13)?,
        }),
    };
    Ok(PriorRow {
        request_hash: r.get(2)?,
        result: RowResult {
            seq: r.get::<_, i64>(0)? as u64,
            id: r.get(1)?,
            status,
            output: r.get(4)?,
            error: r.get(5)?,
            attempts: r.get(6)?,
            throttled: r.get(7)?,
            latency: r
                .get::<_, Option<i64>>(8)?
                .map(|ms| Duration::from_millis(ms.max(0) as u64)),
            usage,
            cost: r.get(14)?,
            model: r.get(15)?,
            finish_reason: r.get(16)?,
            cached: r.get(17)?,
            saved_usd: r.get(18)?,
        },
    })
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

    fn finished(seq: u64, status: RowStatus) -> Finished {
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
            request_hash: format!("h{seq}"),
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
                seen.push((
                    p.result.seq,
                    p.request_hash,
                    p.result.status,
                    p.result.usage,
                ));
                true
            })
            .unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].0, 0);
        assert_eq!(seen[0].2, RowStatus::Failed);
        assert_eq!(seen[1].2, RowStatus::Skipped);
        assert_eq!(seen[2].1, "h2");
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
        rows[1].request_hash = "h0".into();
        rows[2].request_hash = "h0".into();
        store.record(&rows).unwrap();
        assert_eq!(
            store
                .skip_failed(&["h0", "h9"], "no such endpoint")
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
}

//! The watcher's memory, `DIR/.batch-watch/ledger.sqlite`: which inputs it has run and where
//! their files went, so that a restart never runs a file twice.
//!
//! A run is keyed by the fingerprint of what it sends: the input's bytes and the settings that
//! shape requests. Each key has its own work folder (`runs/<key>/`) holding the copy of the input
//! that was run, its results and the run's journal, so a run cut short by a crash is resumed
//! from its journal rather than paid for again.
//!
//! Moving a finished run's files into place takes several steps, any of which a crash can cut
//! short. The destinations are therefore chosen and written down here first (a *delivery*), and
//! the steps are carried out afterwards; a delivery left unfinished is carried out again on the
//! next start. The connection holds SQLite's exclusive lock for as long as the watcher lives, so
//! a second watcher on the same folder is refused instead of racing the first.

use std::path::Path;
use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, params};

use crate::base::error::Error;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    key         TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    state       TEXT NOT NULL,   -- running | finished
    outcome     TEXT,            -- processed | failed
    ok          INTEGER,
    failed      INTEGER,
    skipped     INTEGER,
    cost_usd    REAL,
    started_at  TEXT NOT NULL,
    finished_at TEXT
);
CREATE TABLE IF NOT EXISTS deliveries (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL,
    name        TEXT NOT NULL,   -- the input's name in DIR
    input_to    TEXT NOT NULL,   -- paths relative to DIR
    results_to  TEXT,
    summary_to  TEXT,
    error_to    TEXT,
    error_text  TEXT,
    done        INTEGER NOT NULL DEFAULT 0
);
";

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Started and not known to have finished: a crash cut it short, or it is in progress.
    Running,
    /// Finished, its outcome recorded.
    Finished,
}

/// Where one input's files go once its run is over, relative to DIR.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: i64,
    pub key: String,
    /// The input's file name in DIR.
    pub name: String,
    pub input_to: String,
    pub results_to: Option<String>,
    pub summary_to: Option<String>,
    pub error_to: Option<String>,
    pub error_text: Option<String>,
}

/// How a finished run went, as recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub processed: bool,
    pub ok: u64,
    pub failed: u64,
    pub skipped: u64,
    pub cost_usd: Option<f64>,
}

impl Outcome {
    /// An input that could not be run: it goes to `failed/`.
    pub fn failed() -> Outcome {
        Outcome {
            processed: false,
            ok: 0,
            failed: 0,
            skipped: 0,
            cost_usd: None,
        }
    }
}

pub struct Ledger {
    conn: Connection,
    path: std::path::PathBuf,
}

fn db_error(path: &Path, e: rusqlite::Error) -> Error {
    Error::io(
        format!("cannot update the watch ledger {}", path.display()),
        std::io::Error::other(e),
    )
}

fn now() -> String {
    humantime::format_rfc3339(SystemTime::now()).to_string()
}

impl Ledger {
    /// Opens (or creates) the ledger and takes the folder's lock; fails if another watcher holds
    /// it.
    pub fn open(path: &Path, watched: &Path) -> Result<Ledger, Error> {
        let err = |what: &str, e: rusqlite::Error| {
            if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) {
                return Error::Usage(format!(
                    "another `batch watch` is already watching {} (it holds {}); stop it first",
                    watched.display(),
                    path.display()
                ));
            }
            Error::io(
                format!("cannot {what} the watch ledger {}", path.display()),
                std::io::Error::other(e),
            )
        };
        let conn = Connection::open(path).map_err(|e| err("open", e))?;
        // In exclusive locking mode the lock taken by BEGIN EXCLUSIVE is kept until the
        // connection closes (or the process dies).
        conn.execute_batch(
            "PRAGMA busy_timeout = 0; PRAGMA locking_mode = EXCLUSIVE; PRAGMA synchronous = FULL;
             BEGIN EXCLUSIVE;",
        )
        .map_err(|e| err("lock", e))?;
        conn.execute_batch(SCHEMA)
            .and_then(|_| conn.execute_batch("COMMIT"))
            .map_err(|e| err("set up", e))?;
        Ok(Ledger {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        db_error(&self.path, e)
    }

    pub fn state(&self, key: &str) -> Result<Option<RunState>, Error> {
        self.conn
            .query_row("SELECT state FROM runs WHERE key = ?1", [key], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map(|s| {
                s.map(|s| match s.as_str() {
                    "finished" => RunState::Finished,
                    _ => RunState::Running,
                })
            })
            .map_err(|e| self.err(e))
    }

    /// Records that the run of `key` (for the input named `name`) starts or starts again.
    pub fn start(&self, key: &str, name: &str) -> Result<(), Error> {
        self.conn
            .execute(
                "INSERT INTO runs (key, name, state, started_at) VALUES (?1, ?2, 'running', ?3)
                 ON CONFLICT(key) DO UPDATE SET name = ?2, state = 'running', started_at = ?3,
                     finished_at = NULL",
                params![key, name, now()],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Records the run's outcome and where its files go, in one transaction, and returns the
    /// delivery with its id.
    pub fn finish(
        &mut self,
        key: &str,
        outcome: &Outcome,
        mut delivery: Delivery,
    ) -> Result<Delivery, Error> {
        let path = self.path.clone();
        let write = |conn: &mut Connection| -> rusqlite::Result<i64> {
            let tx = conn.transaction()?;
            tx.execute(
                "UPDATE runs SET state = 'finished', outcome = ?2, ok = ?3, failed = ?4,
                     skipped = ?5, cost_usd = ?6, finished_at = ?7 WHERE key = ?1",
                params![
                    key,
                    if outcome.processed {
                        "processed"
                    } else {
                        "failed"
                    },
                    outcome.ok as i64,
                    outcome.failed as i64,
                    outcome.skipped as i64,
                    outcome.cost_usd,
                    now()
                ],
            )?;
            tx.execute(
                "INSERT INTO deliveries (key, name, input_to, results_to, summary_to, error_to,
                     error_text) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    key,
                    delivery.name,
                    delivery.input_to,
                    delivery.results_to,
                    delivery.summary_to,
                    delivery.error_to,
                    delivery.error_text
                ],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(id)
        };
        delivery.id = write(&mut self.conn).map_err(|e| db_error(&path, e))?;
        Ok(delivery)
    }

    /// Whether a delivery not yet carried out will write `rel` (relative to DIR): such a path is
    /// not free even though no file is there yet.
    pub fn is_reserved(&self, rel: &str) -> Result<bool, Error> {
        self.conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM deliveries WHERE done = 0 AND (input_to = ?1
                     OR results_to = ?1 OR summary_to = ?1 OR error_to = ?1))",
                [rel],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Deliveries recorded but not known to be carried out.
    pub fn pending(&self) -> Result<Vec<Delivery>, Error> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, key, name, input_to, results_to, summary_to, error_to, error_text
                 FROM deliveries WHERE done = 0 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows: Result<Vec<Delivery>, _> = stmt
            .query_map([], |r| {
                Ok(Delivery {
                    id: r.get(0)?,
                    key: r.get(1)?,
                    name: r.get(2)?,
                    input_to: r.get(3)?,
                    results_to: r.get(4)?,
                    summary_to: r.get(5)?,
                    error_to: r.get(6)?,
                    error_text: r.get(7)?,
                })
            })
            .and_then(|rows| rows.collect());
        rows.map_err(|e| self.err(e))
    }

    pub fn delivered(&self, id: i64) -> Result<(), Error> {
        self.conn
            .execute("UPDATE deliveries SET done = 1 WHERE id = ?1", [id])
            .map(drop)
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(name: &str) -> Delivery {
        Delivery {
            id: 0,
            key: "k".into(),
            name: name.into(),
            input_to: format!("processed/{name}"),
            results_to: Some("done/a.results.csv".into()),
            summary_to: None,
            error_to: None,
            error_text: None,
        }
    }

    #[test]
    fn a_second_watcher_on_the_same_folder_is_refused_until_the_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let first = Ledger::open(&path, dir.path()).unwrap();
        let Err(Error::Usage(msg)) = Ledger::open(&path, dir.path()) else {
            panic!("a second ledger on the same file must be refused");
        };
        assert!(msg.contains("another `batch watch`"), "{msg}");
        drop(first);
        Ledger::open(&path, dir.path()).expect("free again once the first closed");
    }

    #[test]
    fn runs_and_deliveries_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        {
            let mut ledger = Ledger::open(&path, dir.path()).unwrap();
            assert_eq!(ledger.state("k").unwrap(), None);
            ledger.start("k", "a.csv").unwrap();
            assert_eq!(ledger.state("k").unwrap(), Some(RunState::Running));
            let outcome = Outcome {
                processed: true,
                ok: 3,
                failed: 0,
                skipped: 0,
                cost_usd: Some(0.5),
            };
            let d = ledger.finish("k", &outcome, delivery("a.csv")).unwrap();
            assert!(d.id > 0);
            assert!(ledger.is_reserved("processed/a.csv").unwrap());
            assert!(!ledger.is_reserved("processed/b.csv").unwrap());
        }
        let ledger = Ledger::open(&path, dir.path()).unwrap();
        assert_eq!(ledger.state("k").unwrap(), Some(RunState::Finished));
        let pending = ledger.pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].input_to, "processed/a.csv");
        ledger.delivered(pending[0].id).unwrap();
        assert!(ledger.pending().unwrap().is_empty());
        // A finished run can be started again (the same file dropped in again).
        ledger.start("k", "a.csv").unwrap();
        assert_eq!(ledger.state("k").unwrap(), Some(RunState::Running));
    }
}

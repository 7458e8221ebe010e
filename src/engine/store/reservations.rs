//! Reservations against the spend cap, journaled before their request is sent, so that the cap
//! holds across a `kill -9`: a resumed run counts every reservation whose attempt is not in the
//! journal as spent at its worst case (the server may have answered, and billed, after the
//! kill). A reservation is matched to its journaled attempt by row, attempt number and start
//! time; a matched one counts at the attempt's own charge instead.
//!
//! Kept apart from the rows and attempts tables: its own table, written through its own
//! connection (the row workers write here while the journal thread writes rows).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::{Connection, params};

use super::{Finished, Store, db_error, unix_millis};
use crate::base::error::Error;

const TABLE: &str = "
CREATE TABLE IF NOT EXISTS reservations (
    seq        INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    started_ms INTEGER NOT NULL,
    worst_usd  REAL NOT NULL
);";

/// The worst cases of journaled attempts that are not (yet) in the journal: neither in
/// `attempts` nor kept in their row as a first attempt that was answered (whose start is its
/// row's `finished_ms - started_before_ms`; see the schema in `store.rs`).
const UNSETTLED: &str = "
SELECT COALESCE(SUM(worst_usd), 0.0) FROM reservations r WHERE NOT EXISTS (
    SELECT 1 FROM attempts a
    WHERE a.seq = r.seq AND a.attempt = r.attempt AND a.started_ms = r.started_ms)
AND NOT EXISTS (
    SELECT 1 FROM rows w
    WHERE w.seq = r.seq AND r.attempt = 1 AND w.started_before_ms IS NOT NULL
      AND w.finished_ms - w.started_before_ms = r.started_ms)";

/// Where the row workers journal their reservations.
pub struct ReservationLog {
    conn: Connection,
    path: PathBuf,
}

impl ReservationLog {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let conn = Connection::open(path).map_err(|e| db_error(path, "open", &e))?;
        conn.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL;")
            .and_then(|_| conn.execute_batch(TABLE))
            .map_err(|e| db_error(path, "set up", &e))?;
        super::limit_size(&conn);
        Ok(ReservationLog {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Journals that attempt `attempt` of row `seq`, started at `started_at`, may cost up to
    /// `worst_usd`. Committed when this returns: only then may the request be sent.
    pub fn record(
        &self,
        seq: u64,
        attempt: u32,
        started_at: SystemTime,
        worst_usd: f64,
    ) -> Result<(), Error> {
        self.conn
            .prepare_cached(
                "INSERT INTO reservations (seq, attempt, started_ms, worst_usd) \
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    seq as i64,
                    attempt,
                    unix_millis(started_at),
                    worst_usd
                ])
            })
            .map(|_| ())
            .map_err(|e| db_error(&self.path, "write", &e))
    }

    /// Forgets a reservation whose request was not sent after all.
    pub fn forget(&self, seq: u64, attempt: u32, started_at: SystemTime) -> Result<(), Error> {
        self.conn
            .prepare_cached(
                "DELETE FROM reservations WHERE seq = ?1 AND attempt = ?2 AND started_ms = ?3",
            )
            .and_then(|mut s| s.execute(params![seq as i64, attempt, unix_millis(started_at)]))
            .map(|_| ())
            .map_err(|e| db_error(&self.path, "write", &e))
    }
}

/// The unsettled reservations' worst cases in a file opened read-only: none when the file has
/// no reservations table (no run of it had a cap) or is of version 2 (which had none).
pub(super) fn unsettled_read_only(
    conn: &Connection,
    path: &Path,
    version: i64,
) -> Result<f64, Error> {
    let has_table = |conn: &Connection| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'reservations'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    match has_table(conn) {
        Ok(true) if version != super::V2 => conn
            .query_row(UNSETTLED, [], |r| r.get(0))
            .map_err(|e| db_error(path, "read", &e)),
        Ok(_) => Ok(0.0),
        Err(e) => Err(db_error(path, "read", &e)),
    }
}

impl Store {
    /// Creates the reservations table if this file has none (a run without a cap never did).
    fn reservations_table(&self) -> Result<(), Error> {
        self.conn
            .execute_batch(TABLE)
            .map_err(|e| db_error(&self.path, "set up", &e))
    }

    /// What the run counts as spent: the journaled attempts' charges, and the worst case of
    /// every reservation whose attempt never reached the journal. An upper bound on what the
    /// server billed.
    pub fn spent_at_most(&self) -> Result<f64, Error> {
        self.reservations_table()?;
        let unsettled: f64 = self
            .conn
            .query_row(UNSETTLED, [], |r| r.get(0))
            .map_err(|e| db_error(&self.path, "read", &e))?;
        Ok(self.spent()? + unsettled)
    }

    /// Forgets the reservations of the attempts in `rows`, now journaled with their charges.
    /// (A kill before this runs leaves them matched to their attempts, so nothing is counted
    /// twice.)
    pub fn settle_reservations(&mut self, rows: &[Finished]) -> Result<(), Error> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| db_error(&path, "write", &e))?;
        let write = || -> rusqlite::Result<()> {
            let mut stmt = tx.prepare_cached(
                "DELETE FROM reservations WHERE seq = ?1 AND attempt = ?2 AND started_ms = ?3",
            )?;
            for f in rows {
                for a in &f.attempts {
                    stmt.execute(params![
                        f.result.seq as i64,
                        a.attempt,
                        unix_millis(a.started_at)
                    ])?;
                }
            }
            Ok(())
        };
        write()
            .and_then(|_| tx.commit())
            .map_err(|e| db_error(&path, "write", &e))
    }

    /// Forgets every reservation: a new run starts (`--restart`, or a finished run run again).
    pub fn clear_reservations(&self) -> Result<(), Error> {
        self.reservations_table()?;
        self.conn
            .execute("DELETE FROM reservations", [])
            .map(|_| ())
            .map_err(|e| db_error(&self.path, "write", &e))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::base::record::{RowResult, RowStatus};
    use crate::engine::store::AttemptRecord;
    use crate::engine::store::tests::settings;

    fn attempt(n: u32, started_at: SystemTime, charged: f64) -> AttemptRecord {
        AttemptRecord {
            attempt: n,
            started_at,
            outcome: "ok",
            http_status: Some(200),
            error: None,
            latency: Duration::from_millis(5),
            request_id: None,
            charged_usd: Some(charged),
        }
    }

    fn row(seq: u64, attempts: Vec<AttemptRecord>) -> Finished {
        let mut result = RowResult::skipped(seq, format!("r{seq}"), "m", "");
        result.status = RowStatus::Ok;
        Finished {
            result,
            request_hash: format!("h{seq}"),
            attempts,
        }
    }

    #[test]
    fn an_unsettled_reservation_counts_at_its_worst_and_a_journaled_one_at_its_charge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let mut store = Store::open(&path).unwrap();
        store.start_run(&settings(), 3).unwrap();
        let log = ReservationLog::open(&path).unwrap();
        let t = |ms| UNIX_EPOCH + Duration::from_millis(ms);
        log.record(0, 1, t(1000), 0.5).unwrap();
        log.record(1, 1, t(2000), 0.25).unwrap();
        // Row 0's answer is journaled; row 1 was in flight at a kill.
        store
            .record(&[row(0, vec![attempt(1, t(1000), 0.125)])])
            .unwrap();
        assert!((store.spent_at_most().unwrap() - (0.125 + 0.25)).abs() < 1e-12);
        // `batch status` reads the same figure from outside, read-only.
        let look = crate::engine::store::FinishedRows::open_read_only(&path).unwrap();
        assert!((look.spent_at_most().unwrap() - (0.125 + 0.25)).abs() < 1e-12);
        // Settling row 0 changes nothing: it counted once already.
        store
            .settle_reservations(&[row(0, vec![attempt(1, t(1000), 0.125)])])
            .unwrap();
        assert!((store.spent_at_most().unwrap() - 0.375).abs() < 1e-12);
        // Row 1 sent again after the resume: its first attempt still counts at its worst.
        log.record(1, 1, t(3000), 0.25).unwrap();
        store
            .record(&[row(1, vec![attempt(1, t(3000), 0.0625)])])
            .unwrap();
        assert!((store.spent_at_most().unwrap() - (0.125 + 0.25 + 0.0625)).abs() < 1e-12);
        // One journaled but not sent after all (a stop came meanwhile) is forgotten.
        log.record(2, 1, t(4000), 0.5).unwrap();
        log.forget(2, 1, t(4000)).unwrap();
        assert!((store.spent_at_most().unwrap() - (0.125 + 0.25 + 0.0625)).abs() < 1e-12);
        store.clear_reservations().unwrap();
        assert!((store.spent_at_most().unwrap() - store.spent().unwrap()).abs() < 1e-12);
    }

    #[test]
    fn a_state_file_without_reservations_reads_as_its_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        assert_eq!(store.spent_at_most().unwrap(), 0.0);
    }
}

//! Row starts in the input ([`Start`]: a row's position, line and byte), recorded in the state
//! file by the run whose pre-flight read the whole input, so that a resume of the same input
//! reads from the last start before its first unfinished row instead of from the top. State
//! files written before there were checkpoints have no table for them, and resume from the top.

use rusqlite::{OptionalExtension, params};

use super::{FinishedRows, Store, db_error};
use crate::base::error::Error;
use crate::engine::input::Start;

const TABLE: &str = "CREATE TABLE IF NOT EXISTS checkpoints (
    seq  INTEGER PRIMARY KEY,
    line INTEGER NOT NULL,
    byte INTEGER NOT NULL
)";

impl Store {
    /// Replaces the recorded row starts with `starts` (those of the input as it is now), in
    /// one transaction.
    pub fn set_checkpoints(&mut self, starts: &[Start]) -> Result<(), Error> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| db_error(&path, "write", &e))?;
        let write = || -> rusqlite::Result<()> {
            tx.execute_batch(&format!("{TABLE}; DELETE FROM checkpoints;"))?;
            let mut put = tx.prepare(
                "INSERT OR REPLACE INTO checkpoints (seq, line, byte) VALUES (?1, ?2, ?3)",
            )?;
            for s in starts {
                put.execute(params![s.seq as i64, s.line as i64, s.byte as i64])?;
            }
            Ok(())
        };
        write()
            .and_then(|_| tx.commit())
            .map_err(|e| db_error(&path, "write", &e))
    }
}

impl FinishedRows {
    /// The last recorded row start at or before row `seq`; `None` when the file records none
    /// there (or none at all: an older file).
    pub fn checkpoint_before(&self, seq: u64) -> Result<Option<Start>, Error> {
        let read = || -> rusqlite::Result<Option<Start>> {
            let has_table: bool = self.conn.query_row(
                "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'checkpoints'",
                [],
                |r| r.get(0),
            )?;
            if !has_table {
                return Ok(None);
            }
            self.conn
                .query_row(
                    "SELECT seq, line, byte FROM checkpoints WHERE seq <= ?1 ORDER BY seq DESC LIMIT 1",
                    [seq.min(i64::MAX as u64) as i64],
                    |r| {
                        Ok(Start {
                            seq: r.get::<_, i64>(0)?.max(0) as u64,
                            line: r.get::<_, i64>(1)?.max(0) as u64,
                            byte: r.get::<_, i64>(2)?.max(0) as u64,
                        })
                    },
                )
                .optional()
        };
        read().map_err(|e| db_error(&self.path, "read", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(seq: u64) -> Start {
        Start {
            seq,
            line: seq * 2 + 2,
            byte: seq * 10 + 5,
        }
    }

    #[test]
    fn the_last_start_at_or_before_a_row_is_found_and_a_new_set_replaces_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let mut store = Store::open(&path).unwrap();
        // A file without checkpoints (as older ones are) has none to give.
        assert_eq!(
            FinishedRows::open(&path)
                .unwrap()
                .checkpoint_before(5)
                .unwrap(),
            None
        );
        store
            .set_checkpoints(&[start(0), start(4), start(8)])
            .unwrap();
        let rows = FinishedRows::open(&path).unwrap();
        assert_eq!(rows.checkpoint_before(0).unwrap(), Some(start(0)));
        assert_eq!(rows.checkpoint_before(7).unwrap(), Some(start(4)));
        assert_eq!(rows.checkpoint_before(8).unwrap(), Some(start(8)));
        assert_eq!(rows.checkpoint_before(100).unwrap(), Some(start(8)));
        store.set_checkpoints(&[start(0), start(3)]).unwrap();
        assert_eq!(rows.checkpoint_before(100).unwrap(), Some(start(3)));
    }
}

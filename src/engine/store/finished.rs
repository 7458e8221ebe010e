//! The finished rows of a state file without reading every row: reading ten million positions
//! from the status index took seconds of a resume's start.
//!
//! The journal records rows nearly in input order, so the rows recorded are every position
//! from 0 to the largest but for a few gaps near it (rows in flight when the run was killed).
//! The running totals ([`super::counts`]) say how many rows are recorded, and so how many gaps
//! there are; they are found by reading back from the largest position over a window, all of
//! it, and must be exactly as many (totals can run high: see [`super::counts`]).
//! The recorded rows that are not finished (`skipped`, and `failed` under `--retry-failed`) come
//! from the status index, and their number is checked against the totals. A file without
//! totals, gaps far from the end, or any count that does not agree: `None`, and the caller
//! reads every row as before.

use rusqlite::OptionalExtension;

use super::{FinishedRows, SeqSet, db_error};
use crate::base::error::Error;

/// Rows read back from the end while looking for gaps, at most.
const GAP_SEARCH_ROWS: u64 = 100_000;

/// The largest position a state file may hold: past any input (8.6 billion rows), and a set of
/// that many bits is a gigabyte. A larger (or negative) one is damage, not a row.
pub(super) const MAX_SEQ: i64 = 1 << 33;

impl FinishedRows {
    /// See the module's header; `None` when every row must be read instead.
    pub(super) fn finished_set_quickly(&self, retry_failed: bool) -> Result<Option<SeqSet>, Error> {
        if !self.counts {
            return Ok(None);
        }
        let counts = self.status_counts()?;
        let read = || -> rusqlite::Result<Option<SeqSet>> {
            let end = |sql: &str| -> rusqlite::Result<Option<i64>> {
                Ok(self
                    .conn
                    .query_row(sql, [], |r| r.get(0))
                    .optional()?
                    .flatten())
            };
            let Some(max) = end("SELECT MAX(seq) FROM rows")? else {
                return Ok(Some(SeqSet::default()));
            };
            // Positions no run writes: the full read names the state file as damaged.
            let min = end("SELECT MIN(seq) FROM rows")?.unwrap_or(0);
            if min < 0 || max > MAX_SEQ {
                return Ok(None);
            }
            let max = max as u64;
            let recorded = counts.ok + counts.failed + counts.skipped;
            // More gaps than the read-back can find: checked before the set is made, so totals
            // far below the largest position never cost an allocation that large.
            let Some(gaps) = (max + 1)
                .checked_sub(recorded)
                .filter(|g| *g <= GAP_SEARCH_ROWS)
            else {
                return Ok(None);
            };
            let mut set = SeqSet::all_below(max + 1);
            if !self.remove_gaps(&mut set, max, gaps)? {
                return Ok(None);
            }
            let (sql, expected) = match retry_failed {
                true => (
                    "SELECT seq FROM rows WHERE status IN ('skipped', 'pending', 'failed')",
                    counts.skipped + counts.failed,
                ),
                false => (
                    "SELECT seq FROM rows WHERE status IN ('skipped', 'pending')",
                    counts.skipped,
                ),
            };
            let mut stmt = self.conn.prepare(sql)?;
            let mut rows = stmt.query([])?;
            let mut found = 0u64;
            while let Some(r) = rows.next()? {
                set.remove(r.get::<_, i64>(0)?.max(0) as u64);
                found += 1;
            }
            Ok((found == expected).then_some(set))
        };
        read().map_err(|e| db_error(&self.path, "read", &e))
    }

    /// Takes out of `set` the positions up to `max` that no row is recorded at, reading back
    /// from `max` over the whole window ([`GAP_SEARCH_ROWS`] rows, or down to position 0);
    /// false unless it finds exactly the `gaps` the totals predict and, when the window does not
    /// reach position 0, all of them within it. The whole window, not until `gaps` are found:
    /// totals inflated by a row replaced without its delete trigger (`recursive_triggers` off:
    /// an older binary, a user's `sqlite3`) predict too few, and rows past the last one found
    /// would never be sent.
    fn remove_gaps(&self, set: &mut SeqSet, max: u64, gaps: u64) -> rusqlite::Result<bool> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq FROM rows ORDER BY seq DESC")?;
        let mut rows = stmt.query([])?;
        // The next position expected going down; those skipped over are gaps.
        let mut expected = Some(max);
        let (mut read, mut found) = (0u64, 0u64);
        while let Some(r) = rows.next()? {
            let Ok(seq) = u64::try_from(r.get::<_, i64>(0)?) else {
                return Ok(false);
            };
            if let Some(top) = expected {
                for missing in seq + 1..=top {
                    set.remove(missing);
                    found += 1;
                }
            }
            expected = seq.checked_sub(1);
            read += 1;
            if expected.is_none() || read >= GAP_SEARCH_ROWS || found > gaps {
                break;
            }
        }
        // Below the last position read: gaps down to 0 if the window reached the start.
        if read < GAP_SEARCH_ROWS
            && let Some(top) = expected
        {
            for missing in 0..=top {
                set.remove(missing);
                found += 1;
            }
        }
        Ok(found == gaps)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::super::tests::{finished, settings};
    use super::*;
    use crate::base::record::RowStatus;

    /// Both ways of reading agree, for both settings of `--retry-failed`; returns whether the
    /// quick one answered.
    fn agree(path: &std::path::Path) -> bool {
        let rows = FinishedRows::open(path).unwrap();
        let mut quick = false;
        for retry_failed in [false, true] {
            let read = rows.finished_set_by_reading(retry_failed).unwrap();
            if let Some(set) = rows.finished_set_quickly(retry_failed).unwrap() {
                assert_eq!(set, read, "retry_failed {retry_failed}");
                assert_eq!(set.len(), read.len());
                quick = true;
            }
        }
        quick
    }

    #[test]
    fn finished_rows_are_found_without_reading_them_all_and_as_reading_them_finds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let mut store = Store::open(&path).unwrap();
        store.start_run(&settings(), 1000).unwrap();
        assert!(agree(&path), "nothing recorded");
        let status = |seq: u64| match seq % 97 {
            5 => RowStatus::Failed,
            7 => RowStatus::Skipped,
            _ => RowStatus::Ok,
        };
        // 0 to 899 but for rows in flight at a kill near the end.
        let gaps = [850, 851, 870, 898];
        let rows: Vec<_> = (0..900)
            .filter(|s| !gaps.contains(s))
            .map(|s| finished(s, status(s)))
            .collect();
        store.record(&rows).unwrap();
        assert!(agree(&path), "gaps near the end");
        let set = FinishedRows::open(&path)
            .unwrap()
            .finished_set(false)
            .unwrap();
        assert!(!set.contains(850) && !set.contains(7) && set.contains(5) && set.contains(899));
        assert_eq!(set.first_missing(), 7);
        // A gap below the smallest recorded row: read as before.
        let dir2 = tempfile::tempdir().unwrap();
        let path2 = dir2.path().join("s.sqlite");
        let mut store = Store::open(&path2).unwrap();
        store.start_run(&settings(), 10).unwrap();
        store
            .record(&[finished(3, RowStatus::Ok), finished(4, RowStatus::Ok)])
            .unwrap();
        // Read back to position 0, the gaps below the smallest recorded row are found too.
        assert!(agree(&path2), "rows 0 to 2 were never recorded");
        let set = FinishedRows::open(&path2)
            .unwrap()
            .finished_set(false)
            .unwrap();
        assert_eq!((set.len(), set.first_missing()), (2, 0));
    }

    #[test]
    fn totals_inflated_by_a_replace_without_its_delete_trigger_are_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let mut store = Store::open(&path).unwrap();
        store.start_run(&settings(), 1000).unwrap();
        let rows: Vec<_> = (0..900)
            .filter(|s| ![100, 850].contains(s))
            .map(|s| finished(s, RowStatus::Ok))
            .collect();
        store.record(&rows).unwrap();
        drop(store);
        // An older binary or a user's sqlite3: the replaced row stays counted.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA recursive_triggers = OFF;
             INSERT OR REPLACE INTO rows SELECT * FROM rows WHERE seq = 5;",
        )
        .unwrap();
        drop(conn);
        let rows = FinishedRows::open(&path).unwrap();
        assert!(rows.finished_set_quickly(false).unwrap().is_none());
        let set = rows.finished_set(false).unwrap();
        assert!(!set.contains(100) && !set.contains(850) && set.contains(5));
        assert_eq!(set.len(), 898);
    }

    #[test]
    fn a_position_no_input_has_is_refused_naming_the_state_file() {
        for seq in [1i64 << 40, -5] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s.sqlite");
            let mut store = Store::open(&path).unwrap();
            store.start_run(&settings(), 10).unwrap();
            let rows: Vec<_> = (0..10).map(|s| finished(s, RowStatus::Ok)).collect();
            store.record(&rows).unwrap();
            drop(store);
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute("UPDATE rows SET seq = ?1 WHERE seq = 3", [seq])
                .unwrap();
            drop(conn);
            let rows = FinishedRows::open(&path).unwrap();
            assert!(rows.finished_set_quickly(false).unwrap().is_none(), "{seq}");
            let e = rows.finished_set(false).unwrap_err().to_string();
            assert!(
                e.contains("damaged") && e.contains(&path.display().to_string()),
                "{e}"
            );
            assert!(e.contains(&seq.to_string()), "{e}");
        }
    }
}

//! The finished rows of a state file without reading every row: reading ten million positions
//! from the status index took seconds of a resume's start.
//!
//! The journal records rows nearly in input order, so the rows recorded are every position
//! from 0 to the largest but for a few gaps near it (rows in flight when the run was killed).
//! The running totals ([`super::counts`]) say how many rows are recorded, and so how many gaps
//! there are; they are found by reading back from the largest position until all are found.
//! The recorded rows that are not finished (`skipped`, and `failed` under `--retry-failed`) come
//! from the status index, and their number is checked against the totals. A file without
//! totals, gaps far from the end, or any count that does not agree: `None`, and the caller
//! reads every row as before.

use rusqlite::OptionalExtension;

use super::{FinishedRows, SeqSet, db_error};
use crate::base::error::Error;

/// Rows read back from the end while looking for gaps, at most.
const GAP_SEARCH_ROWS: u64 = 100_000;

impl FinishedRows {
    /// See the module's header; `None` when every row must be read instead.
    pub(super) fn finished_set_quickly(&self, retry_failed: bool) -> Result<Option<SeqSet>, Error> {
        if !self.counts {
            return Ok(None);
        }
        let counts = self.status_counts()?;
        let read = || -> rusqlite::Result<Option<SeqSet>> {
            let max: Option<i64> = self
                .conn
                .query_row("SELECT MAX(seq) FROM rows", [], |r| r.get(0))
                .optional()?
                .flatten();
            let Some(max) = max.filter(|m| *m >= 0).map(|m| m as u64) else {
                return Ok(Some(SeqSet::default()));
            };
            let recorded = counts.ok + counts.failed + counts.skipped;
            let Some(gaps) = (max + 1).checked_sub(recorded) else {
                return Ok(None);
            };
            let mut set = SeqSet::all_below(max + 1);
            if gaps > 0 && !self.remove_gaps(&mut set, max, gaps)? {
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

    /// Takes out of `set` the `gaps` positions up to `max` that no row is recorded at, reading
    /// back from `max`; false if they are not all within [`GAP_SEARCH_ROWS`] of the end.
    fn remove_gaps(&self, set: &mut SeqSet, max: u64, mut gaps: u64) -> rusqlite::Result<bool> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq FROM rows ORDER BY seq DESC")?;
        let mut rows = stmt.query([])?;
        // The next position expected going down; those skipped over are gaps.
        let mut expected = max;
        let mut read = 0u64;
        while let Some(r) = rows.next()? {
            let seq = r.get::<_, i64>(0)?.max(0) as u64;
            for missing in seq + 1..=expected {
                set.remove(missing);
                gaps = gaps.saturating_sub(1);
            }
            read += 1;
            if gaps == 0 || seq == 0 {
                break;
            }
            if read >= GAP_SEARCH_ROWS {
                return Ok(false);
            }
            expected = seq - 1;
        }
        // Gaps left are below the smallest recorded position, or the totals are off.
        Ok(gaps == 0)
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
        assert!(!agree(&path2), "rows 0 to 2 were never recorded");
    }
}

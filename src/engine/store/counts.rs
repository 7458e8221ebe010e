//! Running totals of a state file: rows by status, what the run's attempts are counted as
//! costing, and the errors of rows that did not succeed, kept by triggers in the same
//! transaction as the rows themselves. `batch status`, a resume and a run's spend cap read them
//! in a few page reads, where counting the rows read the whole file (23 s for 1.3 GB).
//!
//! Triggers rather than code in [`super::Store::record`]: every writer keeps them right (a
//! user's `sqlite3`, a bench that deletes rows, an older `batch` binary). A replaced row
//! (`INSERT OR REPLACE`) is taken out of the totals before the new one is added only when
//! `recursive_triggers` is on, as `batch` sets it: a writer without it (an older binary, a
//! user's `sqlite3`) leaves the old row counted too, so the totals can run high, and readers
//! that rely on them check them (see `finished.rs`). A state file written before the totals existed is
//! counted once, when a run opens it; a read-only look at one counts the rows as before.

use rusqlite::{Connection, OptionalExtension};

/// The totals' tables. `counts` has a row per status (`ok`, `failed`, `skipped`): its rows, and
/// the cost of those answered at their first attempt (which keep that attempt in their own
/// record), plus the row `''` for the `attempts` table: its rows and their `charged_usd`. So
/// what the run is counted as costing is the sum of `usd`. `error_counts`: the rows that did
/// not succeed, by error text.
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS counts (
    status TEXT PRIMARY KEY,
    rows   INTEGER NOT NULL,
    usd    REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS error_counts (
    error TEXT PRIMARY KEY,
    rows  INTEGER NOT NULL
) WITHOUT ROWID;
";

/// The cost a row adds to the run's total: its own, if it holds its attempt.
const ROW_USD: &str = "CASE WHEN {r}.started_before_ms IS NULL THEN 0.0 \
    ELSE COALESCE({r}.cost_usd, 0.0) END";

/// Adds row `NEW` to the totals.
fn row_in() -> String {
    format!(
        "INSERT INTO counts VALUES (NEW.status, 1, {usd}) \
             ON CONFLICT (status) DO UPDATE SET rows = rows + 1, usd = usd + excluded.usd; \
         INSERT INTO error_counts SELECT NEW.error, 1 WHERE NEW.status <> 'ok' AND NEW.error <> '' \
             ON CONFLICT (error) DO UPDATE SET rows = rows + 1;",
        usd = ROW_USD.replace("{r}", "NEW")
    )
}

/// Takes row `OLD` out of the totals.
fn row_out() -> String {
    format!(
        "UPDATE counts SET rows = rows - 1, usd = usd - {usd} WHERE status = OLD.status; \
         UPDATE error_counts SET rows = rows - 1 WHERE error = OLD.error AND OLD.status <> 'ok'; \
         DELETE FROM error_counts WHERE error = OLD.error AND rows <= 0;",
        usd = ROW_USD.replace("{r}", "OLD")
    )
}

/// The triggers that keep the totals.
fn triggers() -> String {
    let (row_in, row_out) = (row_in(), row_out());
    format!(
        "CREATE TRIGGER IF NOT EXISTS rows_counted_in AFTER INSERT ON rows BEGIN {row_in} END;
         CREATE TRIGGER IF NOT EXISTS rows_counted_out AFTER DELETE ON rows BEGIN {row_out} END;
         CREATE TRIGGER IF NOT EXISTS rows_counted_change AFTER UPDATE ON rows
             BEGIN {row_out} {row_in} END;
         CREATE TRIGGER IF NOT EXISTS attempts_counted_in AFTER INSERT ON attempts BEGIN
             INSERT INTO counts VALUES ('', 1, COALESCE(NEW.charged_usd, 0.0))
                 ON CONFLICT (status) DO UPDATE SET rows = rows + 1, usd = usd + excluded.usd;
         END;
         CREATE TRIGGER IF NOT EXISTS attempts_counted_out AFTER DELETE ON attempts BEGIN
             UPDATE counts SET rows = rows - 1, usd = usd - COALESCE(OLD.charged_usd, 0.0)
                 WHERE status = '';
         END;"
    )
}

const DROP_TRIGGERS: &str = "DROP TRIGGER IF EXISTS rows_counted_in; \
    DROP TRIGGER IF EXISTS rows_counted_out; DROP TRIGGER IF EXISTS rows_counted_change; \
    DROP TRIGGER IF EXISTS attempts_counted_in; DROP TRIGGER IF EXISTS attempts_counted_out;";

/// The totals of the rows and attempts already in the file.
const COUNT_EXISTING: &str = "
DELETE FROM counts; DELETE FROM error_counts;
INSERT INTO counts SELECT status, COUNT(*), COALESCE(SUM(CASE WHEN started_before_ms IS NULL
    THEN 0.0 ELSE COALESCE(cost_usd, 0.0) END), 0.0) FROM rows GROUP BY status;
INSERT INTO counts SELECT '', COUNT(*), COALESCE(SUM(charged_usd), 0.0) FROM attempts;
INSERT INTO error_counts SELECT error, COUNT(*) FROM rows
    WHERE status <> 'ok' AND error <> '' GROUP BY error;
";

/// The SQL that sets the totals up in a file whose `rows` and `attempts` tables are in their
/// current form (run inside the opening transaction): nothing if they are there, else the
/// tables, the existing rows counted (one pass, once), and the triggers.
pub(super) fn setup_sql(conn: &Connection) -> rusqlite::Result<String> {
    Ok(if has_counts(conn)? {
        String::new()
    } else {
        format!("{TABLES} {COUNT_EXISTING} {}", triggers())
    })
}

/// Deletes every row and attempt, and zeroes the totals, without a trigger run per row (a new
/// run in the state file of ten million rows).
pub(super) fn clear_sql() -> String {
    format!(
        "{DROP_TRIGGERS} DELETE FROM rows; DELETE FROM attempts; DELETE FROM counts; \
         DELETE FROM error_counts; {}",
        triggers()
    )
}

/// Whether the file keeps totals (older files of this version do not).
pub(super) fn has_counts(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'counts'",
        [],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
}

/// Rows by status, from the totals.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct StatusCounts {
    pub ok: u64,
    pub failed: u64,
    pub skipped: u64,
}

/// The rows by status: from the totals if the file keeps them, else counted.
pub(super) fn status_counts(conn: &Connection, kept: bool) -> rusqlite::Result<StatusCounts> {
    let sql = if kept {
        "SELECT status, rows FROM counts WHERE status <> ''"
    } else {
        "SELECT status, COUNT(*) FROM rows GROUP BY status"
    };
    let mut counts = StatusCounts::default();
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let n = r.get::<_, i64>(1)?.max(0) as u64;
        match r.get::<_, String>(0)?.as_str() {
            "ok" => counts.ok += n,
            "failed" => counts.failed += n,
            _ => counts.skipped += n,
        }
    }
    Ok(counts)
}

/// What the run's attempts are counted as costing, from the totals.
pub(super) fn spent(conn: &Connection) -> rusqlite::Result<f64> {
    conn.query_row("SELECT COALESCE(SUM(usd), 0.0) FROM counts", [], |r| {
        r.get(0)
    })
}

/// The `limit` most common errors of rows that did not succeed, most common first: from the
/// totals if the file keeps them, else counted.
pub(super) fn top_errors(
    conn: &Connection,
    kept: bool,
    limit: u32,
) -> rusqlite::Result<Vec<(String, u64)>> {
    let sql = if kept {
        format!("SELECT error, rows AS n FROM error_counts ORDER BY n DESC, error LIMIT {limit}")
    } else {
        format!(
            "SELECT error, COUNT(*) AS n FROM rows WHERE status <> 'ok' AND error <> '' \
             GROUP BY error ORDER BY n DESC, error LIMIT {limit}"
        )
    };
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::record::RowStatus;
    use crate::engine::store::tests::{answered_at_once, finished, settings};
    use crate::engine::store::{FinishedRows, Store};

    /// The totals as the rows themselves say, counted.
    fn counted(path: &std::path::Path) -> (StatusCounts, f64, Vec<(String, u64)>) {
        let conn = Connection::open(path).unwrap();
        let spent: f64 = conn
            .query_row(super::super::SPENT, [], |r| r.get(0))
            .unwrap();
        (
            status_counts(&conn, false).unwrap(),
            spent,
            top_errors(&conn, false, 10).unwrap(),
        )
    }

    /// The totals as kept.
    fn kept(path: &std::path::Path) -> (StatusCounts, f64, Vec<(String, u64)>) {
        let conn = Connection::open(path).unwrap();
        (
            status_counts(&conn, true).unwrap(),
            spent(&conn).unwrap(),
            top_errors(&conn, true, 10).unwrap(),
        )
    }

    fn assert_same(path: &std::path::Path) {
        let (a, b) = (kept(path), counted(path));
        assert_eq!((a.0, &a.2), (b.0, &b.2));
        assert!((a.1 - b.1).abs() < 1e-9, "{} vs {}", a.1, b.1);
    }

    #[test]
    fn totals_follow_every_write_and_match_a_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let mut store = Store::open(&path).unwrap();
        store.start_run(&settings(), 6).unwrap();
        let mut failed = finished(1, RowStatus::Failed);
        failed.result.error = "HTTP 500".into();
        let mut skipped = finished(2, RowStatus::Skipped);
        skipped.result.error = "stopped".into();
        store
            .record(&[answered_at_once(0, 0.25), failed.clone(), skipped])
            .unwrap();
        failed.result.seq = 3;
        store
            .record(&[failed, finished(4, RowStatus::Ok), answered_at_once(5, 0.5)])
            .unwrap();
        assert_same(&path);
        let (counts, spent, errors) = kept(&path);
        assert_eq!(
            counts,
            StatusCounts {
                ok: 3,
                failed: 2,
                skipped: 1
            }
        );
        // 0.25 and 0.5 in their rows; 0.5 for each of the three journaled attempts.
        assert!((spent - 2.25).abs() < 1e-12);
        assert_eq!(
            errors,
            [("HTTP 500".to_string(), 2), ("stopped".to_string(), 1)]
        );
        // A row answered again (replaced), rows made skipped, rows deleted by hand.
        store.record(&[answered_at_once(1, 0.125)]).unwrap();
        assert_same(&path);
        assert_eq!(
            store
                .skip_failed(&[&finished(1, RowStatus::Ok).request_hash], "x")
                .unwrap(),
            1
        );
        assert_same(&path);
        Connection::open(&path)
            .unwrap()
            .execute_batch("DELETE FROM rows WHERE seq >= 4; DELETE FROM attempts WHERE seq = 3;")
            .unwrap();
        assert_same(&path);
        assert_eq!(store.run().unwrap().unwrap().ok, 2);
        // A new run starts from zero.
        store.start_run(&settings(), 1).unwrap();
        assert_eq!(kept(&path), (StatusCounts::default(), 0.0, vec![]));
        store.record(&[finished(0, RowStatus::Ok)]).unwrap();
        assert_same(&path);
    }

    #[test]
    fn a_file_without_totals_is_counted_read_only_and_given_them_by_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let mut store = Store::open(&path).unwrap();
        store.start_run(&settings(), 3).unwrap();
        let mut failed = finished(1, RowStatus::Failed);
        failed.result.error = "HTTP 500".into();
        store.record(&[answered_at_once(0, 0.25), failed]).unwrap();
        drop(store);
        // As the file was before the totals.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "{DROP_TRIGGERS} DROP TABLE counts; DROP TABLE error_counts;"
        ))
        .unwrap();
        drop(conn);
        let look = FinishedRows::open_read_only(&path).unwrap();
        let expected = StatusCounts {
            ok: 1,
            failed: 1,
            skipped: 0,
        };
        assert_eq!(look.status_counts().unwrap(), expected);
        assert_eq!(look.top_errors(5).unwrap(), [("HTTP 500".to_string(), 1)]);
        assert!((look.spent().unwrap() - 0.75).abs() < 1e-12);
        assert!(!has_counts(look.conn()).unwrap());
        // A run opening it counts the rows once and keeps the totals from then on.
        let mut store = Store::open(&path).unwrap();
        assert!(has_counts(&Connection::open(&path).unwrap()).unwrap());
        assert_eq!(
            FinishedRows::open(&path).unwrap().status_counts().unwrap(),
            expected
        );
        store.record(&[finished(2, RowStatus::Ok)]).unwrap();
        assert_same(&path);
        assert!((store.spent().unwrap() - 1.25).abs() < 1e-12);
    }
}

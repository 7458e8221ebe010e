//! A way to try a full disk without one: with `BATCH_STATE_MAX_PAGES=N` in the environment, the
//! state file cannot grow past N pages (SQLite's `max_page_count`), and a write that would
//! grow it fails as on a full disk (`SQLITE_FULL`). Tests set it; nothing else should.

use rusqlite::Connection;

/// The environment variable that caps the state file's size, in pages.
pub const MAX_PAGES_VAR: &str = "BATCH_STATE_MAX_PAGES";

/// Applies `BATCH_STATE_MAX_PAGES` to a connection to the state file, if it is set.
pub(super) fn limit_size(conn: &Connection) {
    if let Some(pages) = std::env::var(MAX_PAGES_VAR)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        let _ = conn.pragma_update(None, "max_page_count", pages);
    }
}

//! What a resume already knows before it starts: which rows are finished (read from the state
//! file in one pass, before the pre-flight), and whether they need looking at again.
//!
//! A finished row is sent again only if its request changed. Its request is made of its input
//! row and the settings that shape a request, so when neither changed (the input file has the
//! length and modification time it had, and the settings and checks are the ones recorded under
//! [`META_CHECKED`]) the finished rows need no pre-flight (the run that answered them checked
//! them) and no recheck: the pre-flight renders only the rows that will be sent, and the first
//! request goes out as soon as they are checked, not after re-rendering nine million answered
//! prompts. When anything changed, every row is checked and the finished ones rechecked, as
//! before.

use std::sync::Arc;

use serde::Serialize;

use crate::base::error::Error;
use crate::engine::store::{FinishedRows, RunSettings, SeqSet};
use crate::run::settings::{Resume, RunConfig};

/// The `meta` key of [`checked_key`] as the run that wrote the state file had it.
pub(super) const META_CHECKED: &str = "checked";

/// The rows a resumed run has finished.
pub(super) struct Finished {
    pub(super) rows: Arc<SeqSet>,
    /// Their requests cannot have changed: no pre-flight and no recheck for them.
    pub(super) unchanged: bool,
}

/// The rows finished by the run recorded in `cfg.state`, when `cfg` resumes one; `None` for a
/// new run (or nothing to resume, which opening the state file then reports).
pub(super) fn finished_before(
    cfg: &RunConfig,
    settings: &RunSettings,
) -> Result<Option<Finished>, Error> {
    let Resume::Yes { retry_failed, .. } = cfg.resume else {
        return Ok(None);
    };
    if cfg.dry_run || !cfg.state.is_file() {
        return Ok(None);
    }
    let journal = FinishedRows::open(&cfg.state)?;
    let Some(run) = journal.run()? else {
        return Ok(None);
    };
    let rows = journal.finished_set(retry_failed)?;
    let key = checked_key(cfg, settings);
    let unchanged =
        run.settings == *settings && key.is_some() && journal.meta(META_CHECKED)? == key;
    Ok(Some(Finished {
        rows: Arc::new(rows),
        unchanged,
    }))
}

/// What the rows' requests and their pre-flight depend on besides each row: the input file as
/// it is on disk, the settings that shape a request, the checks asked for, and this version of
/// batch (which builds the bodies). `None` if the input's metadata cannot be read.
pub(super) fn checked_key(cfg: &RunConfig, settings: &RunSettings) -> Option<String> {
    #[derive(Serialize)]
    struct Key<'a> {
        version: &'a str,
        input_len: u64,
        input_modified_ns: u128,
        settings: &'a RunSettings,
        format: String,
        read: String,
        id_column: Option<&'a str>,
        schema: Option<(&'a str, &'a serde_json::Value, bool)>,
        expect: Option<&'a crate::engine::expect::Expectation>,
        capped: bool,
        api: String,
    }
    let meta = std::fs::metadata(&cfg.input).ok()?;
    let modified = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let key = Key {
        version: env!("CARGO_PKG_VERSION"),
        input_len: meta.len(),
        input_modified_ns: modified.as_nanos(),
        settings,
        format: format!("{:?}", cfg.input_format),
        read: format!("{:?}", cfg.read),
        id_column: cfg.id_column.as_deref(),
        schema: cfg
            .schema
            .as_deref()
            .map(|s| (s.name.as_str(), &s.schema, s.strict)),
        expect: cfg.expect.as_ref(),
        capped: cfg.max_cost.is_some(),
        api: format!("{:?}", cfg.api),
    };
    let json = serde_json::to_vec(&key).ok()?;
    Some(crate::engine::provider::request_hash("checked", &json))
}

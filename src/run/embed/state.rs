//! The state file of an embeddings run: a new run, or (`--resume`) the rows an earlier part
//! finished, so that none of them is sent again.

use std::collections::HashMap;

use crate::base::error::Error;
use crate::base::record::RowStatus;
use crate::engine::input::InputFile;
use crate::engine::store::{FinishedRows, RunSettings, Store};
use crate::run::settings::Resume;

use super::EmbedConfig;

/// The settings that shape an embeddings run's requests, as the journal records them: a
/// resumed run must have the same ones (or `--force`, and changed rows are sent again).
pub fn settings(cfg: &EmbedConfig, input: &InputFile) -> RunSettings {
    let path = &input.path;
    RunSettings {
        input: path
            .canonicalize()
            .unwrap_or_else(|_| path.clone())
            .display()
            .to_string(),
        endpoint: format!("{} (embeddings)", cfg.run.endpoint.name()),
        model: cfg.run.model.clone(),
        prompt: format!(
            "embeddings of column {:?}, dimensions {}",
            cfg.column,
            cfg.dimensions
                .map_or_else(|| "native".to_string(), |d| d.to_string())
        ),
        system: None,
        max_tokens: None,
        temperature: None,
    }
}

/// Starts a new run or continues the recorded one; returns the rows not to send again (by
/// position, with the key of the request that answered them).
pub fn prepare(
    store: &mut Store,
    cfg: &EmbedConfig,
    input: &InputFile,
    total: u64,
) -> Result<HashMap<u64, [u8; 16]>, Error> {
    let settings = settings(cfg, input);
    let recorded = store.run()?;
    let state = store.path().display().to_string();
    match (cfg.run.resume, recorded) {
        (
            Resume::Yes {
                retry_failed,
                force,
            },
            Some(rec),
        ) => {
            let changed: Vec<&str> = rec
                .settings
                .differences(&settings)
                .into_iter()
                .map(|d| {
                    if d == "prompt template" {
                        "--column or --dimensions"
                    } else {
                        d
                    }
                })
                .collect();
            if !changed.is_empty() && !force {
                return Err(Error::Usage(format!(
                    "cannot resume the run in {state}: {} changed since; add --force to resume \
                     anyway (rows whose request changed are sent again) or use --restart",
                    changed.join(", ")
                )));
            }
            store.update_settings(&settings, total)?;
            store.set_finished(false)?;
            finished_rows(store, retry_failed)
        }
        (Resume::Yes { .. }, None) => Err(Error::Usage(format!(
            "nothing to resume: {state} records no run (the state file sits beside the vectors \
             file, named after it; give --state if it is elsewhere)"
        ))),
        (Resume::No, Some(rec)) if !rec.finished => Err(Error::Usage(format!(
            "{state} holds an unfinished run ({} of {} rows done); continue it with --resume, \
             or start over with --restart",
            rec.ok + rec.failed,
            rec.total_rows
        ))),
        _ => {
            store.start_run(&settings, total)?;
            Ok(HashMap::new())
        }
    }
}

/// The rows an earlier part answered (and failed, unless they are to be sent again).
fn finished_rows(store: &Store, retry_failed: bool) -> Result<HashMap<u64, [u8; 16]>, Error> {
    let rows = FinishedRows::open(store.path())?;
    let mut done = HashMap::new();
    rows.for_each(|prior| {
        let keep = match prior.result.status {
            RowStatus::Ok => true,
            RowStatus::Failed => !retry_failed,
            RowStatus::Skipped | RowStatus::Pending => false,
        };
        if keep {
            done.insert(prior.result.seq, prior.request_key);
        }
        true
    })?;
    Ok(done)
}

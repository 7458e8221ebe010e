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
//!
//! The run that checked every row also records what its pre-flight found ([`META_PLAN`]: the
//! rows and the models they go to) and where rows start in the input (checkpoints, every
//! [`crate::engine::input::Start::EVERY`] rows). A resume of the unchanged input then needs no pre-flight at all
//! (every row passed it; only a prompt that attaches files, whose files may have changed, has
//! its unfinished rows checked again), and its reader starts at the last checkpoint before the
//! first unfinished row: the first request of a resume with nine million rows finished goes
//! out without reading them.
//!
//! "Unchanged" is judged without reading the whole input: its length, its modification time
//! (to the nanosecond), and a hash of 64 blocks of 4 KiB spread over it (first and last
//! included). Any tool that edits a file sets its modification time; the samples catch a file
//! put back with an older time and the same length that differs in one of its blocks (not a
//! change outside them: that takes a tool that sets the time back on purpose).

use std::sync::Arc;

use serde::Serialize;

use super::preflight::{ModelPlan, Plan};
use crate::base::error::Error;
use crate::base::format::Format;
use crate::engine::input::InputFile;
use crate::engine::store::{FinishedRows, RunSettings, SeqSet, Store};
use crate::engine::template::Prompts;
use crate::run::settings::{Resume, RunConfig};

/// The `meta` key of [`checked_key`] as the run that wrote the state file had it.
pub(super) const META_CHECKED: &str = "checked";

/// The `meta` key of the pre-flight's findings ([`RecordedPlan`]) on the input as it was.
pub(super) const META_PLAN: &str = "plan";

/// The rows a resumed run has finished.
pub(super) struct Finished {
    pub(super) rows: Arc<SeqSet>,
    /// Their requests cannot have changed: no pre-flight and no recheck for them.
    pub(super) unchanged: bool,
    /// What the pre-flight of the unchanged input found, when the state file records it.
    pub(super) plan: Option<RecordedPlan>,
}

/// What a pre-flight found that a run needs after it: the rows, and how many go to each model
/// (for the warnings about models without a price, and the summary).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub(super) struct RecordedPlan {
    rows: u64,
    models: std::collections::BTreeMap<String, u64>,
    /// A JSON Lines input's columns, found by reading every line.
    #[serde(default)]
    columns: Option<Vec<String>>,
}

impl RecordedPlan {
    fn of(plan: &Plan, input: &InputFile) -> Self {
        RecordedPlan {
            rows: plan.rows,
            models: plan
                .models
                .iter()
                .map(|(m, p)| (m.clone(), p.rows))
                .collect(),
            columns: (input.format == Format::Jsonl).then(|| input.headers.clone()),
        }
    }

    /// The plan of a resume that skips the pre-flight: the recorded one, if `prompts` attach
    /// nothing (an attached file may have changed since: those rows are checked again) and,
    /// under `--max-cost`, every model still has a price.
    pub(super) fn plan(&self, cfg: &RunConfig, prompts: &Prompts) -> Result<Option<Plan>, Error> {
        if prompts.attaches() {
            return Ok(None);
        }
        if cfg.max_cost.is_some()
            && let Some(model) = self.models.keys().find(|m| cfg.prices.lookup(m).is_none())
        {
            return Err(Error::Usage(format!(
                "--max-cost needs a price for model {model:?}, which rows of {} go to, and none \
                 is known; add it with --price-file",
                cfg.input.display()
            )));
        }
        Ok(Some(Plan {
            rows: self.rows,
            prompt_tokens: 0,
            models: self
                .models
                .iter()
                .map(|(m, rows)| (m.clone(), ModelPlan::of_rows(*rows)))
                .collect(),
            attachments: Default::default(),
            checkpoints: Vec::new(),
        }))
    }
}

/// After a pre-flight (`plan` has its checkpoints): records what it found and where rows
/// start, for the next resume. A plan taken from the state file records nothing.
pub(super) fn record_plan(store: &mut Store, plan: &Plan, input: &InputFile) -> Result<(), Error> {
    if plan.checkpoints.is_empty() {
        return Ok(());
    }
    store.set_checkpoints(&plan.checkpoints)?;
    let json = serde_json::to_string(&RecordedPlan::of(plan, input)).expect("serializes");
    store.set_meta(META_PLAN, &json)
}

/// Opens the input; a JSON Lines file whose columns a resume of it has recorded is not read
/// through for them again.
pub(super) fn open_input(cfg: &RunConfig, finished: Option<&Finished>) -> Result<InputFile, Error> {
    let (format, id) = (cfg.input_format, cfg.id_column.as_deref());
    let recorded = finished
        .and_then(|f| f.plan.as_ref())
        .and_then(|p| p.columns.clone());
    match recorded {
        Some(columns) if format == Format::Jsonl => {
            InputFile::open_jsonl_with_columns(&cfg.input, id, cfg.read, columns)
        }
        _ => InputFile::open_with(&cfg.input, format, id, cfg.read),
    }
}

/// The rows finished by the run recorded in `cfg.state`, when `cfg` resumes one; `None` for a
/// new run (or nothing to resume, which opening the state file then reports).
/// `key`: [`checked_key`] as taken before the input is read.
pub(super) fn finished_before(
    cfg: &RunConfig,
    settings: &RunSettings,
    key: Option<&str>,
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
    tracing::info!(
        "{} finished rows read from {}",
        rows.len(),
        cfg.state.display()
    );
    let unchanged =
        run.settings == *settings && key.is_some() && journal.meta(META_CHECKED)?.as_deref() == key;
    let plan = match unchanged {
        true => journal
            .meta(META_PLAN)?
            .and_then(|p| serde_json::from_str(&p).ok()),
        false => None,
    };
    tracing::info!(
        "input and settings {}; pre-flight {}",
        if unchanged {
            "unchanged"
        } else {
            "changed: every row checked again"
        },
        if plan.is_some() {
            "recorded"
        } else {
            "not recorded"
        }
    );
    Ok(Some(Finished {
        rows: Arc::new(rows),
        unchanged,
        plan,
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
        /// `--image-detail` and `--max-image-px`: they change the image parts of the bodies.
        image_detail: String,
        max_image_px: Option<u32>,
        samples: String,
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
        image_detail: format!("{:?}", cfg.image_detail),
        max_image_px: cfg.resize.as_ref().map(|r| r.max_px),
        samples: samples(&cfg.input, meta.len())?,
    };
    let json = serde_json::to_vec(&key).ok()?;
    Some(crate::engine::provider::request_hash("checked", &json))
}

/// What to record as the key of the finished rows: `key`, taken before the input was read, if
/// the input still has it; else `""`, which no key matches. An input rewritten while the run
/// read it (or sent its rows) must not pass for the one its plan and checkpoints came from.
pub(super) fn key_to_record(cfg: &RunConfig, settings: &RunSettings, key: Option<&str>) -> String {
    match (key, checked_key(cfg, settings)) {
        (Some(then), Some(now)) if then == now => now,
        _ => String::new(),
    }
}

/// Blocks of the input read for [`samples`], and their size.
const SAMPLES: u64 = 64;
const SAMPLE_BYTES: u64 = 4096;

/// A hash of [`SAMPLES`] blocks of the file spread evenly from its first byte to its last (the
/// whole file when it is smaller): a quarter of a megabyte read, however long the file.
fn samples(path: &std::path::Path, len: u64) -> Option<String> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let mut hash = Sha256::new();
    let mut block = vec![0u8; SAMPLE_BYTES as usize];
    let last = len.saturating_sub(SAMPLE_BYTES);
    for i in 0..SAMPLES {
        let at = last * i / (SAMPLES - 1);
        file.seek(SeekFrom::Start(at)).ok()?;
        let n = (&mut file).take(SAMPLE_BYTES).read(&mut block).ok()?;
        hash.update(&block[..n]);
        if last == 0 {
            break;
        }
    }
    Some(format!("{:x}", hash.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_see_a_change_in_a_sampled_block_and_in_a_small_file_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        let big: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(&path, &big).unwrap();
        let before = samples(&path, big.len() as u64).unwrap();
        assert_eq!(samples(&path, big.len() as u64).unwrap(), before);
        let last = big.len() - SAMPLE_BYTES as usize;
        for at in [0, last * 31 / 63 + 10, big.len() - 1] {
            let mut changed = big.clone();
            changed[at] = b'!';
            std::fs::write(&path, &changed).unwrap();
            assert_ne!(
                samples(&path, big.len() as u64).unwrap(),
                before,
                "byte {at}"
            );
        }
        std::fs::write(&path, b"id,t\n1,a\n").unwrap();
        let small = samples(&path, 10).unwrap();
        std::fs::write(&path, b"id,t\n1,b\n").unwrap();
        assert_ne!(samples(&path, 10).unwrap(), small);
    }
}

//! The vectors file, merged by streaming the input and the journal side by side in input order
//! (as `batch run` merges its results): rows the journal does not hold were never sent and are
//! written `skipped`.

use std::path::Path;

use crate::base::error::Error;
use crate::base::record::{RowResult, RowStatus};
use crate::engine::input::InputFile;
use crate::engine::output::vectors::{VectorRow, create};
use crate::engine::provider::embeddings::decode;
use crate::engine::store::FinishedRows;
use crate::run::summary::Stats;

/// Writes every row's vector (or why it has none) to `output`; returns the totals of the whole
/// run, earlier parts included.
pub fn write_vectors(
    input: &InputFile,
    state: &Path,
    output: &Path,
    model: &str,
    not_sent: &str,
) -> Result<Stats, Error> {
    let mut sink = create(output)?;
    let mut stats = Stats::default();
    let journal = FinishedRows::open(state)?;
    let mut rows = input.rows()?;
    let mut failure: Option<Error> = None;
    let mut write = |row: crate::engine::input::Row, r: RowResult| -> Result<(), Error> {
        let vector = match r.status {
            RowStatus::Ok => Some(decode(&r.output).map_err(|e| {
                Error::Input(format!(
                    "{}: the vector of row {} is unreadable ({e}); run again with --restart",
                    state.display(),
                    r.id
                ))
            })?),
            _ => None,
        };
        stats.record_row(&r, row.line);
        sink.push(&VectorRow {
            line: row.line,
            id: &row.id,
            status: r.status,
            error: (!r.error.is_empty()).then_some(r.error.as_str()),
            tokens: r
                .usage
                .map(|u| u32::try_from(u.prompt_tokens).unwrap_or(u32::MAX)),
            embedding: vector.as_deref(),
        })
    };
    let mut next_input = || rows.next().transpose();
    journal.for_each(|prior| {
        let mut step = || -> Result<(), Error> {
            // Rows before this one that the journal does not hold were not sent.
            while let Some(row) = next_input()? {
                if row.seq == prior.result.seq {
                    return write(row, prior.result.clone());
                }
                let skipped = RowResult::skipped(row.seq, row.id.clone(), model, not_sent);
                write(row, skipped)?;
            }
            Ok(())
        };
        match step() {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    while let Some(row) = next_input()? {
        let skipped = RowResult::skipped(row.seq, row.id.clone(), model, not_sent);
        write(row, skipped)?;
    }

    sink.finish()?;
    Ok(stats)
}

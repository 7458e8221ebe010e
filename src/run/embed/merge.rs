//! The vectors file, merged by streaming the input and the journal side by side in input order
//! (as `batch run` merges its results): rows the journal does not hold were never sent and are
//! written `skipped`.

use std::path::Path;

use crate::base::error::Error;
use crate::base::record::{RowResult, RowStatus};
use crate::engine::input::InputFile;
use crate::engine::output::vectors::{VectorRow, create};
use crate::engine::provider::embeddings::{decode, native_dims};
use crate::engine::store::FinishedRows;
use crate::run::summary::Stats;

/// Writes every row's vector (or why it has none) to `output`; returns the totals of the whole
/// run, earlier parts included. `asked`: the model and `--dimensions`.
pub fn write_vectors(
    input: &InputFile,
    state: &Path,
    output: &Path,
    asked: (&str, Option<u32>),
    not_sent: &str,
) -> Result<Stats, Error> {
    let model = asked.0;
    let journal = FinishedRows::open(state)?;
    let dims = list_size(first_width(&journal)?, asked.1, model);
    let mut sink = create(output, Some(dims))?;
    let mut stats = Stats::default();
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

/// The width of the first vector the journal holds, if it holds one.
fn first_width(journal: &FinishedRows) -> Result<Option<usize>, Error> {
    let mut width = None;
    journal.for_each(|prior| {
        if prior.result.status != RowStatus::Ok {
            return true;
        }
        width = decode(&prior.result.output).ok().map(|v| v.len());
        false
    })?;
    Ok(width)
}

/// The vectors' width, known before the first row is written, so that the Parquet writer never
/// holds rows waiting for a vector to fix it (a run stopped at its first request would have
/// every row of the input waiting). The journal's first vector decides when there is one (every
/// vector is checked against it); without one the file has no vector at all and any width is
/// sound: `--dimensions`, else the model's own, else 1.
fn list_size(first: Option<usize>, dimensions: Option<u32>, model: &str) -> usize {
    first
        .filter(|w| *w > 0)
        .or(dimensions.map(|d| d as usize))
        .or_else(|| native_dims(model))
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_width_is_known_before_any_row_is_written() {
        assert_eq!(list_size(Some(8), Some(16), "text-embedding-3-small"), 8);
        assert_eq!(list_size(None, Some(16), "text-embedding-3-small"), 16);
        assert_eq!(list_size(None, None, "text-embedding-3-large"), 3072);
        assert_eq!(list_size(None, None, "openai/text-embedding-ada-002"), 1536);
        assert_eq!(list_size(None, None, "nomic-embed-text"), 1);
    }
}

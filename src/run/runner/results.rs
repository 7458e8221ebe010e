//! The results file, written once at the end: the input merged with the journal in input order, streaming both.

use std::path::PathBuf;

use crate::base::error::Error;
use crate::base::record::{RowResult, RowStatus};
use crate::engine::input::{InputFile, Row};
use crate::engine::output::ResultsWriter;
use crate::engine::row_settings::RowSettings;
use crate::engine::store::FinishedRows;
use crate::run::summary::Stats;

/// What a row the journal does not have is written as.
pub(crate) struct Missing<'a> {
    /// `skipped` at the end of a run (it stopped before the row, or the journal could not be
    /// written); `pending` in an export of a run that may still reach it.
    pub(crate) status: RowStatus,
    pub(crate) reason: &'a str,
}

/// Writes the results file from the input and the journal, in input order, and totals it. A row
/// the journal does not have is written as `missing` says. Memory stays flat: the journal is
/// read in order by one cursor, the input by another.
pub(crate) fn write_results(
    input: &InputFile,
    journal: FinishedRows,
    mut writer: ResultsWriter,
    model: &str,
    missing: Missing,
) -> Result<(Stats, PathBuf), Error> {
    let missing_row = |row: &Row, model: &str| {
        let mut r = RowResult::skipped(row.seq, row.id.clone(), model, missing.reason);
        r.status = missing.status;
        r
    };
    let mut stats = Stats::default();
    writer.keep_input_types(input)?;
    // A row never sent still shows the model it was meant for.
    let settings = RowSettings::new(input);
    let model_of = |row: &Row| -> String {
        settings
            .read(row)
            .ok()
            .and_then(|o| o.model.map(str::to_string))
            .unwrap_or_else(|| model.to_string())
    };
    // Merge: journal rows arrive in seq order; input rows without one are written as skipped,
    // and journal rows past the input's end (a shorter input on resume) find none and are left.
    // The journal is read on its own thread, beside the input's parsing and the results' writing
    // (a third of this step's time each).
    let (prior_tx, prior_rx) = std::sync::mpsc::sync_channel(1024);
    let journal_reader =
        std::thread::spawn(move || journal.for_each(|prior| prior_tx.send(prior).is_ok()));
    let mut error = None;
    let mut pending_input = input.rows()?;
    let mut next_input = pending_input.next();
    for prior in prior_rx {
        let mut step = || -> Result<(), Error> {
            while let Some(row) = next_input.take() {
                let row = row?;
                if row.seq < prior.result.seq {
                    let r = missing_row(&row, &model_of(&row));
                    stats.record_row(&r, row.line);
                    writer.write_row(&row, &r)?;
                    next_input = pending_input.next();
                } else if row.seq == prior.result.seq {
                    stats.record_row(&prior.result, row.line);
                    writer.write_row(&row, &prior.result)?;
                    next_input = pending_input.next();
                    break;
                } else {
                    // The journal has no row for this input row's position any more (journal
                    // positions are unique and sorted): keep the input row for the next one.
                    next_input = Some(Ok(row));
                    break;
                }
            }
            Ok(())
        };
        if let Err(e) = step() {
            error = Some(e);
            break;
        }
    }
    // Dropping the receiver (on an error) ends the reader at its next row.
    journal_reader
        .join()
        .map_err(|_| Error::io("reading the journal failed", std::io::Error::other("panic")))??;
    if let Some(e) = error {
        return Err(e);
    }
    while let Some(row) = next_input.take() {
        let row = row?;
        let r = missing_row(&row, &model_of(&row));
        stats.record_row(&r, row.line);
        writer.write_row(&row, &r)?;
        next_input = pending_input.next();
    }
    stats.expect = writer.pass_rate();
    Ok((stats, writer.finish()?))
}

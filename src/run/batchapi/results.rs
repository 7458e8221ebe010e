//! From downloaded batch results to the results CSV that `run` writes: the input's rows in
//! input order, each with the outcome of the last batch that carried it, priced at the batch
//! discount; and the failed rows gathered into a new batch for `--resubmit-failed`.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::plan::{Limits, Splitter};
use super::state::{BatchState, Phase, ProviderKind};
use super::{Outcome, batch_price, custom_id_seq, file_sha256};
use crate::base::error::Error;
use crate::base::printer::Printer;
use crate::base::record::RowResult;
use crate::base::record::RowStatus;
use crate::engine::input::InputFile;
use crate::engine::output::ResultsWriter;
use crate::engine::provider::ErrorKind;
use crate::engine::schema::OutputSchema;
use crate::run::summary::Stats;

/// Answers are matched to rows by position, so the input must be the one submitted.
pub fn check_input(st: &BatchState) -> Result<(), Error> {
    let now = file_sha256(&st.input)?;
    if now != st.input_sha256 {
        return Err(Error::Input(format!(
            "{} has changed since its rows were submitted; answers are matched to rows by \
             position, so restore the submitted file to collect them",
            st.input.display()
        )));
    }
    Ok(())
}

/// Every downloaded outcome that still counts: the one from the last batch carrying the row.
/// Lines that cannot be used are counted in one warning.
struct Outcomes {
    by_row: HashMap<u64, Outcome>,
    owner: Vec<Option<usize>>,
    tries: Vec<u32>,
}

fn outcomes(st: &BatchState, printer: Printer) -> Result<Outcomes, Error> {
    let (owner, tries) = st.owners();
    let mut by_row = HashMap::new();
    let mut unreadable = Vec::new();
    for (i, b) in st.batches.iter().enumerate() {
        if b.phase != Phase::Downloaded {
            continue;
        }
        for name in [&b.output_file, &b.error_file].into_iter().flatten() {
            let path = st.file(name);
            for_each_line(&path, |line| {
                let parsed = match st.provider {
                    ProviderKind::OpenAi => super::openai::parse_line(
                        line,
                        crate::engine::provider::openai::parse_completion,
                    ),
                    ProviderKind::OpenAiResponses => super::openai::parse_line(
                        line,
                        crate::engine::provider::responses::parse_response,
                    ),
                    ProviderKind::Anthropic => super::anthropic::parse_line(line),
                    // Its lines answer many rows: read by `super::embeddings`, never here.
                    ProviderKind::OpenAiEmbeddings => {
                        Err("an embeddings result line where answers were expected".into())
                    }
                };
                match parsed {
                    Ok((seq, o)) if owner.get(seq as usize) == Some(&Some(i)) => {
                        // An answer wins over an error line for the same request.
                        let keep = matches!(by_row.get(&seq), Some(Outcome::Answered(_)));
                        if !keep {
                            by_row.insert(seq, o);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => unreadable.push(format!("{}: {e}", path.display())),
                }
            })?;
        }
    }
    if let Some(first) = unreadable.first() {
        printer.warn(format_args!(
            "{} result lines could not be used (first: {first})",
            unreadable.len()
        ));
    }
    Ok(Outcomes {
        by_row,
        owner,
        tries,
    })
}

/// Calls `f` with every line of `path` that is not blank, trimmed.
pub(super) fn for_each_line(path: &Path, mut f: impl FnMut(&[u8])) -> Result<(), Error> {
    scan_lines(path, |_, line| f(line.trim_ascii()))
}

/// Calls `f` with the offset and bytes of every line of `path`, one line in memory at a time
/// (an output line holds up to 2,048 vectors: megabytes; the file, gigabytes).
pub(super) fn scan_lines(path: &Path, mut f: impl FnMut(u64, &[u8])) -> Result<(), Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::read(path, &e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut offset = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::read(path, &e))?;
        if n == 0 {
            return Ok(());
        }
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        if !body.trim_ascii().is_empty() {
            f(offset, body);
        }
        offset += n as u64;
    }
}

/// What happened to row `seq` when no result line answers it.
pub(super) fn missing_reason(st: &BatchState, i: usize) -> (RowStatus, String) {
    let b = &st.batches[i];
    let status = b.status.as_deref().unwrap_or("unknown");
    match b.phase {
        Phase::Downloaded if !b.errors.is_empty() => (
            RowStatus::Failed,
            format!("the provider refused {}: {}", b.name(), b.errors.join("; ")),
        ),
        Phase::Downloaded if status.starts_with("cancel") || status == "canceling" => (
            RowStatus::Failed,
            format!(
                "cancelled: {} was cancelled before this request ran",
                b.name()
            ),
        ),
        Phase::Downloaded => (
            RowStatus::Failed,
            format!("no result for this row in {} (status {status})", b.name()),
        ),
        Phase::Abandoned => (
            RowStatus::Failed,
            format!("cancelled before {} was created", b.name()),
        ),
        _ => (
            RowStatus::Skipped,
            format!(
                "{} is {}; collect again later (or add --wait)",
                b.name(),
                match b.phase {
                    Phase::Created => status,
                    _ => "not created yet",
                }
            ),
        ),
    }
}

/// Writes the results file in input order. Returns the totals, the path, and what the answers
/// would have cost at `run`'s prices minus what they cost here (when the model has a price).
pub fn write(
    st: &BatchState,
    input: &InputFile,
    mut writer: ResultsWriter,
    schema: Option<&OutputSchema>,
    printer: Printer,
) -> Result<(Stats, PathBuf, Option<f64>), Error> {
    let mut out = outcomes(st, printer)?;
    let standard = st.price.map(|p| p.standard());
    let batch = standard.map(batch_price);
    let mut stats = Stats::default();
    let mut saved = 0.0;
    writer.keep_input_types(input)?;
    for row in input.rows()? {
        let row = row?;
        let seq = row.seq;
        let owner = out.owner.get(seq as usize).copied().flatten();
        let attempts = out.tries.get(seq as usize).copied().unwrap_or(0);
        let result = match (owner, out.by_row.remove(&seq)) {
            (None, _) => RowResult::skipped(seq, row.id.clone(), &st.model, "not in any batch"),
            (Some(_), Some(Outcome::Answered(c))) => {
                let c = *c;
                let cost = batch.map(|p| p.cost(&c.usage));
                if let (Some(s), Some(b)) = (standard, cost) {
                    saved += s.cost(&c.usage) - b;
                }
                // Billed either way; an answer that does not fit the schema fails the row, as
                // in `batch run` (resubmitting it is `collect --resubmit-failed`'s job only for
                // rows the provider failed).
                let invalid = schema.and_then(|s| s.check(&c.text).err());
                RowResult {
                    seq,
                    id: row.id.clone(),
                    status: if invalid.is_some() {
                        RowStatus::Failed
                    } else {
                        RowStatus::Ok
                    },
                    error: invalid
                        .map(|m| format!("{}: {m}", ErrorKind::InvalidAnswer.label()))
                        .unwrap_or_default(),
                    output: c.text,
                    attempts,
                    throttled: 0,
                    latency: None,
                    usage: Some(c.usage),
                    cost,
                    model: c.model.unwrap_or_else(|| st.model.clone()),
                    finish_reason: c.finish_reason.unwrap_or_default(),
                    cached: false,
                    saved_usd: None,
                }
            }
            (Some(i), found) => {
                let (status, reason) = match found {
                    Some(Outcome::Failed(reason)) => (RowStatus::Failed, reason),
                    _ => missing_reason(st, i),
                };
                let mut r = RowResult::skipped(seq, row.id.clone(), &st.model, &reason);
                r.status = status;
                r.attempts = if status == RowStatus::Skipped {
                    attempts.saturating_sub(1)
                } else {
                    attempts
                };
                r
            }
        };
        stats.record_row(&result, row.line);
        writer.write_row(&row, &result)?;
    }
    stats.expect = writer.pass_rate();
    let path = writer.finish()?;
    Ok((stats, path, standard.map(|_| saved)))
}

/// Gathers the rows whose last batch ended without an answer (failed, expired, cancelled) into
/// new batches recorded in the state, their input lines copied from the batches that carried
/// them. Returns how many batches were added (`None` when no row needs it).
pub fn prepare_resubmission(
    st: &mut BatchState,
    path: &Path,
    printer: Printer,
) -> Result<Option<usize>, Error> {
    let out = outcomes(st, printer)?;
    let mut retry: Vec<u64> = (0..st.rows)
        .filter(|seq| {
            let owner = out.owner.get(*seq as usize).copied().flatten();
            owner.is_some_and(|i| {
                st.batches[i].is_final()
                    && !matches!(out.by_row.get(seq), Some(Outcome::Answered(_)))
            })
        })
        .collect();
    if retry.is_empty() {
        return Ok(None);
    }
    retry.sort_unstable();
    let wanted: HashSet<u64> = retry.iter().copied().collect();
    let from: Vec<usize> = {
        let mut numbers: Vec<usize> = retry
            .iter()
            .filter_map(|s| out.owner[*s as usize])
            .map(|i| st.batches[i].number)
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        numbers
    };
    let limits = Limits {
        requests: st.max_requests,
        bytes: st.max_bytes,
        inputs: st.embed.as_ref().map_or(u64::MAX, |e| e.max_inputs),
    };
    let first = st.batches.len() + 1;
    // Lines are copied from the input files in the order they were written; a resubmitted row
    // appears in several, and the first copy is taken (the request is the same).
    let mut lines: HashMap<u64, Vec<u8>> = HashMap::new();
    for b in &st.batches {
        for_each_line(&st.file(&b.input_file), |line| {
            if let Some(seq) = line_seq(line)
                && wanted.contains(&seq)
                && !lines.contains_key(&seq)
            {
                lines.insert(seq, line.to_vec());
            }
        })?;
    }
    let mut splitter = Splitter::new(st.provider, limits, Some(&st.files), first);
    for seq in &retry {
        let line = lines.remove(seq).ok_or_else(|| {
            Error::Input(format!(
                "the request of row {} is in none of the batch input files in {}; were they \
                 removed?",
                seq + 1,
                st.files.display()
            ))
        })?;
        splitter.push(*seq, &line, &|| format!("row {}", seq + 1))?;
    }
    let mut added = splitter.finish()?;
    for b in &mut added {
        b.resubmits = Some(from.clone());
    }
    let n = added.len();
    st.batches.extend(added);
    st.save(path)?;
    Ok(Some(n))
}

/// The row a batch input line is for.
fn line_seq(line: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Id {
        custom_id: String,
    }
    let id: Id = serde_json::from_slice(line).ok()?;
    custom_id_seq(&id.custom_id)
}

//! Pre-flight: every row read, checked and rendered before anything is sent or written, so every problem in the input is listed at once, with its line. `--dry-run` prints the plan it makes.

use std::collections::BTreeMap;
use std::io::Write;

use crate::base::error::{Error, Problems};
use crate::engine::expect::Expectation;
use crate::engine::input::{IdSet, InputFile, Row, Start};
use crate::engine::pricing::Price;
use crate::engine::row_settings::RowSettings;
use crate::engine::template::Prompts;
use crate::engine::tokens;
use crate::run::settings::RunConfig;

/// What the pre-flight learned.
pub(crate) struct Plan {
    pub(crate) rows: u64,
    /// Prompt tokens of every row (counted only for a dry run).
    pub(crate) prompt_tokens: u64,
    /// The rows by the model they go to (`--model`, or the row's `model` cell).
    pub(crate) models: BTreeMap<String, ModelPlan>,
    /// What the prompts attach (`image()`, `file()`).
    pub(crate) attachments: AttachPlan,
    /// Where every [`Start::every`]th row starts (recorded for a resume, see `resume.rs`).
    pub(crate) checkpoints: Vec<Start>,
}

/// The attachments of every row, as the pre-flight checked them.
#[derive(Debug, Default)]
pub(crate) struct AttachPlan {
    pub(crate) images: u64,
    pub(crate) files: u64,
    pub(crate) pages: u64,
    pub(crate) bytes: u64,
    /// URLs (not fetched: checked by the provider when sent).
    pub(crate) urls: u64,
    /// Pictures scaled down by `--max-image-px` (tokens and bytes count the scaled size).
    pub(crate) scaled: u64,
    /// Their prompt tokens (counted only for a dry run), included in `prompt_tokens`.
    pub(crate) tokens: u64,
}

/// The rows that go to one model.
#[derive(Debug, Default)]
pub(crate) struct ModelPlan {
    pub(super) rows: u64,
    /// Counted only for a dry run.
    pub(super) prompt_tokens: u64,
    /// The sum of the rows' completion caps; `None` once a row has no cap.
    pub(super) completion_cap: Option<u64>,
}

impl ModelPlan {
    /// A model's share of a plan recorded by an earlier run (which had counted no tokens).
    pub(super) fn of_rows(rows: u64) -> Self {
        ModelPlan {
            rows,
            prompt_tokens: 0,
            completion_cap: None,
        }
    }
}

/// What the pre-flight checks beyond the rows themselves.
pub(crate) struct PreflightOptions {
    pub(crate) model: String,
    pub(crate) max_tokens: Option<u32>,
    pub(crate) prices: crate::engine::pricing::PriceTable,
    /// `--max-cost` is set: every row's model needs a price.
    pub(crate) capped: bool,
    pub(crate) count_tokens: bool,
    /// `--expect`: the expectation and its column, whose cells are checked too.
    pub(crate) expect: Option<(Expectation, usize)>,
    /// Reads and checks the files the prompts attach.
    pub(crate) loader: crate::engine::attach::Loader,
    /// Rows a resumed run finished whose requests cannot have changed: read (for the ids and
    /// the count) but not checked again, since none of them will be sent (see `resume.rs`).
    pub(crate) finished: Option<std::sync::Arc<crate::engine::store::SeqSet>>,
}

impl PreflightOptions {
    /// The checks `cfg` asks for on `input`, `--expect`'s column found. `batch run` and
    /// `batch submit` check their input with the same options.
    pub(crate) fn of(
        cfg: &RunConfig,
        input: &InputFile,
        count_tokens: bool,
    ) -> Result<Self, Error> {
        let expect = match &cfg.expect {
            Some(e) => Some((e.clone(), e.column_index(&input.headers, &cfg.input)?)),
            None => None,
        };
        Ok(PreflightOptions {
            model: cfg.model.clone(),
            max_tokens: cfg.max_tokens,
            prices: cfg.prices.clone(),
            capped: cfg.max_cost.is_some(),
            count_tokens,
            expect,
            loader: cfg.attach_loader(),
            finished: None,
        })
    }
}

/// Checks every row and renders every prompt without sending anything. Lists the first few
/// problems with their lines so they can all be fixed in one go. `batch submit` checks its
/// input with it too.
pub(crate) fn preflight(
    input: &InputFile,
    prompts: &Prompts,
    opts: &PreflightOptions,
) -> Result<Plan, Error> {
    let settings = RowSettings::new(input);
    let mut ids = IdSet::new(input);
    let mut problems = Problems::default();
    let mut plan = Plan {
        rows: 0,
        prompt_tokens: 0,
        models: BTreeMap::new(),
        attachments: AttachPlan::default(),
        checkpoints: Vec::new(),
    };
    let mut last_row = None;
    for row in input.rows()? {
        match row {
            Err(e) => problems.push(e.to_string()),
            Ok(row) => {
                plan.rows += 1;
                ids.insert(&row);
                if row.seq % Start::every() == 0 {
                    plan.checkpoints.push(Start::of(&row));
                }
                let finished = opts.finished.as_ref().is_some_and(|f| f.contains(row.seq));
                if !finished
                    && let Err(p) = check_row(input, prompts, &settings, opts, &row, &mut plan)
                {
                    problems.push(p);
                }
                last_row = Some(row);
            }
        }
    }
    if let Some(last) = &last_row
        && let Some(problem) = input.unterminated_quote(last)?
    {
        problems.push(problem);
    }
    for dup in ids.duplicates(input)? {
        problems.push(dup);
    }
    problems.check()?;
    if plan.rows == 0 {
        return Err(Error::Input(format!(
            "{} has a header but no rows; add one row per request",
            input.path.display()
        )));
    }
    Ok(plan)
}

/// One row: renders its prompt, reads its setting cells and its expected answer, and counts it
/// in the plan under the model it goes to. The error is the row's problem, with file and line.
fn check_row(
    input: &InputFile,
    prompts: &Prompts,
    settings: &RowSettings,
    opts: &PreflightOptions,
    row: &Row,
    plan: &mut Plan,
) -> Result<(), String> {
    let at = || format!("{}: line {}", input.path.display(), row.line);
    let rendered = prompts
        .render(input, row)
        .map_err(|e| format!("{}: {e}", at()))?;
    let o = settings.read(row).map_err(|e| format!("{}, {e}", at()))?;
    if let Some((e, i)) = &opts.expect {
        e.check_expected(row.record.get(*i).unwrap_or(""))
            .map_err(|e| format!("{}: {e}", at()))?;
    }
    let model = o.model(&opts.model);
    let per_model = plan.models.entry(model.to_string()).or_insert(ModelPlan {
        completion_cap: Some(0),
        ..Default::default()
    });
    per_model.rows += 1;
    let cap = o.max_tokens.or(opts.max_tokens).map(u64::from);
    per_model.completion_cap = per_model.completion_cap.zip(cap).map(|(a, b)| a + b);
    let attached = check_attachments(input, opts, row, &rendered, model, &mut plan.attachments)
        .map_err(|e| format!("{}{e}", at()))?;
    if opts.count_tokens {
        let system = o.system.or(rendered.system.as_deref());
        let n = u64::from(tokens::count_chat(model, system, &rendered.user)) + attached;
        plan.attachments.tokens += attached;
        per_model.prompt_tokens += n;
        plan.prompt_tokens += n;
    }
    if opts.capped && opts.prices.lookup(model).is_none() {
        return Err(format!(
            "{}, column \"model\": --max-cost needs a price for model {model:?}, and none is \
             known; add it with --price-file",
            at()
        ));
    }
    Ok(())
}

/// Checks every attachment of `rendered` (read, sniffed, against the API's limits; URLs are
/// not fetched) and counts them; returns their prompt tokens on `model`. The error starts with
/// the column whose cell names the file, for the caller to put after the line.
fn check_attachments(
    input: &InputFile,
    opts: &PreflightOptions,
    row: &Row,
    rendered: &crate::engine::template::Rendered,
    model: &str,
    plan: &mut AttachPlan,
) -> Result<u64, String> {
    use crate::engine::template::Segment;
    let mut tokens = 0u64;
    for s in &rendered.parts {
        let Segment::Attach(w) = s else { continue };
        let a = opts.loader.inspect(w).map_err(|e| {
            let column = row
                .record
                .iter()
                .position(|c| c == w.cell)
                .and_then(|i| input.headers.get(i));
            match column {
                Some(c) => format!(", column {c:?}: {e}"),
                None => format!(": {e}"),
            }
        })?;
        match a.kind {
            crate::engine::attach::Kind::Image => plan.images += 1,
            crate::engine::attach::Kind::File => plan.files += 1,
        }
        plan.pages += u64::from(if a.kind == crate::engine::attach::Kind::File {
            a.pages
        } else {
            0
        });
        plan.bytes += a.bytes;
        plan.urls += u64::from(a.url.is_some());
        plan.scaled += u64::from(a.scaled_from.is_some());
        if opts.count_tokens {
            tokens += u64::from(a.tokens(model));
        }
    }
    Ok(tokens)
}

/// `--dry-run`: what the run would send and cost, priced per row's model.
pub(super) fn print_plan(cfg: &RunConfig, plan: &Plan) {
    cfg.printer().report_with(|w| write_plan(cfg, plan, w));
}

/// The dry run's report: rows, tokens, and what they would cost at most.
fn write_plan(cfg: &RunConfig, plan: &Plan, w: &mut dyn Write) -> std::io::Result<()> {
    let dollars = crate::base::human::usd_micro;
    writeln!(w, "Dry run: nothing was sent and nothing was written.")?;
    writeln!(
        w,
        "Rows         {} in {} (every row checked, every prompt rendered)",
        plan.rows,
        cfg.input.display()
    )?;
    let priced: Vec<(&String, &ModelPlan, Option<Price>)> = plan
        .models
        .iter()
        .map(|(m, p)| (m, p, cfg.prices.lookup(m)))
        .collect();
    let unpriced: Vec<String> = priced
        .iter()
        .filter(|(_, _, p)| p.is_none())
        .map(|(m, _, _)| format!("{m:?}"))
        .collect();
    let completion = priced
        .iter()
        .try_fold(0u64, |sum, (_, p, _)| Some(sum + p.completion_cap?));
    // Per-row caps are possible (a `max_tokens` column), so the cap is named per row only when
    // every row has the flag's.
    let cap_note = match cfg.max_tokens {
        Some(m) if completion == Some(plan.rows * u64::from(m)) => {
            format!("--max-tokens {m} a row")
        }
        _ => "each row's max_tokens".into(),
    };
    write_attachments(&plan.attachments, w)?;
    if !unpriced.is_empty() {
        writeln!(w, "Prompts      {} tokens", plan.prompt_tokens)?;
        writeln!(
            w,
            "Cost         unknown: no price for model {}; add one with --price-file",
            unpriced.join(", ")
        )?;
        return Ok(());
    }
    let prompt_cost: f64 = priced
        .iter()
        .map(|(_, m, p)| p.map_or(0.0, |p| p.estimate(m.prompt_tokens, 0)))
        .sum();
    match priced.as_slice() {
        [(model, _, Some(p))] => writeln!(
            w,
            "Prompts      {} tokens, {} at {model}'s input price (${} per 1M)",
            plan.prompt_tokens,
            dollars(prompt_cost),
            p.input
        )?,
        _ => writeln!(
            w,
            "Prompts      {} tokens, {} at each row's model's input price",
            plan.prompt_tokens,
            dollars(prompt_cost),
        )?,
    }
    match completion {
        Some(c) => {
            let completion_cost: f64 = priced
                .iter()
                .map(|(_, m, p)| p.map_or(0.0, |p| p.estimate(0, m.completion_cap.unwrap_or(0))))
                .sum();
            writeln!(
                w,
                "Completions  at most {c} tokens ({cap_note}), {}",
                dollars(completion_cost)
            )?;
            writeln!(
                w,
                "Worst case   {} (prices as of {})",
                dollars(prompt_cost + completion_cost),
                cfg.prices.as_of
            )?;
        }
        None => writeln!(
            w,
            "Completions  unknown: without --max-tokens an answer's length has no bound{}",
            match priced.as_slice() {
                [(_, _, Some(p))] => format!(" (${} per 1M output tokens)", p.output),
                _ => String::new(),
            }
        )?,
    }
    if priced.len() > 1 {
        write_per_model(&priced, w)?;
    }
    Ok(())
}

/// The attachments line of a dry run, when the prompts attach files.
fn write_attachments(a: &AttachPlan, w: &mut dyn Write) -> std::io::Result<()> {
    use crate::base::human::count;
    let mut what = Vec::new();
    if a.images > 0 {
        what.push(count(a.images, "image"));
    }
    if a.scaled > 0 {
        what.push(format!("{} scaled down (--max-image-px)", a.scaled));
    }
    if a.files > 0 {
        what.push(format!(
            "{} ({})",
            count(a.files, "PDF"),
            count(a.pages, "page")
        ));
    }
    if what.is_empty() {
        return Ok(());
    }
    let read = match a.bytes {
        n if n >= 1_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n => format!("{:.1} kB", n as f64 / 1e3),
    };
    let urls = match a.urls {
        0 => String::new(),
        n => format!(", {n} by URL (not fetched)"),
    };
    writeln!(
        w,
        "Attachments  {}, {read} read{urls}; {} tokens of the prompts below",
        what.join(", "),
        a.tokens
    )
}

/// One line per model when rows go to several: rows, prompt tokens, worst case.
fn write_per_model(
    priced: &[(&String, &ModelPlan, Option<Price>)],
    w: &mut dyn Write,
) -> std::io::Result<()> {
    let dollars = crate::base::human::usd_micro;
    for (model, m, p) in priced {
        let worst = p
            .zip(m.completion_cap)
            .map(|(p, c)| dollars(p.estimate(m.prompt_tokens, c)));
        writeln!(
            w,
            "  {model:<22} {} rows, {} prompt tokens{}",
            m.rows,
            m.prompt_tokens,
            worst
                .map(|w| format!(", worst case {w}"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

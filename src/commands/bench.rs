//! `batch bench`.

use crate::base::error::{Error, ExitStatus};
use crate::base::money::format_cost;
use crate::commands::cli::{BenchArgs, RunArgs};
use crate::engine::concurrency::Concurrency;
use crate::engine::output::check_writable;
use crate::run::bench::*;
use crate::run::settings::RunConfig;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

/// Runs `batch bench`.
pub async fn run(args: BenchArgs) -> Result<ExitStatus, Error> {
    let BenchArgs {
        run: run_args,
        rows,
        repeat,
        warmup,
        format,
        export_csv,
        export_json,
        export_markdown,
        plot,
    } = args;
    refuse_run_only_flags(&run_args)?;
    // Every path we will write at the end is checked now, before anything is sent.
    let exports = [
        (export_csv.as_deref(), "--export-csv"),
        (export_json.as_deref(), "--export-json"),
        (export_markdown.as_deref(), "--export-markdown"),
        (plot.as_deref(), "--plot"),
    ];
    for (path, flag) in exports {
        if let Some(path) = path {
            check_writable(path, flag)?;
        }
    }
    if let Some(path) = &plot
        && !path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("svg"))
    {
        return Err(Error::Usage(format!(
            "--plot {}: the chart is written as SVG; give a path ending in .svg",
            path.display()
        )));
    }
    let quiet = run_args.quiet;
    let dry_run = run_args.dry_run;
    let (base, settings) = RunConfig::resolve_sweep(run_args)?;
    let settings = dedupe(settings);

    let work = WorkDir::create()?;
    let ext = base.input_format.extension();
    let sample_path = work.path().join(format!("sample.{ext}"));
    let sample_rows = write_head(&base.input, base.input_format, rows, &sample_path)?;
    let relabel = |e: Error| relabel(e, &sample_path, &base.input);
    let prompt_tokens = count_prompts(&base, &sample_path).map_err(relabel)?;
    let warmups: Vec<u64> = settings
        .iter()
        .map(|c| {
            warmup
                .unwrap_or_else(|| (c.ceiling() as u64).min(DEFAULT_MAX_WARMUP))
                .min(sample_rows)
        })
        .collect();
    let plan = SweepPlan {
        settings: settings.len() as u64,
        repeat: u64::from(repeat),
        rows: sample_rows,
        warmup_rows: warmups.iter().sum(),
        prompt_tokens: settings
            .iter()
            .zip(&warmups)
            .map(|(_, w)| {
                u64::from(repeat) * prompt_tokens.iter().sum::<u64>()
                    + prompt_tokens[..*w as usize].iter().sum::<u64>()
            })
            .sum(),
    };
    // The most one attempt can cost, as the runner's spend cap reckons it: the longest prompt
    // with its margin, and a full completion.
    let worst_attempt = base.prices.lookup(&base.model).map_or(0.0, |p| {
        let prompt = prompt_tokens.iter().copied().max().unwrap_or(0) as f64 * 1.1 + 16.0;
        p.estimate(
            prompt.ceil() as u64,
            u64::from(base.max_tokens.unwrap_or(0)),
        )
    });
    let real_api = base.endpoint.real_api();
    if dry_run {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "Dry run: nothing was sent.");
        let _ = plan.print(&mut out, &base);
        if real_api.is_some() && base.max_cost.is_none() {
            let _ = writeln!(
                out,
                "A real sweep against {} needs --max-cost USD (and --max-tokens N).",
                real_api.unwrap_or_default()
            );
        }
        return Ok(ExitStatus::Success);
    }
    if let Some(url) = real_api {
        if base.max_cost.is_none() {
            let mut text = Vec::new();
            let _ = plan.print(&mut text, &base);
            return Err(Error::Usage(format!(
                "batch bench would send {} requests (retries not counted) to {url}, a real API \
                 that bills them, and refuses to do so without a spending limit: add --max-cost \
                 USD (it needs --max-tokens N), or try the sweep free on the embedded mock \
                 server with --mock. What the sweep would cost:\n{}",
                plan.requests(),
                String::from_utf8_lossy(&text).trim_end()
            )));
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "Expected cost of the sweep against {url}:");
        let _ = plan.print(&mut err, &base);
        let _ = writeln!(
            err,
            "Spend cap  ${} over the whole sweep (--max-cost)",
            format_cost(base.max_cost.unwrap_or(0.0))
        );
    }

    let mut notes = Vec::new();
    if sample_rows < rows {
        notes.push(format!(
            "{} has only {sample_rows} rows, so each run sends {sample_rows} instead of {rows}",
            base.input.display()
        ));
    }
    if let Some(c) = settings
        .iter()
        .filter_map(|c| match c {
            Concurrency::Fixed(n) => Some(*n as u64),
            Concurrency::Auto => None,
        })
        .max()
        .filter(|c| *c > 1 && sample_rows < ROWS_PER_SLOT_NOTE * c)
    {
        notes.push(format!(
            "at --concurrency {c}, {sample_rows} rows are {:.1} rows per slot, so that setting \
             is measured over few rounds of requests; --rows {} or more gives steadier numbers",
            sample_rows as f64 / c as f64,
            ROWS_PER_SLOT_NOTE * c
        ));
    }

    let say = |msg: &str| {
        if !quiet {
            eprintln!("{msg}");
        }
    };
    say(&format!(
        "bench: {} x {} x {} on {}",
        plural(settings.len() as u64, "setting"),
        plural(u64::from(repeat), "run"),
        plural(sample_rows, "row"),
        base.endpoint.describe()
    ));

    let mut warm_files: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut results: Vec<SettingResult> = Vec::new();
    let mut spent = 0.0f64;
    let mut status = ExitStatus::Success;
    let mut run_no = 0usize;
    'sweep: for (setting, warm) in settings.iter().copied().zip(warmups) {
        let name = label(setting);
        let mut planned: Vec<(PathBuf, bool)> = Vec::new();
        if warm > 0 {
            let path = match warm_files.get(&warm) {
                Some(p) => p.clone(),
                None => {
                    let p = work.path().join(format!("warmup-{warm}.{ext}"));
                    write_head(&base.input, base.input_format, warm, &p)?;
                    warm_files.insert(warm, p.clone());
                    p
                }
            };
            planned.push((path, true));
        }
        for _ in 0..repeat {
            planned.push((sample_path.clone(), false));
        }
        let mut runs = Vec::new();
        for (input, is_warmup) in planned {
            let cap = match base.max_cost {
                Some(cap) if cap - spent <= 0.0 => {
                    notes.push(format!(
                        "the sweep stopped before --concurrency {name}: --max-cost ${} is spent",
                        format_cost(cap)
                    ));
                    status = ExitStatus::RowsFailed;
                    break 'sweep;
                }
                // Rounded down to a nanodollar, so messages show a readable amount.
                Some(cap) => Some(((cap - spent) * 1e9).floor() / 1e9),
                None => None,
            };
            run_no += 1;
            let what = if is_warmup {
                format!("warm-up, {}", plural(warm, "row"))
            } else {
                format!("run {}/{repeat}", runs.len() + 1)
            };
            let (run_status, measure, unknown_cost) =
                one_run(&base, setting, &input, work.path(), run_no, cap)
                    .await
                    .map_err(|e| relabel_any(e, work.path(), &base.input))?;
            // What the run's own cap counted: the answers' cost, and the worst case of every
            // attempt whose cost could not be known.
            spent += measure.cost_usd.unwrap_or(0.0) + unknown_cost as f64 * worst_attempt;
            if run_status == ExitStatus::Interrupted {
                notes.push(format!(
                    "interrupted during --concurrency {name} ({what}); settings measured so far \
                     are reported"
                ));
                status = ExitStatus::Interrupted;
                break 'sweep;
            }
            if let Some(reason) = &measure.stopped {
                notes.push(format!(
                    "the sweep stopped at --concurrency {name} ({what}): {reason}; that run is \
                     left out"
                ));
                status = ExitStatus::RowsFailed;
                break 'sweep;
            }
            say(&format!(
                "concurrency {name:>4}: {what}: {} rows/s{}, p95 {}, {} failed, {} retries",
                fmt_rate(measure.rows_per_second()),
                if measure.sustained_rows_per_second.is_some() {
                    ""
                } else {
                    " (end to end)"
                },
                report::fmt_ms(measure.latency_ms.p95),
                measure.failed,
                measure.retries
            ));
            if !is_warmup {
                runs.push(measure);
            }
        }
        if !runs.is_empty() {
            results.push(SettingResult::from_runs(setting, runs));
        }
    }
    if results.is_empty() {
        for n in &notes {
            eprintln!("note: {n}");
        }
        return Err(Error::Usage(
            "no setting could be measured (see the notes above)".into(),
        ));
    }

    let report = Report::new(
        &base.input,
        &base.model,
        base.endpoint.describe(),
        sample_rows,
        repeat,
        results,
        notes,
    );
    let stdout_text = match format {
        Format::Table => to_table(&report),
        Format::Markdown => to_markdown(&report),
        Format::Csv => to_csv(&report),
        Format::Json => to_json(&report),
    };
    print!("{stdout_text}");
    if matches!(format, Format::Csv | Format::Json) {
        eprint!("{}", report.conclusion());
    }
    for (path, text) in [
        (export_csv.as_deref(), to_csv as fn(&Report) -> String),
        (export_json.as_deref(), to_json),
        (export_markdown.as_deref(), to_markdown),
    ] {
        if let Some(path) = path {
            write_file(path, &text(&report))?;
        }
    }
    if let Some(path) = &plot {
        let svg = render_svg(&report).map_err(|e| {
            Error::io(
                format!("cannot draw the chart {}", path.display()),
                std::io::Error::other(e),
            )
        })?;
        write_file(path, &svg)?;
    }
    Ok(status)
}

/// Flags of `batch run` that make no sense for a sweep of throw-away runs.
fn refuse_run_only_flags(a: &RunArgs) -> Result<(), Error> {
    let given = [
        ("-o/--output", a.output.is_some()),
        ("--state", a.state.is_some()),
        ("--resume", a.resume),
        ("--restart", a.restart),
        ("--summary-json", a.summary_json.is_some()),
    ];
    match given.iter().find(|(_, set)| *set) {
        Some((flag, _)) => Err(Error::Usage(format!(
            "{flag} is for `batch run`; bench writes its runs to a temporary folder and reports \
             with --format, --export-csv, --export-json, --export-markdown and --plot"
        ))),
        None => Ok(()),
    }
}

//! `batch bench`: checks the flags and every file the report will be written to, resolves the
//! runs' settings, and hands the sweep to [`crate::run::bench`].

use crate::base::error::{Error, ExitStatus};
use crate::commands::cli::{BenchArgs, RunArgs};
use crate::commands::config::{RunOnlyFlag, refuse_flags};
use crate::engine::output::check_writable;
use crate::run::bench::{self, BenchPlan, Outputs, Swept};
use crate::run::settings::RunConfig;

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
    let swept_by_default = run_args.concurrency.is_none();
    let outputs = Outputs {
        format,
        csv: export_csv,
        json: export_json,
        markdown: export_markdown,
        plot,
    };
    check_paths(&run_args, &outputs)?;
    check_outputs(&outputs)?;
    let (base, given) = RunConfig::resolve_sweep(run_args)?;
    // Without --concurrency, the sweep's settings follow from the sample's size.
    let settings = if swept_by_default { Vec::new() } else { given };
    let printer = base.printer();
    let plan = BenchPlan {
        base,
        settings,
        rows,
        repeat,
        warmup,
    };
    match bench::sweep(plan).await? {
        Swept::DryRun => Ok(ExitStatus::Success),
        Swept::Measured { report, status } => {
            bench::publish(&report, &outputs, printer)?;
            Ok(status)
        }
    }
}

/// Flags of `batch run` that make no sense for a sweep of throw-away runs.
fn refuse_run_only_flags(a: &RunArgs) -> Result<(), Error> {
    refuse_flags(
        a,
        RunOnlyFlag::LIVE_SWEEP,
        "bench measures requests sent now (not through the Batch API), writes its runs to a \
         temporary folder and reports with --format, --export-csv, --export-json, \
         --export-markdown and --plot",
    )
}

/// No report file is a file the runs read, or another report file.
fn check_paths(run_args: &RunArgs, outputs: &Outputs) -> Result<(), Error> {
    let mut check = crate::run::paths::PathCheck::default();
    for (what, path) in crate::commands::config::input_paths(run_args) {
        check = check.input(what, path.as_deref());
    }
    check
        .output("--export-csv", outputs.csv.as_deref())
        .output("--export-json", outputs.json.as_deref())
        .output("--export-markdown", outputs.markdown.as_deref())
        .output("--plot", outputs.plot.as_deref())
        .check()
}

/// Every path written at the end is checked now, before anything is sent or spent.
fn check_outputs(outputs: &Outputs) -> Result<(), Error> {
    let exports = [
        (&outputs.csv, "--export-csv"),
        (&outputs.json, "--export-json"),
        (&outputs.markdown, "--export-markdown"),
        (&outputs.plot, "--plot"),
    ];
    for (path, flag) in exports {
        if let Some(path) = path {
            check_writable(path, flag)?;
        }
    }
    match &outputs.plot {
        Some(path)
            if !crate::base::format::is_std(path)
                && !path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("svg")) =>
        {
            Err(Error::Usage(format!(
                "--plot {}: the chart is written as SVG; give a path ending in .svg",
                path.display()
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_paths_are_checked_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("out.json");
        check_writable(&ok, "--export-json").unwrap();
        assert!(!ok.exists(), "the probe file is removed");
        let err = check_writable(&dir.path().join("nope/out.json"), "--export-json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not exist") && err.contains("--export-json"),
            "{err}"
        );
        let err = check_writable(dir.path(), "--plot")
            .unwrap_err()
            .to_string();
        assert!(err.contains("folder"), "{err}");
    }
}

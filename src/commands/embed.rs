//! `batch embed`: the flags resolved as `batch run` resolves them ([`RunConfig::resolve`]: the
//! settings file, the environment, the endpoint and key, the cache, the state file), plus the
//! column, the dimensions and the per-request limits; then the run layer's embeddings loop.

use std::path::{Path, PathBuf};

use crate::base::error::{Error, ExitStatus};
use crate::base::format::is_std;
use crate::commands::cli::{EmbedArgs, RunArgs, Via};
use crate::engine::provider::Api;
use crate::run::embed::{EmbedConfig, PackLimits};
use crate::run::settings::RunConfig;

/// The model when `--model` is not given.
pub const DEFAULT_MODEL: &str = "text-embedding-3-small";

/// `batch embed`.
pub async fn run(args: EmbedArgs) -> Result<ExitStatus, Error> {
    let cfg = resolve(args)?;
    if cfg.run.batch.via_batch {
        crate::run::batchapi::embeddings::run_via_batch(cfg).await
    } else {
        crate::run::embed::embed(cfg).await
    }
}

/// The flags, checked and resolved into the run's settings.
pub fn resolve(args: EmbedArgs) -> Result<EmbedConfig, Error> {
    let mut run = args.run;
    refuse_prompt_flags(&run)?;
    run.model.get_or_insert_with(|| DEFAULT_MODEL.to_string());
    if run.output.is_none()
        && !is_std(&run.input)
        && !crate::engine::stdio::is_stream(&run.input)
        && !run.input.as_os_str().is_empty()
    {
        run.output = Some(default_output(&run.input));
    }
    let streamed = |p: &Path| is_std(p) || crate::engine::stdio::is_stream(p);
    if run.via == Some(Via::Batch)
        && (streamed(&run.input) || run.output.as_deref().is_none_or(streamed))
    {
        return Err(Error::Usage(
            "--via batch needs an input file and an output file (-o PATH): the job outlives this \
             command, and `batch collect` reads the input again to write the vectors"
                .into(),
        ));
    }
    // `batch run` ties --max-cost to --max-tokens; an embedding has no completion, so the cap
    // is checked here instead.
    let max_cost = run.max_cost.take();
    let mut cfg = RunConfig::resolve(run)?;
    if cfg.api != Api::OpenAiChat {
        return Err(Error::Usage(
            "batch embed speaks OpenAI's /v1/embeddings (also served by vLLM, Ollama and \
             LiteLLM); leave out --provider and --api"
                .into(),
        ));
    }
    cfg.max_cost = check_cost(max_cost, &cfg)?;
    let d = PackLimits::default();
    let limits = PackLimits {
        max_inputs: args
            .max_inputs_per_request
            .map_or(d.max_inputs, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        max_tokens: args.max_request_tokens.unwrap_or(d.max_tokens),
        max_input_tokens: args.max_input_tokens.unwrap_or(d.max_input_tokens),
    };
    if cfg.batch.via_batch {
        check_batch_request_caps(&limits)?;
    }
    Ok(EmbedConfig {
        run: cfg,
        column: args.column,
        dimensions: args.dimensions,
        limits,
    })
}

/// OpenAI's caps on one `/v1/embeddings` request: the live command learns a lower cap from a
/// 400 and splits, but a batch line that passes them only fails hours later, so they are
/// refused before anything is written.
const API_MAX_INPUTS: u64 = 2048;
const API_MAX_TOKENS: u64 = 300_000;

/// `--via batch`: the per-request caps may not pass the API's.
fn check_batch_request_caps(limits: &PackLimits) -> Result<(), Error> {
    let over = [
        (
            limits.max_inputs as u64 > API_MAX_INPUTS,
            "--max-inputs-per-request",
            limits.max_inputs as u64,
            API_MAX_INPUTS,
            "inputs",
        ),
        (
            limits.max_tokens > API_MAX_TOKENS,
            "--max-request-tokens",
            limits.max_tokens,
            API_MAX_TOKENS,
            "tokens",
        ),
    ];
    match over.iter().find(|o| o.0) {
        Some((_, flag, given, cap, what)) => Err(Error::Usage(format!(
            "{flag} {given} is more than the {cap} {what} OpenAI takes in one embeddings \
             request; with --via batch such a request would fail in the batch, so give at most \
             {cap} (or leave the flag out)"
        ))),
        None => Ok(()),
    }
}

/// `reviews.csv` -> `reviews.embeddings.parquet`, beside the input.
pub fn default_output(input: &Path) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into());
    input.with_file_name(format!("{stem}.embeddings.parquet"))
}

/// The flags of `batch run` that shape a prompt or check an answer: an embedding has neither.
fn refuse_prompt_flags(a: &RunArgs) -> Result<(), Error> {
    let given = [
        (a.prompt.is_some(), "--prompt"),
        (a.prompt_file.is_some(), "--prompt-file"),
        (a.system.is_some(), "--system"),
        (a.system_file.is_some(), "--system-file"),
        (a.max_tokens.is_some(), "--max-tokens"),
        (a.temperature.is_some(), "--temperature"),
        (a.schema.is_some(), "--schema"),
        (a.no_strict, "--no-strict"),
        (a.schema_retries.is_some(), "--schema-retries"),
        (a.expect.is_some(), "--expect"),
        (a.match_mode.is_some(), "--match"),
        (a.ignore_case, "--ignore-case"),
        (a.ignore_whitespace, "--ignore-whitespace"),
        (a.log.is_some(), "--log"),
        (a.output_format.is_some(), "--output-format"),
    ];
    if let Some((_, flag)) = given.iter().find(|(g, _)| *g) {
        return Err(Error::Usage(format!(
            "{flag} is for `batch run`; `batch embed` sends the text of --column as it is (the \
             output format follows the -o extension)"
        )));
    }
    let via_batch = a.via == Some(Via::Batch);
    let batch_only = [
        (a.batch_max_requests.is_some(), "--batch-max-requests"),
        (a.batch_max_bytes.is_some(), "--batch-max-bytes"),
    ];
    match batch_only.iter().find(|(g, _)| *g && !via_batch) {
        Some((_, flag)) => Err(Error::Usage(format!(
            "{flag} shapes the batches of `--via batch`; add --via batch or leave it out"
        ))),
        None => Ok(()),
    }
}

/// `--max-cost`: a positive amount, and a known price for the model.
fn check_cost(cap: Option<f64>, cfg: &RunConfig) -> Result<Option<f64>, Error> {
    let Some(cap) = cap else { return Ok(None) };
    if !(cap.is_finite() && cap > 0.0) {
        return Err(Error::Usage(format!(
            "--max-cost {cap} must be a positive amount of USD"
        )));
    }
    if cfg.prices.lookup(&cfg.model).is_none() {
        return Err(Error::Usage(format!(
            "--max-cost needs a price for model {:?}, and none is known; add it with \
             --price-file",
            cfg.model
        )));
    }
    Ok(Some(cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> EmbedArgs {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            args: EmbedArgs,
        }
        let mut all = vec!["embed"];
        all.extend_from_slice(args);
        Wrap::try_parse_from(all).unwrap().args
    }

    #[test]
    fn defaults_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.csv");
        std::fs::write(&input, "text\nhello\n").unwrap();
        let i = input.to_str().unwrap();
        let cfg = resolve(parse(&[
            i,
            "--column",
            "text",
            "--mock",
            "--max-inputs-per-request",
            "5",
            "--no-cache",
        ]))
        .unwrap();
        assert_eq!(cfg.run.model, DEFAULT_MODEL);
        assert_eq!(cfg.run.output, dir.path().join("in.embeddings.parquet"));
        assert_eq!(cfg.limits.max_inputs, 5);
        assert_eq!(cfg.limits.max_tokens, 300_000);
        let e = resolve(parse(&[i, "--column", "text", "--mock", "--prompt", "x"])).unwrap_err();
        assert!(e.to_string().contains("--prompt is for `batch run`"), "{e}");
        let e = resolve(parse(&[
            i,
            "--column",
            "text",
            "--mock",
            "--model",
            "nope",
            "--max-cost",
            "1",
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("needs a price"), "{e}");
        let cfg = resolve(parse(&[
            i,
            "--column",
            "text",
            "--mock",
            "--max-cost",
            "0.5",
            "--no-cache",
        ]))
        .unwrap();
        assert_eq!(cfg.run.max_cost, Some(0.5));
    }

    #[test]
    fn via_batch_wants_files_and_owns_the_batch_limits() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.csv");
        std::fs::write(&input, "text\nhello\n").unwrap();
        let i = input.to_str().unwrap();
        let base = [i, "--column", "text", "--mock", "--no-cache"];
        let with = |extra: &[&str]| {
            let mut a = base.to_vec();
            a.extend_from_slice(extra);
            resolve(parse(&a))
        };
        let cfg = with(&["--via", "batch", "--batch-max-requests", "7"]).unwrap();
        assert!(cfg.run.batch.via_batch);
        assert_eq!(cfg.run.batch.max_requests, Some(7));
        let e = with(&["--batch-max-requests", "7"]).unwrap_err();
        assert!(e.to_string().contains("add --via batch"), "{e}");
        let e = with(&["--via", "batch", "--max-inputs-per-request", "2049"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("--max-inputs-per-request 2049 is more than the 2048 inputs"),
            "{e}"
        );
        let e = with(&["--via", "batch", "--max-request-tokens", "300001"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("--max-request-tokens 300001 is more than the 300000 tokens"),
            "{e}"
        );
        with(&["--via", "batch", "--max-inputs-per-request", "2048"]).unwrap();
        with(&["--max-inputs-per-request", "4096"]).unwrap();
        let e = with(&["--via", "batch", "-o", "-"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("needs an input file and an output file"),
            "{e}"
        );
    }
}

//! `batch cache stats|clear`: the response cache, looked at and pruned.

use std::path::PathBuf;

use crate::base::error::{Error, ExitStatus};
use crate::base::money::format_cost;
use crate::base::printer::Printer;
use crate::commands::cli::CacheAction;
use crate::engine::cache::{self, Cache};

/// `batch cache stats|clear`.
pub fn run(action: CacheAction, dir: Option<PathBuf>) -> Result<ExitStatus, Error> {
    let printer = Printer::new(false);
    let mut cache = Cache::open(&dir.unwrap_or_else(cache::default_dir))?;
    match action {
        CacheAction::Stats => {
            let s = cache.stats()?;
            printer.report(format_args!("Cache      {}", s.path));
            printer.report(format_args!(
                "Entries    {} ({} bytes)",
                s.entries, s.file_bytes
            ));
            printer.report(format_args!(
                "Tokens     {} prompt + {} completion",
                s.prompt_tokens, s.completion_tokens
            ));
            printer.report(format_args!(
                "Cost       ${} when first paid for; each reuse saves it again",
                format_cost(s.cost_usd)
            ));
            if let (Some(old), Some(new)) = (s.oldest, s.newest) {
                printer.report(format_args!("Stored     {old} to {new}"));
            }
        }
        CacheAction::Clear { older_than } => {
            let n = cache.clear(older_than)?;
            printer.report(format_args!(
                "removed {n} cached answers from {}",
                cache.path().display()
            ));
        }
    }
    Ok(ExitStatus::Success)
}

//! `batch cache stats|clear`: the response cache, looked at and pruned.

use std::path::PathBuf;

use crate::base::error::{Error, ExitStatus};
use crate::base::money::format_cost;
use crate::commands::cli::CacheAction;
use crate::engine::cache::{self, Cache};

/// `batch cache stats|clear`.
pub fn run(action: CacheAction, dir: Option<PathBuf>) -> Result<ExitStatus, Error> {
    let mut cache = Cache::open(&dir.unwrap_or_else(cache::default_dir))?;
    match action {
        CacheAction::Stats => {
            let s = cache.stats()?;
            println!("Cache      {}", s.path);
            println!("Entries    {} ({} bytes)", s.entries, s.file_bytes);
            println!(
                "Tokens     {} prompt + {} completion",
                s.prompt_tokens, s.completion_tokens
            );
            println!(
                "Cost       ${} when first paid for; each reuse saves it again",
                format_cost(s.cost_usd)
            );
            if let (Some(old), Some(new)) = (s.oldest, s.newest) {
                println!("Stored     {old} to {new}");
            }
        }
        CacheAction::Clear { older_than } => {
            let n = cache.clear(older_than)?;
            println!("removed {n} cached answers from {}", cache.path().display());
        }
    }
    Ok(ExitStatus::Success)
}

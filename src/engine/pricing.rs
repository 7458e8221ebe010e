//! What requests cost: an embedded, dated price table plus the user's overrides.
//!
//! Costs are only as good as the table, so a model that is not in it gets no cost at all (an
//! empty cell and one warning), never a silent zero that would make a budget look safe.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::base::error::Error;
use crate::base::usage::Usage;

const EMBEDDED: &str = include_str!("prices.toml");

/// USD per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    /// Cached (cache-read) input; the input price when absent.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Cache writes (Anthropic); the input price when absent.
    #[serde(default)]
    pub cache_write: Option<f64>,
    pub output: f64,
}

impl Price {
    /// Cost in USD of one response's usage.
    pub fn cost(&self, u: &Usage) -> f64 {
        let cached = u.cached_tokens.min(u.prompt_tokens);
        let writes = u.cache_write_tokens.min(u.prompt_tokens - cached);
        let fresh = u.prompt_tokens - cached - writes;
        (fresh as f64 * self.input
            + cached as f64 * self.cached_input.unwrap_or(self.input)
            + writes as f64 * self.cache_write.unwrap_or(self.input)
            + u.completion_tokens as f64 * self.output)
            / 1e6
    }

    /// Cost of `prompt` input tokens and `completion` output tokens at full price: the worst
    /// case used for estimates and budgets.
    pub fn estimate(&self, prompt: u64, completion: u64) -> f64 {
        (prompt as f64 * self.input + completion as f64 * self.output) / 1e6
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    /// When the embedded prices were taken from the providers' pages.
    pub as_of: String,
    models: BTreeMap<String, Price>,
}

impl PriceTable {
    pub fn embedded() -> Self {
        toml::from_str(EMBEDDED).expect("the embedded price table parses (checked by a test)")
    }

    /// Adds or replaces prices from a JSON file `{"model": {"input": .., "output": ..}}`, or a
    /// TOML file in the embedded table's format when its name ends in `.toml`.
    pub fn merge_file(&mut self, path: &Path) -> Result<(), Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::read(path, &e))?;
        let models: BTreeMap<String, Price> = if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
        {
            #[derive(Deserialize)]
            struct File {
                models: BTreeMap<String, Price>,
            }
            toml::from_str::<File>(&text)
                .map(|f| f.models)
                .map_err(|e| e.to_string())
        } else {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        }
        .map_err(|e| {
            Error::Input(format!(
                "price file {} (--price-file): {e}. Expected {{\"model-name\": {{\"input\": \
                     0.4, \"cached_input\": 0.1, \"output\": 1.6}}}} in USD per 1M tokens",
                path.display()
            ))
        })?;
        self.models.extend(models);
        Ok(())
    }

    /// The price of `model`: an exact entry, or the longest entry that `model` extends with a
    /// date or version suffix (`gpt-4.1-mini-2025-04-14`, `claude-sonnet-4-20250514`). A router
    /// prefix such as `openai/` is ignored.
    pub fn lookup(&self, model: &str) -> Option<Price> {
        let model = model.rsplit('/').next().unwrap_or(model);
        if let Some(p) = self.models.get(model) {
            return Some(*p);
        }
        self.models
            .iter()
            .filter(|(name, _)| {
                model.strip_prefix(name.as_str()).is_some_and(|rest| {
                    rest.starts_with('-')
                        && rest[1..].chars().all(|c| c.is_ascii_digit() || c == '-')
                })
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(_, p)| *p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_table_parses_and_has_both_providers() {
        let t = PriceTable::embedded();
        assert!(!t.as_of.is_empty());
        assert_eq!(t.lookup("gpt-4.1-mini").unwrap().input, 0.40);
        assert_eq!(t.lookup("claude-haiku-4-5").unwrap().output, 5.0);
    }

    #[test]
    fn dated_names_match_their_family_but_variants_do_not() {
        let t = PriceTable::embedded();
        assert_eq!(
            t.lookup("gpt-4.1-mini-2025-04-14"),
            t.lookup("gpt-4.1-mini")
        );
        assert_eq!(t.lookup("gpt-4o-mini-2024-07-18"), t.lookup("gpt-4o-mini"));
        assert_eq!(
            t.lookup("claude-sonnet-4-20250514"),
            t.lookup("claude-sonnet-4")
        );
        assert_eq!(t.lookup("openai/gpt-4o"), t.lookup("gpt-4o"));
        assert_eq!(t.lookup("gpt-4o-audio-preview"), None);
        assert_eq!(t.lookup("llama-3"), None);
    }

    #[test]
    fn cached_tokens_are_a_subset_billed_at_the_cached_rate() {
        let p = Price {
            input: 2.0,
            cached_input: Some(0.5),
            cache_write: None,
            output: 8.0,
        };
        let u = Usage {
            prompt_tokens: 1_000_000,
            cached_tokens: 400_000,
            completion_tokens: 100_000,
            ..Default::default()
        };
        // 600k * 2 + 400k * 0.5 + 100k * 8, per 1M.
        assert!((p.cost(&u) - (1.2 + 0.2 + 0.8)).abs() < 1e-12);
    }

    #[test]
    fn price_file_overrides_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("p.json");
        std::fs::write(&good, r#"{"my-model": {"input": 1, "output": 2}}"#).unwrap();
        let mut t = PriceTable::embedded();
        t.merge_file(&good).unwrap();
        assert_eq!(t.lookup("my-model").unwrap().output, 2.0);

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"m": {"inputs": 1}}"#).unwrap();
        let msg = t.merge_file(&bad).unwrap_err().to_string();
        assert!(msg.contains("bad.json") && msg.contains("inputs"), "{msg}");
    }

    #[test]
    fn embedding_models_are_priced_for_input_only() {
        let t = PriceTable::embedded();
        let small = t.lookup("text-embedding-3-small").unwrap();
        assert_eq!((small.input, small.output), (0.02, 0.0));
        assert_eq!(t.lookup("text-embedding-3-large").unwrap().input, 0.13);
        assert_eq!(t.lookup("text-embedding-ada-002").unwrap().input, 0.10);
        // A million tokens of the small model cost two cents.
        assert!((small.estimate(1_000_000, 0) - 0.02).abs() < 1e-12);
    }
}

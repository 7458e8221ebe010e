//! The mock's prompt cache, so that cached-token accounting can be tested end to end.
//!
//! Both providers cache a prompt's prefix, here the system prompt, once it is long enough:
//! - OpenAI caches automatically: a prefix of 1024 tokens or more that the server has seen
//!   before is read from the cache in steps of 128 tokens, reported as `cached_tokens`;
//! - Anthropic caches what the request marks with `cache_control`: the first request writes it
//!   (`cache_creation_input_tokens`), later ones read it (`cache_read_input_tokens`).
//!
//! Entries live as long as the server (real caches expire after minutes of disuse), so a run is
//! deterministic: with one request in flight, the first row writes and every later row reads.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use super::Answer;
use crate::engine::tokens;

/// The shortest prefix either provider caches.
pub const MIN_TOKENS: u64 = 1024;
/// OpenAI reports cache hits in steps of this many tokens.
pub const STEP: u64 = 128;

/// A prompt prefix the cache may hold.
#[derive(Debug, Clone, Copy)]
pub struct Prefix {
    key: u64,
    tokens: u64,
    /// Marked by the request (Anthropic) rather than cached automatically (OpenAI).
    explicit: bool,
}

impl Prefix {
    fn new(model: &str, system: &str, explicit: bool) -> Self {
        let mut h = DefaultHasher::new();
        (model, system).hash(&mut h);
        Prefix {
            key: h.finish(),
            tokens: u64::from(tokens::count(model, system)),
            explicit,
        }
    }

    /// OpenAI's automatic caching of the system prompt.
    pub fn automatic(model: &str, system: &str) -> Self {
        Prefix::new(model, system, false)
    }

    /// A system prompt marked with Anthropic's `cache_control`.
    pub fn marked(model: &str, system: &str) -> Self {
        Prefix::new(model, system, true)
    }
}

#[derive(Default)]
pub struct PromptCache {
    seen: Mutex<HashSet<u64>>,
}

impl PromptCache {
    /// Fills in the cached parts of `a`'s usage, and remembers its prefix for later requests.
    pub fn serve(&self, a: &mut Answer) {
        let Some(p) = a.prefix else { return };
        if p.tokens < MIN_TOKENS {
            return;
        }
        let hit = !self.seen.lock().expect("cache lock").insert(p.key);
        let tokens = p.tokens.min(a.prompt_tokens);
        match (p.explicit, hit) {
            (false, true) => a.cached_tokens = tokens / STEP * STEP,
            (false, false) => {}
            (true, true) => a.cache_read_tokens = tokens,
            (true, false) => a.cache_write_tokens = tokens,
        }
    }
}

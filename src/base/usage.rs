//! Token usage, as every provider reports it once normalised.

use serde::Serialize;

/// Token usage as the server reported it, normalised: `prompt_tokens` is all input tokens, and
/// `cached_tokens` and `cache_write_tokens` are parts of it; `reasoning_tokens` is part of
/// `completion_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
}

//! Token counting with the models' own tokenizers (tiktoken), for rate budgets and cost
//! estimates before a request is sent, and for the mock server's `usage`.
//!
//! The counts for chat requests follow OpenAI's cookbook estimator: each message costs 3 tokens
//! of framing plus its role and content, and every reply is primed with 3 more. Providers add
//! undocumented overhead for some features, so callers treat this as an estimate and reconcile
//! with the `usage` the server reports.

use tiktoken_rs::CoreBPE;

/// Per-message framing tokens (`<|start|>role<|message|>...<|end|>`).
const TOKENS_PER_MESSAGE: u32 = 3;
/// Tokens that prime every reply.
const REPLY_PRIMING: u32 = 3;

/// The tokenizer for `model`: `o200k_base` for the GPT-4o/4.1/4.5/5 and o-series families,
/// `cl100k_base` for GPT-4 and GPT-3.5, and `o200k_base` as the estimate for anything else
/// (other providers' tokenizers are not public).
pub fn encoding_for(model: &str) -> &'static CoreBPE {
    // Routers name models "openai/gpt-4o"; the family is the last part.
    let m = model.rsplit('/').next().unwrap_or(model);
    let cl100k = (m.starts_with("gpt-4") && !is_o200k_gpt4(m))
        || m.starts_with("gpt-3.5")
        || m.starts_with("text-embedding-ada")
        || m.starts_with("text-embedding-3");
    if cl100k {
        tiktoken_rs::cl100k_base_singleton()
    } else {
        tiktoken_rs::o200k_base_singleton()
    }
}

fn is_o200k_gpt4(m: &str) -> bool {
    ["gpt-4o", "gpt-4.1", "gpt-4.5"]
        .iter()
        .any(|p| m.starts_with(p))
}

/// Tokens in `text` for `model`.
pub fn count(model: &str, text: &str) -> u32 {
    let n = encoding_for(model).encode_ordinary(text).len();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Prompt tokens of a chat request with an optional system message and one user message.
pub fn count_chat(model: &str, system: Option<&str>, user: &str) -> u32 {
    let message = |role: &str, content: &str| {
        TOKENS_PER_MESSAGE
            .saturating_add(count(model, role))
            .saturating_add(count(model, content))
    };
    let mut total = REPLY_PRIMING.saturating_add(message("user", user));
    if let Some(s) = system {
        total = total.saturating_add(message("system", s));
    }
    total
}

/// At least [`count_chat`]'s count, without the tokenizer: a token is at least one byte (of
/// the role or the content), so the bytes bound the tokens. For the start of a run that has no
/// token budget, where building a tokenizer (a fifth of a second and some 20 MB) would cost more
/// than the count is worth.
pub fn chat_bound(system: Option<&str>, user: &str) -> u32 {
    let message =
        |role: &str, content: &str| TOKENS_PER_MESSAGE as usize + role.len() + content.len();
    let n =
        REPLY_PRIMING as usize + message("user", user) + system.map_or(0, |s| message("system", s));
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_never_below_the_count() {
        for (system, user) in [
            (
                None,
                "Classify: The blender was fine, arrived in 3 days, would buy again.",
            ),
            (Some("You are terse."), "1 2 3 4 5 6 7 8 9 0 ! ? . , ; :"),
            (None, "\u{65e5}\u{672c}\u{8a9e}\u{306e}\u{6587}\u{7ae0}"),
            (Some(""), ""),
        ] {
            for model in ["gpt-4.1-mini", "gpt-4"] {
                assert!(chat_bound(system, user) >= count_chat(model, system, user));
            }
        }
    }

    #[test]
    fn families_pick_their_encoding() {
        let o200k = tiktoken_rs::o200k_base_singleton() as *const _;
        let cl100k = tiktoken_rs::cl100k_base_singleton() as *const _;
        for m in [
            "gpt-4o-mini",
            "gpt-4.1-mini",
            "gpt-5",
            "o3-mini",
            "openai/gpt-4o",
            "claude-x",
        ] {
            assert_eq!(encoding_for(m) as *const _, o200k, "{m}");
        }
        for m in ["gpt-4", "gpt-4-turbo", "gpt-3.5-turbo"] {
            assert_eq!(encoding_for(m) as *const _, cl100k, "{m}");
        }
    }

    #[test]
    fn chat_count_follows_the_cookbook() {
        // "hello world" is 2 tokens and "user" 1 in o200k: 3 + 1 + 2 + 3 priming.
        assert_eq!(count("gpt-4o", "hello world"), 2);
        assert_eq!(count_chat("gpt-4o", None, "hello world"), 9);
        let with_system = count_chat("gpt-4o", Some("hello world"), "hello world");
        assert_eq!(with_system, 9 + 3 + count("gpt-4o", "system") + 2);
    }
}

//! The API key, kept out of every log line and message, and where it is looked up: the
//! provider's variable (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`) or `--api-key-file`.

use std::fmt;
use std::path::Path;

use crate::base::error::{Error, describe_io};

/// An API key. Its `Debug` and `Display` never show it, so it cannot leak through a log line or
/// an error message by accident; [`ApiKey::expose`] is the one way to read it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: String) -> Self {
        ApiKey(key)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key sent to the embedded mock, which wants one as the real APIs do.
    pub fn placeholder() -> Self {
        ApiKey("mock-key".into())
    }

    /// The key given with `--api-key-file`, else the one in variable `var`. `None` when neither
    /// holds one: whether a key is needed is the caller's to say (a server on this machine
    /// usually needs none).
    pub fn lookup(var: &str, file: Option<&Path>) -> Result<Option<ApiKey>, Error> {
        match file {
            Some(path) => ApiKey::from_file(path),
            None => Ok(ApiKey::from_env(var)),
        }
    }

    /// The key in `path` (`--api-key-file`), without the surrounding whitespace (a file ends
    /// with a newline); `None` when the file holds nothing else.
    pub fn from_file(path: &Path) -> Result<Option<ApiKey>, Error> {
        const FLAG: &str = "--api-key-file";
        let bytes = std::fs::read(path).map_err(|e| {
            Error::Input(format!(
                "cannot read {} (given to {FLAG}): {}",
                path.display(),
                describe_io(&e)
            ))
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::Input(format!(
                "{} (given to {FLAG}) is not valid UTF-8 near byte {}; save it as UTF-8",
                path.display(),
                e.utf8_error().valid_up_to()
            ))
        })?;
        Ok(ApiKey::from_text(&text))
    }

    /// The key in environment variable `var`; `None` when it is unset, empty or blank.
    pub fn from_env(var: &str) -> Option<ApiKey> {
        ApiKey::from_text(&std::env::var(var).ok()?)
    }

    fn from_text(text: &str) -> Option<ApiKey> {
        let key = text.trim();
        (!key.is_empty()).then(|| ApiKey(key.to_string()))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Removes known secrets (the API key, every `--header` value) from text that came from a
/// server, before it is stored, logged or printed: a misconfigured proxy or a hostile server can
/// echo the `Authorization` or `X-Api-Key` it received in an error message.
#[derive(Clone, Default)]
pub struct Scrubber {
    /// Longest first, so a secret that contains another is replaced whole.
    secrets: Vec<String>,
}

impl Scrubber {
    /// Values shorter than this are not treated as secrets: replacing every `1` or `on` would
    /// garble messages, and a secret that short protects nothing.
    const MIN_LEN: usize = 6;

    /// A scrubber for these header values. An `Authorization` value such as `Bearer sk-...`
    /// also scrubs its last word alone (the key as a server might quote it).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut secrets: Vec<String> = Vec::new();
        for value in values {
            let value = value.trim();
            let word = value.rsplit(' ').next().unwrap_or(value);
            for s in [value, word] {
                if s.len() >= Self::MIN_LEN && !secrets.iter().any(|k| k == s) {
                    secrets.push(s.to_string());
                }
            }
        }
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Scrubber { secrets }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `text` with every secret replaced by [`REDACTED`].
    pub fn scrub<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        let mut out = std::borrow::Cow::Borrowed(text);
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = std::borrow::Cow::Owned(out.replace(secret.as_str(), REDACTED));
            }
        }
        out
    }

    /// `bytes` (a response body) with every secret replaced; `None` when none occurs.
    pub fn scrub_bytes(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for secret in &self.secrets {
            let current = out.as_deref().unwrap_or(bytes);
            if let Some(replaced) = replace_bytes(current, secret.as_bytes(), REDACTED.as_bytes()) {
                out = Some(replaced);
            }
        }
        out
    }
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrubber({} secrets)", self.secrets.len())
    }
}

/// `hay` with every `needle` replaced by `with`; `None` when there is none.
fn replace_bytes(hay: &[u8], needle: &[u8], with: &[u8]) -> Option<Vec<u8>> {
    let first = hay.windows(needle.len()).position(|w| w == needle)?;
    let mut out = Vec::with_capacity(hay.len());
    out.extend_from_slice(&hay[..first]);
    let mut rest = &hay[first..];
    while !rest.is_empty() {
        if rest.starts_with(needle) {
            out.extend_from_slice(with);
            rest = &rest[needle.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A variable no one else sets; the test only reads it, so it must stay unset.
    const UNSET: &str = "BATCH_TEST_SECRET_RS_UNSET_KEY_VARIABLE";

    #[test]
    fn known_secrets_are_scrubbed_from_text_and_bytes() {
        let s = Scrubber::new(["Bearer sk-live-123456", "gateway-token-9", "on", "v1"]);
        let echoed =
            "bad auth 'Bearer sk-live-123456'; key sk-live-123456; x-gw gateway-token-9, on v1";
        assert_eq!(
            s.scrub(echoed),
            "bad auth '[redacted]'; key [redacted]; x-gw [redacted], on v1"
        );
        assert!(matches!(
            s.scrub("nothing here"),
            std::borrow::Cow::Borrowed(_)
        ));
        let body = b"{\"error\": \"got sk-live-123456 \xff\"}";
        let clean = s.scrub_bytes(body).unwrap();
        assert_eq!(clean, b"{\"error\": \"got [redacted] \xff\"}".to_vec());
        assert_eq!(s.scrub_bytes(b"{}"), None);
        assert!(Scrubber::new(["short"]).is_empty());
    }

    #[test]
    fn a_key_file_is_trimmed_and_wins_over_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key.txt");
        std::fs::write(&file, "  sk-test-123\n").unwrap();
        let key = ApiKey::lookup(UNSET, Some(&file)).unwrap().unwrap();
        assert_eq!(key.expose(), "sk-test-123");
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
        assert_eq!(
            ApiKey::from_file(&file).unwrap().unwrap().expose(),
            "sk-test-123"
        );
    }

    #[test]
    fn a_blank_file_or_an_unset_variable_is_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key.txt");
        std::fs::write(&file, "\n \n").unwrap();
        assert!(ApiKey::from_file(&file).unwrap().is_none());
        assert!(ApiKey::from_env(UNSET).is_none());
        assert!(ApiKey::lookup(UNSET, None).unwrap().is_none());
        // A variable's value is taken as a file's is (set_var would race with other tests).
        assert_eq!(ApiKey::from_text("sk-env\n").unwrap().expose(), "sk-env");
        assert!(ApiKey::from_text("  ").is_none());
    }

    #[test]
    fn an_unreadable_file_is_named_with_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.txt");
        let msg = ApiKey::lookup(UNSET, Some(&missing))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("cannot read") && msg.contains("missing.txt"),
            "{msg}"
        );
        assert!(
            msg.contains("(given to --api-key-file): no such file"),
            "{msg}"
        );

        let binary = dir.path().join("key.bin");
        std::fs::write(&binary, b"sk-\xff").unwrap();
        let msg = ApiKey::from_file(&binary).unwrap_err().to_string();
        assert!(msg.contains("is not valid UTF-8 near byte 3"), "{msg}");
    }
}

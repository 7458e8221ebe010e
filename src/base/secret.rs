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

#[cfg(test)]
mod tests {
    use super::*;

    /// A variable no one else sets; the test only reads it, so it must stay unset.
    const UNSET: &str = "BATCH_TEST_SECRET_RS_UNSET_KEY_VARIABLE";

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

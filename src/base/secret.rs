//! The API key, kept out of every log line and message.

use std::fmt;

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
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

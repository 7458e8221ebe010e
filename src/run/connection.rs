//! Where requests go: the endpoint as configured, and the connection a run opens to it. `--mock`
//! is resolved here and nowhere else: [`Connection::open`] starts the embedded server and hands
//! back a plain base URL and key, like any other server's.

use crate::base::error::Error;
use crate::base::secret::ApiKey;
use crate::engine::mock::{MockConfig, MockServer};

/// Where requests go, as configured.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// Start the embedded mock server and send everything there.
    Mock(MockConfig),
    /// A real (or self-hosted) OpenAI-compatible server.
    Remote {
        base_url: String,
        api_key: Option<ApiKey>,
    },
}

impl Endpoint {
    pub fn is_mock(&self) -> bool {
        matches!(self, Endpoint::Mock(_))
    }

    /// The name a run's requests are identified by in the journal and the cache: the embedded
    /// mock listens on a new port each run, so it is "mock"; any other server is its base URL.
    pub fn name(&self) -> &str {
        match self {
            Endpoint::Mock(_) => "mock",
            Endpoint::Remote { base_url, .. } => base_url,
        }
    }

    /// Whether the run must learn the server's rate limits from its headers, holding all but
    /// one request until the first answer. Not for the embedded mock without limits: the run
    /// starts it and knows it has none, so the probe would only cost a round trip.
    pub fn learns_limits(&self) -> bool {
        match self {
            Endpoint::Mock(mc) => mc.rpm.is_some() || mc.tpm.is_some(),
            Endpoint::Remote { .. } => true,
        }
    }

    /// The base URL when requests go to a real API: not the mock, not a server on this machine.
    pub fn real_api(&self) -> Option<&str> {
        match self {
            Endpoint::Mock(_) => None,
            Endpoint::Remote { base_url, .. } => {
                let local = reqwest::Url::parse(base_url).is_ok_and(|u| is_loopback(&u));
                (!local).then_some(base_url.as_str())
            }
        }
    }

    /// For people: the mock with its settings, or the base URL.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Mock(m) => {
                let mut s = format!("the mock ({} ms latency", m.latency.as_millis());
                if !m.jitter.is_zero() {
                    s.push_str(&format!(" + up to {} ms", m.jitter.as_millis()));
                }
                if let Some(c) = m.capacity {
                    s.push_str(&format!(", capacity {c}"));
                }
                if let Some(r) = m.rpm {
                    s.push_str(&format!(", {r} rpm"));
                }
                if let Some(t) = m.tpm {
                    s.push_str(&format!(", {t} tpm"));
                }
                s.push(')');
                s
            }
            Endpoint::Remote { base_url, .. } => base_url.clone(),
        }
    }
}

/// An open way to the server: its base URL and key, and, for `--mock`, the started server
/// (stopped when this is dropped).
pub struct Connection {
    pub base_url: String,
    pub api_key: Option<ApiKey>,
    /// See [`Endpoint::name`].
    pub name: String,
    mock: Option<MockServer>,
}

impl Connection {
    /// Starts the embedded mock for [`Endpoint::Mock`]; a remote endpoint needs nothing started.
    pub async fn open(endpoint: &Endpoint) -> Result<Self, Error> {
        match endpoint {
            Endpoint::Mock(mc) => {
                let server = MockServer::start(mc.clone())
                    .await
                    .map_err(|e| Error::io("cannot start the mock server on 127.0.0.1", e))?;
                Ok(Connection {
                    base_url: server.base_url(),
                    // The mock checks that a key is sent, as the real APIs do; any key will do.
                    api_key: Some(ApiKey::placeholder()),
                    name: endpoint.name().to_string(),
                    mock: Some(server),
                })
            }
            Endpoint::Remote { base_url, api_key } => Ok(Connection {
                base_url: base_url.clone(),
                api_key: api_key.clone(),
                name: endpoint.name().to_string(),
                mock: None,
            }),
        }
    }

    /// `url` (one under [`Connection::base_url`]) with the base replaced by the endpoint's
    /// stable name, so that a resumed run and the cache recognise the mock's requests as the
    /// same whatever port it listens on.
    pub fn stable_url(&self, url: &str) -> String {
        if self.mock.is_some() {
            url.replacen(&self.base_url, "mock:", 1)
        } else {
            url.to_string()
        }
    }
}

/// Local servers (vLLM, Ollama, the mock) usually need no key.
pub fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_api_is_anything_but_the_mock_and_this_machine() {
        let remote = |u: &str| Endpoint::Remote {
            base_url: u.into(),
            api_key: None,
        };
        assert_eq!(
            Endpoint::real_api(&remote("https://api.openai.com/v1")),
            Some("https://api.openai.com/v1")
        );
        assert_eq!(
            Endpoint::real_api(&remote("http://127.0.0.1:8000/v1")),
            None
        );
        assert_eq!(
            Endpoint::real_api(&remote("http://localhost:11434/v1")),
            None
        );
        assert_eq!(Endpoint::real_api(&remote("http://[::1]:8000/v1")), None);
        assert_eq!(
            Endpoint::real_api(&Endpoint::Mock(Default::default())),
            None
        );
    }
}

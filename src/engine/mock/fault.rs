//! Transport and body faults the mock injects into accepted requests (`--fault KIND=RATE`): the
//! failures a client meets behind proxies and on self-hosted servers, beyond clean status codes.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// The connection is closed without a response.
    Reset,
    /// 200 with the full Content-Length, but the connection closes halfway through the body.
    Truncated,
    /// 200 whose body is cut-off JSON (with a matching Content-Length).
    Malformed,
    /// 200 with valid JSON that has no `choices` and no `usage`.
    MissingFields,
    /// 200 whose body arrives a few bytes at a time over `--trickle-ms`.
    Trickle,
    /// No response at all until the client gives up.
    Hang,
}

impl FaultKind {
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Reset,
        FaultKind::Truncated,
        FaultKind::Malformed,
        FaultKind::MissingFields,
        FaultKind::Trickle,
        FaultKind::Hang,
    ];

    /// The name used on the command line and in `/stats`.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Reset => "reset",
            FaultKind::Truncated => "truncated",
            FaultKind::Malformed => "malformed",
            FaultKind::MissingFields => "missing-fields",
            FaultKind::Trickle => "trickle",
            FaultKind::Hang => "hang",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<_> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown fault {s:?}; the kinds are {}", names.join(", "))
            })
    }
}

/// `KIND=RATE` (or `KIND:RATE`): inject fault KIND into that fraction of accepted requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultSpec {
    pub kind: FaultKind,
    pub rate: f64,
}

impl FromStr for FaultSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, rate) = s
            .split_once(['=', ':'])
            .ok_or_else(|| format!("{s:?} is not KIND=RATE, e.g. reset=0.05"))?;
        let kind = kind.parse()?;
        let rate: f64 = rate
            .trim()
            .parse()
            .map_err(|_| format!("fault rate {rate:?} is not a number"))?;
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("fault rate {rate} is not between 0 and 1"));
        }
        Ok(FaultSpec { kind, rate })
    }
}

/// Picks at most one fault with one roll `u` in [0, 1) over the cumulative rates.
pub(super) fn pick(faults: &[FaultSpec], u: f64) -> Option<FaultKind> {
    let mut edge = 0.0;
    for f in faults {
        edge += f.rate;
        if u < edge {
            return Some(f.kind);
        }
    }
    None
}

fn response(status: StatusCode, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn aborted() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, "mock fault")
}

/// A response whose body fails before its first byte: hyper drops the connection without having
/// sent anything.
pub(super) fn reset() -> Response {
    let stream = futures::stream::once(async { Err::<Bytes, _>(aborted()) });
    response(StatusCode::OK, Body::from_stream(stream))
}

/// 200 announcing the full length of `body`, of which only the first half is sent before the
/// connection is closed.
pub(super) fn truncated(body: String) -> Response {
    let body = Bytes::from(body);
    let len = body.len();
    let half = body.slice(..len / 2);
    let stream = futures::stream::unfold(Some(half), |state| async move {
        match state {
            Some(half) => Some((Ok(half), None)),
            None => {
                // Let hyper flush the first half before the error makes it drop the connection.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Err(aborted()), None))
            }
        }
    });
    let mut resp = response(StatusCode::OK, Body::from_stream(stream));
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// 200 whose body is the first half of `body`: not JSON, with a correct Content-Length.
pub(super) fn malformed(body: String) -> Response {
    let body = Bytes::from(body);
    response(StatusCode::OK, Body::from(body.slice(..body.len() / 2)))
}

/// 200 with a completion object that lacks `choices` and `usage`.
pub(super) fn missing_fields(model: &str, n: u64) -> Response {
    let body = serde_json::json!({
        "id": format!("chatcmpl-mock{n}"),
        "object": "chat.completion",
        "created": super::unix_now(),
        "model": model,
        "system_fingerprint": "fp_mock",
    });
    response(StatusCode::OK, Body::from(body.to_string()))
}

/// 200 whose body goes out a few bytes at a time, the first at once and the last after `over`.
/// `keep` lives as long as the body (dropped when it is done or the client goes away);
/// `on_done` runs when the last bytes are handed to the connection.
pub(super) fn trickle(
    body: String,
    over: Duration,
    keep: impl Send + 'static,
    on_done: impl FnOnce() + Send + 'static,
) -> Response {
    const CHUNK: usize = 8;
    let body = Bytes::from(body);
    let len = body.len();
    let chunks = len.div_ceil(CHUNK).max(1);
    let start = tokio::time::Instant::now();
    let stream = futures::stream::unfold(
        (0usize, Some(on_done), keep),
        move |(i, mut on_done, keep)| {
            let body = body.clone();
            async move {
                if i >= chunks {
                    return None;
                }
                if i > 0 {
                    let at = over.mul_f64(i as f64 / (chunks - 1) as f64);
                    tokio::time::sleep_until(start + at).await;
                }
                let chunk = body.slice((i * CHUNK).min(len)..((i + 1) * CHUNK).min(len));
                if i + 1 == chunks
                    && let Some(done) = on_done.take()
                {
                    done();
                }
                Some((Ok::<_, Infallible>(chunk), (i + 1, on_done, keep)))
            }
        },
    );
    let mut resp = response(StatusCode::OK, Body::from_stream(stream));
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_equals_or_colon() {
        let f: FaultSpec = "reset=0.05".parse().unwrap();
        assert_eq!((f.kind, f.rate), (FaultKind::Reset, 0.05));
        let f: FaultSpec = "missing-fields:1".parse().unwrap();
        assert_eq!((f.kind, f.rate), (FaultKind::MissingFields, 1.0));
        assert!("reset".parse::<FaultSpec>().is_err());
        assert!("nope=0.1".parse::<FaultSpec>().is_err());
        assert!("hang=1.5".parse::<FaultSpec>().is_err());
        assert!("hang=x".parse::<FaultSpec>().is_err());
    }

    #[test]
    fn one_roll_picks_at_most_one_fault() {
        let faults = [
            FaultSpec {
                kind: FaultKind::Reset,
                rate: 0.25,
            },
            FaultSpec {
                kind: FaultKind::Hang,
                rate: 0.25,
            },
        ];
        assert_eq!(pick(&faults, 0.1), Some(FaultKind::Reset));
        assert_eq!(pick(&faults, 0.3), Some(FaultKind::Hang));
        assert_eq!(pick(&faults, 0.5), None);
        assert_eq!(pick(&[], 0.0), None);
    }
}

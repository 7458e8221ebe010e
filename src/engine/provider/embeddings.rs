//! OpenAI Embeddings (`POST {base}/embeddings`), also served by vLLM, Ollama, LiteLLM and the
//! mock: many texts in one request, one vector each.
//!
//! Vectors are asked for with `encoding_format: "base64"` (little-endian f32, a third of the
//! bytes of a JSON float array); a server that ignores it and answers with float arrays works
//! too. Errors are classified by the chat provider's [`openai::classify_error`], so a 429, a
//! quota, a 401 or a 400 mean here what they mean for prompts.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};

use super::openai::{auth_headers, classify_error, request_id};
use super::{
    CallError, Completion, ErrorKind, ExtraHeaders, RateLimitHeaders, Transport, request_hash,
};
use crate::base::secret::ApiKey;
use crate::base::usage::Usage;

/// One request's body: the texts of several rows, in order.
#[derive(Debug, Serialize)]
struct Body<'a> {
    model: &'a str,
    input: &'a [&'a str],
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
    encoding_format: &'static str,
}

/// The JSON body asking for the vectors of `inputs`.
pub fn body(model: &str, inputs: &[&str], dimensions: Option<u32>) -> Vec<u8> {
    serde_json::to_vec(&Body {
        model,
        input: inputs,
        dimensions,
        encoding_format: "base64",
    })
    .expect("an embeddings body serializes")
}

/// The width of `model`'s vectors without `dimensions`, for OpenAI's models (also under a
/// prefix, as LiteLLM names them: `openai/text-embedding-3-small`); `None` for others.
pub fn native_dims(model: &str) -> Option<usize> {
    let name = model.rsplit('/').next().unwrap_or(model);
    match name {
        "text-embedding-3-small" | "text-embedding-ada-002" => Some(1536),
        "text-embedding-3-large" => Some(3072),
        _ => None,
    }
}

/// What identifies one row's vector (resume, cache): the endpoint, the model, the dimensions and
/// the text, hashed as the body of a request for that text alone would be, so that how rows
/// happen to be packed together never changes it.
pub fn row_hash(endpoint: &str, model: &str, dimensions: Option<u32>, text: &str) -> String {
    request_hash(endpoint, &body(model, &[text], dimensions))
}

/// A successful answer: one vector per input, in input order, each as base64 of its
/// little-endian f32s (as the wire and the journal carry it).
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<String>,
    /// The request's input tokens as the server counted them.
    pub prompt_tokens: u64,
    pub model: Option<String>,
    pub request_id: Option<String>,
    pub rate_limits: Option<RateLimitHeaders>,
}

impl Embeddings {
    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            ..Usage::default()
        }
    }
}

/// One attempt's outcome, with the HTTP status when a response arrived.
pub struct Attempt {
    pub outcome: Result<Embeddings, CallError>,
    pub status: Option<u16>,
}

/// Sends embeddings requests to one server.
pub struct EmbeddingsProvider {
    transport: Transport,
}

impl EmbeddingsProvider {
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        key: Option<&ApiKey>,
        extra: &ExtraHeaders,
    ) -> Self {
        let base = base_url.trim_end_matches('/');
        let url = format!("{base}/embeddings");
        EmbeddingsProvider {
            transport: Transport::new(client, url, auth_headers(key), extra),
        }
    }

    /// Where requests go.
    pub fn endpoint(&self) -> &str {
        self.transport.url()
    }

    /// Sends one request of `inputs` texts. The transport scrubs secrets from the body and
    /// classifies a non-200; the vectors are read from the scrubbed body here.
    pub async fn send(&self, body: bytes::Bytes, inputs: usize) -> Attempt {
        let exchange = self.transport.post(body, head_only, classify_error).await;
        let outcome = match (exchange.outcome, exchange.body) {
            (Ok(head), Some(body)) => parse(&body, inputs, head.request_id).map(|mut e| {
                e.rate_limits = head.rate_limits;
                e
            }),
            (Ok(head), None) => Err(CallError::in_200(
                ErrorKind::InvalidResponse,
                head.request_id,
                "response has no body".into(),
            )),
            (Err(e), _) => Err(e),
        };
        Attempt {
            outcome,
            status: exchange.status,
        }
    }
}

/// The transport's 200 parser: only what the headers say (the body is read by [`parse`], once).
fn head_only(_body: &[u8], headers: &HeaderMap) -> Result<Completion, CallError> {
    Ok(Completion {
        text: String::new(),
        usage: Usage::default(),
        finish_reason: None,
        model: None,
        request_id: request_id(headers),
        rate_limits: RateLimitHeaders::parse(headers, std::time::SystemTime::now()),
    })
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    data: Vec<Item>,
    model: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Item {
    index: Option<usize>,
    embedding: Vector,
}

/// A vector as base64 (asked for) or as a JSON array (servers that ignore the ask).
#[derive(Deserialize)]
#[serde(untagged)]
enum Vector {
    Base64(String),
    Floats(Vec<f32>),
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

/// Reads a 200 body of `inputs` vectors. A body that is not a complete answer (bad JSON, a
/// vector missing, empty or twice, vectors of different lengths, base64 that is no f32s) is an
/// `InvalidResponse`, retried like any garbled body.
pub fn parse(
    body: &[u8],
    inputs: usize,
    request_id: Option<String>,
) -> Result<Embeddings, CallError> {
    let invalid =
        |msg: String| CallError::in_200(ErrorKind::InvalidResponse, request_id.clone(), msg);
    let resp: Response = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("response is not valid embeddings JSON: {e}")))?;
    if resp.data.len() != inputs {
        return Err(invalid(format!(
            "response has {} embeddings for {inputs} inputs",
            resp.data.len()
        )));
    }
    let mut vectors: Vec<Option<String>> = vec![None; inputs];
    for (at, item) in resp.data.into_iter().enumerate() {
        let i = item.index.unwrap_or(at);
        let slot = vectors
            .get_mut(i)
            .ok_or_else(|| invalid(format!("embedding index {i} is out of range")))?;
        let b64 = match item.embedding {
            Vector::Base64(s) => {
                decode(&s).map_err(|e| invalid(format!("embedding {i}: {e}")))?;
                s
            }
            Vector::Floats(v) => encode(&v),
        };
        // No vector has 0 values; accepted, it would fail the whole Parquet file at the end.
        if b64.is_empty() {
            return Err(invalid(format!("embedding {i} is empty (0 values)")));
        }
        if slot.replace(b64).is_some() {
            return Err(invalid(format!("embedding index {i} appears twice")));
        }
    }
    let vectors: Vec<String> = vectors.into_iter().map(Option::unwrap_or_default).collect();
    let dims: Vec<usize> = vectors.iter().map(|v| v.len()).collect();
    if dims.windows(2).any(|w| w[0] != w[1]) {
        return Err(invalid(
            "embeddings of different lengths in one response".into(),
        ));
    }
    let u = resp.usage.as_ref();
    Ok(Embeddings {
        vectors,
        prompt_tokens: u
            .and_then(|u| u.prompt_tokens.or(u.total_tokens))
            .unwrap_or(0),
        model: resp.model,
        request_id,
        rate_limits: None,
    })
}

/// A vector's f32s from base64 of their little-endian bytes.
pub fn decode(b64: &str) -> Result<Vec<f32>, String> {
    let bytes = BASE64
        .decode(b64)
        .map_err(|e| format!("invalid base64 ({e})"))?;
    if bytes.len() % 4 != 0 {
        return Err(format!(
            "{} bytes of base64 data are not a whole number of float32s",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Base64 of `v`'s little-endian bytes: the journal's and the cache's form of a vector.
pub fn encode(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
    BASE64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_little_endian_f32() {
        let v = [0.25f32, -1.5, 3.0e-8, f32::MAX];
        let b64 = encode(&v);
        assert_eq!(decode(&b64).unwrap(), v);
        // 1.0f32 is 00 00 80 3f in little-endian order.
        assert_eq!(encode(&[1.0]), BASE64.encode([0x00, 0x00, 0x80, 0x3f]));
        assert_eq!(decode("AACAPw==").unwrap(), [1.0]);
        assert!(decode("AACA").unwrap_err().contains("whole number"));
        assert!(
            decode("not base64!")
                .unwrap_err()
                .contains("invalid base64")
        );
    }

    #[test]
    fn answers_in_base64_or_floats_and_any_order_are_read_in_input_order() {
        let one = encode(&[1.0, 0.0]);
        let body = format!(
            r#"{{"object":"list","data":[{{"index":1,"embedding":"{one}"}},
            {{"index":0,"embedding":[0.0,1.0]}}],"model":"m","usage":{{"prompt_tokens":7,"total_tokens":7}}}}"#
        );
        let e = parse(body.as_bytes(), 2, None).unwrap();
        assert_eq!(decode(&e.vectors[0]).unwrap(), [0.0, 1.0]);
        assert_eq!(decode(&e.vectors[1]).unwrap(), [1.0, 0.0]);
        assert_eq!(e.prompt_tokens, 7);
        assert_eq!(e.model.as_deref(), Some("m"));
    }

    #[test]
    fn incomplete_answers_are_invalid_responses() {
        let v = encode(&[1.0]);
        for (body, says) in [
            ("not json".to_string(), "not valid"),
            (
                format!(r#"{{"data":[{{"index":0,"embedding":"{v}"}}]}}"#),
                "1 embeddings for 2",
            ),
            (
                format!(
                    r#"{{"data":[{{"index":0,"embedding":"{v}"}},{{"index":0,"embedding":"{v}"}}]}}"#
                ),
                "twice",
            ),
            (
                format!(
                    r#"{{"data":[{{"index":0,"embedding":"{v}"}},{{"index":5,"embedding":"{v}"}}]}}"#
                ),
                "out of range",
            ),
            (
                r#"{"data":[{"index":0,"embedding":[1.0]},{"index":1,"embedding":[1.0,2.0]}]}"#
                    .into(),
                "different lengths",
            ),
            (
                r#"{"data":[{"index":0,"embedding":""},{"index":1,"embedding":""}]}"#.into(),
                "embedding 0 is empty",
            ),
            (
                r#"{"data":[{"index":0,"embedding":[1.0]},{"index":1,"embedding":[]}]}"#.into(),
                "embedding 1 is empty",
            ),
        ] {
            let e = parse(body.as_bytes(), 2, None).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidResponse, "{body}");
            assert!(e.message.contains(says), "{says}: {}", e.message);
        }
    }

    #[test]
    fn body_asks_for_base64_and_row_hash_ignores_packing() {
        let b: serde_json::Value =
            serde_json::from_slice(&body("text-embedding-3-small", &["a", "b"], Some(8))).unwrap();
        assert_eq!(b["encoding_format"], "base64");
        assert_eq!(b["input"], serde_json::json!(["a", "b"]));
        assert_eq!(b["dimensions"], 8);
        let none: serde_json::Value = serde_json::from_slice(&body("m", &["a"], None)).unwrap();
        assert!(none.get("dimensions").is_none());
        let h = |d, t| row_hash("mock:/embeddings", "m", d, t);
        assert_eq!(h(None, "a"), h(None, "a"));
        assert_ne!(h(None, "a"), h(Some(8), "a"));
        assert_ne!(h(None, "a"), h(None, "b"));
    }
}

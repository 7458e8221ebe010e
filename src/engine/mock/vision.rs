//! The mock's checks of attached files, in each wire format's content parts: the shape, the
//! base64, the media type against the bytes, the provider's size, pixel and page limits (with
//! [`Loader::check`], as the pre-flight does), and the prompt tokens they cost by the same
//! formulas ([`Attachment::tokens`]). A file whose bytes contain [`BAD_IMAGE`] is refused as
//! the APIs refuse an image they cannot decode, so tests and demos can fail some rows on
//! purpose. URLs are not fetched: they cost what the estimate says for a URL.

use base64::Engine as _;
use serde_json::Value;

use crate::engine::attach::{Attachment, Kind, Limits, Loader, Media};

/// Bytes that make the mock refuse a file ("could not process image").
pub const BAD_IMAGE: &[u8] = b"BAD-IMAGE";

/// The content parts' wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavor {
    Chat,
    Responses,
    Messages,
}

impl Flavor {
    fn limits(self) -> Limits {
        match self {
            Flavor::Chat => Limits::openai(true),
            Flavor::Responses => Limits::openai(false),
            Flavor::Messages => Limits::anthropic(),
        }
    }
}

/// Prompt tokens of the files among `parts` (a user message's content array) on `model`, or
/// the message of the 400 for the first part that is wrong.
pub(super) fn tokens(flavor: Flavor, model: &str, parts: &[Value]) -> Result<u64, String> {
    let mut total = 0u64;
    for (i, part) in parts.iter().enumerate() {
        let found = match flavor {
            Flavor::Chat => chat_part(part),
            Flavor::Responses => responses_part(part),
            Flavor::Messages => messages_block(part),
        }
        .map_err(|e| format!("content[{i}]: {e}"))?;
        if let Some(file) = found {
            let a = checked(flavor, file).map_err(|e| format!("content[{i}]: {e}"))?;
            total += u64::from(a.tokens(model));
        }
    }
    Ok(total)
}

/// A file found in a part: its kind, and its bytes with the declared media type or a URL.
struct Found<'a> {
    kind: Kind,
    detail: Option<crate::engine::attach::Detail>,
    payload: Payload<'a>,
}

/// Borrowed from the request: a picture's base64 is hundreds of kB, not worth a copy.
enum Payload<'a> {
    Bytes { declared: &'a str, data: &'a str },
    Url(&'a str),
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn kind_of(part: &Value) -> Result<&str, String> {
    part.get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| "each part needs a \"type\"".to_string())
}

/// `data:<mime>;base64,<data>`, or an http(s) URL.
fn url_payload(url: &str) -> Result<Payload<'_>, String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(Payload::Url(url));
    }
    let rest = url
        .strip_prefix("data:")
        .ok_or("expected a data: URL or an http(s) URL")?;
    let (head, data) = rest.split_once(',').ok_or("a data: URL needs a comma")?;
    let declared = head
        .strip_suffix(";base64")
        .ok_or("a data: URL must be base64 (data:<type>;base64,...)")?;
    Ok(Payload::Bytes { declared, data })
}

fn detail_of(v: Option<&str>) -> Result<Option<crate::engine::attach::Detail>, String> {
    use crate::engine::attach::Detail;
    match v {
        None => Ok(None),
        Some("low") => Ok(Some(Detail::Low)),
        Some("high") => Ok(Some(Detail::High)),
        Some("auto") => Ok(Some(Detail::Auto)),
        Some(d) => Err(format!("invalid detail {d:?}: expected low, high or auto")),
    }
}

fn chat_part(part: &Value) -> Result<Option<Found<'_>>, String> {
    match kind_of(part)? {
        "text" => Ok(None),
        "image_url" => {
            let url = str_at(part, &["image_url", "url"]).ok_or("image_url.url is required")?;
            Ok(Some(Found {
                kind: Kind::Image,
                detail: detail_of(str_at(part, &["image_url", "detail"]))?,
                payload: url_payload(url)?,
            }))
        }
        "file" => {
            str_at(part, &["file", "filename"]).ok_or("file.filename is required")?;
            let data = str_at(part, &["file", "file_data"]).ok_or("file.file_data is required")?;
            match url_payload(data)? {
                Payload::Url(_) => Err("file.file_data must be a base64 data: URL".into()),
                payload => Ok(Some(Found {
                    kind: Kind::File,
                    detail: None,
                    payload,
                })),
            }
        }
        other => Err(format!("unknown content part type {other:?}")),
    }
}

fn responses_part(part: &Value) -> Result<Option<Found<'_>>, String> {
    match kind_of(part)? {
        "input_text" => Ok(None),
        "input_image" => {
            let url = str_at(part, &["image_url"]).ok_or("input_image needs an image_url")?;
            Ok(Some(Found {
                kind: Kind::Image,
                detail: detail_of(str_at(part, &["detail"]))?,
                payload: url_payload(url)?,
            }))
        }
        "input_file" => {
            let payload = match (str_at(part, &["file_data"]), str_at(part, &["file_url"])) {
                (Some(data), None) => {
                    str_at(part, &["filename"])
                        .ok_or("input_file with file_data needs a filename")?;
                    url_payload(data)?
                }
                (None, Some(url)) => Payload::Url(url),
                _ => return Err("input_file needs one of file_data and file_url".into()),
            };
            Ok(Some(Found {
                kind: Kind::File,
                detail: None,
                payload,
            }))
        }
        other => Err(format!("unknown content part type {other:?}")),
    }
}

fn messages_block(part: &Value) -> Result<Option<Found<'_>>, String> {
    let kind = match kind_of(part)? {
        "text" => return Ok(None),
        "image" => Kind::Image,
        "document" => Kind::File,
        other => return Err(format!("unknown content block type {other:?}")),
    };
    let source = part.get("source").ok_or("source: Field required")?;
    let payload = match str_at(source, &["type"]) {
        Some("base64") => Payload::Bytes {
            declared: str_at(source, &["media_type"]).ok_or("source.media_type: Field required")?,
            data: str_at(source, &["data"]).ok_or("source.data: Field required")?,
        },
        Some("url") => Payload::Url(str_at(source, &["url"]).ok_or("source.url: Field required")?),
        _ => return Err("source.type: Input should be 'base64' or 'url'".into()),
    };
    Ok(Some(Found {
        kind,
        detail: None,
        payload,
    }))
}

/// The file decoded and checked as the provider would.
fn checked(flavor: Flavor, found: Found) -> Result<Attachment, String> {
    let loader = Loader {
        base: Default::default(),
        limits: flavor.limits(),
        detail: found.detail,
        any_path: false,
        resize: None,
    };
    let (declared, data) = match found.payload {
        Payload::Url(url) => {
            return Ok(Attachment {
                kind: found.kind,
                media: None,
                url: Some(url.to_string()),
                base64: std::sync::Arc::from(""),
                sha256: String::new(),
                bytes: 0,
                size: None,
                pages: crate::engine::attach::URL_PAGES,
                detail: found.detail,
                scaled_from: None,
            });
        }
        Payload::Bytes { declared, data } => (declared, data),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("the file data is not valid base64 ({e})"))?;
    let declared =
        Media::from_mime(declared).ok_or_else(|| format!("unsupported media type {declared:?}"))?;
    if Media::sniff(&bytes) != Some(declared) {
        return Err(format!(
            "the file does not match the provided media type {}",
            declared.mime()
        ));
    }
    // memmem, not a byte-by-byte window compare: this runs on every picture the mock gets.
    if memchr::memmem::find(&bytes, BAD_IMAGE).is_some() {
        return Err("Could not process image".into());
    }
    loader.check(found.kind, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        b.extend_from_slice(&w.to_be_bytes());
        b.extend_from_slice(&h.to_be_bytes());
        b.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        b
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn counts_each_formats_files_and_refuses_bad_ones() {
        let data = b64(&png(1024, 1024));
        let chat = [
            json!({"type": "text", "text": "hi"}),
            json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{data}"), "detail": "high"}}),
        ];
        assert_eq!(tokens(Flavor::Chat, "gpt-4o", &chat), Ok(765));
        let msgs = [
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}),
        ];
        assert_eq!(
            tokens(Flavor::Messages, "claude-sonnet-4-5", &msgs),
            Ok(1399)
        );
        let wrong = [
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": data}}),
        ];
        assert!(
            tokens(Flavor::Messages, "claude-x", &wrong)
                .unwrap_err()
                .contains("does not match")
        );
        let junk = [
            json!({"type": "input_image", "image_url": "data:image/png;base64,@@", "detail": "auto"}),
        ];
        assert!(
            tokens(Flavor::Responses, "gpt-4o", &junk)
                .unwrap_err()
                .contains("base64")
        );
        let mut bad = png(10, 10);
        bad.extend_from_slice(BAD_IMAGE);
        let bad = [
            json!({"type": "input_image", "image_url": format!("data:image/png;base64,{}", b64(&bad)), "detail": "low"}),
        ];
        assert!(
            tokens(Flavor::Responses, "gpt-4o", &bad)
                .unwrap_err()
                .contains("Could not process")
        );
        let pdf = [
            json!({"type": "file", "file": {"filename": "a.pdf", "file_data": format!("data:application/pdf;base64,{}", b64(b"%PDF-1.4 /Type /Page"))}}),
        ];
        assert_eq!(
            tokens(Flavor::Chat, "gpt-4o", &pdf),
            Ok(u64::from(crate::engine::attach::PAGE_TOKENS))
        );
    }
}

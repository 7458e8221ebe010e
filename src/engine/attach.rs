//! Files attached to a row (`{{ image(col) }}`, `{{ file(col) }}`): where a cell points (a path
//! relative to the input file, an `http(s)` URL or a `data:` URL), what the bytes are (sniffed
//! from their first bytes, never the extension), whether the provider takes them (size, pixels,
//! pages), what they cost in tokens (the providers' published formulas), and their base64 form.
//!
//! The pre-flight calls [`Loader::inspect`] on every attachment of every row before anything is
//! sent; the reader thread that builds jobs calls [`Loader::load`] (inspect, then encode) only
//! for the rows it is about to hand to the dispatcher, so the encoding never runs on an async
//! worker and only rows in flight hold their bytes. URLs are passed to the provider as they are
//! and never fetched here: their problems show up as the provider's error for that row.
//!
//! With `--max-image-px`, a picture over that size is scaled down ([`resize`]) where it is
//! read, in the pre-flight and on the reader thread alike, and everything after (limits,
//! tokens, the body) sees the scaled picture.
//!
//! The formulas and limits, with their sources, are in `docs/vision.md`.

pub mod resize;
pub use resize::Resizer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};

/// The folder paths are relative to, as shown in a message.
fn shown_base(base: &Path) -> String {
    match base.as_os_str().is_empty() {
        true => "\".\"".into(),
        false => format!("{:?}", base.display().to_string()),
    }
}

/// What a template function asked for: `image(...)` or `file(...)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image,
    File,
}

impl Kind {
    pub fn function(self) -> &'static str {
        match self {
            Kind::Image => "image",
            Kind::File => "file",
        }
    }
}

/// One attachment as the template rendered it: the kind and the cell as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub kind: Kind,
    pub cell: String,
}

/// The types the providers take, told apart by their magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Png,
    Jpeg,
    Gif,
    Webp,
    Pdf,
}

impl Media {
    /// The type of `bytes`, from their first bytes.
    pub fn sniff(bytes: &[u8]) -> Option<Media> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Media::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Media::Jpeg)
        } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
            Some(Media::Gif)
        } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Media::Webp)
        } else if bytes.starts_with(b"%PDF-") {
            Some(Media::Pdf)
        } else {
            None
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            Media::Png => "image/png",
            Media::Jpeg => "image/jpeg",
            Media::Gif => "image/gif",
            Media::Webp => "image/webp",
            Media::Pdf => "application/pdf",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Media::Png => "png",
            Media::Jpeg => "jpg",
            Media::Gif => "gif",
            Media::Webp => "webp",
            Media::Pdf => "pdf",
        }
    }

    pub fn from_mime(mime: &str) -> Option<Media> {
        [Media::Png, Media::Jpeg, Media::Gif, Media::Webp, Media::Pdf]
            .into_iter()
            .find(|m| m.mime() == mime)
    }

    pub fn is_image(self) -> bool {
        self != Media::Pdf
    }
}

/// `--image-detail`: OpenAI's `detail` on image parts (how many tiles a picture is cut into).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Detail {
    Low,
    High,
    Auto,
}

impl Detail {
    pub fn as_str(self) -> &'static str {
        match self {
            Detail::Low => "low",
            Detail::High => "high",
            Detail::Auto => "auto",
        }
    }
}

/// An attachment checked and, once loaded, encoded: everything a request body needs, and what
/// the token estimate and the audit log need after the payload is dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    pub kind: Kind,
    /// `None` for a URL (not fetched, so not sniffed).
    pub media: Option<Media>,
    /// An `http(s)` URL, sent as it is.
    pub url: Option<String>,
    /// The bytes in base64 (empty before [`Loader::load`] and after [`Attachment::strip`]).
    pub base64: Arc<str>,
    /// SHA-256 of the bytes (of the URL for a URL), in hex: names a PDF in a request body
    /// instead of its path, so a renamed file makes the same request. Empty for a local
    /// picture, whose parts have no name: hashing 40,000 photos for nothing is a tenth of a
    /// vision job's CPU (the audit log hashes what it replaces itself).
    pub sha256: String,
    pub bytes: u64,
    /// Pixels, for images whose header was read.
    pub size: Option<(u32, u32)>,
    /// Pages of a PDF (an estimate: see [`pdf_pages`]).
    pub pages: u32,
    pub detail: Option<Detail>,
    /// The picture's size before `--max-image-px` scaled it down (`size` is after).
    pub scaled_from: Option<(u32, u32)>,
}

impl Attachment {
    /// `data:<mime>;base64,<bytes>`, as OpenAI takes local files.
    pub fn data_url(&self) -> String {
        let mime = self.media.map_or("application/octet-stream", Media::mime);
        // Sized up front: a picture's is hundreds of kB, and `format!` would grow it by doubling.
        let mut url = String::with_capacity(mime.len() + 13 + self.base64.len());
        for piece in ["data:", mime, ";base64,", &self.base64] {
            url.push_str(piece);
        }
        url
    }

    /// The filename sent with a file: derived from the content hash, never the path, so the
    /// request (and so the cache and resume keys) follow the bytes, not where they lie.
    pub fn filename(&self) -> String {
        let ext = self.media.map_or("bin", Media::extension);
        format!("{}.{ext}", &self.sha256[..16.min(self.sha256.len())])
    }

    /// The same attachment without its payload: kept in the request for token counts once the
    /// body (which holds the bytes) is written.
    pub fn strip(&self) -> Attachment {
        Attachment {
            base64: Arc::from(""),
            ..self.clone()
        }
    }

    /// Prompt tokens this attachment costs on `model` (see [`image_tokens`], [`PAGE_TOKENS`]).
    pub fn tokens(&self, model: &str) -> u32 {
        let is_pdf =
            self.media == Some(Media::Pdf) || (self.media.is_none() && self.kind == Kind::File);
        if is_pdf {
            return self.pages.max(1).saturating_mul(PAGE_TOKENS);
        }
        let detail = self.detail.unwrap_or(Detail::Auto);
        match self.size {
            Some((w, h)) => image_tokens(model, w, h, detail),
            // A URL's picture is not fetched: the largest the formula can charge.
            None => [(2048, 768), (2048, 2048)]
                .iter()
                .map(|&(w, h)| image_tokens(model, w, h, detail))
                .max()
                .unwrap_or(0),
        }
    }
}

/// How much of a local image the pre-flight reads: its header (size and type) is at the start;
/// a JPEG whose size comes later (after a large EXIF block) is read whole.
pub const HEAD_BYTES: u64 = 64 * 1024;

/// Tokens counted for one page of a PDF: Anthropic documents 1,500 to 3,000 per page (its text
/// and an image of the page), OpenAI puts the same two into the context; the upper end, so
/// reservations and the spend cap are not short.
pub const PAGE_TOKENS: u32 = 3_000;
/// Pages assumed for a PDF given by URL (not fetched, so not counted).
pub const URL_PAGES: u32 = 10;

/// The provider's limits on one attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest image, in bytes as sent: Anthropic counts the base64 text (5 MB), OpenAI the
    /// file (20 MB).
    pub image_bytes: u64,
    pub image_counts_base64: bool,
    /// Largest side of an image, in pixels (Anthropic: 8000).
    pub image_px: Option<u32>,
    /// Largest PDF (32 MB) and most pages (100), both APIs.
    pub file_bytes: u64,
    pub pages: u32,
    /// Whether a PDF may be given by URL (Anthropic and Responses: yes; Chat: base64 only).
    pub file_urls: bool,
}

const MB: u64 = 1024 * 1024;

impl Limits {
    pub fn anthropic() -> Self {
        Limits {
            image_bytes: 5 * MB,
            image_counts_base64: true,
            image_px: Some(8000),
            file_bytes: 32 * MB,
            pages: 100,
            file_urls: true,
        }
    }

    /// OpenAI: `chat` takes PDFs only as base64 `file` parts.
    pub fn openai(chat: bool) -> Self {
        Limits {
            image_bytes: 20 * MB,
            image_counts_base64: false,
            image_px: None,
            file_bytes: 32 * MB,
            pages: 100,
            file_urls: !chat,
        }
    }
}

/// Resolves, checks and encodes the attachments of one run.
#[derive(Debug, Clone)]
pub struct Loader {
    /// Relative paths are relative to this folder (the input file's, or the working directory
    /// for stdin).
    pub base: PathBuf,
    pub limits: Limits,
    pub detail: Option<Detail>,
    /// `--allow-any-path`: paths may leave [`Loader::base`] (absolute, `..`, or a link out of
    /// it). Off by default, so a CSV from someone else cannot upload any image or PDF on the
    /// machine.
    pub any_path: bool,
    /// `--max-image-px`: pictures over it are scaled down before anything else looks at them.
    pub resize: Option<Resizer>,
}

impl Loader {
    /// Checks `w` without encoding it: the attachment with an empty payload and no hash. A
    /// local image is judged by its first [`HEAD_BYTES`] and its length, so the pre-flight of
    /// a large job does not read every picture whole. The error is a short reason naming the
    /// function and cell; the caller adds file and line.
    pub fn inspect(&self, w: &Wanted) -> Result<Attachment, String> {
        self.read(w, false).map(|(a, _)| a)
    }

    /// Checks `w`, hashes and encodes its bytes.
    pub fn load(&self, w: &Wanted) -> Result<Attachment, String> {
        let (mut a, bytes) = self.read(w, true)?;
        if let Some(bytes) = bytes {
            if a.kind == Kind::File {
                a.sha256 = hex(&Sha256::digest(&bytes));
            }
            a.base64 = Arc::from(BASE64.encode(&bytes));
        }
        Ok(a)
    }

    /// The file of `cell` (under [`Loader::base`]) checked; `whole` reads all of it, otherwise
    /// an image's header is enough.
    fn read_file(
        &self,
        kind: Kind,
        cell: &str,
        whole: bool,
        what: &str,
    ) -> Result<(Attachment, Option<Vec<u8>>), String> {
        use std::io::Read;
        let path = self.base.join(cell);
        let io = |e: std::io::Error| describe_io(what, &path, &e);
        self.inside_base(cell, &path)
            .map_err(|why| format!("{what}: {why}"))?;
        let mut file = std::fs::File::open(&path).map_err(io)?;
        let n = file.metadata().map_err(io)?.len();
        // The whole file's room when it is read whole, so the rest is read without growing.
        let mut bytes = Vec::with_capacity(match whole {
            true => usize::try_from(n.min(self.limits.file_bytes)).unwrap_or(0) + 1,
            false => HEAD_BYTES as usize,
        });
        file.by_ref()
            .take(HEAD_BYTES)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let partial = (bytes.len() as u64) < n;
        if partial && self.to_scale(&bytes).is_some() {
            // To be scaled down: its length as sent is that of the scaled copy.
            if n > resize::MAX_SOURCE_BYTES {
                return Err(format!(
                    "{what}: {}",
                    too_big(n, resize::MAX_SOURCE_BYTES, "a picture to scale down")
                ));
            }
            file.read_to_end(&mut bytes).map_err(io)?;
            return self.finish(kind, bytes).map_err(|e| format!("{what}: {e}"));
        }
        if partial {
            // Judged by its length before the rest is read: a 3 GB PDF is not loaded to be
            // refused.
            self.check_length(&bytes, n)
                .map_err(|e| format!("{what}: {e}"))?;
        }
        let checked = match partial && !whole && Media::sniff(&bytes) != Some(Media::Pdf) {
            true => self.check_sized(kind, &bytes, n),
            false => Err(String::new()),
        };
        if let Ok(a) = checked {
            return Ok((a, None));
        }
        // A PDF (pages are counted over the whole file), or a header too short to judge.
        if partial {
            file.read_to_end(&mut bytes).map_err(io)?;
        }
        self.finish(kind, bytes).map_err(|e| format!("{what}: {e}"))
    }

    /// The size of the picture `bytes` starts with, when `--max-image-px` scales it down.
    fn to_scale(&self, bytes: &[u8]) -> Option<(u32, u32)> {
        let r = self.resize.as_ref()?;
        Media::sniff(bytes).filter(|m| m.is_image())?;
        let size = imagesize::blob_size(bytes).ok()?;
        let (w, h) = (size.width as u32, size.height as u32);
        r.target(w, h).map(|_| (w, h))
    }

    /// The whole `bytes` of a file or data: URL checked, once scaled down if they are a picture
    /// over `--max-image-px`: what is sent.
    fn finish(&self, kind: Kind, bytes: Vec<u8>) -> Result<(Attachment, Option<Vec<u8>>), String> {
        let (Some(from), Some(r), Kind::Image) = (self.to_scale(&bytes), &self.resize, kind) else {
            return self.check(kind, &bytes).map(|a| (a, Some(bytes)));
        };
        let scaled = r.scaled(sniffed(&bytes)?, &bytes)?;
        let mut a = self.check(kind, &scaled.bytes)?;
        a.scaled_from = Some(from);
        Ok((a, Some(scaled.bytes)))
    }

    /// Refuses a `cell` that leaves [`Loader::base`], unless [`Loader::any_path`]: written as
    /// absolute or with `..`, or (once links are followed) a file outside it. A file that does
    /// not exist is left to the open, which names it.
    fn inside_base(&self, cell: &str, path: &Path) -> Result<(), String> {
        use std::path::Component;
        if self.any_path {
            return Ok(());
        }
        let written_outside = Path::new(cell)
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        let linked_outside = match (path.canonicalize(), self.base.canonicalize()) {
            (Ok(file), Ok(base)) => !file.starts_with(base),
            _ => false,
        };
        match written_outside || linked_outside {
            true => Err(format!(
                "the path leads outside {} (the input file's folder); only files under it are \
                 read, so a CSV cannot send any file of this machine: move the file there, or \
                 pass --allow-any-path if you trust the input",
                shown_base(&self.base)
            )),
            false => Ok(()),
        }
    }

    fn read(&self, w: &Wanted, whole: bool) -> Result<(Attachment, Option<Vec<u8>>), String> {
        let what = format!("{}({:?})", w.kind.function(), shorten(&w.cell));
        let cell = w.cell.trim();
        if cell.is_empty() {
            return Err(format!(
                "{what}: the cell is empty; give a path, URL or data: URL"
            ));
        }
        if cell.starts_with("http://") || cell.starts_with("https://") {
            return self.url(w.kind, cell).map_err(|e| format!("{what}: {e}"));
        }
        let bytes = match cell.strip_prefix("data:") {
            Some(rest) => decode_data_url(rest).map_err(|e| format!("{what}: {e}"))?,
            None => return self.read_file(w.kind, cell, whole, &what),
        };
        self.finish(w.kind, bytes)
            .map_err(|e| format!("{what}: {e}"))
    }

    fn url(&self, kind: Kind, url: &str) -> Result<(Attachment, Option<Vec<u8>>), String> {
        if kind == Kind::File && !self.limits.file_urls {
            return Err(
                "OpenAI's Chat API takes files only as base64, not by URL; download \
                        the file and give its path, or use --api responses"
                    .into(),
            );
        }
        let a = Attachment {
            kind,
            media: None,
            url: Some(url.to_string()),
            base64: Arc::from(""),
            sha256: hex(&Sha256::digest(url.as_bytes())),
            bytes: 0,
            size: None,
            pages: URL_PAGES,
            detail: self.detail,
            scaled_from: None,
        };
        Ok((a, None))
    }

    /// Sniffs `bytes` and checks them against the function used and the provider's limits
    /// (the mock checks what it receives with it too).
    pub fn check(&self, kind: Kind, bytes: &[u8]) -> Result<Attachment, String> {
        self.check_sized(kind, bytes, bytes.len() as u64)
    }

    /// [`Loader::check`] on the first bytes of a file of `n` bytes (all of them, for a PDF).
    fn check_sized(&self, kind: Kind, bytes: &[u8], n: u64) -> Result<Attachment, String> {
        let media = sniffed(bytes)?;
        match (kind, media.is_image()) {
            (Kind::Image, false) => {
                return Err("is a PDF: attach it with file(...), not image(...)".into());
            }
            (Kind::File, true) => {
                return Err(format!(
                    "is an image ({}): attach it with image(...); file(...) is for PDFs",
                    media.mime()
                ));
            }
            _ => {}
        }
        let l = &self.limits;
        let mut a = Attachment {
            kind,
            media: Some(media),
            url: None,
            base64: Arc::from(""),
            sha256: String::new(),
            bytes: n,
            size: None,
            pages: 0,
            detail: self.detail,
            scaled_from: None,
        };
        if media == Media::Pdf {
            if n > l.file_bytes {
                return Err(too_big(n, l.file_bytes, "a PDF"));
            }
            a.pages = pdf_pages(bytes);
            if a.pages > l.pages {
                return Err(format!(
                    "has {} pages; the provider takes at most {} per PDF: split it",
                    a.pages, l.pages
                ));
            }
            return Ok(a);
        }
        self.check_length(bytes, n)?;
        let size = imagesize::blob_size(bytes)
            .map_err(|_| format!("is a damaged {} (its size cannot be read)", media.mime()))?;
        let (w, h) = (size.width as u32, size.height as u32);
        if w == 0 || h == 0 {
            return Err(format!("is a {} of {w}x{h} pixels", media.mime()));
        }
        if let Some(max) = l.image_px
            && (w > max || h > max)
        {
            return Err(format!(
                "is {w}x{h} pixels; the provider takes at most {max} on a side: scale it down, \
                 or pass --max-image-px {max} to have it scaled down before it is sent"
            ));
        }
        a.size = Some((w, h));
        Ok(a)
    }
}

impl Loader {
    /// Whether a file of `n` bytes, of the type its first `bytes` show, is within the
    /// provider's size limit for that type (for an image, as sent when it counts base64).
    fn check_length(&self, bytes: &[u8], n: u64) -> Result<(), String> {
        let l = &self.limits;
        if sniffed(bytes)? == Media::Pdf {
            return match n > l.file_bytes {
                true => Err(too_big(n, l.file_bytes, "a PDF")),
                false => Ok(()),
            };
        }
        let sent = if l.image_counts_base64 {
            n.div_ceil(3) * 4
        } else {
            n
        };
        match sent > l.image_bytes {
            true => Err(too_big(sent, l.image_bytes, "an image")),
            false => Ok(()),
        }
    }
}

/// The type of a file by its first bytes, or why it is not one the providers take.
fn sniffed(bytes: &[u8]) -> Result<Media, String> {
    Media::sniff(bytes).ok_or_else(|| {
        "not a PNG, JPEG, GIF, WebP or PDF file (judged by its first bytes, not its name); \
         convert it to one of those"
            .to_string()
    })
}

fn too_big(n: u64, max: u64, what: &str) -> String {
    format!(
        "is {:.1} MB; the provider takes {what} of at most {} MB: make it smaller",
        n as f64 / MB as f64,
        max / MB
    )
}

fn describe_io(what: &str, path: &Path, e: &std::io::Error) -> String {
    let reason = match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "cannot be read (permission denied)".to_string(),
        _ => format!("cannot be read ({e})"),
    };
    format!("{what}: {}: {reason}", path.display())
}

/// The bytes of `data:<mime>;base64,<data>` (the part after `data:`).
fn decode_data_url(rest: &str) -> Result<Vec<u8>, String> {
    let (head, data) = rest
        .split_once(',')
        .ok_or("a data: URL needs a comma before its data")?;
    if !head.ends_with(";base64") {
        return Err("only base64 data: URLs are taken (data:<type>;base64,...)".into());
    }
    BASE64
        .decode(data.trim())
        .map_err(|e| format!("the data: URL is not valid base64 ({e})"))
}

/// A cell as an error shows it: data: URLs and long paths cut short.
fn shorten(cell: &str) -> String {
    match cell.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &cell[..i]),
        None => cell.to_string(),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Pages of a PDF, without a PDF parser: the larger of the page objects (`/Type /Page`) found
/// in the file and the largest `/Count` of a page tree. Page objects packed into compressed
/// object streams are not seen, but the page tree's `/Count` usually is; a file where neither
/// is found counts as one page. An estimate for pre-flight and tokens, reconciled with `usage`.
pub fn pdf_pages(bytes: &[u8]) -> u32 {
    static PAGE: std::sync::OnceLock<(regex::bytes::Regex, regex::bytes::Regex)> =
        std::sync::OnceLock::new();
    let (page, count) = PAGE.get_or_init(|| {
        (
            regex::bytes::Regex::new(r"/Type\s*/Page(?:[^s]|$)").expect("a valid pattern"),
            regex::bytes::Regex::new(r"/Count\s+(\d{1,7})").expect("a valid pattern"),
        )
    });
    let objects = page.find_iter(bytes).count() as u32;
    let counted = count
        .captures_iter(bytes)
        .filter_map(|c| std::str::from_utf8(&c[1]).ok()?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    objects.max(counted).max(1)
}

/// Prompt tokens of a `w` x `h` image on `model`, by the provider's published formula:
///
/// - Claude (`claude*`): scaled to fit 1568 px on the long side and about 1.15 megapixels,
///   then `w * h / 750`.
/// - OpenAI's patch models (gpt-4.1-mini, gpt-4.1-nano, o4-mini, gpt-5-mini, gpt-5-nano):
///   32 px patches, at most 1536 (the image is scaled down to fit), times the model's
///   multiplier; `detail` does not apply.
/// - OpenAI's tile models (gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o1, o3, and anything else):
///   `detail: low` is the base; otherwise fit in 2048 x 2048, shortest side to 768, then
///   base + per-tile tokens for each 512 px tile. `auto` is counted as `high` (the worst case).
pub fn image_tokens(model: &str, w: u32, h: u32, detail: Detail) -> u32 {
    let m = model.rsplit('/').next().unwrap_or(model);
    if m.starts_with("claude") {
        return claude_tokens(w, h);
    }
    if let Some(multiplier) = patch_multiplier(m) {
        return (f64::from(patches(w, h)) * multiplier).ceil() as u32;
    }
    let (base, tile) = tile_costs(m);
    if detail == Detail::Low {
        return base;
    }
    base + tile * tiles(w, h)
}

fn claude_tokens(w: u32, h: u32) -> u32 {
    let (mut w, mut h) = (f64::from(w), f64::from(h));
    let long = w.max(h);
    if long > 1568.0 {
        let r = 1568.0 / long;
        (w, h) = ((w * r).floor(), (h * r).floor());
    }
    const MAX_PIXELS: f64 = 1_150_000.0;
    if w * h > MAX_PIXELS {
        let r = (MAX_PIXELS / (w * h)).sqrt();
        (w, h) = ((w * r).floor(), (h * r).floor());
    }
    (w * h / 750.0).ceil() as u32
}

fn patch_multiplier(m: &str) -> Option<f64> {
    [
        ("gpt-4.1-mini", 1.62),
        ("gpt-4.1-nano", 2.46),
        ("gpt-5-mini", 1.62),
        ("gpt-5-nano", 2.46),
        ("o4-mini", 1.72),
    ]
    .iter()
    .find(|(p, _)| m.starts_with(p))
    .map(|&(_, x)| x)
}

/// 32 px patches of the image, scaled down to at most 1536 patches as OpenAI describes.
fn patches(w: u32, h: u32) -> u32 {
    const CAP: f64 = 1536.0;
    let (w, h) = (f64::from(w), f64::from(h));
    let raw = (w / 32.0).ceil() * (h / 32.0).ceil();
    if raw <= CAP {
        return raw as u32;
    }
    let mut r = (32.0 * 32.0 * CAP / (w * h)).sqrt();
    let (pw, ph) = (w * r / 32.0, h * r / 32.0);
    r *= (pw.floor() / pw).min(ph.floor() / ph);
    let n = ((w * r) / 32.0).ceil() * ((h * r) / 32.0).ceil();
    n.min(CAP) as u32
}

fn tile_costs(m: &str) -> (u32, u32) {
    if m.starts_with("gpt-4o-mini") {
        (2833, 5667)
    } else if m.starts_with("o1") || m.starts_with("o3") {
        (75, 150)
    } else {
        (85, 170)
    }
}

/// 512 px tiles after fitting in 2048 x 2048 and scaling the shortest side to 768.
fn tiles(w: u32, h: u32) -> u32 {
    let (mut w, mut h) = (f64::from(w), f64::from(h));
    if w.max(h) > 2048.0 {
        let r = 2048.0 / w.max(h);
        (w, h) = (w * r, h * r);
    }
    if w.min(h) > 768.0 {
        let r = 768.0 / w.min(h);
        (w, h) = (w * r, h * r);
    }
    ((w / 512.0).ceil() * (h / 512.0).ceil()) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PNG header of `w` x `h` (enough for the sniffer and the size reader).
    pub(crate) fn png(w: u32, h: u32) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        b.extend_from_slice(&w.to_be_bytes());
        b.extend_from_slice(&h.to_be_bytes());
        b.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        b
    }

    #[test]
    fn openai_published_examples() {
        // The worked examples of OpenAI's vision guide.
        assert_eq!(image_tokens("gpt-4o", 1024, 1024, Detail::High), 765);
        assert_eq!(image_tokens("gpt-4o", 2048, 4096, Detail::High), 1105);
        assert_eq!(image_tokens("gpt-4o", 4096, 8192, Detail::Low), 85);
        assert_eq!(image_tokens("gpt-4.1-mini", 1024, 1024, Detail::High), 1659);
        assert_eq!(patches(1800, 2400), 1452);
        assert_eq!(image_tokens("gpt-4.1-mini", 1800, 2400, Detail::Low), 2353);
        assert_eq!(image_tokens("gpt-4o-mini", 1024, 1024, Detail::Low), 2833);
    }

    #[test]
    fn claude_published_examples() {
        // Anthropic's table: 200x200 ~54, 1000x1000 ~1334, 1092x1092 ~1590.
        assert_eq!(
            image_tokens("claude-sonnet-4-5", 200, 200, Detail::Auto),
            54
        );
        assert_eq!(
            image_tokens("claude-sonnet-4-5", 1000, 1000, Detail::Auto),
            1334
        );
        // Larger pictures are scaled down first, so the count is capped.
        let big = image_tokens("claude-sonnet-4-5", 4000, 3000, Detail::Auto);
        assert!((1500..=1534).contains(&big), "{big}");
    }

    #[test]
    fn sniffs_by_bytes_not_names() {
        assert_eq!(Media::sniff(&png(1, 1)), Some(Media::Png));
        assert_eq!(Media::sniff(b"\xFF\xD8\xFF\xE0"), Some(Media::Jpeg));
        assert_eq!(Media::sniff(b"GIF89a.."), Some(Media::Gif));
        assert_eq!(Media::sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(Media::Webp));
        assert_eq!(Media::sniff(b"%PDF-1.7"), Some(Media::Pdf));
        assert_eq!(Media::sniff(b"hello"), None);
    }

    #[test]
    fn pages_are_counted_from_objects_or_the_page_tree() {
        let pdf = b"%PDF-1.4 /Type /Pages /Count 3 /Type /Page x /Type/Page\n";
        assert_eq!(pdf_pages(pdf), 3);
        assert_eq!(pdf_pages(b"%PDF-1.4 /Type /Page /Type /Page"), 2);
        assert_eq!(pdf_pages(b"%PDF-1.4"), 1);
    }

    fn loader(dir: &Path, limits: Limits) -> Loader {
        Loader {
            base: dir.to_path_buf(),
            limits,
            detail: None,
            any_path: false,
            resize: None,
        }
    }

    fn want(kind: Kind, cell: &str) -> Wanted {
        Wanted {
            kind,
            cell: cell.into(),
        }
    }

    #[test]
    fn paths_that_leave_the_base_folder_are_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("in")).unwrap();
        std::fs::write(dir.path().join("out.png"), png(10, 10)).unwrap();
        std::fs::write(dir.path().join("in/ok.png"), png(10, 10)).unwrap();
        let mut l = loader(&dir.path().join("in"), Limits::anthropic());
        let outside = dir.path().join("out.png").display().to_string();
        assert!(l.inspect(&want(Kind::Image, "ok.png")).is_ok());
        assert!(l.inspect(&want(Kind::Image, "./ok.png")).is_ok());
        for cell in ["../out.png", outside.as_str(), "sub/../../out.png"] {
            let e = l.inspect(&want(Kind::Image, cell)).unwrap_err();
            assert!(e.contains("--allow-any-path"), "{cell}: {e}");
            assert!(l.load(&want(Kind::Image, cell)).is_err(), "{cell}");
        }
        l.any_path = true;
        assert!(l.load(&want(Kind::Image, "../out.png")).is_ok());
        assert!(l.load(&want(Kind::Image, &outside)).is_ok());
    }

    #[test]
    fn an_oversized_file_is_refused_by_its_length_without_being_read() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let l = loader(dir.path(), Limits::anthropic());
        // Sparse files of 3 GB: reading one whole would take 3 GB of memory.
        for (name, head, kind) in [
            ("big.pdf", &b"%PDF-1.4 /Type /Page"[..], Kind::File),
            ("big.png", &png(10, 10)[..], Kind::Image),
        ] {
            let mut f = std::fs::File::create(dir.path().join(name)).unwrap();
            f.write_all(head).unwrap();
            f.set_len(3 * 1024 * MB).unwrap();
            for e in [l.load(&want(kind, name)), l.inspect(&want(kind, name))] {
                let e = e.unwrap_err();
                assert!(e.contains("MB") && e.contains("at most"), "{name}: {e}");
            }
        }
    }

    #[test]
    fn local_files_are_checked_and_encoded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), png(640, 480)).unwrap();
        std::fs::write(dir.path().join("fake.png"), b"not a picture").unwrap();
        std::fs::write(dir.path().join("doc.pdf"), b"%PDF-1.4 /Type /Page").unwrap();
        let l = loader(dir.path(), Limits::anthropic());
        let a = l.load(&want(Kind::Image, "a.png")).unwrap();
        assert_eq!((a.media, a.size), (Some(Media::Png), Some((640, 480))));
        assert!(
            a.data_url()
                .starts_with("data:image/png;base64,iVBORw0KGgo")
        );
        let pdf = l.load(&want(Kind::File, "doc.pdf")).unwrap();
        assert_eq!(pdf.filename(), format!("{}.pdf", &pdf.sha256[..16]));
        assert_eq!(pdf.sha256, hex(&Sha256::digest(b"%PDF-1.4 /Type /Page")));
        assert!(
            l.inspect(&want(Kind::Image, "a.png"))
                .unwrap()
                .base64
                .is_empty()
        );
        let err = |k, c: &str| l.inspect(&want(k, c)).unwrap_err();
        assert!(err(Kind::Image, "missing.png").contains("no such file"));
        assert!(err(Kind::Image, "fake.png").contains("not a PNG"));
        assert!(err(Kind::Image, "doc.pdf").contains("file(...)"));
        assert!(err(Kind::File, "a.png").contains("image(...)"));
        assert!(err(Kind::Image, " ").contains("empty"));
        assert_eq!(l.inspect(&want(Kind::File, "doc.pdf")).unwrap().pages, 1);
        let data = format!("data:image/png;base64,{}", BASE64.encode(png(2, 3)));
        assert_eq!(
            l.inspect(&want(Kind::Image, &data)).unwrap().size,
            Some((2, 3))
        );
        assert!(err(Kind::Image, "data:image/png;base64,!!").contains("base64"));
    }

    #[test]
    fn max_image_px_scales_pictures_down_before_limits_and_tokens() {
        use resize::tests::picture;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("wide.png"), picture(Media::Png, 9000, 30)).unwrap();
        let big = picture(Media::Jpeg, 1500, 1000);
        // Larger than the header read, so the whole file is read to be scaled.
        assert!(big.len() as u64 > HEAD_BYTES, "{}", big.len());
        std::fs::write(dir.path().join("big.jpg"), big).unwrap();
        std::fs::write(dir.path().join("small.png"), picture(Media::Png, 20, 20)).unwrap();
        let mut l = loader(dir.path(), Limits::anthropic());
        let e = l.inspect(&want(Kind::Image, "wide.png")).unwrap_err();
        assert!(e.contains("--max-image-px 8000"), "{e}");
        l.resize = Some(Resizer {
            max_px: 1000,
            dir: Some(dir.path().join("resized")),
        });
        let a = l.inspect(&want(Kind::Image, "wide.png")).unwrap();
        assert_eq!((a.size, a.scaled_from), (Some((1000, 3)), Some((9000, 30))));
        let b = l.load(&want(Kind::Image, "big.jpg")).unwrap();
        assert_eq!((b.media, b.size), (Some(Media::Jpeg), Some((1000, 667))));
        assert_eq!(b.scaled_from, Some((1500, 1000)));
        let sent = BASE64.decode(b.base64.as_bytes()).unwrap();
        assert_eq!(imagesize::blob_size(&sent).unwrap().width, 1000);
        assert_eq!(b.bytes, sent.len() as u64);
        assert_eq!(b.tokens("claude-sonnet-4-5"), (1000 * 667u32).div_ceil(750));
        let c = l.load(&want(Kind::Image, "small.png")).unwrap();
        assert_eq!((c.size, c.scaled_from), (Some((20, 20)), None));
        // A picture that cannot be decoded is refused where it is read (in the pre-flight).
        let mut broken = picture(Media::Png, 1200, 1200);
        broken.truncate(100);
        std::fs::write(dir.path().join("broken.png"), broken).unwrap();
        let e = l.inspect(&want(Kind::Image, "broken.png")).unwrap_err();
        assert!(
            e.contains("broken.png") && e.contains("cannot be decoded"),
            "{e}"
        );
    }

    #[test]
    fn provider_limits_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("wide.png"), png(9000, 10)).unwrap();
        let mut pdf = b"%PDF-1.4".to_vec();
        for _ in 0..101 {
            pdf.extend_from_slice(b" /Type /Page ");
        }
        std::fs::write(dir.path().join("long.pdf"), pdf).unwrap();
        let a = loader(dir.path(), Limits::anthropic());
        let e = a.inspect(&want(Kind::Image, "wide.png")).unwrap_err();
        assert!(e.contains("8000"), "{e}");
        let e = a.inspect(&want(Kind::File, "long.pdf")).unwrap_err();
        assert!(e.contains("101 pages"), "{e}");
        let o = loader(dir.path(), Limits::openai(true));
        assert!(o.inspect(&want(Kind::Image, "wide.png")).is_ok());
        let e = o.inspect(&want(Kind::File, "https://x/a.pdf")).unwrap_err();
        assert!(e.contains("--api responses"), "{e}");
        assert!(
            loader(dir.path(), Limits::openai(false))
                .inspect(&want(Kind::File, "https://x/a.pdf"))
                .is_ok()
        );
    }
}

//! `--max-image-px N`: a picture whose longer side is over N pixels is scaled down (aspect
//! kept, Lanczos filter) and encoded again before it goes into a request, so a job of phone
//! photos does not upload (and pay the bandwidth and the provider's limits for) pixels the
//! model never sees. PNG stays PNG; JPEG stays JPEG (quality [`JPEG_QUALITY`]); GIF and WebP
//! become PNG (the `image` crate writes WebP only losslessly and GIF with a palette, and every
//! provider takes PNG; an animated GIF keeps its first frame, as the providers read it).
//!
//! Scaling is done once per (content, N): the result is written to `<cache dir>/resized/`
//! under the SHA-256 of the original bytes and N, so the pre-flight (which scales, so a picture
//! that cannot be decoded is refused before anything is sent) and the reader thread (which
//! builds the request), and every rerun or resume, read the same bytes. The encoders are
//! deterministic, so the request body, its hash and the cache key follow the original bytes
//! and N, not whether the scaled copy was on disk.

use std::io::Cursor;
use std::path::PathBuf;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, imageops::FilterType};
use sha2::{Digest, Sha256};

use super::{Media, hex};

/// JPEG quality of a scaled-down JPEG: visually close to the original at a third of the bytes
/// of quality 95; what most image tools default to.
pub const JPEG_QUALITY: u8 = 85;

/// The largest file scaled down; larger pictures are refused rather than decoded (the decoder's
/// own memory limit, 512 MB of pixels, applies too).
pub const MAX_SOURCE_BYTES: u64 = 256 * 1024 * 1024;

/// Where and to what size pictures are scaled down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resizer {
    /// The longest side a picture may keep, in pixels.
    pub max_px: u32,
    /// The folder of scaled copies (`<cache dir>/resized`); `None` keeps nothing on disk.
    pub dir: Option<PathBuf>,
}

impl Resizer {
    /// The size a `w` x `h` picture is scaled to: the longer side becomes `max_px`, the other
    /// keeps the aspect (rounded, at least 1); `None` if it fits already.
    pub fn target(&self, w: u32, h: u32) -> Option<(u32, u32)> {
        fit(w, h, self.max_px)
    }

    /// `bytes` (a picture of type `media`, `w` x `h`) scaled down: the copy on disk, or made now
    /// and kept there. The error is a short reason for the pre-flight to show with the line.
    pub fn scaled(&self, media: Media, bytes: &[u8]) -> Result<Scaled, String> {
        let key = format!("{}-{}", hex(&Sha256::digest(bytes)), self.max_px);
        let out = out_media(media);
        let path = self
            .dir
            .as_ref()
            .map(|d| d.join(format!("{key}.{}", out.extension())));
        if let Some(kept) = path.as_ref().and_then(|p| std::fs::read(p).ok())
            && Media::sniff(&kept) == Some(out)
        {
            return Ok(Scaled {
                media: out,
                bytes: kept,
                from_disk: true,
            });
        }
        let made = scale(media, bytes, self.max_px)?;
        if let Some(p) = &path
            && let Err(e) = keep(p, &made)
        {
            tracing::warn!("could not keep the scaled picture {}: {e}", p.display());
        }
        Ok(Scaled {
            media: out,
            bytes: made,
            from_disk: false,
        })
    }
}

/// `w` x `h` with the longer side brought down to `max` and the aspect kept (each side
/// rounded, at least 1); `None` if it fits already.
fn fit(w: u32, h: u32, max: u32) -> Option<(u32, u32)> {
    let long = w.max(h);
    if long <= max {
        return None;
    }
    let r = f64::from(max) / f64::from(long);
    let side = |x: u32| ((f64::from(x) * r).round() as u32).clamp(1, max);
    Some((side(w), side(h)))
}

/// A picture scaled down.
#[derive(Debug)]
pub struct Scaled {
    pub media: Media,
    pub bytes: Vec<u8>,
    /// Read from the folder of scaled copies (not scaled again).
    pub from_disk: bool,
}

/// What a picture of type `media` is written as once scaled.
fn out_media(media: Media) -> Media {
    match media {
        Media::Jpeg => Media::Jpeg,
        _ => Media::Png,
    }
}

/// Writes `bytes` to `path` through a temporary file, so a reader (another run on the same
/// cache) never sees half a picture.
fn keep(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Decodes `bytes`, turns it upright (a JPEG's EXIF orientation, which the new file no longer
/// carries), scales it to fit `max` px (see [`fit`]) and encodes it as [`out_media`] says.
fn scale(media: Media, bytes: &[u8], max: u32) -> Result<Vec<u8>, String> {
    let format = match media {
        Media::Png => ImageFormat::Png,
        Media::Jpeg => ImageFormat::Jpeg,
        Media::Gif => ImageFormat::Gif,
        Media::Webp => ImageFormat::WebP,
        Media::Pdf => return Err("a PDF is not a picture to scale down".into()),
    };
    let undecodable = |e: image::ImageError| {
        format!(
            "is a {} that cannot be decoded to scale it down ({e}); open and save it again, or \
             leave out --max-image-px",
            media.mime()
        )
    };
    let mut decoder = ImageReader::with_format(Cursor::new(bytes), format)
        .into_decoder()
        .map_err(undecodable)?;
    let orientation = decoder.orientation().map_err(undecodable)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(undecodable)?;
    img.apply_orientation(orientation);
    if let Some((w, h)) = fit(img.width(), img.height(), max) {
        img = img.resize_exact(w, h, FilterType::Lanczos3);
    }
    let mut out = Vec::new();
    let written = match out_media(media) {
        Media::Jpeg => {
            let rgb = DynamicImage::ImageRgb8(img.to_rgb8());
            rgb.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
                &mut out,
                JPEG_QUALITY,
            ))
        }
        _ => img.write_with_encoder(image::codecs::png::PngEncoder::new(&mut out)),
    };
    written.map_err(|e| format!("could not encode the scaled-down picture ({e})"))?;
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A real `w` x `h` picture of type `media` (a gradient, so it compresses like a photo).
    pub(crate) fn picture(media: Media, w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        });
        let format = match media {
            Media::Jpeg => ImageFormat::Jpeg,
            Media::Gif => ImageFormat::Gif,
            Media::Webp => ImageFormat::WebP,
            _ => ImageFormat::Png,
        };
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img)
            .write_to(&mut out, format)
            .unwrap();
        out.into_inner()
    }

    fn size(bytes: &[u8]) -> (u32, u32) {
        let s = imagesize::blob_size(bytes).unwrap();
        (s.width as u32, s.height as u32)
    }

    #[test]
    fn the_longer_side_becomes_the_limit_and_the_aspect_is_kept() {
        let r = Resizer {
            max_px: 1000,
            dir: None,
        };
        assert_eq!(r.target(1000, 10), None);
        assert_eq!(r.target(4000, 3000), Some((1000, 750)));
        assert_eq!(r.target(3000, 4000), Some((750, 1000)));
        assert_eq!(r.target(9001, 3), Some((1000, 1)));
        assert_eq!(r.target(1001, 1001), Some((1000, 1000)));
    }

    #[test]
    fn png_stays_png_jpeg_stays_jpeg_and_gif_webp_become_png() {
        let r = Resizer {
            max_px: 40,
            dir: None,
        };
        for (media, out) in [
            (Media::Png, Media::Png),
            (Media::Jpeg, Media::Jpeg),
            (Media::Gif, Media::Png),
            (Media::Webp, Media::Png),
        ] {
            let s = r.scaled(media, &picture(media, 100, 50)).unwrap();
            assert_eq!(Media::sniff(&s.bytes), Some(out), "{media:?}");
            assert_eq!(s.media, out);
            assert_eq!(size(&s.bytes), (40, 20), "{media:?}");
            assert!(!s.from_disk);
        }
    }

    #[test]
    fn a_scaled_copy_is_made_once_and_read_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let r = Resizer {
            max_px: 30,
            dir: Some(dir.path().join("resized")),
        };
        let src = picture(Media::Jpeg, 90, 60);
        let first = r.scaled(Media::Jpeg, &src).unwrap();
        let again = r.scaled(Media::Jpeg, &src).unwrap();
        assert!(!first.from_disk && again.from_disk);
        assert_eq!(first.bytes, again.bytes);
        // Made again without the copy, the bytes are the same: the request hash does not
        // depend on what the cache held.
        std::fs::remove_dir_all(dir.path().join("resized")).unwrap();
        assert_eq!(r.scaled(Media::Jpeg, &src).unwrap().bytes, first.bytes);
        // Another limit is another copy.
        let other = Resizer { max_px: 20, ..r };
        assert_eq!(
            size(&other.scaled(Media::Jpeg, &src).unwrap().bytes),
            (20, 13)
        );
    }

    #[test]
    fn a_picture_that_cannot_be_decoded_is_a_clear_error() {
        let r = Resizer {
            max_px: 10,
            dir: None,
        };
        let mut broken = picture(Media::Png, 100, 100);
        broken.truncate(60);
        let e = r.scaled(Media::Png, &broken).unwrap_err();
        assert!(
            e.contains("cannot be decoded") && e.contains("--max-image-px"),
            "{e}"
        );
    }
}

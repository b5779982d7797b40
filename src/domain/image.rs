//! Deciding what an image is from its bytes, never from a name or a header.

use std::io::{BufRead, Cursor, Seek, SeekFrom};

use serde::Serialize;

/// The image types darkroom accepts and stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    Jpeg,
    Png,
    Webp,
}

impl ImageKind {
    /// Every kind, in the order `/api/info` lists their content types.
    pub const ALL: [Self; 3] = [Self::Png, Self::Jpeg, Self::Webp];

    /// Magic bytes only; `inspect` also checks the header decodes.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Self::Webp)
        } else {
            None
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Webp => "image/webp",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Png => "png",
            Self::Webp => "webp",
        }
    }

    pub fn from_extension(ext: &str) -> Option<Self> {
        match ext.to_ascii_lowercase().as_str() {
            "jpg" | "jpeg" => Some(Self::Jpeg),
            "png" => Some(Self::Png),
            "webp" => Some(Self::Webp),
            _ => None,
        }
    }

    fn format(self) -> image::ImageFormat {
        match self {
            Self::Jpeg => image::ImageFormat::Jpeg,
            Self::Png => image::ImageFormat::Png,
            Self::Webp => image::ImageFormat::WebP,
        }
    }
}

/// Caps applied before any pixel is decoded.
#[derive(Clone, Copy, Debug)]
pub struct ImageLimits {
    pub max_dimension: u32,
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_dimension: 10_000,
            max_pixels: 40_000_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub kind: ImageKind,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is not a JPEG, PNG or WebP image")]
    UnsupportedType,
    #[error("the {0:?} image header could not be read (the file is damaged or truncated)")]
    Corrupt(ImageKind),
    #[error("the image is {width}x{height}; at most {max}x{max} pixels are accepted")]
    TooLarge { width: u32, height: u32, max: u32 },
    #[error("the image has {pixels} pixels; at most {max} are accepted")]
    TooManyPixels { pixels: u64, max: u64 },
    #[error("the {0:?} image is truncated or damaged: it ends before the image does")]
    Truncated(ImageKind),
    #[error("the file is not only an image ({0}); such files are refused")]
    Polyglot(&'static str),
}

impl ImageError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "empty_file",
            Self::UnsupportedType => "unsupported_image_type",
            Self::Corrupt(_) | Self::Truncated(_) => "corrupt_image",
            Self::Polyglot(_) => "polyglot_image",
            Self::TooLarge { .. } | Self::TooManyPixels { .. } => "image_too_large",
        }
    }
}

/// Decides the type from the magic bytes, then reads the header (no pixels) and checks the
/// dimensions against `limits`.
pub fn inspect(bytes: &[u8], limits: ImageLimits) -> Result<ImageInfo, ImageError> {
    inspect_reader(Cursor::new(bytes), limits)
}

/// `inspect` over a reader (a spooled file): the magic bytes and the header first (so a
/// decompression bomb is refused by its declared size before anything else), then a
/// structural walk over the whole file in constant memory ([`super::sanitize`]) that
/// refuses truncated files and polyglots. No pixel is decoded.
pub fn inspect_reader<R: BufRead + Seek>(
    mut reader: R,
    limits: ImageLimits,
) -> Result<ImageInfo, ImageError> {
    let mut head = [0u8; 16];
    let mut filled = 0;
    while filled < head.len() {
        match reader.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(_) => return Err(ImageError::UnsupportedType),
        }
    }
    if filled == 0 {
        return Err(ImageError::Empty);
    }
    let kind = ImageKind::sniff(&head[..filled]).ok_or(ImageError::UnsupportedType)?;
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|_| ImageError::Corrupt(kind))?;
    let (width, height) = image::ImageReader::with_format(&mut reader, kind.format())
        .into_dimensions()
        .map_err(|_| ImageError::Corrupt(kind))?;
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt(kind));
    }
    if width > limits.max_dimension || height > limits.max_dimension {
        return Err(ImageError::TooLarge {
            width,
            height,
            max: limits.max_dimension,
        });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            pixels,
            max: limits.max_pixels,
        });
    }
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|_| ImageError::Corrupt(kind))?;
    super::sanitize::check(kind, &mut reader)?;
    Ok(ImageInfo {
        kind,
        width,
        height,
    })
}

#[cfg(test)]
pub(crate) fn tiny_png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(width, height, image::Rgb([200, 40, 90]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_is_recognised_with_its_size() {
        let info = inspect(&tiny_png(3, 2), ImageLimits::default()).unwrap();
        assert_eq!((info.kind, info.width, info.height), (ImageKind::Png, 3, 2));
    }

    #[test]
    fn text_named_png_is_refused() {
        assert_eq!(
            inspect(b"hello, I am text", ImageLimits::default()),
            Err(ImageError::UnsupportedType)
        );
    }

    #[test]
    fn truncated_header_is_refused() {
        let png = tiny_png(3, 2);
        assert!(matches!(
            inspect(&png[..12], ImageLimits::default()),
            Err(ImageError::Corrupt(ImageKind::Png))
        ));
    }

    #[test]
    fn dimension_caps_apply_before_decoding() {
        let limits = ImageLimits {
            max_dimension: 2,
            max_pixels: 100,
        };
        assert!(matches!(
            inspect(&tiny_png(3, 2), limits),
            Err(ImageError::TooLarge { .. })
        ));
        let limits = ImageLimits {
            max_dimension: 10,
            max_pixels: 5,
        };
        assert!(matches!(
            inspect(&tiny_png(3, 2), limits),
            Err(ImageError::TooManyPixels { .. })
        ));
    }
}

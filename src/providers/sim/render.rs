//! The simulator's "model": turns an input image and a prompt into a real, decodable
//! result image in the requested aspect ratio and format.
//!
//! The output is deterministic (same input, prompt and options give the same bytes), so
//! tests can compare results, and it visibly depends on every input: the picture is the
//! input cropped and scaled to the target shape, tinted with a colour derived from the
//! prompt and framed with a solid border of that colour.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::imageops::FilterType;
use image::{DynamicImage, ExtendedColorType, ImageEncoder, Rgb, RgbImage};
use sha2::{Digest, Sha256};

/// Every `image_size` / `aspect_ratio` value KIE accepts for `google/nano-banana-edit`.
pub(crate) const ASPECT_RATIOS: &[&str] = &[
    "1:1", "9:16", "16:9", "3:4", "4:3", "3:2", "2:3", "5:4", "4:5", "21:9", "auto",
];

/// Bounds for the configured long side: below this the frame swallows the picture,
/// above it a misconfiguration would make every task allocate hundreds of megabytes.
const MIN_LONG_SIDE: u32 = 16;
const MAX_LONG_SIDE: u32 = 4096;

/// `auto` follows the input's shape, but a 1×10000 input must not produce a 1 px strip.
const MAX_AUTO_RATIO: f64 = 4.0;

/// How strongly the prompt colour is blended into the picture, in 1/256ths.
const TINT_WEIGHT: u16 = 90;

const JPEG_QUALITY: u8 = 85;

/// The two output formats KIE offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum OutputFormat {
    #[default]
    Png,
    Jpeg,
}

impl OutputFormat {
    /// Parses KIE's `output_format` value; only the exact spellings KIE documents.
    pub(crate) fn parse(value: &str) -> Option<Self> {
        match value {
            "png" => Some(Self::Png),
            "jpeg" => Some(Self::Jpeg),
            _ => None,
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
        }
    }

    /// File extension used in result URLs.
    pub(crate) fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
        }
    }
}

/// An encoded result image.
#[derive(Debug)]
pub(crate) struct Rendered {
    pub(crate) bytes: Vec<u8>,
    pub(crate) content_type: &'static str,
    pub(crate) extension: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RenderError {
    #[error("unsupported aspect ratio {0:?}")]
    AspectRatio(String),
    #[error("could not encode the result image: {0}")]
    Encode(#[from] image::ImageError),
}

/// Renders the result for one task.
///
/// `aspect` is one of [`ASPECT_RATIOS`]; `long_side` is clamped to a sane range.
pub(crate) fn render(
    input: &DynamicImage,
    prompt: &str,
    aspect: &str,
    format: OutputFormat,
    long_side: u32,
) -> Result<Rendered, RenderError> {
    let (width, height) = target_size(aspect, input.width(), input.height(), long_side)
        .ok_or_else(|| RenderError::AspectRatio(aspect.to_owned()))?;
    let colour = prompt_colour(prompt);
    let mut picture = cover(input, width, height);
    tint(&mut picture, colour);
    frame(&mut picture, colour);
    let bytes = encode(&picture, format)?;
    Ok(Rendered {
        bytes,
        content_type: format.content_type(),
        extension: format.extension(),
    })
}

/// A base picture for the text-only model, which has no input image: a diagonal
/// gradient whose colours come from the prompt.
pub(crate) fn canvas(prompt: &str, long_side: u32) -> DynamicImage {
    let side = long_side.clamp(MIN_LONG_SIDE, MAX_LONG_SIDE);
    let Rgb([r, g, b]) = prompt_colour(prompt);
    let span = 2 * (side - 1).max(1);
    let picture = RgbImage::from_fn(side, side, |x, y| {
        let t = (x + y) * 255 / span;
        // t ≤ 255, so every channel stays within u8.
        let mix = |c: u8| u8::try_from((u32::from(c) + t) / 2).unwrap_or(u8::MAX);
        Rgb([mix(r), mix(255 - g), mix(b)])
    });
    DynamicImage::ImageRgb8(picture)
}

/// Output dimensions for an aspect ratio, or `None` for an unknown ratio.
///
/// The longer side is `long_side`; `auto` keeps the input's own ratio (within bounds).
pub(crate) fn target_size(
    aspect: &str,
    input_width: u32,
    input_height: u32,
    long_side: u32,
) -> Option<(u32, u32)> {
    let long_side = long_side.clamp(MIN_LONG_SIDE, MAX_LONG_SIDE);
    let ratio = if aspect == "auto" {
        let ratio = f64::from(input_width.max(1)) / f64::from(input_height.max(1));
        ratio.clamp(1.0 / MAX_AUTO_RATIO, MAX_AUTO_RATIO)
    } else {
        if !ASPECT_RATIOS.contains(&aspect) {
            return None;
        }
        let (w, h) = aspect.split_once(':')?;
        f64::from(w.parse::<u32>().ok()?) / f64::from(h.parse::<u32>().ok()?)
    };
    let short = |r: f64| scaled(long_side, r);
    Some(if ratio >= 1.0 {
        (long_side, short(1.0 / ratio))
    } else {
        (short(ratio), long_side)
    })
}

/// `side * factor` rounded, at least 1 px; `factor` is in (0, 1].
fn scaled(side: u32, factor: f64) -> u32 {
    let value = (f64::from(side) * factor).round();
    // `value` lies in [0, side], so the cast cannot truncate.
    let value = value as u32;
    value.clamp(1, side)
}

/// Centre-crops the input to the target's shape and scales it to exactly that size.
fn cover(input: &DynamicImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = (input.width().max(1), input.height().max(1));
    // Largest centred window of the target's shape that fits the input, in integers.
    let input_is_wider = u64::from(in_w) * u64::from(height) > u64::from(in_h) * u64::from(width);
    let (crop_w, crop_h) = if input_is_wider {
        (proportional(in_h, width, height, in_w), in_h)
    } else {
        (in_w, proportional(in_w, height, width, in_h))
    };
    let cropped = input.crop_imm((in_w - crop_w) / 2, (in_h - crop_h) / 2, crop_w, crop_h);
    // Both paths are cheap even in debug builds: the box-averaging thumbnail is linear in
    // the input, and a triangle filter needs only a couple of taps when enlarging.
    let scaled = if crop_w >= width && crop_h >= height {
        cropped.thumbnail_exact(width, height)
    } else {
        cropped.resize_exact(width, height, FilterType::Triangle)
    };
    scaled.into_rgb8()
}

/// `len * num / den`, kept within `1..=max`.
fn proportional(len: u32, num: u32, den: u32, max: u32) -> u32 {
    let value = u64::from(len) * u64::from(num) / u64::from(den.max(1));
    u32::try_from(value).unwrap_or(max).clamp(1, max)
}

/// A saturated-enough colour picked by hashing the prompt.
fn prompt_colour(prompt: &str) -> Rgb<u8> {
    let digest = Sha256::digest(prompt.as_bytes());
    // Lift every channel off black so the tint is visible on dark inputs.
    let channel = |b: u8| 64 + b % 192;
    Rgb([channel(digest[0]), channel(digest[1]), channel(digest[2])])
}

fn tint(picture: &mut RgbImage, colour: Rgb<u8>) {
    let keep = 256 - TINT_WEIGHT;
    for pixel in picture.pixels_mut() {
        for (value, tint) in pixel.0.iter_mut().zip(colour.0) {
            let mixed = (u16::from(*value) * keep + u16::from(tint) * TINT_WEIGHT) >> 8;
            *value = u8::try_from(mixed).unwrap_or(u8::MAX);
        }
    }
}

/// Paints a solid border, about 1/32 of the short side and at least 2 px wide.
fn frame(picture: &mut RgbImage, colour: Rgb<u8>) {
    let (width, height) = picture.dimensions();
    let border = (width.min(height) / 32).max(2);
    for y in 0..height {
        let edge_row = y < border || y + border >= height;
        for x in 0..width {
            if edge_row || x < border || x + border >= width {
                picture.put_pixel(x, y, colour);
            }
        }
    }
}

fn encode(picture: &RgbImage, format: OutputFormat) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Cursor::new(Vec::new());
    let (width, height) = picture.dimensions();
    match format {
        // Fast compression keeps rendering cheap in debug builds, where tests create
        // hundreds of tasks; size does not matter for a simulator.
        OutputFormat::Png => {
            PngEncoder::new_with_quality(&mut bytes, CompressionType::Fast, PngFilter::Sub)
                .write_image(picture.as_raw(), width, height, ExtendedColorType::Rgb8)?;
        }
        OutputFormat::Jpeg => JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY).write_image(
            picture.as_raw(),
            width,
            height,
            ExtendedColorType::Rgb8,
        )?,
    }
    Ok(bytes.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(width: u32, height: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        }))
    }

    fn decode(bytes: &[u8]) -> DynamicImage {
        image::load_from_memory(bytes).expect("result decodes")
    }

    #[test]
    fn dimensions_follow_the_aspect_ratio() {
        let source = input(300, 200);
        let cases = [
            ("1:1", (512, 512)),
            ("16:9", (512, 288)),
            ("9:16", (288, 512)),
            ("3:4", (384, 512)),
            ("4:3", (512, 384)),
            ("3:2", (512, 341)),
            ("2:3", (341, 512)),
            ("5:4", (512, 410)),
            ("4:5", (410, 512)),
            ("21:9", (512, 219)),
            ("auto", (512, 341)),
        ];
        for (aspect, expected) in cases {
            let out = render(&source, "a cat", aspect, OutputFormat::Png, 512).expect("renders");
            let got = decode(&out.bytes);
            assert_eq!((got.width(), got.height()), expected, "aspect {aspect}");
        }
    }

    #[test]
    fn auto_follows_a_portrait_input_and_bounds_extreme_ones() {
        assert_eq!(target_size("auto", 100, 200, 512), Some((256, 512)));
        assert_eq!(target_size("auto", 1, 10_000, 512), Some((128, 512)));
        assert_eq!(target_size("auto", 0, 0, 512), Some((512, 512)));
    }

    #[test]
    fn unknown_aspect_ratios_are_rejected() {
        assert_eq!(target_size("7:3", 10, 10, 512), None);
        assert_eq!(target_size("", 10, 10, 512), None);
        let err = render(&input(8, 8), "p", "1:0", OutputFormat::Png, 64).unwrap_err();
        assert!(matches!(err, RenderError::AspectRatio(_)));
    }

    #[test]
    fn long_side_is_clamped() {
        assert_eq!(target_size("1:1", 10, 10, 0), Some((16, 16)));
        assert_eq!(target_size("1:1", 10, 10, 100_000), Some((4096, 4096)));
    }

    #[test]
    fn formats_carry_their_magic_bytes() {
        let source = input(40, 30);
        let png = render(&source, "p", "1:1", OutputFormat::Png, 64).expect("png");
        assert!(png.bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert_eq!((png.content_type, png.extension), ("image/png", "png"));
        let jpeg = render(&source, "p", "1:1", OutputFormat::Jpeg, 64).expect("jpeg");
        assert!(jpeg.bytes.starts_with(&[0xFF, 0xD8, 0xFF]));
        assert_eq!((jpeg.content_type, jpeg.extension), ("image/jpeg", "jpg"));
        assert_eq!(decode(&jpeg.bytes).width(), 64);
    }

    #[test]
    fn output_depends_on_the_prompt_and_is_deterministic() {
        let source = input(64, 64);
        let a = render(&source, "a red fox", "1:1", OutputFormat::Png, 64).expect("a");
        let again = render(&source, "a red fox", "1:1", OutputFormat::Png, 64).expect("again");
        let b = render(&source, "a blue whale", "1:1", OutputFormat::Png, 64).expect("b");
        assert_eq!(a.bytes, again.bytes);
        assert_ne!(a.bytes, b.bytes);
        // The frame is the prompt colour, so the corner pixels differ too.
        let corner = |bytes: &[u8]| decode(bytes).to_rgb8().get_pixel(0, 0).0;
        assert_ne!(corner(&a.bytes), corner(&b.bytes));
    }

    #[test]
    fn output_depends_on_the_input() {
        let dark = DynamicImage::ImageRgb8(RgbImage::new(32, 32));
        let light = DynamicImage::ImageRgb8(RgbImage::from_pixel(32, 32, Rgb([255; 3])));
        let a = render(&dark, "p", "1:1", OutputFormat::Png, 64).expect("dark");
        let b = render(&light, "p", "1:1", OutputFormat::Png, 64).expect("light");
        let centre = |bytes: &[u8]| decode(bytes).to_rgb8().get_pixel(32, 32).0;
        assert_ne!(centre(&a.bytes), centre(&b.bytes));
    }

    #[test]
    fn canvas_is_square_and_prompt_dependent() {
        let a = canvas("sunset", 64);
        let b = canvas("forest", 64);
        assert_eq!((a.width(), a.height()), (64, 64));
        assert_ne!(a.to_rgb8().into_raw(), b.to_rgb8().into_raw());
    }
}

//! The simulator's "model": turns an input image and a prompt into a real, decodable
//! result image in the requested aspect ratio and format.
//!
//! The output is deterministic (same input, prompt and options give the same bytes), so
//! tests can compare results, and it visibly depends on every input: the picture is the
//! input cropped and scaled to the target shape, tinted with a colour derived from the
//! prompt and framed with a solid border of that colour.

use std::borrow::Cow;
use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
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

/// Side of the text-only model's base picture; small because it is only upscaled.
const CANVAS_SIDE: u32 = 256;

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
    let picture = compose(input, width, height, prompt_colour(prompt));
    let bytes = encode(&picture, format)?;
    Ok(Rendered {
        bytes,
        content_type: format.content_type(),
        extension: format.extension(),
    })
}

/// A base picture for the text-only model, which has no input image: a diagonal
/// gradient whose colours come from the prompt. [`render`] scales it to the target.
pub(crate) fn canvas(prompt: &str) -> DynamicImage {
    let Rgb([r, g, b]) = prompt_colour(prompt);
    let span = 2 * (CANVAS_SIDE - 1);
    let picture = RgbImage::from_fn(CANVAS_SIDE, CANVAS_SIDE, |x, y| {
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

/// Samples the input into the target size (centre crop, nearest neighbour), tinting
/// and framing in the same pass.
///
/// Written by hand rather than with `image`'s resamplers: those run about ten times
/// slower in unoptimised builds, and the test suites render hundreds of results there.
fn compose(input: &DynamicImage, width: u32, height: u32, colour: Rgb<u8>) -> RgbImage {
    // 8-bit RGB and RGBA (what JPEG, PNG and WebP mostly decode to) are sampled in
    // place; anything else is converted once.
    let (raw, channels): (Cow<'_, [u8]>, usize) = match input {
        DynamicImage::ImageRgb8(rgb) => (Cow::Borrowed(rgb.as_raw()), 3),
        DynamicImage::ImageRgba8(rgba) => (Cow::Borrowed(rgba.as_raw()), 4),
        other => (Cow::Owned(other.to_rgb8().into_raw()), 3),
    };
    let (in_w, in_h) = (input.width(), input.height());
    if in_w == 0 || in_h == 0 || width == 0 || height == 0 {
        return RgbImage::from_pixel(width, height, colour);
    }
    // Largest centred window of the target's shape that fits the input.
    let input_is_wider = u64::from(in_w) * u64::from(height) > u64::from(in_h) * u64::from(width);
    let (crop_w, crop_h) = if input_is_wider {
        (proportional(in_h, width, height, in_w).max(1), in_h)
    } else {
        (in_w, proportional(in_w, height, width, in_h).max(1))
    };
    let (left, top) = ((in_w - crop_w) / 2, (in_h - crop_h) / 2);
    // Byte offset of the source pixel for every output column; x < width keeps every
    // sample inside the crop window.
    let columns: Vec<usize> = (0..width)
        .map(|x| channels * (left + proportional(x, crop_w, width, crop_w - 1)) as usize)
        .collect();
    let stride = channels * in_w as usize;
    let tinted = tint_tables(colour);
    let border = (width.min(height) / 32).max(2);

    let mut out = Vec::with_capacity(3 * width as usize * height as usize);
    for y in 0..height {
        let source_row = (top + proportional(y, crop_h, height, crop_h - 1)) as usize;
        let row = raw
            .get(source_row * stride..(source_row + 1) * stride)
            .unwrap_or_default();
        let edge_row = y < border || y + border >= height;
        for (x, &offset) in (0..width).zip(&columns) {
            let in_frame = edge_row || x < border || x + border >= width;
            match row.get(offset..offset + 3) {
                // Alpha, if any, is dropped: results are opaque like KIE's.
                Some(&[r, g, b]) if !in_frame => out.extend_from_slice(&[
                    tinted[0][usize::from(r)],
                    tinted[1][usize::from(g)],
                    tinted[2][usize::from(b)],
                ]),
                _ => out.extend_from_slice(&colour.0),
            }
        }
    }
    RgbImage::from_raw(width, height, out)
        .unwrap_or_else(|| RgbImage::from_pixel(width, height, colour))
}

/// `len * num / den` in integers, at most `max`.
fn proportional(len: u32, num: u32, den: u32, max: u32) -> u32 {
    let value = u64::from(len) * u64::from(num) / u64::from(den.max(1));
    u32::try_from(value).unwrap_or(max).min(max)
}

/// Per channel, every input value blended with the prompt colour.
fn tint_tables(colour: Rgb<u8>) -> [[u8; 256]; 3] {
    let keep = 256 - TINT_WEIGHT;
    colour.0.map(|tint| {
        std::array::from_fn(|value| {
            let value = u16::try_from(value).unwrap_or(u16::from(u8::MAX));
            let mixed = (value * keep + u16::from(tint) * TINT_WEIGHT) >> 8;
            u8::try_from(mixed).unwrap_or(u8::MAX)
        })
    })
}

/// A saturated-enough colour picked by hashing the prompt.
fn prompt_colour(prompt: &str) -> Rgb<u8> {
    let digest = Sha256::digest(prompt.as_bytes());
    // Lift every channel off black so the tint is visible on dark inputs.
    let channel = |b: u8| 64 + b % 192;
    Rgb([channel(digest[0]), channel(digest[1]), channel(digest[2])])
}

fn encode(picture: &RgbImage, format: OutputFormat) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Cursor::new(Vec::new());
    let (width, height) = picture.dimensions();
    match format {
        // Fast compression keeps rendering cheap in debug builds, where tests create
        // hundreds of tasks; the Up filter suits the repeated rows of upscaled inputs.
        OutputFormat::Png => {
            PngEncoder::new_with_quality(&mut bytes, CompressionType::Fast, PngFilter::Up)
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
    fn a_wider_input_is_cropped_to_its_centre() {
        // Three vertical bands; a square crop keeps only the middle one.
        let bands = RgbImage::from_fn(300, 100, |x, _| match x / 100 {
            0 => Rgb([255, 0, 0]),
            1 => Rgb([0, 255, 0]),
            _ => Rgb([0, 0, 255]),
        });
        let picture = compose(&DynamicImage::ImageRgb8(bands), 64, 64, Rgb([0, 0, 0]));
        for x in [2, 32, 61] {
            let Rgb([r, g, b]) = *picture.get_pixel(x, 32);
            assert!(
                g > r && g > b,
                "column {x} should come from the middle band"
            );
        }
    }

    #[test]
    fn rgba_grey_and_empty_inputs_render() {
        let inputs = [
            DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
                20,
                40,
                image::Rgba([9, 99, 199, 0]),
            )),
            DynamicImage::ImageLuma8(image::GrayImage::from_pixel(40, 20, image::Luma([77]))),
            DynamicImage::ImageRgb8(RgbImage::new(0, 0)),
        ];
        for source in &inputs {
            let out = render(source, "p", "auto", OutputFormat::Png, 32).expect("renders");
            let picture = decode(&out.bytes);
            assert_eq!(picture.width().max(picture.height()), 32);
        }
    }

    #[test]
    fn canvas_is_square_and_prompt_dependent() {
        let a = canvas("sunset");
        let b = canvas("forest");
        assert_eq!((a.width(), a.height()), (CANVAS_SIDE, CANVAS_SIDE));
        assert_ne!(a.to_rgb8().into_raw(), b.to_rgb8().into_raw());
    }
}

//! A structural walk over a whole JPEG, PNG or WebP file, segment by segment, in constant
//! memory (the largest thing held is one JPEG segment, ≤ 64 KiB, or a 64 KiB read buffer).
//!
//! It refuses what a header check cannot see: truncated files (no end marker, a chunk
//! running past the end of the file, a bad PNG checksum), polyglots (bytes after the end of
//! the image, or markup such as `<script` or `<html` hidden in metadata), and unknown
//! critical PNG chunks. Given an output, it also writes the file without its metadata:
//! EXIF (GPS, camera serials), XMP, IPTC, comments, text chunks and vendor segments, keeping
//! colour information (ICC profiles, sRGB/gamma chunks, Adobe/JFIF markers) and, for JPEG,
//! the EXIF orientation (rewritten as a minimal EXIF block), so photos are not turned on
//! their side. The pixels are copied byte for byte, never re-encoded: no quality loss, no
//! decoded bitmap in memory (a 40 MP image would need 160 MB), and no decoder in the path
//! of a hostile file beyond the header read.

use std::io::{BufRead, Seek, SeekFrom, Write};

use super::image::{ImageError, ImageKind};

/// Markup that makes a file readable as a web page or script by something that sniffs.
const MARKUP: [&[u8]; 10] = [
    b"<script",
    b"<html",
    b"<body",
    b"<iframe",
    b"<svg",
    b"<?php",
    b"<!doctype",
    b"javascript:",
    b"<object",
    b"<embed",
];
const LONGEST_MARKUP: usize = 11;
const COPY_CHUNK: usize = 64 * 1024;

/// What the walk found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Metadata bytes left out of the output (0 when only checking).
    pub removed_bytes: u64,
    /// The EXIF orientation (1–8), when the file had one.
    pub orientation: Option<u16>,
}

/// Walks `reader` (positioned at the start of a file already identified as `kind`) to its
/// end. With `out`, writes the file without metadata.
pub fn scan<R: BufRead, W: Write + Seek>(
    kind: ImageKind,
    reader: &mut R,
    out: Option<&mut W>,
) -> Result<ScanReport, ImageError> {
    let mut walk = Walk {
        kind,
        reader,
        out,
        report: ScanReport::default(),
    };
    match kind {
        ImageKind::Jpeg => walk.jpeg()?,
        ImageKind::Png => walk.png()?,
        ImageKind::Webp => walk.webp()?,
    }
    Ok(walk.report)
}

/// Checks a file from its start without writing anything.
pub fn check<R: BufRead>(kind: ImageKind, reader: &mut R) -> Result<ScanReport, ImageError> {
    scan::<R, std::io::Cursor<Vec<u8>>>(kind, reader, None)
}

/// Writes `input` (a whole file of type `kind`) to `output` without metadata.
pub fn strip_metadata<R: BufRead + Seek, W: Write + Seek>(
    kind: ImageKind,
    input: &mut R,
    output: &mut W,
) -> Result<ScanReport, ImageError> {
    input
        .seek(SeekFrom::Start(0))
        .map_err(|_| ImageError::Corrupt(kind))?;
    scan(kind, input, Some(output))
}

/// Finds markup across chunk boundaries.
#[derive(Default)]
struct MarkupScanner {
    tail: Vec<u8>,
}

impl MarkupScanner {
    fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut window = std::mem::take(&mut self.tail);
        window.extend(bytes.iter().map(u8::to_ascii_lowercase));
        let found = MARKUP
            .iter()
            .any(|m| window.windows(m.len()).any(|w| w == *m));
        let keep = window.len().min(LONGEST_MARKUP - 1);
        self.tail = window.split_off(window.len() - keep);
        found
    }
}

fn contains_markup(bytes: &[u8]) -> bool {
    MarkupScanner::default().feed(bytes)
}

struct Walk<'a, R, W> {
    kind: ImageKind,
    reader: &'a mut R,
    out: Option<&'a mut W>,
    report: ScanReport,
}

impl<R: BufRead, W: Write + Seek> Walk<'_, R, W> {
    fn truncated(&self) -> ImageError {
        ImageError::Truncated(self.kind)
    }

    fn corrupt(&self) -> ImageError {
        ImageError::Corrupt(self.kind)
    }

    fn polyglot(&self, why: &'static str) -> ImageError {
        ImageError::Polyglot(why)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ImageError> {
        self.reader.read_exact(buf).map_err(|_| self.truncated())
    }

    fn read_u8(&mut self) -> Result<u8, ImageError> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b)?;
        Ok(b[0])
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        if let Some(out) = self.out.as_mut() {
            out.write_all(bytes)
                .map_err(|_| ImageError::Corrupt(self.kind))?;
        }
        Ok(())
    }

    fn stripping(&self) -> bool {
        self.out.is_some()
    }

    /// After the end marker: nothing but zero padding may follow.
    fn expect_end(&mut self) -> Result<(), ImageError> {
        loop {
            let kind = self.kind;
            let buf = self
                .reader
                .fill_buf()
                .map_err(|_| ImageError::Truncated(kind))?;
            if buf.is_empty() {
                return Ok(());
            }
            if buf.iter().any(|&b| b != 0) {
                return Err(ImageError::Polyglot("data follows the end of the image"));
            }
            let n = buf.len();
            self.reader.consume(n);
        }
    }

    /// Copies (or skips) `len` bytes, feeding `each` with every piece.
    fn pass(
        &mut self,
        mut len: u64,
        keep: bool,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), ImageError> {
        let mut buf = vec![0u8; COPY_CHUNK.min(usize::try_from(len).unwrap_or(COPY_CHUNK))];
        while len > 0 {
            let n = buf.len().min(usize::try_from(len).unwrap_or(buf.len()));
            let piece = &mut buf[..n];
            self.reader
                .read_exact(piece)
                .map_err(|_| ImageError::Truncated(self.kind))?;
            each(piece);
            if keep {
                self.write(&buf[..n])?;
            } else {
                self.report.removed_bytes += n as u64;
            }
            len -= n as u64;
        }
        Ok(())
    }

    // ----- JPEG -----------------------------------------------------------------------

    fn jpeg(&mut self) -> Result<(), ImageError> {
        let mut soi = [0u8; 2];
        self.read_exact(&mut soi)?;
        if soi != [0xFF, 0xD8] {
            return Err(self.corrupt());
        }
        self.write(&soi)?;
        let mut pending: Option<u8> = None;
        let mut seen_scan = false;
        loop {
            let marker = match pending.take() {
                Some(m) => m,
                None => {
                    if self.read_u8()? != 0xFF {
                        return Err(self.corrupt());
                    }
                    let mut m = self.read_u8()?;
                    while m == 0xFF {
                        m = self.read_u8()?;
                    }
                    m
                }
            };
            match marker {
                0xD9 => {
                    if !seen_scan {
                        return Err(self.corrupt());
                    }
                    self.write(&[0xFF, 0xD9])?;
                    return self.expect_end();
                }
                0xD8 | 0x00 => return Err(self.corrupt()),
                0x01 | 0xD0..=0xD7 => self.write(&[0xFF, marker])?,
                _ => {
                    let mut len = [0u8; 2];
                    self.read_exact(&mut len)?;
                    let len = u16::from_be_bytes(len);
                    if len < 2 {
                        return Err(self.corrupt());
                    }
                    let mut payload = vec![0u8; usize::from(len - 2)];
                    self.read_exact(&mut payload)?;
                    if marker == 0xDA {
                        self.write(&[0xFF, marker])?;
                        self.write(&len.to_be_bytes())?;
                        self.write(&payload)?;
                        pending = Some(self.entropy_data()?);
                        seen_scan = true;
                    } else {
                        self.jpeg_segment(marker, len, &payload)?;
                    }
                }
            }
        }
    }

    /// Copies entropy-coded data up to the next marker and returns that marker.
    fn entropy_data(&mut self) -> Result<u8, ImageError> {
        let mut after_ff = false;
        loop {
            let buf = self
                .reader
                .fill_buf()
                .map_err(|_| ImageError::Truncated(self.kind))?;
            if buf.is_empty() {
                return Err(self.truncated());
            }
            let buf = buf.to_vec();
            for (i, &b) in buf.iter().enumerate() {
                if after_ff {
                    match b {
                        // Stuffed zero, restart marker, or fill: still in the scan.
                        0x00 | 0xD0..=0xD7 => after_ff = false,
                        0xFF => {}
                        marker => {
                            // Everything before the 0xFF belongs to the scan.
                            self.write(&buf[..i - 1])?;
                            self.reader.consume(i + 1);
                            return Ok(marker);
                        }
                    }
                } else if b == 0xFF {
                    after_ff = true;
                }
            }
            // Keep a trailing 0xFF for the next round; it is written with what follows.
            let (write, consume) = if after_ff {
                (buf.len() - 1, buf.len())
            } else {
                (buf.len(), buf.len())
            };
            self.write(&buf[..write])?;
            self.reader.consume(consume);
            if after_ff {
                // Resume with the 0xFF already consumed: emit it once its meaning is known.
                let next = self.read_u8()?;
                match next {
                    0x00 | 0xD0..=0xD7 => {
                        self.write(&[0xFF, next])?;
                        after_ff = false;
                    }
                    0xFF => {
                        // Fill bytes before a marker.
                        let mut m = 0xFF;
                        while m == 0xFF {
                            m = self.read_u8()?;
                        }
                        if matches!(m, 0x00 | 0xD0..=0xD7) {
                            self.write(&[0xFF, m])?;
                            after_ff = false;
                        } else {
                            return Ok(m);
                        }
                    }
                    marker => return Ok(marker),
                }
            }
        }
    }

    fn jpeg_segment(&mut self, marker: u8, len: u16, payload: &[u8]) -> Result<(), ImageError> {
        let is_app = (0xE0..=0xEF).contains(&marker) || marker == 0xFE;
        if is_app && contains_markup(payload) {
            return Err(self.polyglot("markup in the image's metadata"));
        }
        let keep = match marker {
            0xE0 => true,                                  // JFIF / JFXX
            0xE2 => payload.starts_with(b"ICC_PROFILE\0"), // colour profile; MPF goes
            0xEE => true,                                  // Adobe: colour transform
            0xE1 => {
                if payload.starts_with(b"Exif\0\0") {
                    self.report.orientation = exif_orientation(&payload[6..]);
                }
                false
            }
            0xE3..=0xED | 0xEF | 0xFE => false,
            _ => true, // tables, frame headers, restart intervals: the image itself
        };
        if keep || !self.stripping() {
            self.write(&[0xFF, marker])?;
            self.write(&len.to_be_bytes())?;
            self.write(payload)?;
            return Ok(());
        }
        self.report.removed_bytes += u64::from(len) + 2;
        if marker == 0xE1
            && let Some(orientation) = self.report.orientation.filter(|o| (2..=8).contains(o))
        {
            self.write(&minimal_exif(orientation))?;
        }
        Ok(())
    }

    // ----- PNG ------------------------------------------------------------------------

    fn png(&mut self) -> Result<(), ImageError> {
        let mut signature = [0u8; 8];
        self.read_exact(&mut signature)?;
        if &signature != b"\x89PNG\r\n\x1a\n" {
            return Err(self.corrupt());
        }
        self.write(&signature)?;
        let mut first = true;
        let mut seen_data = false;
        loop {
            let mut head = [0u8; 8];
            self.read_exact(&mut head)?;
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            let kind: [u8; 4] = [head[4], head[5], head[6], head[7]];
            if len > 0x7FFF_FFFF || !kind.iter().all(u8::is_ascii_alphabetic) {
                return Err(self.corrupt());
            }
            if first != (&kind == b"IHDR") {
                return Err(self.corrupt());
            }
            first = false;
            let critical = kind[0].is_ascii_uppercase();
            let known_keep = PNG_KEEP.contains(&&kind);
            if critical && !known_keep {
                return Err(self.corrupt());
            }
            seen_data |= &kind == b"IDAT";
            let keep = known_keep || !self.stripping();
            let scan_markup = !critical;
            if keep {
                self.write(&head)?;
            } else {
                self.report.removed_bytes += 12;
            }
            let mut crc = crc32fast::Hasher::new();
            crc.update(&kind);
            let mut scanner = MarkupScanner::default();
            let mut markup = false;
            self.pass(u64::from(len), keep, |piece| {
                crc.update(piece);
                if scan_markup {
                    markup |= scanner.feed(piece);
                }
            })?;
            let mut stored = [0u8; 4];
            self.read_exact(&mut stored)?;
            if u32::from_be_bytes(stored) != crc.finalize() {
                return Err(self.corrupt());
            }
            if markup {
                return Err(self.polyglot("markup in the image's metadata"));
            }
            if keep {
                self.write(&stored)?;
            }
            if &kind == b"IEND" {
                if !seen_data {
                    return Err(self.corrupt());
                }
                return self.expect_end();
            }
        }
    }

    // ----- WebP -----------------------------------------------------------------------

    fn webp(&mut self) -> Result<(), ImageError> {
        let mut head = [0u8; 12];
        self.read_exact(&mut head)?;
        if &head[0..4] != b"RIFF" || &head[8..12] != b"WEBP" {
            return Err(self.corrupt());
        }
        let riff_size = u64::from(u32::from_le_bytes([head[4], head[5], head[6], head[7]]));
        if riff_size < 4 {
            return Err(self.corrupt());
        }
        let start = self.out_position()?;
        self.write(&head)?;
        let mut remaining = riff_size - 4;
        let mut first = true;
        let mut written: u64 = 4;
        while remaining > 0 {
            if remaining < 8 {
                return Err(self.corrupt());
            }
            let mut chunk = [0u8; 8];
            self.read_exact(&mut chunk)?;
            let fourcc: [u8; 4] = [chunk[0], chunk[1], chunk[2], chunk[3]];
            let size = u64::from(u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]));
            let padded = size + (size & 1);
            if 8 + padded > remaining {
                // The chunk claims more than the RIFF holds.
                return Err(self.truncated());
            }
            remaining -= 8 + padded;
            if first && !matches!(&fourcc, b"VP8 " | b"VP8L" | b"VP8X") {
                return Err(self.corrupt());
            }
            let is_vp8x = first && &fourcc == b"VP8X";
            first = false;
            let keep = WEBP_KEEP.contains(&&fourcc) || !self.stripping();
            let scan_markup = !WEBP_KEEP.contains(&&fourcc);
            let mut scanner = MarkupScanner::default();
            let mut markup = false;
            if keep {
                self.write(&chunk)?;
                written += 8 + padded;
            } else {
                self.report.removed_bytes += 8 + padded;
            }
            if is_vp8x && keep && self.stripping() && padded >= 4 {
                // Clear the EXIF and XMP flags: those chunks are not written.
                let mut flags = [0u8; 1];
                self.read_exact(&mut flags)?;
                self.write(&[flags[0] & !0x0C])?;
                self.pass(padded - 1, true, |_| {})?;
            } else {
                self.pass(padded, keep, |piece| {
                    if scan_markup {
                        markup |= scanner.feed(piece);
                    }
                })?;
            }
            if markup {
                return Err(self.polyglot("markup in the image's metadata"));
            }
        }
        if let (Some(out), Some(start)) = (self.out.as_mut(), start) {
            // Patch the RIFF size now that the kept chunks are known.
            let size = u32::try_from(written).map_err(|_| ImageError::Corrupt(ImageKind::Webp))?;
            let end = out
                .stream_position()
                .map_err(|_| ImageError::Corrupt(ImageKind::Webp))?;
            out.seek(SeekFrom::Start(start + 4))
                .and_then(|_| out.write_all(&size.to_le_bytes()))
                .and_then(|()| out.seek(SeekFrom::Start(end)).map(|_| ()))
                .map_err(|_| ImageError::Corrupt(ImageKind::Webp))?;
        }
        self.expect_end()
    }

    fn out_position(&mut self) -> Result<Option<u64>, ImageError> {
        match self.out.as_mut() {
            Some(out) => out
                .stream_position()
                .map(Some)
                .map_err(|_| ImageError::Corrupt(self.kind)),
            None => Ok(None),
        }
    }
}

/// PNG chunks that are the image or its colour: kept when stripping. Everything else
/// (`tEXt`, `zTXt`, `iTXt`, `eXIf`, `tIME`, private chunks) is metadata.
const PNG_KEEP: [&[u8; 4]; 19] = [
    b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT",
    b"bKGD", b"pHYs", b"hIST", b"sPLT", b"acTL", b"fcTL", b"fdAT", b"cICP", b"mDCV",
];

/// WebP chunks that are the image or its colour; `EXIF`, `XMP ` and unknown chunks go.
const WEBP_KEEP: [&[u8; 4]; 7] = [
    b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP",
];

/// The orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block.
fn exif_orientation(tiff: &[u8]) -> Option<u16> {
    let big = match tiff.get(0..4)? {
        b"MM\0*" => true,
        b"II*\0" => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b: [u8; 2] = tiff.get(at..at + 2)?.try_into().ok()?;
        Some(if big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = tiff.get(at..at + 4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let ifd = usize::try_from(u32_at(4)?).ok()?;
    let count = usize::from(u16_at(ifd)?);
    (0..count.min(512)).find_map(|i| {
        let entry = ifd + 2 + i * 12;
        (u16_at(entry)? == 0x0112 && u16_at(entry + 2)? == 3).then(|| u16_at(entry + 8))?
    })
}

/// An APP1 segment holding only the orientation: what a viewer needs, nothing about where
/// or with what the photo was taken.
fn minimal_exif(orientation: u16) -> Vec<u8> {
    let mut tiff = Vec::with_capacity(26);
    tiff.extend_from_slice(b"MM\0*");
    tiff.extend_from_slice(&8u32.to_be_bytes());
    tiff.extend_from_slice(&1u16.to_be_bytes());
    tiff.extend_from_slice(&0x0112u16.to_be_bytes());
    tiff.extend_from_slice(&3u16.to_be_bytes());
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes());
    let len = u16::try_from(2 + 6 + tiff.len()).unwrap_or(u16::MAX);
    let mut segment = vec![0xFF, 0xE1];
    segment.extend_from_slice(&len.to_be_bytes());
    segment.extend_from_slice(b"Exif\0\0");
    segment.extend_from_slice(&tiff);
    segment
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::domain::image::{ImageLimits, inspect};

    fn encode(format: image::ImageFormat, w: u32, h: u32) -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 9) as u8, (y * 7) as u8, 77]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    /// An EXIF APP1 with orientation 6 and a GPS-looking string, after SOI.
    pub(crate) fn jpeg_with_exif(orientation: u16) -> Vec<u8> {
        let plain = encode(image::ImageFormat::Jpeg, 40, 30);
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"II*\0");
        tiff.extend_from_slice(&8u32.to_le_bytes());
        tiff.extend_from_slice(&2u16.to_le_bytes());
        // Orientation
        tiff.extend_from_slice(&0x0112u16.to_le_bytes());
        tiff.extend_from_slice(&3u16.to_le_bytes());
        tiff.extend_from_slice(&1u32.to_le_bytes());
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0]);
        // ImageDescription pointing at a string after the IFD
        tiff.extend_from_slice(&0x010Eu16.to_le_bytes());
        tiff.extend_from_slice(&2u16.to_le_bytes());
        let text = b"GPS 48.8584N 2.2945E SECRET-PLACE\0";
        tiff.extend_from_slice(&(text.len() as u32).to_le_bytes());
        tiff.extend_from_slice(&(8u32 + 2 + 24 + 4).to_le_bytes());
        tiff.extend_from_slice(&0u32.to_le_bytes());
        tiff.extend_from_slice(text);
        let mut app1 = vec![0xFF, 0xE1];
        app1.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
        app1.extend_from_slice(b"Exif\0\0");
        app1.extend_from_slice(&tiff);
        let mut out = plain[..2].to_vec();
        out.extend_from_slice(&app1);
        out.extend_from_slice(&plain[2..]);
        out
    }

    fn strip(kind: ImageKind, bytes: &[u8]) -> Result<(Vec<u8>, ScanReport), ImageError> {
        let mut out = Cursor::new(Vec::new());
        let report = strip_metadata(kind, &mut Cursor::new(bytes), &mut out)?;
        Ok((out.into_inner(), report))
    }

    #[test]
    fn clean_files_pass_unchanged() {
        for (format, kind) in [
            (image::ImageFormat::Jpeg, ImageKind::Jpeg),
            (image::ImageFormat::Png, ImageKind::Png),
            (image::ImageFormat::WebP, ImageKind::Webp),
        ] {
            let bytes = encode(format, 33, 21);
            check(kind, &mut Cursor::new(&bytes)).unwrap();
            let (stripped, report) = strip(kind, &bytes).unwrap();
            assert_eq!(report.removed_bytes, 0, "{kind:?}");
            assert_eq!(stripped, bytes, "{kind:?}");
        }
    }

    #[test]
    fn jpeg_exif_goes_and_orientation_stays() {
        let bytes = jpeg_with_exif(6);
        assert!(bytes.windows(12).any(|w| w == b"SECRET-PLACE"));
        let (stripped, report) = strip(ImageKind::Jpeg, &bytes).unwrap();
        assert_eq!(report.orientation, Some(6));
        assert!(report.removed_bytes > 0);
        assert!(!stripped.windows(12).any(|w| w == b"SECRET-PLACE"));
        assert_eq!(exif_orientation(&stripped[12..]), Some(6));
        let decoded = image::load_from_memory(&stripped).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (40, 30));
        // Orientation 1 needs no EXIF at all.
        let (stripped, _) = strip(ImageKind::Jpeg, &jpeg_with_exif(1)).unwrap();
        assert!(!stripped.windows(4).any(|w| w == b"Exif"));
    }

    #[test]
    fn png_text_goes_and_pixels_stay() {
        let bytes = encode(image::ImageFormat::Png, 20, 10);
        // Insert a tEXt chunk after IHDR (8 + 25 bytes).
        let mut text = Vec::new();
        let data = b"Comment\0shot at SECRET-PLACE";
        text.extend_from_slice(&(data.len() as u32).to_be_bytes());
        text.extend_from_slice(b"tEXt");
        text.extend_from_slice(data);
        let mut crc = crc32fast::Hasher::new();
        crc.update(b"tEXt");
        crc.update(data);
        text.extend_from_slice(&crc.finalize().to_be_bytes());
        let mut with_text = bytes[..33].to_vec();
        with_text.extend_from_slice(&text);
        with_text.extend_from_slice(&bytes[33..]);
        let (stripped, report) = strip(ImageKind::Png, &with_text).unwrap();
        assert_eq!(stripped, bytes);
        assert_eq!(report.removed_bytes, text.len() as u64);
        // Without stripping it is kept as it is.
        check(ImageKind::Png, &mut Cursor::new(&with_text)).unwrap();
    }

    #[test]
    fn truncated_files_are_refused_at_every_cut() {
        for (format, kind) in [
            (image::ImageFormat::Jpeg, ImageKind::Jpeg),
            (image::ImageFormat::Png, ImageKind::Png),
            (image::ImageFormat::WebP, ImageKind::Webp),
        ] {
            let bytes = encode(format, 64, 48);
            for cut in [bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
                let err = check(kind, &mut Cursor::new(&bytes[..cut])).unwrap_err();
                assert!(
                    matches!(err, ImageError::Truncated(_) | ImageError::Corrupt(_)),
                    "{kind:?} cut at {cut}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn polyglots_are_refused() {
        let png = encode(image::ImageFormat::Png, 8, 8);
        let mut appended = png.clone();
        appended.extend_from_slice(b"PK\x03\x04 a zip after the image");
        assert!(matches!(
            check(ImageKind::Png, &mut Cursor::new(&appended)),
            Err(ImageError::Polyglot(_))
        ));
        let jpeg = encode(image::ImageFormat::Jpeg, 8, 8);
        let mut comment = jpeg[..2].to_vec();
        let body = b"<html><script>alert(1)</script>";
        comment.extend_from_slice(&[0xFF, 0xFE]);
        comment.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
        comment.extend_from_slice(body);
        comment.extend_from_slice(&jpeg[2..]);
        assert!(matches!(
            check(ImageKind::Jpeg, &mut Cursor::new(&comment)),
            Err(ImageError::Polyglot(_))
        ));
        // Zero padding after the end is not a second file.
        let mut padded = png.clone();
        padded.extend_from_slice(&[0; 64]);
        check(ImageKind::Png, &mut Cursor::new(&padded)).unwrap();
        // And inspect() runs this walk too.
        assert!(matches!(
            inspect(&appended, ImageLimits::default()),
            Err(ImageError::Polyglot(_))
        ));
    }

    #[test]
    fn markup_is_found_across_pieces() {
        let mut scanner = MarkupScanner::default();
        assert!(!scanner.feed(b"hello <scr"));
        assert!(scanner.feed(b"IPT>"));
    }
}

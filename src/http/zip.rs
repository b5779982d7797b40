//! A streaming ZIP writer for stored (uncompressed) entries: each entry's CRC-32 and size
//! are computed while its bytes pass through and written in a data descriptor after them,
//! so nothing is buffered beyond one chunk. Images are already compressed; deflating them
//! again would cost CPU for nothing.
//!
//! Offsets and sizes are 32-bit (no ZIP64): an archive that would pass 4 GiB is refused
//! with an error instead of being written corrupt.

use bytes::{BufMut, Bytes, BytesMut};

use chrono::{DateTime, Datelike, Timelike, Utc};

/// Flags: bit 3 (sizes and CRC in a data descriptor), bit 11 (names are UTF-8).
const FLAGS: u16 = 0x0808;
const VERSION: u16 = 20;
/// The "extended timestamp" extra field (`UT`): the modification time in Unix seconds, which
/// readers prefer to the MS-DOS fields (those have no time zone and 2 s steps).
const EXTENDED_TIMESTAMP: u16 = 0x5455;
const EXTRA_LEN: u16 = 9;

/// An entry's modification time: MS-DOS time and date (UTC) and Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dos_time: u16,
    dos_date: u16,
    unix: u32,
}

impl Stamp {
    /// `ms` (Unix milliseconds) within what both forms hold (1980 to 2106), else 1980-01-01.
    fn from_unix_ms(ms: i64) -> Self {
        let at = DateTime::<Utc>::from_timestamp_millis(ms)
            .filter(|t| (1980..2107).contains(&t.year()))
            .unwrap_or_else(|| DateTime::<Utc>::from_timestamp(315_532_800, 0).unwrap_or_default());
        let year = u16::try_from(at.year() - 1980).unwrap_or(0);
        Self {
            dos_time: (at.hour() as u16) << 11
                | (at.minute() as u16) << 5
                | (at.second() as u16 / 2),
            dos_date: year << 9 | (at.month() as u16) << 5 | at.day() as u16,
            unix: u32::try_from(at.timestamp()).unwrap_or(0),
        }
    }

    /// The `UT` extra field: id, length, flags (modification time present), the time.
    fn extra(self, out: &mut BytesMut) {
        out.put_u16_le(EXTENDED_TIMESTAMP);
        out.put_u16_le(5);
        out.put_u8(1);
        out.put_u32_le(self.unix);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the archive would be larger than 4 GiB, which needs ZIP64 (not supported)")]
pub struct TooLarge;

struct Entry {
    name: String,
    stamp: Stamp,
    crc: u32,
    size: u32,
    offset: u32,
}

/// Builds an archive piece by piece; the caller sends each returned chunk on.
#[derive(Default)]
pub struct ZipWriter {
    entries: Vec<Entry>,
    offset: u64,
    current: Option<(String, Stamp, crc32fast::Hasher, u64, u32)>,
}

fn to_u32(n: u64) -> Result<u32, TooLarge> {
    u32::try_from(n).map_err(|_| TooLarge)
}

impl ZipWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts an entry last modified at `modified_ms` (Unix milliseconds): returns its
    /// local header.
    pub fn start(&mut self, name: &str, modified_ms: i64) -> Result<Bytes, TooLarge> {
        let offset = to_u32(self.offset)?;
        let stamp = Stamp::from_unix_ms(modified_ms);
        let mut header = BytesMut::with_capacity(30 + name.len() + usize::from(EXTRA_LEN));
        header.put_u32_le(0x0403_4b50);
        header.put_u16_le(VERSION);
        header.put_u16_le(FLAGS);
        header.put_u16_le(0); // stored
        header.put_u16_le(stamp.dos_time);
        header.put_u16_le(stamp.dos_date);
        header.put_u32_le(0); // CRC, sizes: in the data descriptor
        header.put_u32_le(0);
        header.put_u32_le(0);
        header.put_u16_le(u16::try_from(name.len()).map_err(|_| TooLarge)?);
        header.put_u16_le(EXTRA_LEN);
        header.put_slice(name.as_bytes());
        stamp.extra(&mut header);
        self.offset += header.len() as u64;
        self.current = Some((name.to_owned(), stamp, crc32fast::Hasher::new(), 0, offset));
        Ok(header.freeze())
    }

    /// Accounts for a chunk of the current entry's data (sent on unchanged).
    pub fn data(&mut self, chunk: &[u8]) -> Result<(), TooLarge> {
        if let Some((_, _, hasher, size, _)) = &mut self.current {
            hasher.update(chunk);
            *size += chunk.len() as u64;
            to_u32(*size)?;
        }
        self.offset += chunk.len() as u64;
        to_u32(self.offset).map(|_| ())
    }

    /// Ends the current entry: returns its data descriptor.
    pub fn finish_entry(&mut self) -> Result<Bytes, TooLarge> {
        let Some((name, stamp, hasher, size, offset)) = self.current.take() else {
            return Ok(Bytes::new());
        };
        let crc = hasher.finalize();
        let size = to_u32(size)?;
        let mut descriptor = BytesMut::with_capacity(16);
        descriptor.put_u32_le(0x0807_4b50);
        descriptor.put_u32_le(crc);
        descriptor.put_u32_le(size);
        descriptor.put_u32_le(size);
        self.offset += descriptor.len() as u64;
        self.entries.push(Entry {
            name,
            stamp,
            crc,
            size,
            offset,
        });
        Ok(descriptor.freeze())
    }

    /// The central directory and end record.
    pub fn finish(mut self) -> Result<Bytes, TooLarge> {
        self.finish_entry()?;
        let start = to_u32(self.offset)?;
        let mut out = BytesMut::new();
        for entry in &self.entries {
            out.put_u32_le(0x0201_4b50);
            out.put_u16_le(VERSION);
            out.put_u16_le(VERSION);
            out.put_u16_le(FLAGS);
            out.put_u16_le(0);
            out.put_u16_le(entry.stamp.dos_time);
            out.put_u16_le(entry.stamp.dos_date);
            out.put_u32_le(entry.crc);
            out.put_u32_le(entry.size);
            out.put_u32_le(entry.size);
            out.put_u16_le(u16::try_from(entry.name.len()).map_err(|_| TooLarge)?);
            out.put_u16_le(EXTRA_LEN);
            out.put_u16_le(0); // comment
            out.put_u16_le(0); // disk
            out.put_u16_le(0); // internal attributes
            out.put_u32_le(0); // external attributes
            out.put_u32_le(entry.offset);
            out.put_slice(entry.name.as_bytes());
            entry.stamp.extra(&mut out);
        }
        let size = to_u32(out.len() as u64)?;
        let count = u16::try_from(self.entries.len()).map_err(|_| TooLarge)?;
        out.put_u32_le(0x0605_4b50);
        out.put_u16_le(0);
        out.put_u16_le(0);
        out.put_u16_le(count);
        out.put_u16_le(count);
        out.put_u32_le(size);
        out.put_u32_le(start);
        out.put_u16_le(0);
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_of_two_entries_has_the_right_layout() {
        let mut zip = ZipWriter::new();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&zip.start("a.txt", 1_764_518_400_000).unwrap());
        zip.data(b"hello ").unwrap();
        zip.data(b"world").unwrap();
        bytes.extend_from_slice(b"hello world");
        bytes.extend_from_slice(&zip.finish_entry().unwrap());
        bytes.extend_from_slice(&zip.start("b/c.txt", 0).unwrap());
        bytes.extend_from_slice(&zip.finish_entry().unwrap());
        bytes.extend_from_slice(&zip.finish().unwrap());
        // End record: two entries, central directory where the entries end.
        let end = &bytes[bytes.len() - 22..];
        assert_eq!(&end[..4], &[0x50, 0x4b, 0x05, 0x06]);
        assert_eq!(u16::from_le_bytes([end[10], end[11]]), 2);
        let cd_offset = u32::from_le_bytes([end[16], end[17], end[18], end[19]]) as usize;
        assert_eq!(&bytes[cd_offset..cd_offset + 4], &[0x50, 0x4b, 0x01, 0x02]);
        // The first central entry carries the CRC of "hello world".
        let crc = u32::from_le_bytes(bytes[cd_offset + 16..cd_offset + 20].try_into().unwrap());
        assert_eq!(crc, crc32fast::hash(b"hello world"));
    }

    #[test]
    fn stamps_carry_the_time_in_both_forms() {
        // 2025-11-30 16:00:00 UTC.
        let stamp = Stamp::from_unix_ms(1_764_518_400_000);
        assert_eq!(stamp.unix, 1_764_518_400);
        assert_eq!(stamp.dos_date, (45 << 9) | (11 << 5) | 30);
        assert_eq!(stamp.dos_time, 16 << 11);
        // Before 1980: the earliest date MS-DOS can say.
        assert_eq!(Stamp::from_unix_ms(0).dos_date, (1 << 5) | 1);
    }
}

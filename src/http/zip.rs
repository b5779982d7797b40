//! A streaming ZIP writer for stored (uncompressed) entries: each entry's CRC-32 and size
//! are computed while its bytes pass through and written in a data descriptor after them,
//! so nothing is buffered beyond one chunk. Images are already compressed; deflating them
//! again would cost CPU for nothing.
//!
//! Offsets and sizes are 32-bit (no ZIP64): an archive that would pass 4 GiB is refused
//! with an error instead of being written corrupt.

use bytes::{BufMut, Bytes, BytesMut};

/// Flags: bit 3 (sizes and CRC in a data descriptor), bit 11 (names are UTF-8).
const FLAGS: u16 = 0x0808;
const VERSION: u16 = 20;
/// 1980-01-01 00:00 in MS-DOS time and date: the archive does not claim mtimes.
const DOS_TIME: u16 = 0;
const DOS_DATE: u16 = (1 << 5) | 1;

#[derive(Debug, thiserror::Error)]
#[error("the archive would be larger than 4 GiB, which needs ZIP64 (not supported)")]
pub struct TooLarge;

struct Entry {
    name: String,
    crc: u32,
    size: u32,
    offset: u32,
}

/// Builds an archive piece by piece; the caller sends each returned chunk on.
#[derive(Default)]
pub struct ZipWriter {
    entries: Vec<Entry>,
    offset: u64,
    current: Option<(String, crc32fast::Hasher, u64, u32)>,
}

fn to_u32(n: u64) -> Result<u32, TooLarge> {
    u32::try_from(n).map_err(|_| TooLarge)
}

impl ZipWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts an entry: returns its local header.
    pub fn start(&mut self, name: &str) -> Result<Bytes, TooLarge> {
        let offset = to_u32(self.offset)?;
        let mut header = BytesMut::with_capacity(30 + name.len());
        header.put_u32_le(0x0403_4b50);
        header.put_u16_le(VERSION);
        header.put_u16_le(FLAGS);
        header.put_u16_le(0); // stored
        header.put_u16_le(DOS_TIME);
        header.put_u16_le(DOS_DATE);
        header.put_u32_le(0); // CRC, sizes: in the data descriptor
        header.put_u32_le(0);
        header.put_u32_le(0);
        header.put_u16_le(u16::try_from(name.len()).map_err(|_| TooLarge)?);
        header.put_u16_le(0);
        header.put_slice(name.as_bytes());
        self.offset += header.len() as u64;
        self.current = Some((name.to_owned(), crc32fast::Hasher::new(), 0, offset));
        Ok(header.freeze())
    }

    /// Accounts for a chunk of the current entry's data (sent on unchanged).
    pub fn data(&mut self, chunk: &[u8]) -> Result<(), TooLarge> {
        if let Some((_, hasher, size, _)) = &mut self.current {
            hasher.update(chunk);
            *size += chunk.len() as u64;
            to_u32(*size)?;
        }
        self.offset += chunk.len() as u64;
        to_u32(self.offset).map(|_| ())
    }

    /// Ends the current entry: returns its data descriptor.
    pub fn finish_entry(&mut self) -> Result<Bytes, TooLarge> {
        let Some((name, hasher, size, offset)) = self.current.take() else {
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
            out.put_u16_le(DOS_TIME);
            out.put_u16_le(DOS_DATE);
            out.put_u32_le(entry.crc);
            out.put_u32_le(entry.size);
            out.put_u32_le(entry.size);
            out.put_u16_le(u16::try_from(entry.name.len()).map_err(|_| TooLarge)?);
            out.put_u16_le(0); // extra
            out.put_u16_le(0); // comment
            out.put_u16_le(0); // disk
            out.put_u16_le(0); // internal attributes
            out.put_u32_le(0); // external attributes
            out.put_u32_le(entry.offset);
            out.put_slice(entry.name.as_bytes());
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
        bytes.extend_from_slice(&zip.start("a.txt").unwrap());
        zip.data(b"hello ").unwrap();
        zip.data(b"world").unwrap();
        bytes.extend_from_slice(b"hello world");
        bytes.extend_from_slice(&zip.finish_entry().unwrap());
        bytes.extend_from_slice(&zip.start("b/c.txt").unwrap());
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
}

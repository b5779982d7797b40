//! Spooling: bytes on their way between the network and the bucket, held in memory while
//! small and in a temporary file (removed when dropped) once large, so memory per transfer
//! is bounded whatever the object's size. Used by uploads, result downloads and ingest.

use bytes::Bytes;

/// Objects up to this size stay in memory between download and write; larger ones go to a
/// temporary file, so memory per transfer is bounded whatever the object's size.
pub const SPOOL_IN_MEMORY_MAX: usize = 2 * 1024 * 1024;

/// Bytes on their way into the bucket: in memory while small, in a temporary file (removed
/// when dropped) once large.
#[derive(Debug)]
pub enum Spooled {
    Memory(Bytes),
    File(tempfile::NamedTempFile),
}

impl Spooled {
    pub fn len(&self) -> std::io::Result<u64> {
        match self {
            Self::Memory(bytes) => Ok(bytes.len() as u64),
            Self::File(file) => Ok(file.as_file().metadata()?.len()),
        }
    }

    pub fn is_empty(&self) -> std::io::Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// What image this is, from its first bytes and header only.
    pub fn inspect(
        &self,
        limits: crate::domain::image::ImageLimits,
    ) -> std::io::Result<Result<crate::domain::image::ImageInfo, crate::domain::image::ImageError>>
    {
        use crate::domain::image::{inspect, inspect_reader};
        Ok(match self {
            Self::Memory(bytes) => inspect(bytes, limits),
            Self::File(file) => inspect_reader(std::io::BufReader::new(file.reopen()?), limits),
        })
    }
}

/// Collects a stream of chunks into a [`Spooled`].
pub struct SpoolWriter {
    memory: bytes::BytesMut,
    /// The body was announced larger than the in-memory cap: it goes to a file from its
    /// first byte (many large downloads at once would otherwise each hold the cap first).
    to_file: bool,
    file: Option<(tempfile::NamedTempFile, std::io::BufWriter<std::fs::File>)>,
}

impl Default for SpoolWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl SpoolWriter {
    pub fn new() -> Self {
        Self::expecting(None)
    }

    /// A writer for a body announced as `expected` bytes: one that stays in memory gets
    /// its buffer at once instead of growing (and copying) it chunk by chunk; one
    /// announced past the cap goes to a file from the start. A wrong announcement costs
    /// nothing beyond the in-memory cap.
    pub fn expecting(expected: Option<u64>) -> Self {
        let fits = |n: u64| usize::try_from(n).is_ok_and(|n| n <= SPOOL_IN_MEMORY_MAX);
        let memory = match expected {
            Some(n) if fits(n) => bytes::BytesMut::with_capacity(n as usize),
            _ => bytes::BytesMut::new(),
        };
        Self {
            memory,
            to_file: expected.is_some_and(|n| !fits(n)),
            file: None,
        }
    }

    pub fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        if self.file.is_none()
            && (self.to_file || self.memory.len() + chunk.len() > SPOOL_IN_MEMORY_MAX)
        {
            let spool = tempfile::NamedTempFile::new()?;
            let mut out = std::io::BufWriter::new(spool.reopen()?);
            out.write_all(&self.memory)?;
            self.memory = bytes::BytesMut::new();
            self.file = Some((spool, out));
        }
        match &mut self.file {
            Some((_, out)) => out.write_all(chunk),
            None => {
                self.memory.extend_from_slice(chunk);
                Ok(())
            }
        }
    }

    pub fn finish(self) -> std::io::Result<Spooled> {
        use std::io::Write;
        match self.file {
            Some((spool, mut out)) => {
                out.flush()?;
                Ok(Spooled::File(spool))
            }
            None => Ok(Spooled::Memory(self.memory.freeze())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announced_small_body_stays_in_memory_in_one_buffer() {
        let mut writer = SpoolWriter::expecting(Some(10));
        let capacity = writer.memory.capacity();
        writer.write(b"hello").unwrap();
        writer.write(b"world").unwrap();
        assert_eq!(writer.memory.capacity(), capacity, "no regrowth");
        match writer.finish().unwrap() {
            Spooled::Memory(bytes) => assert_eq!(&bytes[..], b"helloworld"),
            Spooled::File(_) => panic!("10 bytes went to a file"),
        }
    }

    #[test]
    fn an_announcement_past_the_cap_reserves_nothing_and_a_lie_changes_nothing() {
        let mut huge = SpoolWriter::expecting(Some(u64::MAX));
        assert_eq!(huge.memory.capacity(), 0);
        // Announced past the cap: to a file from the first byte.
        huge.write(b"first").unwrap();
        assert!(huge.file.is_some() && huge.memory.is_empty());
        assert!(matches!(huge.finish().unwrap(), Spooled::File(_)));
        // Announced small, sent large: it still goes to a file past the cap.
        let mut liar = SpoolWriter::expecting(Some(4));
        let chunk = vec![7u8; 1024 * 1024];
        for _ in 0..3 {
            liar.write(&chunk).unwrap();
        }
        let spooled = liar.finish().unwrap();
        assert!(matches!(spooled, Spooled::File(_)));
        assert_eq!(spooled.len().unwrap(), 3 * 1024 * 1024);
    }
}

//! A source's compression, found by its first bytes (never by its name), and the stream that
//! undoes it on its own thread, so decompressing overlaps with hashing and compressing.
//!
//! Every decoder checks its format's integrity data (gzip's CRC-32 and length, xz's block
//! checks, bzip2's block and stream CRCs, zstd's content checksum) when it reaches the end of
//! the stream; the caller reads the stream to its end so that they are always checked.

use std::io::{self, BufRead, Read};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

/// How a source is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    Gzip,
    Xz,
    Bzip2,
    Zstd,
    /// A plain tar.
    None,
}

impl Compression {
    /// Recognizes a format by its magic bytes. bzip2's `BZh` could begin a tar member's name,
    /// so it counts only with a valid block size and the block (or end-of-stream) magic after it.
    pub(crate) fn detect(head: &[u8]) -> Compression {
        const BZIP2_BLOCK: [u8; 6] = [0x31, 0x41, 0x59, 0x26, 0x53, 0x59];
        const BZIP2_END: [u8; 6] = [0x17, 0x72, 0x45, 0x38, 0x50, 0x90];
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if head.len() >= 10
            && head.starts_with(b"BZh")
            && (b'1'..=b'9').contains(&head[3])
            && (head[4..10] == BZIP2_BLOCK || head[4..10] == BZIP2_END)
        {
            Compression::Bzip2
        } else {
            Compression::None
        }
    }

    /// The decompressed stream, decoded on a background thread and bounded to `limit` bytes;
    /// a plain tar is read as it is (its size is its file's).
    pub(crate) fn reader(self, input: impl BufRead + Send + 'static, limit: u64) -> Box<dyn Read> {
        match self {
            Compression::Gzip => Box::new(in_background(flate2::bufread::MultiGzDecoder::new(input), "gzip", limit)),
            // Several streams one after another are one file (as `xz` and `pixz` write them).
            Compression::Xz => Box::new(in_background(lzma_rust2::XzReader::new(input, true), "xz", limit)),
            Compression::Bzip2 => Box::new(in_background(bzip2::bufread::MultiBzDecoder::new(input), "bzip2", limit)),
            Compression::Zstd => Box::new(in_background(ZstdFrames::new(input), "zstd", limit)),
            Compression::None => Box::new(input),
        }
    }
}

/// Runs a reader on its own thread; a few 256 KiB buffers are in flight at most. Past `limit`
/// bytes it fails (a decompression bomb). Its errors name the `format`.
fn in_background(mut source: impl Read + Send + 'static, format: &'static str, limit: u64) -> ChannelReader {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    let mut total = 0u64;
    std::thread::spawn(move || loop {
        let mut buf = vec![0u8; 256 * 1024];
        let result = match source.read(&mut buf) {
            Ok(0) => return,
            Ok(n) if total + n as u64 > limit => Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!(
                    "unpacks to more than {limit} bytes (a decompression bomb, or set IMGBUILD_MAX_UNPACKED higher)"
                ),
            )),
            Ok(n) => {
                total += n as u64;
                buf.truncate(n);
                Ok(buf)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(io::Error::new(e.kind(), format!("{format} data: {e}"))),
        };
        let failed = result.is_err();
        // The receiver is gone when the layer failed for another reason: stop quietly.
        if tx.send(result).is_err() || failed {
            return;
        }
    });
    ChannelReader { rx, current: Vec::new(), pos: 0 }
}

struct ChannelReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(Ok(next)) => {
                    self.current = next;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // the source ended
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A zstd file: frames one after another (as `zstd -T0` and `pzstd` write them), skippable
/// frames skipped, each frame's content checksum compared (ruzstd computes it but leaves the
/// comparison to its caller).
struct ZstdFrames<R> {
    source: R,
    frame: Option<FrameDecoder>,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(source: R) -> Self {
        ZstdFrames { source, frame: None }
    }

    /// Starts the next frame; `false` at the end of the file.
    fn next_frame(&mut self) -> io::Result<bool> {
        loop {
            if self.source.fill_buf()?.is_empty() {
                return Ok(false);
            }
            let mut decoder = FrameDecoder::new();
            match decoder.init(&mut self.source) {
                Ok(()) => {
                    self.frame = Some(decoder);
                    return Ok(true);
                }
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame { length, .. })) => {
                    let skipped = io::copy(&mut (&mut self.source).take(u64::from(length)), &mut io::sink())?;
                    if skipped != u64::from(length) {
                        return Err(corrupt("a skippable frame is cut short"));
                    }
                }
                Err(e) => return Err(corrupt(&e.to_string())),
            }
        }
    }
}

fn corrupt(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("corrupt zstd stream: {message}"))
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(decoder) = self.frame.as_mut() else {
                if !self.next_frame()? {
                    return Ok(0);
                }
                continue;
            };
            if decoder.can_collect() > 0 {
                return decoder.read(buf);
            }
            if !decoder.is_finished() {
                decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBlocks(1))
                    .map_err(|e| corrupt(&e.to_string()))?;
                continue;
            }
            if let Some(stored) = decoder.get_checksum_from_data() {
                if decoder.get_calculated_checksum() != Some(stored) {
                    return Err(corrupt("content checksum mismatch"));
                }
            }
            self.frame = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_apart_by_content() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(Compression::detect(b"\xfd7zXZ\0\0\x04"), Compression::Xz);
        assert_eq!(Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0x24]), Compression::Zstd);
        assert_eq!(Compression::detect(b"BZh91AY&SY\0\0"), Compression::Bzip2);
        // A tar whose first member is named `BZh…` is still a tar.
        assert_eq!(Compression::detect(b"BZh9-notes.txt\0\0\0\0"), Compression::None);
        assert_eq!(Compression::detect(b""), Compression::None);
    }
}

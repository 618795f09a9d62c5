//! One zstd frame (RFC 8878), decoded by ruzstd, its content checksum compared (ruzstd
//! computes it but leaves the comparison to its caller), its errors in plain words.

use std::io::{self, BufRead, Read};

use ruzstd::decoding::errors::FrameDecoderError;
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

/// A frame's magic number, little-endian.
pub(super) const FRAME_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Whether `head` starts a skippable frame: magic 0x184D2A50..=0x184D2A5F, little-endian.
pub(super) fn is_skippable(head: &[u8]) -> bool {
    head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18]
}

/// Consumes a skippable frame (magic, 4-byte length, that many bytes of user data);
/// `false` when the file ends inside it.
pub(super) fn skip_skippable(source: &mut impl BufRead) -> io::Result<bool> {
    let mut header = [0u8; 8];
    let mut got = 0;
    while got < header.len() {
        match source.read(&mut header[got..])? {
            0 => return Ok(false),
            n => got += n,
        }
    }
    let length = u64::from(u32::from_le_bytes([header[4], header[5], header[6], header[7]]));
    Ok(io::copy(&mut source.take(length), &mut io::sink())? == length)
}

/// The frame at the start of `source` (its magic already seen); reads exactly its bytes.
pub(super) struct ZstdFrame<R> {
    source: R,
    decoder: Option<FrameDecoder>,
}

impl<R: BufRead> ZstdFrame<R> {
    pub(super) fn new(source: R) -> Self {
        ZstdFrame { source, decoder: None }
    }
}

/// `e` in plain words; at the end of the file, the frame is cut short (ruzstd's errors say so
/// only deep inside).
fn corrupt(e: &FrameDecoderError, source: &mut impl BufRead) -> io::Error {
    if source.fill_buf().is_ok_and(|rest| rest.is_empty()) {
        return io::Error::new(io::ErrorKind::UnexpectedEof, "the file ends inside the frame");
    }
    let what = match e {
        FrameDecoderError::ReadFrameHeaderError(_)
        | FrameDecoderError::FrameHeaderError(_)
        | FrameDecoderError::FailedToInitialize(_) => "its frame header is invalid".to_string(),
        FrameDecoderError::WindowSizeTooBig { requested, max } => format!(
            "it needs a window of {requested} bytes, more than imgbuild's decoder memory limit of {} MiB",
            max >> 20
        ),
        FrameDecoderError::DictNotProvided { .. } | FrameDecoderError::DictionaryDecodeError(_) => {
            "it was compressed with a dictionary (`zstd -D`), which a source cannot carry".to_string()
        }
        FrameDecoderError::FailedToReadChecksum(_) => "its content checksum cannot be read".to_string(),
        _ => "a block of it does not decode".to_string(),
    };
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl<R: BufRead> Read for ZstdFrame<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let decoder = match &mut self.decoder {
            Some(decoder) => decoder,
            None => {
                let mut decoder = FrameDecoder::new();
                decoder.set_max_window_size(super::DECODER_MEMORY_LIMIT);
                decoder.init(&mut self.source).map_err(|e| corrupt(&e, &mut self.source))?;
                self.decoder.insert(decoder)
            }
        };
        loop {
            if decoder.can_collect() > 0 {
                return decoder.read(buf);
            }
            if decoder.is_finished() {
                break;
            }
            decoder
                .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBlocks(1))
                .map_err(|e| corrupt(&e, &mut self.source))?;
        }
        if let Some(stored) = decoder.get_checksum_from_data() {
            if decoder.get_calculated_checksum() != Some(stored) {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "its content checksum does not match"));
            }
        }
        Ok(0)
    }
}

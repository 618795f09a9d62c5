//! gzip as pigz writes it: one member whose deflate stream is made of independently deflated
//! chunks, each ended by a sync flush, then a final empty block and the CRC-32 and length.
//!
//! miniz_oxide is pure Rust with no CPU-dependent match finding, pinned in `Cargo.lock`: its
//! bytes depend only on the input and the level. Each chunk starts with an empty dictionary, so
//! chunks can be deflated on any thread and joined in order.

use miniz_oxide::deflate::core::{
    compress_to_output, create_comp_flags_from_zip_params, CompressorOxide, TDEFLFlush, TDEFLStatus,
};

/// ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=255 (unknown): nothing about the host.
pub(super) const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// A final, empty fixed-Huffman block: ends the deflate stream after the last sync flush.
const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];

/// One chunk as raw deflate blocks ending on a byte boundary (sync flush).
pub(super) fn deflate_chunk(level: u8, data: &[u8]) -> Vec<u8> {
    // Negative window bits: raw deflate, no zlib header.
    let flags = create_comp_flags_from_zip_params(i32::from(level), -15, 0);
    let mut compressor = CompressorOxide::new(flags);
    // Room for incompressible input (stored blocks add a few bytes per 64 KiB) without regrowing.
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 64);
    let (status, consumed) = compress_to_output(&mut compressor, data, TDEFLFlush::Sync, |bytes| {
        out.extend_from_slice(bytes);
        true
    });
    // With the whole chunk given and a callback that accepts everything, deflate cannot stop early.
    assert!(
        status == TDEFLStatus::Okay && consumed == data.len(),
        "deflate of an in-memory chunk stopped early: {status:?}"
    );
    out
}

/// What ends the member: the last block, the CRC-32 of the input and its length modulo 2^32
/// (ISIZE, as RFC 1952 says).
pub(super) fn trailer(crc: u32, total_in: u64) -> Vec<u8> {
    let mut out = FINAL_EMPTY_BLOCK.to_vec();
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(total_in as u32).to_le_bytes());
    out
}

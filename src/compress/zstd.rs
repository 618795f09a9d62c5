//! zstd as independent frames: each chunk is one frame, compressed alone by a fresh context,
//! with its content size and checksum. A zstd stream is one or more frames one after another
//! (RFC 8878, section 3), so every zstd reader reads the whole layer.
//!
//! Why frames rather than zstd's own multithreading: the bytes of one frame depend only on the
//! chunk, the level and the library's version, so the layer cannot depend on the number of
//! threads by construction, as with the gzip chunks. The library is the reference
//! implementation (libzstd, built from the source `zstd-sys` bundles, pinned in `Cargo.lock`).
//! Its authors state that for a given level, binary version and input the output is always
//! the same (facebook/zstd#999), and version 1.5.7 removed the last choice that depended on
//! the CPU (whether the row match finder is used no longer depends on SSE2/NEON,
//! facebook/zstd#4099): other choices by CPU (BMI2) pick faster code for the same result.

use zstd::zstd_safe;

/// The zstd frame magic, little-endian (RFC 8878, 3.1.1).
#[cfg(test)]
pub(super) const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// One chunk as one zstd frame.
pub(super) fn frame(level: u8, data: &[u8]) -> Vec<u8> {
    let mut context = zstd_safe::CCtx::create();
    let set = |c: &mut zstd_safe::CCtx, p| c.set_parameter(p).map_err(zstd_safe::get_error_name);
    let result = set(&mut context, zstd_safe::CParameter::CompressionLevel(i32::from(level)))
        .and_then(|_| set(&mut context, zstd_safe::CParameter::ChecksumFlag(true)))
        .and_then(|_| set(&mut context, zstd_safe::CParameter::ContentSizeFlag(true)));
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
    let result = result.and_then(|_| context.compress2(&mut out, data).map_err(zstd_safe::get_error_name));
    // A valid level and room for the worst case (`compress_bound`): libzstd cannot fail here.
    if let Err(e) = result {
        panic!("zstd compression of an in-memory chunk failed: {e}");
    }
    out
}

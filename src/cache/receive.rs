//! Checking a layer blob from a cache as it streams: its bytes are written to a temporary
//! file of the store while they are hashed (the digest), and inflated on other threads while
//! the tar they hold is hashed (the diff_id). A layer as imgbuild writes it is inflated on
//! every core ([`crate::compress::gunzip`], which takes a blob only when that gives exactly
//! what a sequential reader would); any other blob is read again by one sequential reader,
//! which decides. The blob enters the store only when its size, diff_id and digest are all
//! what the record says; a record that lies about any of them is refused and leaves nothing
//! behind.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use crate::compress::gunzip;
use crate::digest::{Algorithm, HashingWriter, Sha256Digest};
use crate::error::{escape, io_cause, Error, Result};
use crate::progress::{Reporter, SilentReporter, Task};
use crate::store::{BlobWriter, LayerRecord, Store};

/// Why a blob was not taken (the build then makes the layer itself).
pub(crate) type Refusal = String;

/// Pieces in flight between the reading and the inflating thread (each up to 256 KiB).
const IN_FLIGHT: usize = 4;

/// Streams `body` (the blob `layer` names) into the store, checking it on the way. `Ok(Err)`:
/// the cache's blob is refused; `Err`: the store failed.
pub(crate) fn receive(
    store: &Store,
    body: impl Read,
    layer: &LayerRecord,
    limits: Limits,
    task: &Arc<dyn Task>,
) -> Result<Result<(), Refusal>> {
    let mut blob = store.writer(Algorithm::Sha256)?;
    if let Err(refusal) = check(body, Bytes::Written(&mut blob, store.root()), layer, limits, task)? {
        return Ok(Err(refusal)); // dropping the writer removes its temporary file
    }
    match blob.commit(Some(&layer.digest.0.to_hash()), "a layer from the cache") {
        Ok(_) => Ok(Ok(())),
        Err(Error::HashMismatch { found, .. }) => {
            Ok(Err(format!("its blob's digest is {found}, the record names {}", layer.digest)))
        }
        Err(e) => Err(e),
    }
}

/// Checks a blob already in the store (so its digest is right) against the record's size and
/// diff_id.
pub(crate) fn check_stored(store: &Store, layer: &LayerRecord, limits: Limits) -> Result<Result<(), Refusal>> {
    let file = store.open_blob(&layer.digest.0.to_hash())?;
    check(io::BufReader::new(file), Bytes::Stored(store), layer, limits, &SilentReporter.task("", None))
}

/// How far a blob may inflate, and on how many threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// `IMGBUILD_MAX_UNPACKED`: a decompression bomb stops here.
    pub max_unpacked: u64,
    pub threads: usize,
}

impl Limits {
    pub(crate) fn of(settings: &crate::layer::LayerSettings) -> Limits {
        Limits { max_unpacked: settings.max_unpacked, threads: settings.parallelism.threads }
    }
}

/// Where the bytes of a blob being checked are: written to a temporary blob as they come (and
/// the store's root, for errors), or already in the store.
enum Bytes<'b, 's> {
    Written(&'b mut BlobWriter<'s>, &'b Path),
    Stored(&'b Store),
}

impl Bytes<'_, '_> {
    /// The blob's bytes read again from their start.
    fn again(&mut self, layer: &LayerRecord) -> Result<io::BufReader<std::fs::File>> {
        let file = match self {
            Bytes::Written(writer, root) => writer.written().map_err(|e| Error::io(root, e))?,
            Bytes::Stored(store) => store.open_blob(&layer.digest.0.to_hash())?,
        };
        Ok(io::BufReader::with_capacity(256 * 1024, file))
    }
}

/// Reads `body` to its end (at most one byte past the record's size), writing it to `blob`
/// and inflating it on other threads; compares size and diff_id with the record.
fn check(
    body: impl Read,
    mut blob: Bytes<'_, '_>,
    layer: &LayerRecord,
    limits: Limits,
    task: &Arc<dyn Task>,
) -> Result<Result<(), Refusal>> {
    let (pieces, received) = sync_channel::<io::Result<Vec<u8>>>(IN_FLIGHT);
    let (read, inflated) = std::thread::scope(|scope| {
        let inflating = scope.spawn(move || diff_id_as_received(received, limits));
        let read = feed(body.take(layer.size + 1), &mut blob, &pieces, task);
        drop(pieces);
        (read, inflating.join())
    });
    let size = match read? {
        Fed::All(size) => size,
        Fed::Failed(why) => return Ok(Err(format!("reading its blob: {why}"))),
    };
    let inflated = inflated.map_err(|_| Error::Internal("the thread checking a cached layer panicked".into()))?;
    // Not a layer as imgbuild writes it: one sequential reader decides, over the bytes received.
    let inflated = match inflated {
        Some(found) => found,
        None => sequential_diff_id(blob.again(layer)?, limits.max_unpacked),
    };
    let (diff_id, _) = match inflated {
        Ok(found) => found,
        Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {
            return Ok(Err(format!("its blob unpacks to {}", io_cause(&e))));
        }
        Err(e) => return Ok(Err(format!("its blob is not a gzip stream of a layer: {}", escape(&io_cause(&e))))),
    };
    if size != layer.size {
        return Ok(Err(format!("its blob has {} bytes, the record says {}", shown_size(size, layer.size), layer.size)));
    }
    if diff_id != layer.diff_id.0 {
        return Ok(Err(format!("its blob inflates to diff_id {diff_id}, the record says {}", layer.diff_id)));
    }
    Ok(Ok(()))
}

fn shown_size(found: u64, expected: u64) -> String {
    if found > expected {
        format!("more than {expected}")
    } else {
        found.to_string()
    }
}

enum Fed {
    /// The whole body, of this many bytes.
    All(u64),
    /// The body could not be read to its end.
    Failed(String),
}

/// Copies the body to the blob writer and, piece by piece, to the inflating thread.
fn feed(
    mut body: impl Read,
    blob: &mut Bytes<'_, '_>,
    pieces: &SyncSender<io::Result<Vec<u8>>>,
    task: &Arc<dyn Task>,
) -> Result<Fed> {
    let mut total = 0u64;
    loop {
        let mut piece = vec![0u8; 256 * 1024];
        let n = match body.read(&mut piece) {
            Ok(0) => return Ok(Fed::All(total)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Ok(Fed::Failed(escape(&io_cause(&e)))),
        };
        piece.truncate(n);
        if let Bytes::Written(writer, root) = blob {
            writer.write_all(&piece).map_err(|e| Error::io(root, e))?;
        }
        total += n as u64;
        task.set_position(total);
        // The inflating side reads every piece: it is gone only if it panicked.
        if pieces.send(Ok(piece)).is_err() {
            return Err(Error::Internal("the thread checking a cached layer stopped".into()));
        }
    }
}

/// The sha256 of what the pieces inflate to, and its length, as they are received. With one
/// thread, by one sequential reader (zlib-rs, which inflates faster on one core than the
/// segment decoder); with more, on all of them if the blob is a layer as imgbuild writes it,
/// and `None` if it is not (the caller then reads it again sequentially). Reads every piece.
fn diff_id_as_received(
    pieces: Receiver<io::Result<Vec<u8>>>,
    limits: Limits,
) -> Option<io::Result<(Sha256Digest, u64)>> {
    if limits.threads >= 2 {
        return layer_diff_id(pieces, limits).map(Ok);
    }
    let mut reader = crate::layer::ChannelReader::new(pieces);
    let found = sequential_diff_id(&mut reader, limits.max_unpacked);
    reader.drain(); // an error ends the reading, not the receiving
    Some(found)
}

/// The sha256 of what the pieces of a layer as imgbuild writes it inflate to, and its length,
/// on `limits.threads` threads; `None` for any other blob (or one past the limit).
fn layer_diff_id(pieces: Receiver<io::Result<Vec<u8>>>, limits: Limits) -> Option<(Sha256Digest, u64)> {
    let mut hasher = crate::digest::Hasher::new(Algorithm::Sha256);
    let size = gunzip::inflate_layer(
        pieces.into_iter().map_while(Result::ok),
        limits.threads,
        limits.max_unpacked,
        &mut |b| hasher.update(b),
    )?;
    let diff_id = hasher.finish().as_sha256().expect("a sha256 hasher");
    Some((diff_id, size))
}

/// The sha256 of what a gzip blob inflates to, and its length; an error past `limit` bytes (a
/// decompression bomb) or for anything that is not whole gzip (members one after another are).
fn sequential_diff_id(mut blob: impl Read, limit: u64) -> io::Result<(Sha256Digest, u64)> {
    let mut gunzip =
        flate2::write::MultiGzDecoder::new(Limited { inner: HashingWriter::new(io::sink()), left: limit, limit });
    if io::copy(&mut blob, &mut gunzip)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "it is empty"));
    }
    let (_, diff_id, size) = gunzip.finish()?.inner.finish();
    Ok((diff_id, size))
}

/// A writer that fails once more than `left` bytes have been written to it.
struct Limited<W> {
    inner: W,
    left: u64,
    limit: u64,
}

impl<W: Write> Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("more than {} bytes (IMGBUILD_MAX_UNPACKED)", self.limit),
            ));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{BlobDigest, DiffId};

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    /// A blob and the record that truly describes it.
    fn layer(tar: &[u8]) -> (Vec<u8>, LayerRecord) {
        let blob = gzip(tar);
        let record = record(&blob, tar);
        (blob, record)
    }

    /// The record of `blob`, a compressed `tar`.
    fn record(blob: &[u8], tar: &[u8]) -> LayerRecord {
        LayerRecord {
            digest: BlobDigest(Sha256Digest::of(blob)),
            diff_id: DiffId(Sha256Digest::of(tar)),
            size: blob.len() as u64,
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn limits(max_unpacked: u64) -> Limits {
        Limits { max_unpacked, threads: THREADS.with(|t| t.get()) }
    }

    thread_local! {
        /// The threads the checks in this test use (each test runs on a thread of its own).
        static THREADS: std::cell::Cell<usize> = const { std::cell::Cell::new(2) };
    }

    /// Runs `test` with one checking thread (one sequential reader) and with two (the
    /// parallel reader, or the sequential one after it declines).
    fn with_one_and_two_threads(test: impl Fn()) {
        for threads in [1, 2] {
            THREADS.with(|t| t.set(threads));
            test();
        }
    }

    fn take(store: &Store, blob: &[u8], record: &LayerRecord, limit: u64) -> Result<(), Refusal> {
        receive(store, blob, record, limits(limit), &SilentReporter.task("", None)).unwrap()
    }

    /// Nothing but the blob `kept` (if any) is in the store: no temporary file, no other blob.
    fn only(store: &Store, kept: Option<&LayerRecord>) {
        assert_eq!(std::fs::read_dir(store.root().join("tmp")).unwrap().count(), 0, "a temporary file is left");
        let blobs = store.blobs().unwrap();
        assert_eq!(blobs.len(), usize::from(kept.is_some()), "{blobs:?}");
        if let Some(record) = kept {
            assert!(store.has_sha256(&record.digest.0));
        }
    }

    #[test]
    fn a_blob_that_is_what_its_record_says_enters_the_store() {
        with_one_and_two_threads(|| {
            let (_d, store) = store();
            let tar: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
            let (blob, record) = layer(&tar);
            assert_eq!(take(&store, &blob, &record, 1 << 30), Ok(()));
            only(&store, Some(&record));
            assert_eq!(check_stored(&store, &record, limits(1 << 30)).unwrap(), Ok(()));
        });
    }

    #[test]
    fn a_layer_as_imgbuild_writes_it_is_checked_and_a_lie_is_still_refused() {
        with_one_and_two_threads(|| {
            use crate::compress::{Compressor, LayerWriter, Parallelism};
            let (_d, store) = store();
            let tar: Vec<u8> = (0..5_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> (i % 13)) as u8).collect();
            let mut writer = LayerWriter::new(Vec::new(), Compressor::gzip(1), Parallelism::threads(2)).unwrap();
            writer.write_all(&tar).unwrap();
            let blob = writer.finish().unwrap();
            let record = record(&blob, &tar);
            let lie = LayerRecord { diff_id: DiffId(Sha256Digest::of(b"another tar")), ..record };
            assert!(take(&store, &blob, &lie, 1 << 30).unwrap_err().contains("diff_id"));
            only(&store, None);
            let refused = take(&store, &blob, &record, 4_000_000).unwrap_err();
            assert!(refused.contains("more than 4000000 bytes"), "{refused}");
            only(&store, None);
            assert_eq!(take(&store, &blob, &record, 1 << 30), Ok(()));
            only(&store, Some(&record));
            assert_eq!(check_stored(&store, &record, limits(1 << 30)).unwrap(), Ok(()));
        });
    }

    #[test]
    fn a_record_that_lies_leaves_nothing_in_the_store() {
        with_one_and_two_threads(|| {
            let (_d, store) = store();
            let (blob, record) = layer(b"the real layer");
            let other = Sha256Digest::of(b"something else");
            let cases = [
                (LayerRecord { diff_id: DiffId(other), ..record }, "diff_id"),
                (LayerRecord { digest: BlobDigest(other), ..record }, "digest"),
                (LayerRecord { size: record.size - 1, ..record }, "bytes"),
                (LayerRecord { size: record.size + 1, ..record }, "bytes"),
            ];
            for (lie, what) in cases {
                let refused = take(&store, &blob, &lie, 1 << 20).unwrap_err();
                assert!(refused.contains(what), "{what}: {refused}");
                only(&store, None);
            }
        });
    }

    #[test]
    fn a_blob_that_is_not_whole_gzip_is_refused() {
        with_one_and_two_threads(|| {
            let (_d, store) = store();
            let (blob, _) = layer(&vec![7u8; 100_000]);
            let truncated = &blob[..blob.len() - 4];
            let mut trailing = blob.clone();
            trailing.extend_from_slice(b"junk after the end");
            let mut flipped = blob.clone();
            let last = flipped.len() - 6;
            flipped[last] ^= 1; // the CRC-32
            for bad in [truncated, &trailing[..], &flipped[..], b"plain text, not gzip", b""] {
                let record = record(bad, &[7u8; 100_000]);
                let refused = take(&store, bad, &record, 1 << 20).unwrap_err();
                assert!(refused.contains("not a gzip stream"), "{refused}");
                only(&store, None);
            }
        });
    }

    #[test]
    fn members_one_after_another_are_one_layer_as_runtimes_read_it() {
        with_one_and_two_threads(|| {
            let (_d, store) = store();
            let mut blob = gzip(b"first half, ");
            blob.extend(gzip(b"second half"));
            let record = record(&blob, b"first half, second half");
            assert_eq!(take(&store, &blob, &record, 1 << 20), Ok(()));
        });
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        with_one_and_two_threads(|| {
            let (_d, store) = store();
            let (blob, record) = layer(&vec![0u8; 4 << 20]);
            let refused = take(&store, &blob, &record, 1 << 20).unwrap_err();
            assert!(refused.contains("more than 1048576 bytes"), "{refused}");
            only(&store, None);
        });
    }

    #[test]
    fn a_body_cut_short_is_refused() {
        with_one_and_two_threads(|| {
            struct Dropped<'a>(&'a [u8]);
            impl Read for Dropped<'_> {
                fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                    if self.0.is_empty() {
                        return Err(io::Error::new(io::ErrorKind::ConnectionReset, "connection reset"));
                    }
                    let n = buf.len().min(self.0.len()).min(1000);
                    buf[..n].copy_from_slice(&self.0[..n]);
                    self.0 = &self.0[n..];
                    Ok(n)
                }
            }
            let (_d, store) = store();
            let (blob, record) = layer(&(0..200_000u32).map(|i| (i * 7 % 256) as u8).collect::<Vec<_>>());
            let refused = receive(
                &store,
                Dropped(&blob[..blob.len() / 2]),
                &record,
                limits(1 << 20),
                &SilentReporter.task("", None),
            )
            .unwrap()
            .unwrap_err();
            assert!(refused.contains("connection reset"), "{refused}");
            only(&store, None);
        });
    }
}

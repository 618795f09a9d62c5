//! Taking a layer blob from a cache: its bytes are written to a temporary file of the store
//! while they are hashed, and it enters the store only when its size and digest are what the
//! record says. The record's diff_id is taken as it is: a trusted key signed it (the cache
//! checks that before asking for the blob), so a hit inflates nothing. A blob that is not what
//! its record names is refused and leaves nothing behind.

use std::io::{self, Read, Write};
use std::sync::Arc;

use crate::digest::Algorithm;
use crate::error::{escape, io_cause, Error, IoContext, Result};
use crate::progress::Task;
use crate::store::{LayerRecord, Store};

/// Why a blob was not taken (the build then makes the layer itself).
pub(crate) type Refusal = String;

/// Streams `body` (the blob `layer` names) into the store, checking its size and digest on the
/// way. `Ok(Err)`: the cache's blob is refused; `Err`: the store failed.
pub(crate) fn receive(
    store: &Store,
    body: impl Read,
    layer: &LayerRecord,
    task: &Arc<dyn Task>,
) -> Result<Result<(), Refusal>> {
    let mut blob = store.writer(Algorithm::Sha256)?;
    // One byte past the record's size tells a longer blob from an exact one.
    let mut body = body.take(layer.size + 1);
    let mut piece = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match body.read(&mut piece) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Ok(Err(format!("reading its blob: {}", escape(&io_cause(&e))))),
        };
        blob.write_all(&piece[..n]).at(store.root())?;
        total += n as u64;
        task.set_position(total);
    }
    if total != layer.size {
        return Ok(Err(format!(
            "its blob has {} bytes, the record says {}",
            shown_size(total, layer.size),
            layer.size
        )));
    }
    match blob.commit(Some(&layer.digest.0.to_hash()), "a layer from the cache") {
        Ok(_) => Ok(Ok(())),
        Err(Error::HashMismatch { found, .. }) => {
            Ok(Err(format!("its blob's digest is {found}, the record names {}", layer.digest)))
        }
        Err(e) => Err(e),
    }
}

/// Checks a blob already in the store (so its digest is right) against the record's size.
pub(crate) fn check_stored(store: &Store, layer: &LayerRecord) -> Result<Result<(), Refusal>> {
    let path = store.blob_path(&layer.digest.0.to_hash());
    let size = std::fs::metadata(&path).at(&path)?.len();
    match size == layer.size {
        true => Ok(Ok(())),
        false => Ok(Err(format!("its blob has {size} bytes, the record says {}", layer.size))),
    }
}

fn shown_size(found: u64, expected: u64) -> String {
    if found > expected {
        format!("more than {expected}")
    } else {
        found.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{BlobDigest, DiffId, Sha256Digest};
    use crate::progress::{Reporter, SilentReporter};

    /// The record that truly names `blob` (its diff_id is whatever the signer said).
    fn record(blob: &[u8]) -> LayerRecord {
        LayerRecord {
            digest: BlobDigest(Sha256Digest::of(blob)),
            diff_id: DiffId(Sha256Digest::of(b"the tar")),
            size: blob.len() as u64,
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn take(store: &Store, blob: impl Read, record: &LayerRecord) -> Result<(), Refusal> {
        receive(store, blob, record, &SilentReporter.task("", None)).unwrap()
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
    fn a_blob_that_is_what_its_record_names_enters_the_store_uninflated() {
        let (_d, store) = store();
        // Not even gzip: what it holds is vouched for by the record's signature, not inflated.
        let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let record = record(&blob);
        assert_eq!(take(&store, &blob[..], &record), Ok(()));
        only(&store, Some(&record));
        assert_eq!(check_stored(&store, &record).unwrap(), Ok(()));
        let longer = LayerRecord { size: record.size + 1, ..record };
        assert!(check_stored(&store, &longer).unwrap().unwrap_err().contains("bytes"));
    }

    #[test]
    fn a_record_that_lies_about_its_blob_leaves_nothing_in_the_store() {
        let (_d, store) = store();
        let blob = b"the real layer".to_vec();
        let record = record(&blob);
        let cases = [
            (LayerRecord { digest: BlobDigest(Sha256Digest::of(b"other")), ..record }, "digest"),
            (LayerRecord { size: record.size - 1, ..record }, "more than"),
            (LayerRecord { size: record.size + 1, ..record }, "bytes"),
        ];
        for (lie, what) in cases {
            let refused = take(&store, &blob[..], &lie).unwrap_err();
            assert!(refused.contains(what), "{what}: {refused}");
            only(&store, None);
        }
    }

    #[test]
    fn a_body_cut_short_is_refused() {
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
        let blob: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let refused = take(&store, Dropped(&blob[..blob.len() / 2]), &record(&blob)).unwrap_err();
        assert!(refused.contains("connection reset"), "{refused}");
        only(&store, None);
    }
}

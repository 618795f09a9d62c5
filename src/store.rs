//! The content-addressed store.
//!
//! ```text
//! STORE/blobs/<algorithm>/<hex>   sources, layers, configs, manifests (read-only once written)
//! STORE/layers/<derivation>.json  which layer a recipe's derivation hash produced
//! STORE/roots/<hash of path>.json an output imgbuild wrote and the blobs it needs (gc roots)
//! STORE/registries/<host>.json    which repositories of a registry hold which blobs (mount hints)
//! STORE/caches/<cache>/            what a `--cache` repository holds, as this store last saw it
//! STORE/supply/                    facts read from base images for SBOMs (their dpkg packages)
//! STORE/diff_ids/<hex>             a base layer blob whose content was checked against its diff_id
//! STORE/tmp/                      temporary files, on the same file system as blobs/
//! STORE/locks/                    one lock file per entry being produced
//! ```
//! Invariants (as in the Nix store): a blob is written to a temporary file while it is hashed,
//! fsynced, checked against the expected hash, renamed into place and its directory fsynced; so
//! a blob path exists only with the right content. Work on one entry takes that entry's lock and
//! checks again after locking, so concurrent builds never do the same work twice or see half of it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::{hash_reader, Algorithm, BlobDigest, DiffId, Hash, Hasher, Sha256Digest};
use crate::error::{Error, IoContext, Result};

/// The largest JSON document (config, manifest, index) read whole into memory.
pub(crate) const MAX_DOCUMENT: u64 = 4 << 20;

pub struct Store {
    root: PathBuf,
}

/// What the store knows about a built layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerRecord {
    pub digest: BlobDigest,
    pub diff_id: DiffId,
    pub size: u64,
}

impl Store {
    /// The store location: `--store`, then `IMGBUILD_STORE` (both handled by the CLI), then
    /// `$XDG_CACHE_HOME/imgbuild`, then `~/.cache/imgbuild`.
    pub fn default_root() -> PathBuf {
        if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(xdg).join("imgbuild");
        }
        if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(home).join(".cache").join("imgbuild");
        }
        PathBuf::from(".imgbuild-store")
    }

    pub fn open(root: &Path) -> Result<Store> {
        for dir in ["blobs/sha256", "blobs/sha512", "layers", "roots", "registries", "tmp", "locks"] {
            let d = root.join(dir);
            fs::create_dir_all(&d).at(&d)?;
        }
        crate::error::note_opened_store(root);
        Ok(Store { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, hash: &Hash) -> PathBuf {
        self.root.join("blobs").join(hash.algorithm().name()).join(hash.hex())
    }

    pub fn sha256_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Whether the store holds `hash`'s blob, intact (see [`Store::intact`]).
    pub fn has(&self, hash: &Hash) -> bool {
        self.intact(hash).unwrap_or(false)
    }

    pub fn has_sha256(&self, digest: &Sha256Digest) -> bool {
        self.has(&digest.to_hash())
    }

    /// Whether `hash`'s blob is there with the content its name says. Every blob is stamped with
    /// the modification time [`BLOB_STAMP`] when it is stored; outputs share blobs by hard link,
    /// so a write to an output's copy is a write to the store's, and it moves that time. A blob
    /// whose stamp moved is hashed again: kept (and stamped again) if it still matches, removed
    /// if not, so what a later build uses is always what its name says. Costs one `stat`.
    pub fn intact(&self, hash: &Hash) -> Result<bool> {
        let path = self.blob_path(hash);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(&path, e)),
        };
        if meta.modified().at(&path)? == BLOB_STAMP {
            return Ok(true);
        }
        let (found, _) = hash_reader(hash.algorithm(), io::BufReader::new(File::open(&path).at(&path)?)).at(&path)?;
        if found == *hash {
            stamp(&path)?;
            return Ok(true);
        }
        fs::remove_file(&path).at(&path)?;
        Ok(false)
    }

    /// The path of an intact blob, for writers that copy or link it into an output or upload it.
    pub fn intact_path(&self, digest: &Sha256Digest) -> Result<PathBuf> {
        if self.intact(&digest.to_hash())? {
            return Ok(self.sha256_path(digest));
        }
        Err(Error::Store {
            path: self.sha256_path(digest),
            message: format!(
                "blob {digest} is missing, or was changed after it was stored (and has been removed); build again"
            ),
        })
    }

    /// A new temporary file in the store, unique to this process and call.
    pub fn temp_path(&self, what: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root.join("tmp").join(format!("{what}.{}.{n}", std::process::id()))
    }

    /// A path that survives between runs, for downloads that may be resumed. Only ever used
    /// while holding the entry's lock, and never trusted: its content is re-hashed in full.
    pub fn partial_path(&self, hash: &Hash) -> PathBuf {
        self.root.join("tmp").join(format!("partial-{}-{}", hash.algorithm().name(), hash.hex()))
    }

    /// Takes the exclusive lock named `key` (blocking until other processes release it).
    /// The lock goes with the process: a killed build never leaves a lock held.
    pub fn lock(&self, key: &str) -> Result<StoreLock> {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).at(&path)?;
        file.lock().at(&path)?;
        Ok(StoreLock { _file: file })
    }

    /// Held shared by every build for its whole run, and exclusively by `store gc`.
    pub fn build_lock_shared(&self) -> Result<StoreLock> {
        let path = self.root.join("locks/build.lock");
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).at(&path)?;
        file.lock_shared().at(&path)?;
        Ok(StoreLock { _file: file })
    }

    pub fn build_lock_exclusive(&self) -> Result<StoreLock> {
        self.lock("build")
    }

    /// Starts writing a blob whose hash is computed as it is written.
    pub fn writer(&self, algorithm: Algorithm) -> Result<BlobWriter<'_>> {
        let path = self.temp_path("blob");
        let file = File::create(&path).at(&path)?;
        Ok(BlobWriter {
            store: self,
            path,
            file: Some(io::BufWriter::with_capacity(256 * 1024, file)),
            hasher: Hasher::new(algorithm),
            size: 0,
            writeback: Writeback::starting_at(0),
        })
    }

    /// Moves a fully written and fsynced temporary file into place, if its hash is right.
    /// Verification lives here, in one place, for every way a blob enters the store.
    pub fn commit_file(&self, temp: &Path, found: Hash, expected: Option<&Hash>, what: &str) -> Result<Hash> {
        if let Some(expected) = expected {
            if *expected != found {
                let _ = fs::remove_file(temp);
                return Err(Error::HashMismatch { what: what.to_string(), expected: expected.clone(), found });
            }
        }
        let dest = self.blob_path(&found);
        if dest.is_file() {
            // Another build stored the same content first; identical by construction.
            let _ = fs::remove_file(temp);
            return Ok(found);
        }
        stamp(temp)?;
        let mut perms = fs::metadata(temp).at(temp)?.permissions();
        perms.set_readonly(true);
        fs::set_permissions(temp, perms).at(temp)?;
        fs::rename(temp, &dest).at(&dest)?;
        sync_dir(dest.parent().expect("blob has a parent"))?;
        Ok(found)
    }

    /// Copies a file into the store, hashing it on the way, and checks it against `expected`.
    pub fn add_file(&self, path: &Path, algorithm: Algorithm, expected: Option<&Hash>) -> Result<(Hash, u64)> {
        let mut src = File::open(path).at(path)?;
        let mut w = self.writer(algorithm)?;
        io::copy(&mut src, &mut w).at(path)?;
        let size = w.size;
        let hash = w.commit(expected, &path.display().to_string())?;
        Ok((hash, size))
    }

    /// Stores a small blob held in memory (configs, manifests, indexes).
    pub fn add_bytes(&self, data: &[u8]) -> Result<Sha256Digest> {
        let digest = Sha256Digest::of(data);
        if self.has_sha256(&digest) {
            return Ok(digest);
        }
        let mut w = self.writer(Algorithm::Sha256)?;
        w.write_all(data).at(&self.root)?;
        w.commit(Some(&digest.to_hash()), "generated blob")?;
        Ok(digest)
    }

    pub fn open_blob(&self, hash: &Hash) -> Result<File> {
        let path = self.blob_path(hash);
        if !self.intact(hash)? && path.exists() {
            return Err(Error::Store { path, message: format!("blob {hash} does not match its name") });
        }
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::Store {
                path: path.clone(),
                message: format!("blob {hash} is missing; run `imgbuild store verify`"),
            },
            _ => Error::io(&path, e),
        })
    }

    /// Reads a small blob (a config, manifest or index) whole, checking its digest.
    pub fn read_blob(&self, digest: &Sha256Digest) -> Result<Vec<u8>> {
        let path = self.sha256_path(digest);
        let file = self.open_blob(&digest.to_hash())?;
        if file.metadata().at(&path)?.len() > MAX_DOCUMENT {
            return Err(Error::Store { path, message: "expected a JSON document of at most 4 MiB".into() });
        }
        let mut data = Vec::new();
        file.take(MAX_DOCUMENT).read_to_end(&mut data).at(&path)?;
        if Sha256Digest::of(&data) != *digest {
            return Err(Error::Store {
                path: self.sha256_path(digest),
                message: "content does not match its digest; run `imgbuild store verify`".into(),
            });
        }
        Ok(data)
    }

    fn layer_record_path(&self, derivation: &Sha256Digest) -> PathBuf {
        self.root.join("layers").join(format!("{}.json", derivation.hex()))
    }

    /// The layer built for `derivation`, if it was recorded and its blob is still present.
    pub fn layer(&self, derivation: &Sha256Digest) -> Option<LayerRecord> {
        let data = fs::read(self.layer_record_path(derivation)).ok()?;
        let record: LayerRecord = serde_json::from_slice(&data).ok()?;
        self.has_sha256(&record.digest.0).then_some(record)
    }

    /// Records a layer; the blob must already be in the store.
    pub fn record_layer(&self, derivation: &Sha256Digest, record: &LayerRecord) -> Result<()> {
        let data = serde_json::to_vec(record).expect("record serializes");
        self.write_atomic(&self.layer_record_path(derivation), &data)
    }

    /// Writes a small file by temp file, fsync and rename.
    pub fn write_atomic(&self, dest: &Path, data: &[u8]) -> Result<()> {
        let temp = self.temp_path("record");
        let mut f = File::create(&temp).at(&temp)?;
        f.write_all(data).at(&temp)?;
        f.sync_all().at(&temp)?;
        fs::rename(&temp, dest).at(dest)?;
        sync_dir(dest.parent().expect("has parent"))
    }

    /// Every blob in the store, by algorithm and hex name.
    pub fn blobs(&self) -> Result<Vec<(Algorithm, PathBuf)>> {
        let mut all = Vec::new();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.root.join("blobs").join(algorithm.name());
            let mut names: Vec<PathBuf> =
                fs::read_dir(&dir).at(&dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
            names.sort();
            all.extend(names.into_iter().map(|p| (algorithm, p)));
        }
        Ok(all)
    }

    /// Re-hashes every blob; returns the ones whose content does not match their name.
    pub fn verify(&self, mut on_blob: impl FnMut(&Path, bool)) -> Result<Vec<PathBuf>> {
        let mut bad = Vec::new();
        for (algorithm, path) in self.blobs()? {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let ok = match Hash::parse_hex_or_sri(algorithm, &name) {
                Err(_) => false,
                Ok(expected) => {
                    let f = File::open(&path).at(&path)?;
                    let (found, _) = hash_reader(algorithm, io::BufReader::new(f)).at(&path)?;
                    found == expected
                }
            };
            on_blob(&path, ok);
            if !ok {
                bad.push(path);
            }
        }
        Ok(bad)
    }
}

/// A gc root: an output imgbuild wrote and the blobs it holds or was built from.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Root {
    pub output: PathBuf,
    /// `sha256:…` and `sha512:…` names of the blobs.
    pub blobs: Vec<String>,
}

impl Store {
    /// Records that the output at `output` needs `blobs`, so `store gc` keeps them while the
    /// output exists.
    pub fn add_root(&self, output: &Path, blobs: impl IntoIterator<Item = Hash>) -> Result<()> {
        let output = std::path::absolute(output).at(output)?;
        let name = Sha256Digest::of(output.as_os_str().as_encoded_bytes()).hex();
        let root = Root { output, blobs: blobs.into_iter().map(|h| h.to_string()).collect() };
        let data = serde_json::to_vec(&root).expect("a root serializes");
        self.write_atomic(&self.root.join("roots").join(format!("{name}.json")), &data)
    }

    /// Every registered root, by file; `None` for a record that cannot be read (a dead root).
    pub fn roots(&self) -> Result<Vec<(PathBuf, Option<Root>)>> {
        let dir = self.root.join("roots");
        let mut roots = Vec::new();
        for entry in fs::read_dir(&dir).at(&dir)? {
            let path = entry.at(&dir)?.path();
            let root = fs::read(&path).ok().and_then(|d| serde_json::from_slice(&d).ok());
            roots.push((path, root));
        }
        Ok(roots)
    }

    /// The directory of notes about the `--cache` repository `name` (`caches/`).
    pub fn cache_notes_dir(&self, name: &str) -> PathBuf {
        // The hash keeps `a/b_c` and `a_b/c` apart.
        let unique = &Sha256Digest::of(name.as_bytes()).hex()[..12];
        self.root.join("caches").join(format!("{}-{unique}", file_name_for(name)))
    }

    /// The diff_id a base layer's blob was found to have, if it was checked and is still here.
    pub fn diff_id_checked(&self, layer: &BlobDigest) -> Option<DiffId> {
        if !self.has_sha256(&layer.0) {
            return None;
        }
        let text = fs::read_to_string(self.root.join("diff_ids").join(layer.0.hex())).ok()?;
        text.trim().parse().ok().map(DiffId)
    }

    /// Notes that the blob `layer` decompresses to content whose sha256 is `diff_id`.
    pub fn record_diff_id(&self, layer: &BlobDigest, diff_id: &DiffId) -> Result<()> {
        let dir = self.root.join("diff_ids");
        fs::create_dir_all(&dir).at(&dir)?;
        self.write_atomic(&dir.join(layer.0.hex()), diff_id.to_string().as_bytes())
    }

    /// The directory of facts read from base images for SBOMs (`supply/`).
    pub fn supply_dir(&self) -> PathBuf {
        self.root.join("supply")
    }

    /// The file that remembers which repositories of `registry` hold which blobs.
    pub fn registry_hints_path(&self, registry: &str) -> PathBuf {
        self.root.join("registries").join(format!("{}.json", file_name_for(registry)))
    }
}

/// Held while one entry is produced; released on drop or when the process dies.
pub struct StoreLock {
    _file: File,
}

/// A blob being written: hashed as written, committed only if the hash is right.
pub struct BlobWriter<'s> {
    store: &'s Store,
    path: PathBuf,
    file: Option<io::BufWriter<File>>,
    hasher: Hasher,
    size: u64,
    writeback: Writeback,
}

/// Bytes of a file written between two writeback starts.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Has the kernel start writing a large file to the disk as it is written, every
/// `WRITEBACK_STEP` bytes, without waiting: so the fsync that commits it (a layer, a source
/// downloaded or copied from a mirror) waits only for its last few MiB, not for all of it at
/// the end of the work. Only a hint: its failure changes nothing (the fsync decides).
pub(crate) struct Writeback {
    /// Where the bytes not yet handed to the disk start.
    from: u64,
}

impl Writeback {
    /// For a file whose first `from` bytes are already written.
    pub(crate) fn starting_at(from: u64) -> Writeback {
        Writeback { from }
    }

    /// `file` now holds `written` bytes.
    pub(crate) fn wrote(&mut self, file: &File, written: u64) {
        if written.saturating_sub(self.from) >= WRITEBACK_STEP {
            start_writeback(file, self.from, written);
            self.from = written;
        }
    }
}

fn start_writeback(file: &File, from: u64, to: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else { return };
        // SAFETY: sync_file_range reads only its arguments; the descriptor is open for as long as `file`.
        unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from, to);
}

impl BlobWriter<'_> {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// fsyncs and, if the content hashes to `expected` (or nothing was expected), moves it into place.
    pub fn commit(mut self, expected: Option<&Hash>, what: &str) -> Result<Hash> {
        let file = self.file.take().expect("commit once");
        let file = file.into_inner().map_err(|e| Error::io(&self.path, e.into_error()))?;
        file.sync_all().at(&self.path)?;
        drop(file);
        let found = std::mem::replace(&mut self.hasher, Hasher::new(Algorithm::Sha256)).finish();
        let path = std::mem::take(&mut self.path);
        self.store.commit_file(&path, found, expected, what)
    }
}

impl Write for BlobWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self.file.as_mut().expect("not committed");
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        // What reached the file: the rest waits in the buffer.
        self.writeback.wrote(file.get_ref(), self.size - file.buffer().len() as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("not committed").flush()
    }
}

impl Drop for BlobWriter<'_> {
    fn drop(&mut self) {
        // Not committed: an error or a panic left it half-written. Never leave it behind.
        if self.file.is_some() {
            self.file.take();
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The modification time of every stored blob: a blob whose time differs was written to since.
pub(crate) const BLOB_STAMP: std::time::SystemTime = std::time::UNIX_EPOCH;

fn stamp(path: &Path) -> Result<()> {
    let file = File::open(path).at(path)?;
    file.set_times(fs::FileTimes::new().set_modified(BLOB_STAMP)).at(path)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// `name` with every character but letters, digits and `.` made `_`: a file name that cannot
/// leave its directory.
fn file_name_for(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn temp_files(store: &Store) -> usize {
        fs::read_dir(store.root().join("tmp")).unwrap().count()
    }

    #[test]
    fn a_blob_enters_only_under_the_hash_of_its_content() {
        let (_d, store) = store();
        let good = Sha256Digest::of(b"content").to_hash();
        let mut w = store.writer(Algorithm::Sha256).unwrap();
        w.write_all(b"other content").unwrap();
        let err = w.commit(Some(&good), "test").unwrap_err();
        assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
        assert!(!store.has(&good));
        assert_eq!(temp_files(&store), 0, "the rejected temporary file is gone");
        let mut w = store.writer(Algorithm::Sha256).unwrap();
        w.write_all(b"content").unwrap();
        assert_eq!(w.commit(Some(&good), "test").unwrap(), good);
        assert!(store.blob_path(&good).metadata().unwrap().permissions().readonly());
    }

    #[test]
    fn an_abandoned_writer_leaves_nothing_behind() {
        let (_d, store) = store();
        let mut w = store.writer(Algorithm::Sha512).unwrap();
        w.write_all(b"half").unwrap();
        drop(w);
        assert_eq!(temp_files(&store), 0);
        assert!(store.blobs().unwrap().is_empty());
    }

    #[test]
    fn a_layer_record_is_trusted_only_with_its_blob() {
        let (_d, store) = store();
        let blob = store.add_bytes(b"layer bytes").unwrap();
        let record = LayerRecord { digest: BlobDigest(blob), diff_id: DiffId(blob), size: 11 };
        let key = Sha256Digest::of(b"derivation");
        store.record_layer(&key, &record).unwrap();
        assert!(store.layer(&key).is_some());
        fs::remove_file(store.sha256_path(&blob)).unwrap();
        assert!(store.layer(&key).is_none(), "a record whose blob is gone means a rebuild");
    }

    #[test]
    fn read_blob_checks_size_and_content() {
        let (_d, store) = store();
        let digest = store.add_bytes(b"{}").unwrap();
        assert_eq!(store.read_blob(&digest).unwrap(), b"{}");
        let path = store.sha256_path(&digest);
        let mut perms = fs::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        fs::set_permissions(&path, perms).unwrap();
        // Corrupted with its time stamp kept (as bit rot would): reading checks the content.
        fs::write(&path, b"[]").unwrap();
        stamp(&path).unwrap();
        assert!(matches!(store.read_blob(&digest), Err(Error::Store { .. })));
        assert_eq!(store.verify(|_, _| {}).unwrap(), vec![path]);
    }

    #[test]
    fn a_blob_written_through_a_hard_link_is_noticed_and_dropped() {
        let (d, store) = store();
        let digest = store.add_bytes(b"layer bytes").unwrap();
        let output = d.path().join("output-blob");
        fs::hard_link(store.sha256_path(&digest), &output).unwrap();
        // Touched but unchanged: hashed again, kept, stamped again.
        let f = File::options().write(true).open(&output).unwrap();
        f.set_times(fs::FileTimes::new().set_modified(std::time::SystemTime::now())).unwrap();
        assert!(store.has_sha256(&digest));
        assert_eq!(fs::metadata(store.sha256_path(&digest)).unwrap().modified().unwrap(), BLOB_STAMP);
        // Written through the output's link: the store's blob is no longer what its name says.
        let mut f = File::options().write(true).open(&output).unwrap();
        f.write_all(b"LAYER").unwrap();
        drop(f);
        assert!(!store.has_sha256(&digest), "a changed blob is not trusted");
        assert!(!store.sha256_path(&digest).exists(), "and is removed, so the next build makes it again");
        assert!(store.intact_path(&digest).is_err());
        assert_eq!(store.add_bytes(b"layer bytes").unwrap(), digest);
        assert!(store.has_sha256(&digest));
    }

    #[test]
    fn roots_record_an_output_and_what_it_needs() {
        let (d, store) = store();
        let out = d.path().join("out/image");
        let blob = Sha256Digest::of(b"x").to_hash();
        store.add_root(&out, [blob.clone()]).unwrap();
        store.add_root(&out, [blob.clone()]).unwrap(); // the same output again: one root
        let roots = store.roots().unwrap();
        assert_eq!(roots.len(), 1);
        let root = roots[0].1.as_ref().unwrap();
        assert_eq!(root.output, out);
        assert_eq!(root.blobs, vec![blob.to_string()]);
    }
}

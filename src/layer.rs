//! Layers: a source tarball streamed into a normalized, compressed OCI layer in one pass.
//!
//! ```text
//! source blob → gunzip/unxz/bunzip2/unzstd (own thread) → tar reader → tree model → tar writer
//!             → sha256 (diff_id) → pinned gzip or zstd → sha256 (digest) → store blob writer
//! ```
//! Normalizing means: paths re-rooted under the recipe's prefix after stripping components,
//! uid/gid 0, no user or group names, mtimes clamped to the build epoch, modes reduced to
//! 0755/0644 (0777 for symlinks), PAX and GNU extension noise dropped, every missing parent
//! directory written before its children. Every entry is placed in a model of the layer's file
//! tree, and every symlink resolved through it ([`normalize`]): nothing lands outside the prefix.
//! The input's entry order is kept (the pinned hash already fixes it); generated layers are
//! written in sorted order.

mod decompress;
mod normalize;
pub(crate) mod tar_guard;

use std::collections::BTreeMap;
use std::io::{self, BufReader};
use std::path::Path;

use tar::{EntryType, Header};

use crate::compress::{Compressor, LayerWriter, Parallelism};
use crate::digest::{BlobDigest, DiffId, Hash, HashingWriter, Sha256Digest};
use crate::error::{escape, Error, IoContext, Result};
use crate::progress::Reporter;
use crate::recipe::{Source, Unpack};
use crate::store::{BlobWriter, LayerRecord, Store};
pub(crate) use decompress::past_unpack_limit;
pub(crate) use decompress::Compression;
use decompress::SourceFailure;
pub(crate) use normalize::Counts;
use normalize::{Normalize, Normalizer, TarStream};

/// Bumped whenever a change here changes the bytes of a layer, so cached layers are not reused.
pub(crate) const FORMAT_VERSION: u32 = 2;

pub(crate) use crate::compress::MEDIA_TYPE_GZIP;

#[derive(Debug, Clone)]
pub(crate) struct LayerSettings {
    /// `SOURCE_DATE_EPOCH`: every mtime is clamped to it.
    pub epoch: u64,
    /// The pinned compressor and its level (`--compression`, `--level`).
    pub compressor: Compressor,
    /// Compression threads and chunks in flight; changes speed only, never bytes.
    pub parallelism: Parallelism,
    /// Largest unpacked size of one source: a gzip bomb stops here (`IMGBUILD_MAX_UNPACKED`).
    pub max_unpacked: u64,
    /// The shared cache (`--cache`): where a layer missing from the store is looked for first,
    /// and where a layer built here is pushed. Not part of the derivation.
    pub cache: Option<std::sync::Arc<dyn KnownLayers>>,
    /// Use layers the store has recorded. `verify` turns it off: a record in the store is a
    /// claim like any other, so every recipe layer is built again from its pinned source (and
    /// its record written again). Not part of the derivation.
    pub reuse_layers: bool,
}

/// Layers built elsewhere, keyed by derivation (the shared cache implements it): the layer
/// builder asks through this trait so that it knows no registry, TLS or fetch.
pub(crate) trait KnownLayers: Send + Sync + std::fmt::Debug {
    /// The layer of `derivation` the store holds and this source still vouches for (one built
    /// here is offered to it), or `None`.
    fn known(
        &self,
        store: &Store,
        derivation: &Sha256Digest,
        recipe: &str,
        reporter: &dyn Reporter,
    ) -> Result<Option<LayerRecord>>;
    /// The layer of `derivation` taken from this source into the store, if it has one.
    fn pull(
        &self,
        store: &Store,
        derivation: &Sha256Digest,
        recipe: &str,
        max_size: u64,
        reporter: &dyn Reporter,
    ) -> Result<Option<LayerRecord>>;
    /// Offers a layer built here to this source.
    fn push(
        &self,
        store: &Store,
        derivation: &Sha256Digest,
        layer: &LayerRecord,
        recipe: &str,
        reporter: &dyn Reporter,
    ) -> Result<()>;
}

/// 32 GiB: many times the largest JDK, far below what fills a disk by surprise.
pub(crate) const DEFAULT_MAX_UNPACKED: u64 = 32 << 30;

/// The cache key of a recipe layer: everything that decides its bytes.
pub(crate) fn derivation(source: &Hash, unpack: &Unpack, settings: &LayerSettings) -> Sha256Digest {
    let canonical = serde_json::json!({
        "format": FORMAT_VERSION,
        "compressor": settings.compressor.derivation(),
        "epoch": settings.epoch,
        "source": source.to_string(),
        "unpack": unpack,
    });
    Sha256Digest::of(canonical.to_string().as_bytes())
}

/// The tar → diff_id → compressor → digest → store chain.
struct LayerSink<'s> {
    tar: tar::Builder<HashingWriter<LayerWriter<BlobWriter<'s>>>>,
}

impl<'s> LayerSink<'s> {
    fn new(store: &'s Store, settings: &LayerSettings) -> Result<Self> {
        let blob = store.writer(crate::digest::Algorithm::Sha256)?;
        let compressed = LayerWriter::new(blob, settings.compressor, settings.parallelism).at(store.root())?;
        let mut tar = tar::Builder::new(HashingWriter::new(compressed));
        tar.mode(tar::HeaderMode::Deterministic);
        Ok(LayerSink { tar })
    }

    fn finish(self, store: &Store, what: &str) -> Result<LayerRecord> {
        let hashing = self.tar.into_inner().at(store.root())?;
        let (compressed, diff_id, _) = hashing.finish();
        let blob = compressed.finish().at(store.root())?;
        let size = blob.size();
        let digest = blob.commit(None, what)?;
        let digest = digest.as_sha256().expect("layers are sha256");
        Ok(LayerRecord { digest: BlobDigest(digest), diff_id: DiffId(diff_id), size })
    }
}

fn header(entry_type: EntryType, mode: u32, mtime: u64, size: u64) -> Header {
    fixed_header(Header::new_gnu(), entry_type, mode, mtime, size)
}

/// `empty` (a GNU or ustar header) with owner 0:0, no names, and the given type, mode, time and
/// size: the only metadata imgbuild writes into a tar.
pub(crate) fn fixed_header(mut empty: Header, entry_type: EntryType, mode: u32, mtime: u64, size: u64) -> Header {
    empty.set_entry_type(entry_type);
    empty.set_mode(mode);
    empty.set_uid(0);
    empty.set_gid(0);
    empty.set_mtime(mtime);
    empty.set_size(size);
    empty
}

/// Builds (or finds in the store) the layer of one recipe source.
/// The flag says whether this call did the work (false: found in the store).
pub(crate) fn recipe_layer(
    store: &Store,
    recipe: &str,
    source: &Source,
    unpack: &Unpack,
    settings: &LayerSettings,
    reporter: &dyn Reporter,
) -> Result<(LayerRecord, bool)> {
    let key = derivation(&source.hash, unpack, settings);
    let cache = settings.cache.as_deref();
    let known = || match (settings.reuse_layers, cache) {
        (false, _) => Ok(None),
        (true, Some(cache)) => cache.known(store, &key, recipe, reporter),
        (true, None) => Ok(store.layer(&key)),
    };
    if let Some(record) = known()? {
        return Ok((record, false));
    }
    let _lock = store.lock(&format!("layer-{}", key.hex()))?;
    if let Some(record) = known()? {
        return Ok((record, false));
    }
    if let Some(cache) = cache.filter(|_| settings.reuse_layers) {
        if let Some(record) = cache.pull(store, &key, recipe, settings.max_unpacked, reporter)? {
            return Ok((record, false));
        }
    }
    let blob_path = store.blob_path(&source.hash);
    let input = store.open_blob(&source.hash)?;
    let total = input.metadata().at(&blob_path)?.len();
    let task = reporter.task(&format!("layer {recipe}"), Some(total));
    let counted = crate::progress::ProgressReader::new(input, task);
    let archive_name = format!("{} ({})", source.file_name, recipe);
    let input = BufReader::with_capacity(256 * 1024, counted);
    let (record, counts) = normalize_tarball(store, input, &archive_name, unpack, settings)?;
    report_skipped(reporter, recipe, &counts);
    store.record_layer(&key, &record)?;
    if let Some(cache) = cache {
        cache.push(store, &key, &record, recipe, reporter)?;
    }
    Ok((record, true))
}

/// Says how many device nodes and FIFOs `recipe`'s layer left out (`skip_devices = true`).
pub(crate) fn report_skipped(reporter: &dyn Reporter, recipe: &str, counts: &Counts) {
    if counts.skipped_devices > 0 {
        let n = counts.skipped_devices;
        reporter.status(&format!("layer {recipe}: left out {n} device node(s) and FIFO(s) (`skip_devices = true`)"));
    }
}

/// Streams a (possibly compressed) tarball into a normalized layer blob in the store.
/// Nothing is stored unless every entry and every symlink of the finished tree is accepted.
pub(crate) fn normalize_tarball(
    store: &Store,
    mut input: impl io::BufRead + Send + 'static,
    archive: &str,
    unpack: &Unpack,
    settings: &LayerSettings,
) -> Result<(LayerRecord, Counts)> {
    let bad = |message: String| Error::BadArchive { archive: archive.to_string(), message };
    let head = input.fill_buf().map_err(|e| bad(format!("cannot read: {}", escape(&e.to_string()))))?;
    if head.is_empty() {
        return Err(bad("the file is empty (0 bytes), not a tarball".into()));
    }
    let reader = Compression::detect(head).reader(input, settings.max_unpacked);
    let mut normalizer = Normalizer::new(archive, unpack, settings.epoch)?;
    let mut sink = LayerSink::new(store, settings)?;
    normalizer.begin(&mut sink.tar).at(store.root())?;
    let (tar_stream, ended_at) = TarStream::new(reader);
    let mut tar_in = tar::Archive::new(tar_guard::TarGuard::new(tar_stream));
    // A read failure: a tar header the guard refused (it says which and why), of the compressed
    // file (which says what and where), the tar cut short (the normalizer says inside which
    // entry), or a tar header that is not one.
    let unreadable = |e: io::Error, normalizer: &Normalizer| {
        if let Some(refusal) = tar_guard::refusal(&e) {
            return refusal.to_error(archive);
        }
        match ended_at.get() {
            _ if SourceFailure::is(&e) => bad(escape(&e.to_string())),
            Some(at) => bad(normalizer.cut_short(at)),
            None => bad(format!("corrupt tar stream: {}", escape(&e.to_string()))),
        }
    };
    let refused = |e: Normalize, normalizer: &Normalizer| match e {
        Normalize::Refuse { entry, reason } => Error::UnsafeEntry { archive: archive.to_string(), entry, reason },
        Normalize::Read(e) => unreadable(e, normalizer),
    };
    let entries = tar_in.entries().map_err(|e| bad(format!("not a tar archive: {}", escape(&e.to_string()))))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| unreadable(e, &normalizer))?;
        normalizer.append(&mut entry, &mut sink.tar).map_err(|e| refused(e, &normalizer))?;
    }
    // Past the tar's end marker: read the stream to its end, so its checksums are checked
    // and what follows its last member is seen.
    io::copy(&mut tar_in.into_inner(), &mut io::sink()).map_err(|e| unreadable(e, &normalizer))?;
    let counts = normalizer.finish().map_err(|e| refused(e, &normalizer))?;
    if counts.seen == 0 {
        return Err(bad("the archive has no entries".into()));
    }
    if counts.kept == 0 {
        return Err(bad(format!(
            "none of its {} entries is left after `strip_components = {}` and `exclude`",
            counts.seen, unpack.strip_components
        )));
    }
    Ok((sink.finish(store, archive)?, counts))
}

/// One file of a layer imgbuild writes itself (the cluster and identity layers).
#[derive(Debug, Clone)]
pub enum GeneratedEntry {
    File { data: Vec<u8>, mode: u32 },
    Symlink { target: String },
}

/// Writes a layer from generated files: sorted, with every parent directory, all at the epoch.
pub(crate) fn generated_layer(
    store: &Store,
    files: &BTreeMap<String, GeneratedEntry>,
    settings: &LayerSettings,
    what: &str,
) -> Result<LayerRecord> {
    let mut dirs = std::collections::BTreeSet::new();
    for path in files.keys() {
        let mut p = Path::new(path).parent();
        while let Some(dir) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(dir.to_string_lossy().into_owned());
            p = dir.parent();
        }
    }
    // One sorted list of directories and files, so parents precede children.
    let mut all: BTreeMap<String, Option<&GeneratedEntry>> = dirs.into_iter().map(|d| (d, None)).collect();
    all.extend(files.iter().map(|(p, e)| (p.clone(), Some(e))));
    // These layers are a few KiB: the best gzip costs nothing, saves bytes on every push, and
    // every runtime reads it whatever the recipe layers' compression.
    let single =
        LayerSettings { parallelism: Parallelism::threads(1), compressor: Compressor::gzip(9), ..settings.clone() };
    let mut sink = LayerSink::new(store, &single)?;
    for (path, entry) in &all {
        let result = match entry {
            None => {
                let mut h = header(EntryType::Directory, 0o755, settings.epoch, 0);
                sink.tar.append_data(&mut h, format!("{path}/"), io::empty())
            }
            Some(GeneratedEntry::File { data, mode }) => {
                let mut h = header(EntryType::Regular, *mode, settings.epoch, data.len() as u64);
                sink.tar.append_data(&mut h, path, &data[..])
            }
            Some(GeneratedEntry::Symlink { target }) => {
                let mut h = header(EntryType::Symlink, 0o777, settings.epoch, 0);
                sink.tar.append_link(&mut h, path, target)
            }
        };
        result.at(store.root())?;
    }
    sink.finish(store, what)
}

#[cfg(test)]
mod tests;

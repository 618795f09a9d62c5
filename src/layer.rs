//! Layers: a source tarball streamed into a normalized, compressed OCI layer in one pass.
//!
//! ```text
//! source blob → gunzip → tar reader → normalize entry → tar writer → sha256 (diff_id)
//!             → deterministic gzip → sha256 (digest) → store blob writer
//! ```
//! Normalizing means: paths re-rooted under the recipe's prefix after stripping components,
//! uid/gid 0, no user or group names, mtimes clamped to the build epoch, modes reduced to
//! 0755/0644 (0777 for symlinks), PAX and GNU extension noise dropped. The input's entry order
//! is kept (the pinned hash already fixes it); generated layers are written in sorted order.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use tar::{EntryType, Header};

use crate::compress::GzipWriter;
use crate::digest::{BlobDigest, DiffId, Hash, HashingWriter, Sha256Digest};
use crate::error::{Error, IoContext, Result};
use crate::progress::Reporter;
use crate::recipe::{Source, Unpack};
use crate::store::{BlobWriter, LayerRecord, Store};

/// Bumped whenever a change here changes the bytes of a layer, so cached layers are not reused.
pub const FORMAT_VERSION: u32 = 1;

pub const MEDIA_TYPE_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[derive(Debug, Clone)]
pub struct LayerSettings {
    /// `SOURCE_DATE_EPOCH`: every mtime is clamped to it.
    pub epoch: u64,
    pub level: u8,
    /// Compression threads; changes speed only, never bytes.
    pub threads: usize,
    /// Largest unpacked size of one source: a gzip bomb stops here (`IMGBUILD_MAX_UNPACKED`).
    pub max_unpacked: u64,
}

/// 32 GiB: many times the largest JDK, far below what fills a disk by surprise.
pub const DEFAULT_MAX_UNPACKED: u64 = 32 << 30;

/// The cache key of a recipe layer: everything that decides its bytes.
pub fn derivation(source: &Hash, unpack: &Unpack, settings: &LayerSettings) -> Sha256Digest {
    let canonical = serde_json::json!({
        "format": FORMAT_VERSION,
        "compressor": { "name": "miniz_oxide-chunked-gzip", "chunk": crate::compress::CHUNK_SIZE, "level": settings.level },
        "epoch": settings.epoch,
        "source": source.to_string(),
        "unpack": unpack,
    });
    Sha256Digest::of(canonical.to_string().as_bytes())
}

/// The tar → diff_id → gzip → digest → store chain.
struct LayerSink<'s> {
    tar: tar::Builder<HashingWriter<GzipWriter<BlobWriter<'s>>>>,
}

impl<'s> LayerSink<'s> {
    fn new(store: &'s Store, settings: &LayerSettings) -> Result<Self> {
        let blob = store.writer(crate::digest::Algorithm::Sha256)?;
        let gz = GzipWriter::new(blob, settings.level, settings.threads).at(store.root())?;
        let mut tar = tar::Builder::new(HashingWriter::new(gz));
        tar.mode(tar::HeaderMode::Deterministic);
        Ok(LayerSink { tar })
    }

    fn finish(self, store: &Store, what: &str) -> Result<LayerRecord> {
        let hashing = self.tar.into_inner().at(store.root())?;
        let (gz, diff_id, _) = hashing.finish();
        let blob = gz.finish().at(store.root())?;
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
pub fn fixed_header(mut h: Header, entry_type: EntryType, mode: u32, mtime: u64, size: u64) -> Header {
    h.set_entry_type(entry_type);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h
}

/// Builds (or finds in the store) the layer of one recipe source.
/// The flag says whether this call did the work (false: found in the store).
pub fn recipe_layer(
    store: &Store,
    recipe: &str,
    source: &Source,
    unpack: &Unpack,
    settings: &LayerSettings,
    reporter: &dyn Reporter,
) -> Result<(LayerRecord, bool)> {
    let key = derivation(&source.hash, unpack, settings);
    if let Some(record) = store.layer(&key) {
        return Ok((record, false));
    }
    let _lock = store.lock(&format!("layer-{}", key.hex()))?;
    if let Some(record) = store.layer(&key) {
        return Ok((record, false));
    }
    let blob_path = store.blob_path(&source.hash);
    let input = store.open_blob(&source.hash)?;
    let total = input.metadata().at(&blob_path)?.len();
    let task = reporter.task(&format!("layer {recipe}"), Some(total));
    let counted = crate::progress::ProgressReader::new(input, task);
    let archive_name = format!("{} ({})", source.file_name, recipe);
    let record =
        normalize_tarball(store, BufReader::with_capacity(256 * 1024, counted), &archive_name, unpack, settings)?;
    store.record_layer(&key, &record)?;
    Ok((record, true))
}

/// Streams a (possibly gzipped) tarball into a normalized layer blob in the store.
pub fn normalize_tarball(
    store: &Store,
    mut input: impl io::BufRead + Send + 'static,
    archive: &str,
    unpack: &Unpack,
    settings: &LayerSettings,
) -> Result<LayerRecord> {
    let bad = |message: String| Error::BadArchive { archive: archive.to_string(), message };
    let magic = input.fill_buf().map_err(|e| bad(format!("cannot read: {e}")))?;
    let reader: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(inflate_in_background(flate2::bufread::MultiGzDecoder::new(input), settings.max_unpacked))
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z'])
        || magic.starts_with(b"BZh")
        || magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
    {
        return Err(bad("only gzip-compressed or plain tarballs are supported".into()));
    } else {
        Box::new(input)
    };
    let mut normalizer = Normalizer::new(archive, unpack, settings.epoch)?;
    let mut sink = LayerSink::new(store, settings)?;
    for dir in normalizer.prefix_dirs() {
        let mut h = header(EntryType::Directory, 0o755, settings.epoch, 0);
        sink.tar.append_data(&mut h, format!("{dir}/"), io::empty()).at(store.root())?;
    }
    let mut tar_in = tar::Archive::new(reader);
    let entries = tar_in.entries().map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(read_failure(&e)))?;
        normalizer.append(&mut entry, &mut sink.tar).map_err(|e| match e {
            Normalize::Refuse { entry, reason } => Error::UnsafeEntry { archive: archive.to_string(), entry, reason },
            Normalize::Read(e) => bad(read_failure(&e)),
        })?;
    }
    sink.finish(store, archive)
}

/// Runs a reader (the source's gunzip) on its own thread, so inflating overlaps with hashing
/// and compressing; a few 256 KiB buffers are in flight at most.
fn inflate_in_background(mut source: impl Read + Send + 'static, limit: u64) -> ChannelReader {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    let mut total = 0u64;
    std::thread::spawn(move || loop {
        let mut buf = vec![0u8; 256 * 1024];
        let result = match source.read(&mut buf) {
            Ok(0) => return,
            Ok(n) if total + n as u64 > limit => Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("unpacks to more than {limit} bytes (a gzip bomb, or set IMGBUILD_MAX_UNPACKED higher)"),
            )),
            Ok(n) => {
                total += n as u64;
                buf.truncate(n);
                Ok(buf)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
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

fn read_failure(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::FileTooLarge => e.to_string(),
        _ => format!("corrupt tar stream: {e}"),
    }
}

enum Normalize {
    Refuse { entry: String, reason: String },
    Read(io::Error),
}

impl From<io::Error> for Normalize {
    fn from(e: io::Error) -> Self {
        Normalize::Read(e)
    }
}

struct Normalizer {
    strip: usize,
    prefix: Vec<String>,
    exclude: GlobSet,
    epoch: u64,
    /// Paths (relative to the unpack root) written so far, for hard-link targets.
    written: HashSet<PathBuf>,
}

impl Normalizer {
    fn new(archive: &str, unpack: &Unpack, epoch: u64) -> Result<Self> {
        let mut builder = GlobSetBuilder::new();
        for pattern in &unpack.exclude {
            let glob = Glob::new(pattern).map_err(|e| Error::BadArchive {
                archive: archive.into(),
                message: format!("exclude `{pattern}`: {e}"),
            })?;
            builder.add(glob);
        }
        let exclude =
            builder.build().map_err(|e| Error::BadArchive { archive: archive.into(), message: e.to_string() })?;
        let prefix = unpack.prefix.split('/').filter(|p| !p.is_empty()).map(String::from).collect();
        Ok(Normalizer { strip: unpack.strip_components as usize, prefix, exclude, epoch, written: HashSet::new() })
    }

    /// `opt`, `opt/java`, `opt/java/openjdk` for prefix `/opt/java/openjdk`.
    fn prefix_dirs(&self) -> Vec<String> {
        (1..=self.prefix.len()).map(|n| self.prefix[..n].join("/")).collect()
    }

    /// The entry's path inside the unpack root, or `None` when stripped away entirely.
    fn relative(&self, raw: &Path, what: &str) -> Result<Option<PathBuf>, Normalize> {
        let refuse =
            |reason: &str| Normalize::Refuse { entry: raw.display().to_string(), reason: format!("{what}: {reason}") };
        let mut parts = Vec::new();
        for c in raw.components() {
            match c {
                Component::Normal(n) => parts.push(n),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => return Err(refuse("absolute path")),
                Component::ParentDir => return Err(refuse("path contains `..`")),
            }
        }
        if parts.len() <= self.strip {
            return Ok(None);
        }
        Ok(Some(parts[self.strip..].iter().collect()))
    }

    fn excluded(&self, rel: &Path) -> bool {
        !self.exclude.is_empty()
            && rel.ancestors().filter(|a| !a.as_os_str().is_empty()).any(|a| self.exclude.is_match(a))
    }

    fn rooted(&self, rel: &Path) -> PathBuf {
        let mut p: PathBuf = self.prefix.iter().collect();
        p.push(rel);
        p
    }

    fn append<R: Read, W: Write>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        out: &mut tar::Builder<W>,
    ) -> Result<(), Normalize> {
        let entry_type = entry.header().entry_type();
        let raw = entry.path()?.into_owned();
        let refuse = |reason: String| Normalize::Refuse { entry: raw.display().to_string(), reason };
        match entry_type {
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink => {
                return Ok(())
            }
            EntryType::Char | EntryType::Block => return Err(refuse("device nodes are not allowed in a layer".into())),
            EntryType::Fifo => return Err(refuse("FIFOs are not allowed in a layer".into())),
            EntryType::GNUSparse => return Err(refuse("sparse files are not supported".into())),
            _ => {}
        }
        let Some(rel) = self.relative(&raw, "entry")? else {
            return Ok(());
        };
        if self.excluded(&rel) {
            return Ok(());
        }
        let path = self.rooted(&rel);
        let mtime = entry.header().mtime().unwrap_or(0).min(self.epoch);
        let mode = entry.header().mode().unwrap_or(0o644);
        match entry_type {
            EntryType::Directory => {
                let mut h = header(EntryType::Directory, 0o755, mtime, 0);
                out.append_data(&mut h, dir_path(&path), io::empty())?;
            }
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.header().size()?;
                let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
                let mut h = header(EntryType::Regular, mode, mtime, size);
                out.append_data(&mut h, &path, &mut *entry)?;
            }
            EntryType::Symlink => {
                let target = entry.link_name()?.ok_or_else(|| refuse("symlink without a target".into()))?.into_owned();
                check_symlink(&rel, &target).map_err(&refuse)?;
                let mut h = header(EntryType::Symlink, 0o777, mtime, 0);
                out.append_link(&mut h, &path, &target)?;
            }
            EntryType::Link => {
                let target =
                    entry.link_name()?.ok_or_else(|| refuse("hard link without a target".into()))?.into_owned();
                let target_rel = self
                    .relative(&target, "hard link target")?
                    .ok_or_else(|| refuse(format!("hard link to `{}`, outside the unpacked tree", target.display())))?;
                if !self.written.contains(&target_rel) {
                    return Err(refuse(format!(
                        "hard link to `{}`, which is not an earlier file of the archive (or is excluded)",
                        target.display()
                    )));
                }
                let mut h = header(EntryType::Link, 0o644, mtime, 0);
                out.append_link(&mut h, &path, self.rooted(&target_rel))?;
            }
            other => return Err(refuse(format!("unsupported tar entry type {other:?}"))),
        }
        self.written.insert(rel);
        Ok(())
    }
}

/// Directories carry a trailing `/`, as tar writers conventionally do.
fn dir_path(path: &Path) -> String {
    format!("{}/", path.display())
}

/// A symlink at `rel` (inside the unpack root) may point anywhere inside that root, never out of it.
fn check_symlink(rel: &Path, target: &Path) -> Result<(), String> {
    if target.as_os_str().is_empty() {
        return Err("symlink with an empty target".into());
    }
    if target.is_absolute() {
        return Err(format!("symlink to absolute path `{}` escapes the unpack root", target.display()));
    }
    let mut depth: i64 = rel.parent().map_or(0, |p| p.components().count() as i64);
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return Err(format!("symlink to `{}` escapes the unpack root", target.display()));
        }
    }
    Ok(())
}

/// One file of a layer imgbuild writes itself (the cluster and identity layers).
#[derive(Debug, Clone)]
pub enum GeneratedEntry {
    File { data: Vec<u8>, mode: u32 },
    Symlink { target: String },
}

/// Writes a layer from generated files: sorted, with every parent directory, all at the epoch.
pub fn generated_layer(
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
    // These layers are a few KiB: the best compression costs nothing and saves bytes on every push.
    let single = LayerSettings { threads: 1, level: 9, ..settings.clone() };
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
mod tests {
    use super::*;

    #[test]
    fn symlinks_may_not_climb_out_of_the_root() {
        assert!(check_symlink(Path::new("lib/amd64/libjsig.so"), Path::new("../libjsig.so")).is_ok());
        assert!(check_symlink(Path::new("bin/java"), Path::new("../../etc/passwd")).is_err());
        assert!(check_symlink(Path::new("a"), Path::new("/etc/passwd")).is_err());
        assert!(check_symlink(Path::new("a/b"), Path::new("../x/../../y")).is_err());
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Path parts that find the edge cases: parent references, empty and dot parts, long names.
    fn part() -> impl Strategy<Value = String> {
        prop_oneof![Just("..".to_string()), Just(".".to_string()), Just("".to_string()), "[a-z]{1,3}", "[a-z]{100,120}"]
    }

    fn path() -> impl Strategy<Value = String> {
        (any::<bool>(), prop::collection::vec(part(), 1..5))
            .prop_map(|(abs, parts)| format!("{}{}", if abs { "/" } else { "" }, parts.join("/")))
    }

    #[derive(Debug, Clone)]
    enum Kind {
        File(Vec<u8>, u32),
        Dir,
        Symlink(String),
        Hardlink(String),
        Fifo,
    }

    fn entry() -> impl Strategy<Value = (String, Kind)> {
        let kind = prop_oneof![
            (prop::collection::vec(any::<u8>(), 0..64), any::<u32>()).prop_map(|(d, m)| Kind::File(d, m)),
            Just(Kind::Dir),
            path().prop_map(Kind::Symlink),
            path().prop_map(Kind::Hardlink),
            Just(Kind::Fifo),
        ];
        (path(), kind)
    }

    /// Writes raw headers, so that unsafe names reach the normalizer as an attacker would send them.
    fn raw_tar(entries: &[(String, Kind)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind) in entries {
            let mut h = Header::new_gnu();
            let (ty, data, link): (EntryType, &[u8], Option<&str>) = match kind {
                Kind::File(d, _) => (EntryType::Regular, d, None),
                Kind::Dir => (EntryType::Directory, &[], None),
                Kind::Symlink(t) => (EntryType::Symlink, &[], Some(t)),
                Kind::Hardlink(t) => (EntryType::Link, &[], Some(t)),
                Kind::Fifo => (EntryType::Fifo, &[], None),
            };
            h.set_entry_type(ty);
            h.set_mode(if let Kind::File(_, m) = kind { m & 0o7777 } else { 0o755 });
            h.set_size(data.len() as u64);
            let name = &name.as_bytes()[..name.len().min(99)];
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            if let Some(link) = link {
                let link = &link.as_bytes()[..link.len().min(99)];
                h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            }
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn settings() -> LayerSettings {
        LayerSettings { epoch: 0, level: 1, threads: 1, max_unpacked: 1 << 20 }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the archive holds, the normalizer returns a layer or an error, and every
        /// entry of a layer it accepts stays under the prefix.
        #[test]
        fn any_archive_gives_a_safe_layer_or_an_error(entries in prop::collection::vec(entry(), 0..12), strip in 0u32..3) {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let unpack = Unpack { strip_components: strip, prefix: "opt/app".into(), exclude: vec![] };
            let tar = raw_tar(&entries);
            if let Ok(record) = normalize_tarball(&store, io::Cursor::new(tar), "fuzz", &unpack, &settings()) {
                let blob = std::fs::File::open(store.sha256_path(&record.digest.0)).unwrap();
                let mut layer = tar::Archive::new(flate2::read::GzDecoder::new(blob));
                for e in layer.entries().unwrap() {
                    let e = e.unwrap();
                    let path = e.path().unwrap().into_owned();
                    prop_assert!(path.starts_with("opt"), "{}", path.display());
                    prop_assert!(path.components().all(|c| matches!(c, Component::Normal(_))), "{}", path.display());
                    prop_assert!(!matches!(e.header().entry_type(), EntryType::Fifo | EntryType::Char | EntryType::Block));
                    if e.header().entry_type() == EntryType::Symlink {
                        let target = e.link_name().unwrap().unwrap().into_owned();
                        let rel = path.strip_prefix("opt/app").unwrap().to_path_buf();
                        prop_assert!(check_symlink(&rel, &target).is_ok(), "{} -> {}", path.display(), target.display());
                    }
                }
            }
        }

        /// Bytes that are not a tarball at all: an error, never a panic.
        #[test]
        fn arbitrary_bytes_are_an_error_or_an_empty_layer(bytes in prop::collection::vec(any::<u8>(), 0..2048), gzip in any::<bool>()) {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let mut data = bytes;
            if gzip {
                data.splice(0..0, [0x1f, 0x8b, 8, 0]);
            }
            let unpack = Unpack { strip_components: 0, prefix: String::new(), exclude: vec![] };
            let _ = normalize_tarball(&store, io::Cursor::new(data), "fuzz", &unpack, &settings());
        }
    }
}

//! Reading a layer's entries as they stream from the store: gzip or plain tar, never the
//! whole layer in memory. Used to read files out of base layers (`dpkg`) and to say which
//! file differs between two layers (`verify`).

use std::fs::File;
use std::io::{self, BufReader, Read};

use tar::EntryType;

use crate::digest::{Algorithm, Hasher, Sha256Digest};
use crate::error::{escape, Error, IoContext, Result};
use crate::layer::tar_guard::TarGuard;
use crate::store::Store;

/// A layer blob of the store as a tar stream (gunzipped when it is gzip), of at most `limit`
/// bytes.
pub(crate) fn open_layer(
    store: &Store,
    digest: &Sha256Digest,
    limit: u64,
) -> Result<tar::Archive<TarGuard<HashingReader>>> {
    Ok(tar::Archive::new(TarGuard::for_image_layer(hashed_layer(store, digest, limit)?)))
}

pub(crate) fn bad_layer(digest: &Sha256Digest, message: impl Into<String>) -> Error {
    Error::BadArchive { archive: format!("layer {digest}"), message: message.into() }
}

/// An entry's path as the layer names it, without a leading `./` or `/`.
pub(crate) fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> io::Result<String> {
    let raw = entry.path()?.to_string_lossy().into_owned();
    Ok(raw.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/').to_string())
}

/// What a layer says about one entry: everything that reaches the file system, the content
/// by its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntrySummary {
    pub path: String,
    pub kind: String,
    pub mode: u32,
    pub owner: (u64, u64),
    pub mtime: u64,
    pub size: u64,
    pub link: Option<String>,
    pub content: Option<Sha256Digest>,
}

fn kind_name(t: EntryType) -> String {
    match t {
        EntryType::Regular | EntryType::Continuous => "file".into(),
        EntryType::Directory => "directory".into(),
        EntryType::Symlink => "symlink".into(),
        EntryType::Link => "hard link".into(),
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Fifo => "FIFO".into(),
        other => format!("{other:?}"),
    }
}

/// Summarizes an entry, hashing its content as it streams.
pub(crate) fn summarize<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<EntrySummary> {
    summarize_with(entry, |_| {})
}

/// Summarizes an entry as `summarize` does, showing `content` each piece of its content too.
pub(crate) fn summarize_with<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    mut content: impl FnMut(&[u8]),
) -> io::Result<EntrySummary> {
    let header = entry.header();
    let (kind, mode, size) = (header.entry_type(), header.mode()?, header.size()?);
    let owner = (header.uid()?, header.gid()?);
    let mtime = header.mtime()?;
    let link = entry.link_name()?.map(|l| l.to_string_lossy().into_owned());
    let path = entry_path(entry)?;
    let content = if kind.is_file() {
        let mut hasher = Hasher::new(Algorithm::Sha256);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            content(&buf[..n]);
        }
        hasher.finish().as_sha256()
    } else {
        None
    };
    Ok(EntrySummary { path, kind: kind_name(kind), mode, owner, mtime, size, link, content })
}

impl EntrySummary {
    /// How `other` (the same place in another layer) differs from this entry, if it does.
    pub(crate) fn difference(&self, other: &EntrySummary) -> Option<String> {
        let path = escape(&self.path);
        if self.path != other.path {
            return Some(format!("the image has `{path}` where the rebuild has `{}`", escape(&other.path)));
        }
        let field = |what: &str, a: String, b: String| Some(format!("`{path}`: {what} {a} in the image, {b} rebuilt"));
        if self.kind != other.kind {
            return field("a", self.kind.clone(), format!("a {}", other.kind));
        }
        if self.content != other.content || self.size != other.size {
            return Some(format!(
                "`{path}`: the content differs ({} bytes in the image, {} rebuilt)",
                self.size, other.size
            ));
        }
        if self.link != other.link {
            let show = |l: &Option<String>| format!("`{}`", escape(l.as_deref().unwrap_or("")));
            return field("links to", show(&self.link), show(&other.link));
        }
        if self.mode != other.mode {
            return field("mode", format!("{:o}", self.mode), format!("{:o}", other.mode));
        }
        if self.owner != other.owner {
            let show = |(u, g): (u64, u64)| format!("{u}:{g}");
            return field("owner", show(self.owner), show(other.owner));
        }
        if self.mtime != other.mtime {
            return field("mtime", self.mtime.to_string(), other.mtime.to_string());
        }
        None
    }
}

/// A layer blob of the store as its uncompressed stream, hashed as it is read; past `limit`
/// bytes (a small layer of a 40 GiB file of zeros), a read fails naming the limit.
pub(crate) fn hashed_layer(store: &Store, digest: &Sha256Digest, limit: u64) -> Result<HashingReader> {
    let path = store.sha256_path(digest);
    let mut input = BufReader::with_capacity(256 * 1024, File::open(&path).at(&path)?);
    let magic = io::BufRead::fill_buf(&mut input).at(&path)?;
    let inner: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(input))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(bad_layer(digest, "zstd layers cannot be read (only gzip and plain tar)"));
    } else {
        Box::new(input)
    };
    Ok(HashingReader { inner, hasher: Hasher::new(Algorithm::Sha256), left: limit, limit })
}

/// A reader that hashes every byte it passes on, up to its limit.
pub(crate) struct HashingReader {
    inner: Box<dyn Read>,
    hasher: Hasher,
    /// Bytes it may still pass on, of `limit`.
    left: u64,
    limit: u64,
}

impl HashingReader {
    /// Reads what is left and returns the hash of everything read.
    pub(crate) fn finish(mut self) -> io::Result<Sha256Digest> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.hasher.finish().as_sha256().expect("sha256"))
    }
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, crate::layer::past_unpack_limit(self.limit)));
        }
        self.left -= n as u64;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

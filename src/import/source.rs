//! The files of an OCI image layout, as a directory or as an oci-archive, read as hostile
//! input. Whoever made the layout chose every file in it, so:
//!
//! - only regular files are read: a blob, `index.json` or `oci-layout` that is a symlink, a
//!   FIFO, a device or a directory is refused. In a directory, each file is opened from the
//!   layout's own directory one component at a time, never through a link (`O_NOFOLLOW`), and
//!   without waiting on a FIFO (`O_NONBLOCK`); its type is checked before and after opening.
//!   In an archive, each entry must be a regular file entry whose bytes lie inside the file;
//! - never more than the descriptor says: a blob is read to its descriptor's size and one byte
//!   more is a refusal (so is one byte less); `index.json` and every manifest, index and
//!   config read whole are at most [`MAX_DOCUMENT`].
//!
//! The layout's own path, named by the user, may be a symlink; it must lead to a directory or
//! a regular file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{fstat, openat, statat, AtFlags, FileType, Mode, OFlags, Stat, CWD};

use crate::digest::Sha256Digest;
use crate::error::{escape, Error, Result};
use crate::oci_doc::Descriptor;
use crate::store::MAX_DOCUMENT;

/// Blob entries an archive may list: a real image has a few hundred at most.
const MAX_ARCHIVE_BLOBS: usize = 100_000;

/// An OCI layout directory or oci-archive, opened for reading.
pub(crate) struct OciSource {
    path: PathBuf,
    files: Files,
}

enum Files {
    /// The layout's directory.
    Layout(OwnedFd),
    /// The archive, and where each entry imgbuild reads lies in it.
    Archive { file: File, entries: BTreeMap<String, Span> },
}

/// Where an archive entry's bytes are.
#[derive(Debug, Clone, Copy)]
struct Span {
    offset: u64,
    size: u64,
}

/// An archive entry that cannot be read as a file, and why.
type Unusable = String;

impl OciSource {
    /// Opens the layout directory or archive at `path`.
    pub(crate) fn open(path: &Path) -> Result<OciSource> {
        let bad = |message: String| bad(path, message);
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            let dir = openat(CWD, path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| Error::io(path, e.into()))?;
            return Ok(OciSource { path: path.to_path_buf(), files: Files::Layout(dir) });
        }
        let file = open_regular(CWD, path.as_os_str().as_encoded_bytes(), Follow::Yes)
            .map_err(|e| Error::io(path, e))?
            .map_err(|kind| bad(format!("is {kind}, not an OCI layout directory or oci-archive")))?;
        let entries = catalog(&file).map_err(bad)?;
        Ok(OciSource { path: path.to_path_buf(), files: Files::Archive { file, entries } })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `index.json`, whole (at most [`MAX_DOCUMENT`]).
    pub(crate) fn index(&self) -> Result<Vec<u8>> {
        let (mut reader, size) = self.open_file("index.json")?.ok_or_else(|| match self.files {
            Files::Layout(_) => self.bad("no index.json: not an OCI layout"),
            Files::Archive { .. } => self.bad("no index.json: not an OCI archive"),
        })?;
        if size > MAX_DOCUMENT {
            return Err(self.bad(format!("index.json is {size} bytes, more than an index is (4 MiB at most)")));
        }
        let mut data = Vec::new();
        (&mut reader)
            .take(MAX_DOCUMENT + 1)
            .read_to_end(&mut data)
            .map_err(|e| self.bad(format!("index.json: {e}")))?;
        if data.len() as u64 != size {
            return Err(self.bad("index.json changed while it was read"));
        }
        Ok(data)
    }

    /// The manifest, index or config `desc` names, whole, checked against its digest.
    pub(crate) fn document(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        if desc.size > MAX_DOCUMENT {
            return Err(self.bad(format!(
                "{}: its descriptor says {} bytes, more than a manifest, index or config is (4 MiB at most)",
                desc.digest, desc.size
            )));
        }
        let mut data = Vec::new();
        self.blob(desc)?.read_to_end(&mut data).map_err(|e| self.bad(e.to_string()))?;
        if Sha256Digest::of(&data) != desc.digest {
            return Err(self.bad(format!("blob {} does not match its digest", desc.digest)));
        }
        Ok(data)
    }

    /// The blob `desc` names, as a reader of exactly its descriptor's size: it fails (with
    /// `InvalidData`) when the blob is longer or shorter. The caller checks the digest.
    pub(crate) fn blob(&self, desc: &Descriptor) -> Result<ExactReader<'_>> {
        let digest = desc.digest;
        let name = format!("blobs/sha256/{}", digest.hex());
        let (reader, size) = self
            .open_file(&name)?
            .ok_or_else(|| self.bad(format!("blob {digest} is referenced but cannot be read: {}", self.missing())))?;
        if size != desc.size {
            return Err(self.bad(format!(
                "blob {digest} is {size} bytes, but its descriptor says {}: refused without reading it",
                desc.size
            )));
        }
        Ok(ExactReader { inner: reader, digest, expected: desc.size, read: 0 })
    }

    /// The regular file `name` of the layout and its size, or `None` when there is none.
    fn open_file(&self, name: &str) -> Result<Option<(Box<dyn Read + Send + '_>, u64)>> {
        match &self.files {
            Files::Layout(dir) => match open_in(dir, name) {
                Ok(Ok(file)) => {
                    let size = file.metadata().map_err(|e| self.bad(format!("{name}: {e}")))?.len();
                    Ok(Some((Box::new(file), size)))
                }
                Ok(Err(kind)) => Err(self.bad(format!("{name} is {kind}, not a regular file: refused"))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(self.bad(format!("{name}: {e}"))),
            },
            Files::Archive { file, entries } => Ok(entries.get(name).map(|span| {
                let part = FilePart { file, offset: span.offset, end: span.offset + span.size };
                (Box::new(part) as Box<dyn Read + Send + '_>, span.size)
            })),
        }
    }

    fn bad(&self, message: impl Into<String>) -> Error {
        bad(&self.path, message.into())
    }

    fn missing(&self) -> &'static str {
        match self.files {
            Files::Layout(_) => "not in the layout",
            Files::Archive { .. } => "not in the archive",
        }
    }
}

fn bad(path: &Path, message: String) -> Error {
    Error::BadArchive { archive: path.display().to_string(), message }
}

/// A blob's bytes, exactly as many as its descriptor says.
pub(crate) struct ExactReader<'a> {
    inner: Box<dyn Read + Send + 'a>,
    digest: Sha256Digest,
    expected: u64,
    read: u64,
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte past the descriptor's size is enough to know it is longer.
        let room = (self.expected.saturating_add(1) - self.read).min(buf.len() as u64) as usize;
        let n = match self.inner.read(&mut buf[..room]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => return Err(io::Error::new(e.kind(), format!("blob {}: {e}", self.digest))),
            Ok(n) => n,
        };
        self.read += n as u64;
        let wrong = |what: String| Err(io::Error::new(io::ErrorKind::InvalidData, what));
        if self.read > self.expected {
            return wrong(format!(
                "blob {} is longer than the {} bytes its descriptor says",
                self.digest, self.expected
            ));
        }
        if n == 0 && room > 0 && self.read < self.expected {
            return wrong(format!("blob {} ends after {} of its {} bytes", self.digest, self.read, self.expected));
        }
        Ok(n)
    }
}

/// `[offset, end)` of the archive, read with `pread` (no shared cursor).
struct FilePart<'a> {
    file: &'a File,
    offset: u64,
    end: u64,
}

impl Read for FilePart<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = (self.end - self.offset).min(buf.len() as u64) as usize;
        if room == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..room], self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Whether a symlink at the last component is followed (only for a path the user named).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Follow {
    Yes,
    No,
}

/// Opens the regular file `name` in `dir` for reading; `Ok(Err(kind))` when it is something
/// else (named for the message). Its type is checked before opening, so a device or FIFO is
/// never opened (`O_NONBLOCK` also keeps a FIFO swapped in from blocking), and again after.
fn open_regular<Fd: std::os::fd::AsFd>(dir: Fd, name: &[u8], follow: Follow) -> io::Result<Result<File, &'static str>> {
    let no_follow = follow == Follow::No;
    let at = if no_follow { AtFlags::SYMLINK_NOFOLLOW } else { AtFlags::empty() };
    let before = statat(&dir, name, at)?;
    if let Some(kind) = not_regular(&before) {
        return Ok(Err(kind));
    }
    let mut flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    if no_follow {
        flags |= OFlags::NOFOLLOW;
    }
    let fd = match openat(&dir, name, flags, Mode::empty()) {
        Err(e) if e == rustix::io::Errno::LOOP && no_follow => return Ok(Err("a symbolic link")),
        other => other?,
    };
    let after = fstat(&fd)?;
    if let Some(kind) = not_regular(&after) {
        return Ok(Err(kind));
    }
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino) {
        return Err(io::Error::other("it was replaced while being opened"));
    }
    Ok(Ok(File::from(fd)))
}

fn not_regular(stat: &Stat) -> Option<&'static str> {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => None,
        FileType::Symlink => Some("a symbolic link"),
        FileType::Directory => Some("a directory"),
        FileType::Fifo => Some("a FIFO"),
        FileType::CharacterDevice | FileType::BlockDevice => Some("a device"),
        FileType::Socket => Some("a socket"),
        FileType::Unknown => Some("of an unknown type"),
    }
}

/// Opens `name` (`a/b/c`) under the layout's directory, each component without following a link.
fn open_in(dir: &OwnedFd, name: &str) -> io::Result<Result<File, &'static str>> {
    let mut components: Vec<&str> = name.split('/').collect();
    let last = components.pop().unwrap_or_default();
    let mut here = rustix::io::dup(dir)?;
    for component in components {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        here = match openat(&here, component, flags, Mode::empty()) {
            Err(e) if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR => {
                return Ok(Err("under a symbolic link or a file"));
            }
            other => other?,
        };
    }
    open_regular(&here, last.as_bytes(), Follow::No)
}

/// Whether the file at `path` is a tar archive holding an OCI layout (an oci-archive). Never
/// blocks on a FIFO, and reads only entry headers.
pub(crate) fn is_oci_archive(path: &Path) -> bool {
    let Ok(Ok(file)) = open_regular(CWD, path.as_os_str().as_encoded_bytes(), Follow::Yes) else {
        return false;
    };
    let mut found = false;
    // The layout's marker files are at the top; a few entries are enough to tell.
    let _ = each_header(&file, 10_000, |name, _| {
        found = name == "oci-layout" || name == "index.json";
        Ok(!found)
    });
    found
}

/// Where `index.json`, `oci-layout` and each `blobs/sha256/HEX` entry of the archive lies.
/// A name listed twice, a non-regular entry under one of those names, or an entry whose
/// bytes go past the end of the file is refused.
fn catalog(file: &File) -> Result<BTreeMap<String, Span>, Unusable> {
    let length = file.metadata().map_err(|e| e.to_string())?.len();
    let mut entries = BTreeMap::new();
    each_header(file, usize::MAX, |name, entry| {
        let wanted = name == "index.json"
            || name == "oci-layout"
            || name.strip_prefix("blobs/sha256/").is_some_and(crate::digest::is_sha256_hex);
        if !wanted {
            return Ok(true);
        }
        let shown = escape(name);
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            return Err(format!("entry `{shown}` is not a regular file ({kind:?}): refused"));
        }
        let span = Span { offset: entry.raw_file_position(), size: entry.size() };
        if span.offset.checked_add(span.size).is_none_or(|end| end > length) {
            return Err(format!("entry `{shown}` says {} bytes, past the end of the archive", span.size));
        }
        if entries.insert(name.to_string(), span).is_some() {
            return Err(format!("entry `{shown}` is listed twice"));
        }
        if entries.len() > MAX_ARCHIVE_BLOBS {
            return Err(format!("more than {MAX_ARCHIVE_BLOBS} blobs: not an image archive"));
        }
        Ok(true)
    })?;
    Ok(entries)
}

/// Calls `visit` with each entry's name (without `./`) and header, at most `limit` entries,
/// until it returns false. Entry contents are skipped by seeking, never read.
fn each_header(
    file: &File,
    limit: usize,
    mut visit: impl FnMut(&str, &tar::Entry<'_, &File>) -> Result<bool, Unusable>,
) -> Result<(), Unusable> {
    let mut archive = tar::Archive::new(file);
    let entries = archive.entries_with_seek().map_err(|e| format!("not a tar archive: {e}"))?;
    for entry in entries.take(limit) {
        let entry = entry.map_err(|e| format!("corrupt tar: {e}"))?;
        // Skipped by its size, where other readers give it no data: they would list other entries.
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_contiguous()) && entry.header().entry_size().unwrap_or(0) > 0 {
            return Err(format!(
                "entry `{}`: a header that carries no data gives itself a size",
                escape(&String::from_utf8_lossy(&entry.path_bytes()))
            ));
        }
        let raw = entry.path_bytes();
        let name = String::from_utf8_lossy(&raw);
        let name = name.trim_start_matches("./");
        if !visit(name, &entry)? {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

//! A tarball's hash and the shape of its tree, read in one pass: what `strip_components` its
//! layout suggests (one top directory → 1) and whether it has a `bin/` to put on `PATH`.

use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use crate::digest::{Algorithm, Hash, Hasher};
use crate::error::{Error, Result};

/// What the entries of a tarball look like.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Layout {
    /// The entries could be listed.
    Listed {
        /// The one directory every entry is under (`zookeeper-3.4.10`), if there is one.
        top_dir: Option<String>,
        /// A `bin/` directory at the root (after stripping `top_dir`).
        has_bin: bool,
        entries: u64,
    },
    /// An image saved by `docker save` (manifest.json, repositories, ID/layer.tar), which is
    /// not a tarball to unpack.
    DockerArchive,
    /// They could not (another compression, not a tar, corrupt): why.
    Unreadable { reason: String },
}

impl Layout {
    pub(crate) fn strip_components(&self) -> u32 {
        match self {
            Layout::Listed { top_dir: Some(_), .. } => 1,
            _ => 0,
        }
    }
}

/// The hash of a file, its size and its layout.
pub(crate) struct Inspected {
    pub hash: Hash,
    pub size: u64,
    pub layout: Layout,
}

/// Reads `path` once: every byte is hashed, and the tar stream inside is listed on the way.
pub(crate) fn inspect(path: &Path, algorithm: Algorithm, max_unpacked: u64) -> Result<Inspected> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hashing = HashingReader { inner: file, hasher: Hasher::new(algorithm), size: 0, failed: None };
    let layout = list(BufReader::with_capacity(256 * 1024, &mut hashing), max_unpacked);
    // The listing stops at the tar's end: the rest (padding, the gzip trailer) is hashed too.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| Error::io(path, e))?;
    if let Some(e) = hashing.failed.take() {
        return Err(Error::io(path, e));
    }
    Ok(Inspected { hash: hashing.hasher.finish(), size: hashing.size, layout })
}

/// Hashes and counts what passes through; remembers a read error of the file itself, which
/// is not a fact about the archive.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    size: u64,
    failed: Option<io::Error>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.size += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.failed = Some(e);
                Err(copy)
            }
        }
    }
}

fn list(mut input: impl BufRead, max_unpacked: u64) -> Layout {
    let magic = match input.fill_buf() {
        Ok(m) => m,
        Err(e) => return Layout::Unreadable { reason: e.to_string() },
    };
    let compression = if magic.starts_with(&[0x1f, 0x8b]) {
        "gzip"
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z']) {
        "xz"
    } else if magic.starts_with(b"BZh") {
        "bzip2"
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd"
    } else {
        "none"
    };
    match compression {
        "gzip" => list_tar(Limited::new(flate2::bufread::MultiGzDecoder::new(input), max_unpacked)),
        "none" => list_tar(Limited::new(input, max_unpacked)),
        other => {
            Layout::Unreadable { reason: format!("{other}-compressed; this imgbuild lists gzip and plain tarballs") }
        }
    }
}

/// The shape of the tree, followed entry by entry.
#[derive(Default)]
struct Shape {
    /// The first component of every entry so far, while they agree.
    top: Option<String>,
    several_tops: bool,
    /// Whether something lies below `top` (so it is a directory, not a lone file).
    top_is_dir: bool,
    bin_at_root: bool,
    bin_under_top: bool,
    /// docker-archive markers: `manifest.json` at the root, and `repositories` or a `layer.tar`.
    docker_manifest: bool,
    docker_layers: bool,
    entries: u64,
}

impl Shape {
    fn add(&mut self, path: &str, is_dir: bool) {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
        let Some(first) = parts.first() else { return };
        self.entries += 1;
        match &self.top {
            None if !self.several_tops => self.top = Some(first.to_string()),
            Some(t) if t != first => {
                self.top = None;
                self.several_tops = true;
            }
            _ => {}
        }
        self.top_is_dir |= parts.len() > 1 || is_dir;
        self.bin_at_root |= *first == "bin" && (parts.len() > 1 || is_dir);
        self.bin_under_top |= parts.get(1) == Some(&"bin") && (parts.len() > 2 || is_dir);
        self.docker_manifest |= parts == ["manifest.json"];
        self.docker_layers |= parts == ["repositories"] || parts.last() == Some(&"layer.tar");
    }

    fn layout(self) -> Layout {
        if self.docker_manifest && self.docker_layers {
            return Layout::DockerArchive;
        }
        let top_dir = self.top.filter(|_| self.top_is_dir);
        let has_bin = if top_dir.is_some() { self.bin_under_top } else { self.bin_at_root };
        Layout::Listed { top_dir, has_bin, entries: self.entries }
    }
}

fn list_tar(reader: impl Read) -> Layout {
    let mut archive = tar::Archive::new(crate::layer::tar_guard::TarGuard::new(reader));
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => return Layout::Unreadable { reason: format!("not a tar archive: {e}") },
    };
    let mut shape = Shape::default();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => return Layout::Unreadable { reason: format!("not a readable tar archive: {e}") },
        };
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader | tar::EntryType::XHeader) {
            continue;
        }
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        shape.add(&path, kind.is_dir());
    }
    if shape.entries == 0 {
        return Layout::Unreadable { reason: "not a tar archive, or one without entries".into() };
    }
    shape.layout()
}

/// Stops reading after `limit` bytes: a listing never inflates a gzip bomb without end.
struct Limited<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R> Limited<R> {
    fn new(inner: R, limit: u64) -> Self {
        Limited { inner, left: limit, limit }
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::other(format!("unpacks to more than {} bytes", self.limit)));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shape(entries: &[(&str, bool)]) -> Layout {
        let mut s = Shape::default();
        for (p, d) in entries {
            s.add(p, *d);
        }
        s.layout()
    }

    #[test]
    fn one_top_directory_suggests_stripping_it() {
        let l = shape(&[("zk-1/", true), ("zk-1/bin/", true), ("zk-1/bin/zk.sh", false), ("./zk-1/lib/a.jar", false)]);
        assert_eq!(l, Layout::Listed { top_dir: Some("zk-1".into()), has_bin: true, entries: 4 });
        assert_eq!(l.strip_components(), 1);
    }

    #[test]
    fn several_tops_or_a_lone_file_strip_nothing() {
        let l = shape(&[("bin/x", false), ("lib/y", false)]);
        assert_eq!(l, Layout::Listed { top_dir: None, has_bin: true, entries: 2 });
        assert_eq!(shape(&[("only-file", false)]).strip_components(), 0);
        assert_eq!(shape(&[("manifest.json", false), ("abc/layer.tar", false)]), Layout::DockerArchive);
        assert_eq!(
            shape(&[("a/x", false), ("b/bin/y", false)]),
            Layout::Listed { top_dir: None, has_bin: false, entries: 2 }
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The suggestion is 1 exactly when every entry lies in one directory; entries read in
        /// any order give the same answer.
        #[test]
        fn strip_is_one_exactly_for_a_single_top_directory(
            paths in prop::collection::vec("(\\./)?[abc](/[abc]){0,3}/?", 1..12),
            rotate in 0usize..12,
        ) {
            let entries: Vec<(&str, bool)> = paths.iter().map(|p| (p.as_str(), p.ends_with('/'))).collect();
            let parts = |p: &str| -> Vec<String> {
                p.split('/').filter(|c| !c.is_empty() && *c != ".").map(String::from).collect()
            };
            let firsts: std::collections::BTreeSet<String> = paths.iter().map(|p| parts(p)[0].clone()).collect();
            let single_dir = firsts.len() == 1 && paths.iter().any(|p| parts(p).len() > 1 || p.ends_with('/'));
            let mut rotated = entries.clone();
            rotated.rotate_left(rotate % entries.len());
            prop_assert_eq!(shape(&entries).strip_components(), u32::from(single_dir));
            prop_assert_eq!(shape(&entries), shape(&rotated));
        }
    }
}

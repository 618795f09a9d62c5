//! The VM's root file system: the image's layers applied in order through the tree model
//! ([`crate::tree`]), and written to a host directory only as the model accepts it.
//!
//! - An entry replaces what lower layers had at its path, never through a symlink or under a
//!   file ([`Tree::apply`]); a hard link must name a regular file already in the tree.
//! - Whiteouts (OCI image spec, layer.md "Whiteouts") remove only what *lower* layers put in
//!   the tree: `.wh.NAME` hides `NAME`, `.wh..wh..opq` hides every lower child of its
//!   directory, both as if they came first in their layer (what the same layer adds stays). A
//!   whiteout is resolved like any entry, inside the tree and never through a link; other
//!   `.wh..wh.` names are reserved and skipped.
//! - Device nodes, FIFOs and sockets are not written (the VM's devtmpfs provides `/dev`); they
//!   still replace what lower layers had at their path.
//!
//! The model keeps each path's owner, mode, size and inode: the ext4 step sets owners, modes and
//! times from it, never from the host copy.
//!
//! What the layers unpack is bounded (`IMGBUILD_MAX_UNPACKED`, [`Budget`]): all the layers
//! together may neither stream more tar bytes nor write more file bytes than the limit, so a
//! small gzip layer of zeros (or a sparse entry) cannot fill the disk.

use std::cell::Cell;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::rc::Rc;

use tar::EntryType;

use super::host_dir::HostDir;
use crate::error::{Error, IoContext, Result};
use crate::image::ImageLayer;
use crate::store::Store;
use crate::tree::{Kind, Node, Placed, Refusal, Tree, TreePath};

/// What the disk keeps about each path besides its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub uid: u64,
    pub gid: u64,
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    /// Which layer (counted from 1) put the path there; 0 for the root.
    pub layer: usize,
    /// Regular files: which file content it names (hard links share one) and its size as written.
    pub inode: u64,
    pub size: u64,
}

impl Default for Meta {
    /// A directory a layer implies without listing it: root's, 0755.
    fn default() -> Meta {
        Meta { uid: 0, gid: 0, mode: 0o755, layer: 0, inode: 0, size: 0 }
    }
}

pub(crate) struct Rootfs {
    pub tree: Tree<Meta>,
    host: HostDir,
    /// The layer being applied, counted from 1.
    layer: usize,
    inodes: u64,
    budget: Budget,
}

/// How much the layers may unpack, all together, and how much they have: the bytes of their
/// decompressed tar streams, and the bytes written to files (more than the stream for a
/// sparse entry).
struct Budget {
    limit: u64,
    streamed: Rc<Cell<u64>>,
    written: u64,
}

impl Budget {
    fn exceeded(&self) -> bool {
        self.streamed.get() > self.limit || self.written > self.limit
    }

    fn message(&self) -> String {
        format!(
            "the VM's layers unpack to more than {} bytes (IMGBUILD_MAX_UNPACKED): a decompression bomb, \
             or set IMGBUILD_MAX_UNPACKED higher",
            self.limit
        )
    }

    fn refusal(&self, layer: &str) -> Error {
        Error::BadArchive { archive: layer.to_string(), message: self.message() }
    }
}

/// A layer's tar stream, counted into the budget; past the limit it fails.
struct Counted<R> {
    inner: R,
    streamed: Rc<Cell<u64>>,
    limit: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.streamed.set(self.streamed.get() + n as u64);
        if self.streamed.get() > self.limit {
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, "past IMGBUILD_MAX_UNPACKED"));
        }
        Ok(n)
    }
}

/// A whiteout entry's meaning.
enum Whiteout {
    /// `.wh.NAME`: hide `NAME`.
    Path(TreePath),
    /// `.wh..wh..opq`: hide every child of the directory.
    Opaque(TreePath),
    /// Another reserved `.wh..wh.` name: nothing to do.
    Reserved,
}

impl Rootfs {
    /// An empty rootfs written into the new directory `dir`, whose layers may unpack at most
    /// `max_unpacked` bytes all together.
    pub(crate) fn create(dir: &std::path::Path, max_unpacked: u64) -> Result<Rootfs> {
        let budget = Budget { limit: max_unpacked, streamed: Rc::new(Cell::new(0)), written: 0 };
        Ok(Rootfs { tree: Tree::new(), host: HostDir::create(dir).at(dir)?, layer: 0, inodes: 0, budget })
    }

    pub(crate) fn host_path(&self) -> &std::path::Path {
        self.host.path()
    }

    /// Applies one layer (gzip, zstd or plain tar, told apart by content) over the ones before.
    pub(crate) fn apply(&mut self, store: &Store, layer: &ImageLayer) -> Result<()> {
        let file = store.open_blob(&layer.digest.0.to_hash())?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let compression = crate::layer::Compression::detect(reader.fill_buf().at(self.host.path())?);
        self.apply_tar(compression.reader(reader, u64::MAX), &layer.digest.to_string())
    }

    /// Applies the layer `name`, a tar stream, over the ones before.
    fn apply_tar(&mut self, input: impl Read, name: &str) -> Result<()> {
        self.layer += 1;
        let bad = |budget: &Budget, message: String| match budget.exceeded() {
            true => budget.refusal(name),
            false => Error::BadArchive { archive: name.to_string(), message },
        };
        let input = Counted { inner: input, streamed: Rc::clone(&self.budget.streamed), limit: self.budget.limit };
        let mut archive = tar::Archive::new(crate::layer::tar_guard::TarGuard::for_image_layer(input));
        for entry in archive.entries().map_err(|e| bad(&self.budget, e.to_string()))? {
            let mut entry = entry.map_err(|e| bad(&self.budget, format!("corrupt layer: {e}")))?;
            self.entry(&mut entry, name)?;
        }
        // Read to the end: what follows the end-of-archive blocks counts against the budget
        // too, and a compressed layer's trailer is checked only by reading it.
        let mut rest = archive.into_inner();
        std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| bad(&self.budget, format!("corrupt layer: {e}")))?;
        Ok(())
    }

    /// One entry of the layer `layer_name`.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, layer_name: &str) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let unsafe_entry = |reason: String| Error::UnsafeEntry {
            archive: layer_name.to_string(),
            entry: String::from_utf8_lossy(&raw).into_owned(),
            reason,
        };
        let path = TreePath::from_member(&raw).map_err(|e| unsafe_entry(e.to_string()))?;
        if path.is_root() {
            return Ok(()); // the layer's `./`: the root stays root's
        }
        if let Some(c) = path.as_bytes().iter().find(|b| b.is_ascii_control()) {
            // debugfs reads its commands line by line: such a name cannot be given to it safely.
            return Err(unsafe_entry(format!("a VM disk cannot hold a name with the control character {c:#04x}")));
        }
        let failed = |f: Failure| match f {
            Failure::Refused(r) => unsafe_entry(r.to_string()),
            Failure::Io(e) => e,
            Failure::Unpacked(message) => Error::BadArchive { archive: layer_name.to_string(), message },
        };
        if let Some(whiteout) = whiteout(&path).map_err(unsafe_entry)? {
            return self.whiteout(whiteout).map_err(failed);
        }
        let header = entry.header();
        let meta = Meta {
            uid: header.uid().unwrap_or(0),
            gid: header.gid().unwrap_or(0),
            mode: header.mode().unwrap_or(0o644) & 0o7777,
            layer: self.layer,
            inode: 0,
            size: 0,
        };
        let link_target = entry.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default();
        let kind = match header.entry_type() {
            EntryType::Directory => Kind::Dir,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
            EntryType::Symlink => Kind::Symlink(link_target),
            EntryType::Link => {
                let target =
                    TreePath::from_member(&link_target).map_err(|e| unsafe_entry(format!("hard link target: {e}")))?;
                return self.hard_link(&path, &target).map_err(failed);
            }
            _ => Kind::Special,
        };
        self.place(&path, Node { kind, meta }, entry).map_err(failed)
    }

    /// Creates the directories a booting kernel and init mount file systems on, where no layer
    /// made them: without `/dev`, `/proc` and `/sys` an initramfs cannot switch to the disk (a
    /// container runtime makes them itself, so minimal bases often lack them). A path a layer
    /// made, whatever it is, stays as the layer made it.
    pub(crate) fn add_mount_points(&mut self) -> Result<()> {
        for (name, mode) in [("dev", 0o755), ("proc", 0o555), ("run", 0o755), ("sys", 0o555), ("tmp", 0o1777)] {
            let path = TreePath::from_member(name.as_bytes()).expect("a plain name");
            if self.tree.get(&path).is_some() {
                continue;
            }
            let meta = Meta { uid: 0, gid: 0, mode, layer: self.layer, inode: 0, size: 0 };
            self.place(&path, Node { kind: Kind::Dir, meta }, &mut io::empty()).map_err(|f| match f {
                Failure::Io(e) => e,
                Failure::Refused(r) => Error::Internal(format!("mount point /{name}: {r}")),
                Failure::Unpacked(m) => Error::Internal(format!("mount point /{name}: {m}")),
            })?;
        }
        Ok(())
    }

    /// A file imgbuild writes into the disk after the layers (root's, with `mode`), replacing
    /// what the layers had at `path`.
    pub(crate) fn add_file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let tree_path = TreePath::from_member(path.as_bytes()).map_err(|e| Error::Internal(format!("{path}: {e}")))?;
        let meta = Meta { uid: 0, gid: 0, mode, layer: self.layer + 1, inode: 0, size: 0 };
        self.place(&tree_path, Node { kind: Kind::File, meta }, &mut &data[..]).map_err(|f| match f {
            Failure::Io(e) => e,
            Failure::Refused(r) => Error::Internal(format!("/{path}: {r}")),
            Failure::Unpacked(m) => Error::Internal(format!("/{path}: {m}")),
        })
    }

    /// Puts `node` at `path` in the model, then on the host.
    fn place(&mut self, path: &TreePath, node: Node<Meta>, content: &mut impl Read) -> Result<(), Failure> {
        let kind = node.kind.clone();
        let placed = self.make_room(path, node)?;
        let shown = self.host.show(path);
        let io = |e: io::Error| Failure::Io(Error::io(&shown, e));
        match kind {
            Kind::Dir if placed.existing_dir => {}
            Kind::Dir => self.host.create_dir(path).map_err(io)?,
            Kind::File => {
                let mut file = self.host.create_file(path).map_err(io)?;
                let size = self.write_content(content, &mut file, &shown)?;
                self.inodes += 1;
                let meta = &mut self.tree.get_mut(path).expect("placed above").meta;
                (meta.inode, meta.size) = (self.inodes, size);
            }
            Kind::Symlink(target) => self.host.symlink(path, &target).map_err(io)?,
            Kind::Special => {
                self.tree.remove(path);
            }
        }
        Ok(())
    }

    /// Copies an entry's content into its host file, within the budget. A read that fails
    /// is the layer's (corrupt, or past the limit), a write that fails is the host's.
    fn write_content(
        &mut self,
        content: &mut impl Read,
        file: &mut std::fs::File,
        shown: &std::path::Path,
    ) -> Result<u64, Failure> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = match content.read(&mut buf) {
                Ok(0) => return Ok(size),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) if self.budget.exceeded() => return Err(Failure::Unpacked(self.budget.message())),
                Err(e) => return Err(Failure::Unpacked(format!("corrupt layer: {e}"))),
            };
            self.budget.written += n as u64;
            if self.budget.exceeded() {
                return Err(Failure::Unpacked(self.budget.message()));
            }
            file.write_all(&buf[..n]).map_err(|e| Failure::Io(Error::io(shown, e)))?;
            size += n as u64;
        }
    }

    /// A hard link: another name of a regular file already in the tree.
    fn hard_link(&mut self, path: &TreePath, target: &TreePath) -> Result<(), Failure> {
        self.tree.hard_link_target(target).map_err(Failure::Refused)?;
        if target.starts_with(path) {
            // The entry would first remove what it names: a link to itself, or into what it replaces.
            let found = "replaced by this very entry";
            return Err(Failure::Refused(Refusal::NotAFile { target: target.clone(), found }));
        }
        let meta = Meta { layer: self.layer, ..self.tree.get(target).expect("checked above").meta.clone() };
        self.make_room(path, Node { kind: Kind::File, meta })?;
        self.host.hard_link(target, path).map_err(|e| Failure::Io(Error::io(self.host.show(path), e)))
    }

    /// Places `node` in the model and makes the host match, but for the node itself: what it
    /// replaces is removed, the parents it implies are made.
    fn make_room(&mut self, path: &TreePath, node: Node<Meta>) -> Result<Placed, Failure> {
        let doomed = self.replaced_by(path, &node.kind);
        let placed = self.tree.apply(path, node).map_err(Failure::Refused)?;
        let shown = self.host.show(path);
        let io = |e: io::Error| Failure::Io(Error::io(&shown, e));
        if placed.replaced {
            for (gone, is_dir) in &doomed {
                self.host.remove(gone, *is_dir).map_err(io)?;
            }
        }
        self.implied_parents(&placed.created_parents).map_err(io)?;
        Ok(placed)
    }

    /// What placing a `kind` at `path` removes: the path and everything under it, deepest first
    /// (a directory over a directory removes nothing).
    fn replaced_by(&self, path: &TreePath, kind: &Kind) -> Vec<(TreePath, bool)> {
        match self.tree.get(path) {
            None => Vec::new(),
            Some(n) if n.kind == Kind::Dir && *kind == Kind::Dir => Vec::new(),
            Some(_) => self.subtree(path),
        }
    }

    /// `path` and every path under it, deepest first, each with whether it is a directory.
    fn subtree(&self, path: &TreePath) -> Vec<(TreePath, bool)> {
        let is_dir = |p: &TreePath| self.tree.get(p).is_some_and(|n| n.kind == Kind::Dir);
        let mut all: Vec<(TreePath, bool)> = self.tree.descendants(path).map(|p| (p.clone(), is_dir(p))).collect();
        all.reverse();
        all.push((path.clone(), is_dir(path)));
        all
    }

    /// Directories the layer implies: made on the host, and marked as the layer's own.
    fn implied_parents(&mut self, parents: &[TreePath]) -> io::Result<()> {
        for p in parents {
            self.host.create_dir(p)?;
            if let Some(n) = self.tree.get_mut(p) {
                n.meta.layer = self.layer;
            }
        }
        Ok(())
    }

    fn whiteout(&mut self, whiteout: Whiteout) -> Result<(), Failure> {
        let (dir, hidden) = match whiteout {
            Whiteout::Reserved => return Ok(()),
            Whiteout::Path(p) => (p.parent().unwrap_or_default(), Some(p)),
            Whiteout::Opaque(dir) => (dir, None),
        };
        // Resolved inside the tree: nothing to hide under a path that is not a directory, and
        // never anything through a symlink.
        for ancestor in dir.ancestors().into_iter().chain((!dir.is_root()).then(|| dir.clone())) {
            match self.tree.get(&ancestor).map(|n| &n.kind) {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink(_)) => return Err(Failure::Refused(Refusal::ThroughSymlink { link: ancestor })),
                _ => return Ok(()),
            }
        }
        let targets: Vec<TreePath> = match hidden {
            Some(p) => vec![p],
            None => self.tree.descendants(&dir).filter(|p| p.parent().as_ref() == Some(&dir)).cloned().collect(),
        };
        for target in targets {
            self.remove_lower(&target).map_err(|e| Failure::Io(Error::io(self.host.show(&target), e)))?;
        }
        Ok(())
    }

    /// Removes what lower layers put at `path` and under it; what this layer put there stays,
    /// with the directories that lead to it.
    fn remove_lower(&mut self, path: &TreePath) -> io::Result<()> {
        for (p, is_dir) in self.subtree(path) {
            let Some(node) = self.tree.get(&p) else { continue };
            let lower = node.meta.layer < self.layer;
            if lower && !(is_dir && self.tree.descendants(&p).next().is_some()) {
                self.host.remove(&p, is_dir)?;
                self.tree.remove(&p);
            }
        }
        Ok(())
    }
}

/// Why an entry was not applied: the model refused it (the caller names the entry), or the
/// host could not be written.
enum Failure {
    Refused(Refusal),
    Io(Error),
    /// The entry's content could not be read, or unpacks past the limit.
    Unpacked(String),
}

/// What a whiteout entry hides, or `None` for an ordinary entry.
fn whiteout(path: &TreePath) -> Result<Option<Whiteout>, String> {
    let name = path.file_name().unwrap_or_default();
    let Some(hidden) = name.strip_prefix(b".wh.") else { return Ok(None) };
    let dir = path.parent().unwrap_or_default();
    if hidden == b".wh..opq" {
        return Ok(Some(Whiteout::Opaque(dir)));
    }
    if hidden.starts_with(b".wh.") {
        return Ok(Some(Whiteout::Reserved));
    }
    if hidden.is_empty() || hidden == b"." || hidden == b".." {
        return Err(format!("a whiteout of `{}`, which is no file name", String::from_utf8_lossy(hidden)));
    }
    Ok(Some(Whiteout::Path(dir.join(hidden))))
}

#[cfg(test)]
mod tests;

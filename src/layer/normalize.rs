//! One untrusted source tarball's entries, turned into the entries of one layer.
//!
//! The layer is a file tree, not a list of names: every entry is placed in a model of the tree
//! emitted so far ([`crate::tree::Tree`]), which refuses what runtimes would unpack differently
//! or not at all (a path listed twice, a file under a file, a directory over a file) and anything
//! written through a symlink. Symlinks are resolved through each other inside the image root, as
//! `openat2(RESOLVE_IN_ROOT)` resolves them, once the whole tree is known ([`Normalizer::finish`]):
//! a later entry can change where an earlier link leads.

use std::io::{self, Read, Write};

use globset::{Glob, GlobSet, GlobSetBuilder};
use tar::EntryType;

use super::header;
use crate::error::{escape, Error, Result};
use crate::recipe::Unpack;
use crate::tree::{Kind, Node, Tree, TreePath};

/// Why an entry stops the layer: refused (bad input), or the stream could not be read.
pub(crate) enum Normalize {
    Refuse { entry: String, reason: String },
    Read(io::Error),
}

impl From<io::Error> for Normalize {
    fn from(e: io::Error) -> Self {
        Normalize::Read(e)
    }
}

/// OCI whiteouts: `.wh.NAME` deletes NAME of the layers below, `.wh..wh..opq` a directory's contents.
const WHITEOUT_PREFIX: &[u8] = b".wh.";

/// Linux's limits: a name (one component), and a path or a symlink's target (`ENAMETOOLONG`).
const NAME_MAX: usize = 255;
const PATH_MAX: usize = 4096;

/// The most path bytes the model of one layer may hold: ten times what the largest real
/// archives need (a Debian root or the Linux sources hold a few MiB of paths), and a bound on
/// an archive of a few KiB of deep names, each of which adds all of its parents to the model.
const MAX_MODEL_BYTES: usize = 64 << 20;

/// What a layer left out and kept, for the caller's notes and checks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Entries the source archive listed (extension headers not counted).
    pub seen: u64,
    /// Entries written to the layer, implicit parents not counted.
    pub kept: u64,
    /// Device nodes and FIFOs left out (`skip_devices = true`).
    pub skipped_devices: u64,
}

pub(crate) struct Normalizer {
    strip: usize,
    prefix: TreePath,
    exclude: GlobSet,
    epoch: u64,
    whiteouts: bool,
    skip_devices: bool,
    /// What the layer holds so far.
    tree: Tree<()>,
    /// Every symlink (path, member name, target) in input order, for the final check.
    symlinks: Vec<(TreePath, Vec<u8>, Vec<u8>)>,
    /// Bytes of the paths (and link targets) in the model.
    model_bytes: usize,
    counts: Counts,
    /// The last entry read (its name, and where its data and padding end in the tar stream),
    /// to say where a tar that is cut short ends.
    last: Option<(Vec<u8>, u64)>,
}

/// What one accepted entry becomes in the layer.
enum Item {
    Dir,
    File,
    /// An allowed whiteout: written as an empty file.
    Whiteout,
    Symlink(Vec<u8>),
    /// A hard link to this earlier file of the layer.
    HardLink(TreePath),
}

fn refuse(raw: &[u8], reason: impl Into<String>) -> Normalize {
    Normalize::Refuse { entry: String::from_utf8_lossy(raw).into_owned(), reason: reason.into() }
}

/// Input bytes as printable text (a link target in a message).
fn shown(bytes: &[u8]) -> String {
    escape(&String::from_utf8_lossy(bytes))
}

impl Normalizer {
    pub(crate) fn new(archive: &str, unpack: &Unpack, epoch: u64) -> Result<Self> {
        let mut builder = GlobSetBuilder::new();
        for pattern in &unpack.exclude {
            let glob = Glob::new(pattern).map_err(|e| Error::BadArchive {
                archive: archive.into(),
                message: escape(&format!("exclude `{pattern}`: {e}")),
            })?;
            builder.add(glob);
        }
        let exclude = builder
            .build()
            .map_err(|e| Error::BadArchive { archive: archive.into(), message: escape(&e.to_string()) })?;
        let prefix = TreePath::from_member(unpack.prefix.as_bytes()).map_err(|e| Error::BadArchive {
            archive: archive.into(),
            message: format!("prefix `{}`: {e}", escape(&unpack.prefix)),
        })?;
        Ok(Normalizer {
            strip: unpack.strip_components as usize,
            prefix,
            exclude,
            epoch,
            whiteouts: unpack.whiteouts,
            skip_devices: unpack.skip_devices,
            tree: Tree::new(),
            symlinks: Vec::new(),
            model_bytes: 0,
            counts: Counts::default(),
            last: None,
        })
    }

    /// Writes the prefix's directories (`opt/`, `opt/java/`, …), before any entry.
    pub(crate) fn begin<W: Write>(&mut self, out: &mut tar::Builder<W>) -> io::Result<()> {
        if self.prefix.is_root() {
            return Ok(());
        }
        let placed = self.tree.add(&self.prefix, Node { kind: Kind::Dir, meta: () });
        let placed = placed.map_err(|r| io::Error::other(format!("prefix: {r}")))?;
        for dir in placed.created_parents.iter().chain([&self.prefix]) {
            self.emit_dir(out, dir, self.epoch)?;
        }
        Ok(())
    }

    fn emit_dir<W: Write>(&self, out: &mut tar::Builder<W>, dir: &TreePath, mtime: u64) -> io::Result<()> {
        let mut h = header(EntryType::Directory, 0o755, mtime, 0);
        let mut name = dir.as_bytes().to_vec();
        name.push(b'/');
        out.append_data(&mut h, bytes_path(&name), io::empty())
    }

    /// The entry's path inside the unpack root after `strip_components`, or `None` when it is
    /// stripped away or excluded.
    fn relative(&self, raw: &[u8]) -> Result<Option<TreePath>, Normalize> {
        let path = TreePath::from_member(raw).map_err(|e| refuse(raw, e.to_string()))?;
        if path.components().any(|c| c.len() > NAME_MAX) {
            return Err(refuse(raw, format!("a name longer than {NAME_MAX} bytes, which no file system holds")));
        }
        let Some(rel) = path.strip(self.strip) else { return Ok(None) };
        Ok((!self.excluded(&rel)).then_some(rel))
    }

    fn excluded(&self, rel: &TreePath) -> bool {
        !self.exclude.is_empty()
            && (self.exclude.is_match(rel.as_path())
                || rel.ancestors().iter().any(|a| self.exclude.is_match(a.as_path())))
    }

    /// Places one source entry in the tree and writes it (with any missing parent directories).
    pub(crate) fn append<R: Read, W: Write>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        out: &mut tar::Builder<W>,
    ) -> Result<(), Normalize> {
        let data_end = entry.raw_file_position().saturating_add(entry.size().div_ceil(512) * 512);
        self.last = Some((entry.path_bytes().into_owned(), data_end));
        let entry_type = entry.header().entry_type();
        if matches!(
            entry_type,
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        self.counts.seen += 1;
        let raw = entry.path_bytes().into_owned();
        if !self.kept_type(&raw, entry_type)? {
            return Ok(());
        }
        let Some(rel) = self.relative(&raw)? else { return Ok(()) };
        let whiteout = self.check_whiteout(&raw, &rel, entry_type)?;
        let path = rel.under(&self.prefix);
        if let Some(reason) = own_path_at(&path) {
            return Err(refuse(&raw, format!("{reason}{LEAVE_OUT}")));
        }
        if path.as_bytes().len() >= PATH_MAX {
            return Err(refuse(
                &raw,
                format!("a path of {PATH_MAX} bytes or more in the image, which Linux cannot open"),
            ));
        }
        let item = self.item(entry, &raw, whiteout)?;
        let kind = match &item {
            Item::Dir => Kind::Dir,
            Item::Symlink(target) => Kind::Symlink(target.clone()),
            _ => Kind::File,
        };
        let placed = self.tree.add(&path, Node { kind, meta: () }).map_err(|r| refuse(&raw, r.to_string()))?;
        self.model_bytes +=
            path.as_bytes().len() + placed.created_parents.iter().map(|p| p.as_bytes().len()).sum::<usize>();
        if let Item::Symlink(target) = &item {
            self.model_bytes += target.len();
        }
        if self.model_bytes > MAX_MODEL_BYTES {
            return Err(refuse(
                &raw,
                format!("the archive's paths exceed {} MiB, more than imgbuild models", MAX_MODEL_BYTES >> 20),
            ));
        }
        for dir in &placed.created_parents {
            self.emit_dir(out, dir, self.epoch)?;
        }
        if placed.existing_dir {
            return Ok(()); // a repeated directory: written once
        }
        self.counts.kept += 1;
        self.write(entry, out, path, raw, item)?;
        Ok(())
    }

    /// What the entry becomes; its links' targets checked for what can be checked now.
    fn item<R: Read>(&self, entry: &tar::Entry<'_, R>, raw: &[u8], whiteout: bool) -> Result<Item, Normalize> {
        Ok(match entry.header().entry_type() {
            EntryType::Directory => Item::Dir,
            EntryType::Symlink => match entry.link_name_bytes() {
                Some(target) if target.len() >= PATH_MAX => {
                    let reason = format!("a symlink target of {PATH_MAX} bytes or more, which Linux refuses");
                    return Err(refuse(raw, reason));
                }
                Some(target) if !target.is_empty() => Item::Symlink(target.into_owned()),
                _ => return Err(refuse(raw, "symlink with an empty target")),
            },
            EntryType::Link => Item::HardLink(self.hard_link_target(entry, raw)?),
            _ if whiteout => Item::Whiteout,
            _ => Item::File,
        })
    }

    /// Whether an entry of this type goes into the layer: `false` for a device node or FIFO the
    /// recipe leaves out; refuses the types no layer may hold.
    fn kept_type(&mut self, raw: &[u8], entry_type: EntryType) -> Result<bool, Normalize> {
        match entry_type {
            EntryType::Directory | EntryType::Regular | EntryType::Continuous | EntryType::Symlink | EntryType::Link => {
                Ok(true)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo if self.skip_devices => {
                self.counts.skipped_devices += 1;
                Ok(false)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => Err(refuse(
                raw,
                "device nodes and FIFOs are not allowed in a layer (`skip_devices = true` in [unpack] leaves them out; runtimes provide /dev)",
            )),
            EntryType::GNUSparse => Err(refuse(raw, "sparse files are not supported")),
            other => Err(refuse(raw, unsupported_type(other.as_byte()))),
        }
    }

    /// Writes one placed entry with normalized metadata.
    fn write<R: Read, W: Write>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        out: &mut tar::Builder<W>,
        path: TreePath,
        raw: Vec<u8>,
        item: Item,
    ) -> io::Result<()> {
        let mtime = entry.header().mtime().unwrap_or(0).min(self.epoch);
        let name = bytes_path(path.as_bytes());
        match item {
            Item::Dir => self.emit_dir(out, &path, mtime),
            Item::File => {
                let size = entry.header().size()?;
                let mode = if entry.header().mode().unwrap_or(0o644) & 0o111 != 0 { 0o755 } else { 0o644 };
                out.append_data(&mut header(EntryType::Regular, mode, mtime, size), name, &mut *entry)
            }
            // Passed through only as what the OCI spec says a whiteout is: an empty file.
            Item::Whiteout => out.append_data(&mut header(EntryType::Regular, 0o644, mtime, 0), name, io::empty()),
            Item::HardLink(target) => {
                out.append_link(&mut header(EntryType::Link, 0o644, mtime, 0), name, bytes_path(target.as_bytes()))
            }
            Item::Symlink(target) => {
                out.append_link(&mut header(EntryType::Symlink, 0o777, mtime, 0), name, bytes_path(&target))?;
                self.symlinks.push((path, raw, target));
                Ok(())
            }
        }
    }

    /// Whether the entry is a whiteout that the recipe allows; refuses the others.
    fn check_whiteout(&self, raw: &[u8], rel: &TreePath, entry_type: EntryType) -> Result<bool, Normalize> {
        let count = rel.components().filter(|c| c.starts_with(WHITEOUT_PREFIX)).count();
        if count == 0 {
            return Ok(false);
        }
        if !self.whiteouts {
            return Err(refuse(
                raw,
                "OCI whiteout (`.wh.` name): it would delete files of the layers below; a recipe that means to sets `whiteouts = true` in [unpack]",
            ));
        }
        let last = rel.file_name().is_some_and(|n| n.starts_with(WHITEOUT_PREFIX));
        if count > 1 || !last || !matches!(entry_type, EntryType::Regular | EntryType::Continuous) {
            return Err(refuse(raw, "a whiteout must be a regular file, and nothing can be under it"));
        }
        Ok(true)
    }

    /// A hard link's target in the layer: an earlier regular file of this source, inside the prefix.
    fn hard_link_target<R: Read>(&self, entry: &tar::Entry<'_, R>, raw: &[u8]) -> Result<TreePath, Normalize> {
        let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
        let rel = TreePath::from_member(&target)
            .map_err(|e| refuse(raw, format!("hard link to `{}`: {e}", shown(&target))))?
            .strip(self.strip)
            .ok_or_else(|| refuse(raw, format!("hard link to `{}`, outside the unpacked tree", shown(&target))))?;
        let target = rel.under(&self.prefix);
        self.tree.hard_link_target(&target).map_err(|r| refuse(raw, r.to_string()))?;
        // A runtime turns a whiteout into a deletion and never creates the file to link to.
        if target.file_name().is_some_and(|n| n.starts_with(WHITEOUT_PREFIX)) {
            return Err(refuse(raw, format!("hard link to the whiteout {target}, which no runtime creates")));
        }
        Ok(target)
    }

    /// Checks every symlink against the finished tree: each must lead inside the prefix; and
    /// nothing may be at imgbuild's own paths, even through a symlink (`etc -> x` and
    /// `x/imgbuild/node-id` put a file at /etc/imgbuild/node-id).
    pub(crate) fn finish(&self) -> Result<Counts, Normalize> {
        for (path, raw, target) in &self.symlinks {
            self.tree.resolve_link(path, target, &self.prefix).map_err(|r| refuse(raw, r.to_string()))?;
        }
        for own in crate::entrypoint::own_paths() {
            let own = TreePath::from_member(own.as_bytes()).expect("imgbuild's own paths are paths");
            if let Some((found, link)) = self.occupant(&own) {
                let reason = format!("through the symlink {link} it is {own}, which imgbuild writes itself{LEAVE_OUT}");
                return Err(refuse(found.as_bytes(), reason));
            }
        }
        Ok(self.counts)
    }

    /// What of this layer would be at `own` in the image, and the first symlink on the way
    /// there, when it is reached through one (a literal path was refused when it was added).
    fn occupant(&self, own: &TreePath) -> Option<(TreePath, TreePath)> {
        let mut here = TreePath::root();
        let mut through = None;
        let names: Vec<&[u8]> = own.components().collect();
        for (i, name) in names.iter().enumerate() {
            let next = here.join(name);
            let last = i + 1 == names.len();
            match &self.tree.get(&next)?.kind {
                Kind::Symlink(target) if !last => {
                    // Loops and escapes were refused above: the link resolves inside the root.
                    here = self.tree.resolve_link(&next, target, &TreePath::root()).ok()?;
                    through.get_or_insert(next);
                }
                Kind::Dir if !last => here = next,
                _ if last => return through.map(|link| (next, link)),
                _ => return None,
            }
        }
        None
    }

    /// Says where a tar stream that ended `at` bytes in was cut short.
    pub(crate) fn cut_short(&self, at: u64) -> String {
        match &self.last {
            Some((name, end)) if at < *end => {
                format!("the tar data ends inside entry `{}` (cut short at byte {at} of the tar)", shown(name))
            }
            Some((name, _)) => format!(
                "the tar data ends inside a header, the one after entry `{}` (cut short at byte {at} of the tar)",
                shown(name)
            ),
            None => format!("the tar data ends inside its first header (cut short at byte {at} of the tar)"),
        }
    }
}

/// How a recipe leaves out what a tarball has at imgbuild's own paths.
const LEAVE_OUT: &str = " (`exclude` in [unpack] leaves it out)";

/// Why `path` (as it appears in an image) is not a recipe's to write, if it is one of
/// imgbuild's own paths (the configuration directory, the entrypoints) or inside one.
fn own_path_at(path: &TreePath) -> Option<String> {
    crate::entrypoint::own_paths()
        .into_iter()
        .map(|own| TreePath::from_member(own.as_bytes()).expect("imgbuild's own paths are paths"))
        .find(|own| path.starts_with(own))
        .map(|own| match *path == own {
            true => format!("{path} is a path imgbuild writes itself"),
            false => format!("{path} is inside {own}, which imgbuild writes itself"),
        })
}

/// The tar stream as the tar reader reads it, noting where it ends: a tar that ends inside an
/// entry or a header is cut short ([`Normalizer::cut_short`] says where).
pub(crate) struct TarStream<R> {
    inner: R,
    read: u64,
    ended_at: std::rc::Rc<std::cell::Cell<Option<u64>>>,
}

impl<R: Read> TarStream<R> {
    /// The stream, and where it will be seen to end.
    pub(crate) fn new(inner: R) -> (Self, std::rc::Rc<std::cell::Cell<Option<u64>>>) {
        let ended_at = std::rc::Rc::default();
        (TarStream { inner, read: 0, ended_at: std::rc::Rc::clone(&ended_at) }, ended_at)
    }
}

impl<R: Read> Read for TarStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if n == 0 && !buf.is_empty() {
            self.ended_at.set(Some(self.read));
        }
        Ok(n)
    }
}

/// Names an entry type no layer holds in plain words (the tar crate's own name of an unknown
/// type is Rust debug text).
fn unsupported_type(byte: u8) -> String {
    let what = match byte {
        b'D' => "GNU incremental-backup directory listing",
        b'M' => "GNU multi-volume continuation",
        b'V' => "GNU volume label",
        b'N' => "old GNU long-name",
        b'A' => "Solaris access control list",
        b'E' => "Solaris extended attribute",
        b'I' => "star inode metadata",
        b'X' => "Solaris extended header",
        _ => "unknown",
    };
    let shown = match byte {
        b' '..=b'~' => (byte as char).to_string(),
        _ => format!("\\x{byte:02x}"),
    };
    format!("entry type `{shown}` ({what}) is not supported")
}

/// Raw name bytes as a path for the tar writer (names need not be UTF-8).
fn bytes_path(bytes: &[u8]) -> &std::path::Path {
    use std::os::unix::ffi::OsStrExt;
    std::path::Path::new(std::ffi::OsStr::from_bytes(bytes))
}

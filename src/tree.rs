//! A model of a file tree as it is built entry by entry: which path is a directory, a file or a
//! symlink (and where it points). Untrusted archives are checked against it, never against the
//! host's file system.
//!
//! Two users, two rules for an entry whose path already exists:
//! - the layer normalizer turns one untrusted source into one layer ([`Tree::add`]): a path
//!   appears once (a directory may repeat; the OCI layer spec forbids duplicate entries), an
//!   entry is never written through a symlink or under a file;
//! - the VM rootfs applies layers in order ([`Tree::apply`]): an entry replaces what lower
//!   layers had there (directory over directory keeps the directory), as the OCI image spec's
//!   "changeset over existing files" says, still never through a symlink.
//!
//! Symlink targets are resolved through the links already in the tree the way the kernel's
//! `openat2(RESOLVE_IN_ROOT)` resolves them: absolute targets start at the image root and `..`
//! never climbs above it ([`Tree::resolve_link`]).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// How many symlinks one resolution may follow before it is a loop (Linux's limit).
pub(crate) const MAX_LINKS: usize = 40;

/// A path inside the tree: `/`-separated normal components, without `.`, `..`, empty parts or a
/// leading `/`. The root is the empty path. Built only by [`TreePath::from_member`] and
/// [`TreePath::join`], so a `TreePath` can never climb out of the tree.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct TreePath(Vec<u8>);

/// Why an archive member's name is not a path inside the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BadName {
    Absolute,
    ParentDir,
    Nul,
}

impl fmt::Display for BadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadName::Absolute => "absolute path",
            BadName::ParentDir => "path contains `..`",
            BadName::Nul => "path contains a NUL byte",
        })
    }
}

impl TreePath {
    pub(crate) fn root() -> TreePath {
        TreePath(Vec::new())
    }

    /// An archive member's name as a path in the tree: `.` and empty components are dropped,
    /// `..` and absolute names are refused (no tar extractor worth trusting writes them either).
    pub(crate) fn from_member(raw: &[u8]) -> Result<TreePath, BadName> {
        if raw.starts_with(b"/") {
            return Err(BadName::Absolute);
        }
        if raw.contains(&0) {
            return Err(BadName::Nul);
        }
        // One pass, one buffer: a hostile name may have thousands of components.
        let mut bytes = Vec::with_capacity(raw.len());
        for part in raw.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => return Err(BadName::ParentDir),
                name => {
                    if !bytes.is_empty() {
                        bytes.push(b'/');
                    }
                    bytes.extend_from_slice(name);
                }
            }
        }
        Ok(TreePath(bytes))
    }

    /// `self/name`; `name` must be one normal component (no `/`, not `.` or `..`).
    pub(crate) fn join(&self, name: &[u8]) -> TreePath {
        debug_assert!(!name.is_empty() && !name.contains(&b'/') && name != b"." && name != b"..");
        let mut bytes = Vec::with_capacity(self.0.len() + 1 + name.len());
        bytes.extend_from_slice(&self.0);
        if !bytes.is_empty() {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(name);
        TreePath(bytes)
    }

    /// `self` with its first `n` components removed (`--strip-components`), or `None` when
    /// nothing is left.
    pub(crate) fn strip(&self, n: usize) -> Option<TreePath> {
        if n == 0 {
            return (!self.is_root()).then(|| self.clone());
        }
        // Components are separated by single `/`: the rest starts after the n-th one.
        let at = self.0.iter().enumerate().filter(|(_, b)| **b == b'/').nth(n - 1)?.0;
        Some(TreePath(self.0[at + 1..].to_vec()))
    }

    /// `prefix/self`.
    pub(crate) fn under(&self, prefix: &TreePath) -> TreePath {
        if prefix.is_root() || self.is_root() {
            return if prefix.is_root() { self.clone() } else { prefix.clone() };
        }
        TreePath([&prefix.0[..], b"/", &self.0[..]].concat())
    }

    pub(crate) fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|b| *b == b'/').filter(|c| !c.is_empty())
    }

    pub(crate) fn parent(&self) -> Option<TreePath> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.iter().rposition(|b| *b == b'/') {
            Some(i) => TreePath(self.0[..i].to_vec()),
            None => TreePath::root(),
        })
    }

    pub(crate) fn file_name(&self) -> Option<&[u8]> {
        self.components().last()
    }

    /// Whether `self` is `other` or inside it (component-wise: `a/bc` is not inside `a/b`).
    pub(crate) fn starts_with(&self, other: &TreePath) -> bool {
        other.is_root() || self == other || (self.0.starts_with(&other.0) && self.0.get(other.0.len()) == Some(&b'/'))
    }

    /// The ancestors of `self` from the shallowest down, without the root and without `self`.
    pub(crate) fn ancestors(&self) -> Vec<TreePath> {
        let mut out = Vec::new();
        let mut p = self.parent();
        while let Some(a) = p.filter(|a| !a.is_root()) {
            p = a.parent();
            out.push(a);
        }
        out.reverse();
        out
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn as_path(&self) -> &Path {
        Path::new(std::ffi::OsStr::from_bytes(&self.0))
    }
}

impl fmt::Display for TreePath {
    /// The path as it appears in an image (`/opt/app`), escaped for a terminal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", crate::error::escape(&String::from_utf8_lossy(&self.0)))
    }
}

impl fmt::Debug for TreePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    /// A regular file (a hard link is a file too: it names the same content).
    File,
    /// A symlink and its target, as written.
    Symlink(Vec<u8>),
    /// A device node, FIFO or socket (only ever from a base image's layers).
    Special,
}

impl Kind {
    fn describe(&self) -> &'static str {
        match self {
            Kind::Dir => "a directory",
            Kind::File => "a file",
            Kind::Symlink(_) => "a symlink",
            Kind::Special => "a special file",
        }
    }
}

/// One path of the tree: what it is, and what its user keeps about it (owner, mode, …).
#[derive(Debug, Clone)]
pub(crate) struct Node<M> {
    pub kind: Kind,
    pub meta: M,
}

/// Why an entry cannot be placed in the tree. The caller names the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A directory on the way to the entry is a symlink: writing would go wherever it points.
    ThroughSymlink { link: TreePath },
    /// A directory on the way to the entry is a file (or a special file).
    UnderNonDirectory { parent: TreePath, kind: &'static str },
    /// The path already holds something (a layer lists every path once).
    Duplicate { existing: &'static str },
    /// The symlink's target leads out of the allowed part of the tree (first at `at`).
    Escapes { target: String, at: TreePath, allowed: TreePath },
    /// Following the symlink's target takes more than [`MAX_LINKS`] links.
    Loop { target: String },
    /// A hard link must name an earlier regular file.
    NotAFile { target: TreePath, found: &'static str },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::ThroughSymlink { link } => write!(f, "it would be written through the symlink {link}"),
            Refusal::UnderNonDirectory { parent, kind } => write!(f, "{parent} is {kind}, not a directory"),
            Refusal::Duplicate { existing } => {
                write!(f, "the path is already {existing} of this archive (a layer lists each path once)")
            }
            Refusal::Escapes { target, at, allowed } => {
                write!(f, "symlink to `{target}` leads to {at}, outside {allowed}")
            }
            Refusal::Loop { target } => {
                write!(f, "symlink to `{target}` does not resolve (more than {MAX_LINKS} links)")
            }
            Refusal::NotAFile { target, found } => {
                write!(f, "hard link to {target}, which is {found}, not an earlier regular file of the archive")
            }
        }
    }
}

/// What [`Tree::add`] or [`Tree::apply`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Placed {
    /// Missing parent directories it created, shallowest first (a writer emits them first).
    pub created_parents: Vec<TreePath>,
    /// The entry names a directory that was already there: nothing new to write.
    pub existing_dir: bool,
    /// What lower layers had at the path and was removed to make room (with everything under it).
    pub replaced: bool,
}

pub(crate) struct Tree<M> {
    nodes: BTreeMap<TreePath, Node<M>>,
}

impl<M: Clone + Default> Default for Tree<M> {
    fn default() -> Self {
        Tree::new()
    }
}

impl<M: Clone + Default> Tree<M> {
    /// A tree holding only its root directory.
    pub(crate) fn new() -> Tree<M> {
        let mut nodes = BTreeMap::new();
        nodes.insert(TreePath::root(), Node { kind: Kind::Dir, meta: M::default() });
        Tree { nodes }
    }

    pub(crate) fn get(&self, path: &TreePath) -> Option<&Node<M>> {
        self.nodes.get(path)
    }

    pub(crate) fn get_mut(&mut self, path: &TreePath) -> Option<&mut Node<M>> {
        self.nodes.get_mut(path)
    }

    /// Every path, sorted (parents before their children).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&TreePath, &Node<M>)> {
        self.nodes.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The parents `path` needs that do not exist yet, refusing a parent that is a symlink or
    /// not a directory.
    fn missing_parents(&self, path: &TreePath) -> Result<Vec<TreePath>, Refusal> {
        // Every path of the tree has directories for ancestors, so the deepest ancestor that
        // exists decides: walk up from the parent to it (usually one lookup).
        let mut missing = Vec::new();
        let mut next = path.parent();
        while let Some(ancestor) = next.filter(|a| !a.is_root()) {
            match self.nodes.get(&ancestor).map(|n| &n.kind) {
                None => {
                    next = ancestor.parent();
                    missing.push(ancestor);
                }
                Some(Kind::Dir) => break,
                Some(Kind::Symlink(_)) => return Err(Refusal::ThroughSymlink { link: ancestor }),
                Some(other) => return Err(Refusal::UnderNonDirectory { parent: ancestor, kind: other.describe() }),
            }
        }
        missing.reverse();
        Ok(missing)
    }

    fn create_parents(&mut self, parents: &[TreePath]) {
        for p in parents {
            self.nodes.insert(p.clone(), Node { kind: Kind::Dir, meta: M::default() });
        }
    }

    /// Adds one entry of a single archive: a path is placed once (a directory may be listed
    /// again, which changes nothing), never through a symlink or under a file.
    pub(crate) fn add(&mut self, path: &TreePath, node: Node<M>) -> Result<Placed, Refusal> {
        let parents = self.missing_parents(path)?;
        if let Some(existing) = self.nodes.get(path) {
            if existing.kind == Kind::Dir && node.kind == Kind::Dir {
                return Ok(Placed { existing_dir: true, ..Placed::default() });
            }
            return Err(Refusal::Duplicate { existing: existing.kind.describe() });
        }
        self.create_parents(&parents);
        self.nodes.insert(path.clone(), node);
        Ok(Placed { created_parents: parents, ..Placed::default() })
    }

    /// Applies one entry of a layer over the layers below: a directory over a directory takes
    /// the new metadata; anything else replaces what was there, with everything under it.
    pub(crate) fn apply(&mut self, path: &TreePath, node: Node<M>) -> Result<Placed, Refusal> {
        let parents = self.missing_parents(path)?;
        let mut placed = Placed { created_parents: parents.clone(), ..Placed::default() };
        match self.nodes.get_mut(path) {
            Some(existing) if existing.kind == Kind::Dir && node.kind == Kind::Dir => {
                existing.meta = node.meta;
                placed.existing_dir = true;
                return Ok(placed);
            }
            Some(_) => {
                self.remove(path);
                placed.replaced = true;
            }
            None => {}
        }
        self.create_parents(&parents);
        self.nodes.insert(path.clone(), node);
        Ok(placed)
    }

    /// Removes `path` and everything under it; returns whether it existed. The root stays.
    pub(crate) fn remove(&mut self, path: &TreePath) -> bool {
        if path.is_root() {
            let children: Vec<TreePath> = self.nodes.keys().filter(|p| !p.is_root()).cloned().collect();
            for c in children {
                self.nodes.remove(&c);
            }
            return true;
        }
        let existed = self.nodes.remove(path).is_some();
        let under: Vec<TreePath> = self.descendants(path).cloned().collect();
        for p in under {
            self.nodes.remove(&p);
        }
        existed
    }

    /// Every path strictly under `dir`, sorted.
    pub(crate) fn descendants<'a>(&'a self, dir: &TreePath) -> impl Iterator<Item = &'a TreePath> + 'a {
        // Children of `a/b` are the keys `a/b/…`: one contiguous range of the sorted map.
        let mut start = dir.0.clone();
        if !start.is_empty() {
            start.push(b'/');
        }
        let end_prefix = start.clone();
        self.nodes
            .range(TreePath(start)..)
            .map(|(p, _)| p)
            .take_while(move |p| p.0.starts_with(&end_prefix))
            .filter(|p| !p.is_root())
    }

    /// Checks that a hard link's target is a regular file already in the tree.
    pub(crate) fn hard_link_target(&self, target: &TreePath) -> Result<(), Refusal> {
        match self.nodes.get(target).map(|n| &n.kind) {
            Some(Kind::File) => Ok(()),
            Some(other) => Err(Refusal::NotAFile { target: target.clone(), found: other.describe() }),
            None => Err(Refusal::NotAFile { target: target.clone(), found: "not in the archive (or excluded)" }),
        }
    }

    /// Resolves the symlink at `link` (pointing to `target`) through the links of the tree, the
    /// way `openat2(RESOLVE_IN_ROOT)` would in the finished image: an absolute target starts at
    /// the root, `..` stops at the root. Every step must stay in `allowed`, its parent
    /// directories (which lead there) or the root; the end must be inside `allowed`.
    /// Returns where the link leads.
    pub(crate) fn resolve_link(&self, link: &TreePath, target: &[u8], allowed: &TreePath) -> Result<TreePath, Refusal> {
        let shown = || crate::error::escape(&String::from_utf8_lossy(target));
        let escapes = |at: TreePath| Refusal::Escapes { target: shown(), at, allowed: allowed.clone() };
        let on_the_way = |p: &TreePath| p.starts_with(allowed) || allowed.starts_with(p);
        let mut here = link.parent().unwrap_or_default();
        let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
        push_target(&mut pending, &mut here, target);
        let mut followed = 0;
        while let Some(part) = pending.pop_front() {
            match part.as_slice() {
                b"" | b"." => continue,
                b".." => here = here.parent().unwrap_or_default(),
                name => {
                    let next = here.join(name);
                    if !on_the_way(&next) {
                        return Err(escapes(next));
                    }
                    match self.nodes.get(&next).map(|n| &n.kind) {
                        Some(Kind::Symlink(inner)) => {
                            followed += 1;
                            if followed > MAX_LINKS {
                                return Err(Refusal::Loop { target: shown() });
                            }
                            push_target(&mut pending, &mut here, inner);
                        }
                        _ => here = next,
                    }
                }
            }
            if !on_the_way(&here) {
                return Err(escapes(here));
            }
        }
        if !here.starts_with(allowed) {
            return Err(escapes(here));
        }
        Ok(here)
    }
}

/// Puts a link's target in front of what is left to resolve; an absolute one restarts at the root.
fn push_target(pending: &mut VecDeque<Vec<u8>>, here: &mut TreePath, target: &[u8]) {
    if target.starts_with(b"/") {
        *here = TreePath::root();
    }
    for part in target.split(|b| *b == b'/').rev() {
        pending.push_front(part.to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TreePath {
        TreePath::from_member(s.as_bytes()).unwrap()
    }

    fn dir() -> Node<()> {
        Node { kind: Kind::Dir, meta: () }
    }

    fn file() -> Node<()> {
        Node { kind: Kind::File, meta: () }
    }

    fn link(t: &str) -> Node<()> {
        Node { kind: Kind::Symlink(t.as_bytes().to_vec()), meta: () }
    }

    #[test]
    fn member_names_are_cleaned_or_refused() {
        assert_eq!(p("./a//b/./c/"), p("a/b/c"));
        assert!(p("./").is_root());
        assert_eq!(TreePath::from_member(b"/etc/passwd"), Err(BadName::Absolute));
        assert_eq!(TreePath::from_member(b"a/../../b"), Err(BadName::ParentDir));
        assert_eq!(TreePath::from_member(b"a\0b"), Err(BadName::Nul));
    }

    #[test]
    fn paths_compare_by_component() {
        assert!(p("a/b/c").starts_with(&p("a/b")));
        assert!(!p("a/bc").starts_with(&p("a/b")));
        assert!(p("a").starts_with(&TreePath::root()));
        assert_eq!(p("a/b/c").ancestors(), vec![p("a"), p("a/b")]);
        assert_eq!(p("a/b/c").strip(1), Some(p("b/c")));
        assert_eq!(p("a").strip(1), None);
        assert_eq!(p("x/y").under(&p("opt/app")), p("opt/app/x/y"));
        assert_eq!((p("a/b").strip(2), p("a/b").strip(0)), (None, Some(p("a/b"))));
        assert_eq!((TreePath::root().under(&p("x")), p("x").under(&TreePath::root())), (p("x"), p("x")));
    }

    #[test]
    fn add_creates_missing_parents_and_refuses_what_no_runtime_unpacks() {
        let mut t = Tree::<()>::new();
        let placed = t.add(&p("a/b/c"), file()).unwrap();
        assert_eq!(placed.created_parents, vec![p("a"), p("a/b")]);
        assert!(t.add(&p("a/b"), dir()).unwrap().existing_dir);
        assert_eq!(t.add(&p("a/b/c"), file()), Err(Refusal::Duplicate { existing: "a file" }));
        assert_eq!(t.add(&p("a/b"), file()), Err(Refusal::Duplicate { existing: "a directory" }));
        assert!(matches!(t.add(&p("a/b/c/d"), file()), Err(Refusal::UnderNonDirectory { .. })));
        t.add(&p("s"), link("a")).unwrap();
        assert_eq!(t.add(&p("s/x"), file()), Err(Refusal::ThroughSymlink { link: p("s") }));
        assert!(matches!(t.hard_link_target(&p("a/b")), Err(Refusal::NotAFile { .. })));
        assert!(matches!(t.hard_link_target(&p("s")), Err(Refusal::NotAFile { .. })));
        assert!(t.hard_link_target(&p("a/b/c")).is_ok());
    }

    #[test]
    fn apply_replaces_lower_layers_but_never_writes_through_a_link() {
        let mut t = Tree::<u32>::new();
        t.apply(&p("lib/x/y"), Node { kind: Kind::File, meta: 1 }).unwrap();
        let placed = t.apply(&p("lib"), Node { kind: Kind::Symlink(b"usr/lib".to_vec()), meta: 0 }).unwrap();
        assert!(placed.replaced);
        assert!(t.get(&p("lib/x")).is_none(), "the directory's contents went with it");
        assert_eq!(
            t.apply(&p("lib/z"), Node { kind: Kind::File, meta: 0 }),
            Err(Refusal::ThroughSymlink { link: p("lib") })
        );
        t.apply(&p("d"), Node { kind: Kind::Dir, meta: 1 }).unwrap();
        assert!(t.apply(&p("d"), Node { kind: Kind::Dir, meta: 7 }).unwrap().existing_dir);
        assert_eq!(t.get(&p("d")).unwrap().meta, 7);
    }

    #[test]
    fn remove_takes_the_subtree_and_nothing_beside_it() {
        let mut t = Tree::<()>::new();
        for f in ["a/b/c", "a/b/d", "a/bc", "a/b0"] {
            t.add(&p(f), file()).unwrap();
        }
        assert!(t.remove(&p("a/b")));
        let left: Vec<String> = t.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(left, ["/", "/a", "/a/b0", "/a/bc"]);
    }

    #[test]
    fn chained_links_are_resolved_through_each_other() {
        // The example: each link alone looks harmless, together they climb out.
        let mut t = Tree::<()>::new();
        let prefix = p("opt/app");
        t.add(&p("opt/app/a/b/s"), link("../..")).unwrap();
        assert_eq!(t.resolve_link(&p("opt/app/a/b/s"), b"../..", &prefix), Ok(p("opt/app")));
        t.add(&p("opt/app/t"), link("a/b/s/../../..")).unwrap();
        let err = t.resolve_link(&p("opt/app/t"), b"a/b/s/../../..", &prefix).unwrap_err();
        assert!(matches!(err, Refusal::Escapes { .. }), "{err}");
    }

    #[test]
    fn absolute_links_resolve_against_the_image_root() {
        let t = Tree::<()>::new();
        let root = TreePath::root();
        let target = b"/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2";
        assert_eq!(
            t.resolve_link(&p("lib64/ld.so"), target, &root),
            Ok(p("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"))
        );
        assert!(t.resolve_link(&p("opt/app/x"), b"/etc/passwd", &p("opt/app")).is_err());
        assert_eq!(t.resolve_link(&p("opt/app/x"), b"/opt/app/lib", &p("opt/app")), Ok(p("opt/app/lib")));
        // `..` stops at the root, as in a container.
        assert_eq!(t.resolve_link(&p("a"), b"../../../etc", &root), Ok(p("etc")));
    }

    #[test]
    fn loops_are_refused() {
        let mut t = Tree::<()>::new();
        t.add(&p("a"), link("b")).unwrap();
        t.add(&p("b"), link("a")).unwrap();
        assert!(matches!(t.resolve_link(&p("a"), b"b", &TreePath::root()), Err(Refusal::Loop { .. })));
    }
}

/// The model against the kernel: a random tree of directories, files and symlinks is made on
/// disk, and every symlink is resolved by `openat2(RESOLVE_IN_ROOT)` and by the model.
#[cfg(test)]
pub(crate) mod against_the_kernel {
    use super::*;
    use proptest::prelude::*;
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// `openat2(root, path, O_PATH, RESOLVE_IN_ROOT)`: `path` resolved by the kernel inside `root`
    /// (the final symlink followed), as a container runtime resolves it.
    pub(crate) fn open_in_root(root: &std::fs::File, path: &[u8]) -> std::io::Result<OwnedFd> {
        let c = CString::new(path).map_err(std::io::Error::other)?;
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
        how.resolve = 0x10; // RESOLVE_IN_ROOT
                            // SAFETY: a valid directory fd, a NUL-terminated path and a zeroed open_how of the right size.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Where an open descriptor is, relative to `root_path`; `None` outside it.
    pub(crate) fn location(fd: &OwnedFd, root_path: &Path) -> Option<TreePath> {
        let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        let rel = real.strip_prefix(root_path).ok()?;
        Some(TreePath::from_member(rel.as_os_str().as_bytes()).unwrap())
    }

    /// Where the kernel resolves `path` (relative to `root`) inside `root`; `None` if it does not.
    fn kernel_resolve(root: &std::fs::File, root_path: &Path, path: &TreePath) -> Option<TreePath> {
        location(&open_in_root(root, path.as_bytes()).ok()?, root_path)
    }

    #[derive(Debug, Clone)]
    enum Gen {
        Dir(String),
        File(String),
        Link(String, String),
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![Just("a".to_string()), Just("b".to_string()), Just("c".to_string())]
    }

    fn rel_path() -> impl Strategy<Value = String> {
        prop::collection::vec(name(), 1..4).prop_map(|v| v.join("/"))
    }

    fn target() -> impl Strategy<Value = String> {
        let part = prop_oneof![Just("..".to_string()), Just(".".to_string()), name()];
        (any::<bool>(), prop::collection::vec(part, 1..5))
            .prop_map(|(abs, parts)| format!("{}{}", if abs { "/" } else { "" }, parts.join("/")))
    }

    fn entry() -> impl Strategy<Value = Gen> {
        prop_oneof![
            rel_path().prop_map(Gen::Dir),
            rel_path().prop_map(Gen::File),
            (rel_path(), target()).prop_map(|(p, t)| Gen::Link(p, t)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn the_model_resolves_links_as_the_kernel_does(entries in prop::collection::vec(entry(), 1..14), prefix in prop::option::of(rel_path())) {
            let tmp = tempfile::tempdir().unwrap();
            let root_path = tmp.path().canonicalize().unwrap();
            let mut tree = Tree::<()>::new();
            let allowed = prefix.map(|p| TreePath::from_member(p.as_bytes()).unwrap()).unwrap_or_default();
            for e in &entries {
                let (path, node) = match e {
                    Gen::Dir(p) => (p, Node { kind: Kind::Dir, meta: () }),
                    Gen::File(p) => (p, Node { kind: Kind::File, meta: () }),
                    Gen::Link(p, t) => (p, Node { kind: Kind::Symlink(t.as_bytes().to_vec()), meta: () }),
                };
                let tp = TreePath::from_member(path.as_bytes()).unwrap();
                let Ok(placed) = tree.add(&tp, node) else { continue };
                for d in &placed.created_parents {
                    std::fs::create_dir(root_path.join(d.as_path())).unwrap();
                }
                let on_disk = root_path.join(tp.as_path());
                match e {
                    Gen::Dir(_) if placed.existing_dir => {}
                    Gen::Dir(_) => std::fs::create_dir(&on_disk).unwrap(),
                    Gen::File(_) => drop(std::fs::File::create(&on_disk).unwrap()),
                    Gen::Link(_, t) => std::os::unix::fs::symlink(t, &on_disk).unwrap(),
                }
            }
            let root = std::fs::File::open(&root_path).unwrap();
            for (path, node) in tree.iter() {
                let Kind::Symlink(target) = &node.kind else { continue };
                // Resolving the whole tree lets the model say where the link leads.
                let model = tree.resolve_link(path, target, &TreePath::root());
                let kernel = kernel_resolve(&root, &root_path, path);
                match (&model, &kernel) {
                    (Ok(m), Some(k)) => prop_assert_eq!(m, k, "{} -> {}", path, String::from_utf8_lossy(target)),
                    (Ok(_), None) => {} // dangling: the model says where it would lead
                    (Err(Refusal::Loop { .. }), None) => {}
                    (Err(e), k) => prop_assert!(false, "{path}: model refused ({e}) what the kernel resolved to {k:?}"),
                }
                // Within a prefix: whatever the model allows, the kernel resolves inside it.
                if let (Ok(_), Some(k)) = (tree.resolve_link(path, target, &allowed), &kernel) {
                    prop_assert!(k.starts_with(&allowed), "{} -> {} allowed but leads to {}", path, String::from_utf8_lossy(target), k);
                }
            }
        }
    }
}

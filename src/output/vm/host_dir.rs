//! A directory on the host that the rootfs is written into, by paths of the tree model, with
//! calls that never follow a link: each parent is opened component by component with
//! `O_NOFOLLOW | O_DIRECTORY`, files are created with `O_CREAT | O_EXCL | O_NOFOLLOW`, and
//! `mkdirat`, `symlinkat`, `linkat` and `unlinkat` never follow their last component either.
//! The model already refuses every entry that would go through a link; this is the second line
//! of defence, so a bug there still cannot write outside the directory.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{linkat, mkdirat, openat, symlinkat, unlinkat, AtFlags, Mode, OFlags};

use crate::tree::TreePath;

pub(crate) struct HostDir {
    path: PathBuf,
    root: OwnedFd,
}

/// Owner-only modes on the host: the file system gets each path's mode from the model, so the
/// host's umask never reaches it, and a read-only directory never blocks writing into it.
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

impl HostDir {
    /// Creates the (new, empty) directory `path`.
    pub(crate) fn create(path: &Path) -> io::Result<HostDir> {
        std::fs::create_dir(path)?;
        let root = openat(rustix::fs::CWD, path, dir_flags(), Mode::empty())?;
        Ok(HostDir { path: path.to_path_buf(), root })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The host path of `path`, for messages.
    pub(crate) fn show(&self, path: &TreePath) -> PathBuf {
        self.path.join(path.as_path())
    }

    /// Opens the directory holding `path`, one component at a time, refusing any link.
    fn parent(&self, path: &TreePath) -> io::Result<(OwnedFd, Vec<u8>)> {
        let name = path.file_name().ok_or_else(|| io::Error::other("the root has no parent"))?.to_vec();
        let mut dir = rustix::io::dup(&self.root)?;
        for component in path.parent().unwrap_or_default().components() {
            dir = openat(&dir, component, dir_flags(), Mode::empty())?;
        }
        Ok((dir, name))
    }

    pub(crate) fn create_dir(&self, path: &TreePath) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        Ok(mkdirat(&dir, name.as_slice(), Mode::from_raw_mode(DIR_MODE))?)
    }

    /// A new regular file (it must not exist yet, not even as a link).
    pub(crate) fn create_file(&self, path: &TreePath) -> io::Result<File> {
        let (dir, name) = self.parent(path)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(File::from(openat(&dir, name.as_slice(), flags, Mode::from_raw_mode(FILE_MODE))?))
    }

    pub(crate) fn symlink(&self, path: &TreePath, target: &[u8]) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        Ok(symlinkat(target, &dir, name.as_slice())?)
    }

    /// `path` as another name of the file at `target` (never of what a link there points to).
    pub(crate) fn hard_link(&self, target: &TreePath, path: &TreePath) -> io::Result<()> {
        let (from_dir, from_name) = self.parent(target)?;
        let (to_dir, to_name) = self.parent(path)?;
        Ok(linkat(&from_dir, from_name.as_slice(), &to_dir, to_name.as_slice(), AtFlags::empty())?)
    }

    /// Removes `path`, an empty directory or anything else (a link itself, never its target).
    pub(crate) fn remove(&self, path: &TreePath, is_dir: bool) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        let flags = if is_dir { AtFlags::REMOVEDIR } else { AtFlags::empty() };
        Ok(unlinkat(&dir, name.as_slice(), flags)?)
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TreePath {
        TreePath::from_member(s.as_bytes()).unwrap()
    }

    #[test]
    fn nothing_is_written_through_a_link_even_when_the_caller_asks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let host = HostDir::create(&tmp.path().join("root")).unwrap();
        host.create_dir(&p("d")).unwrap();
        host.symlink(&p("d/up"), outside.as_os_str().as_encoded_bytes()).unwrap();
        host.symlink(&p("f"), outside.join("victim").as_os_str().as_encoded_bytes()).unwrap();
        assert!(host.create_file(&p("d/up/x")).is_err(), "a parent that is a link");
        assert!(host.create_dir(&p("d/up/y")).is_err());
        assert!(host.create_file(&p("f")).is_err(), "a last component that is a link");
        assert!(host.hard_link(&p("d/up/z"), &p("g")).is_err());
        host.remove(&p("d/up"), false).unwrap();
        assert!(outside.is_dir(), "removing the link leaves its target");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing was written outside");
    }
}

//! Paths imgbuild derives below a directory the user named (the default `out/NAME`, `init`'s
//! `images/` and `recipes/`): reached without following a link at any component below that
//! directory. A cloned project can carry a link at `out` or `images` (git stores links) that
//! would otherwise place imgbuild's files in any directory the user can write. The directory
//! the user named is the user's choice and is followed; so is an explicit `--out`.
//!
//! Each component is opened with `O_NOFOLLOW | O_DIRECTORY` under the one before (a held fd),
//! and made with `mkdirat` there when missing, so a link is refused wherever it is.

use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// Checks that no existing component of `rel` below `root` is a link (the last one included),
/// making none: what is missing a writer makes later (`make_dirs`, or an output's own check).
pub(crate) fn refuse_links(root: &Path, rel: &Path) -> Result<()> {
    walk(root, rel, false)
}

/// Makes the directories of `rel` below `root` that are missing, refusing a link at any of them.
pub(crate) fn make_dirs(root: &Path, rel: &Path) -> Result<()> {
    walk(root, rel, true)
}

/// The default output `out/NAME` below the current directory, refused if a link is on the way.
pub(crate) fn default_out(name: &str) -> Result<PathBuf> {
    let rel = Path::new("out").join(name);
    refuse_links(Path::new("."), &rel)?;
    Ok(rel)
}

fn walk(root: &Path, rel: &Path, create: bool) -> Result<()> {
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let root = if root.as_os_str().is_empty() { Path::new(".") } else { root };
    // The directory the user named: followed, as they chose it.
    let mut dir = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::io(root, e.into()))?;
    // Named in errors as the user would: `out/x`, not `./out/x`.
    let mut at = if root == Path::new(".") { PathBuf::new() } else { root.to_path_buf() };
    for component in rel.components() {
        let name = match component {
            Component::Normal(name) => name,
            Component::CurDir => continue,
            _ => return Err(Error::Internal(format!("{}: not a path below a directory", rel.display()))),
        };
        at.push(name);
        let opened = match rustix::fs::openat(&dir, name, dir_flags, Mode::empty()) {
            Err(Errno::NOENT) if create => match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o777)) {
                Ok(()) | Err(Errno::EXIST) => rustix::fs::openat(&dir, name, dir_flags, Mode::empty()),
                Err(e) => Err(e),
            },
            Err(Errno::NOENT) => return Ok(()),
            other => other,
        };
        dir = match opened {
            Ok(fd) => fd,
            Err(e) => return Err(refusal(&dir, name, &at, e)),
        };
    }
    Ok(())
}

/// Why `at` cannot be used: a link (named, with where it points), or the I/O error.
fn refusal(dir: &rustix::fd::OwnedFd, name: &std::ffi::OsStr, at: &Path, e: Errno) -> Error {
    if let Ok(target) = rustix::fs::readlinkat(dir, name, Vec::new()) {
        return Error::Definition {
            file: at.to_path_buf(),
            message: format!(
                "is a symbolic link (to {}); imgbuild does not write through a link inside the directory you \
                 named, which a cloned project may carry: remove it, or name the directory it points to yourself",
                Path::new(std::ffi::OsStr::from_bytes(target.as_bytes())).display()
            ),
        };
    }
    Error::io(at, e.into())
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A path of 1 to 4 components below a root, with a link (to a directory outside,
        /// or dangling) at any of them: `make_dirs` refuses exactly when a link is on the way,
        /// names it, and makes nothing outside; otherwise every directory is there, real.
        #[test]
        fn a_link_at_any_component_is_refused(depth in 1usize..5, link_at in proptest::option::of(0usize..5), dangling: bool) {
            let tmp = tempfile::tempdir().unwrap();
            let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
            fs::create_dir_all(&root).unwrap();
            fs::create_dir_all(&outside).unwrap();
            let names: Vec<String> = (0..depth).map(|i| format!("d{i}")).collect();
            let rel: PathBuf = names.iter().collect();
            let link_at = link_at.filter(|i| *i < depth);
            if let Some(i) = link_at {
                let at: PathBuf = root.join(names[..=i].iter().collect::<PathBuf>());
                fs::create_dir_all(at.parent().unwrap()).unwrap();
                symlink(if dangling { outside.join("gone") } else { outside.clone() }, &at).unwrap();
            }
            let checked = refuse_links(&root, &rel);
            let made = make_dirs(&root, &rel);
            prop_assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
            match link_at {
                Some(i) => {
                    let err = made.unwrap_err().to_string();
                    prop_assert!(err.contains(&format!("d{i}: is a symbolic link")), "{}", err);
                    prop_assert!(checked.is_err());
                }
                None => {
                    prop_assert!(checked.is_ok() && made.is_ok());
                    prop_assert!(fs::symlink_metadata(root.join(&rel)).unwrap().is_dir());
                }
            }
        }
    }
}

//! The one way imgbuild writes a file in a user's tree (recipes, `init`, `recipe --update`,
//! outputs and the files in them, deploy files, VM templates): a new file under a random name
//! beside the target (`.NAME.imgbuild-tmp-RANDOM`), made with create-new and `O_NOFOLLOW` so a
//! link planted at that name (a cloned project can carry any) is never followed; written,
//! synced, then renamed over the target. A reader sees the old file or the new one, never a
//! part, and nothing outside the target's directory is ever opened for writing.
//!
//! A link at the target itself is replaced, not written through: `rename` swaps names.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};

/// What marks imgbuild's temporary siblings of a file or output named NAME: `.NAME` then this.
pub(crate) const TEMP_MARK: &str = ".imgbuild-tmp-";

/// Names tried before giving up (each taken name is another writer's, or a planted one).
const TRIES: usize = 16;

/// How the new file is put in place.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// The file's permissions, set on the open file (so the umask does not decide them);
    /// `None` leaves them to the umask, as any new file the user makes.
    pub mode: Option<u32>,
    /// Its modification and access time, for files whose times are recorded (an ISO's).
    pub time: Option<SystemTime>,
    /// Whether an existing target is replaced; if not, an existing one is an error
    /// (`AlreadyExists`) and is left as it was.
    pub replace: bool,
}

impl Options {
    /// Replaces the target; mode from the umask.
    pub(crate) const REPLACE: Options = Options { mode: None, time: None, replace: true };
    /// Never over an existing file; mode from the umask.
    pub(crate) const NEW: Options = Options { mode: None, time: None, replace: false };

    pub(crate) const fn mode(self, mode: u32) -> Options {
        Options { mode: Some(mode), ..self }
    }
}

/// Writes `contents` to `path` as the module says.
pub(crate) fn write(path: &Path, contents: &[u8], options: Options) -> Result<()> {
    write_with(path, options, |w| w.write_all(contents).map_err(|e| Error::io(path, e)))
}

/// Writes what `fill` writes (streamed, buffered) to `path` as the module says: `fill`'s
/// error as it is, a write error naming `path`; the temporary file is gone after any failure.
pub(crate) fn write_with(
    path: &Path,
    options: Options,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let (temp, file) = create_temp(path).map_err(|e| Error::io(path, e))?;
    let guard = Remove(Some(temp));
    let temp = guard.0.as_deref().expect("set above");
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    fill(&mut out)?;
    let file = out.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
    finish(&file, options).map_err(|e| Error::io(path, e))?;
    drop(file);
    let placed = if options.replace { fs::rename(temp, path) } else { rename_noreplace(temp, path) };
    placed.map_err(|e| Error::io(path, e))?;
    std::mem::forget(guard);
    sync_dir(path);
    Ok(())
}

/// Mode, times and data made durable before the rename makes the file visible.
fn finish(file: &File, options: Options) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(mode) = options.mode {
        file.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    if let Some(t) = options.time {
        file.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))?;
    }
    file.sync_all()
}

/// A new file at a random temporary name beside `path`: never an existing file, never
/// through a link (create-new fails on any existing name, a dangling link included, and
/// `O_NOFOLLOW` says so once more).
fn create_temp(path: &Path) -> io::Result<(PathBuf, File)> {
    create_temp_from(path, std::iter::repeat_with(random_part))
}

/// [`create_temp`] with the random parts `randoms` gives (a test gives taken ones first).
fn create_temp_from(path: &Path, randoms: impl Iterator<Item = String>) -> io::Result<(PathBuf, File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().ok_or_else(|| io::Error::other("not a file name"))?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    for random in randoms.take(TRIES) {
        let temp = dir.join(format!(".{}{TEMP_MARK}{random}", name.to_string_lossy()));
        let flags = rustix::fs::OFlags::NOFOLLOW.bits() | rustix::fs::OFlags::CLOEXEC.bits();
        match fs::OpenOptions::new().write(true).create_new(true).custom_flags(flags as i32).open(&temp) {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "every temporary name tried beside it was taken"))
}

/// Removes the temporary file unless the write got to its rename.
struct Remove(Option<PathBuf>);

impl Drop for Remove {
    fn drop(&mut self) {
        if let Some(temp) = self.0.take() {
            let _ = fs::remove_file(temp);
        }
    }
}

/// Makes the rename durable; a directory that cannot be synced (some file systems) is no error.
fn sync_dir(path: &Path) {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// `rename` that fails (`AlreadyExists`) rather than replace something at `to`.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            // A file system without RENAME_NOREPLACE: a check just before is what we have.
            match fs::symlink_metadata(to) {
                Ok(_) => Err(io::Error::from(io::ErrorKind::AlreadyExists)),
                Err(_) => fs::rename(from, to),
            }
        }
        other => other.map_err(io::Error::from),
    }
}

/// 16 hex digits that no other run picks: hashed from a per-process random key, the process,
/// the time and a counter.
pub(crate) fn random_part() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    format!("{:016x}", h.finish())
}

pub(crate) fn is_random_part(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use proptest::prelude::*;

    use super::*;

    /// Every file under `dir`, with its bytes (links as their target).
    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let data = match fs::symlink_metadata(&p).unwrap().is_symlink() {
                    true => fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes(),
                    false => fs::read(&p).unwrap(),
                };
                (p, data)
            })
            .collect();
        out.sort();
        out
    }

    proptest! {
        /// Links at the target, at names shaped as the temporary ones, and dangling ones:
        /// nothing outside is written, the target holds the new bytes, no temporary is left.
        #[test]
        fn no_write_goes_through_a_link(
            planted in proptest::collection::vec(("[0-9a-f]{16}|[0-9]{1,7}", any::<bool>()), 0..12),
            link_at_target: bool,
            existing: bool,
            replace: bool,
            contents in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let (inside, outside) = (tmp.path().join("tree"), tmp.path().join("outside"));
            fs::create_dir_all(&inside).unwrap();
            fs::create_dir_all(&outside).unwrap();
            fs::write(outside.join("bashrc"), "mine").unwrap();
            let target = inside.join("x.toml");
            if existing {
                fs::write(&target, "old").unwrap();
            } else if link_at_target {
                symlink(outside.join("bashrc"), &target).unwrap();
            }
            for (i, (suffix, dangling)) in planted.iter().enumerate() {
                let to = if *dangling { outside.join(format!("new-{i}")) } else { outside.join("bashrc") };
                let _ = symlink(to, inside.join(format!(".x.toml{TEMP_MARK}{suffix}")));
            }
            let before = snapshot(&outside);
            let options = Options { replace, ..Options::REPLACE.mode(0o640) };
            let result = write(&target, &contents, options);
            prop_assert_eq!(snapshot(&outside), before);
            let occupied = existing || link_at_target;
            prop_assert_eq!(result.is_ok(), replace || !occupied, "{:?}", result);
            if result.is_ok() {
                prop_assert_eq!(fs::read(&target).unwrap(), contents);
                prop_assert_eq!(fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o640);
            }
            let left = fs::read_dir(&inside).unwrap().filter(|e| {
                let e = e.as_ref().unwrap();
                !e.file_type().unwrap().is_symlink() && e.file_name().to_string_lossy().contains(TEMP_MARK)
            });
            prop_assert_eq!(left.count(), 0);
        }
    }

    /// The names a writer picks, taken by links (to a file, dangling, to a directory): each is
    /// passed over, nothing outside changes, and the first free name is used.
    #[test]
    fn a_temporary_name_taken_by_a_link_is_passed_over() {
        let tmp = tempfile::tempdir().unwrap();
        let (inside, outside) = (tmp.path().join("tree"), tmp.path().join("outside"));
        fs::create_dir_all(&inside).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("bashrc"), "mine").unwrap();
        let taken = ["0000000000000001", "0000000000000002", "0000000000000003"];
        let targets = [outside.join("bashrc"), outside.join("dangling"), outside.clone()];
        for (random, to) in taken.iter().zip(&targets) {
            symlink(to, inside.join(format!(".x.toml{TEMP_MARK}{random}"))).unwrap();
        }
        let before = snapshot(&outside);
        let names = taken.iter().map(|r| r.to_string()).chain(["00000000000000ff".to_string()]);
        let (temp, mut file) = create_temp_from(&inside.join("x.toml"), names).unwrap();
        assert_eq!(temp, inside.join(format!(".x.toml{TEMP_MARK}00000000000000ff")));
        file.write_all(b"new").unwrap();
        assert_eq!(snapshot(&outside), before);
        // All taken: refused, nothing written anywhere.
        let all_taken = taken.iter().map(|r| r.to_string());
        let err = create_temp_from(&inside.join("x.toml"), all_taken).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(snapshot(&outside), before);
    }

    /// Every `.rs` file under `src/`, with its text before its tests.
    pub(crate) fn sources_without_tests() -> Vec<(String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![root.clone()];
        let mut out = Vec::new();
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let rel = path.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
                if path.is_dir() {
                    stack.push(path);
                } else if rel.ends_with(".rs") && !rel.ends_with("tests.rs") && !rel.contains("/tests/") {
                    let text = fs::read_to_string(&path).unwrap();
                    let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
                    out.push((rel, code));
                }
            }
        }
        assert!(out.iter().any(|(rel, _)| rel == "cli/recipe.rs") && out.len() > 50, "src/ was not read");
        out
    }

    /// No file is created or truncated anywhere else, but where listed with why: a class
    /// test, so a new writer cannot bypass this module unnoticed.
    #[test]
    fn every_writer_of_a_users_tree_goes_through_this_module() {
        let allowed = [
            "atomic_file.rs",
            // The store's own files, under its locks (not a user's tree).
            "store.rs",
            "resume.rs",
            // `verify`'s scratch project and `diff`'s render root: inside a directory just made
            // with a random name and mode 0700 (supply::verify::TempProject), not a user's tree.
            "supply/provenance.rs",
            "diff/render.rs",
        ];
        let creates = ["File::create(", "fs::write(", "fs::copy(", ".create(true)", ".truncate(true)"];
        let found: Vec<String> = sources_without_tests()
            .into_iter()
            .filter(|(rel, _)| !allowed.contains(&rel.as_str()))
            .flat_map(|(rel, code)| {
                creates.iter().filter(|c| code.contains(**c)).map(move |c| format!("{rel}: {c}")).collect::<Vec<_>>()
            })
            .collect();
        assert!(found.is_empty(), "files written around atomic_file: {found:?}");
    }

    #[test]
    fn a_failed_fill_leaves_the_target_and_no_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("out.tar");
        fs::write(&target, "old").unwrap();
        let err = write_with(&target, Options::REPLACE, |w| {
            w.write_all(b"part").unwrap();
            Err(Error::io(&target, io::Error::other("disk full")))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk full") && err.to_string().contains("out.tar"), "{err}");
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}

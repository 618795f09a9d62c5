//! Where an output goes, and the one rule for what is already there: imgbuild replaces only an
//! output it wrote itself, unchanged since. A missing path is fine, and so is an empty directory
//! for a directory output; anything else is refused (exit 2) before any work, and nothing is
//! touched.
//!
//! How imgbuild knows its own outputs:
//! - a directory (OCI layout, VM disks) holds [`RECORD`], which lists every file imgbuild wrote
//!   with its size and, except for blobs named by their digest, its sha256. The directory is
//!   imgbuild's while it holds exactly those files, unchanged (a booted VM's overlay changes);
//! - an archive is recognized by its bytes: imgbuild writes a tar of fixed headers in a fixed
//!   order ([`super::archive::is_imgbuild_archive`]); another tool's tar, or one appended to,
//!   differs.
//!
//! An output is written into a temporary sibling ([`TempPath`], removed on drop, so no failure
//! leaves it behind) and swapped into place in one rename. What a killed run left there goes
//! once nothing holds its lock: only names imgbuild made, never another live writer's.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::atomic_file::{is_random_part, random_part, rename_noreplace, Options, TEMP_MARK};
use crate::digest::{hash_reader, Algorithm};
use crate::error::{escape, Error, IoContext, Result};

/// The record of what imgbuild wrote into a directory output.
pub(crate) const RECORD: &str = ".imgbuild-output.json";

/// What kind of path an output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A directory: an OCI layout or the VM disks and templates.
    Directory,
    /// One file: an oci-archive or docker-archive.
    Archive,
}

/// What is at the destination now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    Nothing,
    EmptyDir,
    /// An output imgbuild wrote (unchanged, or changed and `force` given).
    Ours,
}

/// Whether an imgbuild output that changed since it was written may be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Force {
    /// The command has no `--force`: a changed output is the user's to move.
    NotOffered,
    /// `--force` was not given.
    No,
    /// `--force`: replace it (never anything imgbuild did not write).
    Yes,
}

/// A checked output path.
#[derive(Debug)]
pub(crate) struct Destination {
    path: PathBuf,
    shape: Shape,
    force: Force,
}

/// The listing in [`RECORD`]: every file of the output, by path relative to it.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Record {
    files: BTreeMap<String, FileRecord>,
}

#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct FileRecord {
    size: u64,
    /// Absent for a blob named by its own digest (`blobs/sha256/HEX`): the size is checked,
    /// hashing every layer on each build would cost more than the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
}

impl Destination {
    /// Checks that an output of `shape` may be written at `path`.
    pub(crate) fn check(path: &Path, shape: Shape, force: Force) -> Result<Destination> {
        let dest = Destination { path: path.to_path_buf(), shape, force };
        dest.existing()?;
        Ok(dest)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn refuse(&self, why: impl std::fmt::Display) -> Error {
        Error::Usage(format!(
            "--out {}: {why}\n  imgbuild replaces only an output it wrote itself; choose another --out, or move \
             or remove it yourself if nothing in it is needed",
            self.path.display()
        ))
    }

    fn existing(&self) -> Result<Existing> {
        let meta = match fs::symlink_metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Nothing),
            Err(e) => return Err(Error::io(&self.path, e)),
        };
        let kind = meta.file_type();
        match self.shape {
            _ if kind.is_symlink() => {
                Err(self.refuse("is a symlink (imgbuild does not write through it; pass the path it points to)"))
            }
            Shape::Directory if kind.is_dir() => self.existing_dir(),
            Shape::Directory if kind.is_file() => Err(self.refuse("is a file, and this output is a directory")),
            Shape::Archive if kind.is_file() => {
                if super::archive::is_imgbuild_archive(&self.path)? {
                    Ok(Existing::Ours)
                } else {
                    Err(self.refuse("is a file that imgbuild did not write (not an archive of its own)"))
                }
            }
            Shape::Archive if kind.is_dir() => {
                Err(self.refuse("is a directory, and this output is one file (for example DIR/NAME.tar)"))
            }
            _ => Err(self.refuse("is neither a file nor a directory")),
        }
    }

    fn existing_dir(&self) -> Result<Existing> {
        if fs::read_dir(&self.path).at(&self.path)?.next().is_none() {
            return Ok(Existing::EmptyDir);
        }
        let record_path = self.path.join(RECORD);
        let record: Record = match read_regular(&record_path, MAX_RECORD) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .map_err(|_| self.refuse(format!("holds a {RECORD} that imgbuild cannot read")))?,
            Ok(None) => return Err(self.refuse(format!("holds a {RECORD} that is not a file imgbuild wrote"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(self.refuse(format!(
                    "is a non-empty directory that imgbuild did not write (no {RECORD}; an output of an \
                     imgbuild older than this check has none either: remove it once)"
                )))
            }
            Err(e) => return Err(Error::io(record_path, e)),
        };
        let changes = record.changes(&self.path)?;
        if changes.is_empty() || self.force == Force::Yes {
            return Ok(Existing::Ours);
        }
        let next = match self.force {
            Force::NotOffered => "move or remove it yourself if the changes are not needed, or choose another --out",
            _ => {
                "a booted VM keeps its node's state in its overlay (node-N.qcow2); --force replaces the output \
                  and loses that state, or choose another --out"
            }
        };
        Err(Error::Usage(format!(
            "--out {}: imgbuild wrote it, but it has changed since: {}\n  {next}",
            self.path.display(),
            changes.join("; "),
        )))
    }

    /// Writes the record of the directory output in `temp` (every file it holds), as its last file.
    pub(crate) fn record(temp: &Path) -> Result<()> {
        let record = Record::of(temp)?;
        let json = serde_json::to_vec_pretty(&record).expect("serializes");
        crate::atomic_file::write(&temp.join(RECORD), &json, Options::REPLACE.mode(0o644))
    }

    /// Puts the finished output in `temp` at the destination, checking once more that what is
    /// there may be replaced. The old output ends up at the temporary path and goes with it.
    pub(crate) fn replace_with(&self, temp: TempPath) -> Result<()> {
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).at(parent)?;
        }
        // Someone may create the path while we work: then check again, once.
        for _ in 0..2 {
            let outcome = match self.existing()? {
                Existing::Nothing => rename_noreplace(temp.path(), &self.path),
                Existing::EmptyDir => fs::rename(temp.path(), &self.path),
                Existing::Ours if self.shape == Shape::Archive => fs::rename(temp.path(), &self.path),
                Existing::Ours => exchange(temp.path(), &self.path),
            };
            match outcome {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(&self.path, e)),
            }
        }
        Err(Error::io(&self.path, io::Error::from(io::ErrorKind::AlreadyExists)))
    }
}

impl Record {
    /// Every file under `dir` (which holds only directories and files: imgbuild writes nothing else).
    fn of(dir: &Path) -> Result<Record> {
        let mut files = BTreeMap::new();
        for (rel, entry) in walk(dir)? {
            let Entry::File(size) = entry else { continue };
            let sha256 = if content_addressed(&rel) { None } else { Some(hash_file(&dir.join(&rel))?) };
            files.insert(rel, FileRecord { size, sha256 });
        }
        Ok(Record { files })
    }

    /// How `dir` differs from the record (at most a few differences, named).
    fn changes(&self, dir: &Path) -> Result<Vec<String>> {
        let mut changes = Vec::new();
        let mut seen = 0;
        for (rel, entry) in walk(dir)? {
            let Entry::File(size) = entry else {
                if let Entry::Other = entry {
                    changes.push(format!("{} is not a file or directory imgbuild made", escape(&rel)));
                } else if !self.files.keys().any(|f| f.starts_with(&format!("{rel}/"))) {
                    changes.push(format!("{}/ was added", escape(&rel)));
                }
                continue;
            };
            if rel == RECORD {
                continue;
            }
            match self.files.get(&rel) {
                None => changes.push(format!("{} was added", escape(&rel))),
                Some(f) => {
                    seen += 1;
                    let same = f.size == size
                        && match &f.sha256 {
                            Some(hex) => hash_file(&dir.join(&rel))? == *hex,
                            None => true,
                        };
                    if !same {
                        changes.push(format!("{} changed", escape(&rel)));
                    }
                }
            }
        }
        if seen < self.files.len() {
            let missing = self.files.keys().filter(|f| !dir.join(f).is_file()).take(3);
            changes.extend(missing.map(|f| format!("{} was removed", escape(f))));
        }
        changes.truncate(5);
        Ok(changes)
    }
}

/// A blob of an OCI layout, whose name is the sha256 of its content.
fn content_addressed(rel: &str) -> bool {
    rel.strip_prefix("blobs/sha256/").is_some_and(crate::digest::is_sha256_hex)
}

fn hash_file(path: &Path) -> Result<String> {
    let file = open_regular(path).at(path)?.ok_or_else(|| Error::io(path, io::Error::other("not a regular file")))?;
    let (hash, _) = hash_reader(Algorithm::Sha256, file).at(path)?;
    Ok(hash.hex())
}

/// The largest record read: one line per file of the output.
const MAX_RECORD: u64 = 64 << 20;

/// Opens `path` if it is a regular file: never through a link (`O_NOFOLLOW`), never waiting on
/// a FIFO (`O_NONBLOCK`); `None` when it is something else.
fn open_regular(path: &Path) -> io::Result<Option<fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::NOFOLLOW.bits() | rustix::fs::OFlags::NONBLOCK.bits();
    match fs::OpenOptions::new().read(true).custom_flags(flags as i32).open(path) {
        Ok(file) if file.metadata()?.is_file() => Ok(Some(file)),
        Ok(_) => Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A regular file's bytes, at most `limit` of them (`None`: not a regular file, or larger).
fn read_regular(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let Some(file) = open_regular(path)? else { return Ok(None) };
    let mut data = Vec::new();
    file.take(limit + 1).read_to_end(&mut data)?;
    Ok((data.len() as u64 <= limit).then_some(data))
}

enum Entry {
    Dir,
    File(u64),
    Other,
}

/// Every path under `dir`, relative and sorted, without following symlinks.
fn walk(dir: &Path) -> Result<Vec<(String, Entry)>> {
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let here = if rel.is_empty() { dir.to_path_buf() } else { dir.join(&rel) };
        for child in fs::read_dir(&here).at(&here)? {
            let child = child.at(&here)?;
            let name = child.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let meta = fs::symlink_metadata(child.path()).at(child.path())?;
            let entry = if meta.is_dir() {
                stack.push(child_rel.clone());
                Entry::Dir
            } else if meta.is_file() {
                Entry::File(meta.len())
            } else {
                Entry::Other
            };
            out.push((child_rel, entry));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Swaps two directories in one step, so the destination is never missing.
fn exchange(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::EXCHANGE) {
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            let mut old = from.as_os_str().to_owned();
            old.push("-old");
            fs::rename(to, &old)?;
            fs::rename(from, to)?;
            fs::rename(&old, from)
        }
        other => other.map_err(io::Error::from),
    }
}

/// A temporary sibling of an output: `.NAME.imgbuild-tmp-RANDOM`, a name only imgbuild makes,
/// beside its lock file `.NAME.imgbuild-tmp-RANDOM.lock`, which the writer holds (`flock`) for
/// as long as the temporary path is in use. Removed when dropped (whatever is there then: the
/// unfinished output after a failure, the old output after a swap), then the lock file.
#[derive(Debug)]
pub(crate) struct TempPath {
    path: PathBuf,
    lock_path: PathBuf,
    /// Held (flock) until the temporary path is gone; the kernel releases it when the process
    /// dies, so a free lock means the writer is gone, in any PID namespace.
    lock: fs::File,
}

impl TempPath {
    /// A new temporary path for `dest`, locked. What killed runs left beside `dest` goes first,
    /// but only what imgbuild made there and nobody holds locked any more ([`remove_stale`]).
    pub(crate) fn beside(dest: &Path) -> Result<TempPath> {
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
        let prefix = format!(".{name}{TEMP_MARK}");
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::create_dir_all(dir).at(dir)?;
        remove_stale(dir, &prefix);
        for _ in 0..16 {
            let path = dir.join(format!("{prefix}{}", random_part()));
            let lock_path = lock_path_of(&path);
            let lock = match fs::OpenOptions::new().write(true).create_new(true).open(&lock_path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(&lock_path, e)),
            };
            // A cleaner may take the lock file between its creation and our lock, and remove
            // it: then this one is no longer at its name, and we start again with another.
            if lock.try_lock().is_ok() && same_file(&lock, &lock_path) {
                return Ok(TempPath { path, lock_path, lock });
            }
        }
        Err(Error::io(dir, io::Error::other("no temporary path could be made and locked beside the output")))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn remove(&self) -> io::Result<()> {
        remove_any(&self.path)
    }
}

fn lock_path_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Whether `file` is still what `path` names (not removed, not replaced).
fn same_file(file: &fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Removes a directory tree or a file at `path` (a link itself, never what it points to).
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes what runs killed before their guard could act left in `dir`: for each lock file
/// `PREFIX{random}.lock` that is a regular file nobody holds locked, its temporary path (and
/// that path's `-old`), then the lock file. Anything else is left alone: names imgbuild did
/// not make, and paths whose writer still holds the lock, whatever its process or namespace.
fn remove_stale(dir: &Path, prefix: &str) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let file_name = entry.file_name();
        let Some(random) = file_name.to_str().and_then(|f| f.strip_prefix(prefix)?.strip_suffix(".lock")) else {
            continue;
        };
        if !is_random_part(random) {
            continue;
        }
        let lock_path = entry.path();
        let Ok(Some(lock)) = open_regular(&lock_path) else { continue };
        if lock.try_lock().is_err() || !same_file(&lock, &lock_path) {
            continue;
        }
        let path = dir.join(format!("{prefix}{random}"));
        let mut old = path.as_os_str().to_owned();
        old.push("-old");
        let old = PathBuf::from(old);
        if remove_any(&path).is_ok() && remove_any(&old).is_ok() {
            let _ = fs::remove_file(&lock_path);
        }
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        // The path first, then its lock file, while still holding the lock.
        if self.remove().is_ok() && same_file(&self.lock, &self.lock_path) {
            let _ = fs::remove_file(&self.lock_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: Result<Destination>) -> i32 {
        r.map(|_| 0).unwrap_or_else(|e| e.exit_code() as i32)
    }

    #[test]
    fn a_missing_path_or_an_empty_directory_is_fine_anything_else_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |n: &str| tmp.path().join(n);
        assert_eq!(code(Destination::check(&p("new"), Shape::Directory, Force::No)), 0);
        assert_eq!(code(Destination::check(&p("new.tar"), Shape::Archive, Force::No)), 0);
        fs::create_dir(p("empty")).unwrap();
        assert_eq!(code(Destination::check(&p("empty"), Shape::Directory, Force::No)), 0);
        assert_eq!(code(Destination::check(&p("empty"), Shape::Archive, Force::No)), 2);
        fs::create_dir(p("work")).unwrap();
        fs::write(p("work/notes.txt"), "mine").unwrap();
        assert_eq!(
            code(Destination::check(&p("work"), Shape::Directory, Force::Yes)),
            2,
            "--force never takes a user's"
        );
        fs::write(p("file"), "mine").unwrap();
        assert_eq!(code(Destination::check(&p("file"), Shape::Directory, Force::No)), 2);
        assert_eq!(code(Destination::check(&p("file"), Shape::Archive, Force::No)), 2);
        std::os::unix::fs::symlink(p("empty"), p("link")).unwrap();
        assert_eq!(code(Destination::check(&p("link"), Shape::Directory, Force::No)), 2);
    }

    #[test]
    fn a_recorded_directory_is_ours_until_it_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        fs::create_dir_all(out.join("blobs/sha256")).unwrap();
        fs::write(out.join("index.json"), "{}").unwrap();
        fs::write(out.join("blobs/sha256").join("a".repeat(64)), "blob").unwrap();
        Destination::record(&out).unwrap();
        let check = |force| code(Destination::check(&out, Shape::Directory, force));
        assert_eq!(check(Force::No), 0);
        fs::write(out.join("index.json"), "{\"x\":1}").unwrap();
        assert_eq!(check(Force::No), 2, "changed content");
        assert_eq!(check(Force::Yes), 0, "--force replaces a changed output of imgbuild's");
        fs::write(out.join("index.json"), "{}").unwrap();
        fs::create_dir(out.join("extra")).unwrap();
        assert_eq!(check(Force::No), 2, "an added directory");
        fs::remove_dir(out.join("extra")).unwrap();
        fs::remove_file(out.join("blobs/sha256").join("a".repeat(64))).unwrap();
        assert_eq!(check(Force::No), 2, "a removed file");
    }

    #[test]
    fn a_record_that_is_a_link_a_fifo_or_endless_is_refused_without_reading_it() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("index.json"), "{}").unwrap();
        let record = out.join(RECORD);
        let make: [&dyn Fn(); 3] = [
            &|| std::os::unix::fs::symlink("/dev/zero", &record).unwrap(),
            &|| rustix::fs::mknodat(rustix::fs::CWD, &record, rustix::fs::FileType::Fifo, 0o600.into(), 0).unwrap(),
            &|| std::os::unix::fs::symlink(tmp.path().join("elsewhere.json"), &record).unwrap(),
        ];
        fs::write(tmp.path().join("elsewhere.json"), r#"{"files":{"index.json":{"size":2}}}"#).unwrap();
        for made in make {
            made();
            let err = Destination::check(&out, Shape::Directory, Force::Yes).unwrap_err();
            assert_eq!(err.exit_code() as i32, 2, "{err}");
            assert!(err.to_string().contains("not a file imgbuild wrote"), "{err}");
            fs::remove_file(&record).unwrap();
        }
    }

    #[test]
    fn the_temporary_path_goes_away_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        let temp = TempPath::beside(&dest).unwrap();
        fs::create_dir_all(temp.path().join("a/b")).unwrap();
        let path = temp.path().to_path_buf();
        drop(temp);
        assert!(!path.exists());
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    /// Names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn what_a_killed_run_left_goes_once_nothing_holds_its_lock_and_nothing_else_ever() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        let mark = |random: &str| format!(".out{TEMP_MARK}{random}");
        let (dead, live, unlocked) = ("0123456789abcdef", "fedcba9876543210", "00000000000000ff");
        for made in [mark(dead), format!("{}-old", mark(dead)), mark(live), mark(unlocked)] {
            fs::create_dir_all(tmp.path().join(made).join("rootfs")).unwrap();
        }
        // Its writer is gone: the lock file is there, and nobody holds it.
        fs::write(tmp.path().join(format!("{}.lock", mark(dead))), "").unwrap();
        // Its writer holds the lock (another open file: flock locks are per open file).
        let held = tmp.path().join(format!("{}.lock", mark(live)));
        fs::write(&held, "").unwrap();
        let holder = fs::File::open(&held).unwrap();
        holder.lock().unwrap();
        // Not imgbuild's (no lock file, an older name, another output's, a name not random,
        // a lock file that is a link).
        let others =
            [".out.tmp-999999999", ".out.tmp-1", ".other.imgbuild-tmp-0123456789abcdef", ".out.imgbuild-tmp-x"];
        for other in others {
            fs::write(tmp.path().join(other), "mine").unwrap();
        }
        fs::write(tmp.path().join(format!("{}.lock", others[3])), "").unwrap();
        std::os::unix::fs::symlink(&held, tmp.path().join(format!("{}.lock", mark("aaaaaaaaaaaaaaaa")))).unwrap();
        fs::create_dir(tmp.path().join(mark("aaaaaaaaaaaaaaaa"))).unwrap();
        let before = names(tmp.path());
        let temp = TempPath::beside(&dest).unwrap();
        let gone = [mark(dead), format!("{}-old", mark(dead)), format!("{}.lock", mark(dead))];
        let mut expected: Vec<String> = before.into_iter().filter(|n| !gone.contains(n)).collect();
        expected.push(format!("{}.lock", temp.path().file_name().unwrap().to_string_lossy()));
        expected.sort();
        assert_eq!(names(tmp.path()), expected);
        // Once the live writer's lock is free, its leftovers go too.
        drop(holder);
        let again = TempPath::beside(&dest).unwrap();
        assert!(!tmp.path().join(mark(live)).exists() && !held.exists());
        assert!(tmp.path().join(".out.tmp-999999999").exists(), "never a name imgbuild did not make");
        let locks = [temp.lock_path.clone(), again.lock_path.clone()];
        drop((temp, again));
        assert!(locks.iter().all(|l| !l.exists()), "a finished run leaves no lock file");
    }

    #[test]
    fn a_temporary_path_in_use_is_never_taken_for_a_stale_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        let first = TempPath::beside(&dest).unwrap();
        fs::create_dir(first.path()).unwrap();
        fs::write(first.path().join("work"), "in progress").unwrap();
        // Another run beside the same output, as in another PID namespace: the lock says it is in use.
        let second = TempPath::beside(&dest).unwrap();
        assert_ne!(first.path(), second.path());
        assert_eq!(fs::read_to_string(first.path().join("work")).unwrap(), "in progress");
        drop(second);
        drop(first);
        assert!(names(tmp.path()).is_empty(), "{:?}", names(tmp.path()));
    }

    #[test]
    fn replacing_swaps_in_the_new_output_and_removes_the_old() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        for round in ["one", "two"] {
            let d = Destination::check(&dest, Shape::Directory, Force::No).unwrap();
            let temp = TempPath::beside(&dest).unwrap();
            fs::create_dir(temp.path()).unwrap();
            fs::write(temp.path().join("file"), round).unwrap();
            Destination::record(temp.path()).unwrap();
            d.replace_with(temp).unwrap();
            assert_eq!(fs::read_to_string(dest.join("file")).unwrap(), round);
        }
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1, "nothing left beside the output");
    }
}

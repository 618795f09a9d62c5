//! The Debian packages of a base image: `/var/lib/dpkg/status` (and `os-release`'s `ID`) read
//! from the base layers as they stream, whiteouts of later layers honoured. The result is
//! cached in the store under the base manifest digest, so a rebuild reads no layer again.

use std::fs;
use std::io::Read;

use serde::{Deserialize, Serialize};
use tar::EntryType;

use super::entries::{bad_layer, entry_path, open_layer};
use crate::error::{IoContext, Result};
use crate::image::{BaseImage, ImageLayer};
use crate::store::Store;

const STATUS: &str = "var/lib/dpkg/status";
/// Where `os-release` may be; `etc/os-release` is often a link to the second.
const OS_RELEASE: [&str; 2] = ["etc/os-release", "usr/lib/os-release"];
/// The largest status file read (Debian's largest installs have a few MiB).
const MAX_FILE: u64 = 64 << 20;
/// Bumped when what is read or how it is parsed changes, so older cache entries are not used.
const CACHE_VERSION: u32 = 2;

/// One installed Debian package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct DebPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// What a base image's own package manager says it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BasePackages {
    /// `ID` of `os-release` (`debian`, `ubuntu`), when the base has one.
    pub os_id: Option<String>,
    /// Installed packages, sorted by name, architecture and version.
    pub debs: Vec<DebPackage>,
}

/// The packages of `base`, from the store's cache or read from its layers (then cached).
pub(crate) fn base_packages(store: &Store, base: &BaseImage, limit: u64) -> Result<BasePackages> {
    let dir = store.supply_dir();
    let cache = dir.join(format!("dpkg-v{CACHE_VERSION}-{}.json", base.manifest_digest.hex()));
    if let Some(found) = fs::read(&cache).ok().and_then(|d| serde_json::from_slice(&d).ok()) {
        return Ok(found);
    }
    let wanted = [STATUS, OS_RELEASE[0], OS_RELEASE[1]];
    let files = merged_files(store, &base.layers, &wanted, limit)?;
    let text = |i: usize| files[i].as_deref().map(String::from_utf8_lossy);
    let packages = BasePackages {
        os_id: text(1).or_else(|| text(2)).and_then(|t| os_release_id(&t)),
        debs: text(0).map(|t| parse_status(&t)).unwrap_or_default(),
    };
    fs::create_dir_all(&dir).at(&dir)?;
    store.write_atomic(&cache, &serde_json::to_vec(&packages).expect("packages serialize"))?;
    Ok(packages)
}

/// One file followed through the layer stack.
struct Followed<'p> {
    path: &'p str,
    content: Option<Vec<u8>>,
    /// The layer that put it there.
    layer: usize,
}

/// Whether `path` is inside the directory `dir` (every path is inside the root, `""`).
fn inside(path: &str, dir: &str) -> bool {
    dir.is_empty() || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

/// The content of each of `paths` in the file system `layers` make when applied in order:
/// a later entry replaces an earlier one, a whiteout (`.wh.NAME`) or a parent replaced by a
/// non-directory removes it, and an opaque directory (`.wh..wh..opq`) hides what lower layers
/// put under it. `None` for a path that is absent or not a regular file. Each layer may unpack
/// `limit` bytes.
pub(crate) fn merged_files(
    store: &Store,
    layers: &[ImageLayer],
    paths: &[&str],
    limit: u64,
) -> Result<Vec<Option<Vec<u8>>>> {
    let mut followed: Vec<Followed<'_>> = paths.iter().map(|p| Followed { path: p, content: None, layer: 0 }).collect();
    for (index, layer) in layers.iter().enumerate() {
        let digest = layer.digest.0;
        let bad = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::FileTooLarge => bad_layer(&digest, e.to_string()), // the unpack limit, named
            _ => bad_layer(&digest, format!("corrupt tar stream: {e}")),
        };
        let mut archive = open_layer(store, &digest, limit)?;
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let path = entry_path(&entry).map_err(bad)?;
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", &path));
            if name == ".wh..wh..opq" {
                // As if first in its layer: only what lower layers put there is hidden.
                followed.iter_mut().filter(|f| inside(f.path, dir) && f.layer < index).for_each(|f| f.content = None);
                continue;
            }
            if let Some(hidden) = name.strip_prefix(".wh.") {
                let hidden = if dir.is_empty() { hidden.to_string() } else { format!("{dir}/{hidden}") };
                followed
                    .iter_mut()
                    .filter(|f| f.path == hidden || inside(f.path, &hidden))
                    .for_each(|f| f.content = None);
                continue;
            }
            let kind = entry.header().entry_type();
            for f in followed.iter_mut() {
                if f.path == path {
                    f.layer = index;
                    f.content = if kind.is_file() { Some(read_bounded(&mut entry, &path, &digest)?) } else { None };
                } else if inside(f.path, &path) && kind != EntryType::Directory {
                    f.content = None;
                }
            }
        }
    }
    Ok(followed.into_iter().map(|f| f.content).collect())
}

fn read_bounded(entry: &mut impl Read, path: &str, digest: &crate::digest::Sha256Digest) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    entry.take(MAX_FILE + 1).read_to_end(&mut data).map_err(|e| bad_layer(digest, format!("reading /{path}: {e}")))?;
    if data.len() as u64 > MAX_FILE {
        return Err(bad_layer(digest, format!("/{path} is larger than {MAX_FILE} bytes")));
    }
    Ok(data)
}

/// The installed packages a dpkg status file lists (`Status: … installed`), sorted, once each.
pub(crate) fn parse_status(text: &str) -> Vec<DebPackage> {
    let mut packages = Vec::new();
    let mut fields: Vec<(&str, &str)> = Vec::new();
    for line in text.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if let Some(p) = installed(&fields) {
                packages.push(p);
            }
            fields.clear();
        } else if !line.starts_with([' ', '\t']) {
            if let Some((key, value)) = line.split_once(':') {
                fields.push((key.trim(), value.trim()));
            }
        }
    }
    packages.sort();
    packages.dedup();
    packages
}

fn installed(fields: &[(&str, &str)]) -> Option<DebPackage> {
    let get = |key: &str| fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.to_string());
    let status = get("Status")?;
    if status.split_whitespace().nth(2) != Some("installed") {
        return None;
    }
    let (name, version) = (get("Package")?, get("Version")?);
    let arch = get("Architecture").unwrap_or_default();
    // Facts from the base reach SBOMs and purls: only what dpkg itself can hold is taken (a
    // hostile status file could otherwise put terminal sequences or bidi overrides there).
    let name_ok = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c));
    let version_ok = version.starts_with(|c: char| c.is_ascii_digit())
        && version.chars().all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c));
    let arch_ok = arch.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    (name_ok && version_ok && arch_ok).then_some(DebPackage { name, version, arch })
}

/// `ID` of an os-release file, unquoted.
fn os_release_id(text: &str) -> Option<String> {
    let value = text.lines().find_map(|l| l.trim().strip_prefix("ID="))?;
    let id = value.trim().trim_matches(['"', '\'']).to_string();
    // os-release(5): lower-case letters, digits, `.`, `_` and `-`.
    let valid = id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    (!id.is_empty() && valid).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_installed_packages_are_listed_once_each_sorted() {
        let status = "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.2.13.dfsg-1\nDescription: compression\n library\n\n\
Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n\
Package: base-files\nStatus: install ok installed\nArchitecture: amd64\nVersion: 12.4+deb12u5\n\n\
Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.2.13.dfsg-1\n\n\
Package: half\nStatus: install ok half-installed\nVersion: 2\n\nPackage: noversion\nStatus: install ok installed\n";
        let names: Vec<(String, String)> = parse_status(status).into_iter().map(|p| (p.name, p.version)).collect();
        assert_eq!(names, [("base-files".into(), "12.4+deb12u5".into()), ("zlib1g".into(), "1:1.2.13.dfsg-1".into())]);
    }

    /// What dpkg cannot hold is never taken from a status file into an SBOM.
    #[test]
    fn packages_with_fields_dpkg_cannot_hold_are_left_out() {
        let entry = |name: &str, version: &str, arch: &str| {
            format!("Package: {name}\nStatus: install ok installed\nArchitecture: {arch}\nVersion: {version}\n\n")
        };
        let status = [
            entry("libc6", "2.36-9+deb12u4", "amd64"),
            entry("evil\u{202e}gnp.exe", "1", "amd64"),
            entry("x\u{1b}]0;t\u{7}", "1", "amd64"),
            entry("ok-pkg", "1:2.0~rc1", "all"),
            entry("bad-version", "1 2", "amd64"),
            entry("bad-arch", "1", "AMD\u{2028}64"),
            entry("Upper", "1", "amd64"),
        ]
        .concat();
        let names: Vec<String> = parse_status(&status).into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["libc6", "ok-pkg"]);
        assert_eq!(os_release_id("ID=debian\n").as_deref(), Some("debian"));
        assert_eq!(os_release_id("ID=\"deb\u{202e}ian\"\n"), None);
    }

    #[test]
    fn os_release_ids_are_unquoted() {
        assert_eq!(os_release_id("NAME=\"Debian\"\nID=debian\n").as_deref(), Some("debian"));
        assert_eq!(os_release_id("ID=\"ubuntu\"\n").as_deref(), Some("ubuntu"));
        assert_eq!(os_release_id("NAME=x\n"), None);
    }
}

#[cfg(test)]
mod merge_model {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::digest::{BlobDigest, DiffId};

    /// Paths the generated layers use; the three files followed are among them.
    const PATHS: [&str; 5] = ["a", "a/s", "a/b", "a/b/s", "c"];
    const FOLLOWED: [&str; 3] = ["a/s", "a/b/s", "c"];
    const DIRS: [&str; 3] = ["", "a", "a/b"];

    #[derive(Debug, Clone)]
    enum Op {
        File(usize, u8),
        Dir(usize),
        Symlink(usize),
        Whiteout(usize),
        Opaque(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..PATHS.len(), any::<u8>()).prop_map(|(p, c)| Op::File(p, c)),
            (0..PATHS.len()).prop_map(Op::Dir),
            (0..PATHS.len()).prop_map(Op::Symlink),
            (0..PATHS.len()).prop_map(Op::Whiteout),
            (0..DIRS.len()).prop_map(Op::Opaque),
        ]
    }

    fn join(dir: &str, name: &str) -> String {
        if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        }
    }

    fn tar_of(ops: &[Op]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for op in ops {
            let mut h = tar::Header::new_ustar();
            let (kind, path, data) = match op {
                Op::File(p, c) => (EntryType::Regular, PATHS[*p].to_string(), vec![*c]),
                Op::Dir(p) => (EntryType::Directory, format!("{}/", PATHS[*p]), vec![]),
                Op::Symlink(p) => (EntryType::Symlink, PATHS[*p].to_string(), vec![]),
                Op::Whiteout(p) => {
                    let (dir, name) = PATHS[*p].rsplit_once('/').unwrap_or(("", PATHS[*p]));
                    (EntryType::Regular, join(dir, &format!(".wh.{name}")), vec![])
                }
                Op::Opaque(d) => (EntryType::Regular, join(DIRS[*d], ".wh..wh..opq"), vec![]),
            };
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            if kind == EntryType::Symlink {
                tar.append_link(&mut h, &path, "elsewhere").unwrap();
            } else {
                tar.append_data(&mut h, &path, &data[..]).unwrap();
            }
        }
        tar.into_inner().unwrap()
    }

    /// The merged tree as overlay file systems define it: path → (layer, file content if a file).
    fn model(layers: &[Vec<Op>]) -> Vec<Option<Vec<u8>>> {
        let mut tree: BTreeMap<String, (usize, Option<Vec<u8>>)> = BTreeMap::new();
        let below = |tree: &mut BTreeMap<String, (usize, Option<Vec<u8>>)>, dir: &str, keep: &dyn Fn(usize) -> bool| {
            tree.retain(|p, (layer, _)| !inside(p, dir) || keep(*layer));
        };
        for (n, ops) in layers.iter().enumerate() {
            for op in ops {
                match op {
                    Op::File(p, c) => {
                        below(&mut tree, PATHS[*p], &|_| false);
                        tree.insert(PATHS[*p].into(), (n, Some(vec![*c])));
                    }
                    Op::Dir(p) => {
                        tree.insert(PATHS[*p].into(), (n, None));
                    }
                    Op::Symlink(p) => {
                        below(&mut tree, PATHS[*p], &|_| false);
                        tree.insert(PATHS[*p].into(), (n, None));
                    }
                    Op::Whiteout(p) => {
                        below(&mut tree, PATHS[*p], &|_| false);
                        tree.remove(PATHS[*p]);
                    }
                    Op::Opaque(d) => below(&mut tree, DIRS[*d], &|layer| layer == n),
                }
            }
        }
        FOLLOWED.iter().map(|f| tree.get(*f).and_then(|(_, c)| c.clone())).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Followed through any stack of layers, a file has the content the merged tree gives it.
        #[test]
        fn merged_files_are_what_the_layers_make(layers in prop::collection::vec(prop::collection::vec(op(), 0..6), 1..5)) {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let image_layers: Vec<ImageLayer> = layers
                .iter()
                .map(|ops| {
                    let digest = store.add_bytes(&tar_of(ops)).unwrap();
                    ImageLayer {
                        digest: BlobDigest(digest),
                        diff_id: DiffId(digest),
                        size: 0,
                        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                        created_by: String::new(),
                    }
                })
                .collect();
            let merged = merged_files(&store, &image_layers, &FOLLOWED, u64::MAX).unwrap();
            prop_assert_eq!(merged, model(&layers));
        }
    }
}
